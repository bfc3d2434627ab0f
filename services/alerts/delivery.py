"""The alert sender: works through the delivery outbox, sends each delivery on its
channel (a signed webhook POST, or an e-mail over SMTP), records every attempt, retries
with back-off and jitter, and leaves what never gets through dead for an admin to
replay. A crash mid-send leaves the row pending, so it is sent again with the same
Idempotency-Key (webhooks) or Message-ID (e-mail), and the receiver can tell."""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime
from email.message import EmailMessage

import aiosmtplib
import httpx
import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from services.alerts import repository
from services.alerts.models import Delivery, DeliveryAttempt, Subscription
from services.alerts.service import retry_delay, signature, signing_secret
from services.common.database import Database
from services.common.metrics import DELIVERY_ATTEMPTS, DELIVERY_FAILURES, FIX_TO_ALERT
from services.common.periodic import Periodic
from services.common.settings import AlertSettings, SmtpSettings
from services.common.timeutil import utcnow

log = logging.getLogger(__name__)


class AlertSender:
    def __init__(self, db: Database, settings: AlertSettings, smtp: SmtpSettings) -> None:
        self.db = db
        self.settings = settings
        self.smtp = smtp
        self.key = settings.webhook_key.get_secret_value().encode()
        self.rng = random.Random()
        self._http: httpx.AsyncClient | None = None
        self._loop = Periodic(
            "alert-sender", self.send_due, settings.poll_interval_s, first_wait=False
        )

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=self.settings.timeout_s, follow_redirects=False)
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        if self._http is not None:
            await self._http.aclose()

    async def send_due(self, limit: int = 100) -> int:
        """Sends up to `limit` due deliveries, one transaction each; returns how many."""
        done = 0
        while done < limit:
            async with self.db.transaction() as session:
                delivery = await repository.claim_due(session, utcnow())
                if delivery is None:
                    return done
                await self._send(session, delivery)
            done += 1
        return done

    async def _send(self, session: AsyncSession, delivery: Delivery) -> None:
        subscription = await repository.get_subscription(session, delivery.subscription_id)
        if subscription is None or not subscription.active:
            delivery.state, delivery.last_error = "dead", "the subscription was removed"
            return
        started = time.perf_counter()
        if subscription.channel == "email":
            status, error = await self._email(subscription, delivery)
        else:
            status, error = await self._webhook(subscription, delivery)
        now = utcnow()
        channel = subscription.channel
        DELIVERY_ATTEMPTS.labels(channel).inc()
        await repository.add_attempt(
            session,
            DeliveryAttempt(
                delivery_id=delivery.id,
                at=now,
                status_code=status,
                error=error,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            ),
        )
        delivery.attempts += 1
        if error is None:
            delivery.state, delivery.delivered_at, delivery.last_error = "delivered", now, None
            evidence = delivery.payload.get("alert", {}).get("evidence") or []
            received = evidence[-1].get("received_at") if evidence else None
            if delivery.event == "opened" and received:
                seconds = (now - datetime.fromisoformat(received)).total_seconds()
                FIX_TO_ALERT.labels(channel).observe(seconds)
            return
        DELIVERY_FAILURES.labels(channel).inc()
        delivery.last_error = error
        if delivery.attempts >= self.settings.max_attempts:
            delivery.state = "dead"
            log.warning(
                "delivery %s is dead after %d attempts: %s", delivery.id, delivery.attempts, error
            )
        else:
            delay = retry_delay(
                delivery.attempts, self.settings.retry_base_s, self.settings.retry_cap_s, self.rng
            )
            delivery.next_attempt_at = now + delay

    async def _webhook(
        self, subscription: Subscription, delivery: Delivery
    ) -> tuple[int | None, str | None]:
        body = orjson.dumps(delivery.payload)
        stamp = int(time.time())
        secret = signing_secret(self.key, str(subscription.id))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": str(delivery.id),
            "X-Tagtrail-Event": delivery.event,
            "X-Tagtrail-Signature": f"t={stamp},v1={signature(secret, stamp, body)}",
        }
        assert self._http is not None
        try:
            response = await self._http.post(subscription.target, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if not 200 <= response.status_code < 300:
            return response.status_code, f"the receiver answered {response.status_code}"
        return response.status_code, None

    async def _email(
        self, subscription: Subscription, delivery: Delivery
    ) -> tuple[int | None, str | None]:
        message = email_for(delivery, self.smtp.sender, subscription.target)
        try:
            await aiosmtplib.send(
                message,
                hostname=self.smtp.host,
                port=self.smtp.port,
                username=self.smtp.username,
                password=self.smtp.password.get_secret_value() if self.smtp.password else None,
                use_tls=self.smtp.security == "tls",
                start_tls=self.smtp.security == "starttls",
                timeout=self.smtp.timeout_s,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
        return 250, None


def email_for(delivery: Delivery, sender: str, to: str) -> EmailMessage:
    """A plain-text alert e-mail; its Message-ID is the delivery's id, so a mail sent
    twice after a crash is recognisably the same message."""
    alert = delivery.payload.get("alert", {})
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = (
        f"[tagtrail] {alert.get('severity', '').upper()} {alert.get('kind')} alert "
        f"{delivery.event}: subject {alert.get('subject_id')}"
    )
    message["Message-ID"] = f"<{delivery.id}@tagtrail>"
    lines = [
        f"Alert {alert.get('id')} ({alert.get('kind')}, {alert.get('severity')}): {delivery.event}",
        f"Began: {alert.get('opened_at')}   Ended: {alert.get('ended_at') or 'ongoing'}",
        f"Confidence: {alert.get('confidence')}   Late: {alert.get('late')}",
        f"Why: {alert.get('reason')}",
        "",
        f"GET /v1/alerts/{alert.get('id')} shows the evidence and history.",
    ]
    message.set_content("\n".join(lines))
    return message
