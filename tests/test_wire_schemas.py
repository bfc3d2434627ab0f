"""The JSON Schemas under schemas/ are the models' own, and real messages satisfy them."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from asyncpg.pgproto.pgproto import UUID as PgUUID
from jsonschema import Draft202012Validator

from services.ingest.batch import FixBatch
from services.ingest.schemas import FixMessage
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


def test_a_points_batch_validates_against_its_schema() -> None:
    """A batch as the points topics carry it, with fixes that lack their optional
    values (nulls in the columns), satisfies its schema and decodes to the same fixes."""
    subject = uuid.uuid4()
    fixes = [
        _fix(k, f"T{k % 2}", subject, speed_mps=None if k % 2 else 1.5, sats=None if k % 3 else 9)
        for k in range(6)
    ]
    payload = FixBatch.of(fixes).encode()
    schema = json.loads(schema_path("points-batch-message").read_text())
    Draft202012Validator(schema).validate(json.loads(payload))
    assert FixBatch.decode(payload).messages() == fixes


def test_a_part_of_a_batch_carries_only_its_own_tags_and_subjects() -> None:
    """A lane's part of a request's batch shares the request's lists; on the wire it
    names only the tags and subjects of its own fixes, and decodes to the same fixes."""
    subjects = [uuid.uuid4() for _ in range(4)]
    fixes = [_fix(k, f"T{k % 5}", subjects[k % 4]) for k in range(20)]
    rows = [k for k in range(20) if k % 5 in (1, 3)]
    part = FixBatch.of(fixes).take(np.array(rows))
    wire = json.loads(part.encode())
    assert sorted(wire["tags"]) == ["T1", "T3"]
    assert sorted(wire["subjects"]) == sorted({str(subjects[k % 4]) for k in rows})
    assert FixBatch.decode(part.encode()).messages() == [fixes[k] for k in rows]


def test_a_batch_names_its_subjects_alike_whichever_kind_of_uuid_holds_them() -> None:
    """Subjects come as asyncpg's UUIDs from the database and as uuid.UUID from the bus;
    on the wire both are the same canonical text."""
    fixes = [_fix(k, f"T{k}", uuid.uuid4()) for k in range(3)]
    batch = FixBatch.of(fixes)
    theirs = dataclasses.replace(batch, subjects=[PgUUID(s.bytes) for s in batch.subjects])
    assert theirs.encode() == batch.encode()
    assert json.loads(batch.encode())["subjects"] == [str(f.subject_id) for f in fixes]
