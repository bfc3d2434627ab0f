"""Registry decisions: enrolment, and which subject wears a tag at a given moment."""

from __future__ import annotations

import math
import uuid
from collections.abc import Collection, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import NamedTuple

import asyncpg
import numpy as np
import numpy.typing as npt
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


class TagCodes:
    """A number for each tag id a process has met, 0, 1, 2, ... in the order met, so that
    what it keeps of its tags (who wears each, each one's horizon) is kept in arrays by
    number, and a request's 2,000 tags are read from them at once. Asked of each tag one
    step after another (the directory, each wearer, the horizons, a hash for each key),
    a request cost ingest about 1.1 µs a fix (docs/benchmarks.md, twenty-sixth
    session). At most `max_tags` are kept: past that, every number is dropped when more
    are next asked for, and `epoch` counts the times, so that whatever was kept by
    number is dropped as well."""

    def __init__(self, max_tags: int = 100_000) -> None:
        self.max_tags = max_tags
        self.epoch = 0
        self._codes: dict[str, int] = {}
        # Each number's tag id.
        self.names: list[str] = []

    def __len__(self) -> int:
        return len(self.names)

    def of(self, tag_ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Each tag id's number, numbering those not met before."""
        if len(self.names) > self.max_tags:
            self._codes, self.names = {}, []
            self.epoch += 1
        codes = self._codes
        # Nearly always every one has been met: looked up in C, half the time of
        # numbering each (67 µs against 128 for 2,000; twenty-eighth session).
        with suppress(KeyError):
            return np.fromiter(map(codes.__getitem__, tag_ids), np.int64, len(tag_ids))
        met = len(codes)
        found = [codes.setdefault(t, len(codes)) for t in tag_ids]
        if len(codes) > met:
            # The new ones are the dict's last (it keeps insertion order).
            self.names.extend(reversed(list(islice(reversed(codes), len(codes) - met))))
        return np.array(found, dtype=np.int64)


class TagDirectory:
    """The tags a process has met and who wears them, as of the registry's generation (a
    number a trigger moves with every committed change to tags or their wearers): ingest
    asks for a request's tags every request, and reads one number instead of every tag
    (2,000 rows a request of the benchmark), the tags only when the number has moved or
    a tag is new to it. A change that commits while a request is admitted is seen by
    the next request, as it would be had the request read the tags a moment sooner.
    Unknown tags are asked after every time. Kept by the tags' numbers (TagCodes, at
    most `max_tags` of them), with each tag's latest wearing as columns, so that whom
    a request's tags were worn by is answered for all of them at once (`wearers`)."""

    def __init__(self, max_tags: int = 100_000, codes: TagCodes | None = None) -> None:
        self.codes = TagCodes(max_tags) if codes is None else codes
        self._generation: int | None = None
        # Moves with every drop: a read that a drop overtook while it waited is read again.
        self._drops = 0
        self._drop()

    def _drop(self) -> None:
        """Forgets every tag read (the registry has moved on, or the numbers have)."""
        self._epoch = self.codes.epoch
        self._drops += 1
        self._suppliers: dict[uuid.UUID, int] = {}
        self._infos: list[TagInfo | None] = []
        # By number: read since the drop and enrolled; its supplier's number; its latest
        # wearing, from and to (seconds since 1970; from infinite if never worn, to while
        # it is worn), and by whom.
        self._known = np.zeros(0, dtype=bool)
        self._supplier = np.zeros(0, dtype=np.int64)
        self._from = np.zeros(0)
        self._to = np.zeros(0)
        # By number, its latest wearer's number (below; -1 if never worn); and each
        # wearer met since the drop, by number, and its number.
        self._subject_no = np.zeros(0, dtype=np.int64)
        self._subjects: list[uuid.UUID] = []
        self._subject_numbers: dict[uuid.UUID, int] = {}

    def _grow(self, size: int) -> None:
        have = len(self._known)
        if size <= have:
            return
        more = max(size, 2 * have, 1024) - have
        self._infos.extend([None] * more)
        self._known = np.concatenate([self._known, np.zeros(more, dtype=bool)])
        self._supplier = np.concatenate([self._supplier, np.full(more, -1, dtype=np.int64)])
        self._from = np.concatenate([self._from, np.full(more, math.inf)])
        self._to = np.concatenate([self._to, np.full(more, math.inf)])
        self._subject_no = np.concatenate([self._subject_no, np.full(more, -1, dtype=np.int64)])

    def _keep(self, code: int, info: TagInfo) -> None:
        self._infos[code] = info
        self._known[code] = True
        self._supplier[code] = self._suppliers.setdefault(info.supplier_id, len(self._suppliers))
        spans = info.spans()
        if spans:
            self._from[code], self._to[code], subject = spans[0]
            self._subject_no[code] = self._subject_number(subject)

    async def read(self, conn: asyncpg.Connection, tag_ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Each tag id's number, with every one of these tags that is enrolled read as of
        the registry's generation; until the next await, `wearers` and `resolve` answer
        for them."""
        while True:
            # The number first: tags read after it are at least as new as it says.
            generation = await repository.tag_generation(conn)
            if generation != self._generation:
                self._generation = generation
                self._drop()
            codes = self.codes.of(tag_ids)
            if self.codes.epoch != self._epoch:
                self._drop()
            self._grow(len(self.codes))
            unread = codes[~self._known[codes]]
            if not len(unread):
                return codes
            missing = sorted(set(unread.tolist()))
            drops = self._drops
            infos = await resolve_tags(conn, [self.codes.names[c] for c in missing])
            if self._drops != drops or self.codes.epoch != self._epoch:
                continue  # the registry or the numbers moved meanwhile: read again
            for c in missing:
                info = infos.get(self.codes.names[c])
                if info is not None:
                    self._keep(c, info)
            return codes

    async def resolve(self, conn: asyncpg.Connection, tag_ids: Sequence[str]) -> dict[str, TagInfo]:
        """As resolve_tags: the tags among these that exist, each with who wears it when."""
        codes = (await self.read(conn, tag_ids)).tolist()
        infos = self._infos
        return {t: info for t, c in zip(tag_ids, codes, strict=True) if (info := infos[c])}

    def wearers(
        self,
        codes: npt.NDArray[np.int64],
        supplier_id: uuid.UUID,
        first: npt.NDArray[np.float64],
        last: npt.NDArray[np.float64],
    ) -> tuple[list[uuid.UUID], npt.NDArray[np.int64]] | None:
        """The subjects wearing these tags (by number, as `read` has just given them,
        each of this supplier's) from each one's `first` to its `last` (seconds since
        1970), each subject once, and each tag's wearer's place among them; None if one
        is not enrolled, another supplier's, or worn by no one, or by more than one
        subject in turn, at some time between. Nearly always the latest wearing of
        every tag, answered as columns; a tag worn by someone else before is asked of
        its wearings (`TagInfo.worn_throughout`) only when its fixes come from before
        its latest wearing. The subjects are told apart by the numbers the directory
        gives them, not by their UUIDs: 2,000 tags' subjects each once took 157 µs by a
        dict of their UUIDs, a request (twenty-eighth session)."""
        supplier = self._suppliers.get(supplier_id)
        if supplier is None or not (self._known[codes] & (self._supplier[codes] == supplier)).all():
            return None
        numbers = self._subject_no[codes]
        latest = (self._from[codes] <= first) & (last < self._to[codes])
        for i in np.flatnonzero(~latest).tolist():
            info = self._infos[int(codes[i])]
            assert info is not None
            subject = info.worn_throughout(float(first[i]), float(last[i]))
            if subject is None:
                return None
            numbers[i] = self._subject_number(subject)
        present = np.zeros(len(self._subjects), dtype=bool)
        present[numbers] = True
        used = np.flatnonzero(present)
        place = np.zeros(len(present), dtype=np.int64)
        place[used] = np.arange(len(used))
        return [self._subjects[n] for n in used.tolist()], place[numbers]

    def _subject_number(self, subject: uuid.UUID) -> int:
        """The subject's number here (given on first meeting)."""
        number = self._subject_numbers.get(subject)
        if number is None:
            number = self._subject_numbers[subject] = len(self._subjects)
            self._subjects.append(subject)
        return number


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
