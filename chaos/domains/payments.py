"""Booking payments and refunds (the subscriptions service's payments module):
each booking charged once, each refund counted once.

Before any event is sent, each ``booking_paid`` step is a payment started by
its member (``POST /v1/payments`` through the gateway, with an
Idempotency-Key; one in five sent again with the same key): the service
prices the cart from the catalog, writes the pending payment holding the
booking and creates the payment intent in Stripe (the run's sandbox). Stripe
then says how it went: ``payment_intent.succeeded`` for the step itself, and
``charge.refunded`` (the whole amount, one refund) for a later
``booking_refunded`` step. Whatever the order and number of deliveries, each
booking ends with one payment, paid once, refunded once if its story says so.

Every paid subscription invoice (the other domains' ``invoice.paid``) is
linked as a payment of its own, once: ``("invoice", id)``.
"""

from __future__ import annotations

from typing import Any

from chaos.domain import ApiCall, Domain, Probe, QueueSpec, State, StripeEvent, World
from chaos.domains import invoices
from chaos.story import Customer, Step, StepKind
from chaos.stripe_events import stripe_object
from services.subscriptions.payments.stripe_events import BINDINGS
from shared import catalog, queues

# The cart of a booking by the story's amount: a catalog product (the
# service prices it; the model reads the same catalog).
CART = {1500: "event_seat", 2500: "meeting_room_hour", 4000: "day_pass"}
RESENT_EVERY = 5  # one payment in this many is started twice with the same key


def routed(event_type: str) -> bool:
    """Whether the queue's bindings (topic patterns, ``*`` one word) take ``event_type``."""
    words = event_type.split(".")
    return any(
        len(p) == len(words) and all(a in ("*", b) for a, b in zip(p, words, strict=True))
        for p in (b.split(".") for b in BINDINGS)
    )


def booking_ref(step: Step) -> str:
    assert step.booking is not None
    return step.booking.replace("pi_", "bk_", 1)


def price(step: Step) -> int:
    return catalog.default().products[CART[step.amount]].amount


def _paid_step(customer: Customer, step: Step) -> Step:
    """The ``booking_paid`` step a refund is about."""
    return next(
        s for s in customer.steps if s.kind is StepKind.BOOKING_PAID and s.booking == step.booking
    )


