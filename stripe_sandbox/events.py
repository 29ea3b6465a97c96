"""Event creation: snapshot the object, store it for the Events API, enqueue delivery."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from .delivery import DeliveryManager
from .fixtures import template
from .ids import new_id
from .store import Obj, Store, snapshot

API_VERSION = "2026-10-28.endive"

# (request id, idempotency key) of the API call that caused the events being emitted.
# Events caused by time passing (test clock advances) carry nulls, as on Stripe.
current_request: ContextVar[tuple[str | None, str | None]] = ContextVar(
    "current_request", default=(None, None)
)


class Events:
    def __init__(
        self, store: Store, delivery: DeliveryManager, time_of: Callable[[Obj], int]
    ) -> None:
        self.store = store
        self.delivery = delivery
        self.time_of = time_of

    def emit(
        self,
        type_: str,
        obj: dict[str, Any],
        previous_attributes: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        request_id, idempotency_key = current_request.get()
        event = template("event")
        data: dict[str, Any] = {"object": snapshot(obj)}
        if previous_attributes is not None:
            data["previous_attributes"] = snapshot(previous_attributes)
        event.update(
            {
                "id": new_id("evt"),
                "object": "event",
                "api_version": API_VERSION,
                # An event happens in its object's time: on a test clock that is the
                # clock's frozen time (the moment a renewal ran during an advance),
                # so ordering by `created` follows the simulated timeline.
                "created": self.time_of(obj),
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
    """``previous_attributes``: the old values of what changed.

    Plain nested hashes (``invoice_settings``) report only their changed keys, as
    Stripe does; objects and lists (``items``, ``price``) are reported whole.
    """
    diff: dict[str, Any] = {}
    for key, old in before.items():
        new = after.get(key)
        if new == old:
            continue
        if isinstance(old, dict) and isinstance(new, dict) and "object" not in old:
            diff[key] = changed(old, new)
        else:
            diff[key] = old
    return diff
