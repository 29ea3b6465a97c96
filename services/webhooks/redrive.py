"""Redrive: dead letters back into the queue they failed in, each once.

Letters are claimed in Postgres first (``dead_letter_store.claim``: row lock,
state ``redriving``), then published with confirms to their queue, then
marked ``redriven``. Two redrives at once claim disjoint letters, so each
letter is sent once; a redrive killed between claim and publish leaves its
claims to expire (``dead_letter_redrive_lease_seconds``), after which another
redrive sends them (a second copy is absorbed by the consumer's inbox). A
letter whose queue is gone (no queue takes it) stays dead and the redrive
goes on with the others.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.webhooks import dead_letter_store as store
from shared import metrics
from shared.broker.errors import PublishFailed
from shared.broker.publisher import Publisher
from shared.logging import get_logger

log = get_logger(__name__)

_BATCH = 200
# Headers RabbitMQ writes when it dead-letters or redelivers a message:
# history of the last trip, not something to send back into the queue.
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")


@dataclass
class Outcome:
    redriven: list[int] = field(default_factory=list)
    complete: bool = True
    # The broker stopped taking letters (not one letter no queue takes).
    broker_failed: bool = False


def _headers(stored: dict[str, Any], token: str) -> dict[str, Any]:
    headers = {
        k: v
        for k, v in stored.items()
        if v is not None and not any(k.startswith(p) for p in _BROKER_HEADERS)
    }
    headers["x-attempt"] = 0  # a fresh round of retries
    headers["x-redrive-id"] = token
    headers["x-redriven-at"] = datetime.now(UTC).isoformat()
    return headers


async def redrive(
    pool: asyncpg.Pool[Any],
    publisher: Publisher,
    which: store.RedriveFilter,
    *,
    limit: int,
    lease: timedelta,
) -> Outcome:
    token = uuid.uuid4().hex
    started: datetime = await pool.fetchval("SELECT clock_timestamp()")
    outcome = Outcome()
    # Letters no queue takes (their queue is gone): left dead, and not claimed
    # again by this redrive, so they never hold back the letters after them.
    unroutable: list[int] = []
    while len(outcome.redriven) < limit:
        batch = await store.claim(
            pool,
            which,
            token=token,
            dead_before=started,
            lease=lease,
            limit=min(_BATCH, limit - len(outcome.redriven)),
            skip=unroutable,
        )
        if not batch:
            break
        published: list[int] = []
        try:
            for letter in batch:
                try:
                    await publisher.publish(
                        "",
                        letter.queue,
                        letter.body,
                        message_id=letter.message_id or "",
                        headers=_headers(letter.headers, token),
                    )
                except PublishFailed as exc:
                    if exc.reason != "unroutable":
                        raise
                    log.warning("redrive_unroutable", letter=letter.id, queue=letter.queue)
                    unroutable.append(letter.id)
                    outcome.complete = False
                    continue
                published.append(letter.id)
                metrics.DEAD_LETTERS_REDRIVEN.labels(letter.queue).inc()
        except PublishFailed as exc:
            log.warning("redrive_interrupted", error=str(exc), redriven=len(outcome.redriven))
            outcome.complete = False
            outcome.broker_failed = True
        finally:
            # Also on cancellation: what was not published goes back to dead.
            unpublished = [c.id for c in batch if c.id not in set(published)]
            await store.finish_redrive(pool, token, published, unpublished)
            outcome.redriven.extend(published)
        if outcome.broker_failed:
            break
    return outcome
