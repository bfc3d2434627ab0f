"""Prometheus metrics shared by every role of the process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FIXES_ACCEPTED = Counter("tagtrail_fixes_accepted_total", "Fixes accepted by the ingest API")
FIXES_DUPLICATE = Counter("tagtrail_fixes_duplicate_total", "Fixes re-sent identically")
FIXES_REJECTED = Counter(
    "tagtrail_fixes_rejected_total", "Fixes rejected by the ingest API", ["field"]
)
FIXES_STORED = Counter("tagtrail_fixes_stored_total", "Fixes written to trail_points")
FIX_CONFLICTS = Counter(
    "tagtrail_fix_conflicts_total", "Fixes with a known (tag, time) but another position"
)
BATCHES_BOXED = Counter(
    "tagtrail_batches_boxed_total", "Stored batches whose trail boxes the box keeper widened"
)
FIXES_UNBOXED = Gauge(
    "tagtrail_unboxed_fixes",
    "Stored fixes waiting for the box keeper (trail boxes and crime trigger), as of its"
    " last round: a number that keeps growing means the keeper is behind or failing",
)
ALERTS_OPENED = Counter("tagtrail_alerts_opened_total", "Alerts opened", ["kind"])
CONSUMER_LAG = Gauge(
    "tagtrail_consumer_lag", "Messages not yet handled by a consumer group", ["group", "topic"]
)
HANDLER_SECONDS = Histogram(
    "tagtrail_handler_seconds", "Time to handle one batch from the bus", ["group"]
)
DEAD_LETTERS = Counter(
    "tagtrail_dead_letters_total", "Messages a handler could not process", ["group", "topic"]
)
DELIVERY_ATTEMPTS = Counter(
    "tagtrail_alert_delivery_attempts_total", "Alert delivery attempts", ["channel"]
)
DELIVERY_FAILURES = Counter(
    "tagtrail_alert_delivery_failures_total", "Alert delivery attempts that failed", ["channel"]
)
FIX_TO_ALERT = Histogram(
    "tagtrail_fix_to_alert_delivery_seconds",
    "From receipt of the fix behind an alert to the alert's delivery",
    ["channel"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
