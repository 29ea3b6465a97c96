"""/_sandbox control endpoints (JSON in, JSON out): what tests use to steer the emulator.

They play the parts Stripe's API leaves to others: the account's Dashboard
settings, the customer on a hosted page or a 3D Secure challenge, the card
network settling refunds and bank debits, the cardholder's bank opening and
deciding disputes, and time passing on the wall clock.  Errors come back in
Stripe's envelope (``{"error": {...}}``) with Stripe's status codes.

GET  /_sandbox/health                                    liveness
POST /_sandbox/reset                                     clear all state, logs, queues; settings
                                                         back to the command line's
GET  /_sandbox/settings                                  the account settings
POST /_sandbox/settings  {"smart_retries": bool, "retry_tries": 1-8,
                          "retry_window_days": 7|14|21|30|60,
                          "after_retries": "canceled"|"unpaid"|"past_due"}   partial update
POST /_sandbox/tick                                      run what is due on the wall clock now
POST /_sandbox/faults    {"kind": "rate_limit"|"server_error"|"slow"|"late_answer"|"permission",
                          "count", "delay_ms", "path_prefix", "retry_after"}
                          (late_answer: the request runs, its answer is held delay_ms)
GET|DELETE /_sandbox/faults
GET|DELETE /_sandbox/requests  (?path_prefix=&method=)  log of /v1 requests
POST /_sandbox/payment_methods/{pm}/fail_next  {"count", "decline_code"}
POST /_sandbox/payment_intents/{id}/authenticate  {"outcome": "succeeded"|"failed"}
POST /_sandbox/setup_intents/{id}/authenticate    {"outcome": "succeeded"|"failed"}
POST /_sandbox/payment_intents/{id}/settle  {"outcome": "auto"|"succeeded"|"failed",
                                             "failure_code": "insufficient_funds"|...}
                                             a processing bank debit settles now ("auto",
                                             the default: as its test account says)
POST /_sandbox/refunds/{id}/settle  {"outcome": "succeeded"|"failed",
                                     "failure_reason": "expired_or_canceled_card"|...}
                                     a pending (or refundFail) refund settles now; without
                                     an outcome, as its test card says
POST /_sandbox/charges/{id}/dispute  {"reason": "fraudulent"|..., "amount", "inquiry": bool}
POST /_sandbox/disputes/{id}/close   {"outcome": "won"|"lost"}
POST /_sandbox/checkout/sessions/{id}/complete  {"payment_method", "email", "name",
                                                 "promotion_code"}
POST /_sandbox/checkout/sessions/{id}/expire    as if expires_at had passed
GET  /_sandbox/delivery                          pending/delivered/failed counts
POST /_sandbox/delivery  {"paused", "shuffle", "duplicates", "chaos", "seed"}
POST /_sandbox/delivery/flush {"timeout"}       wait until the outbox is drained
GET  /_sandbox/delivery/log                      every delivery attempt
GET|POST /_sandbox/webhook_endpoints {"url", "secret"};  DELETE .../{id}
POST /_sandbox/customers/{customer}/open_invoices  {"count": 1-200000, "amount", "currency",
                                                  "subscription"}
                                                 that many one-line invoices, finalized
                                                 (open) at once: a dunning benchmark's
                                                 backlog without 100,000 API calls; with
                                                 a subscription of the customer's, they
                                                 are its renewals (subscription_cycle)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import collection, disputing, invoicing, payments, refunding, timeline
from .cards import DECLINE_MESSAGES
from .errors import StripeError, invalid
from .events import current_request
from .faults import KINDS, Fault
from .forms import decode
from .ids import new_id
from .resources import checkout, setup_intents
from .sandbox import SANDBOX, Sandbox
from .settings import SettingsError
from .store import Obj

Action = Callable[[Sandbox, dict[str, Any], dict[str, str]], Obj]


def _ok(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, indent=2))


async def _body(request: web.Request) -> dict[str, Any]:
    text = await request.text()
    if not text.strip():
        return {}
    if request.content_type == "application/x-www-form-urlencoded":
        return decode(text)
    try:
        data = json.loads(text)
    except ValueError:
        raise web.HTTPBadRequest(text="body must be JSON") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return data


def _refused(message: str) -> web.Response:
    return _ok({"error": {"type": "invalid_request_error", "message": message}}, 400)


def _outcome(body: dict[str, Any], allowed: tuple[str, ...]) -> str:
    outcome = str(body.get("outcome", allowed[0]))
    if outcome not in allowed:
        raise invalid(f"outcome must be one of {', '.join(allowed)}", param="outcome")
    return outcome


def _action(act: Action, *, as_request: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Run a state change like an API call would: atomically, errors in Stripe's envelope.

    ``as_request``: the customer does it through Stripe (a page, stripe.js), so its
    events carry a request id; otherwise it is the network or time (request null).
    """

    async def handle(request: web.Request) -> web.Response:
        body = await _body(request)
        request_id = new_id("req", 14)
        token = current_request.set((request_id if as_request else None, None))
        try:
            return _ok(act(request.app[SANDBOX], body, dict(request.match_info)))
        except StripeError as exc:
            return _ok(exc.body(request_id), exc.status)
        finally:
            current_request.reset(token)

    return handle


