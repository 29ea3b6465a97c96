"""The member's side of the API: plans, payment methods, subscribing, checkout,
their subscription, invoices and entitlements. A member reaches only their own
records: anything else is 404."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import stripe as stripe_lib

from services.subscriptions import contract, customers, plans, routing, stripe_catalog, views
from services.subscriptions.members import customer_of
from services.subscriptions.routing import routes
from services.subscriptions.state import history
from services.subscriptions.state import subscriptions as subscription_rows
from services.subscriptions.state.snapshots import LIVE
from shared import catalog
from shared.api.pagination import Page, PageQuery, decode_cursor, page_of
from shared.api.service import Call, Empty
from shared.clock import from_unix
from shared.db import DbConnection
from shared.http.errors import conflict, invalid_field, not_found
from shared.stripe_calls import StripeCalls

# --- plans ---------------------------------------------------------------------------


@routes.implement(contract.LIST_PLANS)
async def list_plans(call: Call[Empty, Empty]) -> contract.PlanList:
    cat = catalog.default()
    tier = call.caller.tier if call.caller.user_id else None
    data = []
    for key, plan in cat.plans.items():
        prices = [
            contract.PlanPrice(
                interval=interval,
                amount=price.amount,
                currency=cat.currency,
                lookup_key=price.lookup_key,
                eligibility=None,
            )
            for interval, price in plan.prices.items()
        ]
        for interval, price in (plan.eligibility.get(tier, {}) if tier else {}).items():
            prices.append(
                contract.PlanPrice(
                    interval=interval,
                    amount=price.amount,
                    currency=cat.currency,
                    lookup_key=price.lookup_key,
                    eligibility=tier,
                )
            )
        data.append(
            contract.PlanView(
                key=key,
                name=plan.name,
                description=plan.description,
                features=list(plan.features),
                trial_days=plan.trial_days,
                credits=dict(plan.credits),
                prices=prices,
            )
        )
    return contract.PlanList(data=data)


# --- payment methods -----------------------------------------------------------------


@routes.implement(contract.SETUP_PAYMENT_METHOD)
async def setup_payment_method(call: Call[Empty, Empty]) -> contract.SetupIntentAnswer:
    customer = await customer_of(call, call.caller.user_id, call.caller.email)
    intent = await routing.stripe(call).call(
        "create setup intent",
        lambda c: c.v1.setup_intents.create_async(
            {
                "customer": customer.stripe_customer_id,
                "usage": "off_session",
                "payment_method_types": ["card"],
                "metadata": {"user_id": call.caller.user_id},
            },  # type: ignore[arg-type]
            {"idempotency_key": call.stripe_key("setup-intent")},
        ),
    )
    assert intent.client_secret is not None
    return contract.SetupIntentAnswer(setup_intent_id=intent.id, client_secret=intent.client_secret)


def _method_view(pm: Any, default_id: str | None) -> contract.PaymentMethodView:
    card = getattr(pm, "card", None)
    return contract.PaymentMethodView(
        id=pm.id,
        type=pm.type,
        brand=card.brand if card else None,
        last4=card.last4 if card else None,
        exp_month=card.exp_month if card else None,
        exp_year=card.exp_year if card else None,
        default=pm.id == default_id,
    )


async def _default_method(call: Call[Any, Any], customer_id: str) -> str | None:
    customer = await routing.stripe(call).call(
        "retrieve customer", lambda c: c.v1.customers.retrieve_async(customer_id)
    )
    settings = customer.invoice_settings
    default = settings.default_payment_method if settings else None
    return default if isinstance(default, str) or default is None else default.id


@routes.implement(contract.LIST_PAYMENT_METHODS)
async def list_payment_methods(call: Call[Empty, Empty]) -> contract.PaymentMethodList:
    customer = await customer_of(call, call.caller.user_id, call.caller.email)
    cid = customer.stripe_customer_id
    methods = await routing.stripe(call).call(
        "list payment methods",
        lambda c: c.v1.customers.payment_methods.list_async(cid, {"limit": 100}),
    )
    default = await _default_method(call, cid)
    return contract.PaymentMethodList(data=[_method_view(pm, default) for pm in methods.data])


@routes.implement(contract.DEFAULT_PAYMENT_METHOD)
async def set_default_payment_method(call: Call[Empty, Empty]) -> contract.PaymentMethodView:
    # A member with no Stripe customer owns no card: 404 without creating one.
    customer = await customers.find(call.pool, call.caller.user_id)
    if customer is None:
        raise not_found("payment method")
    cid, pm_id = customer.stripe_customer_id, call.path["payment_method_id"]
    stripe = routing.stripe(call)
    try:
        pm = await stripe.call(
            "retrieve payment method", lambda c: c.v1.payment_methods.retrieve_async(pm_id)
        )
    except stripe_lib.InvalidRequestError as exc:
        raise not_found("payment method") from exc
    owner = pm.customer if isinstance(pm.customer, str) or pm.customer is None else pm.customer.id
    if owner != cid:
        raise not_found("payment method")  # someone else's card: no oracle
    await stripe.call(
        "set default payment method",
        lambda c: c.v1.customers.update_async(
            cid,
            {"invoice_settings": {"default_payment_method": pm_id}},
            {"idempotency_key": call.stripe_key("default-pm")},
        ),
    )
    live = await views.current_of(call.pool, call.caller.user_id)
    if live is not None and live["status"] in LIVE:
        sub_id = live["stripe_subscription_id"]
        await stripe.call(
            "set subscription payment method",
            lambda c: c.v1.subscriptions.update_async(
                sub_id,
                {"default_payment_method": pm_id},
                {"idempotency_key": call.stripe_key("default-pm-sub")},
            ),
        )
    return _method_view(pm, pm_id)


# --- subscribing ---------------------------------------------------------------------

_CLAIM = """
INSERT INTO subscription_starts (user_id, claimed_at) VALUES ($1, now())
ON CONFLICT (user_id) DO UPDATE SET claimed_at = now()
WHERE subscription_starts.claimed_at < now() - interval '2 minutes'
RETURNING true
"""


async def _refuse_a_second(call: Call[Any, Any], user_id: str) -> None:
    row = await views.current_of(call.pool, user_id)
    if row is not None and row["status"] in LIVE:
        raise conflict(
            "subscription_exists",
            "the member already has a subscription; change or cancel it",
            subscription_id=row["stripe_subscription_id"],
        )


async def _claim_start(call: Call[Any, Any], user_id: str) -> None:
    """One first subscribe at a time per member: concurrent ones get 409."""
    await _refuse_a_second(call, user_id)
    if not await call.pool.fetchval(_CLAIM, user_id):
        raise conflict("subscription_in_progress", "a subscription is being created for the member")
    await _refuse_a_second(call, user_id)


async def _release_start(call: Call[Any, Any], user_id: str) -> None:
    await call.pool.execute("DELETE FROM subscription_starts WHERE user_id = $1", user_id)


async def _checkout_state(stripe: StripeCalls, session_id: str, *, expire: bool) -> Any:
    if expire:
        try:
            return await stripe.call(
                "expire checkout session",
                lambda c: c.v1.checkout.sessions.expire_async(session_id),
            )
        except stripe_lib.InvalidRequestError:
            pass  # no longer open: paid or expired meanwhile, as Stripe now says
    return await stripe.call(
        "retrieve checkout session", lambda c: c.v1.checkout.sessions.retrieve_async(session_id)
    )


async def _close_open_checkouts(call: Call[Any, Any], user_id: str) -> None:
    """The member's checkouts still open (another tab, an abandoned page) are
    expired before a new way to subscribe is opened: paying one of those later
    would start a second subscription, a second charge every period. One that
    was paid already is a subscription on its way: 409, as for a live one."""
    stripe = routing.stripe(call)
    rows = await call.pool.fetch(
        "SELECT stripe_session_id FROM checkout_sessions WHERE user_id = $1 AND status = 'open'",
        user_id,
    )
    for row in rows:
        session_id = row["stripe_session_id"]
        session = await _checkout_state(stripe, session_id, expire=True)
        if session.status == "complete":
            sub = session.subscription
            sub_id = sub if isinstance(sub, str) or sub is None else sub.id
            raise conflict(
                "subscription_exists",
                "the member already has a subscription; change or cancel it",
                **({"subscription_id": sub_id} if sub_id else {}),
            )


def _had_trial(rows: int) -> bool:
    return rows > 0


async def _trial_days(call: Call[Any, Any], priced: plans.PricedPlan) -> int | None:
    if priced.plan.trial_days is None:
        return None
    before = await call.pool.fetchval(
        "SELECT count(*) FROM subscriptions WHERE user_id = $1", call.caller.user_id
    )
    return None if _had_trial(before) else priced.plan.trial_days


@routes.implement(contract.CREATE_SUBSCRIPTION)
async def create_subscription(
    call: Call[contract.NewSubscription, Empty],
) -> contract.SubscriptionCreated:
    body, user_id = call.body, call.caller.user_id
    priced = plans.chosen_or_refuse(body.plan, body.interval, call.caller.tier)
    stripe = routing.stripe(call)
    await _claim_start(call, user_id)
    try:
        await _close_open_checkouts(call, user_id)
        customer = await customer_of(call, user_id, call.caller.email)
        price = await stripe_catalog.price_id(stripe, priced.lookup_key)
        metered = await stripe_catalog.metered_price_ids(stripe, priced)
        promo = (
            await stripe_catalog.promotion_code_id(stripe, body.promotion_code)
            if body.promotion_code
            else None
        )
        trial_days = await _trial_days(call, priced)
        has_card = await _default_method(call, customer.stripe_customer_id) is not None
        params: dict[str, Any] = {
            "customer": customer.stripe_customer_id,
            # The plan first; then its overage, billed in arrears from what the
            # meter counted (a metered price takes no quantity).
            "items": [{"price": price}, *({"price": m} for m in metered)],
            "metadata": {"user_id": user_id, "plan": priced.key, "interval": priced.interval},
            "payment_settings": {"save_default_payment_method": "on_subscription"},
            # A saved card is charged now (a decline is a 402 with its code);
            # otherwise the first payment is confirmed with Elements.
            "payment_behavior": "error_if_incomplete" if has_card else "default_incomplete",
            "expand": ["latest_invoice.confirmation_secret", "pending_setup_intent"],
        }
        if promo:
            params["discounts"] = stripe_catalog.discounts_param(promo)
        if trial_days:
            params["trial_period_days"] = trial_days
            if not has_card:
                # No card by the trial's end: the trial ends, and access with it
                # (rather than an invoice nobody can pay).
                params["trial_settings"] = {"end_behavior": {"missing_payment_method": "cancel"}}
        sub = await stripe.call(
            "create subscription",
            lambda c: c.v1.subscriptions.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": call.stripe_key("create-subscription")},
            ),
        )
        secret, kind = _client_secret(sub)

        async def record(conn: DbConnection) -> contract.SubscriptionCreated:
            invoice = sub.latest_invoice
            await subscription_rows.record_placeholder(
                conn,
                sub.id,
                customer.stripe_customer_id,
                sub.status,
                price,
                user_id,
                priced.key,
                priced.interval,
                priced.tier,
                priced.lookup_key,
                priced.amount,
                catalog.default().currency,
                from_unix(sub.trial_end) if sub.trial_end else None,
                invoice if isinstance(invoice, str) or invoice is None else invoice.id,
            )
            await history.record(
                conn,
                sub.id,
                actor_type="member",
                actor=user_id,
                action="create",
                changes={"plan": (None, priced.key), "interval": (None, priced.interval)},
            )
            await conn.execute("DELETE FROM subscription_starts WHERE user_id = $1", user_id)
            return contract.SubscriptionCreated(
                id=sub.id, status=sub.status, client_secret=secret, client_secret_type=kind
            )

        return await call.commit(record)
    finally:
        await _release_start(call, user_id)


def _client_secret(sub: Any) -> tuple[str | None, Any]:
    invoice = sub.latest_invoice
    confirmation = getattr(invoice, "confirmation_secret", None) if invoice else None
    if sub.status == "incomplete" and confirmation is not None:
        return confirmation.client_secret, "payment_intent"
    setup = sub.pending_setup_intent
    if setup is not None and not isinstance(setup, str) and setup.client_secret:
        return setup.client_secret, "setup_intent"
    return None, None


# --- checkout --------------------------------------------------------------------


def allowed(url: str, origins: list[str]) -> bool:
    """``scheme://host`` allows any port of that host, ``scheme://host:port`` that one."""
    parts = urlsplit(url)
    for origin in origins:
        allowed_parts = urlsplit(origin.rstrip("/"))
        if (parts.scheme, parts.hostname) != (allowed_parts.scheme, allowed_parts.hostname):
            continue
        if allowed_parts.port is None or allowed_parts.port == parts.port:
            return True
    return False


