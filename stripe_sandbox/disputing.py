"""Disputes: a cardholder contests a charge; the business responds; the bank decides.

Stripe's test mode (docs.stripe.com/testing#disputes): the dispute cards open
one after a successful charge; submitting the evidence text ``winning_evidence``
closes it ``won``, ``losing_evidence`` closes it ``lost``.  A chargeback takes
the disputed amount from the balance at once (``charge.dispute.funds_withdrawn``)
and a won one gives it back (``charge.dispute.funds_reinstated``); an inquiry
moves no money and ends ``warning_closed``.
"""

from __future__ import annotations

from typing import Any

from .clock import DAY
from .errors import invalid
from .fixtures import template
from .ids import new_id
from .sandbox import Sandbox
from .store import Obj

REASONS = (
    "bank_cannot_process",
    "check_returned",
    "credit_not_processed",
    "customer_initiated",
    "debit_not_authorized",
    "duplicate",
    "fraudulent",
    "general",
    "incorrect_account_details",
    "insufficient_funds",
    "noncompliant",
    "product_not_received",
    "product_unacceptable",
    "subscription_canceled",
    "unrecognized",
)
EVIDENCE_DAYS = 7
OPEN_STATUSES = ("needs_response", "under_review", "warning_needs_response", "warning_under_review")
_NETWORK_REASON = {"fraudulent": "10.4", "product_not_received": "13.1", "general": "13.7"}


def _evidence() -> dict[str, Any]:
    evidence: dict[str, Any] = {key: None for key in template("dispute")["evidence"]}
    evidence["enhanced_evidence"] = {}
    return evidence


def open_dispute(
    sb: Sandbox,
    charge: Obj,
    now: int,
    *,
    reason: str = "fraudulent",
    amount: int | None = None,
    inquiry: bool = False,
) -> Obj:
    if charge["status"] != "succeeded":
        raise invalid(f"Charge {charge['id']} has not succeeded and cannot be disputed.")
    if charge["disputed"]:
        raise invalid(f"Charge {charge['id']} is already disputed.")
    if reason not in REASONS:
        raise invalid(f"reason must be one of {', '.join(REASONS)}", param="reason")
    disputed = charge["amount_captured"] - charge["amount_refunded"] if amount is None else amount
    if not 0 < disputed <= charge["amount_captured"]:
        raise invalid("The disputed amount must be positive and at most the charge's amount.")
    card = (charge.get("payment_method_details") or {}).get("card")
    dispute = template("dispute")
    dispute.update(
        {
            "id": new_id("dp"),
            "object": "dispute",
            "amount": disputed,
            "balance_transactions": [],
            "charge": charge["id"],
            "created": now,
            "currency": charge["currency"],
            "enhanced_eligibility_types": [],
            "evidence": _evidence(),
            "evidence_details": {
                "due_by": now + EVIDENCE_DAYS * DAY,
                "enhanced_eligibility": {},
                "has_evidence": False,
                "past_due": False,
                "submission_count": 0,
            },
            # Until a chargeback is decided the charge can still be refunded only for
            # an inquiry; a chargeback already took the money back.
            "is_charge_refundable": inquiry,
            "livemode": False,
            "metadata": {},
            "payment_intent": charge["payment_intent"],
            "payment_method_details": {
                "card": {
                    "brand": card.get("brand"),
                    "case_type": "inquiry" if inquiry else "chargeback",
                    "network_reason_code": _NETWORK_REASON.get(reason, "13.7"),
                    "network": card.get("network"),
                },
                "type": "card",
            }
            if card
            else {"type": "us_bank_account", "us_bank_account": {}},
            "reason": reason,
            "status": "warning_needs_response" if inquiry else "needs_response",
        }
    )
    sb.store.add("dispute", dispute)
    charge["disputed"] = True
    sb.events.emit("charge.dispute.created", dispute)
    if not inquiry:
        dispute["balance_transactions"].append(new_id("txn"))
        sb.events.emit("charge.dispute.funds_withdrawn", dispute)
    return dispute


def _inquiry(dispute: Obj) -> bool:
    return str(dispute["status"]).startswith("warning_")


def close(sb: Sandbox, dispute: Obj, outcome: str) -> Obj:
    """The bank decides: ``won`` or ``lost`` (an inquiry simply closes)."""
    if outcome not in ("won", "lost"):
        raise invalid("outcome must be won or lost", param="outcome")
    if dispute["status"] not in OPEN_STATUSES:
        raise invalid(f"This dispute is already closed ({dispute['status']}).")
    if _inquiry(dispute):
        dispute["status"] = "warning_closed"
    else:
        dispute["status"] = outcome
        if outcome == "won":
            dispute["balance_transactions"].append(new_id("txn"))
            sb.events.emit("charge.dispute.funds_reinstated", dispute)
    dispute["is_charge_refundable"] = False
    sb.events.emit("charge.dispute.closed", dispute)
    return dispute


def submit_evidence(sb: Sandbox, dispute: Obj, evidence: dict[str, Any], submit: bool) -> Obj:
    """Stage or submit evidence; Stripe's magic texts decide a test-mode dispute at once."""
    if dispute["status"] not in OPEN_STATUSES:
        raise invalid(
            "This dispute is already closed; you can no longer update its evidence.",
            code="charge_dispute_closed"
            if dispute["status"] in ("won", "lost", "warning_closed")
            else None,
        )
    for key, value in evidence.items():
        if key not in dispute["evidence"]:
            raise invalid(f"Received unknown parameter: evidence[{key}]", param=f"evidence[{key}]")
        dispute["evidence"][key] = value or None
    dispute["evidence_details"]["has_evidence"] = any(
        v for k, v in dispute["evidence"].items() if k != "enhanced_evidence"
    )
    if not submit:
        sb.events.emit("charge.dispute.updated", dispute)
        return dispute
    dispute["evidence_details"]["submission_count"] += 1
    dispute["status"] = "warning_under_review" if _inquiry(dispute) else "under_review"
    sb.events.emit("charge.dispute.updated", dispute)
    text = dispute["evidence"].get("uncategorized_text")
    if text == "winning_evidence":
        close(sb, dispute, "won")
    elif text == "losing_evidence":
        close(sb, dispute, "lost")
    return dispute
