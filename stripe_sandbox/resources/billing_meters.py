"""Usage-based billing: meters, meter events and their summaries.

A meter sums (or counts, or keeps the last of) the ``value`` of the meter
events sent under its ``event_name``, per customer. Meter events cannot be
retrieved, only summarised per customer over a time range, as on Stripe. An
``identifier`` names one event: a second event with the same identifier is
refused (Stripe enforces uniqueness for at least 24 hours), so a client that
retries with its identifier is never billed twice.
"""

from __future__ import annotations

from ..api import LIST_PARAMS, Call, Route, paginate
from ..clock import to_ts, wall_now
from ..errors import invalid, required
from ..fixtures import template
from ..ids import new_id, token
from ..metering import number, usage
from ..params import Params
from ..sandbox import Sandbox
from ..store import Obj

FORMULAS = ("sum", "count", "last")


def _now() -> int:
    return to_ts(wall_now())


def create_meter(sb: Sandbox, call: Call) -> Obj:
    p = call.p(
        {
            "display_name",
            "event_name",
            "default_aggregation",
            "customer_mapping",
            "value_settings",
            "event_time_window",
        }
    )
    display = p.str("display_name", req=True)
    event_name = p.str("event_name", req=True)
    formula = Params(p.dict("default_aggregation")).str("formula")
    if formula is None:
        raise required("default_aggregation[formula]")
    if formula not in FORMULAS:
        raise invalid(
            f"Invalid default_aggregation[formula]: must be one of {', '.join(FORMULAS)}",
            param="default_aggregation[formula]",
        )
    if any(m["event_name"] == event_name and m["status"] == "active" for m in _meters(sb)):
        raise invalid(
            f"An active meter with event_name `{event_name}` already exists.",
            param="event_name",
            code="resource_already_exists",
        )
    mapping = Params(p.dict("customer_mapping"))
    value = Params(p.dict("value_settings"))
    now = _now()
    meter = template("billing.meter")
    meter.update(
        {
            "id": new_id("mtr_test", 24),
            "object": "billing.meter",
            "created": now,
            "updated": now,
            "customer_mapping": {
                "event_payload_key": mapping.str("event_payload_key") or "stripe_customer_id",
                "type": mapping.str("type") or "by_id",
            },
            "default_aggregation": {"formula": formula},
            "display_name": display,
            "event_name": event_name,
            "event_time_window": p.str("event_time_window"),
            "livemode": False,
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "value_settings": {"event_payload_key": value.str("event_payload_key") or "value"},
        }
    )
    sb.store.add("billing.meter", meter)
    return meter


def _meters(sb: Sandbox) -> list[Obj]:
    return sb.store.all("billing.meter")


def retrieve_meter(sb: Sandbox, call: Call) -> Obj:
    return sb.store.get("billing.meter", call.match["id"])


def list_meters(sb: Sandbox, call: Call) -> Obj:
    p = call.p({*LIST_PARAMS, "status"})
    status = p.str("status")
    meters = [m for m in _meters(sb) if status is None or m["status"] == status]
    return paginate(meters, call, "/v1/billing/meters")


def create_meter_event(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"event_name", "payload", "identifier", "timestamp"})
    event_name = p.str("event_name", req=True)
    payload = {str(k): str(v) for k, v in p.dict("payload").items()}
    if not payload:
        raise required("payload")
    meter = next(
        (m for m in _meters(sb) if m["event_name"] == event_name and m["status"] == "active"),
        None,
    )
    customer_key = meter["customer_mapping"]["event_payload_key"] if meter else "stripe_customer_id"
    value_key = meter["value_settings"]["event_payload_key"] if meter else "value"
    customer = payload.get(customer_key)
    if not customer:
        raise required(f"payload[{customer_key}]")
    sb.store.get("customer", customer, f"payload[{customer_key}]")
    if value_key in payload:
        number(payload[value_key], f"payload[{value_key}]")
    identifier = p.str("identifier") or token(24)
    seen: set[str] = sb.store.meter_identifiers
    if identifier in seen:
        raise invalid(
            f"An event with identifier `{identifier}` already exists.",
            param="identifier",
            code="resource_already_exists",
        )
    seen.add(identifier)
    event = template("billing.meter_event")
    event.update(
        {
            "object": "billing.meter_event",
            "created": _now(),
            "event_name": event_name,
            "identifier": identifier,
            "livemode": False,
            "payload": payload,
            "timestamp": p.int("timestamp") or _now(),
        }
    )
    sb.store.meter_events.append(event)
    return event


def event_summaries(sb: Sandbox, call: Call) -> Obj:
    p = call.p({*LIST_PARAMS, "customer", "start_time", "end_time", "value_grouping_window"})
    meter = sb.store.get("billing.meter", call.match["id"])
    customer = p.str("customer", req=True)
    start = p.int("start_time", req=True)
    end = p.int("end_time", req=True)
    assert customer is not None and start is not None and end is not None  # req=True
    total = usage(sb, meter, customer, start, end)
    summary = template("billing.meter_event_summary")
    summary.update(
        {
            "id": f"mtrusg_test_{token(24)}",
            "object": "billing.meter_event_summary",
            "aggregated_value": float(total),
            "start_time": start,
            "end_time": end,
            "livemode": False,
            "meter": meter["id"],
        }
    )
    return {
        "object": "list",
        "data": [summary],
        "has_more": False,
        "url": f"/v1/billing/meters/{meter['id']}/event_summaries",
    }


ROUTES: list[Route] = [
    ("POST", "/v1/billing/meters", create_meter),
    ("GET", "/v1/billing/meters", list_meters),
    ("GET", "/v1/billing/meters/{id}", retrieve_meter),
    ("GET", "/v1/billing/meters/{id}/event_summaries", event_summaries),
    ("POST", "/v1/billing/meter_events", create_meter_event),
]
