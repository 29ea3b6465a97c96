"""One dunning attempt, from a claimed case to its recorded outcome.

Order matters and is the point of this module:

1. Re-read the invoice and its subscription from Stripe (outside any
   transaction), in one request: the invoice comes with its subscription
   expanded (``parent.subscription_details.subscription``), and only when the
   answer lacks the subscription's status is the subscription read on its own.
   An invoice no longer open, or a subscription that ended, closes the case
   without a charge: a member who paid by hand or cancelled between two
   attempts is never charged again.
2. Pay the invoice with the attempt's idempotency key
   (``dunning-<invoice>-attempt-<n>``), through the Stripe call policy
   (tenacity, ``Retry-After``). A repeat of the same attempt (a replica died,
   Stripe's answer was lost) sends the same key, and Stripe answers with the
   first request's outcome instead of charging again.
3. Record the outcome and move the case, in one transaction, only if this
   replica still holds the case: an ``invoice.paid`` event or an operator may
   have closed it meanwhile, and then the attempt is recorded and nothing else.

Closing as exhausted chooses the end action in that transaction; the action
runs afterwards with an idempotency key of its own and is marked done, and a
replica that stopped in between leaves it for the next sweep to repeat with
the same key, so it takes effect once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import stripe

from services.retry import cases
from services.retry.backoff import Schedule
from services.retry.outcomes import OutcomeWriter
from services.retry.settings import RetrySettings
from services.retry.stripe_objects import ENDED_SUBSCRIPTIONS, HARD_DECLINES, Invoice
from shared import metrics
from shared.clock import Clock
from shared.logging import get_logger
from shared.outbox import Outbox
from shared.stripe_calls import StripeCalls, decline_code_of, is_transient

log = get_logger(__name__)

SOURCE = "retry"
# The invoice's subscription, expanded so the attempt reads its status without
# a request of its own; its payments (with their PaymentIntents) and customer,
# so it sees a hard decline the card it would charge already met.
_INVOICE_EXPAND = [
    "parent.subscription_details.subscription",
    "payments.data.payment.payment_intent",
    "customer",
]
# Stripe's codes for paying an invoice that is no longer open.
_NOT_OPEN = frozenset({"invoice_already_paid", "invoice_not_open"})
_NO_PAYMENT_METHOD = frozenset(
    {"invoice_no_payment_method_types", "invoice_no_customer_line_items", "payment_method_missing"}
)


class Attempts:
    def __init__(
        self,
        pool: Any,
        *,
        calls: StripeCalls,
        clock: Clock,
        settings: RetrySettings,
        schedule: Schedule,
        owner: str,
    ) -> None:
        self._pool = pool
        self._calls = calls
        self._clock = clock
        self._settings = settings
        self._schedule = schedule
        self.owner = owner
        self._outcomes = OutcomeWriter(
            pool,
            max_batch=settings.dunning_batch_size,
            linger=settings.dunning_outcome_linger_seconds,
        )

    # --- the attempt ----------------------------------------------------------

    async def run(self, claimed: cases.Claimed) -> str:
        """Make the claimed attempt; returns its outcome (for logs and tests)."""
        if claimed.number == 0:
            # Paused for as long as the schedule allows, and no new card came.
            await self._exhaust(claimed, reason="no_new_payment_method")
            return "exhausted"
        case = claimed.case
        try:
            invoice = await self._read_invoice(case.invoice_id)
            ended = await self._subscription_ended(invoice)
        except stripe.StripeError as exc:
            return await self._stripe_failed(claimed, exc, "reading")
        if invoice.status != "open":
            await self._settled(claimed, invoice)
            return "already_settled"
        if ended:
            await self._finish(
                claimed, "already_settled", close=("canceled", "subscription_canceled")
            )
            return "already_settled"
        hard = invoice.hard_decline_of_next_payment
        if hard is not None and case.retry_requested_at is None:
            # The renewal's own charge (or an earlier attempt) met a hard decline
            # on the very card /pay would use: charging it again can only be
            # declined again, and looks like card testing to the issuer. The case
            # waits for a new payment method, as after a hard decline of ours.
            # An operator's retry-now still charges: the member may have had
            # the bank lift the block.
            await self._skipped(claimed, hard)
            return "skipped"
        try:
            paid = await self._request(
                "pay invoice",
                "post",
                f"/v1/invoices/{quote(case.invoice_id, safe='')}/pay",
                off_session=True,
                idempotency_key=claimed.idempotency_key,
            )
        except stripe.CardError as exc:
            await self._declined(claimed, decline_code_of(exc) or "card_declined")
            return "failed"
        except stripe.InvalidRequestError as exc:
            if exc.code in _NOT_OPEN:
                # Settled between our read and our charge: read it again next time.
                await self._finish(claimed, "already_settled", next_at=self._clock.now())
                return "already_settled"
            if exc.code in _NO_PAYMENT_METHOD:
                await self._declined(claimed, "no_payment_method")
                return "failed"
            return await self._stripe_failed(claimed, exc, "paying")
        except stripe.StripeError as exc:
            return await self._stripe_failed(claimed, exc, "paying")
        if paid.get("status") == "paid":
            await self._finish(
                claimed,
                "succeeded",
                amount=int(paid.get("amount_paid") or 0),
                close=("recovered", "attempt_succeeded"),
            )
            return "succeeded"
        # Open after a payment that raised nothing: it awaits the customer
        # (3D Secure) or a bank; a failure the schedule treats like a decline.
        await self._declined(claimed, "authentication_required")
        return "failed"

    async def _request(self, what: str, method: str, path: str, **params: Any) -> dict[str, Any]:
        """One Stripe call under the policy, answered as the JSON Stripe sent.

        Raw, not through stripe-python's resource classes: building their
        objects from a full invoice takes milliseconds of CPU (measured alone),
        for the handful of fields an attempt reads. Errors are raised as the
        same ``stripe`` exceptions either way.
        """
        response = await self._calls.call(
            what, lambda c: c.raw_request_async(method, path, **params)
        )
        data = response.data
        if not isinstance(data, dict):
            raise stripe.APIError(f"{what}: Stripe answered {type(data).__name__}, not an object")
        return data

    async def _read_invoice(self, invoice_id: str) -> Invoice:
        data = await self._request(
            "retrieve invoice",
            "get",
            f"/v1/invoices/{quote(invoice_id, safe='')}",
            expand=_INVOICE_EXPAND,
        )
        return Invoice.model_validate(data)

    async def _subscription_ended(self, invoice: Invoice) -> bool:
        subscription_id = invoice.subscription_id
        if subscription_id is None:
            return False
        if invoice.subscription_status is not None:
            return invoice.subscription_status in ENDED_SUBSCRIPTIONS
        # Not expanded (an older API version's top-level ``subscription``):
        # the subscription is read on its own.
        data = await self._request(
            "retrieve subscription", "get", f"/v1/subscriptions/{quote(subscription_id, safe='')}"
        )
        return data.get("status") in ENDED_SUBSCRIPTIONS

    # --- outcomes -------------------------------------------------------------

    async def _stripe_failed(
        self, claimed: cases.Claimed, exc: stripe.StripeError, doing: str
    ) -> str:
        misconfigured = isinstance(exc, stripe.AuthenticationError | stripe.PermissionError)
        if is_transient(exc) or misconfigured:
            # Nothing is known to have happened: the same attempt, with the
            # same key, is repeated later (Stripe replays it if it did charge).
            # A key Stripe refuses (401) or that lacks a permission (403) is our
            # configuration, not the member's card: no attempt is spent and the
            # member is not told a payment failed, but an operator must act.
            (log.error if misconfigured else log.warning)(
                "dunning_stripe_misconfigured" if misconfigured else "dunning_stripe_unavailable",
                invoice=claimed.case.invoice_id,
                doing=doing,
                error=repr(exc),
            )
            metrics.DUNNING_ATTEMPTS.labels("unavailable", "").inc()
            later = self._clock.now() + timedelta(
                seconds=self._settings.dunning_unavailable_retry_seconds
            )

            async def write(conn: Any) -> None:
                if await cases.holds(conn, claimed, self.owner):
                    await cases.reschedule(
                        conn, claimed.case.invoice_id, self._clock.now(), later, finished=False
                    )

            await self._outcomes.run(write)
            return "unavailable"
        # Stripe refused the request itself: an attempt spent, as a decline is.
        log.error(
            "dunning_stripe_refused", invoice=claimed.case.invoice_id, doing=doing, error=repr(exc)
        )
        await self._failed(claimed, "error", exc.code)
        return "error"

    async def _settled(self, claimed: cases.Claimed, invoice: Invoice) -> None:
        now = self._clock.now()

        async def write(conn: Any) -> None:
            await cases.record_attempt(conn, now, claimed, "already_settled", amount=0)
            await cases.settle(conn, self._outbox(conn), now, invoice)

        await self._outcomes.run(write)

    async def _finish(
        self,
        claimed: cases.Claimed,
        outcome: str,
        *,
        amount: int | None = None,
        close: tuple[Any, str] | None = None,
        next_at: datetime | None = None,
    ) -> None:
        now = self._clock.now()

        async def write(conn: Any) -> None:
            await cases.record_attempt(conn, now, claimed, outcome, amount=amount)
            if close is not None:
                state, reason = close
                await cases.close(
                    conn,
                    self._outbox(conn),
                    now,
                    claimed.case.invoice_id,
                    state,
                    reason=reason,
                    amount=amount,
                )
            elif await cases.holds(conn, claimed, self.owner):
                await cases.reschedule(conn, claimed.case.invoice_id, now, next_at)

        await self._outcomes.run(write)

    async def _declined(self, claimed: cases.Claimed, decline_code: str) -> None:
        await self._failed(claimed, "failed", decline_code)

    async def _skipped(self, claimed: cases.Claimed, decline_code: str) -> None:
        """No charge made: the case pauses as after a hard decline, but the attempt
        spends none of the member's DUNNING_MAX_ATTEMPTS, and nothing is published.

        The member heard of the failure already: when the case opened
        (``attempt: 0``, whose email asks for a new card and links to it), or
        from the hard decline of ours that this one finds; a second "payment
        failed" for a payment that was not tried would be wrong. The attempt
        keeps its number, so the next one has a key of its own: this one may
        repeat an attempt whose payment did reach Stripe (its replica died
        before the outcome committed), and a new card paid under that key
        would only get Stripe's replay of the decline.
        """
        now = self._clock.now()
        pause = timedelta(seconds=self._settings.dunning_pause_max_seconds)

        async def write(conn: Any) -> None:
            await cases.record_attempt(conn, now, claimed, "skipped", decline_code=decline_code)
            if await cases.holds(conn, claimed, self.owner):
                await cases.reschedule(
                    conn,
                    claimed.case.invoice_id,
                    now,
                    now + pause,
                    state="paused",
                    decline_code=decline_code,
                    skipped=True,
                )

        await self._outcomes.run(write)

    async def _failed(self, claimed: cases.Claimed, outcome: str, decline_code: str | None) -> None:
        now = self._clock.now()
        case = claimed.case
        hard = decline_code in HARD_DECLINES
        # Skipped attempts before this one do not count: it may be the first
        # charge of a case whose first attempt found the card reported stolen.
        last = claimed.spent >= self._schedule.max_attempts

        async def write(conn: Any) -> cases.Case | None:
            await cases.record_attempt(conn, now, claimed, outcome, decline_code=decline_code)
            if not await cases.holds(conn, claimed, self.owner):
                return None  # closed meanwhile (paid, canceled, stopped): nothing more to do
            outbox = self._outbox(conn)
            if hard:
                # Waits for a new payment method; if none comes within
                # DUNNING_PAUSE_MAX_SECONDS, the case is exhausted then.
                await cases.reschedule(
                    conn,
                    case.invoice_id,
                    now,
                    now + timedelta(seconds=self._settings.dunning_pause_max_seconds),
                    state="paused",
                    decline_code=decline_code,
                )
                next_at = None
            elif last:
                await cases.reschedule(conn, case.invoice_id, now, None, decline_code=decline_code)
                next_at = None
            else:
                next_at = cases.next_attempt(self._schedule, now, claimed.spent)
                await cases.reschedule(
                    conn, case.invoice_id, now, next_at, decline_code=decline_code
                )
            await cases.emit_attempt_failed(
                outbox,
                case,
                attempt=claimed.number,
                decline_code=decline_code,
                next_attempt_at=next_at,
                paused=hard,
                update_url=self._settings.dunning_update_payment_method_url
                or case.hosted_invoice_url,
            )
            if last and not hard:
                return await cases.close(
                    conn,
                    outbox,
                    now,
                    case.invoice_id,
                    "exhausted",
                    reason="attempts_spent",
                    end_action=self._settings.dunning_end_action,
                )
            return None

        exhausted = await self._outcomes.run(write)
        if exhausted is not None:
            await self.end_action(exhausted)

    async def _exhaust(self, claimed: cases.Claimed, *, reason: str) -> None:
        now = self._clock.now()

        async def write(conn: Any) -> cases.Case | None:
            if not await cases.holds(conn, claimed, self.owner):
                return None
            return await cases.close(
                conn,
                self._outbox(conn),
                now,
                claimed.case.invoice_id,
                "exhausted",
                reason=reason,
                end_action=self._settings.dunning_end_action,
            )

        exhausted = await self._outcomes.run(write)
        if exhausted is not None:
            await self.end_action(exhausted)

    # --- the end action -------------------------------------------------------

    async def end_action(self, case: cases.Case) -> bool:
        """Run an exhausted case's end action (idempotent at Stripe); True when done."""
        action = case.end_action or "leave_past_due"
        key = cases.end_action_key(case.invoice_id)
        try:
            if action == "cancel_subscription" and case.subscription_id is not None:
                subscription_id = case.subscription_id
                await self._calls.call(
                    "cancel subscription",
                    lambda c: c.v1.subscriptions.cancel_async(
                        subscription_id, options={"idempotency_key": key}
                    ),
                )
            elif action == "mark_uncollectible":
                await self._calls.call(
                    "mark invoice uncollectible",
                    lambda c: c.v1.invoices.mark_uncollectible_async(
                        case.invoice_id, options={"idempotency_key": key}
                    ),
                )
        except stripe.InvalidRequestError as exc:
            # Already canceled, or the invoice is no longer open: the end the
            # action wanted is there already.
            log.info("dunning_end_action_moot", invoice=case.invoice_id, error=repr(exc))
        except stripe.StripeError as exc:
            log.warning("dunning_end_action_failed", invoice=case.invoice_id, error=repr(exc))
            metrics.DUNNING_END_ACTIONS.labels(action, "failed").inc()
            return False
        async with self._pool.acquire() as conn:
            await cases.end_action_done(conn, case.invoice_id, self._clock.now())
        metrics.DUNNING_END_ACTIONS.labels(action, "done").inc()
        return True

    def _outbox(self, conn: Any) -> Outbox:
        return Outbox(conn, source=SOURCE, clock=self._clock)
