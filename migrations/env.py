"""Alembic environment: runs migrations over the async engine."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from services.common.settings import DatabaseSettings
from services.models import metadata

config = context.config


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or DatabaseSettings().sqlalchemy_url()


def _include(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    # PostGIS owns these, and daily partitions of trail_points are made at run time.
    if type_ == "table" and name is not None:
        return not (
            name == "spatial_ref_sys" or name.startswith(("trail_points_p", "trail_boxes_p"))
        )
    return True


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_object=_include,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    engine = create_async_engine(_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run against a database")
asyncio.run(_main())
