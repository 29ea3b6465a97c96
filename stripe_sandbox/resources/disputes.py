"""Disputes: retrieve, list, submit evidence (update), close (accept the loss)."""

from __future__ import annotations

from .. import disputing
from ..api import LIST_PARAMS, Call, Route, paginate
from ..params import merge_metadata
from ..sandbox import Sandbox
from ..store import Obj


def retrieve(sb: Sandbox, call: Call) -> Obj:
    return sb.store.get("dispute", call.match["id"])


def update(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"evidence", "metadata", "submit", "intended_submission_method"})
    dispute = sb.store.get("dispute", call.match["id"])
    if p.has("metadata"):
        dispute["metadata"] = merge_metadata(dispute["metadata"], p.raw("metadata"))
    # Evidence is submitted at once unless submit=false (Stripe's default is true).
    return disputing.submit_evidence(
        sb, dispute, p.dict("evidence"), submit=p.bool("submit", default=True)
    )


def close(sb: Sandbox, call: Call) -> Obj:
    call.p(set())
    dispute = sb.store.get("dispute", call.match["id"])
    # Closing means accepting the dispute: the business gives up, the dispute is lost.
    return disputing.close(sb, dispute, "lost")


def list_(sb: Sandbox, call: Call) -> Obj:
    p = call.p(LIST_PARAMS | {"charge", "payment_intent"})
    objs = sb.store.all("dispute")
    for key in ("charge", "payment_intent"):
        if p.str(key):
            objs = [o for o in objs if o[key] == p.str(key)]
    return paginate(objs, call, "/v1/disputes")


ROUTES: list[Route] = [
    ("GET", "/v1/disputes", list_),
    ("GET", "/v1/disputes/{id}", retrieve),
    ("POST", "/v1/disputes/{id}", update),
    ("POST", "/v1/disputes/{id}/close", close),
]
