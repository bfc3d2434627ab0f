"""Device-facing API: suppliers post fixes as JSON batches or NDJSON streams."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, status

from services.common.deps import RuntimeDep, SessionDep, Supplier
from services.common.errors import PayloadTooLarge, Unprocessable
from services.common.limits import read_body
from services.common.timeutil import utcnow
from services.ingest import service
from services.ingest.schemas import EventsResult, IngestResult
from services.ingest.service import Item

router = APIRouter(prefix="/v1", tags=["ingest"])


async def read_json_list(
    request: Request, limit: int, key: str, max_items: int
) -> tuple[dict[str, Any], list[Any]]:
    """The body as a JSON object holding a bounded list under key."""
    body = await read_body(request, limit)
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise Unprocessable(f"the body must be a JSON object with {key}")
    items = doc.get(key)
    if not isinstance(items, list):
        raise Unprocessable(f"{key} must be a list", field=key)
    if len(items) > max_items:
        raise PayloadTooLarge(f"{len(items)} {key} in one batch; at most {max_items}", field=key)
    return doc, items


@router.post("/fixes", status_code=status.HTTP_202_ACCEPTED)
async def post_fixes(
    request: Request, runtime: RuntimeDep, session: SessionDep, supplier: Supplier
) -> IngestResult:
    """A batch of fixes from one tag. Answers once the accepted fixes are durably on the bus."""
    settings = runtime.settings.ingest
    doc, fixes = await read_json_list(
        request, settings.max_body_bytes, "fixes", settings.max_fixes_per_batch
    )
    tag_id = doc.get("tag_id")
    if not isinstance(tag_id, str) or not 1 <= len(tag_id) <= 64:
        raise Unprocessable("tag_id must be a string of 1 to 64 characters", field="tag_id")
    items = [
        Item(i, {**raw, "tag_id": tag_id} if isinstance(raw, dict) else raw)
        for i, raw in enumerate(fixes)
    ]
    return await service.ingest(
        session, runtime.db, runtime.bus, supplier, items, utcnow(), settings
    )


@router.post("/fixes/stream", status_code=status.HTTP_202_ACCEPTED)
async def post_fix_stream(
    request: Request, runtime: RuntimeDep, session: SessionDep, supplier: Supplier
) -> IngestResult:
    """NDJSON, one fix with its tag_id per line; index in the answer is the 0-based line."""
    settings = runtime.settings.ingest
    body = await read_body(request, settings.max_stream_bytes)
    lines = body.split(b"\n")
    if len(lines) > settings.max_stream_lines + 1:
        raise PayloadTooLarge(f"more than {settings.max_stream_lines} lines in one stream")
    items: list[Item] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            items.append(Item(i, orjson.loads(line)))
        except orjson.JSONDecodeError:
            items.append(Item(i, service.NOT_JSON))
    return await service.ingest(
        session, runtime.db, runtime.bus, supplier, items, utcnow(), settings
    )


@router.post("/device-events", status_code=status.HTTP_202_ACCEPTED)
async def post_device_events(
    request: Request, runtime: RuntimeDep, session: SessionDep, supplier: Supplier
) -> EventsResult:
    """Device conditions: {"events": [{"tag_id", "ts", "kind", ...}, ...]}."""
    settings = runtime.settings.ingest
    _, events = await read_json_list(
        request, settings.max_body_bytes, "events", settings.max_fixes_per_batch
    )
    items = [Item(i, raw) for i, raw in enumerate(events)]
    return await service.ingest_events(
        session, runtime.db, runtime.bus, supplier, items, utcnow(), settings
    )
