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

Then the subscriptions: a subscription made before ``overage.<type>`` joined
its plan carries no metered price, so Stripe would not invoice the usage the
credits service reports for it. For every plan price of a plan that bills
overage, the seed lists Stripe's subscriptions on that price (``price``
filter, every page) and adds each metered price of the plan's interval the
subscription lacks as a subscription item (``POST /v1/subscription_items``,
no quantity), one ``added`` line per subscription changed and a count at the
end. Only subscriptions Stripe still bills are touched: ``active``,
``trialing``, ``past_due``, ``unpaid`` (its invoices are still made, and it
can be paid back to ``active``) and ``paused`` (it resumes on the same
items); never ``canceled`` or ``incomplete_expired`` (ended) nor
``incomplete`` (Stripe changes nothing on it but its metadata and payment
method before its first payment). Each add carries an idempotency key
derived from the subscription and price ids, and a subscription that has the
price is left alone, so a rerun or a concurrent run adds it once. A
subscription holding another metered price on the same meter (an earlier
overage price) keeps it and gets a ``kept`` line instead: two prices on one
meter would bill the same usage twice. A subscription Stripe refuses is named
on stderr and the seed exits 1 (run it again); the others are still done.
Items are only added: a plan that stops billing overage leaves its
subscriptions' metered items in place (a plan change drops them).
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
    listed = client.v1.billing.meters.list(params={"limit": 100, "status": "active"})
    for meter in listed.auto_paging_iter():
        found.setdefault(meter.event_name, meter.id)
    return found


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
    return list(client.v1.prices.list(params={"limit": 100}).auto_paging_iter())


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


# Subscriptions Stripe still bills: every status but the terminal ``canceled`` and
# ``incomplete_expired``, and ``incomplete``, which Stripe lets change nothing but
# its metadata and payment method until its first invoice is paid.
BILLED_STATUSES = frozenset({"active", "trialing", "past_due", "unpaid", "paused"})


def wanted_metered(cat: Catalog) -> dict[str, list[str]]:
    """Plan price lookup key -> lookup keys of the metered prices a subscription on
    it carries (``Plan.metered_keys`` of its interval; none where the plan bills no
    overage). A key is the first plan's that sells it, as ``Catalog.plan_for_price``
    reads it."""
    found: dict[str, list[str]] = {}
    for plan in cat.plans.values():
        entries = [*plan.prices.items()]
        entries += [item for prices in plan.eligibility.values() for item in prices.items()]
        for interval, price in entries:
            found.setdefault(price.lookup_key, plan.metered_keys(interval))
    return found


def _billed_subscriptions(client: stripe.StripeClient, price_id: str) -> list[stripe.Subscription]:
    """Every subscription with an item on ``price_id`` that Stripe still bills."""
    listed = client.v1.subscriptions.list(params={"limit": 100, "price": price_id})
    return [sub for sub in listed.auto_paging_iter() if sub.status in BILLED_STATUSES]


def _items(client: stripe.StripeClient, sub: stripe.Subscription) -> list[stripe.SubscriptionItem]:
    """All of the subscription's items (the embedded list may be cut short)."""
    embedded = sub["items"]
    if not embedded.has_more:
        return list(embedded.data)
    listed = client.v1.subscription_items.list(params={"limit": 100, "subscription": sub.id})
    return list(listed.auto_paging_iter())


def _meter_of(price: stripe.Price) -> str | None:
    if price.recurring is None or price.recurring.usage_type != "metered":
        return None
    return price.recurring.meter


@dataclass
class MeteredItems:
    """What ``add_metered_items`` did."""

    changed: list[str]  # ids of the subscriptions given an item
    failed: list[str]  # ids of the subscriptions Stripe refused one


def add_metered_items(
    client: stripe.StripeClient, cat: Catalog, price_ids: dict[str, str]
) -> MeteredItems:
    """Give every subscription Stripe still bills on a plan price the metered prices
    its plan bills overage with, where it lacks them: a subscription made before
    ``overage.<type>`` joined its plan carries none, and Stripe would not invoice
    the usage the credits service reports for it.

    ``price_ids`` is ``seed``'s answer (lookup key -> price id). A subscription that
    has the price keeps it; one with another metered price on the same meter (an
    earlier overage price) is left with that one, since two prices on one meter
    would bill the same usage twice. Each add carries an idempotency key derived
    from the subscription and price ids, so a concurrent run adds it once."""
    result = MeteredItems([], [])
    prices = {p.id: p for p in _all_prices(client)}
    for plan_price, metered_keys in wanted_metered(cat).items():
        if not metered_keys:
            continue
        wanted = [(key, prices[price_ids[key]]) for key in metered_keys]
        for sub in _billed_subscriptions(client, price_ids[plan_price]):
            held = _items(client, sub)
            held_prices = {item.price.id for item in held}
            held_meters = {_meter_of(item.price): item.price.id for item in held}
            added: list[str] = []
            for key, price in wanted:
                meter = _meter_of(price)
                if price.id in held_prices:
                    continue
                if meter is not None and meter in held_meters:
                    print(
                        f"kept    {sub.id}: {held_meters[meter]} on the meter of {key}"
                        " (not adding a second price on one meter)"
                    )
                    continue
                try:
                    item = client.v1.subscription_items.create(
                        params={"subscription": sub.id, "price": price.id},
                        options={"idempotency_key": f"seed-catalog-item-{sub.id}-{price.id}"},
                    )
                except stripe.StripeError as exc:
                    print(f"could not add {key} to {sub.id}: {exc}", file=sys.stderr)
                    result.failed.append(sub.id)
                    continue
                response = item.last_response
                if response is not None and response.headers.get("Idempotent-Replayed") == "true":
                    continue  # a concurrent run added it (and says so)
                added.append(f"{key} ({price.id})")
            if added:
                print(f"added   {sub.id} ({sub.status}, {plan_price}): {', '.join(added)}")
                result.changed.append(sub.id)
    print(f"metered items: {len(result.changed)} subscription(s) given their plan's overage prices")
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
        client = stripe_client(StripeSettings())
        metered = add_metered_items(client, cat, seed(client, cat))
    except StripeNotConfigured as exc:
        print(f"{exc} (make dev sets STRIPE_API_BASE to the sandbox)", file=sys.stderr)
        return 2
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    except stripe.StripeError as exc:
        print(f"stripe error: {exc}", file=sys.stderr)
        return 1
    if metered.failed:
        print(
            f"{len(set(metered.failed))} subscription(s) still lack a metered price: run again",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
