"""PostgreSQL's binary COPY format for trail_points rows, built with numpy from columns:
the rows of a batch become one bytes object without a Python object a value. The
store writes every batch this way (asyncpg's `copy_records_to_table` encodes a value
at a time: with the tuple a fix it needs, 2.8 to 3.1 µs of Python a fix into a table
like trail_points, against 1.9 to 2.5 this way, best of 9 with 8,000 fixes:
docs/benchmarks.md, eighth session), and the benchmarks load history and measure the
raw ceiling with it, so the ceiling is the store's own encoding."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

import numpy as np
import numpy.typing as npt

from services.ingest.schemas import FixSource

# The columns written, in the order every row holds them.
STAGING_COLUMNS = (
    "tag_id",
    "ts",
    "received_at",
    "subject_id",
    "lat",
    "lon",
    "accuracy_m",
    "speed_mps",
    "heading_deg",
    "source",
    "sats",
    "hdop",
)
TRAIL_COLUMNS = (*STAGING_COLUMNS, "geom")

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
PG_EPOCH_S = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
# EWKB of a 2-D point with an SRID: little-endian flag, type with the SRID bit, 4326, x, y.
EWKB_POINT_SRID = 0x20000001

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

SOURCES = tuple(FixSource)


@dataclass(frozen=True, slots=True)
class TrailRows:
    """trail_points rows as columns. Row i's tag is `tags[tag[i]]` and its source
    `sources[source[i]]` (UTF-8); times are microseconds since 2000-01-01 UTC;
    `subject_id` holds 16 bytes a row. A value that is not there: NaN for the optional
    floats (a fix has no NaN to confuse it with), -1 for sats."""

    tags: Sequence[bytes]
    tag: IntArray
    ts: IntArray
    received_at: IntArray
    subject_id: npt.NDArray[np.void]
    lat: FloatArray
    lon: FloatArray
    accuracy_m: FloatArray
    speed_mps: FloatArray
    heading_deg: FloatArray
    sources: Sequence[bytes]
    source: IntArray
    sats: IntArray
    hdop: FloatArray


def micros(epoch_s: FloatArray) -> IntArray:
    """Seconds since 1970 as microseconds since 2000. Exact for times taken to the
    microsecond: a float of seconds near today errs by under 0.3 µs."""
    return np.round((epoch_s - PG_EPOCH_S) * 1e6).astype(np.int64)


_OPTIONAL = (("speed_mps", ">f8"), ("heading_deg", ">f8"), ("sats", ">i2"), ("hdop", ">f8"))


def _dtype(tag_len: int, source_len: int, present: Sequence[bool]) -> np.dtype[np.void]:
    """One row's layout: the field count, then each value's length and bytes (a length
    of -1 and no bytes for a value that is not there)."""
    speed, heading, sats, hdop = (
        [field] if there else [] for field, there in zip(_OPTIONAL, present, strict=True)
    )
    return np.dtype(
        [
            ("nfields", ">i2"),
            ("tag_n", ">i4"),
            ("tag_id", f"S{tag_len}"),
            ("ts_n", ">i4"),
            ("ts", ">i8"),
            ("received_at_n", ">i4"),
            ("received_at", ">i8"),
            ("subject_id_n", ">i4"),
            ("subject_id", "V16"),
            ("lat_n", ">i4"),
            ("lat", ">f8"),
            ("lon_n", ">i4"),
            ("lon", ">f8"),
            ("accuracy_m_n", ">i4"),
            ("accuracy_m", ">f8"),
            ("speed_mps_n", ">i4"),
            *speed,
            ("heading_deg_n", ">i4"),
            *heading,
            ("source_n", ">i4"),
            ("source", f"S{source_len}"),
            ("sats_n", ">i4"),
            *sats,
            ("hdop_n", ">i4"),
            *hdop,
            ("geom_n", ">i4"),
            ("g_order", "u1"),
            ("g_type", "<u4"),
            ("g_srid", "<u4"),
            ("g_x", "<f8"),
            ("g_y", "<f8"),
        ]
    )


def distinct(values: IntArray) -> IntArray:
    """The distinct values, sorted. (numpy 2.3's np.unique finds them by hashing, and for
    a batch's 32,000 values of a few kinds took 0.5 ms against 0.02 by a sort.)"""
    ordered = np.sort(values)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if len(ordered) else ordered


# Past these, a batch's rows are ordered by two keys (lexsort) rather than by one.
_SPAN_BITS = 40  # µs: 12.7 days of fix times in one batch
_RANK_BITS = 62 - _SPAN_BITS


def key_order(tags: npt.NDArray[np.bytes_], tag: IntArray, ts: IntArray) -> IntArray:
    """The order of rows of tag `tags[tag[i]]` at `ts[i]` by tag id (as bytes: UTF-8
    keeps code point order), then fix time: the order of trail_points' primary key; rows
    of the same tag and time stay in the order given. Pure."""
    tag_rank = np.empty(len(tags), dtype=np.int64)
    tag_rank[np.argsort(tags, kind="stable")] = np.arange(len(tags))
    if not len(ts):
        return np.zeros(0, dtype=np.int64)
    span = ts - ts.min()
    if int(span.max()) < 1 << _SPAN_BITS and len(tags) < 1 << _RANK_BITS:
        # Both in one number, sorted once: half lexsort's time on a batch of 32,000.
        return np.argsort((tag_rank[tag] << _SPAN_BITS) | span, kind="stable")
    return np.lexsort((ts, tag_rank[tag]))


@cache
def _layout(
    tag_len: int, source_len: int, present: tuple[bool, ...]
) -> tuple[np.dtype[np.void], bytes]:
    """A layout's row type, and a row of it holding what every row of it holds: the
    field count, each value's length (-1 for a value that is not there) and the point's
    EWKB header."""
    dtype = _dtype(tag_len, source_len, present)
    row = np.zeros(1, dtype=dtype)
    row["nfields"] = len(TRAIL_COLUMNS)
    row["tag_n"] = tag_len
    row["ts_n"] = row["received_at_n"] = row["lat_n"] = row["lon_n"] = 8
    row["accuracy_m_n"] = 8
    row["subject_id_n"] = 16
    for (name, kind), is_there in zip(_OPTIONAL, present, strict=True):
        row[f"{name}_n"] = np.dtype(kind).itemsize if is_there else -1
    row["source_n"] = source_len
    row["geom_n"] = 25
    row["g_order"], row["g_type"], row["g_srid"] = 1, EWKB_POINT_SRID, 4326
    return dtype, row.tobytes()


def encode(rows: TrailRows) -> bytes:
    """The rows as one binary COPY stream (header, rows, trailer) of TRAIL_COLUMNS, the
    point made of (lon, lat). Rows of one layout (tag and source lengths, which values
    are there: nearly always one or two layouts a batch) are laid out at once, from a
    row of what they all hold, copied; the stream holds them layout by layout, not in
    the order given, and within a layout in the primary key's order (`key_order`). In
    that order each index of the trail takes a tag's (or subject's) rows one after
    another on the same leaf page, where rows in time order jump from leaf to leaf at
    every row: COPY cost PostgreSQL 5.3 µs a fix against 8.3 that way (8,000 fixes of
    2,000 tags a COPY: docs/benchmarks.md, fifteenth session)."""
    tag_len = np.array([len(t) for t in rows.tags], dtype=np.int64)[rows.tag]
    source_len = np.array([len(s) for s in rows.sources], dtype=np.int64)[rows.source]
    present = np.column_stack(
        [
            ~np.isnan(rows.speed_mps),
            ~np.isnan(rows.heading_deg),
            rows.sats >= 0,
            ~np.isnan(rows.hdop),
        ]
    )
    layout = (tag_len * 256 + source_len) * 16 + present @ np.array([1, 2, 4, 8])
    tags = np.array(rows.tags, dtype=np.bytes_)
    sources = np.array(rows.sources, dtype=np.bytes_)
    order = key_order(tags, rows.tag, rows.ts)
    parts = [HEADER]
    for key in distinct(layout).tolist():
        i = order[layout[order] == key]
        there = present[i[0]]
        dtype, row = _layout(int(tag_len[i[0]]), int(source_len[i[0]]), tuple(there.tolist()))
        block = np.frombuffer(bytearray(row * len(i)), dtype=dtype)
        block["tag_id"] = tags[rows.tag[i]]
        block["ts"], block["received_at"] = rows.ts[i], rows.received_at[i]
        block["subject_id"] = rows.subject_id[i]
        block["lat"], block["lon"] = rows.lat[i], rows.lon[i]
        block["accuracy_m"] = rows.accuracy_m[i]
        for (name, _), is_there in zip(_OPTIONAL, there, strict=True):
            if is_there:
                block[name] = getattr(rows, name)[i]
        block["source"] = sources[rows.source[i]]
        block["g_x"], block["g_y"] = rows.lon[i], rows.lat[i]
        parts.append(block.tobytes())
    parts.append(TRAILER)
    return b"".join(parts)


async def chunks(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """A COPY stream in pieces, as asyncpg's copy_to_table takes one."""
    view = memoryview(data)
    for i in range(0, len(view), size):
        yield bytes(view[i : i + size])
