"""The wire messages and device-facing bodies, and their versioned JSON Schemas in schemas/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from services.alerts.schemas import AlertFeedMessage, AlertMessage
from services.common.bus.messages import DeadLetter
from services.ingest.batch import FixBatchMessage, FixColumnsMessage, FixPackedMessage
from services.ingest.schemas import (
    DeviceEvent,
    DeviceEventIn,
    FixMessage,
    IngestResult,
    StreamedFix,
)
from services.ingest.schemas import Fix as DeviceFix
from services.zones.schemas import CrimeIn, CrimeMessage, ZoneFeature

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
VERSION = "v1"

# name -> model. Renaming or removing a field is a new version, never an edit.
WIRE: dict[str, type[BaseModel]] = {
    "fix": DeviceFix,
    "streamed-fix": StreamedFix,
    "ingest-result": IngestResult,
    "device-event-in": DeviceEventIn,
    "zone-feature": ZoneFeature,
    "crime-in": CrimeIn,
    # One fix as a message: the points topics carried these, many to a record, until
    # they carried batches as columns (tenth session); still how ingest's full path
    # makes each fix.
    "points-message": FixMessage,
    # A batch of fixes as columns of JSON values: what the points topics carried from
    # the tenth session to the twentieth, still read; and how a dead letter shows one.
    "points-batch-message": FixBatchMessage,
    # A batch of fixes as columns of bytes, its subjects a list of UUIDs: what the
    # points topics carried from the twenty-first session to the twenty-eighth, still
    # read.
    "points-columns-message": FixColumnsMessage,
    # What the points and stored-points topics carry: a batch of fixes as columns of
    # bytes, its subjects' UUIDs too (twenty-eighth session).
    "points-packed-message": FixPackedMessage,
    "device-events-message": DeviceEvent,
    "crimes-message": CrimeMessage,
    "alerts-message": AlertMessage,
    "alert-feed-message": AlertFeedMessage,
    "dead-letter-message": DeadLetter,
}


def schema_of(name: str, model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://tagtrail.example/schemas/{name}.{VERSION}.json",
        **schema,
    }


def schema_path(name: str) -> Path:
    return SCHEMA_DIR / f"{name}.{VERSION}.json"


def render(name: str, model: type[BaseModel]) -> str:
    return json.dumps(schema_of(name, model), indent=2, sort_keys=True) + "\n"


def write_schemas() -> list[Path]:
    SCHEMA_DIR.mkdir(exist_ok=True)
    paths = []
    for name, model in WIRE.items():
        path = schema_path(name)
        path.write_text(render(name, model))
        paths.append(path)
    return paths