# -- the account and the emulator itself ------------------------------------------


async def health(_: web.Request) -> web.Response:
    return _ok({"ok": True})


async def reset(request: web.Request) -> web.Response:
    request.app[SANDBOX].reset()
    return _ok({"reset": True})


async def get_settings(request: web.Request) -> web.Response:
    return _ok(request.app[SANDBOX].settings.describe())


async def set_settings(request: web.Request) -> web.Response:
    settings = request.app[SANDBOX].settings
    try:
        settings.update(await _body(request))
    except SettingsError as exc:
        return _refused(str(exc))
    return _ok(settings.describe())


def tick(sb: Sandbox, _: dict[str, Any], __: dict[str, str]) -> Obj:
    return {"ran": timeline.run_until(sb, None, sb.now())}


async def add_fault(request: web.Request) -> web.Response:
    body = await _body(request)
    kind = body.get("kind")
    if kind not in KINDS:
        return _refused(f"kind must be one of {KINDS}")
    fault = Fault(
        kind=kind,
        remaining=int(body.get("count", 1)),
        delay_ms=int(body.get("delay_ms", 1000 if kind in ("slow", "late_answer") else 0)),
        path_prefix=body.get("path_prefix"),
        retry_after=int(body.get("retry_after", 1)),
    )
    faults = request.app[SANDBOX].faults
    faults.add(fault)
    return _ok({"faults": faults.describe()})


async def list_faults(request: web.Request) -> web.Response:
    return _ok({"faults": request.app[SANDBOX].faults.describe()})


async def clear_faults(request: web.Request) -> web.Response:
    request.app[SANDBOX].faults.clear()
    return _ok({"faults": []})


async def requests(request: web.Request) -> web.Response:
    prefix = request.query.get("path_prefix", "")
    method = request.query.get("method")
    data = [
        r
        for r in request.app[SANDBOX].requests
        if r["path"].startswith(prefix) and (method is None or r["method"] == method.upper())
    ]
    return _ok({"data": data, "count": len(data)})


async def clear_requests(request: web.Request) -> web.Response:
    request.app[SANDBOX].requests.clear()
    return _ok({"data": [], "count": 0})


# -- the customer ---------------------------------------------------------------


def fail_next(sb: Sandbox, body: dict[str, Any], match: dict[str, str]) -> Obj:
    pm_id = match["pm"]
    decline = str(body.get("decline_code", "generic_decline"))
    if decline not in DECLINE_MESSAGES:
        raise invalid(f"decline_code must be one of {sorted(DECLINE_MESSAGES)}")
    sb.store.get("payment_method", pm_id)
    queue = sb.store.fail_next.setdefault(pm_id, [])
    queue.extend([decline] * int(body.get("count", 1)))
    return {"payment_method": pm_id, "queued_failures": list(queue)}


def authenticate_payment(sb: Sandbox, body: dict[str, Any], match: dict[str, str]) -> Obj:
    pi = sb.store.get("payment_intent", match["id"])
    now = sb.time_of(pi)
    succeeded = _outcome(body, ("succeeded", "failed")) == "succeeded"
    payments.authenticate(sb, pi, now, succeeded=succeeded)
    collection.payment_intent_changed(sb, pi, now)
    return pi


