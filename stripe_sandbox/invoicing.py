"""Invoices: build, finalize, collect; and the subscription status changes that follow.

Stripe's rules mirrored here:
* finalizing applies the customer's balance and creates the payment intent that
  collects the invoice (its client secret is ``invoice.confirmation_secret``);
* a $0 invoice is paid on finalization without a charge;
* a failed automatic collection leaves the invoice ``open``, bumps
  ``attempt_count`` and schedules ``next_payment_attempt`` (Smart Retries,
  shortened to a fixed schedule here); a failed renewal makes the
  subscription ``past_due``; paying it later makes it ``active`` again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import payments
from .clock import DAY
from .errors import StripeError, invalid
from .fixtures import template
from .ids import new_id, token
from .sandbox import Sandbox
from .store import Obj, snapshot

# Days after a failed automatic attempt until the next one; after the last retry
# fails the subscription is canceled (Stripe's default "cancel" dunning setting).
RETRY_SCHEDULE_DAYS = (3, 5, 7)
CYCLE_REASONS = ("subscription_cycle", "subscription_update", "subscription_threshold")


@dataclass
class LineSpec:
    amount: int
    description: str
    period_start: int
    period_end: int
    quantity: int = 1
    price: Obj | None = None
    proration: bool = False
    subscription_item: str | None = None
    invoice_item: str | None = None


def _line(invoice: Obj, spec: LineSpec, subscription: str | None) -> Obj:
    line = template("line_item")
    if spec.invoice_item:
        parent: dict[str, Any] = {
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": spec.invoice_item,
                "proration": spec.proration,
                "proration_details": {"credited_items": None},
                "subscription": subscription,
            },
            "subscription_item_details": None,
        }
    else:
        parent = {
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": spec.proration,
                "proration_details": {"credited_items": None},
                "subscription": subscription,
                "subscription_item": spec.subscription_item,
            },
        }
    price = spec.price
    line.update(
        {
            "id": new_id("il"),
            "object": "line_item",
            "amount": spec.amount,
            "currency": invoice["currency"],
            "description": spec.description,
            "discount_amounts": [],
            "discountable": True,
            "discounts": [],
            "invoice": invoice["id"],
            "livemode": False,
            "metadata": {},
            "parent": parent,
            "period": {"start": spec.period_start, "end": spec.period_end},
            "pretax_credit_amounts": [],
            "pricing": {
                "type": "price_details",
                "price_details": {"price": price["id"], "product": price["product"]}
                if price
                else None,
                "unit_amount_decimal": price["unit_amount_decimal"] if price else None,
            },
            "quantity": spec.quantity,
            "quantity_decimal": str(spec.quantity),
            "subscription": subscription,
            "subtotal": spec.amount,
            "taxes": [],
        }
    )
    return line


def new_invoice(
    sb: Sandbox,
    *,
    customer: Obj,
    subscription: Obj | None,
    billing_reason: str,
    lines: list[LineSpec],
    period_start: int,
    period_end: int,
    created: int,
    currency: str = "usd",
    invoice_id: str | None = None,
    description: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Obj:
    """A draft invoice (``invoice.created``)."""
    invoice = template("invoice")
    invoice_id = invoice_id or new_id("in")
    sub_id = subscription["id"] if subscription else None
    invoice.update(
        {
            "id": invoice_id,
            "object": "invoice",
            "account_country": "US",
            "account_name": "Stripe Sandbox",
            "account_tax_ids": None,
            "amount_due": 0,
            "amount_overpaid": 0,
            "amount_paid": 0,
            "amount_remaining": 0,
            "amount_shipping": 0,
            "application": None,
            "attempt_count": 0,
            "attempted": False,
            "auto_advance": True,
            "automatic_tax": {
                "enabled": False,
                "liability": None,
                "status": None,
                "disabled_reason": None,
                "provider": None,
            },
            "automatically_finalizes_at": created + 3600,
            "billing_reason": billing_reason,
            "collection_method": "charge_automatically",
            "created": created,
            "currency": currency,
            "custom_fields": None,
            "customer": customer["id"],
            "customer_account": None,
            "customer_address": None,
            "customer_email": customer["email"],
            "customer_name": customer["name"],
            "customer_phone": customer["phone"],
            "customer_shipping": None,
            "customer_tax_exempt": "none",
            "customer_tax_ids": [],
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": description,
            "discounts": [],
            "due_date": None,
            "effective_at": None,
            "ending_balance": None,
            "footer": None,
            "from_invoice": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "issuer": {"type": "self"},
            "last_finalization_error": None,
            "latest_revision": None,
            "livemode": False,
            "metadata": metadata or {},
            "next_payment_attempt": None,
            "number": None,
            "on_behalf_of": None,
            "parent": {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {
                    "metadata": dict(subscription["metadata"]),
                    "subscription": sub_id,
                },
            }
            if subscription
            else None,
            "payment_settings": {
                "default_mandate": None,
                "payment_method_options": None,
                "payment_method_types": None,
            },
            "period_end": period_end,
            "period_start": period_start,
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "receipt_number": None,
            "rendering": None,
            "shipping_cost": None,
            "shipping_details": None,
            "starting_balance": 0,
            "statement_descriptor": None,
            "status": "draft",
            "status_transitions": {
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            # Legacy key still present in the fixture; the current location of the
            # subscription is parent.subscription_details.subscription.
            "subscription": None,
            "test_clock": customer["test_clock"],
            "total_discount_amounts": [],
            "total_pretax_credit_amounts": [],
            "total_taxes": [],
            "webhooks_delivered_at": None,
        }
    )
    invoice["lines"] = {
        "object": "list",
        "data": [_line(invoice, spec, sub_id) for spec in lines],
        "has_more": False,
        "url": f"/v1/invoices/{invoice_id}/lines",
    }
    recompute_totals(invoice)
    sb.store.add("invoice", invoice)
    # Pending invoice items now belong to this invoice.
    for spec in lines:
        if spec.invoice_item:
            sb.store.get("invoiceitem", spec.invoice_item)["invoice"] = invoice_id
    sb.events.emit("invoice.created", invoice)
    return invoice


def recompute_totals(invoice: Obj) -> None:
    subtotal = sum(line["amount"] for line in invoice["lines"]["data"])
    invoice.update(
        {
            "subtotal": subtotal,
            "subtotal_excluding_tax": subtotal,
            "total": subtotal,
            "total_excluding_tax": subtotal,
            "amount_due": max(0, subtotal),
            "amount_remaining": max(0, subtotal),
        }
    )


def finalize(sb: Sandbox, invoice: Obj, now: int) -> Obj:
    if invoice["status"] != "draft":
        raise invalid(
            "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
            code="invoice_not_editable",
        )
    customer = sb.store.get("customer", invoice["customer"])
    # The customer's balance (negative = credit) is applied on finalization.
    combined = invoice["total"] + customer["balance"]
    invoice["starting_balance"] = customer["balance"]
    invoice["ending_balance"] = min(0, combined)
    customer["balance"] = min(0, combined)
    amount_due = max(0, combined)
    sequence = customer["next_invoice_sequence"]
    customer["next_invoice_sequence"] = sequence + 1
    invoice.update(
        {
            "status": "open",
            "number": f"{customer['invoice_prefix']}-{sequence:04d}",
            "amount_due": amount_due,
            "amount_remaining": amount_due,
            "effective_at": now,
            "automatically_finalizes_at": None,
            "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_sandbox/test_{token(40)}",
            "invoice_pdf": f"https://pay.stripe.com/invoice/acct_sandbox/test_{token(40)}/pdf",
        }
    )
    invoice["status_transitions"]["finalized_at"] = now
    if amount_due > 0:
        pi = payments.new_payment_intent(
            sb,
            amount=amount_due,
            currency=invoice["currency"],
            customer=customer["id"],
            created=now,
            description=_pi_description(invoice["billing_reason"]),
        )
        sb.store.invoice_payment_intent[invoice["id"]] = pi["id"]
        _new_invoice_payment(sb, invoice, pi, now)
    sb.events.emit("invoice.finalized", invoice)
    if amount_due == 0:
        _mark_paid(sb, invoice, now)
    return invoice


def _pi_description(billing_reason: str) -> str:
    return {
        "subscription_create": "Subscription creation",
        "subscription_cycle": "Subscription update",
        "subscription_update": "Subscription update",
    }.get(billing_reason, "Invoice payment")


def _new_invoice_payment(sb: Sandbox, invoice: Obj, pi: Obj, now: int) -> Obj:
    record = template("invoice_payment")
    record.update(
        {
            "id": new_id("inpay"),
            "object": "invoice_payment",
            "amount_paid": None,
            "amount_requested": pi["amount"],
            "created": now,
            "currency": pi["currency"],
            "invoice": invoice["id"],
            "is_default": True,
            "livemode": False,
            "payment": {"type": "payment_intent", "payment_intent": pi["id"]},
            "status": "open",
            "status_transitions": {"canceled_at": None, "paid_at": None},
        }
    )
    sb.store.add("invoice_payment", record)
    return record


def attach_item(sb: Sandbox, invoice: Obj, ii: Obj) -> None:
    """Put a pending invoice item on a draft invoice."""
    price = sb.store.maybe("price", (ii["pricing"].get("price_details") or {}).get("price"))
    spec = LineSpec(
        amount=ii["amount"],
        description=ii["description"],
        quantity=ii["quantity"],
        price=price,
        invoice_item=ii["id"],
        period_start=ii["period"]["start"],
        period_end=ii["period"]["end"],
    )
    invoice["lines"]["data"].append(_line(invoice, spec, None))
    ii["invoice"] = invoice["id"]
    recompute_totals(invoice)


def pay_out_of_band(sb: Sandbox, invoice: Obj, now: int) -> None:
    _cancel_collection(sb, invoice, now)
    _mark_paid(sb, invoice, now)


def invoice_payments(sb: Sandbox, invoice_id: str) -> list[Obj]:
    return [p for p in sb.store.all("invoice_payment") if p["invoice"] == invoice_id]


def payment_intent_for(sb: Sandbox, invoice: Obj) -> Obj | None:
    return sb.store.maybe("payment_intent", sb.store.invoice_payment_intent.get(invoice["id"]))


def subscription_of(sb: Sandbox, invoice: Obj) -> Obj | None:
    parent = invoice.get("parent") or {}
    details = parent.get("subscription_details") or {}
    return sb.store.maybe("subscription", details.get("subscription"))


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


def _mark_paid(sb: Sandbox, invoice: Obj, now: int) -> None:
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
        for inv in sb.store.all("invoice")
    )


def set_subscription_status(sb: Sandbox, sub: Obj, status: str) -> None:
    if sub["status"] == status:
        return
    before = {"status": sub["status"]}
    sub["status"] = status
    sb.events.emit("customer.subscription.updated", sub, before)


def pay(
    sb: Sandbox,
    invoice: Obj,
    now: int,
    *,
    payment_method: str | None = None,
    automatic: bool = False,
) -> StripeError | None:
    """One collection attempt. Returns the card error when it fails (state already updated)."""
    if invoice["status"] == "paid":
        raise invalid("Invoice is already paid", code="invoice_already_paid")
    if invoice["status"] != "open":
        raise invalid(
            f"You can only pay an invoice that is open; this invoice is {invoice['status']}.",
            code="invoice_not_open",
        )
    pi = payment_intent_for(sb, invoice)
    if pi is None:  # nothing to collect
        _mark_paid(sb, invoice, now)
        return None
    pm_id = payment_method or default_payment_method(sb, invoice)
    invoice["attempted"] = True
    invoice["attempt_count"] += 1
    if pm_id is None:
        error: StripeError | None = invalid(
            "This customer has no attached payment source or default payment method. "
            "Please consider adding a default payment method.",
            code="invoice_no_payment_method_types",
        )
    else:
        pm = payments.resolve_payment_method(sb, pm_id, "payment_method", now)
        if payment_method and pm["customer"] is None:
            payments.attach(sb, pm, sb.store.get("customer", invoice["customer"]))
        error = payments.attempt_charge(sb, pi, pm, now)
    if error is None:
        _mark_paid(sb, invoice, now)
        return None
    _payment_failed(sb, invoice, now, automatic)
    return error


def _payment_failed(sb: Sandbox, invoice: Obj, now: int, automatic: bool) -> None:
    retries_left = invoice["attempt_count"] <= len(RETRY_SCHEDULE_DAYS)
    cycle = invoice["billing_reason"] in CYCLE_REASONS
    if cycle and retries_left and (automatic or invoice["next_payment_attempt"]):
        delay = RETRY_SCHEDULE_DAYS[invoice["attempt_count"] - 1]
        invoice["next_payment_attempt"] = now + delay * DAY
    else:
        invoice["next_payment_attempt"] = None
    sb.events.emit("invoice.payment_failed", invoice)
    sub = subscription_of(sb, invoice)
    if sub is None or not cycle:
        return
    if sub["status"] in ("active", "trialing"):
        set_subscription_status(sb, sub, "past_due")
    if automatic and invoice["next_payment_attempt"] is None and sub["status"] == "past_due":
        # All retries exhausted: Stripe's default dunning action cancels the subscription.
        end_subscription(sb, sub, now, reason="payment_failed")


def end_subscription(sb: Sandbox, sub: Obj, now: int, reason: str) -> None:
    if sub["status"] in ("canceled", "incomplete_expired"):
        return
    sub.update({"status": "canceled", "ended_at": now, "canceled_at": sub["canceled_at"] or now})
    sub["cancellation_details"]["reason"] = reason
    sb.events.emit("customer.subscription.deleted", sub)


def void(sb: Sandbox, invoice: Obj, now: int) -> Obj:
    if invoice["status"] != "open":
        raise invalid(
            f"You can only void an open invoice; this invoice is {invoice['status']}.",
            code="invoice_not_editable",
        )
    invoice["status"] = "void"
    invoice["status_transitions"]["voided_at"] = now
    invoice["next_payment_attempt"] = None
    _cancel_collection(sb, invoice, now)
    sb.events.emit("invoice.voided", invoice)
    _settled_without_payment(sb, invoice)
    return invoice


def mark_uncollectible(sb: Sandbox, invoice: Obj, now: int) -> Obj:
    if invoice["status"] != "open":
        raise invalid(
            f"You can only mark an open invoice uncollectible; this invoice is "
            f"{invoice['status']}.",
            code="invoice_not_editable",
        )
    invoice["status"] = "uncollectible"
    invoice["status_transitions"]["marked_uncollectible_at"] = now
    invoice["next_payment_attempt"] = None
    sb.events.emit("invoice.marked_uncollectible", invoice)
    _settled_without_payment(sb, invoice)
    return invoice


def _cancel_collection(sb: Sandbox, invoice: Obj, now: int) -> None:
    pi = payment_intent_for(sb, invoice)
    if pi is not None and pi["status"] != "succeeded":
        pi.update({"status": "canceled", "canceled_at": now, "cancellation_reason": "void_invoice"})
        sb.events.emit("payment_intent.canceled", pi)
    for record in invoice_payments(sb, invoice["id"]):
        if record["status"] == "open":
            record["status"] = "canceled"
            record["status_transitions"]["canceled_at"] = now


def _settled_without_payment(sb: Sandbox, invoice: Obj) -> None:
    # A past_due subscription returns to active once its outstanding invoice is
    # voided or written off; an incomplete one whose first invoice is voided expires.
    sub = subscription_of(sb, invoice)
    if sub is None or sub["latest_invoice"] != invoice["id"]:
        return
    if sub["status"] == "past_due":
        set_subscription_status(sb, sub, "active")
    elif sub["status"] == "incomplete" and invoice["status"] == "void":
        before = {"status": sub["status"]}
        sub["status"] = "incomplete_expired"
        sb.events.emit("customer.subscription.updated", sub, before)


def confirmation_secret(sb: Sandbox, invoice: Obj) -> dict[str, Any] | None:
    pi = payment_intent_for(sb, invoice)
    if pi is None or invoice["status"] in ("draft", "void"):
        return None
    return {"client_secret": pi["client_secret"], "type": "payment_intent"}


def snapshot_lines(invoice: Obj) -> list[Obj]:
    return [snapshot(line) for line in invoice["lines"]["data"]]
