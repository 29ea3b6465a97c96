"""Test clocks: create, retrieve, list, delete, advance.

``advance`` runs everything due up to ``frozen_time`` synchronously and in time
order, so results are deterministic; the response says ``advancing`` like
Stripe's, and the clock reads ``ready`` on the next retrieve, so clients that
poll for ``ready`` work unchanged.
"""

from __future__ import annotations

from .. import timeline
from ..api import LIST_PARAMS, Call, Route, paginate
from ..clock import to_ts, wall_now
from ..errors import invalid
from ..fixtures import template
from ..ids import new_id
from ..sandbox import Sandbox
from ..store import Obj, snapshot

RETENTION = 30 * 86_400


def create(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"frozen_time", "name"})
    frozen = p.int("frozen_time", req=True)
    clock = template("test_helpers.test_clock")
    now = to_ts(wall_now())
    clock.update(
        {
            "id": new_id("clock"),
            "object": "test_helpers.test_clock",
            "created": now,
            "deletes_after": now + RETENTION,
            "frozen_time": frozen,
            "livemode": False,
            "name": p.str("name"),
            "status": "ready",
            "status_details": {},
        }
    )
    sb.store.add("test_clock", clock)
    sb.events.emit("test_helpers.test_clock.created", clock)
    return clock


def retrieve(sb: Sandbox, call: Call) -> Obj:
    return sb.store.get("test_clock", call.match["id"])


def list_(sb: Sandbox, call: Call) -> Obj:
    call.p(LIST_PARAMS)
    return paginate(sb.store.all("test_clock"), call, "/v1/test_helpers/test_clocks")


def delete(sb: Sandbox, call: Call) -> Obj:
    clock = sb.store.get("test_clock", call.match["id"])
    for customer in list(sb.store.objects["customer"].values()):
        if customer["test_clock"] == clock["id"]:
            sb.store.remove("customer", customer["id"])
    sb.store.remove("test_clock", clock["id"])
    sb.events.emit("test_helpers.test_clock.deleted", clock)
    return {"id": clock["id"], "object": "test_helpers.test_clock", "deleted": True}


def advance(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"frozen_time"})
    clock = sb.store.get("test_clock", call.match["id"])
    target = p.int("frozen_time", req=True)
    assert target is not None
    if target <= clock["frozen_time"]:
        raise invalid(
            "The test clock can only be advanced to a time after its current frozen_time.",
            param="frozen_time",
        )
    clock["status"] = "advancing"
    clock["status_details"] = {"advancing": {"target_frozen_time": target}}
    sb.events.emit("test_helpers.test_clock.advancing", clock)
    timeline.run_until(sb, clock, target)
    response = snapshot(clock)
    clock["status"] = "ready"
    clock["status_details"] = {}
    sb.events.emit("test_helpers.test_clock.ready", clock)
    return response


ROUTES: list[Route] = [
    ("POST", "/v1/test_helpers/test_clocks", create),
    ("GET", "/v1/test_helpers/test_clocks", list_),
    ("GET", "/v1/test_helpers/test_clocks/{id}", retrieve),
    ("DELETE", "/v1/test_helpers/test_clocks/{id}", delete),
    ("POST", "/v1/test_helpers/test_clocks/{id}/advance", advance),
]
