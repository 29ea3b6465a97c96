"""Dunning and the members' emails (the retry service): every failed renewal's
case ends as its story says, and each email is sent exactly once.

A renewal whose payment failed makes ``invoice.payment_failed``; its recovery
makes ``invoice.paid`` for the same invoice; a subscription canceled while the
invoice is still unpaid makes ``invoice.voided`` (beside the subscriptions
domain's ``customer.subscription.deleted``). The failure opens a case and
sends the "payment failed" email; the payment closes it as recovered with a
"payment recovered" email; the void (or the deletion) closes it as canceled.
A story that ends past due leaves its case open.
A recovered case whose subscription is canceled later may also end canceled,
when the deletion arrives before the payment (the case closes once).

Stripe does not order its events: a failure that arrives after its invoice
was paid or voided rightly opens no case and sends no email. Both outcomes
are correct (``OneOf``); half of one (a case without its email, a recovery
without the settled invoice) or twice one (two emails) is not. The run has no
Stripe to charge, so the scheduler's own attempts are off
(``DUNNING_SCHEDULER_ENABLED=false`` in ``chaos/stack.py``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from chaos.domain import Domain, OneOf, Probe, QueueSpec, State, StripeEvent, World
from chaos.domains import invoices
from chaos.story import Customer, Step, StepKind
from services.retry.handlers import EVENT_TYPES
from shared import queues
from shared.outbox import event_id

# How long the run waits for the mail table to have nothing left to send.
MAIL_WAIT_SECONDS = 300.0

Mail = tuple[str, int] | None  # (the mail row's state, messages the server accepted)


def failed_email(invoice_id: str) -> str:
    """The id of the domain event (and so of the email) a case's opening makes."""
    return str(event_id("retry", "dunning.attempt_failed", f"{invoice_id}:0"))


def recovered_email(invoice_id: str) -> str:
    return str(event_id("retry", "dunning.recovered", invoice_id))


class Dunning(Domain):
    name = "dunning"
    services = ("retry",)
    queues = (
        QueueSpec(queues.RETRY_STRIPE, "retry", accepts=lambda t: t in EVENT_TYPES),
        QueueSpec(queues.RETRY_NOTIFICATIONS, "retry"),
    )

    def events(self, customer: Customer, step: Step) -> list[StripeEvent]:
        if step.kind is StepKind.PAYMENT_FAILED:
            renewal, event_type, status = step, "invoice.payment_failed", "open"
        elif step.kind is StepKind.PAYMENT_RECOVERED:
            unpaid = invoices.failed_invoice_of(customer, step)
            assert unpaid is not None, "a recovery follows a failure"
            renewal, event_type, status = unpaid, "invoice.paid", "paid"
        elif step.kind is StepKind.CANCEL:
            unpaid = invoices.failed_invoice_of(customer, step)
            if unpaid is None:
                return []
            renewal, event_type, status = unpaid, "invoice.voided", "void"
        else:
            return []
        invoice = invoices.invoice_id(customer, renewal)
        attempts = 1 if status == "open" else 2
        return [
            StripeEvent(
                id=invoices.event_id(invoice, status),
                type=event_type,
                created=step.at,
                customer=customer.number,
                build=lambda: invoices.invoice(
                    customer, renewal, status=status, at=step.at, attempt_count=attempts
                ),
            )
        ]

    def expected(self, world: World) -> State:
        state: State = {}
        # Every invoice paid or voided is remembered as settled, whichever
        # domain's story paid it (a plain renewal opens no case).
        for event in world.events:
            if event.type in ("invoice.paid", "invoice.voided"):
                status = "paid" if event.type == "invoice.paid" else "void"
                state[("invoice", invoices.invoice_of(event.id))] = (None, status, None, None)
        sent: Mail = ("sent", 1)
        for customer in world.customers:
            for step in customer.steps:
                if step.kind is not StepKind.PAYMENT_FAILED:
                    continue
                invoice = invoices.invoice_id(customer, step)
                fate = state.get(("invoice", invoice))
                if fate is None:  # the story ended past due: the case is still open
                    state[("invoice", invoice)] = ("open", None, sent, None)
                elif fate[1] == "paid":
                    outcomes = [("recovered", "paid", sent, sent), (None, "paid", None, None)]
                    if customer.last.kind is StepKind.CANCEL:
                        # The cancellation overtook the payment: the case was
                        # closed as canceled first, and stays closed.
                        outcomes.append(("canceled", "paid", sent, None))
                    state[("invoice", invoice)] = OneOf(*outcomes)
                else:
                    state[("invoice", invoice)] = OneOf(
                        ("canceled", "void", sent, None), (None, "void", None, None)
                    )
        return state

    async def observed(self, probe: Probe) -> State:
        await _mail_sent(probe)
        cases = {
            r["invoice_id"]: r["state"]
            for r in await probe.db.fetch("SELECT invoice_id, state FROM retry.cases")
        }
        settled = {
            r["invoice_id"]: r["status"]
            for r in await probe.db.fetch("SELECT invoice_id, status FROM retry.settled_invoices")
        }
        rows = {
            r["event_id"]: r["state"]
            for r in await probe.db.fetch("SELECT event_id, state FROM retry.mail")
        }
        received = dict(probe.mail_received)

        def mail(email_id: str) -> Mail:
            state, copies = rows.pop(email_id, None), received.pop(email_id, 0)
            return None if state is None and not copies else (state or "no row", copies)

        state: State = {}
        for invoice in sorted(set(cases) | set(settled)):
            state[("invoice", invoice)] = (
                cases.get(invoice),
                settled.get(invoice),
                mail(failed_email(invoice)),
                mail(recovered_email(invoice)),
            )
        # Any other email is one nobody expects.
        for email_id in sorted(set(rows) | set(received)):
            state[("email", email_id)] = (rows.get(email_id), received.get(email_id, 0))
        return state


async def _mail_sent(probe: Probe) -> None:
    """Wait until the mail table has nothing left to send (a sender killed
    mid-send leaves its rows leased for two minutes before another takes them)."""
    deadline = time.monotonic() + MAIL_WAIT_SECONDS
    while time.monotonic() < deadline:
        pending: Any = await probe.db.fetchval(
            "SELECT count(*) FROM retry.mail WHERE state = 'pending'"
        )
        if not pending:
            return
        await asyncio.sleep(1.0)
