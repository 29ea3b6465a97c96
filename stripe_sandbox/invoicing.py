"""Invoices: build, total (with discounts), finalize, void, write off.

Stripe's rules mirrored here:
* a subscription's first invoice and the one an update bills at once are
  finalized immediately; a renewal invoice stays ``draft`` for about an hour
  (``automatically_finalizes_at``) so it can still be edited, then is
  finalized and collected (see :mod:`timeline` and :mod:`collection`);
* finalizing applies the customer's balance and creates the payment intent that
  collects the invoice (its client secret is ``invoice.confirmation_secret``);
* a $0 invoice is paid on finalization without a charge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import discounts, payments
from .errors import invalid
from .fixtures import template
from .ids import new_id, token
from .sandbox import Sandbox
from .store import Obj, snapshot

# Stripe leaves a renewal invoice in draft "about an hour" before finalizing it.
DRAFT_SECONDS = 3600
CYCLE_REASONS = ("subscription_cycle", "subscription_update", "subscription_threshold")


@dataclass
class LineSpec:
    amount: int
    description: str
    period_start: int
    period_end: int
    quantity: int = 1
    price: Obj | None = None
    quantity_decimal: str | None = None  # a metered line's exact usage
    proration: bool = False
    subscription_item: str | None = None
    invoice_item: str | None = None
    discountable: bool = True


def _line(invoice: Obj, spec: LineSpec, subscription: str | None, line_prefix: str) -> Obj:
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
            "id": new_id(line_prefix),
            "object": "line_item",
            "amount": spec.amount,
            "currency": invoice["currency"],
            "description": spec.description,
            "discount_amounts": [],
            "discountable": spec.discountable,
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
            "quantity_decimal": spec.quantity_decimal or str(spec.quantity),
            "subscription": subscription,
            "subtotal": spec.amount,
            "taxes": [],
        }
    )
    return line


def build(
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
    applied_discounts: list[str] | None = None,
    preview: bool = False,
) -> Obj:
    """A draft invoice object, not stored (a preview stays that way)."""
    invoice = template("invoice")
    invoice_id = invoice_id or (f"upcoming_in_{token(24)}" if preview else new_id("in"))
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
            "automatically_finalizes_at": None,
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
            "discounts": list(applied_discounts or []),
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
            "starting_balance": customer["balance"] if preview else 0,
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
    prefix = "il_tmp" if preview else "il"
    invoice["lines"] = {
        "object": "list",
        "data": [_line(invoice, spec, sub_id, prefix) for spec in lines],
        "has_more": False,
        "url": f"/v1/invoices/{invoice_id}/lines",
    }
    recompute_totals(sb, invoice)
    if preview:
        # A preview shows what would be due now, the customer's balance applied.
        due = max(0, invoice["total"] + customer["balance"])
        invoice.update({"amount_due": due, "amount_remaining": due})
    return invoice


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
    applied_discounts: list[str] | None = None,
    finalizes_at: int | None = None,
) -> Obj:
    """A stored draft invoice (``invoice.created``); ``finalizes_at`` for a renewal's hour."""
    invoice = build(
        sb,
        customer=customer,
        subscription=subscription,
        billing_reason=billing_reason,
        lines=lines,
        period_start=period_start,
        period_end=period_end,
        created=created,
        currency=currency,
        invoice_id=invoice_id,
        description=description,
        metadata=metadata,
        applied_discounts=applied_discounts,
    )
    invoice["automatically_finalizes_at"] = finalizes_at
    sb.store.add("invoice", invoice)
    for discount_id in invoice["discounts"]:
        sb.store.discount_uses[discount_id] = sb.store.discount_uses.get(discount_id, 0) + 1
    # Pending invoice items now belong to this invoice.
    for spec in lines:
        if spec.invoice_item:
            sb.store.get("invoiceitem", spec.invoice_item)["invoice"] = invoice["id"]
    sb.events.emit("invoice.created", invoice)
    return invoice


def recompute_totals(sb: Sandbox, invoice: Obj) -> None:
    lines = invoice["lines"]["data"]
    applied = [sb.store.get("discount", d) for d in invoice["discounts"]]
    taken = discounts.allocate(sb, lines, applied, invoice["currency"])
    for line, pairs in zip(lines, taken, strict=True):
        line["discount_amounts"] = [{"amount": a, "discount": d} for d, a in pairs]
        line["discounts"] = [d for d, _ in pairs]
    subtotal = sum(line["amount"] for line in lines)
    total = subtotal - sum(a for pairs in taken for _, a in pairs)
    invoice.update(
        {
            "subtotal": subtotal,
            "subtotal_excluding_tax": subtotal,
            "total": total,
            "total_excluding_tax": total,
            "total_discount_amounts": discounts.totals(taken, invoice["discounts"])
            if invoice["discounts"]
            else [],
            "amount_due": max(0, total),
            "amount_remaining": max(0, total),
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
    if customer["balance"] != min(0, combined):
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
            # A subscription's payment is saved for the renewals that follow it.
            setup_future_usage="off_session" if subscription_of(sb, invoice) else None,
        )
        sb.store.invoice_payment_intent[invoice["id"]] = pi["id"]
        sb.store.payment_intent_invoice[pi["id"]] = invoice["id"]
        _new_invoice_payment(sb, invoice, pi, now)
    sb.events.emit("invoice.finalized", invoice)
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
    sb.store.invoice_payment_ids.setdefault(invoice["id"], []).append(record["id"])
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
        discountable=ii["discountable"],
    )
    invoice["lines"]["data"].append(_line(invoice, spec, None, "il"))
    ii["invoice"] = invoice["id"]
    recompute_totals(sb, invoice)


def invoice_payments(sb: Sandbox, invoice_id: str) -> list[Obj]:
    """The invoice's payment records, newest first (as ``store.all`` lists)."""
    ids = sb.store.invoice_payment_ids.get(invoice_id, [])
    found = (sb.store.maybe("invoice_payment", i) for i in reversed(ids))
    return [p for p in found if p is not None]


def payment_intent_for(sb: Sandbox, invoice: Obj) -> Obj | None:
    return sb.store.maybe("payment_intent", sb.store.invoice_payment_intent.get(invoice["id"]))


def invoice_for(sb: Sandbox, pi: Obj) -> Obj | None:
    return sb.store.maybe("invoice", sb.store.payment_intent_invoice.get(pi["id"]))


def subscription_of(sb: Sandbox, invoice: Obj) -> Obj | None:
    parent = invoice.get("parent") or {}
    details = parent.get("subscription_details") or {}
    return sb.store.maybe("subscription", details.get("subscription"))


def cancel_collection(sb: Sandbox, invoice: Obj, now: int) -> None:
    pi = payment_intent_for(sb, invoice)
    if pi is not None and pi["status"] not in ("succeeded", "canceled", "processing"):
        pi.update({"status": "canceled", "canceled_at": now, "cancellation_reason": "void_invoice"})
        sb.events.emit("payment_intent.canceled", pi)
    for record in invoice_payments(sb, invoice["id"]):
        if record["status"] == "open":
            record["status"] = "canceled"
            record["status_transitions"]["canceled_at"] = now


def confirmation_secret(sb: Sandbox, invoice: Obj) -> dict[str, Any] | None:
    pi = payment_intent_for(sb, invoice)
    if pi is None or invoice["status"] in ("draft", "void"):
        return None
    return {"client_secret": pi["client_secret"], "type": "payment_intent"}


def snapshot_lines(invoice: Obj) -> list[Obj]:
    return [snapshot(line) for line in invoice["lines"]["data"]]
