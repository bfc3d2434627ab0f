"""A fleet of simulated tags that move the way people on tags do: nights and much of the
day at home, a few trips a day to places a walk or a drive away, dwelling there, with GPS
error that grows indoors and gaps where the signal is lost.

The model is vectorised with numpy, one day at a time, so a week of 5,000 tags (50
million fixes) is generated in seconds; the same seed always gives the same fleet.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

M_PER_DEG_LAT = 111_320.0
DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class FleetSpec:
    tags: int
    seed: int = 1
    # A metropolitan area: homes cluster round town centres within it.
    centre_lat: float = 51.5074
    centre_lon: float = -0.1278
    metro_radius_km: float = 25.0
    town_centres: int = 16
    interval_s: float = 60.0
    # Share of the day a tag is out of signal, in gaps of a few minutes to an hour.
    signal_loss: float = 0.004

    def tag_id(self, i: int) -> str:
        return f"SIM-{self.seed:02d}-{i:06d}"

    def subject_id(self, i: int) -> uuid.UUID:
        return uuid.uuid5(uuid.NAMESPACE_URL, f"tagtrail-sim/{self.seed}/{i}")


@dataclass(frozen=True, slots=True)
class DayOfFixes:
    """One day of every tag's fixes, in time order (as a fleet would report them live)."""

    tag: IntArray  # index of the tag in the fleet
    ts: FloatArray  # seconds since the epoch
    lat: FloatArray
    lon: FloatArray
    accuracy_m: FloatArray
    speed_mps: FloatArray

    def __len__(self) -> int:
        return len(self.ts)


class Fleet:
    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        r_m = spec.metro_radius_km * 1000.0
        # Town centres spread over the area, more of them towards the middle.
        centres = _polar(rng, spec.town_centres, r_m * 0.7)
        which = rng.integers(0, spec.town_centres, spec.tags)
        homes = centres[which] + rng.normal(0.0, r_m * 0.12, (spec.tags, 2))
        self.home_xy: FloatArray = np.clip(homes, -r_m, r_m)
        # A tag reports on its own phase, not all on the same second.
        self.phase_s: FloatArray = rng.uniform(0.0, spec.interval_s, spec.tags)
        self._cos = math.cos(math.radians(spec.centre_lat))

    def to_latlon(self, xy: FloatArray) -> tuple[FloatArray, FloatArray]:
        lat = self.spec.centre_lat + xy[..., 1] / M_PER_DEG_LAT
        lon = self.spec.centre_lon + xy[..., 0] / (M_PER_DEG_LAT * self._cos)
        return lat, lon

    def homes(self) -> tuple[FloatArray, FloatArray]:
        return self.to_latlon(self.home_xy)

    def day(self, day: date) -> DayOfFixes:
        spec = self.spec
        rng = np.random.default_rng([spec.seed, day.toordinal()])
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        per_tag = int(DAY_S // spec.interval_s)
        grid = np.arange(per_tag, dtype=np.float64) * spec.interval_s
        xs, ys, moving = [], [], []
        for i in range(spec.tags):
            knots_t, knots_xy = _itinerary(rng, self.home_xy[i])
            t = grid + self.phase_s[i]
            xs.append(np.interp(t, knots_t, knots_xy[:, 0]))
            ys.append(np.interp(t, knots_t, knots_xy[:, 1]))
            # Moving between the knots of a leg: odd legs are travel.
            moving.append(np.searchsorted(knots_t, t, side="right") % 2 == 0)
        x = np.stack(xs)
        y = np.stack(ys)
        is_moving = np.stack(moving)
        t = grid[None, :] + self.phase_s[:, None]
        speed = np.zeros_like(x)
        step = np.hypot(np.diff(x, axis=1), np.diff(y, axis=1)) / spec.interval_s
        speed[:, 1:] = step
        # GPS error: a few metres outdoors and moving, tens of metres indoors, a long tail.
        median = np.where(is_moving, 6.0, 14.0)
        accuracy = np.clip(median * rng.lognormal(0.0, 0.55, x.shape), 2.0, 400.0)
        err = rng.normal(0.0, 1.0, (2, *x.shape)) * (accuracy / 2.0)
        keep = _signal(rng, x.shape, spec.signal_loss, spec.interval_s)
        tag = np.broadcast_to(np.arange(spec.tags)[:, None], x.shape)
        xy = np.stack([x + err[0], y + err[1]], axis=-1)
        lat, lon = self.to_latlon(xy)
        ts = t + midnight
        order = np.argsort(ts[keep], kind="stable")
        return DayOfFixes(
            tag=tag[keep][order].astype(np.int64),
            ts=ts[keep][order],
            lat=lat[keep][order],
            lon=lon[keep][order],
            accuracy_m=np.round(accuracy[keep][order], 1),
            speed_mps=np.round(speed[keep][order], 2),
        )


def _polar(rng: np.random.Generator, n: int, radius: float) -> FloatArray:
    r = radius * np.sqrt(rng.uniform(0.0, 1.0, n))
    a = rng.uniform(0.0, 2 * math.pi, n)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=-1)


def _itinerary(rng: np.random.Generator, home: FloatArray) -> tuple[FloatArray, FloatArray]:
    """A day as alternating dwell and travel: knots of (time, position), first and last at
    home. Between two knots of the same place the tag dwells; between others it travels."""
    trips = int(rng.choice(4, p=[0.15, 0.35, 0.35, 0.15]))
    t = float(rng.uniform(6.5, 13.0) * 3600)
    times, points = [0.0, t], [home, home]
    here = home
    for k in range(trips + 1):
        if k == trips:
            there = home
        else:
            dist = min(float(rng.lognormal(math.log(2000.0), 0.9)), 25_000.0)
            angle = float(rng.uniform(0.0, 2 * math.pi))
            there = here + dist * np.array([math.cos(angle), math.sin(angle)])
        dist = float(np.hypot(*(there - here)))
        speed = 1.4 if dist < 1500 else float(rng.uniform(6.0, 14.0))
        t += dist / speed
        times.append(t)
        points.append(there)
        if k < trips:
            t += float(rng.uniform(15 * 60, 4 * 3600))
            times.append(t)
            points.append(there)
        here = there
    times.append(max(t + 1.0, DAY_S + 3600.0))
    points.append(home)
    return np.array(times), np.array(points)


def _signal(
    rng: np.random.Generator, shape: tuple[int, ...], loss: float, interval_s: float
) -> npt.NDArray[np.bool_]:
    """Which fixes are received: gaps of 3 to 60 minutes, `loss` of the day in all."""
    tags, per_tag = shape
    keep = np.ones(shape, dtype=bool)
    mean_gap = 20 * 60 / interval_s
    gaps = rng.poisson(loss * per_tag / mean_gap, tags)
    for i in np.nonzero(gaps)[0]:
        for _ in range(gaps[i]):
            length = int(rng.uniform(3 * 60, 60 * 60) / interval_s)
            start = int(rng.integers(0, max(per_tag - length, 1)))
            keep[i, start : start + length] = False
    return keep
