"""Device-facing API: suppliers post fixes as JSON batches or NDJSON streams."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, status

from services.common.deps import RuntimeDep, SessionDep, Supplier
from services.common.errors import PayloadTooLarge, Unprocessable
from services.common.timeutil import utcnow
from services.ingest import service
from services.ingest.schemas import EventsResult, IngestResult
from services.ingest.service import Item

router = APIRouter(prefix="/v1", tags=["ingest"])


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/fixes", status_code=status.HTTP_202_ACCEPTED)
async def post_fixes(
    request: Request, runtime: RuntimeDep, session: SessionDep, supplier: Supplier
) -> IngestResult:
    """A batch of fixes from one tag. Answers once the accepted fixes are durably on the bus."""
    settings = runtime.settings.ingest
    body = await read_body(request, settings.max_body_bytes)
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise Unprocessable("the body must be an object with tag_id and fixes")
    tag_id = doc.get("tag_id")
    if not isinstance(tag_id, str) or not 1 <= len(tag_id) <= 64:
        raise Unprocessable("tag_id must be a string of 1 to 64 characters", field="tag_id")
    fixes = doc.get("fixes")
    if not isinstance(fixes, list):
        raise Unprocessable("fixes must be a list", field="fixes")
    if len(fixes) > settings.max_fixes_per_batch:
        raise PayloadTooLarge(
            f"{len(fixes)} fixes in one batch; at most {settings.max_fixes_per_batch}",
            field="fixes",
        )
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
    body = await read_body(request, settings.max_body_bytes)
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(f"the body is not valid JSON: {exc}") from exc
    events = doc.get("events") if isinstance(doc, dict) else None
    if not isinstance(events, list):
        raise Unprocessable("the body must be an object with a list of events", field="events")
    if len(events) > settings.max_fixes_per_batch:
        raise PayloadTooLarge(
            f"{len(events)} events in one batch; at most {settings.max_fixes_per_batch}",
            field="events",
        )
    items = [Item(i, raw) for i, raw in enumerate(events)]
    return await service.ingest_events(session, runtime.bus, supplier, items, utcnow(), settings)
