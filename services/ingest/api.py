"""Device-facing API: suppliers post fixes as JSON batches or NDJSON streams."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request, status

from services.common.auth import Principal
from services.common.deps import RuntimeDep, Supplier
from services.common.errors import PayloadTooLarge, Unprocessable
from services.common.limits import read_body
from services.common.runtime import Runtime
from services.common.settings import IngestSettings
from services.common.timeutil import utcnow
from services.ingest import service
from services.ingest.ndjson import Stream
from services.ingest.schemas import EventsResult, IngestResult
from services.ingest.service import Fixes, IngestMemory, Item

router = APIRouter(prefix="/v1", tags=["ingest"])

# The device routes take no ORM session: authentication reads on a pool connection of
# its own, and ingest on another, each given back before the bus is waited on. So no
# request holds a connection while it waits; on the in-process bus the handlers a
# publish waits for need connections of their own, and however many requests wait,
# they must not hold them all.


def ingest_memory(request: Request, settings: IngestSettings) -> IngestMemory:
    """The app's tags and their horizons as met so far (one an app, as an app serves one
    database)."""
    state = request.app.state
    memory: IngestMemory | None = getattr(state, "ingest_memory", None)
    if memory is None:
        memory = state.ingest_memory = IngestMemory.new(settings.horizon_ttl_s)
    return memory


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


Answer = TypeVar("Answer")


async def _hand_over(
    take: Callable[..., Awaitable[Answer]],
    request: Request,
    runtime: Runtime,
    supplier: Principal,
    items: list[Item] | Fixes,
) -> Answer:
    """A request's items to ingest (`take`: service.ingest or service.ingest_events)."""
    return await take(
        runtime.db,
        runtime.bus,
        ingest_memory(request, runtime.settings.ingest),
        supplier,
        items,
        utcnow(),
        runtime.settings.ingest,
    )


@router.post("/fixes", status_code=status.HTTP_202_ACCEPTED)
async def post_fixes(request: Request, runtime: RuntimeDep, supplier: Supplier) -> IngestResult:
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
    return await _hand_over(service.ingest, request, runtime, supplier, items)


@router.post("/fixes/stream", status_code=status.HTTP_202_ACCEPTED)
async def post_fix_stream(
    request: Request, runtime: RuntimeDep, supplier: Supplier
) -> IngestResult:
    """NDJSON, one fix with its tag_id per line; index in the answer is the 0-based line."""
    settings = runtime.settings.ingest
    body = await read_body(request, settings.max_stream_bytes)
    lines = body.split(b"\n")
    if len(lines) > settings.max_stream_lines + 1:
        raise PayloadTooLarge(f"more than {settings.max_stream_lines} lines in one stream")
    return await _hand_over(service.ingest, request, runtime, supplier, Stream(lines))


@router.post("/device-events", status_code=status.HTTP_202_ACCEPTED)
async def post_device_events(
    request: Request, runtime: RuntimeDep, supplier: Supplier
) -> EventsResult:
    """Device conditions: {"events": [{"tag_id", "ts", "kind", ...}, ...]}."""
    settings = runtime.settings.ingest
    _, events = await read_json_list(
        request, settings.max_body_bytes, "events", settings.max_fixes_per_batch
    )
    items = [Item(i, raw) for i, raw in enumerate(events)]
    return await _hand_over(service.ingest_events, request, runtime, supplier, items)
