"""Registry decisions: enrolment, and which subject wears a tag at a given moment."""

from __future__ import annotations

import math
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import asyncpg
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.auth import Principal, Role, issue_token
from services.common.errors import Conflict, NotFound, Unprocessable
from services.registry import repository
from services.registry.models import (
    ManagerAssignment,
    Subject,
    Supplier,
    Tag,
    TagAssignment,
    Team,
    User,
)
from services.registry.schemas import (
    ManagerAssignmentIn,
    MembershipIn,
    SubjectIn,
    SupervisorIn,
    SupplierIn,
    TagAssignmentIn,
    TagIn,
    TeamIn,
)


class Wearing(NamedTuple):
    """One subject's time wearing a tag. (A named tuple: made for every tag of every
    request, and half as quick to make as a frozen dataclass.)"""

    subject_id: uuid.UUID
    valid_from: datetime
    valid_to: datetime | None


@dataclass(slots=True)
class TagInfo:
    """A tag and who has worn it when. Its wearings are all added before it is used."""

    tag_id: str
    supplier_id: uuid.UUID
    wearings: list[Wearing] = field(default_factory=list)
    # The wearings as `spans` gives them, once asked for.
    _spans: list[tuple[float, float, uuid.UUID]] | None = field(
        default=None, repr=False, compare=False
    )

    def subject_at(self, ts: datetime) -> uuid.UUID | None:
        """The subject wearing this tag at ts (periods never overlap: a constraint says so)."""
        for w in self.wearings:
            if w.valid_from <= ts and (w.valid_to is None or ts < w.valid_to):
                return w.subject_id
        return None

    def spans(self) -> list[tuple[float, float, uuid.UUID]]:
        """The wearings as (from, to, subject), times in seconds since 1970 (`to`
        infinite while it is worn), the latest first."""
        if self._spans is None:
            self._spans = sorted(
                (
                    (
                        w.valid_from.timestamp(),
                        math.inf if w.valid_to is None else w.valid_to.timestamp(),
                        w.subject_id,
                    )
                    for w in self.wearings
                ),
                key=lambda span: -span[0],
            )
        return self._spans

    def worn_throughout(self, first: float, last: float) -> uuid.UUID | None:
        """The subject wearing this tag from `first` to `last` (seconds since 1970, first
        <= last), if one subject wore it all that time."""
        for start, end, subject in self.spans():
            if start <= first:
                return subject if last < end else None
        return None


async def resolve_tags(conn: asyncpg.Connection, tag_ids: Sequence[str]) -> dict[str, TagInfo]:
    infos: dict[str, TagInfo] = {}
    for (
        tag_id,
        supplier_id,
        subject_id,
        valid_from,
        valid_to,
    ) in await repository.tags_with_assignments(conn, list(set(tag_ids))):
        info = infos.setdefault(tag_id, TagInfo(tag_id, supplier_id))
        if subject_id is not None and valid_from is not None:
            info.wearings.append(Wearing(subject_id, valid_from, valid_to))
    return infos


class TagDirectory:
    """The tags a process has met and who wears them, as of the registry's generation (a
    number a trigger moves with every committed change to tags or their wearers): ingest
    asks for a request's tags every request, and reads one number instead of every tag
    (2,000 rows a request of the benchmark), the tags only when the number has moved or
    a tag is new to it. A change that commits while a request is admitted is seen by
    the next request, as it would be had the request read the tags a moment sooner.
    Unknown tags are asked after every time. At most `max_tags` are kept."""

    def __init__(self, max_tags: int = 100_000) -> None:
        self.max_tags = max_tags
        self._generation: int | None = None
        self._tags: dict[str, TagInfo] = {}

    async def resolve(self, conn: asyncpg.Connection, tag_ids: Sequence[str]) -> dict[str, TagInfo]:
        """As resolve_tags: the tags among these that exist, each with who wears it when."""
        # The number first: tags read after it are at least as new as it says.
        generation = await repository.tag_generation(conn)
        if generation != self._generation or len(self._tags) > self.max_tags:
            self._tags = {}
            self._generation = generation
        known = self._tags
        missing = [t for t in set(tag_ids) if t not in known]
        if missing:
            known.update(await resolve_tags(conn, missing))
        return {t: known[t] for t in tag_ids if t in known}


async def list_subjects(session: AsyncSession, limit: int, offset: int) -> Sequence[Subject]:
    return await repository.list_subjects(session, limit, offset)


async def managed_subjects(
    session: AsyncSession, manager_id: uuid.UUID, at: datetime
) -> Sequence[uuid.UUID]:
    return await repository.subjects_managed_at(session, manager_id, at)


async def create_supplier(session: AsyncSession, body: SupplierIn) -> tuple[Supplier, str]:
    supplier = Supplier(name=body.name)
    session.add(supplier)
    await _flush(session, f"a supplier named {body.name!r} already exists")
    token = await issue_token(session, Principal(supplier.id, Role.supplier, supplier.name))
    return supplier, token


async def create_user_token(session: AsyncSession, role: Role, name: str) -> tuple[User, str]:
    """Finds or creates the user (name, role) and gives them a new token."""
    if role is Role.supplier:
        raise Unprocessable("supplier tokens come with the supplier (POST /v1/suppliers)")
    user = await repository.find_user(session, name, role.value)
    if user is None:
        user = User(name=name, role=role.value)
        session.add(user)
        await session.flush()
    token = await issue_token(session, Principal(user.id, role, name))
    return user, token


async def create_tag(session: AsyncSession, body: TagIn) -> Tag:
    if await repository.get_supplier(session, body.supplier_id) is None:
        raise NotFound(f"supplier {body.supplier_id} does not exist")
    tag = Tag(id=body.tag_id, supplier_id=body.supplier_id)
    session.add(tag)
    await _flush(session, f"tag {body.tag_id} is already enrolled")
    return tag


