"""Checkout sessions, plus the sandbox-only "customer completes the page" action.

Stripe's rules mirrored here: a session expires at ``expires_at`` (30 minutes
to 24 hours after creation, 24 hours by default) or when expired through the
API (``checkout.session.expired``); ``discounts`` and ``allow_promotion_codes``
exclude each other; a coupon is redeemed when the session completes, not
when it is created; in payment mode the payment intent only exists once the
customer pays.
"""

from __future__ import annotations

from typing import Any

from .. import collection, discounts, invoicing, lifecycle, methods, payments
from ..api import LIST_PARAMS, Call, Route, paginate
from ..cards import CARDS
from ..clock import DAY
from ..discounts import Redemption
from ..errors import invalid, required
from ..fixtures import template
from ..ids import new_id, token
from ..items import ItemSpec, item_quantity
from ..lifecycle import NewSubscription
from ..params import merge_metadata, parse_int
from ..sandbox import Sandbox
from ..store import Obj
from . import catalog, customers

FIELDS = {
    "mode",
    "line_items",
    "customer",
    "customer_email",
    "success_url",
    "cancel_url",
    "client_reference_id",
    "metadata",
    "subscription_data",
    "payment_intent_data",
    "allow_promotion_codes",
    "expires_at",
    "ui_mode",
    "payment_method_types",
    "customer_creation",
    "billing_address_collection",
    "locale",
    "automatic_tax",
    "saved_payment_method_options",
    "consent_collection",
    "return_url",
    "invoice_creation",
    "currency",
    "discounts",
    "phone_number_collection",
    "tax_id_collection",
    "custom_fields",
    "custom_text",
    "submit_type",
    "payment_method_collection",
    "customer_update",
    "redirect_on_completion",
}
MIN_LIFETIME = 30 * 60


def _line_items(sb: Sandbox, raw: list[Any], mode: str) -> list[Obj]:
    items = []
    for index, raw_entry in enumerate(raw):
        entry = raw_entry if isinstance(raw_entry, dict) else {}
        param = f"line_items[{index}][price]"
        if isinstance(entry.get("price_data"), dict) and not entry.get("price"):
            # An inline price, made for this session alone (Stripe makes it inactive).
            price = catalog.inline_price(sb, entry["price_data"])
        elif not entry.get("price"):
            raise required(param)
        else:
            price = sb.store.get("price", entry["price"], param)
        if mode == "payment" and price["type"] == "recurring":
            raise invalid(
                "You specified `payment` mode but passed a recurring price. Either "
                "switch to `subscription` mode or use only one-time prices.",
                param=param,
            )
        quantity = item_quantity(
            price,
            parse_int(entry.get("quantity"), f"line_items[{index}][quantity]", minimum=1),
            f"line_items[{index}]",
        )
        product = sb.store.maybe("product", price["product"])
        # A metered price is billed for its usage later: nothing at checkout.
        amount = int(price["unit_amount"]) * (quantity or 0)
        item = template("item")
        item.update(
            {
                "id": new_id("li"),
                "object": "item",
                "adjustable_quantity": None,
                "amount_discount": 0,
                "amount_subtotal": amount,
                "amount_tax": 0,
                "amount_total": amount,
                "currency": price["currency"],
                "description": product["name"] if product else None,
                "metadata": {},
                "price": dict(price),
                "quantity": quantity,
            }
        )
        items.append(item)
    if mode == "subscription" and not any(i["price"]["type"] == "recurring" for i in items):
        raise invalid(
            "You must provide at least one recurring price in `subscription` mode "
            "when using prices.",
            param="line_items",
        )
    return items


def _expires_at(value: int | None, now: int) -> int:
    if value is None:
        return now + DAY
    if value - now < MIN_LIFETIME:
        raise invalid(
            "The `expires_at` timestamp must be at least 30 minutes from Checkout Session "
            "creation.",
            param="expires_at",
        )
    if value - now > DAY:
        raise invalid(
            "The `expires_at` timestamp must be less than 24 hours from Checkout Session creation.",
            param="expires_at",
        )
    return value


def _session_discounts(redemptions: list[Redemption]) -> list[dict[str, Any]]:
    return [
        {
            "coupon": None if r.promotion_code else r.coupon["id"],
            "promotion_code": r.promotion_code["id"] if r.promotion_code else None,
        }
        for r in redemptions
    ]


