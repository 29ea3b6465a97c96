"""Refunds, full or partial, and how they settle.

Stripe counts a refund in the charge's ``amount_refunded`` from the moment it
is created (``refund.created``, ``charge.refunded``), whether it is ``pending``
or already ``succeeded``.  A card refund usually succeeds at once; the test
cards of docs.stripe.com/testing#refunds make it asynchronous:
``pm_card_pendingRefund`` starts ``pending`` and succeeds later
(``refund.updated``), ``pm_card_refundFail`` looks ``succeeded`` and fails later
with ``expired_or_canceled_card`` (``refund.updated``, ``refund.failed``), and
the money goes back to the balance, so ``amount_refunded`` drops again.
Stripe also sends the older ``charge.refund.updated`` for each change.
"""

from __future__ import annotations

from typing import Any

from .errors import invalid
from .fixtures import template
from .ids import new_id
from .methods import card_of
from .sandbox import Sandbox
from .store import Obj, snapshot

# "Some time later", in the refund's object time: a test clock advance settles it,
# on wall time /_sandbox/refunds/{id}/settle does it at once.
SETTLEMENT_SECONDS = 60
FAILURE_REASONS = ("expired_or_canceled_card", "lost_or_stolen_card", "unknown")


def _destination(status: str) -> dict[str, Any]:
    return {
        "card": {
            "reference": None,
            "reference_status": "pending" if status == "pending" else "available",
            "reference_type": "acquirer_reference_number",
            "type": "refund",
        },
        "type": "card",
    }


def refundable(charge: Obj) -> int:
    return int(charge["amount_captured"]) - int(charge["amount_refunded"])


def create(
    sb: Sandbox,
    charge: Obj,
    *,
    amount: int | None,
    reason: str | None,
    metadata: dict[str, str],
    created: int,
) -> Obj:
    if charge["status"] != "succeeded":
        raise invalid(
            f"Charge {charge['id']} has not succeeded and cannot be refunded.", param="charge"
        )
    if charge["disputed"] and not _refundable_while_disputed(sb, charge):
        raise invalid(
            f"Charge {charge['id']} has been charged back; cannot issue a refund.",
            code="charge_disputed",
        )
    remaining = refundable(charge)
    if remaining <= 0:
        raise invalid(
            f"Charge {charge['id']} has already been refunded.", code="charge_already_refunded"
        )
    amount = remaining if amount is None else amount
    if amount <= 0:
        raise invalid("Refund amount must be positive.", param="amount")
    if amount > remaining:
        raise invalid(
            f"Refund amount (${amount / 100:.2f}) is greater than unrefunded amount on "
            f"charge (${remaining / 100:.2f})",
            param="amount",
            code="amount_too_large",
        )
    card = card_of(sb, charge["payment_method"])
    behaviour = card.refund if card else None
    status = "pending" if behaviour == "pending" else "succeeded"
    refund = template("refund")
    refund.update(
        {
            "id": new_id("re"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": new_id("txn"),
            "charge": charge["id"],
            "created": created,
            "currency": charge["currency"],
            "customer": charge["customer"],
            "customer_account": None,
            "destination_details": _destination(status),
            "metadata": metadata,
            "payment_intent": charge["payment_intent"],
            "payment_method": charge["payment_method"],
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": status,
            "transfer_reversal": None,
        }
    )
    sb.store.add("refund", refund)
    if behaviour is not None:
        outcome = "failed" if behaviour == "fail" else "succeeded"
        sb.store.settlements[refund["id"]] = (created + SETTLEMENT_SECONDS, outcome)
    charge["amount_refunded"] += amount
    charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
    charge["refunds"]["data"].insert(0, snapshot(refund))
    sb.events.emit("refund.created", refund)
    sb.events.emit("charge.refunded", charge)
    return refund


def _refundable_while_disputed(sb: Sandbox, charge: Obj) -> bool:
    return any(
        d["charge"] == charge["id"] and d["is_charge_refundable"] for d in sb.store.all("dispute")
    )


def settle(sb: Sandbox, refund: Obj, outcome: str, failure_reason: str | None = None) -> Obj:
    """The refund reaches its final state at the card network: ``succeeded`` or ``failed``."""
    if outcome not in ("succeeded", "failed"):
        raise invalid("outcome must be succeeded or failed", param="outcome")
    if refund["status"] not in ("pending", "succeeded") or (
        refund["status"] == "succeeded" and refund["id"] not in sb.store.settlements
    ):
        raise invalid(f"Refund {refund['id']} is {refund['status']} and has nothing to settle.")
    sb.store.settlements.pop(refund["id"], None)
    charge = sb.store.get("charge", refund["charge"])
    before = {"status": refund["status"]}
    if outcome == "succeeded":
        if refund["status"] == "succeeded":
            return refund  # it already looked final
        refund["status"] = "succeeded"
        refund["destination_details"] = _destination("succeeded")
    else:
        reason = failure_reason or "expired_or_canceled_card"
        if reason not in FAILURE_REASONS:
            raise invalid(f"failure_reason must be one of {', '.join(FAILURE_REASONS)}")
        refund.update(
            {
                "status": "failed",
                "failure_reason": reason,
                "failure_balance_transaction": new_id("txn"),
            }
        )
        # The money never reached the cardholder: it is back in the balance and
        # the charge can be refunded again.
        charge["amount_refunded"] -= refund["amount"]
        charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
    charge["refunds"]["data"] = [
        snapshot(refund) if r["id"] == refund["id"] else r for r in charge["refunds"]["data"]
    ]
    sb.events.emit("refund.updated", refund, before)
    sb.events.emit("charge.refund.updated", refund, before)
    if refund["status"] == "failed":
        sb.events.emit("refund.failed", refund)
    return refund
