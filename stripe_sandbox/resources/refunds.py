"""Refunds, full or partial, by ``payment_intent`` or ``charge``."""

from __future__ import annotations

from .. import refunding
from ..api import LIST_PARAMS, Call, Route, paginate
from ..errors import invalid
from ..params import merge_metadata
from ..sandbox import Sandbox
from ..store import Obj

REASONS = ("duplicate", "fraudulent", "requested_by_customer")


def create(sb: Sandbox, call: Call) -> Obj:
    p = call.p(
        {
            "payment_intent",
            "charge",
            "amount",
            "reason",
            "metadata",
            "refund_application_fee",
            "reverse_transfer",
            "instructions_email",
            "origin",
            "customer",
            "currency",
        }
    )
    charge_id, pi_id = p.str("charge"), p.str("payment_intent")
    if charge_id:
        charge = sb.store.get("charge", charge_id, "charge")
    elif pi_id:
        pi = sb.store.get("payment_intent", pi_id, "payment_intent")
        found = sb.store.maybe("charge", pi["latest_charge"])
        if found is None or pi["status"] != "succeeded":
            raise invalid(
                f"This PaymentIntent ({pi['id']}) does not have a successful charge to refund.",
                param="payment_intent",
            )
        charge = found
    else:
        raise invalid(
            "One of the following params should be provided for this request: "
            "payment_intent or charge.",
            code="parameter_missing",
        )
    reason = p.str("reason")
    if reason is not None and reason not in REASONS:
        raise invalid(f"Invalid reason: must be one of {', '.join(REASONS)}", param="reason")
    return refunding.create(
        sb,
        charge,
        amount=p.int("amount"),
        reason=reason,
        metadata=merge_metadata({}, p.raw("metadata")),
        created=sb.time_of(charge),
    )


def retrieve(sb: Sandbox, call: Call) -> Obj:
    return sb.store.get("refund", call.match["id"])


def update(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"metadata"})
    refund = sb.store.get("refund", call.match["id"])
    if p.has("metadata"):
        before = {"metadata": dict(refund["metadata"])}
        refund["metadata"] = merge_metadata(refund["metadata"], p.raw("metadata"))
        sb.events.emit("refund.updated", refund, before)
    return refund


def list_(sb: Sandbox, call: Call) -> Obj:
    p = call.p(LIST_PARAMS | {"charge", "payment_intent"})
    objs = sb.store.all("refund")
    if p.str("charge"):
        objs = [o for o in objs if o["charge"] == p.str("charge")]
    if p.str("payment_intent"):
        objs = [o for o in objs if o["payment_intent"] == p.str("payment_intent")]
    return paginate(objs, call, "/v1/refunds")


ROUTES: list[Route] = [
    ("POST", "/v1/refunds", create),
    ("GET", "/v1/refunds", list_),
    ("GET", "/v1/refunds/{id}", retrieve),
    ("POST", "/v1/refunds/{id}", update),
]
