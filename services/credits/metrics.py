"""The credits service's metrics, declared once with their meaning.

Counted in credits (not entries), by credit type: a bounded set from the
catalog. The API counts after its transaction committed, so a refused or
rolled-back spend is never counted as spent; message handlers count with
``shared.counting``, so what they count is counted once their transaction
has committed, and not at all for a delivery rolled back and run again.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Histogram

from shared import counting

_SPEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)

GRANTED = Counter(
    "credits_granted_total",
    "Credits granted, by credit type and source (plan, trial, upgrade, rollover, pack, admin).",
    ["credit_type", "source"],
)
SPENT = Counter("credits_spent_total", "Credits spent, by credit type.", ["credit_type"])
EXPIRED = Counter(
    "credits_expired_total",
    "Credits expired by the sweep (past their grant's expiry or over the rollover cap).",
    ["credit_type"],
)
ROLLED_OVER = Counter(
    "credits_rolled_over_total",
    "Credits carried into a subscription's next period (up to the type's cap).",
    ["credit_type"],
)
REVERSED = Counter(
    "credits_reversed_total",
    "Credits returned to their grants by a spend's reversal.",
    ["credit_type"],
)
CLAWED_BACK = Counter(
    "credits_clawed_back_total",
    "Unspent credits taken back after a refund or dispute of what paid for them.",
    ["credit_type"],
)
TRIAL_TAKEN_BACK = Counter(
    "credits_trial_excess_taken_back_total",
    "Unspent credits a trial period gave back: granted as a paid period's before the"
    " trial's activation arrived.",
    ["credit_type"],
)
RESTORED = Counter(
    "credits_restored_total",
    "Credits a claw-back took given back to their grants: its refund failed or dispute was won.",
    ["credit_type"],
)
OVERAGE = Counter(
    "credits_overage_total",
    "Credits spent beyond the balance on plans that bill overage, by credit type.",
    ["credit_type"],
)
OVERAGE_REPORTED = Counter(
    "credits_overage_reported_total",
    "Overage credits Stripe accepted as meter events, by credit type.",
    ["credit_type"],
)
SPEND_SECONDS = Histogram(
    "credits_spend_duration_seconds",
    "Time to handle one spend request in the service, from validated request to answer.",
    buckets=_SPEND_BUCKETS,
)
SPENDS_REJECTED = Counter(
    "credits_spends_rejected_total",
    "Spends refused, by reason (insufficient, unknown_credit_type).",
    ["reason"],
)


def count(counter: Counter, by_type: Mapping[str, int]) -> None:
    """Count ``by_type`` (credits per type) once the transaction commits."""
    for credit_type, amount in by_type.items():
        if amount:
            counting.count(counter.labels(credit_type), amount)
