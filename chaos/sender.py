"""Delivering the schedule the way Stripe does.

Each delivery is POSTed to the gateway's ``/webhooks/stripe``, signed at the
moment of the attempt. A 2xx is done. A 503 (or any 5xx), a timeout or a
refused connection is delivered again later with backoff, as Stripe retries
for days; the run's backoff is seconds. Any other answer is a rejection: the
event would never be accepted, so the run fails.

Faults hold the sender at points of the schedule (``gate``): the sender does
not pass a fault's point until the fault has started, so every fault lands in
the middle of the traffic however fast either side is.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from chaos.stripe_events import body_of, signature_header
from chaos.traffic import Delivery


@dataclass
class SendStats:
    accepted: int = 0
    attempts: int = 0
    redelivered: int = 0  # deliveries that needed more than one attempt
    answers: Counter[str] = field(default_factory=Counter)
    rejected: list[str] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0

    @property
    def seconds(self) -> float:
        return self.finished - self.started


@dataclass(order=True)
class _Retry:
    due: float
    seq: int
    index: int = field(compare=False)
    attempt: int = field(compare=False)


class Sender:
    def __init__(
        self,
        deliveries: list[Delivery],
        *,
        url: str,
        secret: str,
        concurrency: int,
        seed: int,
    ) -> None:
        self._deliveries = deliveries
        self._url = url
        self._secret = secret
        self._concurrency = concurrency
        self._rng = random.Random(seed + 2)
        self._next = 0
        self._retries: list[_Retry] = []
        self._seq = 0
        self._done = 0
        self._gates: list[tuple[int, asyncio.Event]] = []
        self._reached: dict[int, asyncio.Event] = {}
        self._changed = asyncio.Event()
        self.stats = SendStats()

    @property
    def total(self) -> int:
        return len(self._deliveries)

    @property
    def taken(self) -> int:
        return self._next

    def gate(self, index: int) -> tuple[asyncio.Event, asyncio.Event]:
        """Hold the sender before delivery ``index``: returns (reached, release)."""
        release = asyncio.Event()
        reached = asyncio.Event()
        self._gates.append((index, release))
        self._gates.sort(key=lambda g: g[0])
        self._reached[index] = reached
        return reached, release

    async def run(self) -> SendStats:
        self.stats.started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=15)
        connector = aiohttp.TCPConnector(limit=self._concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            await asyncio.gather(*(self._worker(http) for _ in range(self._concurrency)))
        self.stats.finished = time.monotonic()
        return self.stats

    async def _take(self) -> tuple[int, int] | None:
        """The next delivery to attempt, (index, attempt), or None when all are done."""
        while True:
            now = time.monotonic()
            if self._retries and self._retries[0].due <= now:
                retry = heapq.heappop(self._retries)
                return retry.index, retry.attempt
            if self._next < self.total:
                if self._gates and self._next >= self._gates[0][0]:
                    index, release = self._gates[0]
                    self._reached[index].set()
                    if release.is_set():
                        self._gates.pop(0)
                        continue
                    # Held at the gate, but redeliveries fall due meanwhile.
                    due = self._retries[0].due - now if self._retries else 1.0
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(release.wait(), max(0.01, min(due, 1.0)))
                    continue
                index = self._next
                self._next += 1
                return index, 1
            if self._done >= self.total:
                return None
            wait = self._retries[0].due - now if self._retries else 1.0
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.01, min(wait, 1.0)))

    async def _worker(self, http: aiohttp.ClientSession) -> None:
        while (taken := await self._take()) is not None:
            index, attempt = taken
            outcome = await self._attempt(http, self._deliveries[index])
            self.stats.attempts += 1
            self.stats.answers[outcome] += 1
            if outcome == "2xx":
                self._done += 1
                self.stats.accepted += 1
                if attempt > 1:
                    self.stats.redelivered += 1
            elif outcome.startswith("4"):
                self._done += 1
                self.stats.rejected.append(f"{self._deliveries[index].event.id}: {outcome}")
            else:
                # Stripe's backoff, compressed: 0.5 s doubling to 8 s, jittered.
                delay = min(8.0, 0.5 * 2 ** (attempt - 1)) * self._rng.uniform(0.8, 1.2)
                self._seq += 1
                heapq.heappush(
                    self._retries, _Retry(time.monotonic() + delay, self._seq, index, attempt + 1)
                )
            self._changed.set()

    async def _attempt(self, http: aiohttp.ClientSession, delivery: Delivery) -> str:
        body = body_of(delivery.event)
        headers = {
            "Content-Type": "application/json",
            "Stripe-Signature": signature_header(body, self._secret),
        }
        try:
            async with http.post(self._url, data=body, headers=headers) as response:
                await response.read()
                if response.status < 300:
                    return "2xx"
                if response.status >= 500:
                    return str(response.status)
                return f"{response.status} {(await response.text())[:200]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"connection error ({type(exc).__name__})"
