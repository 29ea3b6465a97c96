"""The emulator's state: store, events, delivery, idempotency, settings, faults, request log.

Every handler, control action and timeline step is a synchronous function that
runs start to finish within one step of the event loop, so no two of them can
interleave half-applied state changes; no lock is needed for that.  Requests
only overlap where they await (reading the body, an injected delay), which is
what lets a second request with the same idempotency key meet the first one
still executing, as on Stripe.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .clock import to_ts, wall_now
from .delivery import DeliveryManager
from .events import Events
from .faults import Faults
from .idempotency import IdempotencyCache
from .settings import AccountSettings
from .store import Obj, Store


class Sandbox:
    def __init__(self, delivery: DeliveryManager, settings: AccountSettings | None = None) -> None:
        self.delivery = delivery
        self.initial_settings = settings or AccountSettings()
        self.settings = AccountSettings(**self.initial_settings.describe())
        self.store = Store()
        self.events = Events(self.store, delivery, self.time_of)
        self.idempotency = IdempotencyCache()
        self.faults = Faults()
        self.requests: list[dict[str, Any]] = []

    def reset(self) -> None:
        self.store = Store()
        self.events = Events(self.store, self.delivery, self.time_of)
        self.settings = AccountSettings(**self.initial_settings.describe())
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
        if customer is None:
            return None
        clock = customer.get("test_clock")
        return str(clock) if clock else None

    def now_for_customer(self, customer_id: str | None) -> int:
        return self.now(self.customer_clock(customer_id))

    def clock_for(self, obj: Obj) -> str | None:
        """The test clock an object lives on: its own, or its customer's.

        Stripe puts everything billed to a test-clock customer on that clock:
        subscriptions, invoices, payment intents, charges, refunds, disputes.
        """
        kind = obj.get("object")
        if kind == "test_helpers.test_clock":
            return None
        if "test_clock" in obj:
            clock = obj["test_clock"]
            return str(clock) if clock else None
        if kind == "invoice_payment":
            invoice = self.store.maybe("invoice", obj.get("invoice"))
            return self.clock_for(invoice) if invoice else None
        if kind == "dispute":
            charge = self.store.maybe("charge", obj.get("charge"))
            return self.clock_for(charge) if charge else None
        customer = obj.get("customer")
        if isinstance(customer, dict):
            customer = customer.get("id")
        return self.customer_clock(customer) if isinstance(customer, str) else None

    def time_of(self, obj: Obj) -> int:
        """The object's present: its clock's frozen time, else now."""
        return self.now(self.clock_for(obj))


SANDBOX = web.AppKey("sandbox", Sandbox)
