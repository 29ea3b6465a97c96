"""In-memory object store.

Objects are kept exactly in their wire shape (dicts built from Stripe's
fixtures), with foreign keys as ids; expansion happens on the way out.  The
store itself is not thread-safe: the app serialises every API call behind one
asyncio lock, so a handler always sees and leaves a consistent state.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from .errors import missing

# kind -> (id prefix, label used in Stripe's "No such ..." message)
KINDS: dict[str, tuple[str, str]] = {
    "customer": ("cus", "customer"),
    "product": ("prod", "product"),
    "price": ("price", "price"),
    "payment_method": ("pm", "PaymentMethod"),
    "subscription": ("sub", "subscription"),
    "invoice": ("in", "invoice"),
    "invoiceitem": ("ii", "invoiceitem"),
    "invoice_payment": ("inpay", "invoice_payment"),
    "payment_intent": ("pi", "payment_intent"),
    "charge": ("ch", "charge"),
    "refund": ("re", "refund"),
    "checkout.session": ("cs_test", "checkout.session"),
    "billing_portal.session": ("bps", "billing_portal.session"),
    "event": ("evt", "event"),
    "test_clock": ("clock", "test_helpers.test_clock"),
}

_PREFIX_TO_KIND = {prefix: kind for kind, (prefix, _) in KINDS.items()}

Obj = dict[str, Any]


class Store:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Obj]] = {kind: {} for kind in KINDS}
        # Insertion order, used for "newest first" listing: many objects share a second.
        self.seq: dict[str, int] = {}
        self._counter = itertools.count(1)
        # Internals Stripe keeps but does not show: which payment intent collects an
        # invoice, queued failures for sandbox-controlled payment methods.
        self.invoice_payment_intent: dict[str, str] = {}
        self.fail_next: dict[str, list[str]] = {}
        # payment method id -> test card token it was made from (decides its behaviour)
        self.pm_card: dict[str, str] = {}
        # subscriptions already sent customer.subscription.trial_will_end for their trial
        self.trial_warned: set[str] = set()
        self.deleted: set[str] = set()
        # checkout session id -> its line items ("item" objects, listed separately on Stripe)
        self.checkout_lines: dict[str, list[Obj]] = {}

    def add(self, kind: str, obj: Obj) -> Obj:
        self.objects[kind][obj["id"]] = obj
        self.seq[obj["id"]] = next(self._counter)
        return obj

    def remove(self, kind: str, object_id: str) -> None:
        self.objects[kind].pop(object_id, None)
        self.deleted.add(object_id)

    def get(self, kind: str, object_id: str | None, param: str = "id") -> Obj:
        found = self.objects[kind].get(object_id or "")
        if found is None:
            raise missing(KINDS[kind][1], object_id or "", param)
        return found

    def maybe(self, kind: str, object_id: str | None) -> Obj | None:
        return self.objects[kind].get(object_id or "")

    def all(self, kind: str) -> list[Obj]:
        """Newest first, as Stripe lists."""
        return sorted(self.objects[kind].values(), key=lambda o: -self.seq[o["id"]])

    def lookup_any(self, object_id: str) -> Obj | None:
        """Find an object by id alone (used by ``expand``)."""
        if object_id.startswith("cs_test_"):
            return self.objects["checkout.session"].get(object_id)
        prefix = object_id.split("_", 1)[0]
        kind = _PREFIX_TO_KIND.get(prefix)
        if kind is None:
            return None
        return self.objects[kind].get(object_id)


def snapshot(obj: Obj) -> Obj:
    return copy.deepcopy(obj)