async def create_subject(session: AsyncSession, body: SubjectIn) -> Subject:
    subject = Subject(
        reference=body.reference, display_name=body.display_name, risk=body.risk.value
    )
    session.add(subject)
    await _flush(session, f"a subject with reference {body.reference!r} already exists")
    return subject


async def assign_tag(
    session: AsyncSession, subject_id: uuid.UUID, body: TagAssignmentIn
) -> TagAssignment:
    await require_subject(session, subject_id)
    if await repository.get_tag(session, body.tag_id) is None:
        raise NotFound(f"tag {body.tag_id} is not enrolled")
    assignment = TagAssignment(
        tag_id=body.tag_id,
        subject_id=subject_id,
        valid_from=body.valid_from,
        valid_to=body.valid_to,
    )
    session.add(assignment)
    await _flush(session, f"tag {body.tag_id} is already worn by a subject during that period")
    return assignment


async def assign_manager(
    session: AsyncSession, subject_id: uuid.UUID, body: ManagerAssignmentIn
) -> ManagerAssignment:
    await require_subject(session, subject_id)
    manager = await repository.get_user(session, body.manager_id)
    if manager is None or manager.role != Role.manager.value:
        raise NotFound(f"manager {body.manager_id} does not exist")
    assignment = ManagerAssignment(
        subject_id=subject_id,
        manager_id=body.manager_id,
        valid_from=body.valid_from,
        valid_to=body.valid_to,
    )
    session.add(assignment)
    await session.flush()
    return assignment


async def require_subject(session: AsyncSession, subject_id: uuid.UUID) -> Subject:
    subject = await repository.get_subject(session, subject_id)
    if subject is None:
        raise NotFound(f"subject {subject_id} does not exist")
    return subject


async def _flush(session: AsyncSession, conflict_message: str) -> None:
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(conflict_message) from exc


async def wearing_at(session: AsyncSession, at: datetime) -> dict[uuid.UUID, datetime]:
    return await repository.wearing_at(session, at)


async def wearing_between(
    session: AsyncSession,
    start: datetime,
    end: datetime,
) -> Sequence[uuid.UUID]:
    return await repository.wearing_between(session, start, end)


async def wearing_in(
    session: AsyncSession, windows: Sequence[tuple[uuid.UUID, datetime, datetime]]
) -> list[bool]:
    """For each (subject, start, end): whether the subject wore a tag at any moment
    between start and end (as wearing_between says, many windows in one read)."""
    wearings = await repository.wearings_of(session, {s for s, _, _ in windows})
    return [
        any(f <= end and (t is None or t > start) for f, t in wearings.get(s, ()))
        for s, start, end in windows
    ]


@dataclass(frozen=True, slots=True)
class Responsible:
    """Who answered for a subject at a moment: the managers assigned then, their teams
    (sorted, each once), and the subject's risk."""

    managers: list[uuid.UUID]
    teams: list[uuid.UUID]
    risk: str


async def responsible_at(
    session: AsyncSession, moments: Collection[tuple[uuid.UUID, datetime]]
) -> dict[tuple[uuid.UUID, datetime], Responsible]:
    """Who answered for each (subject, moment), in three reads however many there are."""
    if not moments:
        return {}
    subjects = {s for s, _ in moments}
    assignments = await repository.manager_assignments_of(session, subjects)
    risks = await repository.risks_of(session, subjects)
    managers = {
        (s, at): sorted(
            {m for m, f, t in assignments.get(s, ()) if f <= at and (t is None or t > at)}
        )
        for s, at in moments
    }
    teams = await repository.teams_by_user(session, {m for ms in managers.values() for m in ms})
    return {
        key: Responsible(
            ms, sorted({teams[m] for m in ms if m in teams}), risks.get(key[0], "medium")
        )
        for key, ms in managers.items()
    }


async def set_supervisor(session: AsyncSession, manager_id: uuid.UUID, body: SupervisorIn) -> User:
    manager = await repository.get_user(session, manager_id)
    supervisor = await repository.get_user(session, body.supervisor_id)
    if manager is None or manager.role != Role.manager.value:
        raise NotFound(f"manager {manager_id} does not exist")
    if supervisor is None or supervisor.role != Role.supervisor.value:
        raise NotFound(
            f"supervisor {body.supervisor_id} does not exist (a supervisor is a user with "
            "the supervisor role)"
        )
    manager.supervisor_id = body.supervisor_id
    await session.flush()
    return manager


async def supervisors_of(
    session: AsyncSession, manager_ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    return await repository.supervisors_of(session, manager_ids)


async def supervised_by(session: AsyncSession, supervisor_id: uuid.UUID) -> list[uuid.UUID]:
    """The managers this supervisor oversees."""
    return await repository.supervised_by(session, supervisor_id)


async def create_team(session: AsyncSession, body: TeamIn) -> Team:
    team = Team(name=body.name)
    session.add(team)
    await _flush(session, f"a team named {body.name!r} already exists")
    return team


async def set_team(session: AsyncSession, manager_id: uuid.UUID, body: MembershipIn) -> User:
    manager = await repository.get_user(session, manager_id)
    if manager is None or manager.role not in (Role.manager.value, Role.supervisor.value):
        raise NotFound(f"manager or supervisor {manager_id} does not exist")
    if body.team_id is not None and await repository.get_team(session, body.team_id) is None:
        raise NotFound(f"team {body.team_id} does not exist")
    manager.team_id = body.team_id
    await session.flush()
    return manager


async def team_of(session: AsyncSession, user_id: uuid.UUID) -> uuid.UUID | None:
    user = await repository.get_user(session, user_id)
    return user.team_id if user else None
