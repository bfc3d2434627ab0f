"""Indexes for proximity search: trail_boxes, each subject's whereabouts per 5-minute
bucket (filled for trail already stored), and a covering index for trail reads. The
GiST index over every fix goes: nothing searches by it any more.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta

import geoalchemy2
import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "trail_boxes",
        sa.Column("subject_id", sa.UUID(), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "box",
            geoalchemy2.types.Geometry(
                geometry_type="POLYGON",
                srid=4326,
                dimension=2,
                spatial_index=False,
                from_text="ST_GeomFromEWKT",
                name="geometry",
                nullable=False,
            ),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("subject_id", "bucket", name=op.f("pk_trail_boxes")),
        postgresql_partition_by="RANGE (bucket)",
    )
    # btree_gist lets the bucket join the box in one GiST index. A trusted extension:
    # the database's owner may create it.
    op.execute("create extension if not exists btree_gist")
    op.create_index(
        "ix_trail_boxes_box_bucket",
        "trail_boxes",
        ["box", "bucket"],
        unique=False,
        postgresql_using="gist",
    )
    op.drop_index("ix_trail_points_geom", table_name="trail_points")
    op.drop_index("ix_trail_points_subject_ts", table_name="trail_points")
    op.create_index(
        "ix_trail_points_subject_ts",
        "trail_points",
        ["subject_id", "ts"],
        postgresql_include=["tag_id", "received_at", "lat", "lon", "accuracy_m"],
    )
    # Boxes for the trail already stored: a partition for each day it has (and the day
    # before each, which a day's first fixes widen), filled from it. Simpler and larger
    # than the store's boxes, but holding as much: each 5-minute bucket's box holds every
    # fix from its start to 10 minutes after its end. This is the revision's own SQL, as
    # it was when written.
    connection = op.get_bind()
    names = connection.execute(
        sa.text(
            "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
            " where i.inhparent = 'trail_points'::regclass"
        )
    ).scalars()
    days = {datetime.strptime(n.removeprefix("trail_points_p"), "%Y%m%d").date() for n in names}
    for day in sorted(days | {d - timedelta(days=1) for d in days}):
        lo = datetime.combine(day, time(), UTC)
        op.execute(
            f"create table trail_boxes_p{day:%Y%m%d} partition of trail_boxes for values"
            f" from ('{lo.isoformat()}') to ('{(lo + timedelta(days=1)).isoformat()}')"
        )
    if days:
        op.execute(
            """
            insert into trail_boxes (subject_id, bucket, box)
            select subject_id, bucket, st_makeenvelope(
                    floor(min(lon - e.dlon) / 0.0005) * 0.0005,
                    floor(min(lat - e.dlat) / 0.0005) * 0.0005,
                    (floor(max(lon + e.dlon) / 0.0005) + 1) * 0.0005,
                    (floor(max(lat + e.dlat) / 0.0005) + 1) * 0.0005, 4326)
            from trail_points s
            cross join lateral (
                select s.accuracy_m / 110000.0 as dlat,
                    s.accuracy_m / (110000.0 * cos(radians(least(abs(s.lat) + 0.1, 89.9))))
                        as dlon,
                    date_bin('300 seconds', s.ts, timestamptz '2000-01-01Z') as own
            ) e
            cross join lateral generate_series(0, 2) k
            cross join lateral (select e.own - k * interval '300 seconds' as bucket) b
            where s.accuracy_m <= 1000 and b.bucket + interval '900 seconds' > s.ts
            group by subject_id, bucket
            """
        )


def downgrade() -> None:
    op.drop_table("trail_boxes")
    op.create_index(
        "ix_trail_points_geom", "trail_points", ["geom"], unique=False, postgresql_using="gist"
    )
    op.drop_index("ix_trail_points_geom", table_name="trail_points")
    op.drop_index("ix_trail_points_subject_ts", table_name="trail_points")
    op.create_index("ix_trail_points_subject_ts", "trail_points", ["subject_id", "ts"])