def check_redirect(call: Call[Any, Any], field: str, url: str) -> None:
    if not allowed(url, routing.settings(call).checkout_allowed_origins):
        raise invalid_field(field, "not an allowed origin (CHECKOUT_ALLOWED_ORIGINS)")


@routes.implement(contract.CREATE_CHECKOUT_SESSION)
async def create_checkout_session(
    call: Call[contract.NewCheckoutSession, Empty],
) -> contract.CheckoutSessionCreated:
    body, user_id = call.body, call.caller.user_id
    check_redirect(call, "success_url", str(body.success_url))
    check_redirect(call, "cancel_url", str(body.cancel_url))
    priced = plans.chosen_or_refuse(body.plan, body.interval, call.caller.tier)
    # One at a time per member, as a first subscribe: concurrent ones (a
    # double click) would each open a checkout the others do not see, and
    # each could be paid.
    await _claim_start(call, user_id)
    try:
        await _close_open_checkouts(call, user_id)
        return await _open_checkout(call, priced)
    finally:
        await _release_start(call, user_id)


async def _open_checkout(
    call: Call[contract.NewCheckoutSession, Empty], priced: plans.PricedPlan
) -> contract.CheckoutSessionCreated:
    body, user_id = call.body, call.caller.user_id
    stripe = routing.stripe(call)
    customer = await customer_of(call, user_id, call.caller.email)
    price = await stripe_catalog.price_id(stripe, priced.lookup_key)
    metered = await stripe_catalog.metered_price_ids(stripe, priced)
    meta = {"user_id": user_id, "plan": priced.key, "interval": priced.interval}
    subscription_data: dict[str, Any] = {"metadata": meta}
    trial_days = await _trial_days(call, priced)
    if trial_days:
        subscription_data["trial_period_days"] = trial_days
    params: dict[str, Any] = {
        "mode": "subscription",
        "customer": customer.stripe_customer_id,
        "client_reference_id": user_id,
        "line_items": [{"price": price, "quantity": 1}, *({"price": m} for m in metered)],
        "success_url": str(body.success_url),
        "cancel_url": str(body.cancel_url),
        "metadata": meta,
        "subscription_data": subscription_data,
    }
    if body.promotion_code:
        promo = await stripe_catalog.promotion_code_id(stripe, body.promotion_code)
        params["discounts"] = stripe_catalog.discounts_param(promo)
    else:
        params["allow_promotion_codes"] = True
    session = await stripe.call(
        "create checkout session",
        lambda c: c.v1.checkout.sessions.create_async(
            params,  # type: ignore[arg-type]
            {"idempotency_key": call.stripe_key("checkout-session")},
        ),
    )
    assert session.url is not None

    async def record(conn: DbConnection) -> contract.CheckoutSessionCreated:
        await conn.execute(
            "INSERT INTO checkout_sessions (stripe_session_id, user_id, stripe_customer_id,"
            " status, payment_status, plan, interval, url, expires_at, version_created)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'epoch')"
            " ON CONFLICT (stripe_session_id) DO NOTHING",
            session.id,
            user_id,
            customer.stripe_customer_id,
            session.status or "open",
            session.payment_status,
            priced.key,
            priced.interval,
            session.url,
            from_unix(session.expires_at),
        )
        return contract.CheckoutSessionCreated(
            session_id=session.id,
            checkout_url=str(session.url),
            expires_at=from_unix(session.expires_at),
        )

    return await call.commit(record)