class Payments(Domain):
    name = "payments"
    services = ("subscriptions",)
    queues = (QueueSpec(queues.SUBSCRIPTIONS_PAYMENTS, "subscriptions", accepts=routed),)

    def __init__(self) -> None:
        # What the payments API answered, by booking: (payment id, intent id).
        self.started: dict[str, tuple[str, str]] = {}

    def answered(self, answers: dict[str, Any]) -> None:
        for key, body in answers.items():
            if key.startswith("chaos-pay-") and isinstance(body, dict):
                ref = key.removeprefix("chaos-pay-")
                self.started[ref] = (str(body["payment_id"]), str(body["payment_intent_id"]))

    def _ids(self, ref: str) -> tuple[str, str]:
        # A payment the API never started fails the run through its call; its
        # events still go out, naming no payment of ours.
        return self.started.get(ref, (f"pay_never_started_{ref}", f"pi_never_started_{ref}"))

    def _intent(self, customer: Customer, step: Step) -> dict[str, Any]:
        ref = booking_ref(step)
        payment_id, intent_id = self._ids(ref)
        amount = price(step)
        return stripe_object(
            "payment_intent",
            id=intent_id,
            status="succeeded",
            amount=amount,
            amount_received=amount,
            currency=invoices.CURRENCY,
            customer=None,
            created=step.at,
            latest_charge=f"ch_{ref}",
            last_payment_error=None,
            metadata={"payment_id": payment_id, "user_id": customer.user_id},
        )

    def _charge(self, customer: Customer, step: Step) -> dict[str, Any]:
        paid = _paid_step(customer, step)
        ref = booking_ref(paid)
        payment_id, intent_id = self._ids(ref)
        amount = price(paid)
        refund = stripe_object(
            "refund",
            id=f"re_{ref}",
            amount=amount,
            status="succeeded",
            charge=f"ch_{ref}",
            payment_intent=intent_id,
            currency=invoices.CURRENCY,
            created=step.at,
            metadata={},
        )
        return stripe_object(
            "charge",
            id=f"ch_{ref}",
            amount=amount,
            amount_captured=amount,
            amount_refunded=amount,
            refunded=True,
            paid=True,
            status="succeeded",
            currency=invoices.CURRENCY,
            payment_intent=intent_id,
            customer=None,
            created=paid.at,
            metadata={"payment_id": payment_id},
            refunds={"object": "list", "data": [refund], "has_more": False, "url": "/v1/refunds"},
        )

    def events(self, customer: Customer, step: Step) -> list[StripeEvent]:
        if step.kind is StepKind.BOOKING_PAID:
            return [
                StripeEvent(
                    id=f"evt_{booking_ref(step)}_paid",
                    type="payment_intent.succeeded",
                    created=step.at,
                    customer=customer.number,
                    build=lambda: self._intent(customer, step),
                )
            ]
        if step.kind is StepKind.BOOKING_REFUNDED:
            return [
                StripeEvent(
                    id=f"evt_{booking_ref(step)}_refunded",
                    type="charge.refunded",
                    created=step.at,
                    customer=customer.number,
                    build=lambda: self._charge(customer, step),
                )
            ]
        return []

    def api_calls(self, world: World) -> list[ApiCall]:
        return [
            ApiCall(
                user_id=customer.user_id,
                method="POST",
                path="/v1/payments",
                body={
                    "items": [
                        {
                            "product": CART[step.amount],
                            "quantity": 1,
                            "booking_ref": booking_ref(step),
                        }
                    ]
                },
                idempotency_key=f"chaos-pay-{booking_ref(step)}",
                expect=201,
                sends=2 if (customer.number + step.index) % RESENT_EVERY == 0 else 1,
                before_traffic=True,
            )
            for customer in world.customers
            for step in customer.steps
            if step.kind is StepKind.BOOKING_PAID
        ]

    def expected(self, world: World) -> State:
        state: State = {}
        for customer in world.customers:
            refunded = {s.booking for s in customer.steps if s.kind is StepKind.BOOKING_REFUNDED}
            for step in customer.steps:
                if step.kind is not StepKind.BOOKING_PAID:
                    continue
                amount = price(step)
                back = amount if step.booking in refunded else 0
                state[("booking", booking_ref(step))] = (
                    customer.user_id,
                    "refunded" if back else "succeeded",
                    amount,  # charged
                    amount,  # paid
                    back,  # refunded
                    1 if back else 0,  # refunds recorded
                    1,  # payments holding the booking
                )
        for event in world.events:
            if event.type == "invoice.paid":
                # A subscription invoice's charge, linked once.
                state[("invoice", invoices.invoice_of(event.id))] = ("succeeded", 1)
        return state

    async def observed(self, probe: Probe) -> State:
        state: State = {}
        for r in await probe.db.fetch(
            """
            SELECT b.booking_ref, p.user_id, p.status, p.amount, p.amount_paid,
                   p.amount_refunded,
                   (SELECT count(*) FROM subscriptions.payment_charge_refunds r
                     WHERE r.payment_id = p.id) AS refunds,
                   count(*) OVER (PARTITION BY b.booking_ref) AS payments
            FROM subscriptions.payment_bookings b
            JOIN subscriptions.payments p ON p.id = b.payment_id
            """
        ):
            state[("booking", r["booking_ref"])] = (
                r["user_id"],
                r["status"],
                int(r["amount"]),
                None if r["amount_paid"] is None else int(r["amount_paid"]),
                int(r["amount_refunded"]),
                r["refunds"],
                r["payments"],
            )
        for r in await probe.db.fetch(
            "SELECT invoice_id, status, count(*) OVER (PARTITION BY invoice_id) AS copies"
            " FROM subscriptions.payments WHERE kind = 'invoice'"
        ):
            state[("invoice", r["invoice_id"])] = (r["status"], r["copies"])
        return state
