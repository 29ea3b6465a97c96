"""The webhooks ledger: every Stripe event, stored exactly once.

It owns the events nobody else consumes (``customer.created``) and expects
every event of the run, whoever generated it, in ``webhooks.events`` once.
"""

from __future__ import annotations

from chaos.domain import Domain, Probe, QueueSpec, State, StripeEvent, World
from chaos.story import Customer, Step, StepKind
from chaos.stripe_events import stripe_object
from shared import queues


class Ledger(Domain):
    name = "ledger"
    services = ("webhooks",)
    queues = (QueueSpec(queues.WEBHOOKS_LEDGER, "webhooks", accepts=lambda _type: True),)

    def events(self, customer: Customer, step: Step) -> list[StripeEvent]:
        if step.kind is not StepKind.SUBSCRIBE:
            return []
        return [
            StripeEvent(
                id=f"evt_{customer.id}_customer",
                type="customer.created",
                created=step.at,
                customer=customer.number,
                build=lambda: stripe_object(
                    "customer",
                    id=customer.id,
                    created=step.at,
                    email=f"{customer.user_id}@example.com",
                    metadata={"user_id": customer.user_id},
                ),
            )
        ]

    def expected(self, world: World) -> State:
        return {("event", e.id): e.type for e in world.events}

    async def observed(self, probe: Probe) -> State:
        rows = await probe.db.fetch(
            "SELECT id, type, count(*) OVER (PARTITION BY id) AS copies FROM webhooks.events"
        )
        # The primary key makes a second row impossible; a copy would show as
        # a different value rather than pass unnoticed if it ever changed.
        return {
            ("event", r["id"]): r["type"] if r["copies"] == 1 else f"{r['type']} x{r['copies']}"
            for r in rows
        }