@routes.implement(contract.SHOW_CHECKOUT_SESSION)
async def show_checkout_session(call: Call[Empty, Empty]) -> contract.CheckoutOutcome:
    session_id = call.path["session_id"]
    row = await call.pool.fetchrow(
        "SELECT * FROM checkout_sessions WHERE stripe_session_id = $1 AND user_id = $2",
        session_id,
        call.caller.user_id,
    )
    if row is None:
        raise not_found("checkout session")
    # What Stripe says now, not what a success page might assume.
    session = await routing.stripe(call).call(
        "retrieve checkout session", lambda c: c.v1.checkout.sessions.retrieve_async(session_id)
    )
    sub = session.subscription
    return contract.CheckoutOutcome(
        session_id=session.id,
        status=session.status or "open",
        payment_status=session.payment_status,
        subscription_id=sub if isinstance(sub, str) or sub is None else sub.id,
        plan=row["plan"],
        interval=row["interval"],
        expires_at=from_unix(session.expires_at) if session.expires_at else None,
    )


# --- reading -------------------------------------------------------------------------


@routes.implement(contract.MY_SUBSCRIPTION)
async def my_subscription(call: Call[Empty, Empty]) -> contract.SubscriptionView:
    row = await views.current_of(call.pool, call.caller.user_id)
    if row is None:
        raise not_found("subscription")
    return (await views.subscriptions(call.pool, [row]))[0]


