"""Event creation: snapshot the object, store it for the Events API, enqueue delivery."""

from __future__ import annotations

import copy
from contextvars import ContextVar
from typing import Any

from .clock import to_ts, wall_now
from .delivery import DeliveryManager
from .fixtures import template
from .ids import new_id
from .store import Store

API_VERSION = "2026-10-28.endive"

# (request id, idempotency key) of the API call that caused the events being emitted.
# Events caused by time passing (test clock advances) carry nulls, as on Stripe.
current_request: ContextVar[tuple[str | None, str | None]] = ContextVar(
    "current_request", default=(None, None)
)


class Events:
    def __init__(self, store: Store, delivery: DeliveryManager) -> None:
        self.store = store
        self.delivery = delivery

    def emit(
        self,
        type_: str,
        obj: dict[str, Any],
        previous_attributes: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        request_id, idempotency_key = current_request.get()
        event = template("event")
        data: dict[str, Any] = {"object": copy.deepcopy(obj)}
        if previous_attributes is not None:
            data["previous_attributes"] = copy.deepcopy(previous_attributes)
        event.update(
            {
                "id": new_id("evt"),
                "object": "event",
                "api_version": API_VERSION,
                # Events carry real time even for test-clock objects; the object
                # snapshot carries the simulated time.
                "created": to_ts(wall_now()),
                "data": data,
                "livemode": False,
                "pending_webhooks": len(self.delivery.workers),
                "request": {"id": request_id, "idempotency_key": idempotency_key},
                "type": type_,
            }
        )
        self.store.add("event", event)
        self.delivery.enqueue(event)
        return event


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``previous_attributes``: old values of the top-level keys that changed."""
    return {k: v for k, v in before.items() if after.get(k) != v}
