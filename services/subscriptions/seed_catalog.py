"""Create the coworking plans catalog in Stripe, idempotently.

``python -m services.subscriptions.seed_catalog [--catalog PATH]``

Uses ``STRIPE_SECRET_KEY`` and, when set, ``STRIPE_API_BASE`` as the API
base (e.g. the offline sandbox, which needs no key). Each price is
looked up by its ``lookup_key`` first; products get stable ids, and every
create carries an Idempotency-Key derived from the lookup key, so re-running
after a partial failure, or concurrently, never makes duplicates.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import stripe

from shared.stripe_client import StripeNotConfigured, StripeSettings, stripe_client

CATALOG_PATH = Path(__file__).resolve().parent / "catalog.json"
INTERVALS = ("day", "week", "month", "year")


@dataclass(frozen=True)
class CatalogPrice:
    lookup_key: str
    product_id: str
    product_name: str
    description: str
    unit_amount: int
    currency: str
    interval: str | None
    interval_count: int
    credits: int


def _field(entry: dict[str, Any], key: str, kind: type) -> Any:
    value = entry.get(key)
    # bool is an int subclass; amounts and credits must be real integers.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"catalog entry {entry.get('lookup_key')!r}: {key} must be {kind}")
    return value


def parse_catalog(data: Any) -> list[CatalogPrice]:
    if not isinstance(data, dict) or not isinstance(data.get("prices"), list):
        raise ValueError("catalog must be an object with a 'prices' list")
    prices: list[CatalogPrice] = []
    for entry in data["prices"]:
        if not isinstance(entry, dict):
            raise ValueError("each catalog price must be an object")
        recurring = entry.get("recurring")
        interval: str | None = None
        count = 1
        if recurring is not None:
            interval = _field(recurring, "interval", str)
            count = _field(recurring, "interval_count", int)
            if interval not in INTERVALS:
                raise ValueError(f"{entry.get('lookup_key')!r}: bad interval {interval!r}")
        price = CatalogPrice(
            lookup_key=_field(entry, "lookup_key", str),
            product_id=_field(entry, "product_id", str),
            product_name=_field(entry, "product_name", str),
            description=_field(entry, "description", str),
            unit_amount=_field(entry, "unit_amount", int),
            currency=_field(entry, "currency", str).lower(),
            interval=interval,
            interval_count=count,
            credits=_field(entry, "credits", int),
        )
        if price.unit_amount <= 0 or price.credits < 0:
            raise ValueError(f"{price.lookup_key!r}: amount must be > 0 and credits >= 0")
        prices.append(price)
    keys = [p.lookup_key for p in prices]
    if len(keys) != len(set(keys)):
        raise ValueError("lookup_key values must be unique")
    return prices


def load_catalog(path: Path = CATALOG_PATH) -> list[CatalogPrice]:
    with path.open(encoding="utf-8") as handle:
        return parse_catalog(json.load(handle))


def make_client() -> stripe.StripeClient:
    return stripe_client(StripeSettings())


def _ensure_product(client: stripe.StripeClient, item: CatalogPrice) -> tuple[str, bool]:
    try:
        return client.v1.products.retrieve(item.product_id).id, False
    except stripe.InvalidRequestError as exc:
        if exc.http_status != 404:
            raise
    product = client.v1.products.create(
        params={
            "id": item.product_id,
            "name": item.product_name,
            "description": item.description,
            "metadata": {"lookup_key": item.lookup_key, "credits": str(item.credits)},
        },
        options={"idempotency_key": f"seed-catalog-product-{item.lookup_key}"},
    )
    return product.id, True


def _create_price(client: stripe.StripeClient, item: CatalogPrice, product_id: str) -> str:
    params: dict[str, Any] = {
        "product": product_id,
        "unit_amount": item.unit_amount,
        "currency": item.currency,
        "lookup_key": item.lookup_key,
        "metadata": {"credits": str(item.credits), "lookup_key": item.lookup_key},
    }
    if item.interval is not None:
        params["recurring"] = {"interval": item.interval, "interval_count": item.interval_count}
    price = client.v1.prices.create(
        params=params,  # type: ignore[arg-type]  # built to the same TypedDict shape
        options={"idempotency_key": f"seed-catalog-price-{item.lookup_key}"},
    )
    return price.id


def seed(client: stripe.StripeClient, catalog: list[CatalogPrice]) -> dict[str, str]:
    """Ensure every catalog price exists; returns lookup_key -> price id."""
    existing = {
        price.lookup_key: price
        for price in client.v1.prices.list(
            params={"lookup_keys": [p.lookup_key for p in catalog], "limit": 100}
        ).data
        if price.lookup_key
    }
    result: dict[str, str] = {}
    for item in catalog:
        found = existing.get(item.lookup_key)
        if found is not None:
            note = ""
            if (found.unit_amount, found.currency) != (item.unit_amount, item.currency):
                note = (
                    f" (WARNING: Stripe has {found.unit_amount} {found.currency}, "
                    f"catalog says {item.unit_amount} {item.currency})"
                )
            print(f"found   {item.lookup_key}: {found.id}{note}")
            result[item.lookup_key] = found.id
            continue
        product_id, product_created = _ensure_product(client, item)
        price_id = _create_price(client, item, product_id)
        verb = "product+price" if product_created else "price"
        print(f"created {item.lookup_key}: {price_id} ({verb}, product {product_id})")
        result[item.lookup_key] = price_id
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--catalog", type=Path, default=CATALOG_PATH)
    args = parser.parse_args(argv)
    try:
        catalog = load_catalog(args.catalog)
    except (OSError, ValueError) as exc:
        print(f"invalid catalog: {exc}", file=sys.stderr)
        return 2
    try:
        seed(make_client(), catalog)
    except StripeNotConfigured as exc:
        print(f"{exc} (make dev sets STRIPE_API_BASE to the sandbox)", file=sys.stderr)
        return 2
    except stripe.StripeError as exc:
        print(f"stripe error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