@routes.implement(contract.SHOW_SUBSCRIPTION)
async def show_subscription(call: Call[Empty, Empty]) -> contract.SubscriptionView:
    row = await views.owned_subscription(
        call.pool, call.path["subscription_id"], call.caller.owner_filter()
    )
    return (await views.subscriptions(call.pool, [row]))[0]


@routes.implement(contract.LIST_INVOICES)
async def list_invoices(call: Call[Empty, PageQuery]) -> Page[contract.InvoiceView]:
    query = call.query
    args: list[Any] = [call.caller.user_id, query.limit + 1]
    if query.cursor:
        created, invoice_id = decode_cursor(query.cursor, datetime, str)
        args += [created, invoice_id]
    else:
        args += [None, None]
    rows = await call.pool.fetch(
        "SELECT * FROM invoices WHERE user_id = $1 AND ($3::timestamptz IS NULL"
        " OR (stripe_created, stripe_invoice_id) < ($3, $4::text))"
        " ORDER BY stripe_created DESC, stripe_invoice_id DESC LIMIT $2",
        *args,
    )
    return page_of(
        rows, query.limit, views.invoice, lambda r: (r["stripe_created"], r["stripe_invoice_id"])
    )


async def access_time(call: Call[Any, Any], user_id: str) -> Any:
    """Now, or the member's test clock's time when they live on one."""
    at = await call.pool.fetchval(
        "SELECT test_clock_time FROM customers WHERE user_id = $1", user_id
    )
    return at or routing.now(call)


@routes.implement(contract.MY_ENTITLEMENTS)
async def my_entitlements(call: Call[Empty, Empty]) -> contract.Entitlements:
    row = await views.current_of(call.pool, call.caller.user_id)
    grace = timedelta(days=routing.settings(call).grace_period_days)
    return views.entitlements(row, await access_time(call, call.caller.user_id), grace)


@routes.implement(contract.BILLING_PORTAL)
async def billing_portal(call: Call[contract.PortalRequest, Empty]) -> contract.PortalSession:
    check_redirect(call, "return_url", str(call.body.return_url))
    customer = await customer_of(call, call.caller.user_id, call.caller.email)
    session = await routing.stripe(call).call(
        "create portal session",
        lambda c: c.v1.billing_portal.sessions.create_async(
            {"customer": customer.stripe_customer_id, "return_url": str(call.body.return_url)},
            {"idempotency_key": call.stripe_key("portal")},
        ),
    )
    return contract.PortalSession(url=session.url)
