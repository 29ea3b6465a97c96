"""Sync the catalog (``catalog.toml``) to Stripe: ``make seed``.

``python -m services.subscriptions.seed_catalog [--catalog PATH]``

Uses ``STRIPE_SECRET_KEY`` and, when set, ``STRIPE_API_BASE`` (the offline
sandbox needs no key). A ``lookup_key`` names one price forever, so:

- a price whose lookup key Stripe already has (same amount, currency and
  interval) is left alone: running the seed twice, or concurrently, never
  makes a second price (every create also carries an idempotency key
  derived from the lookup key);
- a lookup key Stripe has for a *different* amount, currency or interval is
  refused before anything changes, with a message naming the key: give the
  new amount a new key;
- a price this seed made earlier whose key left the file is archived
  (``active=false``): existing subscriptions keep it until changed, nobody
  new can buy it. A key that comes back reactivates its price.

Products get stable ids (``plan_<key>``, ``product_<key>``,
``overage_<credit type>``).

Overage (``overage.<credit type>`` of a plan) is billed through Stripe
usage-based billing: a billing meter per ``meter`` event name (found by its
event name among the active meters, else created, ``sum`` of the events'
``value`` per customer) and a metered recurring price on it, per interval the
plan is sold on (``Overage.price_key``). Those prices follow the same rules as
the others; a lookup key Stripe has as a licensed price is refused.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import stripe

from shared import catalog as catalog_file
from shared.catalog import Catalog, Price
from shared.stripe_client import StripeNotConfigured, StripeSettings, stripe_client

# Marks the prices this seed manages (and may archive).
MANAGED = "catalog_toml"


@dataclass(frozen=True)
class Wanted:
    lookup_key: str
    product_id: str
    product_name: str
    description: str
    amount: int
    currency: str
    interval: str | None
    metadata: dict[str, str]
    # Metered prices only: the event name of the meter that counts their usage.
    meter: str | None = None


class Refused(ValueError):
    """The file and Stripe disagree about what a lookup key means."""


def wanted_prices(cat: Catalog) -> list[Wanted]:
    found: dict[str, Wanted] = {}
    for key, plan in cat.plans.items():
        credits = ",".join(f"{t}={n}" for t, n in sorted(plan.credits.items()))
        entries: list[tuple[str | None, str, Price]] = [
            (None, interval, price) for interval, price in plan.prices.items()
        ]
        entries += [
            (tier, interval, price)
            for tier, prices in plan.eligibility.items()
            for interval, price in prices.items()
        ]
        for tier, interval, price in entries:
            meta = {"managed_by": MANAGED, "plan": key, "interval": interval, "credits": credits}
            if tier:
                meta["tier"] = tier
            found.setdefault(
                price.lookup_key,
                Wanted(
                    price.lookup_key,
                    f"plan_{key}",
                    plan.name,
                    plan.description,
                    price.amount,
                    cat.currency,
                    interval,
                    meta,
                ),
            )
    for plan in cat.plans.values():
        for credit_type, terms in plan.overage.items():
            name = cat.credit_types[credit_type].name
            for interval in plan.intervals():
                found.setdefault(
                    terms.price_key(interval),
                    Wanted(
                        terms.price_key(interval),
                        f"overage_{credit_type}",
                        f"{name} overage",
                        f"{name} beyond a plan's balance, billed per unit used.",
                        terms.unit_amount,
                        cat.currency,
                        interval,
                        {"managed_by": MANAGED, "overage": credit_type, "interval": interval},
                        meter=terms.meter,
                    ),
                )
    for key, product in cat.products.items():
        found.setdefault(
            product.lookup_key,
            Wanted(
                product.lookup_key,
                f"product_{key}",
                product.name,
                product.description,
                product.amount,
                cat.currency,
                None,
                {"managed_by": MANAGED, "product": key},
            ),
        )
    return list(found.values())


def wanted_meters(cat: Catalog) -> dict[str, str]:
    """Meter event name -> display name, for every overage the catalog bills."""
    found: dict[str, str] = {}
    for plan in cat.plans.values():
        for credit_type, terms in plan.overage.items():
            found.setdefault(terms.meter, f"{cat.credit_types[credit_type].name} overage")
    return found


def _active_meters(client: stripe.StripeClient) -> dict[str, str]:
    """Event name -> id of the active meters."""
    found: dict[str, str] = {}
    params: dict[str, Any] = {"limit": 100, "status": "active"}
    while True:
        page = client.v1.billing.meters.list(params=params)  # type: ignore[arg-type]
        for meter in page.data:
            found.setdefault(meter.event_name, meter.id)
        if not page.has_more or not page.data:
            return found
        params["starting_after"] = page.data[-1].id


def ensure_meters(client: stripe.StripeClient, cat: Catalog) -> dict[str, str]:
    """The catalog's meters in Stripe, made when missing; event name -> meter id."""
    wanted = wanted_meters(cat)
    if not wanted:
        return {}
    held = _active_meters(client)
    result: dict[str, str] = {}
    for event_name, display_name in wanted.items():
        if event_name in held:
            print(f"meter   {event_name}: {held[event_name]} (exists)")
            result[event_name] = held[event_name]
            continue
        meter = client.v1.billing.meters.create(
            params={
                "display_name": display_name,
                "event_name": event_name,
                "default_aggregation": {"formula": "sum"},
                "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
                "value_settings": {"event_payload_key": "value"},
            },
            options={"idempotency_key": f"seed-catalog-meter-{event_name}"},
        )
        print(f"meter   {event_name}: {meter.id} (new)")
        result[event_name] = meter.id
    return result