def _apply_amounts(sb: Sandbox, session: Obj, redemptions: list[Redemption]) -> None:
    """What the discounts take off each line and the session (nothing is redeemed yet)."""
    items = sb.store.checkout_lines[session["id"]]
    provisional = [
        {"id": f"di_pending_{i}", "source": {"coupon": r.coupon["id"]}}
        for i, r in enumerate(redemptions)
    ]
    taken = discounts.allocate(sb, items, provisional, session["currency"] or "usd")
    for item, pairs in zip(items, taken, strict=True):
        off = sum(a for _, a in pairs)
        item.update({"amount_discount": off, "amount_total": item["amount_subtotal"] - off})
    off_total = sum(i["amount_discount"] for i in items)
    session["amount_total"] = session["amount_subtotal"] - off_total
    session["total_details"]["amount_discount"] = off_total
    session["discounts"] = _session_discounts(redemptions)
    sb.store.checkout_redemptions[session["id"]] = redemptions


def create(sb: Sandbox, call: Call) -> Obj:
    p = call.p(FIELDS)
    mode = p.req_str("mode")
    if mode not in ("payment", "subscription", "setup"):
        raise invalid(f"Invalid mode: {mode}", param="mode")
    customer_id = p.str("customer")
    if customer_id:
        sb.store.get("customer", customer_id, "customer")
    if p.str("ui_mode") in (None, "hosted") and not p.str("success_url"):
        raise required("success_url")
    if p.has("allow_promotion_codes") and p.has("discounts"):
        raise invalid(
            "You may only specify one of these parameters: allow_promotion_codes, discounts.",
            param="discounts",
        )
    items = _line_items(sb, p.list("line_items"), mode) if mode != "setup" else []
    if mode != "setup" and not items:
        raise required("line_items")
    now = sb.now(sb.customer_clock(customer_id))
    total = sum(i["amount_total"] for i in items)
    redemptions = discounts.resolve(
        sb, p.list("discounts"), param="discounts", now=now, customer_id=customer_id, amount=total
    )
    session = template("checkout.session")
    session_id = f"cs_test_{token(58)}"
    session.update(
        {
            "id": session_id,
            "object": "checkout.session",
            "adaptive_pricing": None,
            "after_expiration": None,
            "allow_promotion_codes": p.bool("allow_promotion_codes")
            if p.has("allow_promotion_codes")
            else None,
            "amount_subtotal": total,
            "amount_total": total,
            "automatic_tax": {
                "enabled": False,
                "liability": None,
                "status": None,
                "provider": None,
            },
            "billing_address_collection": None,
            "cancel_url": p.str("cancel_url"),
            "client_reference_id": p.str("client_reference_id"),
            "client_secret": None,
            "collected_information": None,
            "consent": None,
            "consent_collection": None,
            "created": now,
            "currency": items[0]["currency"] if items else p.str("currency"),
            "currency_conversion": None,
            "custom_fields": [],
            "custom_text": {
                "after_submit": None,
                "shipping_address": None,
                "submit": None,
                "terms_of_service_acceptance": None,
            },
            "customer": customer_id,
            "customer_account": None,
            "customer_creation": None
            if customer_id
            else (p.str("customer_creation") or "if_required"),
            "customer_details": None,
            "customer_email": p.str("customer_email"),
            "discounts": [],
            "expires_at": _expires_at(p.int("expires_at"), now),
            "integration_identifier": None,
            "invoice": None,
            "invoice_creation": None,
            "livemode": False,
            "locale": None,
            "managed_payments": None,
            "metadata": merge_metadata({}, p.raw("metadata")),
            "mode": mode,
            "origin_context": None,
            "payment_intent": None,
            "payment_link": None,
            "payment_method_collection": "always",
            "payment_method_configuration_details": None,
            "payment_method_options": {},
            "payment_method_types": ["card"],
            "payment_status": "unpaid" if mode != "setup" else "no_payment_required",
            "permissions": None,
            "phone_number_collection": {"enabled": False},
            "recovered_from": None,
            "saved_payment_method_options": None,
            "setup_intent": None,
            "shipping_address_collection": None,
            "shipping_cost": None,
            "shipping_options": [],
            "status": "open",
            "submit_type": None,
            "subscription": None,
            "success_url": p.str("success_url"),
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": p.str("ui_mode") or "hosted",
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
            "wallet_options": None,
        }
    )
    sb.store.add("checkout.session", session)
    sb.store.checkout_lines[session_id] = items
    # Stripe keeps these for the subscription / payment intent made on completion.
    sb.store.checkout_data[session_id] = {
        "subscription_data": p.dict("subscription_data"),
        "payment_intent_data": p.dict("payment_intent_data"),
    }
    if redemptions:
        _apply_amounts(sb, session, redemptions)
    return session


