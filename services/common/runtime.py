"""The resources one process holds, created at start-up and closed on shutdown."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.bus import Bus
from services.common.database import Database
from services.common.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    db: Database
    bus: Bus
