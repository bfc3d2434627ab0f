"""The dead-letter store: messages no handler could process, kept for a person to look at.

Subscribed on both buses, so nothing dead-lettered is lost in the embedded mode either.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from services.common.bus.messages import DeadLetter
from services.common.database import Base, Database

GROUP = "tagtrail-dead-letters"


class DeadLetterRow(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    group_name: Mapped[str] = mapped_column(String(200))
    topic: Mapped[str] = mapped_column(String(200), index=True)
    key: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DeadLetterStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def handle(self, letters: list[DeadLetter]) -> None:
        async with self.db.transaction() as session:
            session.add_all(
                DeadLetterRow(
                    group_name=d.group,
                    topic=d.topic,
                    key=d.key,
                    payload=d.payload,
                    error=d.error,
                    failed_at=d.failed_at,
                )
                for d in letters
            )
