"""Alert decisions, pure: the lifecycle, severity, and the retry schedule of deliveries."""

from __future__ import annotations

import hashlib
import hmac
import random
from datetime import timedelta
from enum import StrEnum

from services.common.errors import Conflict


class AlertState(StrEnum):
    open = "open"
    acknowledged = "acknowledged"
    closed = "closed"
    superseded = "superseded"  # late fixes showed the trail differently


class Action(StrEnum):
    acknowledge = "acknowledge"
    close = "close"


class CloseOutcome(StrEnum):
    explained = "explained"
    breach_confirmed = "breach_confirmed"
    false_alarm = "false_alarm"
    device_fault = "device_fault"
    duplicate = "duplicate"
    no_further_action = "no_further_action"


class Severity(StrEnum):
    red = "red"
    amber = "amber"
    green = "green"


_ALLOWED: dict[Action, frozenset[AlertState]] = {
    Action.acknowledge: frozenset({AlertState.open}),
    Action.close: frozenset({AlertState.open, AlertState.acknowledged}),
}
_RESULT = {Action.acknowledge: AlertState.acknowledged, Action.close: AlertState.closed}


def transition(state: AlertState, action: Action) -> AlertState:
    """The state an action leads to; a conflict when it cannot be taken from here."""
    if state not in _ALLOWED[action]:
        raise Conflict(f"an alert that is {state.value} cannot be {_RESULT[action].value}")
    return _RESULT[action]


# By kind and confidence, before the subject's risk is taken into account.
_BASE: dict[tuple[str, str | None], Severity] = {
    ("exclusion", "confirmed"): Severity.red,
    ("inclusion", "confirmed"): Severity.red,
    ("tamper", "confirmed"): Severity.red,
}
_BY_KIND = {"battery_low": Severity.green}
_ORDER = [Severity.green, Severity.amber, Severity.red]


def severity(kind: str, confidence: str | None, risk: str) -> Severity:
    """Red for confirmed breaches and tamper, green for a low battery, amber otherwise;
    a high-risk subject's alerts go one step up, a low-risk subject's one step down."""
    base = _BASE.get((kind, confidence)) or _BY_KIND.get(kind, Severity.amber)
    step = {"high": 1, "low": -1}.get(risk, 0)
    return _ORDER[max(0, min(2, _ORDER.index(base) + step))]


def retry_delay(attempts: int, base_s: float, cap_s: float, rng: random.Random) -> timedelta:
    """Exponential back-off with jitter: about base * 2^(n-1), capped, times 0.5-1.0 so
    that many receivers coming back at once are not hit at the same moment."""
    raw = min(cap_s, base_s * 2 ** max(0, attempts - 1))
    return timedelta(seconds=raw * rng.uniform(0.5, 1.0))


def signing_secret(master_key: bytes, subscription_id: str) -> str:
    """A webhook's signing secret, derived rather than stored: nothing secret is kept at
    rest, and rotating the master key rotates every secret."""
    return hmac.new(master_key, f"webhook:{subscription_id}".encode(), hashlib.sha256).hexdigest()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 over "<timestamp>.<body>", hex: what the X-Tagtrail-Signature header
    carries as v1=..., beside t=<timestamp>."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()