def authenticate_setup(sb: Sandbox, body: dict[str, Any], match: dict[str, str]) -> Obj:
    si = sb.store.get("setup_intent", match["id"])
    succeeded = _outcome(body, ("succeeded", "failed")) == "succeeded"
    return setup_intents.authenticate(sb, si, succeeded=succeeded)


def complete_checkout(sb: Sandbox, body: dict[str, Any], match: dict[str, str]) -> Obj:
    return checkout.complete(sb, match["id"], body)


# -- the card network, the banks, time ---------------------------------------------


def settle_payment(sb: Sandbox, body: dict[str, Any], match: dict[str, str]) -> Obj:
    pi = sb.store.get("payment_intent", match["id"])
    now = sb.time_of(pi)
    # Without an outcome the debit settles as its test account says.
    outcome = _outcome(body, ("auto", "succeeded", "failed"))
    payments.settle(sb, pi, now, outcome, body.get("failure_code"))
    collection.payment_intent_changed(sb, pi, now)
    return pi


def settle_refund(sb: Sandbox, body: dict[str, Any], match: dict[str, str]) -> Obj:
    refund = sb.store.get("refund", match["id"])
    # Without an outcome the refund settles as its test card says.
    scheduled = sb.store.settlements.get(refund["id"], (0, "succeeded"))[1]
    outcome = _outcome({"outcome": scheduled, **body}, ("succeeded", "failed"))
    return refunding.settle(sb, refund, outcome, body.get("failure_reason"))


def dispute(sb: Sandbox, body: dict[str, Any], match: dict[str, str]) -> Obj:
    charge = sb.store.get("charge", match["id"])
    amount = body.get("amount")
    return disputing.open_dispute(
        sb,
        charge,
        sb.time_of(charge),
        reason=str(body.get("reason", "fraudulent")),
        amount=int(amount) if amount is not None else None,
        inquiry=bool(body.get("inquiry", False)),
    )


def close_dispute(sb: Sandbox, body: dict[str, Any], match: dict[str, str]) -> Obj:
    found = sb.store.get("dispute", match["id"])
    return disputing.close(sb, found, _outcome(body, ("won", "lost")))


def expire_checkout(sb: Sandbox, _: dict[str, Any], match: dict[str, str]) -> Obj:
    session = sb.store.get("checkout.session", match["id"])
    if session["status"] != "open":
        raise invalid(f"This Checkout Session is {session['status']}, not open.")
    return checkout.expire_session(sb, session)


# -- webhook delivery ---------------------------------------------------------------


async def delivery_status(request: web.Request) -> web.Response:
    return _ok(request.app[SANDBOX].delivery.stats())


async def delivery_configure(request: web.Request) -> web.Response:
    body = await _body(request)
    delivery = request.app[SANDBOX].delivery
    if "chaos" in body:
        delivery.shuffle = bool(body["chaos"])
        delivery.duplicates = 0.3 if body["chaos"] else 0.0
    if "shuffle" in body:
        delivery.shuffle = bool(body["shuffle"])
    if "duplicates" in body:
        value = body["duplicates"]
        delivery.duplicates = 0.3 if value is True else float(value or 0)
    if "seed" in body:
        delivery.rng.seed(body["seed"])
    if "paused" in body:
        delivery.set_paused(bool(body["paused"]))
    return _ok(delivery.stats())


async def delivery_flush(request: web.Request) -> web.Response:
    body = await _body(request)
    delivery = request.app[SANDBOX].delivery
    drained = await delivery.flush(float(body.get("timeout", 10)))
    return _ok({"drained": drained, **delivery.stats()})


async def delivery_log(request: web.Request) -> web.Response:
    return _ok({"data": request.app[SANDBOX].delivery.log})


async def add_endpoint(request: web.Request) -> web.Response:
    body = await _body(request)
    url, secret = body.get("url"), body.get("secret")
    if not url or not secret:
        return _refused("url and secret are required")
    endpoint = request.app[SANDBOX].delivery.add_endpoint(str(url), str(secret))
    return _ok({"id": endpoint.id, "url": endpoint.url})


