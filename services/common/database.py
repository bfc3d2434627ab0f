"""Database engine, session factory and asyncpg pool, created at start-up and closed on shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg
from sqlalchemy import ColumnElement, MetaData, any_, bindparam, event
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from services.common.settings import DatabaseSettings

P = ParamSpec("P")
T = TypeVar("T")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def any_of(column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """`column = any($1)`: one array parameter however many values. (`in_` makes a
    parameter of each value, so a statement, and its plan, of each list length.)"""
    return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))  # type: ignore[no-any-return]


# JIT compilation pays off for long analytical queries, not ours: on a large partitioned
# trail the planner's estimates cross its threshold and a 5 ms search spent 500 ms
# compiling (measured by bench/proximity.py, see docs/benchmarks.md).
SERVER_SETTINGS = {"jit": "off"}


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a pool connection needs done when it is released, beyond what asyncpg
    always does (an open transaction rolled back, listener callbacks dropped): nothing.
    asyncpg's default also runs `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET
    ALL` in a round trip of its own, each time; but nothing here leaves that state
    behind: advisory locks are taken for the transaction (`pg_advisory_xact_lock`),
    cursors only inside a transaction, nobody LISTENs, and session settings are made
    when a connection opens (SERVER_SETTINGS), never changed after. A round trip and
    four statements on every release cost the API and the zone checker 3 to 4 % of
    their samples on Kafka (docs/benchmarks.md, nineteenth session)."""


async def _prepare_connection(conn: asyncpg.Connection) -> None:
    """Geometry values as EWKB bytes both ways in binary format (PostGIS's binary input
    takes EWKB as it is), where asyncpg has no codec of its own for the type: for
    records COPYed or read with a geometry in them. In whichever schema PostGIS was
    installed; before the migrations have made it there is no such type."""
    schema = await conn.fetchval(
        "select n.nspname from pg_type t join pg_namespace n on n.oid = t.typnamespace"
        " where t.typname = 'geometry' limit 1"
    )
    if schema is not None:
        await conn.set_type_codec(
            "geometry", schema=schema, encoder=bytes, decoder=bytes, format="binary"
        )


def _closed_on_checkout(
    dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
) -> None:
    """Whether an ORM pool connection is still open, asked of asyncpg without a round
    trip, as asyncpg's own pool asks before it lends one: once the server has closed
    the connection (a restart, pg_terminate_backend) asyncpg knows, and the pool then
    opens another in its place (it does so for DisconnectionError, up to three times).
    SQLAlchemy's pool_pre_ping asked the server instead: BEGIN, an empty statement and
    ROLLBACK before every session's first statement, three round trips that were 6 % of
    the dispatcher's samples on Kafka (docs/benchmarks.md, twentieth session). A
    connection whose server vanished without closing it (no FIN: a network cut) is not
    caught here, nor was it quickly by the ping; its first statement fails, SQLAlchemy
    then invalidates the pool's connections, and the work is retried (the bus retries
    what fails transiently; an API client gets a 503)."""
    if record.driver_connection is None or record.driver_connection.is_closed():
        raise DisconnectionError("the database closed this connection")


@dataclass
class Database:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    # Raw asyncpg for the hot paths (COPY of trail points).
    pool: asyncpg.Pool

    @classmethod
    async def connect(
        cls, settings: DatabaseSettings, database: str | None = None, *, name: str = "tagtrail"
    ) -> Database:
        """`name` is the connections' application_name, which pg_stat_activity shows: which
        process (and role) a connection serves."""
        server_settings = {**SERVER_SETTINGS, "application_name": name}
        engine = create_async_engine(
            settings.sqlalchemy_url(database),
            pool_size=settings.pool_size,
            # Up to twice pool_size under load (settings.py counts on it).
            max_overflow=settings.pool_size,
            connect_args={"server_settings": server_settings},
        )
        event.listen(engine.sync_engine, "checkout", _closed_on_checkout)
        pool = await asyncpg.create_pool(
            settings.asyncpg_dsn(database),
            min_size=1,
            max_size=settings.pool_size,
            server_settings=server_settings,
            init=_prepare_connection,
            reset=_keep_session,
        )
        return cls(engine, async_sessionmaker(engine, expire_on_commit=False), pool)

    async def close(self) -> None:
        await self.pool.close()
        await self.engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: commits when the block ends cleanly, rolls back otherwise."""
        async with self.sessions() as session, session.begin():
            yield session

    async def on_own(
        self,
        statement: Callable[Concatenate[asyncpg.Connection, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """A statement on a pool connection taken for it alone, so that statements that
        do not wait on each other can go side by side (see side_by_side)."""
        async with self.pool.acquire() as conn:
            return await statement(conn, *args, **kwargs)

    async def ping(self) -> bool:
        try:
            async with self.pool.acquire() as conn:
                await conn.fetchval("select 1")
        except (OSError, asyncpg.PostgresError):
            return False
        return True


@asynccontextmanager
async def side_by_side() -> AsyncIterator[asyncio.TaskGroup]:
    """A task group whose first failure is raised as itself, not in an ExceptionGroup:
    the bus tells failures a retry cures by their type (is_transient), and a handler
    that runs statements side by side must fail as one that runs them in turn."""
    try:
        async with asyncio.TaskGroup() as tasks:
            yield tasks
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from group
