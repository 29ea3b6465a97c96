"""Sends the ``mail`` table's pending emails over SMTP (aiosmtplib).

Each replica claims due rows with ``FOR UPDATE SKIP LOCKED`` and a lease
(``lease_until``), committed before it connects to the mail server, so
replicas never send one row twice at once and no transaction waits on SMTP.
The batch is sent one email after another; right before each, the row's
lease is renewed if it is still this batch's, so a slow server that makes
the batch outlast its lease leaves the rest to the replica that took it over.
A refused or failed send is tried again after a backoff that doubles from
``MAIL_RETRY_FIRST_SECONDS`` up to ``MAIL_RETRY_MAX_SECONDS``; after
``MAIL_MAX_TRIES`` the row is dead (``state = 'dead'``, its last error kept,
``notifications_emails_failed_total{outcome="dead"}``), for an operator.

Each message carries a ``Message-ID`` derived from its event, so in the one
window that remains (the server accepted the message, the replica died before
marking it sent) the copy sent again is recognisable as the same message.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import aiosmtplib
import asyncpg
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from services.retry.settings import RetrySettings
from shared import metrics
from shared.clock import Clock
from shared.logging import get_logger
from shared.waits import wait_set

log = get_logger(__name__)

_LEASE = timedelta(minutes=2)
# How long a sent email's mark is retried: well inside its lease.
_MARK_SENT_FOR = _LEASE / 2
_BATCH = 20


def backoff(settings: RetrySettings, tries: int) -> timedelta:
    """The wait after the ``tries``-th failed send (1-based)."""
    seconds = settings.mail_retry_first_seconds * 2 ** (tries - 1)
    return timedelta(seconds=min(settings.mail_retry_max_seconds, seconds))


def build_message(row: Any, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = row["recipient"]
    message["Subject"] = row["subject"]
    message["Date"] = formatdate(row["created_at"].timestamp(), usegmt=True)
    domain = sender.rsplit("@", 1)[-1].strip("> ") or "billing.invalid"
    # Derived from the event alone: email.utils.make_msgid would add the time,
    # the pid and a random number, and a copy sent again after a crash would
    # then look like a second email instead of the same one.
    stable = uuid.uuid5(uuid.NAMESPACE_URL, f"mail:{row['event_id']}").hex
    message["Message-ID"] = f"<{stable}@{domain}>"
    message["X-Billing-Event-Id"] = row["event_id"]
    message.set_content(row["body_text"])
    message.add_alternative(row["body_html"], subtype="html")
    return message


class Sender:
    def __init__(self, pool: Any, clock: Clock, settings: RetrySettings) -> None:
        self._pool = pool
        self._clock = clock
        self._settings = settings
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mail-sender")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                sent = await self.send_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("mail_sender_failed", error=repr(exc))
                sent = 0
            if sent < _BATCH:
                self._wake.clear()
                await wait_set(self._wake, self._settings.mail_poll_seconds)

    async def send_due(self) -> int:
        """Send one batch of due emails; returns how many were claimed."""
        now = self._clock.now()
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "WITH due AS (SELECT event_id FROM mail WHERE state = 'pending'"
                " AND next_try_at <= $1 AND (lease_until IS NULL OR lease_until <= $1)"
                " ORDER BY next_try_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
                " UPDATE mail m SET lease_until = $3 FROM due WHERE m.event_id = due.event_id"
                " RETURNING m.*",
                now,
                _BATCH,
                now + _LEASE,
            )
            pending = await conn.fetchval("SELECT count(*) FROM mail WHERE state = 'pending'")
            metrics.EMAILS_PENDING.set(pending or 0)
        if not rows:
            return 0
        try:
            smtp = await self._connect()
        except (aiosmtplib.SMTPException, OSError) as exc:
            for row in rows:
                await self._failed(row, exc)
            return len(rows)
        try:
            for row in rows:
                try:
                    message = build_message(row, self._settings.mail_from)
                except Exception as exc:  # whatever the email package raises
                    # The row itself is unusable (an address the email package
                    # cannot parse): no retry can send it. Raised out of the loop,
                    # it would hold the rest of the batch for a lease and come
                    # back first every time, never dead.
                    await self._failed(row, exc, permanent=True)
                    continue
                if not await self._still_ours(row):
                    # The batch outlasted the lease (a slow server): another
                    # replica may have claimed this row and be sending it.
                    continue
                try:
                    await smtp.send_message(message)
                except (aiosmtplib.SMTPException, OSError) as exc:
                    await self._failed(row, exc)
                    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | OSError):
                        smtp = await self._connect()
                    continue
                await self._sent(row)
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("mail_connection_lost", error=repr(exc))
        finally:
            with contextlib.suppress(Exception):
                await smtp.quit()
        return len(rows)

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self._settings
        smtp = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            timeout=s.smtp_timeout_seconds,
            use_tls=s.smtp_use_tls,
            start_tls=s.smtp_start_tls,
        )
        await smtp.connect()
        if s.smtp_username:
            password = s.smtp_password.get_secret_value() if s.smtp_password else ""
            await smtp.login(s.smtp_username, password)
        return smtp

    async def _still_ours(self, row: Any) -> bool:
        """Renew the row's lease for its send, if the claim still holds: unexpired
        and not taken over (the lease is the one this batch set)."""
        now = self._clock.now()
        async with self._pool.acquire() as conn:
            renewed = await conn.fetchval(
                "UPDATE mail SET lease_until = $3 WHERE event_id = $1 AND state = 'pending'"
                " AND lease_until = $2 AND lease_until > $4 RETURNING true",
                row["event_id"],
                row["lease_until"],
                now + _LEASE,
                now,
            )
        return bool(renewed)

    async def _sent(self, row: Any) -> None:
        # The email is out: a row left pending would be sent again once its
        # lease ends. So the mark is retried through a database blip (a
        # Postgres restart) for most of the lease, not given up at once.
        sent_at = self._clock.now()
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(
                    (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
                ),
                wait=wait_exponential_jitter(multiplier=0.2, max=5),
                stop=stop_after_delay(_MARK_SENT_FOR.total_seconds()),
                reraise=True,
            ):
                with attempt:
                    async with self._pool.acquire() as conn:
                        await conn.execute(
                            "UPDATE mail SET state = 'sent', sent_at = $2, tries = tries + 1,"
                            " lease_until = NULL WHERE event_id = $1",
                            row["event_id"],
                            sent_at,
                        )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.error("mail_sent_unrecorded", event_id=row["event_id"], error=repr(exc))
            raise
        metrics.EMAILS_SENT.labels(row["event_type"]).inc()

    async def _failed(self, row: Any, exc: BaseException, *, permanent: bool = False) -> None:
        tries = row["tries"] + 1
        dead = permanent or tries >= self._settings.mail_max_tries
        now = self._clock.now()
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE mail SET tries = $2, state = $3, next_try_at = $4, last_error = $5,"
                " lease_until = NULL WHERE event_id = $1",
                row["event_id"],
                tries,
                "dead" if dead else "pending",
                now + backoff(self._settings, tries),
                repr(exc)[:500],
            )
        metrics.EMAILS_FAILED.labels("dead" if dead else "retry").inc()
        log.warning(
            "mail_send_failed", event_id=row["event_id"], tries=tries, dead=dead, error=repr(exc)
        )
