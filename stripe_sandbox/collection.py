"""Collecting open invoices, and what a subscription's status becomes.

Stripe's rules mirrored here:
* collection charges the invoice's payment method, else the subscription's
  ``default_payment_method``, else the customer's
  ``invoice_settings.default_payment_method``;
* a paid invoice of an ``incomplete``, ``past_due`` or ``unpaid`` subscription
  makes it ``active`` again;
* a failed renewal makes the subscription ``past_due``.  With Smart Retries on
  (see :mod:`settings`) Stripe re-attempts it on a schedule
  (``next_payment_attempt``), except after a hard decline or without a payment
  method; once every try has failed the subscription becomes what the account
  says: ``canceled``, ``unpaid`` or left ``past_due``.  With Smart Retries off
  the invoice stays open with ``next_payment_attempt: null`` for the business's
  own dunning to pay;
* an ``unpaid`` subscription's new invoices are finalized but never attempted;
* a payment that needs 3D Secure leaves the invoice open and sends
  ``invoice.payment_action_required``.
"""

from __future__ import annotations

from . import methods, payments
from .cards import HARD_DECLINES
from .errors import StripeError, invalid
from .invoicing import (
    CYCLE_REASONS,
    cancel_collection,
    invoice_for,
    invoice_payments,
    payment_intent_for,
    subscription_of,
)
from .sandbox import Sandbox
from .store import Obj


def default_payment_method(sb: Sandbox, invoice: Obj) -> str | None:
    """Collection order Stripe uses: invoice, subscription, then customer default."""
    if invoice.get("default_payment_method"):
        return str(invoice["default_payment_method"])
    sub = subscription_of(sb, invoice)
    if sub and sub.get("default_payment_method"):
        return str(sub["default_payment_method"])
    customer = sb.store.get("customer", invoice["customer"])
    pm = customer["invoice_settings"]["default_payment_method"]
    return str(pm) if pm else None


def _require_open(invoice: Obj) -> None:
    if invoice["status"] == "paid":
        raise invalid("Invoice is already paid", code="invoice_already_paid")
    if invoice["status"] != "open":
        raise invalid(
            f"You can only pay an invoice that is open; this invoice is {invoice['status']}.",
            code="invoice_not_open",
        )


def _count_attempt(invoice: Obj) -> None:
    invoice["attempted"] = True
    invoice["attempt_count"] += 1


def attempt(
    sb: Sandbox,
    invoice: Obj,
    now: int,
    *,
    payment_method: str | None = None,
    automatic: bool = False,
    off_session: bool = True,
) -> StripeError | None:
    """One collection attempt. Returns the card error when it fails (state already updated)."""
    _require_open(invoice)
    pi = payment_intent_for(sb, invoice)
    if pi is None:  # nothing to collect
        mark_paid(sb, invoice, now)
        return None
    if pi["status"] == "processing":
        raise invalid(
            "This invoice's payment is still processing.",
            code="invoice_payment_intent_requires_action",
        )
    pm_id = payment_method or default_payment_method(sb, invoice)
    _count_attempt(invoice)
    if pm_id is None:
        _payment_failed(sb, invoice, now, automatic=automatic, retryable=False)
        return invalid(
            "This customer has no attached payment source or default payment method. "
            "Please consider adding a default payment method.",
            code="invoice_no_payment_method_types",
        )
    pm = methods.resolve_payment_method(sb, pm_id, "payment_method", now)
    if pm["type"] not in pi["payment_method_types"]:
        # Without payment_settings.payment_method_types an invoice takes any type the
        # account accepts: a saved bank account pays a renewal like a card does.
        pi["payment_method_types"].append(pm["type"])
    error = payments.collect(sb, pi, pm, now, off_session=off_session)
    return outcome(sb, invoice, pi, now, error, automatic=automatic)


def confirm_from_client(
    sb: Sandbox, invoice: Obj, pi: Obj, pm_id: str | None, now: int
) -> StripeError | None:
    """The customer confirms the invoice's payment intent with Elements (on-session)."""
    _require_open(invoice)
    _count_attempt(invoice)
    error = payments.confirm(sb, pi, pm_id, now, off_session=False)
    return outcome(sb, invoice, pi, now, error, automatic=False)


