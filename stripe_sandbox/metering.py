"""Usage a meter counted: what a metered price bills.

A meter aggregates the ``value`` of the meter events sent under its
``event_name`` for one customer over a time range (events whose ``timestamp``
falls in ``[start, end)``): ``sum`` adds them, ``count`` counts them, ``last``
keeps the latest. A subscription item on a metered price (``recurring.meter``)
bills that usage for its period, in arrears: at the renewal, for the period
that just ended.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from .errors import invalid
from .sandbox import Sandbox
from .store import Obj


def number(value: object, param: str) -> Decimal:
    try:
        found = Decimal(str(value))
    except InvalidOperation as exc:
        raise invalid(f"Invalid {param}: must be a number.", param=param) from exc
    if not found.is_finite():
        raise invalid(f"Invalid {param}: must be a number.", param=param)
    return found


def usage(sb: Sandbox, meter: Obj, customer: str, start: int, end: int) -> Decimal:
    """The meter's aggregated value for ``customer`` over ``[start, end)``."""
    customer_key = meter["customer_mapping"]["event_payload_key"]
    value_key = meter["value_settings"]["event_payload_key"]
    events = [
        e
        for e in sb.store.meter_events
        if e["event_name"] == meter["event_name"]
        and e["payload"].get(customer_key) == customer
        and start <= e["timestamp"] < end
    ]
    formula = meter["default_aggregation"]["formula"]
    if formula == "count":
        return Decimal(len(events))
    values = [number(e["payload"].get(value_key, "0"), value_key) for e in events]
    if formula == "last":
        return values[-1] if values else Decimal(0)
    return sum(values, Decimal(0))


def is_metered(price: Obj) -> bool:
    return bool((price.get("recurring") or {}).get("usage_type") == "metered")


def meter_of(sb: Sandbox, price: Obj) -> Obj | None:
    return sb.store.maybe("billing.meter", (price.get("recurring") or {}).get("meter"))
