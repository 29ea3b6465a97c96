"""The subscriptions mirror: each subscription ends in Stripe's final state.

Every step of a story that changes the subscription makes one
``customer.subscription.*`` event carrying the whole object, as Stripe's do.
Whatever the order and number of deliveries, the row must end as the last
step left the subscription. A few poison events (an unknown status) must be
dead-lettered by the service, and only those.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from chaos.domain import Domain, Probe, QueueSpec, State, StripeEvent, World
from chaos.story import Customer, Step, StepKind
from chaos.stripe_events import stripe_object
from services.subscriptions.handlers import INVOICE_EVENTS
from shared import queues

QUEUE = queues.SUBSCRIPTIONS_STRIPE
_TYPES = {
    StepKind.SUBSCRIBE: "customer.subscription.created",
    StepKind.RENEW: "customer.subscription.updated",
    StepKind.UPGRADE: "customer.subscription.updated",
    StepKind.PAYMENT_FAILED: "customer.subscription.updated",
    StepKind.PAYMENT_RECOVERED: "customer.subscription.updated",
    StepKind.CANCEL: "customer.subscription.deleted",
}
# One poison event per this many events of the run (at least one).
POISON_EVERY = 1_000
POISON_REASON = "poison on purpose: a subscription status Stripe does not have"


def price_id(plan: str) -> str:
    return f"price_chaos_{plan}"


def subscription(customer: Customer, step: Step, *, status: str | None = None) -> dict[str, Any]:
    obj = stripe_object(
        "subscription",
        id=customer.subscription_id,
        customer=customer.id,
        status=status or step.status,
        cancel_at_period_end=False,
        canceled_at=step.at if step.status == "canceled" else None,
        ended_at=step.at if step.status == "canceled" else None,
        metadata={"user_id": customer.user_id},
    )
    item = obj["items"]["data"][0]
    item["price"]["id"] = price_id(step.plan)
    item["current_period_start"], item["current_period_end"] = step.period
    return obj


def _unix(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


class Subscriptions(Domain):
    name = "subscriptions"
    services = ("subscriptions",)
    queues = (
        # Other domains' invoice events go through the same queue.
        QueueSpec(
            QUEUE,
            "subscriptions",
            accepts=lambda t: t.startswith("customer.subscription.") or t in INVOICE_EVENTS,
        ),
    )

    def events(self, customer: Customer, step: Step) -> list[StripeEvent]:
        event_type = _TYPES.get(step.kind)
        if event_type is None:
            return []
        return [
            StripeEvent(
                id=f"evt_{customer.subscription_id}_{step.index:03d}",
                type=event_type,
                created=step.at,
                customer=customer.number,
                build=lambda: subscription(customer, step),
            )
        ]

    def extra_events(self, world: World) -> list[StripeEvent]:
        poison = []
        for n in range(max(1, len(world.events) // POISON_EVERY)):
            customer = world.customers[n % len(world.customers)]
            ghost = Customer(
                number=-1,
                id=customer.id,
                user_id=customer.user_id,
                subscription_id=f"sub_chaospoison_{n:05d}",
            )
            step = customer.steps[0]
            poison.append(
                StripeEvent(
                    id=f"evt_chaospoison_{n:05d}",
                    type="customer.subscription.updated",
                    created=step.at,
                    customer=-1,
                    build=functools.partial(subscription, ghost, step, status="not_a_status"),
                )
            )
        return poison

    def expected(self, world: World) -> State:
        state: State = {}
        for customer in world.customers:
            # The subscription as the last step that touched it left it.
            touched = [s for s in customer.steps if s.kind in _TYPES]
            if not touched:
                continue
            last = touched[-1]
            state[("subscription", customer.subscription_id)] = (
                customer.id,
                last.status,
                price_id(last.plan),
                last.period[0],
                last.period[1],
                False,
                last.at if last.status == "canceled" else None,
            )
        return state

    async def observed(self, probe: Probe) -> State:
        rows = await probe.db.fetch(
            "SELECT stripe_subscription_id, stripe_customer_id, status, price_id,"
            " current_period_start, current_period_end, cancel_at_period_end, canceled_at"
            " FROM subscriptions.subscriptions"
        )
        return {
            ("subscription", r["stripe_subscription_id"]): (
                r["stripe_customer_id"],
                r["status"],
                r["price_id"],
                _unix(r["current_period_start"]),
                _unix(r["current_period_end"]),
                r["cancel_at_period_end"],
                _unix(r["canceled_at"]),
            )
            for r in rows
        }

    def expected_dead_letters(self, world: World) -> dict[tuple[str, str], str]:
        return {
            (QUEUE, e.id): POISON_REASON
            for e in world.events
            if e.id.startswith("evt_chaospoison_")
        }
