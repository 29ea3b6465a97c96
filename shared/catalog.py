"""The catalog: plans and one-time products, read from ``catalog.toml``.

One file the operator edits (``CATALOG_PATH`` overrides where it is), read by
every service that needs it: subscriptions (plans, prices, eligibility,
trials, ``make seed``), payments (products, quantity limits), credits (credit
types, allotments, rollover caps, overage, credit packs). It is validated as a
whole when loaded, so a mistake (a lookup key reused for another amount, an
unknown credit type, a negative amount) stops a service at start with a
message naming the entry, not at the first purchase.
"""

from __future__ import annotations

import functools
import os
import re
import tomllib
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "catalog.toml"

Interval = Literal["month", "year"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    lookup_key: str = Field(pattern=r"^[a-z][a-z0-9_]{0,199}$")
    amount: PositiveInt


class CreditType(_Strict):
    name: str
    rollover_cap: int = Field(default=0, ge=0)


class Overage(_Strict):
    """Spends beyond the balance are billed through Stripe usage-based billing."""

    meter: str = Field(pattern=r"^[a-z][a-z0-9_]{0,99}$", description="The meter's event_name.")
    lookup_key: str = Field(pattern=r"^[a-z][a-z0-9_]{0,199}$")
    unit_amount: PositiveInt

    def price_key(self, interval: Interval) -> str:
        """The lookup key of the metered price for a plan billed every ``interval``.

        Stripe bills every item of a subscription on one interval, so a yearly
        plan needs a yearly metered price (its usage billed at the year's end):
        ``lookup_key`` names the monthly one, ``<lookup_key>_yearly`` the other.
        """
        return self.lookup_key if interval == "month" else f"{self.lookup_key}_yearly"


class Plan(_Strict):
    name: str
    description: str = ""
    features: list[str] = Field(default_factory=list)
    trial_days: int | None = Field(default=None, ge=1, le=730)
    prices: dict[Interval, Price]
    # discount tier (a token claim) -> interval -> price
    eligibility: dict[str, dict[Interval, Price]] = Field(default_factory=dict)
    credits: dict[str, int] = Field(default_factory=dict)
    trial_credits: dict[str, int] | None = None
    overage: dict[str, Overage] = Field(default_factory=dict)

    def price(self, interval: Interval, tier: str | None = None) -> Price | None:
        """The price a member of ``tier`` pays; the plan's own when the tier has none."""
        if tier is not None and interval in self.eligibility.get(tier, {}):
            return self.eligibility[tier][interval]
        return self.prices.get(interval)

    def intervals(self) -> list[Interval]:
        """Every interval the plan is sold on, its own prices' or a tier's."""
        found = [*self.prices, *(i for prices in self.eligibility.values() for i in prices)]
        return sorted(set(found))

    def metered_keys(self, interval: Interval) -> list[str]:
        """Lookup keys of the metered prices a subscription on ``interval`` carries:
        one per credit type whose overage is billed, none when all are refused."""
        return sorted({terms.price_key(interval) for terms in self.overage.values()})

    def allotments(self, *, trial: bool = False) -> dict[str, int]:
        if trial and self.trial_credits is not None:
            return dict(self.trial_credits)
        return dict(self.credits)


class Product(_Strict):
    name: str
    description: str = ""
    amount: PositiveInt
    lookup_key: str = Field(pattern=r"^[a-z][a-z0-9_]{0,199}$")
    max_quantity: PositiveInt = 100
    # A credit pack: what one unit grants, for how long, spent in which order.
    grants: dict[str, PositiveInt] = Field(default_factory=dict)
    grant_valid_days: PositiveInt | None = None
    grant_priority: int | None = None


class Catalog(_Strict):
    currency: str = Field(pattern=r"^[a-z]{3}$")
    plan_grant_priority: int = 10
    admin_grant_priority: int = 20
    credit_types: dict[str, CreditType] = Field(default_factory=dict)
    plans: dict[str, Plan] = Field(default_factory=dict)
    products: dict[str, Product] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for name in [*self.credit_types, *self.plans, *self.products]:
            if not _KEY.fullmatch(name):
                raise ValueError(f"{name!r}: keys are lower_snake, at most 64 characters")
        for plan_key, plan in self.plans.items():
            used = [*plan.credits, *(plan.trial_credits or {}), *plan.overage]
            for credit_type in used:
                if credit_type not in self.credit_types:
                    raise ValueError(f"plans.{plan_key}: unknown credit type {credit_type!r}")
            if any(v < 0 for v in [*plan.credits.values(), *(plan.trial_credits or {}).values()]):
                raise ValueError(f"plans.{plan_key}: credits cannot be negative")
            if not plan.prices:
                raise ValueError(f"plans.{plan_key}: needs a monthly or yearly price")
        for product_key, product in self.products.items():
            for credit_type in product.grants:
                if credit_type not in self.credit_types:
                    raise ValueError(f"products.{product_key}: unknown credit type {credit_type!r}")
        seen: dict[str, tuple[str, int]] = {}
        for where, key, amount in self._prices():
            if key in seen and seen[key][1] != amount:
                first, first_amount = seen[key]
                raise ValueError(
                    f"lookup_key {key!r} is {first_amount} at {first} but {amount} at {where}:"
                    " a lookup key names one price; give the new amount a new key"
                )
            seen.setdefault(key, (where, amount))
        return self

    def _prices(self) -> list[tuple[str, str, int]]:
        found = []
        for plan_key, plan in self.plans.items():
            for interval, price in plan.prices.items():
                where = f"plans.{plan_key}.prices.{interval}"
                found.append((where, price.lookup_key, price.amount))
            for tier, prices in plan.eligibility.items():
                for interval, price in prices.items():
                    where = f"plans.{plan_key}.eligibility.{tier}.{interval}"
                    found.append((where, price.lookup_key, price.amount))
            for credit_type, overage in plan.overage.items():
                for interval in plan.intervals():
                    where = f"plans.{plan_key}.overage.{credit_type} ({interval})"
                    found.append((where, overage.price_key(interval), overage.unit_amount))
        for product_key, product in self.products.items():
            found.append((f"products.{product_key}", product.lookup_key, product.amount))
        return found

    def plan_for_price(self, lookup_key: str) -> tuple[str, Interval, str | None] | None:
        """(plan, interval, tier) of a recurring price, from its lookup key."""
        for plan_key, plan in self.plans.items():
            for interval, price in plan.prices.items():
                if price.lookup_key == lookup_key:
                    return plan_key, interval, None
            for tier, prices in plan.eligibility.items():
                for interval, price in prices.items():
                    if price.lookup_key == lookup_key:
                        return plan_key, interval, tier
        return None


def parse(text: str) -> Catalog:
    return Catalog.model_validate(tomllib.loads(text))


def load(path: Path | None = None) -> Catalog:
    """The catalog at ``path``, else ``CATALOG_PATH``, else the repository's ``catalog.toml``."""
    chosen = path or Path(os.environ.get("CATALOG_PATH") or DEFAULT_PATH)
    return parse(chosen.read_text(encoding="utf-8"))


@functools.cache
def default() -> Catalog:
    return load()
