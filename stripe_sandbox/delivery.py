"""Asynchronous, signed webhook delivery with retries and optional chaos.

Each endpoint has its own worker so a slow or dead receiver never holds up the
others, and delivery never blocks an API response (handlers only enqueue).
Failed attempts (non-2xx or connection errors) are retried on a shortened
backoff schedule; after ``max_attempts`` the delivery is counted as failed.
Chaos mode shuffles each ready batch and enqueues duplicates, because Stripe
promises neither ordering nor exactly-once delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .ids import new_id
from .signing import sign

DEFAULT_BACKOFF = (0.2, 0.5, 1.0, 2.0)
USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"


@dataclass
class Endpoint:
    url: str
    secret: str
    id: str = field(default_factory=lambda: new_id("we"))


@dataclass
class Delivery:
    seq: int
    event: dict[str, Any]
    attempts: int = 0
    next_at: float = 0.0
    duplicate: bool = False


class EndpointWorker:
    def __init__(self, manager: DeliveryManager, endpoint: Endpoint) -> None:
        self.manager = manager
        self.endpoint = endpoint
        self.pending: list[Delivery] = []
        self.inflight = 0
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _sleep(self, seconds: float | None) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
        # the cancellation that stops this loop (shared/waits.py).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.wake.wait()
        self.wake.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.manager.paused or not self.pending:
                await self._sleep(None)
                continue
            now = loop.time()
            ready = [d for d in self.pending if d.next_at <= now]
            if not ready:
                await self._sleep(min(d.next_at for d in self.pending) - now)
                continue
            if self.manager.shuffle:
                self.manager.rng.shuffle(ready)
            else:
                ready.sort(key=lambda d: d.seq)
            for item in ready:
                if self.manager.paused:
                    break
                self.pending.remove(item)
                self.inflight += 1
                try:
                    await self._attempt(item)
                finally:
                    self.inflight -= 1

    async def _attempt(self, item: Delivery) -> None:
        manager = self.manager
        item.attempts += 1
        event = item.event
        payload = dict(event)
        payload["pending_webhooks"] = event["pending_webhooks"]
        body = json.dumps(payload, indent=2)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            "Stripe-Signature": sign(body, self.endpoint.secret),
        }
        status: int | None = None
        error: str | None = None
        try:
            assert manager.session is not None
            async with manager.session.post(
                self.endpoint.url,
                data=body.encode("utf-8"),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=manager.timeout),
            ) as response:
                status = response.status
                await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        ok = status is not None and 200 <= status < 300
        manager.record(self.endpoint, item, status, error, ok)
        if ok:
            return
        if item.attempts >= manager.max_attempts:
            manager.failed += 1
            return
        delay = manager.backoff[min(item.attempts - 1, len(manager.backoff) - 1)]
        item.next_at = asyncio.get_running_loop().time() + delay
        self.pending.append(item)


class DeliveryManager:
    def __init__(
        self,
        *,
        backoff: tuple[float, ...] = DEFAULT_BACKOFF,
        max_attempts: int = 5,
        timeout: float = 5.0,
        chaos: bool = False,
        seed: int | None = None,
    ) -> None:
        self.backoff = backoff
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.workers: list[EndpointWorker] = []
        self.session: aiohttp.ClientSession | None = None
        self.paused = False
        self.shuffle = chaos
        self.duplicates = 0.3 if chaos else 0.0
        self.rng = random.Random(seed)
        self._seq = 0
        self.reset_counters()

    def reset_counters(self) -> None:
        self.delivered = 0
        self.failed = 0
        self.attempts = 0
        self.duplicates_sent = 0
        self.log: list[dict[str, Any]] = []
        self._delivered_pairs: set[tuple[str, str]] = set()

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()
        for worker in self.workers:
            worker.start()

    async def stop(self) -> None:
        for worker in self.workers:
            if worker.task is not None:
                worker.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.task
        if self.session is not None:
            await self.session.close()

    def add_endpoint(self, url: str, secret: str) -> Endpoint:
        endpoint = Endpoint(url=url, secret=secret)
        worker = EndpointWorker(self, endpoint)
        self.workers.append(worker)
        if self.session is not None:
            worker.start()
        return endpoint

    async def remove_endpoint(self, endpoint_id: str) -> bool:
        for worker in self.workers:
            if worker.endpoint.id == endpoint_id:
                self.workers.remove(worker)
                if worker.task is not None:
                    worker.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await worker.task
                return True
        return False

    def clear(self) -> None:
        """Drop pending deliveries and counters (endpoints stay configured)."""
        for worker in self.workers:
            worker.pending.clear()
        self.reset_counters()

    def enqueue(self, event: dict[str, Any]) -> int:
        """Queue ``event`` for every endpoint; returns how many endpoints will receive it."""
        for worker in self.workers:
            self._seq += 1
            worker.pending.append(Delivery(seq=self._seq, event=event))
            if self.duplicates and self.rng.random() < self.duplicates:
                self._seq += 1
                worker.pending.append(Delivery(seq=self._seq, event=event, duplicate=True))
            worker.wake.set()
        return len(self.workers)

    def record(
        self, endpoint: Endpoint, item: Delivery, status: int | None, error: str | None, ok: bool
    ) -> None:
        self.attempts += 1
        event = item.event
        self.log.append(
            {
                "event_id": event["id"],
                "type": event["type"],
                "url": endpoint.url,
                "attempt": item.attempts,
                "status": status,
                "error": error,
                "duplicate": item.duplicate,
            }
        )
        if not ok:
            return
        self.delivered += 1
        if item.duplicate:
            self.duplicates_sent += 1
        pair = (event["id"], endpoint.id)
        if pair not in self._delivered_pairs:
            self._delivered_pairs.add(pair)
            event["pending_webhooks"] = max(0, event["pending_webhooks"] - 1)

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        for worker in self.workers:
            worker.wake.set()

    @property
    def pending(self) -> int:
        return sum(len(w.pending) + w.inflight for w in self.workers)

    def stats(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "delivered": self.delivered,
            "failed": self.failed,
            "attempts": self.attempts,
            "duplicates_delivered": self.duplicates_sent,
            "paused": self.paused,
            "shuffle": self.shuffle,
            "duplicates": self.duplicates,
            "endpoints": [{"id": w.endpoint.id, "url": w.endpoint.url} for w in self.workers],
        }

    async def flush(self, within: float) -> bool:
        """Wait until nothing is pending or in flight; False if ``within`` seconds pass first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.pending:
            if loop.time() >= deadline:
                return False
            # Internal poll of in-process state; cheap and keeps the workers simple.
            await asyncio.sleep(0.01)
        return True
