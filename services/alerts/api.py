"""Alerts API for offender managers: each sees only the subjects they manage."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from services.alerts import repository
from services.alerts.schemas import AlertKind, AlertOut, AlertPage
from services.common.auth import Principal, Role
from services.common.deps import ManagerOrAdmin, SessionDep
from services.common.errors import NotFound
from services.common.timeutil import utcnow
from services.registry import service as registry

router = APIRouter(prefix="/v1", tags=["alerts"])


async def _caseload(session: SessionDep, user: Principal) -> list[uuid.UUID] | None:
    """The subjects whose alerts this user may see; None means all (administrators)."""
    if user.role is Role.admin:
        return None
    return list(await registry.managed_subjects(session, user.id, utcnow()))


@router.get("/alerts")
async def list_alerts(
    session: SessionDep,
    user: ManagerOrAdmin,
    kind: AlertKind | None = None,
    # Superseded alerts (late fixes showed the trail differently) are left out unless
    # asked for by state=superseded; each names the alert that replaced it.
    state: Annotated[str | None, Query(pattern="^(open|acknowledged|closed|superseded)$")] = None,
    subject_id: uuid.UUID | None = None,
    since: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AlertPage:
    subjects = await _caseload(session, user)
    if subject_id is not None:
        subjects = [subject_id] if subjects is None or subject_id in subjects else []
    rows = await repository.list_alerts(
        session,
        subject_ids=subjects,
        kind=kind.value if kind else None,
        state=state,
        since=since,
        limit=limit,
        offset=offset,
    )
    items = [AlertOut.model_validate(a) for a in rows]
    return AlertPage(items=items, next_offset=offset + limit if len(items) == limit else None)


@router.get("/alerts/{alert_id}")
async def get_alert(alert_id: uuid.UUID, session: SessionDep, user: ManagerOrAdmin) -> AlertOut:
    alert = await repository.get(session, alert_id)
    subjects = await _caseload(session, user)
    # Someone else's alert is "not found": its existence is itself information.
    if alert is None or (subjects is not None and alert.subject_id not in subjects):
        raise NotFound(f"alert {alert_id} does not exist")
    return AlertOut.model_validate(alert)