def payment_intent_changed(sb: Sandbox, pi: Obj, now: int) -> None:
    """A payment intent settled later (3D Secure done, bank debit cleared): follow it."""
    invoice = invoice_for(sb, pi)
    if invoice is not None and invoice["status"] == "open":
        outcome(sb, invoice, pi, now, None, automatic=False)


def outcome(
    sb: Sandbox, invoice: Obj, pi: Obj, now: int, error: StripeError | None, *, automatic: bool
) -> StripeError | None:
    status = pi["status"]
    if status == "succeeded":
        _keep_payment_method(sb, invoice, pi)
        mark_paid(sb, invoice, now)
        return None
    if status == "processing":
        return None
    if status == "requires_action":
        _action_required(sb, invoice)
        return None
    decline = error.decline_code if error is not None else None
    if decline == "authentication_required":
        # The customer can still authenticate this payment on the hosted invoice page.
        pi["status"] = "requires_action"
        pi["next_action"] = {
            "type": "use_stripe_sdk",
            "use_stripe_sdk": {"type": "three_d_secure_redirect", "stripe_js": None},
        }
    _payment_failed(sb, invoice, now, automatic=automatic, retryable=decline not in HARD_DECLINES)
    if decline == "authentication_required":
        sb.events.emit("invoice.payment_action_required", invoice)
    return error


def _keep_payment_method(sb: Sandbox, invoice: Obj, pi: Obj) -> None:
    """A subscription payment's method is saved for the renewals (``off_session``)."""
    pm = sb.store.maybe("payment_method", pi["payment_method"])
    sub = subscription_of(sb, invoice)
    if pm is None or sub is None:
        return
    if pm["customer"] is None:
        methods.attach(sb, pm, sb.store.get("customer", invoice["customer"]), verified=True)
    save = (sub.get("payment_settings") or {}).get("save_default_payment_method")
    if save == "on_subscription" and sub["default_payment_method"] != pm["id"]:
        before = {"default_payment_method": sub["default_payment_method"]}
        sub["default_payment_method"] = pm["id"]
        sb.events.emit("customer.subscription.updated", sub, before)


def _action_required(sb: Sandbox, invoice: Obj) -> None:
    sb.events.emit("invoice.payment_action_required", invoice)
    sub = subscription_of(sb, invoice)
    renewal = invoice["billing_reason"] in CYCLE_REASONS
    if sub is not None and renewal and sub["status"] in ("active", "trialing"):
        set_subscription_status(sb, sub, "past_due")


def _payment_failed(
    sb: Sandbox, invoice: Obj, now: int, *, automatic: bool, retryable: bool
) -> None:
    cycle = invoice["billing_reason"] in CYCLE_REASONS
    settings = sb.settings
    if cycle and retryable:
        first = sb.store.first_failed_attempt.setdefault(invoice["id"], now)
        invoice["next_payment_attempt"] = settings.next_retry_at(first, invoice["attempt_count"])
    else:
        invoice["next_payment_attempt"] = None
    sb.events.emit("invoice.payment_failed", invoice)
    sub = subscription_of(sb, invoice)
    if sub is None or not cycle:
        return
    if sub["status"] in ("active", "trialing"):
        set_subscription_status(sb, sub, "past_due")
    retries_spent = (
        settings.smart_retries and retryable and invoice["attempt_count"] >= settings.retry_tries
    )
    if automatic and retries_spent and sub["status"] == "past_due":
        # "If all retries for a payment fail": the account's subscription setting.
        if settings.after_retries == "canceled":
            end_subscription(sb, sub, now, reason="payment_failed")
        elif settings.after_retries == "unpaid":
            set_subscription_status(sb, sub, "unpaid")


def mark_paid(sb: Sandbox, invoice: Obj, now: int) -> None:
    invoice.update(
        {
            "status": "paid",
            "amount_paid": invoice["amount_due"],
            "amount_remaining": 0,
            "next_payment_attempt": None,
            "attempted": invoice["attempted"] or invoice["amount_due"] == 0,
        }
    )
    invoice["status_transitions"]["paid_at"] = now
    sb.store.first_failed_attempt.pop(invoice["id"], None)
    for record in invoice_payments(sb, invoice["id"]):
        if record["status"] == "open":
            record["status"] = "paid"
            record["amount_paid"] = record["amount_requested"]
            record["status_transitions"]["paid_at"] = now
            sb.events.emit("invoice_payment.paid", record)
    sb.events.emit("invoice.paid", invoice)
    sb.events.emit("invoice.payment_succeeded", invoice)
    sub = subscription_of(sb, invoice)
    if (
        sub
        and sub["status"] in ("incomplete", "past_due", "unpaid")
        and (sub["latest_invoice"] == invoice["id"] or not _other_open_invoices(sb, sub, invoice))
    ):
        set_subscription_status(sb, sub, "active")