def _all_prices(client: stripe.StripeClient) -> list[stripe.Price]:
    prices: list[stripe.Price] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = client.v1.prices.list(params=params)  # type: ignore[arg-type]
        prices.extend(page.data)
        if not page.has_more or not page.data:
            return prices
        params["starting_after"] = page.data[-1].id


def _interval(price: stripe.Price) -> str | None:
    return price.recurring.interval if price.recurring else None


def _usage_type(price: stripe.Price) -> str | None:
    return price.recurring.usage_type if price.recurring else None


def check(wanted: list[Wanted], existing: dict[str, stripe.Price]) -> None:
    """Refuse the whole file if any lookup key means another price in Stripe."""
    for item in wanted:
        held = existing.get(item.lookup_key)
        if held is None:
            continue
        theirs = (held.unit_amount, held.currency, _interval(held))
        ours = (item.amount, item.currency, item.interval)
        usage = "metered" if item.meter else ("licensed" if item.interval else None)
        if usage != _usage_type(held):
            raise Refused(
                f"lookup_key {item.lookup_key!r} is a {_usage_type(held) or 'one-time'} price"
                f" in Stripe but {usage or 'one-time'} in the catalog: give it a new key"
            )
        if theirs != ours:
            raise Refused(
                f"lookup_key {item.lookup_key!r} is {theirs[0]} {theirs[1]}"
                f" ({theirs[2] or 'one-time'}) in Stripe but {ours[0]} {ours[1]}"
                f" ({ours[2] or 'one-time'}) in the catalog: a lookup key names one price;"
                " give the new amount a new key"
            )


def _ensure_product(client: stripe.StripeClient, item: Wanted) -> str:
    try:
        return client.v1.products.retrieve(item.product_id).id
    except stripe.InvalidRequestError as exc:
        if exc.http_status != 404:
            raise
    params: dict[str, Any] = {"id": item.product_id, "name": item.product_name}
    if item.description:
        params["description"] = item.description
    return client.v1.products.create(
        params=params,  # type: ignore[arg-type]
        options={"idempotency_key": f"seed-catalog-product-{item.product_id}"},
    ).id


def seed(client: stripe.StripeClient, cat: Catalog) -> dict[str, str]:
    """Make Stripe's prices what the file says; returns lookup_key -> price id."""
    wanted = wanted_prices(cat)
    existing = {p.lookup_key: p for p in _all_prices(client) if p.lookup_key}
    check(wanted, existing)
    meters = ensure_meters(client, cat)
    result: dict[str, str] = {}
    for item in wanted:
        held = existing.get(item.lookup_key)
        if held is not None:
            if not held.active:
                client.v1.prices.update(held.id, params={"active": True})
                print(f"reactivated {item.lookup_key}: {held.id}")
            else:
                print(f"found   {item.lookup_key}: {held.id}")
            result[item.lookup_key] = held.id
            continue
        product_id = _ensure_product(client, item)
        params: dict[str, Any] = {
            "product": product_id,
            "unit_amount": item.amount,
            "currency": item.currency,
            "lookup_key": item.lookup_key,
            "metadata": item.metadata,
        }
        if item.meter is not None:
            params["recurring"] = {
                "interval": item.interval,
                "usage_type": "metered",
                "meter": meters[item.meter],
            }
        elif item.interval is not None:
            params["recurring"] = {"interval": item.interval}
        price = client.v1.prices.create(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": f"seed-catalog-price-{item.lookup_key}"},
        )
        print(f"created {item.lookup_key}: {price.id}")
        result[item.lookup_key] = price.id
    keys = {item.lookup_key for item in wanted}
    for lookup_key, price in existing.items():
        managed = price.metadata.to_dict().get("managed_by") == MANAGED if price.metadata else False
        if managed and price.active and lookup_key not in keys:
            client.v1.prices.update(price.id, params={"active": False})
            print(f"archived {lookup_key}: {price.id} (no longer in the catalog)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--catalog", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        cat = catalog_file.load(args.catalog)
    except (OSError, ValueError) as exc:
        print(f"invalid catalog: {exc}", file=sys.stderr)
        return 2
    try:
        seed(stripe_client(StripeSettings()), cat)
    except StripeNotConfigured as exc:
        print(f"{exc} (make dev sets STRIPE_API_BASE to the sandbox)", file=sys.stderr)
        return 2
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    except stripe.StripeError as exc:
        print(f"stripe error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