async def list_endpoints(request: web.Request) -> web.Response:
    return _ok({"data": request.app[SANDBOX].delivery.stats()["endpoints"]})


async def remove_endpoint(request: web.Request) -> web.Response:
    removed = await request.app[SANDBOX].delivery.remove_endpoint(request.match_info["id"])
    return _ok({"id": request.match_info["id"], "deleted": removed})


_MAX_BULK = 200_000


def open_invoices(sb: Sandbox, body: dict[str, Any], match: dict[str, str]) -> Obj:
    """Open invoices for a customer, built and finalized as ``POST /v1/invoices``
    and ``.../finalize`` would (events included), in one step."""
    customer = sb.store.get("customer", match["customer"])
    count, amount = body.get("count", 1), body.get("amount", 1000)
    if not isinstance(count, int) or not 1 <= count <= _MAX_BULK:
        raise invalid(f"count must be an integer from 1 to {_MAX_BULK}", param="count")
    if not isinstance(amount, int) or amount < 50:
        raise invalid("amount must be an integer of at least 50", param="amount")
    currency = str(body.get("currency", "usd"))
    subscription = None
    if body.get("subscription") is not None:
        subscription = sb.store.get("subscription", str(body["subscription"]), "subscription")
        if subscription["customer"] != customer["id"]:
            raise invalid(
                f"The subscription {subscription['id']} does not belong to this customer.",
                param="subscription",
            )
    now = sb.now(customer["test_clock"])
    ids = []
    for _ in range(count):
        invoice = invoicing.new_invoice(
            sb,
            customer=customer,
            subscription=subscription,
            billing_reason="manual" if subscription is None else "subscription_cycle",
            lines=[invoicing.LineSpec(amount, "Open invoice", now, now)],
            period_start=now,
            period_end=now,
            created=now,
            currency=currency,
        )
        invoicing.finalize(sb, invoice, now)
        ids.append(invoice["id"])
    return {"object": "list", "data": ids}


CUSTOMER_ACTIONS: dict[str, Action] = {
    "/_sandbox/payment_methods/{pm}/fail_next": fail_next,
    "/_sandbox/payment_intents/{id}/authenticate": authenticate_payment,
    "/_sandbox/setup_intents/{id}/authenticate": authenticate_setup,
    "/_sandbox/checkout/sessions/{id}/complete": complete_checkout,
}
WORLD_ACTIONS: dict[str, Action] = {
    "/_sandbox/tick": tick,
    "/_sandbox/payment_intents/{id}/settle": settle_payment,
    "/_sandbox/refunds/{id}/settle": settle_refund,
    "/_sandbox/charges/{id}/dispute": dispute,
    "/_sandbox/disputes/{id}/close": close_dispute,
    "/_sandbox/checkout/sessions/{id}/expire": expire_checkout,
    "/_sandbox/customers/{customer}/open_invoices": open_invoices,
}


def setup(app: web.Application) -> None:
    router = app.router
    router.add_get("/_sandbox/health", health)
    router.add_post("/_sandbox/reset", reset)
    router.add_get("/_sandbox/settings", get_settings)
    router.add_post("/_sandbox/settings", set_settings)
    router.add_post("/_sandbox/faults", add_fault)
    router.add_get("/_sandbox/faults", list_faults)
    router.add_delete("/_sandbox/faults", clear_faults)
    router.add_get("/_sandbox/requests", requests)
    router.add_delete("/_sandbox/requests", clear_requests)
    for path, act in CUSTOMER_ACTIONS.items():
        router.add_post(path, _action(act, as_request=True))
    for path, act in WORLD_ACTIONS.items():
        router.add_post(path, _action(act, as_request=False))
    router.add_get("/_sandbox/delivery", delivery_status)
    router.add_post("/_sandbox/delivery", delivery_configure)
    router.add_post("/_sandbox/delivery/flush", delivery_flush)
    router.add_get("/_sandbox/delivery/log", delivery_log)
    router.add_post("/_sandbox/webhook_endpoints", add_endpoint)
    router.add_get("/_sandbox/webhook_endpoints", list_endpoints)
    router.add_delete("/_sandbox/webhook_endpoints/{id}", remove_endpoint)
