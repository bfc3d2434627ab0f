"""The JSON Schemas under schemas/ are the models' own, and real messages satisfy them."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest
from asyncpg.pgproto.pgproto import UUID as PgUUID
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from services.ingest import batch as batch_module
from services.ingest.batch import FixBatch, SubjectTable
from services.ingest.schemas import FixMessage, FixSource
from services.wire import WIRE, render, schema_path


@pytest.mark.parametrize("name", sorted(WIRE))
def test_schema_file_matches_its_model(name: str) -> None:
    path = schema_path(name)
    assert path.exists(), f"{path} is missing: run `make schemas`"
    assert path.read_text() == render(name, WIRE[name]), (
        f"{path.name} is out of step with its model: run `make schemas` and, if a field "
        "was renamed or removed, add a new version instead"
    )


@pytest.mark.parametrize("name", sorted(WIRE))
def test_schema_is_valid_json_schema(name: str) -> None:
    Draft202012Validator.check_schema(json.loads(schema_path(name).read_text()))


def test_a_points_message_validates_against_its_schema() -> None:
    message = FixMessage(
        tag_id="T1",
        subject_id=uuid.uuid4(),
        ts=datetime(2026, 11, 25, 10, tzinfo=UTC),
        received_at=datetime(2026, 11, 25, 10, 1, tzinfo=UTC),
        lat=52.57,
        lon=-0.24,
        accuracy_m=8,
    )
    schema = json.loads(schema_path("points-message").read_text())
    Draft202012Validator(schema).validate(json.loads(message.model_dump_json()))


def _fix(minute: int, tag_id: str, subject_id: uuid.UUID, **optional: Any) -> FixMessage:
    return FixMessage(
        tag_id=tag_id,
        subject_id=subject_id,
        ts=datetime(2026, 11, 25, 10, minute, tzinfo=UTC),
        received_at=datetime(2026, 11, 25, 10, 30, tzinfo=UTC),
        lat=52.57,
        lon=-0.24,
        accuracy_m=8,
        **optional,
    )


def _lacking(n: int = 6) -> list[FixMessage]:
    """Fixes of two tags and two sources, some without their optional values."""
    subject = uuid.uuid4()
    return [
        _fix(
            k,
            f"T{k % 2}",
            subject,
            speed_mps=None if k % 2 else 1.5,
            sats=None if k % 3 else 9,
            source=FixSource.wifi if k % 4 == 1 else FixSource.gps,
        )
        for k in range(n)
    ]


def test_a_points_batch_validates_against_its_schema() -> None:
    """A batch as the points topics carry it, with fixes that lack their optional
    values, satisfies its schema and decodes to the same fixes."""
    fixes = _lacking()
    payload = FixBatch.of(fixes).encode()
    schema = json.loads(schema_path("points-packed-message").read_text())
    Draft202012Validator(schema).validate(json.loads(payload))
    assert FixBatch.decode(payload).messages() == fixes


def test_a_points_batch_with_its_subjects_as_text_still_decodes() -> None:
    """What the points topics carried until the twenty-eighth session (the subjects a
    list of UUIDs' text, the older schema) still decodes to the same fixes."""
    fixes = _lacking()
    wire = json.loads(FixBatch.of(fixes).encode())
    wire["subjects"] = [str(uuid.UUID(bytes=raw)) for raw in _subjects_of(wire)]
    schema = json.loads(schema_path("points-columns-message").read_text())
    Draft202012Validator(schema).validate(wire)
    assert FixBatch.decode(orjson.dumps(wire)).messages() == fixes


def _subjects_of(wire: dict[str, Any]) -> list[bytes]:
    """A packed message's subjects, each its UUID's 16 bytes."""
    packed = base64.urlsafe_b64decode(wire["subjects"])
    return [packed[i : i + 16] for i in range(0, len(packed), 16)]


def test_a_batch_as_a_dead_letter_shows_it_is_readable_and_still_decodes() -> None:
    """How a dead letter shows a batch: a JSON array a column (nulls where a value is
    not there), satisfying the older batch schema, which decode still reads."""
    fixes = _lacking()
    payload = FixBatch.of(fixes).readable()
    schema = json.loads(schema_path("points-batch-message").read_text())
    Draft202012Validator(schema).validate(json.loads(payload))
    assert json.loads(payload)["lat"] == [52.57] * 6
    assert json.loads(payload)["speed_mps"] == [1.5, None] * 3
    assert FixBatch.decode(payload).messages() == fixes


def test_a_batch_travels_exactly_however_its_values_look() -> None:
    """Every value comes back bit for bit: times to the microsecond over the years (as
    far as FixBatch keeps them exact, to 2106),
    coordinates at their bounds, optional values there and not."""
    rng = np.random.default_rng(7)
    fixes = [
        FixMessage(
            tag_id=f"T{k % 7}",
            subject_id=uuid.UUID(int=k % 5 + 1),
            ts=datetime(1971 + k % 130, 1 + k % 12, 1 + k % 28, tzinfo=UTC)
            + timedelta(microseconds=int(rng.integers(0, 86_400_000_000))),
            received_at=datetime(2026, 11, 25, tzinfo=UTC),
            lat=float(rng.choice([-90.0, 90.0, rng.uniform(-90, 90)])),
            lon=float(rng.choice([-180.0, 180.0, rng.uniform(-180, 180)])),
            accuracy_m=float(rng.choice([5e-324, 0.1, 1e300])),
            speed_mps=rng.choice([None, 0.0, 150.0]),
            heading_deg=rng.choice([None, 0.0, 359.999999]),
            source=rng.choice(list(FixSource)),
            sats=rng.choice([None, 0, 64]),
            hdop=rng.choice([None, 0.0, 100.0]),
        )
        for k in range(400)
    ]
    assert FixBatch.decode(FixBatch.of(fixes).encode()).messages() == fixes


def _columns(fixes: list[FixMessage]) -> dict[str, Any]:
    return json.loads(FixBatch.of(fixes).encode())


def _b64(values: list[float], dtype: str) -> str:
    return base64.urlsafe_b64encode(np.array(values, dtype=dtype).tobytes()).decode()


@pytest.mark.parametrize(
    ("column", "values", "dtype", "error"),
    [
        ("lat", [52.0, 90.5, 52.0], "<f8", "lat of fix 1 is 90.5: it must be >= -90 and <= 90"),
        ("lon", [0.0, 0.0, float("nan")], "<f8", "lon of fix 2 is nan"),
        ("accuracy_m", [8.0, 0.0, 8.0], "<f8", "accuracy_m of fix 1 is 0.0: it must be > 0"),
        ("accuracy_m", [float("inf"), 8.0, 8.0], "<f8", "accuracy_m of fix 0 is inf"),
        ("speed_mps", [1.0, float("nan"), -0.5], "<f8", "speed_mps of fix 2 is -0.5"),
        ("heading_deg", [360.0, 1.0, 1.0], "<f8", "heading_deg of fix 0 is 360.0"),
        ("hdop", [float("-inf"), 1.0, 1.0], "<f8", "hdop of fix 0 is -inf"),
        ("sats", [-1, 65, 3], "i1", "sats of fix 1 is 65: it must be >= 0 and <= 64"),
        ("sats", [-2, 1, 3], "i1", "sats of fix 0 is -2"),
        ("ts", [-1.0, 0.0, 0.0], "<f8", "ts of fix 0 is -1.0: it must be >= 0 and < 253402300800"),
        ("tag", [0, 1, 2], "<i4", "tag must index tags"),
        ("subject", [0, -1, 0], "<i4", "subject must index subjects"),
        ("source", [0, 0, 1], "u1", "source must index sources"),
        ("lat", [52.0, 52.0], "<f8", "every column must hold one value a fix"),
    ],
)
def test_a_points_batch_out_of_bounds_is_refused_naming_the_column_and_fix(
    column: str, values: list[float], dtype: str, error: str
) -> None:
    """Columns of bytes are held to a device fix's bounds as JSON values are: a value out
    of them, or a code past its list, is refused, and the error says where."""
    subject = uuid.uuid4()
    wire = _columns([_fix(k, "T0", subject) for k in range(3)])
    wire[column] = _b64(values, dtype)
    with pytest.raises(ValidationError) as caught:
        FixBatch.decode(orjson.dumps(wire))
    assert error in str(caught.value)


def test_a_column_of_a_broken_length_is_refused() -> None:
    wire = _columns([_fix(k, "T0", uuid.uuid4()) for k in range(3)])
    wire["lat"] = base64.urlsafe_b64encode(b"\0" * 23).decode()
    with pytest.raises(ValidationError, match="lat must hold 8 bytes a fix"):
        FixBatch.decode(orjson.dumps(wire))


def test_subjects_of_a_broken_length_are_refused() -> None:
    wire = _columns([_fix(k, "T0", uuid.uuid4()) for k in range(3)])
    wire["subjects"] = base64.urlsafe_b64encode(b"\1" * 17).decode()
    with pytest.raises(ValidationError, match="subjects must hold 16 bytes a subject"):
        FixBatch.decode(orjson.dumps(wire))


def test_a_part_of_a_batch_carries_only_its_own_tags_and_subjects() -> None:
    """A lane's part of a request's batch shares the request's lists; on the wire it
    names only the tags and subjects of its own fixes, and decodes to the same fixes."""
    subjects = [uuid.uuid4() for _ in range(4)]
    fixes = [_fix(k, f"T{k % 5}", subjects[k % 4]) for k in range(20)]
    rows = [k for k in range(20) if k % 5 in (1, 3)]
    part = FixBatch.of(fixes).take(np.array(rows))
    wire = json.loads(part.encode())
    assert sorted(wire["tags"]) == ["T1", "T3"]
    assert sorted(_subjects_of(wire)) == sorted({subjects[k % 4].bytes for k in rows})
    assert FixBatch.decode(part.encode()).messages() == [fixes[k] for k in rows]


def test_a_batch_names_its_subjects_alike_whichever_kind_of_uuid_holds_them() -> None:
    """Subjects come as asyncpg's UUIDs from the database and as uuid.UUID from the bus;
    on the wire both are the same 16 bytes."""
    fixes = [_fix(k, f"T{k}", uuid.uuid4()) for k in range(3)]
    batch = FixBatch.of(fixes)
    theirs = dataclasses.replace(batch, subjects=[PgUUID(s.bytes) for s in batch.subjects])
    assert theirs.encode() == batch.encode()
    assert _subjects_of(json.loads(batch.encode())) == [f.subject_id.bytes for f in fixes]


def _sharing_first_halves(n: int) -> list[uuid.UUID]:
    """UUIDs in pairs alike in their first 8 bytes, apart in their last."""
    return [uuid.UUID(int=((k // 2 + 1) << 64) | (k % 2 + 1)) for k in range(n)]


def test_the_subjects_table_numbers_each_subject_once_whatever_its_bytes_share() -> None:
    """A subject met again, in any message, has its first number; subjects alike in the
    bytes the table sorts by are told apart; each number names its own subject's one
    UUID object."""
    table = SubjectTable()
    subjects = [*_sharing_first_halves(6), *(uuid.uuid4() for _ in range(4))]
    rng = random.Random(3)
    seen: dict[uuid.UUID, int] = {}
    for _ in range(30):
        picked = rng.sample(subjects, rng.randint(0, len(subjects)))
        numbers = table.ids(b"".join(s.bytes for s in picked)).tolist()
        for s, number in zip(picked, numbers, strict=True):
            assert seen.setdefault(s, number) == number
            assert table.uuids[number] == s
    assert len(table.uuids) == len(seen) == len(subjects)
    assert table.packed(table.uuids).tobytes() == b"".join(s.bytes for s in table.uuids)


def test_the_subjects_table_starts_afresh_when_full_and_batches_keep_their_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past its size the table starts a new list (only when more must be added: those
    it holds are found in it); batches decoded before still name theirs, and joined
    with later ones they name the same subjects."""
    table = SubjectTable(max_subjects=4)
    monkeypatch.setattr(batch_module, "SUBJECTS", table)
    first = [_fix(k, "T0", s) for k, s in enumerate(_sharing_first_halves(3))]
    later = [_fix(k, "T1", uuid.uuid4()) for k in range(3)]
    before, again, after = (
        FixBatch.decode(FixBatch.of(fixes).encode()) for fixes in (first, first, later)
    )
    # (Subjects met before are found in a table too full for more.)
    assert again.subjects is before.subjects
    assert before.subjects is not after.subjects is table.uuids
    assert len(before.subjects) == 3
    assert before.messages() == first and after.messages() == later
    assert FixBatch.concat([before, after]).messages() == first + later


def test_decoded_batches_join_by_their_codes_and_store_their_subjects_bytes() -> None:
    """Batches read off the wire name the process's subjects table, and joined they keep
    it; joined with a batch made otherwise (an older record), they are merged by value.
    Either way each fix keeps its subject, and its COPY row has the subject's bytes."""
    subjects = [uuid.uuid4() for _ in range(5)]
    parts = [[_fix(k, f"T{k % 3}", subjects[(k + j) % 5]) for k in range(7)] for j in range(3)]
    decoded = [FixBatch.decode(FixBatch.of(p).encode()) for p in parts]
    joined = FixBatch.concat(decoded)
    assert joined.subjects is decoded[0].subjects
    mixed = FixBatch.concat([*decoded, FixBatch.of(parts[0])])
    for batch, fixes in (
        (joined, parts[0] + parts[1] + parts[2]),
        (mixed, [*joined.messages(), *parts[0]]),
    ):
        assert batch.messages() == fixes
        rows = batch.rows()
        assert [bytes(v) for v in rows.subject_id.tolist()] == [f.subject_id.bytes for f in fixes]
