"""In-memory object store.

Objects are kept exactly in their wire shape (dicts built from Stripe's
fixtures), with foreign keys as ids; expansion happens on the way out.  Every
change happens inside one synchronous handler or timeline step, so the store
never needs a lock (see :mod:`stripe_sandbox.sandbox`).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, TypeVar

import orjson

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
    "setup_intent": ("seti", "setupintent"),
    "coupon": ("coupon", "coupon"),
    "promotion_code": ("promo", "promotion code"),
    "discount": ("di", "discount"),
    "subscription_schedule": ("sub_sched", "subscription schedule"),
    "dispute": ("dp", "dispute"),
    "checkout.session": ("cs_test", "checkout.session"),
    "billing_portal.session": ("bps", "billing_portal.session"),
    "event": ("evt", "event"),
    "test_clock": ("clock", "test_helpers.test_clock"),
    "billing.meter": ("mtr", "billing.meter"),
}

# Longest first, so ``sub_sched_...`` is a schedule and not a subscription.
_PREFIXES = sorted(
    ((prefix + "_", kind) for kind, (prefix, _) in KINDS.items()),
    key=lambda pair: -len(pair[0]),
)

Obj = dict[str, Any]


class Store:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Obj]] = {kind: {} for kind in KINDS}
        # Insertion order, used for "newest first" listing: many objects share a second.
        self.seq: dict[str, int] = {}
        self._counter = itertools.count(1)
        # Internals Stripe keeps but does not show: which payment intent collects an
        # invoice (and the reverse), queued failures for sandbox-controlled payment
        # methods, when an invoice's first automatic attempt failed (Smart Retries
        # count from it), payment methods a customer already authenticated (3DS) on
        # a setup, and what is due to settle later: pending refunds, bank debits.
        self.invoice_payment_intent: dict[str, str] = {}
        self.payment_intent_invoice: dict[str, str] = {}
        # invoice id -> its invoice_payment records' ids, oldest first (paying one
        # invoice must not scan every payment record: a dunning backlog has many)
        self.invoice_payment_ids: dict[str, list[str]] = {}
        self.fail_next: dict[str, list[str]] = {}
        self.first_failed_attempt: dict[str, int] = {}
        self.authenticated_pms: set[str] = set()
        self.settlements: dict[str, tuple[int, str]] = {}
        # discount id -> invoices it has been applied to (a "once" coupon covers one)
        self.discount_uses: dict[str, int] = {}
        # coupon id -> the products it is restricted to (``applies_to``, includable);
        # deleted coupons, which discounts already made still refer to
        self.coupon_products: dict[str, list[str]] = {}
        self.retired_coupons: dict[str, Obj] = {}
        # payment method id -> test card token it was made from (decides its behaviour)
        self.pm_card: dict[str, str] = {}
        # subscriptions already sent customer.subscription.trial_will_end for their trial
        self.trial_warned: set[str] = set()
        self.deleted: set[str] = set()
        # checkout session id -> its line items ("item" objects, listed separately on
        # Stripe) and the subscription_data / payment_intent_data it was created with
        self.checkout_lines: dict[str, list[Obj]] = {}
        self.checkout_data: dict[str, dict[str, Obj]] = {}
        # checkout session id -> the coupons / promotion codes it will redeem on completion
        self.checkout_redemptions: dict[str, list[Any]] = {}
        # Usage reported to meters: events (never retrievable one by one on
        # Stripe, only summarised) and the identifiers already taken.
        self.meter_events: list[Obj] = []
        self.meter_identifiers: set[str] = set()

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
        for prefix, kind in _PREFIXES:
            if object_id.startswith(prefix):
                found = self.objects[kind].get(object_id)
                if found is not None:
                    return found
        # Coupons keep the id they were created with (``SUMMER20``).
        return self.objects["coupon"].get(object_id)


T = TypeVar("T")


def snapshot(obj: T) -> T:
    """A deep copy of a JSON-shaped object (what every Stripe object is).

    Through orjson, about ten times faster than ``copy.deepcopy``: the sandbox
    copies every object it answers with and every event it records, which made
    copying most of its cost per request. Anything orjson cannot encode falls
    back to ``deepcopy``.
    """
    try:
        copied: T = orjson.loads(orjson.dumps(obj))
    except TypeError:
        return copy.deepcopy(obj)
    return copied
