"""An NDJSON stream of fixes (`POST /v1/fixes/stream`), read as the clean path reads it:
straight into columns, every line at once, by msgspec; and, should that path not take
it, a line at a time as JSON values for the full path.

Parsing each line into a dict (orjson) and then reading each field of every dict, with
the type of each value checked, cost the API about 1.1 µs a fix; msgspec reads the
whole stream into typed records in one call, checking each value's JSON kind as it
goes, and their fields into columns, in about 0.5 (docs/benchmarks.md, twenty-sixth
session). What it reads is what the dicts would have held: a key given twice counts
its last value, as in orjson's dicts. A stream with any line it cannot read as a plain
fix (a blank line, a value of another kind, a field StreamedFix does not have, a line
that is not JSON) is read a line at a time, as before: the clean path may still take it
from the lines' values (a line with a field of a supplier's own, say), and otherwise
the full path says what is wrong with which line. A randomized test mutates streams
byte by byte and holds the readings to each other."""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np
import orjson

from services.ingest.batch import SOURCE_CODES
from services.ingest.service import NOT_JSON, Item, RequestColumns


class _Line(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A line as the clean path takes it: each field of StreamedFix plainly of its JSON
    kind (a float field takes an integer, as in JSON, but not true or false), bounds
    aside. A source, if given, must be a string; satellites an integer or null. No
    other field: msgspec skips an unknown field's value without reading it as JSON
    (bytes that are not UTF-8 in it, say, which orjson refuses), so a line with one
    goes the full path, which reads every line whole."""

    tag_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    ts: str
    lat: float
    lon: float
    accuracy_m: float
    speed_mps: float | None = None
    heading_deg: float | None = None
    hdop: float | None = None
    # (Out of bounds, the full path says so; within them, an int64 at once.)
    sats: Annotated[int, msgspec.Meta(ge=0, le=64)] | None = None
    source: str = "gps"


_LINES = msgspec.json.Decoder(list[_Line])


def stream_items(lines: list[bytes]) -> list[Item]:
    """A stream's lines as items, each indexed by its line; blank lines are left out and
    a line that is not JSON stands as NOT_JSON. Nearly always every line is JSON but a
    last blank one, and then the lines are read in one pass, a third quicker than a line
    at a time (1.0 µs a fix against 1.7; docs/benchmarks.md, twenty-third session)."""
    if lines and not lines[-1].strip():
        lines = lines[:-1]
    try:
        values = [orjson.loads(line) for line in lines]
    except orjson.JSONDecodeError:  # a blank line among them, or one that is not JSON
        pass
    else:
        return list(map(Item, range(len(values)), values))
    items: list[Item] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            items.append(Item(i, orjson.loads(line)))
        except orjson.JSONDecodeError:
            items.append(Item(i, NOT_JSON))
    return items


class Stream:
    """A stream's body, split into its lines."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self._items: list[Item] | None = None

    def columns(self) -> RequestColumns | None:
        """The lines as the clean path reads them: all at once (`at_once`), or else, a line
        at a time, from their values (as every stream was read before msgspec, and as a
        JSON batch's fixes are), or None."""
        at_once = self.at_once()
        if at_once is not None:
            return at_once
        return RequestColumns.of_values([item.raw for item in self.items()])

    def items(self) -> list[Item]:
        """The lines as the full path reads them (parsed once, whichever asks first)."""
        if self._items is None:
            self._items = stream_items(self.lines)
        return self._items

    def at_once(self) -> RequestColumns | None:
        """Every line read in one call, if each is a plain fix of the fields a fix has."""
        lines = self.lines[:-1] if self.lines and not self.lines[-1].strip() else self.lines
        if not lines:
            return None
        try:
            # A JSON string holds no line break, so the lines are exactly the array's
            # items: one that held two (a comma between) would leave another empty.
            read = _LINES.decode(b"[" + b",".join(lines) + b"]")
        # (A ValidationError is a DecodeError; a string that is not UTF-8 raises
        # UnicodeDecodeError, a ValueError; a value nested too deep, RecursionError.)
        except (ValueError, RecursionError):
            return None
        if len(read) != len(lines):
            return None
        sats = [f.sats for f in read]
        named = [SOURCE_CODES.get(f.source, -1) for f in read]
        if -1 in named:
            return None
        return RequestColumns(
            tag_ids=[f.tag_id for f in read],
            texts=[f.ts for f in read],
            lat=np.array([f.lat for f in read], dtype=np.float64),
            lon=np.array([f.lon for f in read], dtype=np.float64),
            accuracy_m=np.array([f.accuracy_m for f in read], dtype=np.float64),
            speed_mps=np.array([f.speed_mps for f in read], dtype=np.float64),
            heading_deg=np.array([f.heading_deg for f in read], dtype=np.float64),
            hdop=np.array([f.hdop for f in read], dtype=np.float64),
            sats=np.array([-1 if v is None else v for v in sats], dtype=np.int64),
            source=np.array(named, dtype=np.int64),
        )