def retrieve(sb: Sandbox, call: Call) -> Obj:
    return sb.store.get("checkout.session", call.match["id"])


def line_items(sb: Sandbox, call: Call) -> Obj:
    call.p(LIST_PARAMS)
    session = sb.store.get("checkout.session", call.match["id"])
    return paginate(
        list(sb.store.checkout_lines.get(session["id"], [])),
        call,
        f"/v1/checkout/sessions/{session['id']}/line_items",
    )


def expire_session(sb: Sandbox, session: Obj) -> Obj:
    session.update({"status": "expired", "url": None})
    sb.events.emit("checkout.session.expired", session)
    return session


def expire(sb: Sandbox, call: Call) -> Obj:
    call.p(set())
    session = sb.store.get("checkout.session", call.match["id"])
    if session["status"] != "open":
        raise invalid(
            f'Only Checkout Sessions with a status in ["open"] can be expired. '
            f'This Checkout Session has a status of "{session["status"]}".'
        )
    return expire_session(sb, session)


def list_(sb: Sandbox, call: Call) -> Obj:
    p = call.p(
        LIST_PARAMS
        | {
            "customer",
            "payment_intent",
            "subscription",
            "status",
            "customer_details",
            "payment_link",
        }
    )
    objs = sb.store.all("checkout.session")
    for key in ("customer", "payment_intent", "subscription", "status"):
        if p.str(key):
            objs = [o for o in objs if o[key] == p.str(key)]
    return paginate(objs, call, "/v1/checkout/sessions")


# -- the hosted page, completed by the sandbox control -----------------------------


def _precheck_decline(sb: Sandbox, pm_value: str) -> None:
    """Decide a decline before creating anything, so a failed attempt leaves the session
    open and untouched, as when a customer's card is refused on the hosted page."""
    if pm_value in CARDS:
        card = CARDS[pm_value]
        decline = card.attach_decline or card.charge_decline
    else:
        sb.store.get("payment_method", pm_value, "payment_method")
        decline = methods.next_decline(sb, pm_value, consume=False)
        if decline:
            methods.next_decline(sb, pm_value)
    if decline:
        raise methods.card_error(decline)


def _typed_promotion_code(sb: Sandbox, session: Obj, code: str, now: int) -> None:
    """The customer types a promotion code on a page with ``allow_promotion_codes``."""
    if not session["allow_promotion_codes"]:
        raise invalid("This Checkout Session does not accept promotion codes.")
    matches = [
        p
        for p in sb.store.all("promotion_code")
        if p["active"] and p["code"].lower() == code.lower()
    ]
    if not matches:
        raise invalid(f"This code is invalid: {code}", param="promotion_code")
    redemptions = discounts.resolve(
        sb,
        [{"promotion_code": matches[0]["id"]}],
        param="promotion_code",
        now=now,
        customer_id=session["customer"],
        amount=session["amount_subtotal"],
    )
    _apply_amounts(sb, session, redemptions)


def _redemptions(sb: Sandbox, session: Obj) -> list[Redemption]:
    return list(sb.store.checkout_redemptions.get(session["id"], []))


def _authenticate_on_page(sb: Sandbox, pi: Obj, now: int) -> None:
    """A card that asks for 3D Secure is authenticated on the hosted page itself."""
    if pi["status"] == "requires_action":
        payments.authenticate(sb, pi, now, succeeded=True)
        collection.payment_intent_changed(sb, pi, now)


