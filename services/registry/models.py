"""Registry tables: suppliers, users, tags, subjects, and who wears and who manages what when."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, String, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from services.common.database import Base


def _id() -> Mapped[uuid.UUID]:
    return mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


class Supplier(Base):
    __tablename__ = "suppliers"

    id: Mapped[uuid.UUID] = _id()
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = _created()


class Team(Base):
    """A team of managers with a shared inbox (a duty rota, an office)."""

    __tablename__ = "teams"

    id: Mapped[uuid.UUID] = _id()
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = _created()


class User(Base):
    """A person who uses the API: an administrator, a manager or an investigator."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("name", "role"),)

    id: Mapped[uuid.UUID] = _id()
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    # Who a manager's unacknowledged alerts escalate to (another manager).
    supervisor_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    # The team whose inbox gets this manager's caseload alerts.
    team_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("teams.id"))
    created_at: Mapped[datetime] = _created()


class Tag(Base):
    __tablename__ = "tags"

    # The supplier's serial number, which devices send as tag_id.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    supplier_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("suppliers.id"), index=True)
    created_at: Mapped[datetime] = _created()


class Subject(Base):
    __tablename__ = "subjects"

    id: Mapped[uuid.UUID] = _id()
    reference: Mapped[str] = mapped_column(String(100), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    # low / medium / high: raises or lowers the severity of the subject's alerts.
    risk: Mapped[str] = mapped_column(String(8), default="medium")
    created_at: Mapped[datetime] = _created()


class TagAssignment(Base):
    """A subject wears a tag from valid_from until valid_to (open-ended when null).

    The migration adds an exclusion constraint: one tag is never on two subjects at once.
    """

    __tablename__ = "tag_assignments"

    id: Mapped[uuid.UUID] = _id()
    tag_id: Mapped[str] = mapped_column(ForeignKey("tags.id"), index=True)
    subject_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("subjects.id"), index=True)
    valid_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    valid_to: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created()


class TagGeneration(Base):
    """One row whose value a trigger (migration 0005) bumps with every change to tags or
    tag_assignments: ingest keeps the tags it has met in memory and reads this one
    number a request."""

    __tablename__ = "tag_generation"

    id: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class ManagerAssignment(Base):
    """A manager (a user with the manager role) is responsible for a subject for a period."""

    __tablename__ = "manager_assignments"

    id: Mapped[uuid.UUID] = _id()
    subject_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("subjects.id"), index=True)
    manager_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    valid_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    valid_to: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created()
