"""The aiohttp application: Stripe's /v1 HTTP boundary plus /_sandbox controls.

Every /v1 request goes through :func:`_serve`, which does what Stripe's edge does
before and after the resource logic: fault injection, API key check (secret
keys; publishable keys for the few endpoints stripe.js calls), form decoding,
idempotency (replay, 409 for a key still executing), ``expand[]``, error
envelopes and the ``Request-Id`` / ``Stripe-Version`` / ``Idempotent-Replayed``
headers.  The endpoint itself runs synchronously, so its state changes are
atomic (see :mod:`stripe_sandbox.sandbox`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiohttp import web

from . import control, timeline
from .api import PUBLISHABLE_ROUTES, Call, Handler
from .delivery import DEFAULT_BACKOFF, DeliveryManager
from .errors import (
    StripeError,
    auth_invalid,
    auth_missing,
    invalid,
    not_found_url,
    publishable_key_refused,
)
from .events import API_VERSION, current_request
from .expand import expand
from .faults import Fault
from .forms import FormError, decode
from .ids import new_id
from .params import Params
from .resources import ROUTES
from .sandbox import SANDBOX, Sandbox
from .settings import AccountSettings
from .store import snapshot

log = logging.getLogger("stripe_sandbox")

JSON = "application/json"


def _api_key(request: web.Request, params: dict[str, Any]) -> str:
    header = request.headers.get("Authorization", "")
    key = ""
    if header.startswith("Bearer "):
        key = header[len("Bearer ") :].strip()
    elif header.startswith("Basic "):
        try:
            key = base64.b64decode(header[6:]).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            key = ""
    if not key:
        # stripe.js sends its publishable key as the ``key`` parameter.
        key = str(params.pop("key", "") or "")
    if not key:
        raise auth_missing()
    if not key.startswith(("sk_test_", "pk_test_")):
        raise auth_invalid(key)
    return key


def _json_response(status: int, body: Any, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, body=_encode(body), content_type=JSON, headers=headers)


def _fault_error(fault: Fault) -> StripeError:
    if fault.kind == "rate_limit":
        # Stripe sets Stripe-Should-Retry on lock-timeout 429s; stripe-python only
        # retries a 429 when it is present.
        return StripeError(
            429,
            "invalid_request_error",
            "Request rate limit exceeded. You can learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
            code="rate_limit",
            headers={"Retry-After": str(fault.retry_after), "Stripe-Should-Retry": "true"},
        )
    if fault.kind == "permission":
        # Stripe's answer to a restricted key without the permission (no retry
        # helps: Stripe-Should-Retry is false).
        return StripeError(
            403,
            "invalid_request_error",
            "The provided key 'rk_test_****' does not have the required permissions "
            "for this endpoint on account 'acct_sandbox'.",
            headers={"Stripe-Should-Retry": "false"},
        )
    return StripeError(
        500,
        "api_error",
        "An unknown error occurred (injected fault).",
        headers={"Stripe-Should-Retry": "true"},
    )


async def _serve(sb: Sandbox, request: web.Request, fn: Handler) -> web.Response:
    request_id = new_id("req", 14)
    method = request.method
    idem_key = request.headers.get("Idempotency-Key") if method == "POST" else None
    entry: dict[str, Any] = {
        "request_id": request_id,
        "method": method,
        "path": request.path,
        "query": request.query_string,
        "idempotency_key": idem_key,
        "status": None,
        "fault": None,
        "replayed": False,
        "at": time.time(),
    }
    sb.requests.append(entry)
    headers = {
        "Request-Id": request_id,
        "Stripe-Version": request.headers.get("Stripe-Version", API_VERSION),
    }
    if idem_key:
        headers["Idempotency-Key"] = idem_key
    try:
        # Stripe's edge, before any endpoint runs: nothing here is saved for a key.
        fault = sb.faults.take(request.path)
        if fault is not None:
            entry["fault"] = fault.kind
            if fault.kind not in ("slow", "late_answer"):
                raise _fault_error(fault)
        try:
            params = decode(request.query_string)
            if method == "POST":
                params.update(decode(await request.text()))
        except FormError as exc:
            raise invalid(str(exc)) from None
        api_key = _api_key(request, params)
        publishable = api_key.startswith("pk_")
        route = request.match_info.route.resource
        if publishable and (method, route.canonical if route else "") not in PUBLISHABLE_ROUTES:
            raise publishable_key_refused()
        call = Call(method, request.path, params, dict(request.match_info), publishable=publishable)
        if not idem_key:
            if fault is not None and fault.kind == "slow":
                await asyncio.sleep(fault.delay_ms / 1000)
            status, body, _ = _execute(sb, fn, call, request_id=request_id, headers=headers)
            entry["status"] = status
            # Encoded now: the answer is the object as this request left it.
            response = _json_response(status, body, headers)
            if fault is not None and fault.kind == "late_answer":
                await asyncio.sleep(fault.delay_ms / 1000)
            return response
        return await _serve_idempotent(
            sb,
            call,
            fn,
            api_key,
            idem_key,
            fault=fault,
            request_id=request_id,
            headers=headers,
            entry=entry,
        )
    except StripeError as exc:
        entry["status"] = exc.status
        headers.update(exc.headers)
        return _json_response(exc.status, exc.body(request_id), headers)


async def _serve_idempotent(
    sb: Sandbox,
    call: Call,
    fn: Handler,
    api_key: str,
    idem_key: str,
    *,
    fault: Fault | None,
    request_id: str,
    headers: dict[str, str],
    entry: dict[str, Any],
) -> web.Response:
    saved = sb.idempotency.begin(api_key, idem_key, call.method, call.path, call.params)
    if saved is not None:
        entry.update(status=saved.status, replayed=True)
        headers.update(saved.headers)
        headers["Idempotent-Replayed"] = "true"
        return web.Response(
            status=saved.status, body=saved.body, content_type=JSON, headers=headers
        )
    finished = False
    try:
        if fault is not None and fault.kind == "slow":
            # A slow request holds its key while it runs: a second request with the
            # same key meanwhile gets the 409 a concurrent duplicate gets on Stripe.
            await asyncio.sleep(fault.delay_ms / 1000)
        status, body, save = _execute(sb, fn, call, request_id=request_id, headers=headers)
        payload = _encode(body)
        if save:
            sb.idempotency.finish(
                api_key,
                idem_key,
                method=call.method,
                path=call.path,
                params=call.params,
                status=status,
                body=payload,
                headers={k: v for k, v in headers.items() if k.startswith("Stripe-Should")},
            )
            finished = True
        entry["status"] = status
        if fault is not None and fault.kind == "late_answer":
            await asyncio.sleep(fault.delay_ms / 1000)
        return web.Response(status=status, body=payload, content_type=JSON, headers=headers)
    finally:
        if not finished:
            sb.idempotency.abandon(api_key, idem_key)


def _encode(body: Any) -> bytes:
    # Stripe pretty-prints its answers; orjson does it several times faster
    # than json, which showed as a tenth of the sandbox's time per request.
    try:
        return orjson.dumps(body, option=orjson.OPT_INDENT_2)
    except TypeError:
        return json.dumps(body, indent=2).encode()


def _execute(
    sb: Sandbox, fn: Handler, call: Call, *, request_id: str, headers: dict[str, str]
) -> tuple[int, Any, bool]:
    """Run the endpoint: (status, body, whether the result is saved for its key)."""
    token = current_request.set((request_id, headers.get("Idempotency-Key")))
    try:
        result = fn(sb, call)
        paths = Params(call.params).expand()
        # The caller encodes the answer before anything else runs (no await in
        # between), so the stored object itself can be encoded; only an
        # expansion, which rewrites the answer, works on a copy.
        return 200, expand(sb, snapshot(result), paths) if paths else result, True
    except StripeError as exc:
        headers.update(exc.headers)
        return exc.status, exc.body(request_id), not exc.validation
    except Exception:
        # A bug in the emulator must look like a Stripe 500 the client will not retry,
        # and must be loud in the emulator's log.
        log.exception("sandbox handler failed for %s %s", call.method, call.path)
        headers["Stripe-Should-Retry"] = "false"
        body = StripeError(500, "api_error", "Sandbox internal error (see emulator log).")
        return 500, body.body(request_id), True
    finally:
        current_request.reset(token)


def _api_handler(fn: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        return await _serve(request.app[SANDBOX], request, fn)

    return handle


def _unknown(sb: Sandbox, call: Call) -> dict[str, Any]:
    raise not_found_url(call.method, call.path)


def create_app(
    *,
    webhooks: Iterable[tuple[str, str]] = (),
    chaos: bool = False,
    chaos_seed: int | None = None,
    backoff: tuple[float, ...] = DEFAULT_BACKOFF,
    max_attempts: int = 5,
    delivery_timeout: float = 5.0,
    settings: AccountSettings | None = None,
) -> web.Application:
    """Build the emulator app (usable in-process with aiohttp's test utilities)."""
    delivery = DeliveryManager(
        backoff=backoff,
        max_attempts=max_attempts,
        timeout=delivery_timeout,
        chaos=chaos,
        seed=chaos_seed,
    )
    for url, secret in webhooks:
        delivery.add_endpoint(url, secret)
    sandbox = Sandbox(delivery, settings)
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[SANDBOX] = sandbox
    for method, path, fn in ROUTES:
        app.router.add_route(method, path, _api_handler(fn))
    app.router.add_route("*", "/v1/{tail:.*}", _api_handler(_unknown))
    control.setup(app)

    async def run(_: web.Application) -> AsyncIterator[None]:
        await delivery.start()
        clock = asyncio.get_running_loop().create_task(timeline.tick_forever(sandbox))
        yield
        await timeline.stop(clock)
        await delivery.stop()

    app.cleanup_ctx.append(run)
    return app
