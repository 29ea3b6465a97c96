"""Subscription schedules: create (``from_subscription``), retrieve, update phases,
release, cancel, list.  What they do over time is in :mod:`schedules`."""

from __future__ import annotations

from .. import schedules
from ..api import LIST_PARAMS, Call, Route, paginate
from ..errors import invalid
from ..params import merge_metadata
from ..sandbox import Sandbox
from ..store import Obj

CREATE_FIELDS = {
    "from_subscription",
    "customer",
    "phases",
    "start_date",
    "end_behavior",
    "metadata",
    "default_settings",
    "billing_mode",
    "customer_account",
}
UPDATE_FIELDS = {
    "phases",
    "end_behavior",
    "metadata",
    "proration_behavior",
    "default_settings",
}


def create(sb: Sandbox, call: Call) -> Obj:
    p = call.p(CREATE_FIELDS)
    sub_id = p.str("from_subscription")
    if not sub_id:
        raise invalid(
            "The sandbox creates subscription schedules from an existing subscription: "
            "pass from_subscription (then update its phases).",
            param="from_subscription",
        )
    if p.has("phases") or p.has("customer") or p.has("start_date"):
        raise invalid(
            "You cannot set `phases`, `customer` or `start_date` when `from_subscription` is "
            "set; update the schedule's phases afterwards.",
            param="from_subscription",
        )
    sub = sb.store.get("subscription", sub_id, "from_subscription")
    schedule = schedules.from_subscription(sb, sub, sb.time_of(sub))
    if p.str("end_behavior") or p.has("metadata"):
        schedules.update(
            sb,
            schedule,
            phases=None,
            end_behavior=p.str("end_behavior"),
            metadata=merge_metadata({}, p.raw("metadata")) if p.has("metadata") else None,
            proration_behavior=None,
        )
    return schedule


def retrieve(sb: Sandbox, call: Call) -> Obj:
    return sb.store.get("subscription_schedule", call.match["id"])


def update(sb: Sandbox, call: Call) -> Obj:
    p = call.p(UPDATE_FIELDS)
    schedule = sb.store.get("subscription_schedule", call.match["id"])
    return schedules.update(
        sb,
        schedule,
        phases=p.list("phases") if p.has("phases") else None,
        end_behavior=p.str("end_behavior"),
        metadata=merge_metadata(schedule["metadata"], p.raw("metadata"))
        if p.has("metadata")
        else None,
        proration_behavior=p.str("proration_behavior"),
    )


def release(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"preserve_cancel_date"})
    schedule = sb.store.get("subscription_schedule", call.match["id"])
    return schedules.release(
        sb, schedule, sb.time_of(schedule), p.bool("preserve_cancel_date", default=True)
    )


def cancel(sb: Sandbox, call: Call) -> Obj:
    call.p({"invoice_now", "prorate"})
    schedule = sb.store.get("subscription_schedule", call.match["id"])
    return schedules.cancel(sb, schedule, sb.time_of(schedule))


def list_(sb: Sandbox, call: Call) -> Obj:
    p = call.p(
        LIST_PARAMS
        | {
            "customer",
            "scheduled",
            "completed_at",
            "canceled_at",
            "released_at",
            "customer_account",
        }
    )
    objs = sb.store.all("subscription_schedule")
    if p.str("customer"):
        objs = [o for o in objs if o["customer"] == p.str("customer")]
    if p.has("scheduled"):
        objs = [o for o in objs if (o["status"] == "not_started") == p.bool("scheduled")]
    return paginate(objs, call, "/v1/subscription_schedules")


ROUTES: list[Route] = [
    ("POST", "/v1/subscription_schedules", create),
    ("GET", "/v1/subscription_schedules", list_),
    ("GET", "/v1/subscription_schedules/{id}", retrieve),
    ("POST", "/v1/subscription_schedules/{id}", update),
    ("POST", "/v1/subscription_schedules/{id}/release", release),
    ("POST", "/v1/subscription_schedules/{id}/cancel", cancel),
]
