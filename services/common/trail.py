"""A stored fix as the checks read it back: the one shape every trail reader returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class TrailFix:
    tag_id: str
    ts: datetime
    received_at: datetime
    lat: float
    lon: float
    accuracy_m: float
