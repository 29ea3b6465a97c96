"""The credit ledger (the credits service): every renewal granted once, every
spend taken once, and each balance what the grants and spends add up to.

A renewal makes ``invoice.paid`` (``subscription_cycle``); the subscriptions
service announces ``subscription.renewed`` and the credits service grants the
plan's allotment for the new period, once per period and credit type. A
recovered renewal (the dunning domain's ``invoice.paid``) grants the same
way. Once every event is applied, each ``credits_spent`` step is a spend
through the gateway (``POST /v1/credits/spend`` as the member, with an
Idempotency-Key; one in five sent again with the same key): it is taken if
the member's balance holds it, refused (422) if not, and never taken twice.

The run's prices carry no lookup key (``chaos/domains/subscriptions.py``), so
the subscription's own events name no plan: activations and upgrades grant
nothing here, every grant comes from a renewal's invoice, which names its
plan. That keeps the model exact whatever order the events arrive in.
"""

from __future__ import annotations

from chaos.domain import ApiCall, Domain, Probe, QueueSpec, State, StripeEvent, World
from chaos.domains import invoices
from chaos.story import Customer, Step, StepKind
from services.subscriptions import plans
from shared import queues

SPEND_TYPE = "guest_passes"  # no plan bills its overage: beyond the balance is refused
RESENT_EVERY = 5  # one spend in this many is sent twice with the same Idempotency-Key


def spend_reference(customer: Customer, step: Step) -> str:
    return f"chaos-{customer.subscription_id}-{step.index:03d}"


def _renewals(customer: Customer) -> dict[str, Step]:
    """The customer's renewal invoices (paid or failed first), by id."""
    return {
        invoices.invoice_id(customer, s): s
        for s in customer.steps
        if s.kind in (StepKind.RENEW, StepKind.PAYMENT_FAILED)
    }


class Credits(Domain):
    name = "credits"
    services = ("credits",)
    # Fed by domain events (billing.events): the grants are its effects.
    queues = (QueueSpec(queues.CREDITS_BILLING, "credits"),)

    def events(self, customer: Customer, step: Step) -> list[StripeEvent]:
        if step.kind is not StepKind.RENEW:
            return []
        invoice = invoices.invoice_id(customer, step)
        return [
            StripeEvent(
                id=invoices.event_id(invoice, "paid"),
                type="invoice.paid",
                created=step.at,
                customer=customer.number,
                build=lambda: invoices.invoice(customer, step, status="paid", at=step.at),
            )
        ]

    def _model(self, world: World) -> tuple[State, list[ApiCall]]:
        paid = {invoices.invoice_of(e.id) for e in world.events if e.type == "invoice.paid"}
        state: State = {}
        calls: list[ApiCall] = []
        for customer in world.customers:
            balance: dict[str, int] = {}
            for invoice, renewal in _renewals(customer).items():
                if invoice not in paid:
                    continue
                for credit_type, level in plans.allotments(invoices.plan_key(renewal.plan)).items():
                    key = ("grant", customer.subscription_id, str(renewal.period[0]), credit_type)
                    state[key] = (level, 1)  # the allotment, in one grant
                    balance[credit_type] = balance.get(credit_type, 0) + level
            for step in customer.steps:
                if step.kind is not StepKind.CREDITS_SPENT:
                    continue
                reference = spend_reference(customer, step)
                taken = balance.get(SPEND_TYPE, 0) >= step.amount
                if taken:
                    balance[SPEND_TYPE] -= step.amount
                    state[("spend", reference)] = (customer.user_id, step.amount, 1)
                calls.append(
                    ApiCall(
                        user_id=customer.user_id,
                        method="POST",
                        path="/v1/credits/spend",
                        body={
                            "credit_type": SPEND_TYPE,
                            "amount": step.amount,
                            "reference": reference,
                        },
                        idempotency_key=reference,
                        expect=201 if taken else 422,
                        sends=2 if (customer.number + step.index) % RESENT_EVERY == 0 else 1,
                    )
                )
            for credit_type, left in balance.items():
                # The balance row, the ledger's entries and the grants' remains agree.
                state[("balance", customer.user_id, credit_type)] = (left, left, left)
        return state, calls

    def expected(self, world: World) -> State:
        return self._model(world)[0]

    def api_calls(self, world: World) -> list[ApiCall]:
        return self._model(world)[1]

    async def observed(self, probe: Probe) -> State:
        state: State = {}
        for r in await probe.db.fetch(
            "SELECT coalesce(subscription_id, grant_key) AS owner, period_start, credit_type,"
            " sum(amount) AS amount, count(*) AS grants FROM credits.grants"
            " GROUP BY 1, 2, 3"
        ):
            start = str(int(r["period_start"].timestamp())) if r["period_start"] else "-"
            key = ("grant", r["owner"], start, r["credit_type"])
            state[key] = (int(r["amount"]), r["grants"])
        for r in await probe.db.fetch(
            "SELECT reference, user_id, sum(amount) AS amount, count(*) AS spends"
            " FROM credits.spends GROUP BY 1, 2"
        ):
            state[("spend", r["reference"])] = (r["user_id"], int(r["amount"]), r["spends"])
        for r in await probe.db.fetch(
            """
            WITH e AS (SELECT user_id, credit_type, sum(amount) AS total
                       FROM credits.entries GROUP BY 1, 2),
                 g AS (SELECT user_id, credit_type, sum(remaining) AS total
                       FROM credits.grants GROUP BY 1, 2)
            SELECT b.user_id, b.credit_type, b.balance,
                   coalesce(e.total, 0) AS entries, coalesce(g.total, 0) AS remaining
            FROM credits.balances b
            LEFT JOIN e USING (user_id, credit_type)
            LEFT JOIN g USING (user_id, credit_type)
            WHERE b.balance <> 0 OR g.user_id IS NOT NULL
            """
        ):
            state[("balance", r["user_id"], r["credit_type"])] = (
                int(r["balance"]),
                int(r["entries"]),
                int(r["remaining"]),
            )
        return state
