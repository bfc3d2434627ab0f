"""The built-in demo: a small simulated fleet around Peterborough, an exclusion zone and a
few crimes, posted through the real HTTP API so a newcomer sees alerts within a minute."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
import orjson
from sqlalchemy import select

from services.common.auth import Principal, Role, issue_token
from services.common.database import Database
from services.common.geo import WGS84
from services.common.timeutil import utcnow
from services.registry import service as registry
from services.registry.models import Subject, Supplier, Tag, TagAssignment
from services.registry.schemas import ManagerAssignmentIn, SubjectIn, SupplierIn, TagIn

log = logging.getLogger("tagtrail.demo")

CENTRE = (52.5725, -0.2430)  # Peterborough city centre (lat, lon)
# Cathedral precinct: the demo's exclusion zone (lon, lat ring).
ZONE_RING = [
    (-0.2405, 52.5727),
    (-0.2370, 52.5727),
    (-0.2370, 52.5708),
    (-0.2405, 52.5708),
    (-0.2405, 52.5727),
]
FLEET_SIZE = 30
LIVE_INTERVAL_S = 5.0
BACKFILL = timedelta(minutes=30)
BACKFILL_INTERVAL = timedelta(seconds=60)


@dataclass
class Walker:
    """A subject moving between waypoints on foot or by car, with GPS-like noise."""

    tag_id: str
    lat: float
    lon: float
    speed_mps: float
    rng: random.Random
    target: tuple[float, float] = field(default=CENTRE)

    def pick_target(self) -> None:
        bearing = self.rng.uniform(0, 360)
        dist = self.rng.uniform(300, 2500)
        lon, lat, _ = WGS84.fwd(CENTRE[1], CENTRE[0], bearing, dist)
        self.target = (lat, lon)

    def advance(self, seconds: float) -> None:
        az, _, dist = WGS84.inv(self.lon, self.lat, self.target[1], self.target[0])
        step = min(dist, self.speed_mps * seconds)
        lon, lat, _ = WGS84.fwd(self.lon, self.lat, az, step)
        self.lat, self.lon = lat, lon
        if dist - step < 5:
            self.pick_target()

    def fix(self, ts: datetime) -> dict[str, object]:
        accuracy = round(self.rng.choice([5, 8, 10, 15, 25]) * self.rng.uniform(0.8, 1.2), 1)
        # Reported position scattered within the stated accuracy, as real receivers do.
        bearing = self.rng.uniform(0, 360)
        lon, lat, _ = WGS84.fwd(self.lon, self.lat, bearing, self.rng.uniform(0, accuracy / 2))
        return {
            "ts": ts.isoformat(),
            "lat": round(lat, 7),
            "lon": round(lon, 7),
            "accuracy_m": accuracy,
            "speed_mps": self.speed_mps,
            "source": "gps",
            "sats": self.rng.randint(5, 12),
        }


@dataclass
class DemoSetup:
    supplier_token: str
    manager_token: str
    admin_token: str
    subjects: list[uuid.UUID]
    tags: list[str]


async def enrol(db: Database) -> DemoSetup:
    """Creates (or reuses) the demo supplier, tags, subjects and manager; fresh tokens."""
    start = utcnow() - timedelta(days=1)
    async with db.transaction() as session:
        supplier = await session.scalar(select(Supplier).where(Supplier.name == "demo-supplier"))
        if supplier is None:
            supplier, supplier_token = await registry.create_supplier(
                session, SupplierIn(name="demo-supplier")
            )
        else:
            supplier_token = await issue_token(
                session, Principal(supplier.id, Role.supplier, supplier.name)
            )
        manager, manager_token = await registry.create_user_token(
            session, Role.manager, "demo-manager"
        )
        _, admin_token = await registry.create_user_token(session, Role.admin, "demo-admin")
        subjects: list[uuid.UUID] = []
        tags: list[str] = []
        for n in range(1, FLEET_SIZE + 1):
            tag_id, ref = f"DEMO-{n:04d}", f"DEMO-S{n:03d}"
            subject = await session.scalar(select(Subject).where(Subject.reference == ref))
            if subject is None:
                subject = await registry.create_subject(
                    session, SubjectIn(reference=ref, display_name=f"Demo subject {n}")
                )
                await registry.assign_manager(
                    session,
                    subject.id,
                    ManagerAssignmentIn(manager_id=manager.id, valid_from=start),
                )
            if await session.get(Tag, tag_id) is None:
                await registry.create_tag(session, TagIn(tag_id=tag_id, supplier_id=supplier.id))
                session.add(TagAssignment(tag_id=tag_id, subject_id=subject.id, valid_from=start))
            subjects.append(subject.id)
            tags.append(tag_id)
    return DemoSetup(supplier_token, manager_token, admin_token, subjects, tags)


def make_fleet(setup: DemoSetup, seed: int = 7) -> list[Walker]:
    rng = random.Random(seed)
    fleet: list[Walker] = []
    for i, tag_id in enumerate(setup.tags):
        angle = 2 * math.pi * i / len(setup.tags)
        dist = rng.uniform(400, 2000)
        lon, lat, _ = WGS84.fwd(CENTRE[1], CENTRE[0], math.degrees(angle), dist)
        speed = 1.4 if i % 3 else 9.0  # every third subject drives
        w = Walker(tag_id, lat, lon, speed, random.Random(seed * 1000 + i))
        w.pick_target()
        fleet.append(w)
    # The first subject starts just west of the cathedral precinct and walks into it.
    fleet[0].lat, fleet[0].lon, fleet[0].speed_mps = 52.5718, -0.2409, 1.4
    fleet[0].target = (52.5717, -0.2385)
    return fleet


async def run_demo(base_url: str, db: Database, stop: asyncio.Event) -> None:
    setup = await enrol(db)
    print(
        f"\n  tagtrail demo is running at {base_url}\n"
        f"  manager token:  {setup.manager_token}\n"
        f"  admin token:    {setup.admin_token}\n"
        f"  supplier token: {setup.supplier_token}\n\n"
        f"  watch alerts arrive:\n"
        f"    curl -s -H 'Authorization: Bearer {setup.manager_token}' {base_url}/v1/alerts\n",
        flush=True,
    )
    fleet = make_fleet(setup)
    admin = {"Authorization": f"Bearer {setup.admin_token}"}
    supplier = {"Authorization": f"Bearer {setup.supplier_token}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        await _ensure_zone(http, admin, setup.subjects[0])
        # Buffered upload: the last half hour of each trail arrives at once, late.
        now = utcnow()
        trail_points: dict[str, list[dict[str, object]]] = {w.tag_id: [] for w in fleet}
        ts = now - BACKFILL
        while ts < now - timedelta(minutes=1):
            for w in fleet[1:]:
                w.advance(BACKFILL_INTERVAL.total_seconds())
                trail_points[w.tag_id].append(w.fix(ts))
            ts += BACKFILL_INTERVAL
        for tag_id, fixes in trail_points.items():
            if fixes:
                r = await http.post(
                    "/v1/fixes", json={"tag_id": tag_id, "fixes": fixes}, headers=supplier
                )
                r.raise_for_status()
        # Crimes where three subjects were twenty minutes ago: matched from stored trails.
        crimes = []
        for tag_id in list(trail_points)[3:6]:
            fix = trail_points[tag_id][10]
            at = datetime.fromisoformat(str(fix["ts"]))
            crimes.append(
                {
                    "category": "BIAD",
                    "reference": f"DEMO/{tag_id}/{at:%H%M}",
                    "lat": fix["lat"],
                    "lon": fix["lon"],
                    "starts_at": (at - timedelta(minutes=10)).isoformat(),
                    "ends_at": (at + timedelta(minutes=10)).isoformat(),
                }
            )
        (await http.post("/v1/crimes", json={"crimes": crimes}, headers=admin)).raise_for_status()
        log.info("demo: backfilled %d tags, recorded %d crimes", len(trail_points), len(crimes))
        while not stop.is_set():
            ts = utcnow()
            lines = []
            for w in fleet:
                w.advance(LIVE_INTERVAL_S)
                lines.append({"tag_id": w.tag_id, **w.fix(ts)})
            body = b"\n".join(orjson.dumps(x) for x in lines)
            r = await http.post("/v1/fixes/stream", content=body, headers=supplier)
            if r.status_code != 202:
                log.warning("demo: ingest answered %s: %s", r.status_code, r.text[:200])
            try:
                await asyncio.wait_for(stop.wait(), LIVE_INTERVAL_S)
            except TimeoutError:
                pass


async def _ensure_zone(
    http: httpx.AsyncClient, admin: dict[str, str], subject_id: uuid.UUID
) -> None:
    r = await http.get("/v1/zones", params={"subject_id": str(subject_id)}, headers=admin)
    r.raise_for_status()
    if r.json():
        return
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ZONE_RING]},
        "properties": {
            "subject_id": str(subject_id),
            "kind": "exclusion",
            "name": "Cathedral precinct",
        },
    }
    (await http.post("/v1/zones", json=feature, headers=admin)).raise_for_status()
