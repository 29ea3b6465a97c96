"""The catalog as subscriptions see it: which plan and interval a Stripe price is."""

from __future__ import annotations

from dataclasses import dataclass

from shared import catalog
from shared.catalog import Catalog, Interval, Plan
from shared.http.errors import invalid_field


@dataclass(frozen=True)
class PricedPlan:
    key: str
    plan: Plan
    interval: Interval
    tier: str | None
    lookup_key: str
    amount: int

    @property
    def metered_keys(self) -> list[str]:
        """Lookup keys of the metered prices billing this plan's overage, if any."""
        return self.plan.metered_keys(self.interval)


def of_lookup_key(lookup_key: str | None, cat: Catalog | None = None) -> PricedPlan | None:
    if not lookup_key:
        return None
    cat = cat or catalog.default()
    found = cat.plan_for_price(lookup_key)
    if found is None:
        return None
    key, interval, tier = found
    plan = cat.plans[key]
    price = plan.price(interval, tier)
    assert price is not None
    return PricedPlan(key, plan, interval, tier, price.lookup_key, price.amount)


def chosen(plan_key: str, interval: Interval, tier: str | None) -> PricedPlan | None:
    """The price a caller of ``tier`` pays for ``plan_key`` billed every ``interval``."""
    cat = catalog.default()
    plan = cat.plans.get(plan_key)
    if plan is None:
        return None
    price = plan.price(interval, tier)
    if price is None:
        return None
    used_tier = tier if tier and interval in plan.eligibility.get(tier, {}) else None
    return PricedPlan(plan_key, plan, interval, used_tier, price.lookup_key, price.amount)


def allotments(plan_key: str | None, *, trial: bool = False) -> dict[str, int]:
    if plan_key is None:
        return {}
    plan = catalog.default().plans.get(plan_key)
    return plan.allotments(trial=trial) if plan else {}


def rank(plan_key: str | None, interval: str | None) -> int:
    """How much a plan costs per month, to tell an upgrade from a downgrade."""
    if plan_key is None:
        return 0
    plan = catalog.default().plans.get(plan_key)
    if plan is None:
        return 0
    price = plan.prices.get("month") or plan.prices.get("year")
    if price is None:
        return 0
    monthly = price.amount if "month" in plan.prices else price.amount // 12
    return monthly * 12 + (1 if interval == "year" else 0)


def chosen_or_refuse(plan: str, interval: str, tier: str | None) -> PricedPlan:
    if plan not in catalog.default().plans:
        raise invalid_field("plan", f"no plan {plan!r}")
    priced = chosen(plan, interval, tier)  # type: ignore[arg-type]
    if priced is None:
        raise invalid_field("interval", f"plan {plan!r} is not sold by the {interval}")
    return priced
