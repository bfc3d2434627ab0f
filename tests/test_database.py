"""The schema: migrations match the models, partitions appear, and hot queries use indexes."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config

from services.common.database import Database
from services.common.geo import degree_margin
from services.common.settings import Settings
from services.ingest.repository import FIXES_NEAR_SQL, Partitions, partition_name

ROOT = Path(__file__).resolve().parent.parent


def test_migrations_match_the_models(settings: Settings, database: str) -> None:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", settings.db.sqlalchemy_url(database))
    # Raises when autogenerate would find any difference.
    command.check(config)


async def test_partitions_are_created_ahead_and_on_demand(db: Database) -> None:
    partitions = Partitions()
    today = date(2026, 11, 25)
    async with db.pool.acquire() as conn:
        await partitions.ensure_ahead(conn, today, 7)
        await partitions.ensure(conn, [date(2025, 12, 1)])  # an old buffered upload
        names = {
            r["relname"]
            for r in await conn.fetch(
                "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
                "where i.inhparent = 'trail_points'::regclass"
            )
        }
    expected = {partition_name(today + timedelta(days=d)) for d in range(-1, 8)}
    assert expected | {partition_name(date(2025, 12, 1))} <= names


async def test_near_place_and_time_uses_the_spatial_index(db: Database) -> None:
    """ "Who was near X between T1 and T2" over 40,000 fixes must not scan them all."""
    day = datetime(2026, 11, 20, tzinfo=UTC)
    subject = uuid.uuid4()
    records = [
        (
            f"IDX-{i % 40}",
            day + timedelta(seconds=60 * (i // 40)),
            day,
            subject,
            52.5 + (i % 200) * 0.001,
            -0.3 + (i // 200) * 0.001,
            10.0,
        )
        for i in range(40_000)
    ]
    async with db.pool.acquire() as conn:
        await Partitions().ensure(conn, [day.date()])
        await conn.execute(
            "create temp table idx_staging (tag_id text, ts timestamptz, received_at timestamptz,"
            " subject_id uuid, lat float8, lon float8, accuracy_m float8)"
        )
        await conn.copy_records_to_table("idx_staging", records=records)
        await conn.execute(
            "insert into trail_points (tag_id, ts, received_at, subject_id, lat, lon, accuracy_m,"
            " source, geom) select tag_id, ts, received_at, subject_id, lat, lon, accuracy_m,"
            " 'gps', st_setsrid(st_makepoint(lon, lat), 4326) from idx_staging"
        )
        await conn.execute("analyze trail_points")
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "explain " + FIXES_NEAR_SQL,
                52.55,
                -0.25,
                100.0,
                day,
                day + timedelta(hours=24),
                degree_margin(52.55, 350),
                250.0,
            )
        )
    assert "Seq Scan" not in plan, plan
    assert "geom" in plan and "Index" in plan, plan
