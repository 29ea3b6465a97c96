"""What happens in Stripe during a run: one story per customer.

A story is the truth the reference model is computed from: the business
steps a member goes through (subscribed, renewed, upgraded, a renewal failed
and was recovered, bookings paid and refunded, credits spent, cancelled),
each at a time on Stripe's clock. Domains (``chaos/domains``) turn each step
into the Stripe events they own and say what their service must hold at the
end; the story itself knows nothing of events or services.

Stories are drawn from a seeded generator: the same seed and sizes give the
same stories, so a run with two replicas replays exactly a run with one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum

DAY = 86_400
PERIOD = 30 * DAY
# Plans by rank (lookup keys of catalog.toml's monthly prices): an upgrade
# moves one rank up.
PLANS = ("hot_desk_monthly", "dedicated_desk_monthly", "private_office_monthly")


class StepKind(StrEnum):
    SUBSCRIBE = "subscribe"
    RENEW = "renew"
    UPGRADE = "upgrade"
    PAYMENT_FAILED = "payment_failed"
    PAYMENT_RECOVERED = "payment_recovered"
    BOOKING_PAID = "booking_paid"
    BOOKING_REFUNDED = "booking_refunded"
    CREDITS_SPENT = "credits_spent"
    CANCEL = "cancel"


@dataclass(frozen=True)
class Step:
    """One step, with the subscription's state right after it."""

    kind: StepKind
    at: int  # Stripe's clock, unix seconds; strictly increasing within a story
    index: int
    plan: str  # lookup key of the plan in force after the step
    period: tuple[int, int]  # the billing period in force after the step
    status: str  # the subscription's status after the step
    amount: int = 0  # bookings (minor units) and credit spends (units)
    booking: str | None = None  # the booking a payment or refund is about


@dataclass
class Customer:
    number: int
    id: str  # Stripe customer id
    user_id: str
    subscription_id: str
    steps: list[Step] = field(default_factory=list)

    @property
    def last(self) -> Step:
        return self.steps[-1]


def new_customer(number: int, tag: str) -> Customer:
    return Customer(
        number=number,
        id=f"cus_chaos{tag}_{number:06d}",
        user_id=f"user_chaos{tag}_{number:06d}",
        subscription_id=f"sub_chaos{tag}_{number:06d}",
    )


def first_step(rng: random.Random, start: int) -> Step:
    return Step(
        kind=StepKind.SUBSCRIBE,
        at=start,
        index=0,
        plan=rng.choice(PLANS[:2]),
        period=(start, start + PERIOD),
        status="active",
    )


def next_step(rng: random.Random, customer: Customer, *, last_one: bool) -> Step:
    """The step after the story so far; ``last_one`` may end it with a cancel."""
    prev = customer.last
    # Within the period, a few minutes to a few days after the previous step.
    at = prev.at + rng.randint(60, 3 * DAY)
    index = prev.index + 1

    def step(kind: StepKind, **changes: object) -> Step:
        values: dict[str, object] = {
            "kind": kind,
            "at": at,
            "index": index,
            "plan": prev.plan,
            "period": prev.period,
            "status": prev.status,
        }
        values.update(changes)
        return Step(**values)  # type: ignore[arg-type]

    if last_one and rng.random() < 0.3:
        return step(StepKind.CANCEL, status="canceled")
    if prev.status == "past_due":
        return step(StepKind.PAYMENT_RECOVERED, status="active")
    open_bookings = paid_bookings(customer)
    roll = rng.random()
    if roll < 0.35:
        start = max(prev.period[1], prev.at + 60)
        return step(StepKind.RENEW, at=start, period=(start, start + PERIOD))
    if roll < 0.45 and PLANS.index(prev.plan) < len(PLANS) - 1:
        return step(StepKind.UPGRADE, plan=PLANS[PLANS.index(prev.plan) + 1])
    if roll < 0.57:
        # A renewal whose payment failed: the new period starts, unpaid.
        start = max(prev.period[1], prev.at + 60)
        return step(
            StepKind.PAYMENT_FAILED, at=start, period=(start, start + PERIOD), status="past_due"
        )
    if roll < 0.75:
        booking = f"pi_chaos_{customer.number:06d}_{index:03d}"
        return step(StepKind.BOOKING_PAID, amount=rng.choice((1500, 2500, 4000)), booking=booking)
    if roll < 0.82 and open_bookings:
        paid = rng.choice(open_bookings)
        return step(StepKind.BOOKING_REFUNDED, amount=paid.amount, booking=paid.booking)
    return step(StepKind.CREDITS_SPENT, amount=rng.randint(1, 3))


def paid_bookings(customer: Customer) -> list[Step]:
    refunded = {s.booking for s in customer.steps if s.kind is StepKind.BOOKING_REFUNDED}
    return [
        s for s in customer.steps if s.kind is StepKind.BOOKING_PAID and s.booking not in refunded
    ]