def _complete_subscription(sb: Sandbox, session: Obj, customer: Obj, pm: Obj, now: int) -> None:
    methods.attach(sb, pm, customer)
    data = sb.store.checkout_data[session["id"]]["subscription_data"]
    days = parse_int(data.get("trial_period_days"), "trial_period_days")
    specs = [
        ItemSpec(sb.store.get("price", i["price"]["id"]), i["quantity"])
        for i in sb.store.checkout_lines[session["id"]]
    ]
    sub = lifecycle.create(
        sb,
        customer,
        NewSubscription(
            items=specs,
            payment_behavior="default_incomplete",
            default_payment_method=pm["id"],
            trial_end=now + days * DAY if days else None,
            metadata=merge_metadata({}, data.get("metadata")),
            description=data.get("description") or None,
            redemptions=_redemptions(sb, session),
        ),
    )
    invoice = sb.store.get("invoice", sub["latest_invoice"])
    if invoice["status"] == "open":
        error = collection.attempt(sb, invoice, now, payment_method=pm["id"], off_session=False)
        if error is not None:
            raise error
        pi = invoicing.payment_intent_for(sb, invoice)
        if pi is not None:
            _authenticate_on_page(sb, pi, now)
    session.update(
        {
            "subscription": sub["id"],
            "invoice": invoice["id"],
            "payment_status": "paid"
            if invoice["amount_paid"] or not days
            else "no_payment_required",
        }
    )


def _complete_payment(sb: Sandbox, session: Obj, customer: Obj | None, pm: Obj, now: int) -> None:
    data = sb.store.checkout_data[session["id"]]["payment_intent_data"]
    for redemption in _redemptions(sb, session):
        discounts.redeem(
            sb,
            redemption,
            start=now,
            customer=customer["id"] if customer else None,
            checkout_session=session["id"],
        )
    pi = payments.new_payment_intent(
        sb,
        amount=session["amount_total"],
        currency=session["currency"],
        customer=customer["id"] if customer else None,
        created=now,
        payment_method=pm["id"],
        metadata=merge_metadata({}, data.get("metadata")),
        description=data.get("description") or None,
        setup_future_usage=data.get("setup_future_usage") or None,
    )
    error = payments.confirm(sb, pi, pm["id"], now)
    if error is not None:
        raise error
    _authenticate_on_page(sb, pi, now)
    if customer and pi["setup_future_usage"]:
        methods.attach(sb, pm, customer, verified=True)
    session.update({"payment_intent": pi["id"], "payment_status": "paid"})


def complete(sb: Sandbox, session_id: str, body: dict[str, Any]) -> Obj:
    """Complete a session the way a customer paying on the hosted page would."""
    session = sb.store.get("checkout.session", session_id)
    if session["status"] != "open":
        raise invalid(f"This Checkout Session is {session['status']}, not open.")
    pm_value = str(body.get("payment_method") or "pm_card_visa")
    _precheck_decline(sb, pm_value)
    if body.get("promotion_code"):
        _typed_promotion_code(
            sb, session, str(body["promotion_code"]), sb.now(sb.customer_clock(session["customer"]))
        )
    email = body.get("email") or session["customer_email"]
    customer = sb.store.maybe("customer", session["customer"])
    needs_customer = session["mode"] == "subscription" or session["customer_creation"] == "always"
    if customer is None and needs_customer:
        customer = customers.create(
            sb,
            Call(
                "POST",
                "/v1/customers",
                {"email": email or "customer@example.com", "name": body.get("name") or ""},
            ),
        )
    now = sb.now(customer["test_clock"] if customer else None)
    pm = methods.resolve_payment_method(sb, pm_value, "payment_method", now)
    pm["billing_details"]["email"] = email or (customer or {}).get("email")
    if session["mode"] == "subscription":
        assert customer is not None
        _complete_subscription(sb, session, customer, pm, now)
    elif session["mode"] == "payment":
        _complete_payment(sb, session, customer, pm, now)
    session.update(
        {
            "status": "complete",
            "url": None,
            "customer": customer["id"] if customer else None,
            "customer_details": {
                "address": None,
                "email": email or (customer or {}).get("email"),
                "name": (customer or {}).get("name"),
                "phone": None,
                "tax_exempt": "none",
                "tax_ids": [],
                "business_name": None,
                "individual_name": None,
            },
        }
    )
    sb.events.emit("checkout.session.completed", session)
    return session


ROUTES: list[Route] = [
    ("POST", "/v1/checkout/sessions", create),
    ("GET", "/v1/checkout/sessions", list_),
    ("GET", "/v1/checkout/sessions/{id}", retrieve),
    ("GET", "/v1/checkout/sessions/{id}/line_items", line_items),
    ("POST", "/v1/checkout/sessions/{id}/expire", expire),
]
