"""Payment methods: test tokens become real ``pm_...`` objects; attach / detach / list."""

from __future__ import annotations

from .. import payments
from ..api import LIST_PARAMS, Call, Route, paginate
from ..cards import CARDS
from ..errors import invalid, required
from ..params import merge_metadata
from ..sandbox import Sandbox
from ..store import Obj


def create(sb: Sandbox, call: Call) -> Obj:
    p = call.p(
        {
            "type",
            "card",
            "billing_details",
            "metadata",
            "customer",
            "payment_method",
            "allow_redisplay",
        }
    )
    card = p.dict("card")
    tok = card.get("token") or p.str("payment_method")
    if p.str("type") not in (None, "card"):
        raise invalid("The sandbox only supports card payment methods.", param="type")
    if not tok or tok not in CARDS:
        if card.get("number"):
            raise invalid(
                "Sending credit card numbers directly to the Stripe API is generally unsafe. "
                "To continue processing use Stripe.js, the Stripe mobile bindings, or Stripe "
                "Elements. For testing, use a test token such as tok_visa.",
                param="card[number]",
            )
        raise required("card[token]")
    pm = payments.payment_method_from_token(sb, tok, sb.now())
    details = p.dict("billing_details")
    for key in ("email", "name", "phone"):
        if key in details:
            pm["billing_details"][key] = details[key] or None
    pm["metadata"] = merge_metadata({}, p.raw("metadata"))
    return pm


def retrieve(sb: Sandbox, call: Call) -> Obj:
    pm_id = call.match["id"]
    if pm_id in CARDS:
        return payments.payment_method_from_token(sb, pm_id, sb.now())
    return sb.store.get("payment_method", pm_id)


def update(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"metadata", "billing_details", "allow_redisplay", "card"})
    pm = sb.store.get("payment_method", call.match["id"])
    if p.has("metadata"):
        pm["metadata"] = merge_metadata(pm["metadata"], p.raw("metadata"))
    details = p.dict("billing_details")
    for key in ("email", "name", "phone"):
        if key in details:
            pm["billing_details"][key] = details[key] or None
    sb.events.emit("payment_method.updated", pm)
    return pm


def attach(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"customer", "customer_account"})
    customer = sb.store.get("customer", p.req_str("customer"), "customer")
    pm = payments.resolve_payment_method(
        sb, call.match["id"], "payment_method", sb.now(customer["test_clock"])
    )
    return payments.attach(sb, pm, customer)


def detach(sb: Sandbox, call: Call) -> Obj:
    call.p(set())
    return payments.detach(sb, sb.store.get("payment_method", call.match["id"]))


def list_(sb: Sandbox, call: Call) -> Obj:
    p = call.p(LIST_PARAMS | {"customer", "type", "customer_account"})
    objs = sb.store.all("payment_method")
    if p.str("customer"):
        sb.store.get("customer", p.str("customer"), "customer")
        objs = [o for o in objs if o["customer"] == p.str("customer")]
    if p.str("type"):
        objs = [o for o in objs if o["type"] == p.str("type")]
    return paginate(objs, call, "/v1/payment_methods")


ROUTES: list[Route] = [
    ("POST", "/v1/payment_methods", create),
    ("GET", "/v1/payment_methods", list_),
    ("GET", "/v1/payment_methods/{id}", retrieve),
    ("POST", "/v1/payment_methods/{id}", update),
    ("POST", "/v1/payment_methods/{id}/attach", attach),
    ("POST", "/v1/payment_methods/{id}/detach", detach),
]
