"""Payment metrics, declared once with their meaning (Prometheus conventions).

The success rate an alert can use is a ratio of counters, e.g. over 15 minutes::

    sum(rate(payments_outcomes_total{outcome="succeeded"}[15m]))
      / sum(rate(payments_outcomes_total{outcome=~"succeeded|failed"}[15m]))

Counters move when a state change commits in a consumer (a handler that
rolls back and runs again may count once more, never less). Label values are
bounded sets; currencies come from the catalog and Stripe's few.
"""

from __future__ import annotations

from prometheus_client import Counter

PAYMENT_OUTCOMES = Counter(
    "payments_outcomes_total",
    "Booking payments reaching an outcome: succeeded, failed, canceled, expired.",
    ["outcome"],
)
AMOUNT_COLLECTED = Counter(
    "payments_collected_minor_units_total",
    "Money collected by booking payments, in minor units of the currency.",
    ["currency"],
)
REFUNDS = Counter(
    "payments_refunds_total",
    "Refunds Stripe reported (charge.refunded), by kind of payment (booking, invoice).",
    ["kind"],
)
AMOUNT_REFUNDED = Counter(
    "payments_refunded_minor_units_total",
    "Money refunded, in minor units of the currency.",
    ["currency"],
)
# A refund counted above that fails or is canceled afterwards cannot be taken
# off that counter: it is counted here, and what was really refunded is
#   sum by (currency) (increase(payments_refunded_minor_units_total[1d]))
#   - sum by (currency) (increase(payments_refund_failed_minor_units_total[1d]))
AMOUNT_REFUND_FAILED = Counter(
    "payments_refund_failed_minor_units_total",
    "Money of refunds counted in payments_refunded_minor_units_total that then failed or"
    " were canceled (it stayed with the business), in minor units of the currency.",
    ["currency"],
)
DISPUTES = Counter(
    "payments_disputes_total",
    "Disputes opened on charges, by kind of payment (booking, invoice).",
    ["kind"],
)
REFUNDS_FAILED = Counter(
    "payments_refunds_failed_total",
    "Refunds that failed or were canceled after being counted, by kind of payment.",
    ["kind"],
)
DISPUTES_CLOSED = Counter(
    "payments_disputes_closed_total",
    "Disputes closed, by kind of payment and outcome (won, lost, warning_closed, prevented).",
    ["kind", "outcome"],
)
REFUNDS_REQUESTED = Counter(
    "payments_refunds_requested_total",
    "Refunds staff asked Stripe for, by target (payment, invoice).",
    ["target"],
)
