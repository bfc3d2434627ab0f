"""PostgreSQL's binary COPY format for trail_points rows, built with numpy: a day of a
fleet becomes one bytes object without a Python object per row. This is the fastest way
into the table there is, so it is both how benchmarks load history and the ceiling the
ingest pipeline is measured against."""

from __future__ import annotations

import struct
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from bench.fleet import DayOfFixes
from services.ingest.repository import STAGING_COLUMNS

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
# The staging columns the store writes, and the point it makes of them.
COLUMNS = (*STAGING_COLUMNS, "geom")
# EWKB of a 2-D point with an SRID: little-endian flag, type with the SRID bit, 4326, x, y.
_EWKB_POINT_SRID = 0x20000001


def _row_dtype(tag_len: int) -> np.dtype[np.void]:
    return np.dtype(
        [
            ("nfields", ">i2"),
            ("tag_n", ">i4"),
            ("tag", f"S{tag_len}"),
            ("ts_n", ">i4"),
            ("ts", ">i8"),
            ("recv_n", ">i4"),
            ("recv", ">i8"),
            ("subject_n", ">i4"),
            ("subject", "V16"),
            ("lat_n", ">i4"),
            ("lat", ">f8"),
            ("lon_n", ">i4"),
            ("lon", ">f8"),
            ("acc_n", ">i4"),
            ("acc", ">f8"),
            ("speed_n", ">i4"),
            ("speed", ">f8"),
            ("heading_n", ">i4"),
            ("source_n", ">i4"),
            ("source", "S3"),
            ("sats_n", ">i4"),
            ("hdop_n", ">i4"),
            ("geom_n", ">i4"),
            ("g_order", "u1"),
            ("g_type", "<u4"),
            ("g_srid", "<u4"),
            ("g_x", "<f8"),
            ("g_y", "<f8"),
        ]
    )


def _micros(epoch_s: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    return np.round((epoch_s - PG_EPOCH) * 1e6).astype(np.int64)


def encode(
    day: DayOfFixes,
    tag_ids: Sequence[str],
    subject_ids: Sequence[uuid.UUID],
    received_delay_s: npt.NDArray[np.float64],
) -> bytes:
    """The rows of `day` as one binary COPY stream (header, rows, trailer)."""
    tag_len = len(tag_ids[0])
    if any(len(t) != tag_len for t in tag_ids):
        raise ValueError("tag ids must all be the same length for the fixed-width encoder")
    tags = np.array([t.encode() for t in tag_ids], dtype=f"S{tag_len}")
    subjects = np.frombuffer(b"".join(s.bytes for s in subject_ids), dtype="V16")
    rows = np.zeros(len(day), dtype=_row_dtype(tag_len))
    rows["nfields"] = len(COLUMNS)
    rows["tag_n"] = tag_len
    rows["tag"] = tags[day.tag]
    rows["ts_n"] = rows["recv_n"] = 8
    rows["ts"] = _micros(day.ts)
    rows["recv"] = _micros(day.ts + received_delay_s)
    rows["subject_n"] = 16
    rows["subject"] = subjects[day.tag]
    for name in ("lat", "lon", "acc", "speed"):
        rows[f"{name}_n"] = 8
    rows["lat"], rows["lon"] = day.lat, day.lon
    rows["acc"], rows["speed"] = day.accuracy_m, day.speed_mps
    rows["heading_n"] = rows["sats_n"] = rows["hdop_n"] = -1
    rows["source_n"], rows["source"] = 3, b"gps"
    rows["geom_n"] = 25
    rows["g_order"], rows["g_type"], rows["g_srid"] = 1, _EWKB_POINT_SRID, 4326
    rows["g_x"], rows["g_y"] = day.lon, day.lat
    return HEADER + rows.tobytes() + TRAILER


async def chunks(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """A COPY stream in pieces, as asyncpg's copy_to_table takes one."""
    view = memoryview(data)
    for i in range(0, len(view), size):
        yield bytes(view[i : i + size])


def upload_delays(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    """How long after each fix it reached us: seconds mostly, and for the few buffered
    during signal loss or a dead phone link, minutes to hours."""
    delay = rng.lognormal(np.log(8.0), 0.6, n)
    late = rng.random(n) < 0.03
    delay[late] += rng.uniform(300.0, 7200.0, int(late.sum()))
    return np.asarray(delay, dtype=np.float64)
