"""The subscriptions service's own metrics (booking payments have theirs in
``payments/metrics.py``; the spine's are in ``shared/metrics.py``)."""

from __future__ import annotations

from prometheus_client import Gauge

# Set by services/subscriptions/revenue_gauge.py on a timer, from the state.
MRR = Gauge(
    "subscriptions_mrr_minor_units",
    "Monthly recurring revenue per currency, in minor units, from the mirrored state",
    ["currency"],
)
ACCESS_GRANTING = Gauge(
    "subscriptions_granting_access",
    "Subscriptions whose status grants access, by status (active, trialing)",
    ["state"],
)
