"""Billing portal sessions: creation returns a URL, as the hosted portal would.

Without a portal configuration that has a default return URL (the sandbox has
none), Stripe requires ``return_url``: where the portal's "back" link goes.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..api import Call, Route
from ..errors import invalid
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
    return_url = p.str("return_url")
    if return_url is None:
        raise invalid(
            "You must provide a return_url, or set a default return URL in your customer "
            "portal settings.",
            param="return_url",
        )
    parts = urlsplit(return_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise invalid(f"Not a valid URL: {return_url}", param="return_url", code="url_invalid")
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
            "return_url": return_url,
            "url": f"https://billing.stripe.com/p/session/test_{token(40)}",
        }
    )
    sb.store.add("billing_portal.session", session)
    return session


ROUTES: list[Route] = [("POST", "/v1/billing_portal/sessions", create)]
