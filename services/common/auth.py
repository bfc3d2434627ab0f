"""Bearer-token authentication and role checks; tokens are random and stored only as hashes."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg
from sqlalchemy import DateTime, String, func
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from services.common.database import Base

TOKEN_PREFIX = "tt_"


class Role(StrEnum):
    admin = "admin"
    supervisor = "supervisor"  # oversees the caseloads of the managers they supervise
    manager = "manager"  # their own caseload only
    investigator = "investigator"
    auditor = "auditor"  # reads the audit log, nothing else
    supplier = "supplier"


class Credential(Base):
    """A bearer token: who holds it and in which role. The token itself is never stored."""

    __tablename__ = "credentials"

    # SHA-256 is the right hash here: tokens carry 256 bits of randomness, so there is
    # nothing for a slow password hash to protect against, and lookups stay O(1).
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    principal_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True, slots=True)
class Principal:
    id: uuid.UUID
    role: Role
    name: str


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue_token(session: AsyncSession, principal: Principal) -> str:
    """Creates a credential for the principal and returns the token, the only time it exists."""
    token = new_token()
    session.add(
        Credential(
            token_hash=hash_token(token),
            role=principal.role.value,
            principal_id=principal.id,
            name=principal.name,
        )
    )
    await session.flush()
    return token


# One statement on a raw connection, not through the request's ORM session: the
# session then never takes a connection on routes that do not use it (ingest, every
# request of every supplier), which saved a transaction's round trips a request
# (docs/benchmarks.md, fifteenth session).
AUTHENTICATE_SQL = """
select principal_id, role, name from credentials
where token_hash = $1 and revoked_at is null
"""


async def authenticate(conn: asyncpg.Connection, token: str) -> Principal | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = await conn.fetchrow(AUTHENTICATE_SQL, hash_token(token))
    if row is None:
        return None
    return Principal(id=row["principal_id"], role=Role(row["role"]), name=row["name"])
