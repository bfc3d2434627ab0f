"""Zones (with their versions and subjects), the episodes reported for them, and crimes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from geoalchemy2 import Geometry
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from services.common.database import Base


class Zone(Base):
    """The current version of a zone. Every version is also kept in zone_versions."""

    __tablename__ = "zones"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    # Polygon, MultiPolygon, or Point (with radius_m), in WGS84.
    geom: Mapped[str] = mapped_column(Geometry("GEOMETRY", srid=4326, spatial_index=True))
    radius_m: Mapped[float | None] = mapped_column(Float)
    buffer_m: Mapped[float] = mapped_column(Float, default=0.0)
    timezone: Mapped[str] = mapped_column(String(64))
    schedule: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    valid_from: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    valid_to: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ZoneSubject(Base):
    """Which subjects a zone applies to: one (a victim's street) or many (a town centre)."""

    __tablename__ = "zone_subjects"

    zone_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("zones.id", ondelete="CASCADE"), primary_key=True
    )
    subject_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("subjects.id"), primary_key=True, index=True
    )


class ZoneVersion(Base):
    """Each version of a zone's definition as it was given, so decisions can be explained."""

    __tablename__ = "zone_versions"

    zone_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("zones.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ZoneGeneration(Base):
    """One row whose value a trigger (migration 0004) bumps with every change to zones or
    zone_subjects: a zone checker keeps which zones apply to whom in memory and reads
    this one number a batch."""

    __tablename__ = "zone_generation"

    id: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class ZoneEpisode(Base):
    """What the zone checker last reported about an episode (its alert's id is the id)."""

    __tablename__ = "zone_episodes"
    __table_args__ = (
        Index("ix_zone_episodes_subject_zone_start", "subject_id", "zone_id", "start"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    subject_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    zone_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("zones.id", ondelete="CASCADE"))
    zone_version: Mapped[int] = mapped_column(Integer)
    condition: Mapped[str] = mapped_column(String(16))
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    confidence: Mapped[str] = mapped_column(String(16))
    last_fix: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # "current", or "superseded" once late fixes showed the trail differently.
    state: Mapped[str] = mapped_column(String(16), default="current")
    superseded_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    reason: Mapped[str] = mapped_column(Text)


class Crime(Base):
    """One version of a recorded crime. A police force re-sending (force, reference) with
    different details makes a new version; matching is redone for it."""

    __tablename__ = "crimes"
    __table_args__ = (UniqueConstraint("force", "reference", "version"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    force: Mapped[str | None] = mapped_column(String(64))
    reference: Mapped[str | None] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer, default=1)
    current: Mapped[bool] = mapped_column(Boolean, default=True)
    category: Mapped[str] = mapped_column(String(32))
    description: Mapped[str | None] = mapped_column(String(200))
    batch_id: Mapped[str | None] = mapped_column(String(64))
    free_text: Mapped[str | None] = mapped_column(Text)
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    easting: Mapped[float | None] = mapped_column(Float)
    northing: Mapped[float | None] = mapped_column(Float)
    geom: Mapped[str] = mapped_column(Geometry("POINT", srid=4326, spatial_index=True))
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CrimeMatchRun(Base):
    """One matching run for one crime version: why it ran, with what, and what it found."""

    __tablename__ = "crime_match_runs"
    __table_args__ = (Index("ix_crime_match_runs_crime_started", "crime_id", "started_at"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    crime_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("crimes.id", ondelete="CASCADE"))
    trigger: Mapped[str] = mapped_column(String(16))
    algorithm: Mapped[str] = mapped_column(String(32))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONB)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[float] = mapped_column(Float)
    results: Mapped[dict[str, Any]] = mapped_column(JSONB)


class DeviceEpisode(Base):
    """What was last reported about a device condition (tamper, battery, no fix, silence)."""

    __tablename__ = "device_episodes"
    __table_args__ = (Index("ix_device_episodes_subject_start", "subject_id", "start"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    subject_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    condition: Mapped[str] = mapped_column(String(16))
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_fix: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16), default="current")
    superseded_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    reason: Mapped[str] = mapped_column(Text)


class SubjectActivity(Base):
    """When each subject's newest fix was taken, for the silence watchdog."""

    __tablename__ = "subject_activity"

    subject_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    last_fix: Mapped[datetime] = mapped_column(DateTime(timezone=True))
