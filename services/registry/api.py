"""Admin API: enrol suppliers, tags and subjects; say who wears and who manages what."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status

from services.common.deps import Admin, SessionDep
from services.registry import service
from services.registry.schemas import (
    ManagerAssignmentIn,
    ManagerAssignmentOut,
    ManagerOut,
    MembershipIn,
    SubjectIn,
    SubjectOut,
    SupervisorIn,
    SupplierCreated,
    SupplierIn,
    TagAssignmentIn,
    TagAssignmentOut,
    TagIn,
    TagOut,
    TeamIn,
    TeamOut,
)
from services.trails import service as audit_service

# Every successful request here is written to the audit log.
router = APIRouter(
    prefix="/v1", tags=["registry"], dependencies=[Depends(audit_service.record_request)]
)


@router.post("/suppliers", status_code=status.HTTP_201_CREATED)
async def create_supplier(body: SupplierIn, session: SessionDep, _: Admin) -> SupplierCreated:
    supplier, token = await service.create_supplier(session, body)
    await session.commit()
    return SupplierCreated(
        id=supplier.id, name=supplier.name, created_at=supplier.created_at, token=token
    )


@router.post("/tags", status_code=status.HTTP_201_CREATED)
async def create_tag(body: TagIn, session: SessionDep, _: Admin) -> TagOut:
    tag = await service.create_tag(session, body)
    await session.commit()
    return TagOut(tag_id=tag.id, supplier_id=tag.supplier_id, created_at=tag.created_at)


@router.post("/subjects", status_code=status.HTTP_201_CREATED)
async def create_subject(body: SubjectIn, session: SessionDep, _: Admin) -> SubjectOut:
    subject = await service.create_subject(session, body)
    await session.commit()
    return SubjectOut.model_validate(subject)


@router.get("/subjects")
async def list_subjects(
    session: SessionDep,
    _: Admin,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[SubjectOut]:
    rows = await service.list_subjects(session, limit, offset)
    return [SubjectOut.model_validate(s) for s in rows]


@router.post("/subjects/{subject_id}/tags", status_code=status.HTTP_201_CREATED)
async def assign_tag(
    subject_id: uuid.UUID, body: TagAssignmentIn, session: SessionDep, _: Admin
) -> TagAssignmentOut:
    assignment = await service.assign_tag(session, subject_id, body)
    await session.commit()
    return TagAssignmentOut.model_validate(assignment)


@router.post("/subjects/{subject_id}/managers", status_code=status.HTTP_201_CREATED)
async def assign_manager(
    subject_id: uuid.UUID, body: ManagerAssignmentIn, session: SessionDep, _: Admin
) -> ManagerAssignmentOut:
    assignment = await service.assign_manager(session, subject_id, body)
    await session.commit()
    return ManagerAssignmentOut.model_validate(assignment)


@router.put("/managers/{manager_id}/supervisor")
async def set_supervisor(
    manager_id: uuid.UUID, body: SupervisorIn, session: SessionDep, _: Admin
) -> ManagerOut:
    """Who this manager's unacknowledged alerts escalate to."""
    manager = await service.set_supervisor(session, manager_id, body)
    await session.commit()
    return ManagerOut.model_validate(manager)


@router.post("/teams", status_code=status.HTTP_201_CREATED)
async def create_team(body: TeamIn, session: SessionDep, _: Admin) -> TeamOut:
    team = await service.create_team(session, body)
    await session.commit()
    return TeamOut.model_validate(team)


@router.put("/managers/{manager_id}/team")
async def set_team(
    manager_id: uuid.UUID, body: MembershipIn, session: SessionDep, _: Admin
) -> ManagerOut:
    """Which team's inbox gets this manager's caseload alerts (null: none)."""
    manager = await service.set_team(session, manager_id, body)
    await session.commit()
    return ManagerOut.model_validate(manager)
