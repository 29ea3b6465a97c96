"""Events API: list (``created`` range, ``type`` with ``*`` wildcard, ``types[]``,
cursor pagination newest first) and retrieve."""

from __future__ import annotations

import fnmatch

from ..api import LIST_PARAMS, Call, Route, paginate
from ..errors import invalid
from ..sandbox import Sandbox
from ..store import Obj


def list_(sb: Sandbox, call: Call) -> Obj:
    p = call.p(LIST_PARAMS | {"type", "types", "delivery_success"})
    objs = sb.store.all("event")
    if p.str("type") and p.has("types"):
        raise invalid("You may only specify one of these parameters: type, types.", param="types")
    if p.str("type"):
        pattern = p.req_str("type")
        objs = [e for e in objs if fnmatch.fnmatchcase(e["type"], pattern)]
    if p.has("types"):
        wanted = set(p.list("types"))
        if len(wanted) > 20:
            raise invalid("You may pass at most 20 types.", param="types")
        objs = [e for e in objs if e["type"] in wanted]
    if p.has("delivery_success"):
        pending = p.bool("delivery_success")
        objs = [e for e in objs if (e["pending_webhooks"] == 0) == pending]
    return paginate(objs, call, "/v1/events")


def retrieve(sb: Sandbox, call: Call) -> Obj:
    return sb.store.get("event", call.match["id"])


ROUTES: list[Route] = [
    ("GET", "/v1/events", list_),
    ("GET", "/v1/events/{id}", retrieve),
]
