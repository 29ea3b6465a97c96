"""/_sandbox control endpoints (JSON in, JSON out): what tests use to steer the emulator.

POST /_sandbox/reset                               clear all state, logs and queues
GET  /_sandbox/health                              liveness
POST /_sandbox/faults        {"kind","count","delay_ms","path_prefix","retry_after"}
GET|DELETE /_sandbox/faults
GET|DELETE /_sandbox/requests  (?path_prefix=&method=)  log of /v1 requests
POST /_sandbox/payment_methods/{pm}/fail_next {"count", "decline_code"}
POST /_sandbox/checkout/sessions/{id}/complete {"payment_method", "email", "name"}
GET  /_sandbox/delivery                            pending/delivered/failed counts
POST /_sandbox/delivery  {"paused", "shuffle", "duplicates", "chaos"}
POST /_sandbox/delivery/flush {"timeout"}          wait until the outbox is drained
GET  /_sandbox/delivery/log                        every delivery attempt
GET|POST /_sandbox/webhook_endpoints {"url", "secret"};  DELETE .../{id}
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .cards import DECLINE_MESSAGES
from .errors import StripeError, invalid
from .events import current_request
from .faults import KINDS, Fault
from .forms import decode
from .ids import new_id
from .resources import checkout
from .sandbox import Sandbox


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


def setup(app: web.Application, sb: Sandbox) -> None:
    async def health(_: web.Request) -> web.Response:
        return _ok({"ok": True})

    async def reset(_: web.Request) -> web.Response:
        async with sb.lock:
            sb.reset()
        return _ok({"reset": True})

    async def add_fault(request: web.Request) -> web.Response:
        body = await _body(request)
        kind = body.get("kind")
        if kind not in KINDS:
            return _ok({"error": f"kind must be one of {KINDS}"}, 400)
        fault = Fault(
            kind=kind,
            remaining=int(body.get("count", 1)),
            delay_ms=int(body.get("delay_ms", 1000 if kind == "slow" else 0)),
            path_prefix=body.get("path_prefix"),
            retry_after=int(body.get("retry_after", 1)),
        )
        sb.faults.add(fault)
        return _ok({"faults": sb.faults.describe()})

    async def list_faults(_: web.Request) -> web.Response:
        return _ok({"faults": sb.faults.describe()})

    async def clear_faults(_: web.Request) -> web.Response:
        sb.faults.clear()
        return _ok({"faults": []})

    async def requests(request: web.Request) -> web.Response:
        prefix = request.query.get("path_prefix", "")
        method = request.query.get("method")
        data = [
            r
            for r in sb.requests
            if r["path"].startswith(prefix) and (method is None or r["method"] == method.upper())
        ]
        return _ok({"data": data, "count": len(data)})

    async def clear_requests(_: web.Request) -> web.Response:
        sb.requests.clear()
        return _ok({"data": [], "count": 0})

    async def fail_next(request: web.Request) -> web.Response:
        body = await _body(request)
        pm_id = request.match_info["pm"]
        decline = str(body.get("decline_code", "generic_decline"))
        if decline not in DECLINE_MESSAGES:
            return _ok({"error": f"decline_code must be one of {sorted(DECLINE_MESSAGES)}"}, 400)
        async with sb.lock:
            if sb.store.maybe("payment_method", pm_id) is None:
                return _ok({"error": f"No such PaymentMethod: '{pm_id}'"}, 404)
            queue = sb.store.fail_next.setdefault(pm_id, [])
            queue.extend([decline] * int(body.get("count", 1)))
        return _ok({"payment_method": pm_id, "queued_failures": list(queue)})

    async def complete_checkout(request: web.Request) -> web.Response:
        body = await _body(request)
        request_id = new_id("req", 14)
        async with sb.lock:
            token = current_request.set((request_id, None))
            try:
                session = checkout.complete(sb, request.match_info["id"], body)
                return _ok(session)
            except StripeError as exc:
                return _ok(exc.body(request_id), exc.status)
            finally:
                current_request.reset(token)

    async def delivery_status(_: web.Request) -> web.Response:
        return _ok(sb.delivery.stats())

    async def delivery_configure(request: web.Request) -> web.Response:
        body = await _body(request)
        delivery = sb.delivery
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
        drained = await sb.delivery.flush(float(body.get("timeout", 10)))
        return _ok({"drained": drained, **sb.delivery.stats()})

    async def delivery_log(_: web.Request) -> web.Response:
        return _ok({"data": sb.delivery.log})

    async def add_endpoint(request: web.Request) -> web.Response:
        body = await _body(request)
        url, secret = body.get("url"), body.get("secret")
        if not url or not secret:
            raise invalid("url and secret are required")
        endpoint = sb.delivery.add_endpoint(str(url), str(secret))
        return _ok({"id": endpoint.id, "url": endpoint.url})

    async def list_endpoints(_: web.Request) -> web.Response:
        return _ok({"data": sb.delivery.stats()["endpoints"]})

    async def remove_endpoint(request: web.Request) -> web.Response:
        removed = await sb.delivery.remove_endpoint(request.match_info["id"])
        return _ok({"id": request.match_info["id"], "deleted": removed})

    router = app.router
    router.add_get("/_sandbox/health", health)
    router.add_post("/_sandbox/reset", reset)
    router.add_post("/_sandbox/faults", add_fault)
    router.add_get("/_sandbox/faults", list_faults)
    router.add_delete("/_sandbox/faults", clear_faults)
    router.add_get("/_sandbox/requests", requests)
    router.add_delete("/_sandbox/requests", clear_requests)
    router.add_post("/_sandbox/payment_methods/{pm}/fail_next", fail_next)
    router.add_post("/_sandbox/checkout/sessions/{id}/complete", complete_checkout)
    router.add_get("/_sandbox/delivery", delivery_status)
    router.add_post("/_sandbox/delivery", delivery_configure)
    router.add_post("/_sandbox/delivery/flush", delivery_flush)
    router.add_get("/_sandbox/delivery/log", delivery_log)
    router.add_post("/_sandbox/webhook_endpoints", add_endpoint)
    router.add_get("/_sandbox/webhook_endpoints", list_endpoints)
    router.add_delete("/_sandbox/webhook_endpoints/{id}", remove_endpoint)
