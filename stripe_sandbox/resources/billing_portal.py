"""Billing portal sessions: creation returns a URL, as the hosted portal would."""

from __future__ import annotations

from ..api import Call, Route
from ..fixtures import template
from ..ids import new_id, token
from ..sandbox import Sandbox
from ..store import Obj


def create(sb: Sandbox, call: Call) -> Obj:
    p = call.p(
        {
            "customer",
            "return_url",
            "configuration",
            "flow_data",
            "locale",
            "on_behalf_of",
            "customer_account",
        }
    )
    customer = sb.store.get("customer", p.req_str("customer"), "customer")
    session = template("billing_portal.session")
    session_id = new_id("bps")
    session.update(
        {
            "id": session_id,
            "object": "billing_portal.session",
            "configuration": p.str("configuration") or "bpc_sandbox_default",
            "created": sb.now(customer["test_clock"]),
            "customer": customer["id"],
            "customer_account": None,
            "flow": None,
            "livemode": False,
            "locale": p.str("locale"),
            "on_behalf_of": None,
            "return_url": p.str("return_url"),
            "url": f"https://billing.stripe.com/p/session/test_{token(40)}",
        }
    )
    sb.store.add("billing_portal.session", session)
    return session


ROUTES: list[Route] = [("POST", "/v1/billing_portal/sessions", create)]
