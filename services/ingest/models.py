"""Ingest tables: the time-partitioned trail of fixes, and conflicting duplicates set aside.

trail_points is partitioned by day of fix time (created by the migration with raw DDL;
partitions are created ahead of time by the store worker, see repository.py).
"""

from __future__ import annotations

from geoalchemy2 import Geometry
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from services.common.database import Base

trail_points = Table(
    "trail_points",
    Base.metadata,
    Column("tag_id", String(64), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("subject_id", UUID(as_uuid=True), nullable=False),
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("accuracy_m", Float, nullable=False),
    Column("speed_mps", Float),
    Column("heading_deg", Float),
    Column("source", String(8), nullable=False),
    Column("sats", SmallInteger),
    Column("hdop", Float),
    # For GIS tools reading the database. Not indexed: searches go by trail_boxes, and a
    # GiST entry per fix costs every insert (and 280 MB a day at 5,000 tags).
    Column("geom", Geometry("POINT", srid=4326, spatial_index=False), nullable=False),
    PrimaryKeyConstraint("tag_id", "ts"),
    # Covering: every trail read (by subject and time) is answered from the index alone,
    # a few pages per subject, instead of a heap page per fix (fixes of one subject are
    # spread among everyone else's, in arrival order).
    Index(
        "ix_trail_points_subject_ts",
        "subject_id",
        "ts",
        postgresql_include=["tag_id", "received_at", "lat", "lon", "accuracy_m"],
    ),
    postgresql_partition_by="RANGE (ts)",
)

# Where each subject was, coarsely, in each 5-minute bucket: the bounding box of the
# accuracy circles of their fixes in it and of the fixes each path from them leads to
# (see widen_boxes in repository.py). Proximity search finds who passed a place by these
# boxes, a handful of rows, instead of by every fix nearby. Partitioned by day like
# trail_points, and dropped with it.
trail_boxes = Table(
    "trail_boxes",
    Base.metadata,
    Column("subject_id", UUID(as_uuid=True), nullable=False),
    Column("bucket", DateTime(timezone=True), nullable=False),
    Column("box", Geometry("POLYGON", srid=4326, spatial_index=False), nullable=False),
    PrimaryKeyConstraint("subject_id", "bucket"),
    # The bucket in the index too (btree_gist): a day's boxes near a place are a few
    # hundred, the hour's a few dozen, and only those are read from the table.
    Index("ix_trail_boxes_box_bucket", "box", "bucket", postgresql_using="gist"),
    postgresql_partition_by="RANGE (bucket)",
)

# Fixes stored whose boxes are not yet widened: one row a stored batch, each subject's
# first and last fix time in it (seconds since 1970). The store writes it with the
# fixes; the box keeper (services/zones/worker.py) widens the boxes many batches at a
# time, runs the crime trigger, and deletes it. Until then proximity search takes the
# row's subjects as candidates, so a fix is found from the moment it is stored. `fixes`
# says how many fixes the row stands for, for whoever looks at a backlog.
trail_unboxed = Table(
    "trail_unboxed",
    Base.metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("first_ts", DateTime(timezone=True), nullable=False),
    Column("last_ts", DateTime(timezone=True), nullable=False),
    Column("subjects", ARRAY(UUID(as_uuid=True)), nullable=False),
    Column("firsts", ARRAY(Float), nullable=False),
    Column("lasts", ARRAY(Float), nullable=False),
    Column("fixes", Integer, nullable=False),
    # Set when the keeper could not do this row on its own, for a reason a retry does
    # not cure: it is passed over (its subjects stay candidates) until these are cleared.
    Column("failed_at", DateTime(timezone=True)),
    Column("error", Text),
)

fix_conflicts = Table(
    "fix_conflicts",
    Base.metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("tag_id", String(64), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("subject_id", UUID(as_uuid=True), nullable=False),
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("accuracy_m", Float, nullable=False),
    Column("stored_lat", Float, nullable=False),
    Column("stored_lon", Float, nullable=False),
    Column("stored_accuracy_m", Float, nullable=False),
    Column("detected_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("occurrences", Integer, nullable=False, server_default="1"),
    UniqueConstraint("tag_id", "ts", "lat", "lon", "accuracy_m", name="uq_fix_conflicts_fix"),
)

device_events = Table(
    "device_events",
    Base.metadata,
    Column("tag_id", String(64), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("subject_id", UUID(as_uuid=True), nullable=False, index=True),
    Column("battery_pct", Float),
    Column("detail", String(500)),
    PrimaryKeyConstraint("tag_id", "ts", "kind"),
)
