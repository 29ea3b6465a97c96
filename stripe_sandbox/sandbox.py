"""The emulator's state: store, events, delivery, idempotency, faults, request log."""

from __future__ import annotations

import asyncio
from typing import Any

from .clock import to_ts, wall_now
from .delivery import DeliveryManager
from .events import Events
from .faults import Faults
from .idempotency import IdempotencyCache
from .store import Store


class Sandbox:
    def __init__(self, delivery: DeliveryManager) -> None:
        self.delivery = delivery
        self.store = Store()
        self.events = Events(self.store, delivery)
        self.idempotency = IdempotencyCache()
        self.faults = Faults()
        self.requests: list[dict[str, Any]] = []
        # One lock for all API calls: handlers are synchronous critical sections, so
        # concurrent requests can never interleave half-applied state changes.
        self.lock = asyncio.Lock()

    def reset(self) -> None:
        self.store = Store()
        self.events = Events(self.store, self.delivery)
        self.idempotency.clear()
        self.faults.clear()
        self.requests.clear()
        self.delivery.clear()

    # -- time -------------------------------------------------------------

    def now(self, clock_id: str | None = None) -> int:
        """Current time for an object: its test clock's frozen time, else the wall clock."""
        if clock_id:
            clock = self.store.maybe("test_clock", clock_id)
            if clock is not None:
                return int(clock["frozen_time"])
        return to_ts(wall_now())

    def customer_clock(self, customer_id: str | None) -> str | None:
        customer = self.store.maybe("customer", customer_id)
        return customer.get("test_clock") if customer else None

    def now_for_customer(self, customer_id: str | None) -> int:
        return self.now(self.customer_clock(customer_id))
