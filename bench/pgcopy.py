"""A day of a fleet as trail_points rows in PostgreSQL's binary COPY format, through the
store's own encoder (services/ingest/pgcopy.py): how benchmarks load history, and the
raw ceiling the ingest pipeline is measured against."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from bench.fleet import DayOfFixes
from services.ingest.pgcopy import TRAIL_COLUMNS, TrailRows, chunks, micros
from services.ingest.pgcopy import encode as encode_rows

COLUMNS = TRAIL_COLUMNS
__all__ = ["COLUMNS", "chunks", "encode", "upload_delays"]


def encode(
    day: DayOfFixes,
    tag_ids: Sequence[str],
    subject_ids: Sequence[uuid.UUID],
    received_delay_s: npt.NDArray[np.float64],
) -> bytes:
    """The rows of `day` as one binary COPY stream (header, rows, trailer)."""
    n = len(day)
    subjects = np.frombuffer(b"".join(s.bytes for s in subject_ids), dtype="V16")
    none = np.full(n, np.nan)
    return encode_rows(
        TrailRows(
            tags=[t.encode() for t in tag_ids],
            tag=np.asarray(day.tag, dtype=np.int64),
            ts=micros(day.ts),
            received_at=micros(day.ts + received_delay_s),
            subject_id=subjects[day.tag],
            lat=day.lat,
            lon=day.lon,
            accuracy_m=day.accuracy_m,
            speed_mps=day.speed_mps,
            heading_deg=none,
            sources=[b"gps"],
            source=np.zeros(n, dtype=np.int64),
            sats=np.full(n, -1, dtype=np.int64),
            hdop=none,
        )
    )


def upload_delays(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    """How long after each fix it reached us: seconds mostly, and for the few buffered
    during signal loss or a dead phone link, minutes to hours."""
    delay = rng.lognormal(np.log(8.0), 0.6, n)
    late = rng.random(n) < 0.03
    delay[late] += rng.uniform(300.0, 7200.0, int(late.sum()))
    return np.asarray(delay, dtype=np.float64)
