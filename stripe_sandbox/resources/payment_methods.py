"""Payment methods: test tokens become real ``pm_...`` objects; attach / detach / list."""

from __future__ import annotations

from .. import methods
from ..api import LIST_PARAMS, Call, Route, paginate
from ..cards import BANK_ACCOUNT_NUMBERS, CARDS
from ..errors import invalid, required
from ..params import Params, merge_metadata
from ..sandbox import Sandbox
from ..store import Obj


def _token_from(p: Params) -> str:
    """Which documented test payment method the request describes."""
    kind = p.str("type") or "card"
    if kind == "us_bank_account":
        account = Params(p.dict("us_bank_account"))
        number = account.str("account_number") or ""
        if number not in BANK_ACCOUNT_NUMBERS:
            raise invalid(
                "Use one of Stripe's test bank account numbers (routing number 110000000), "
                f"e.g. {', '.join(sorted(BANK_ACCOUNT_NUMBERS))}.",
                param="us_bank_account[account_number]",
            )
        return BANK_ACCOUNT_NUMBERS[number]
    if kind != "card":
        raise invalid(
            "The sandbox supports card and us_bank_account payment methods.", param="type"
        )
    card = p.dict("card")
    tok = card.get("token") or p.str("payment_method")
    if tok and tok in CARDS:
        return str(tok)
    if card.get("number"):
        raise invalid(
            "Sending credit card numbers directly to the Stripe API is generally unsafe. "
            "To continue processing use Stripe.js, the Stripe mobile bindings, or Stripe "
            "Elements. For testing, use a test token such as tok_visa.",
            param="card[number]",
        )
    raise required("card[token]")


def create(sb: Sandbox, call: Call) -> Obj:
    p = call.p(
        {
            "type",
            "card",
            "us_bank_account",
            "billing_details",
            "metadata",
            "customer",
            "payment_method",
            "allow_redisplay",
        }
    )
    pm = methods.payment_method_from_token(sb, _token_from(p), sb.now())
    details = p.dict("billing_details")
    for key in ("email", "name", "phone"):
        if key in details:
            pm["billing_details"][key] = details[key] or None
    pm["metadata"] = merge_metadata({}, p.raw("metadata"))
    return pm


def retrieve(sb: Sandbox, call: Call) -> Obj:
    pm_id = call.match["id"]
    if methods.is_test_token(pm_id):
        return methods.payment_method_from_token(sb, pm_id, sb.now())
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
    pm = methods.resolve_payment_method(
        sb, call.match["id"], "payment_method", sb.now(customer["test_clock"])
    )
    return methods.attach(sb, pm, customer)


def detach(sb: Sandbox, call: Call) -> Obj:
    call.p(set())
    return methods.detach(sb, sb.store.get("payment_method", call.match["id"]))


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