def _other_open_invoices(sb: Sandbox, sub: Obj, invoice: Obj) -> bool:
    return any(
        inv["status"] == "open"
        and inv["id"] != invoice["id"]
        and (subscription_of(sb, inv) or {}).get("id") == sub["id"]
        for inv in sb.store.objects["invoice"].values()
    )


def set_subscription_status(sb: Sandbox, sub: Obj, status: str) -> None:
    if sub["status"] == status:
        return
    before = {"status": sub["status"]}
    sub["status"] = status
    sb.events.emit("customer.subscription.updated", sub, before)


def end_subscription(sb: Sandbox, sub: Obj, now: int, reason: str) -> None:
    if sub["status"] in ("canceled", "incomplete_expired"):
        return
    sub.update({"status": "canceled", "ended_at": now, "canceled_at": sub["canceled_at"] or now})
    sub["cancellation_details"]["reason"] = reason
    sb.events.emit("customer.subscription.deleted", sub)
    # A schedule ends with its subscription; "aborted" when delinquency ended it.
    end_schedule(sb, sub, now, aborted=reason == "payment_failed")


def end_schedule(sb: Sandbox, sub: Obj, now: int, *, aborted: bool = False) -> None:
    schedule = sb.store.maybe("subscription_schedule", sub.get("schedule"))
    if schedule is None or schedule["status"] not in ("not_started", "active"):
        return
    sub["schedule"] = None
    schedule.update({"status": "canceled", "canceled_at": now, "current_phase": None})
    sb.events.emit(
        "subscription_schedule.aborted" if aborted else "subscription_schedule.canceled", schedule
    )


# -- settling without a payment ------------------------------------------------


def pay_out_of_band(sb: Sandbox, invoice: Obj, now: int) -> None:
    cancel_collection(sb, invoice, now)
    mark_paid(sb, invoice, now)


def void(sb: Sandbox, invoice: Obj, now: int) -> Obj:
    if invoice["status"] != "open":
        raise invalid(
            f"You can only void an open invoice; this invoice is {invoice['status']}.",
            code="invoice_not_editable",
        )
    invoice["status"] = "void"
    invoice["status_transitions"]["voided_at"] = now
    invoice["next_payment_attempt"] = None
    cancel_collection(sb, invoice, now)
    sb.events.emit("invoice.voided", invoice)
    _settled_without_payment(sb, invoice)
    return invoice


def mark_uncollectible(sb: Sandbox, invoice: Obj, now: int, reason: str = "user_forgiven") -> Obj:
    if invoice["status"] != "open":
        raise invalid(
            f"You can only mark an open invoice uncollectible; this invoice is "
            f"{invoice['status']}.",
            code="invoice_not_editable",
        )
    invoice["status"] = "uncollectible"
    invoice["status_transitions"]["marked_uncollectible_at"] = now
    invoice["next_payment_attempt"] = None
    # Only present while uncollectible (API 2026-09-30.endive).
    invoice["status_details"] = {"uncollectible": {"reason": reason}}
    sb.events.emit("invoice.marked_uncollectible", invoice)
    _settled_without_payment(sb, invoice)
    return invoice


def _settled_without_payment(sb: Sandbox, invoice: Obj) -> None:
    # A past_due subscription returns to active once its outstanding invoice is
    # voided or written off; an incomplete one whose first invoice is voided expires.
    sub = subscription_of(sb, invoice)
    if sub is None or sub["latest_invoice"] != invoice["id"]:
        return
    if sub["status"] in ("past_due", "unpaid"):
        set_subscription_status(sb, sub, "active")
    elif sub["status"] == "incomplete" and invoice["status"] == "void":
        before = {"status": sub["status"]}
        sub["status"] = "incomplete_expired"
        sb.events.emit("customer.subscription.updated", sub, before)
