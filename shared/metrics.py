"""Every Prometheus metric of the product, declared once with its meaning.

All services import from here so names and labels cannot drift apart. Names
follow Prometheus conventions: ``_total`` for counters, base units
(``_seconds``, ``_bytes``) in the name. Each process exposes only what it
touches; the rest stays at zero. Label values are bounded sets (reasons,
outcomes, queue names, Stripe event types), never ids.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Latency buckets for work that should take milliseconds.
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# --- HTTP edge (every service) ---------------------------------------------
HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered, by route, method and status code.",
    ["route", "method", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request, by route.",
    ["route"],
    buckets=_FAST_BUCKETS,
)

# --- Gateway: Stripe webhooks -----------------------------------------------
WEBHOOKS_RECEIVED = Counter(
    "gateway_webhooks_received_total",
    "Stripe webhook deliveries received, before any check.",
)
WEBHOOKS_REJECTED = Counter(
    "gateway_webhooks_rejected_total",
    "Stripe webhook deliveries refused, by reason (signature, stale, payload, too_large, "
    "thin_event, broker_unavailable, unroutable).",
    ["reason"],
)
WEBHOOKS_PUBLISHED = Counter(
    "gateway_webhooks_published_total",
    "Stripe events confirmed by the broker and acknowledged to Stripe.",
)
WEBHOOK_PUBLISH_SECONDS = Histogram(
    "gateway_webhook_publish_seconds",
    "Time from publish to broker confirm for one Stripe event.",
    buckets=_FAST_BUCKETS,
)

# --- Gateway: client API ----------------------------------------------------
API_AUTH_FAILURES = Counter(
    "gateway_api_auth_failures_total",
    "Client API requests refused by authentication or authorisation, by reason.",
    ["reason"],
)
UPSTREAM_REQUEST_SECONDS = Histogram(
    "gateway_upstream_request_seconds",
    "Time the owning service took to answer a forwarded API request.",
    ["service"],
    buckets=_FAST_BUCKETS,
)
UPSTREAM_FAILURES = Counter(
    "gateway_upstream_failures_total",
    "Forwarded API requests that got no answer from the owning service.",
    ["service"],
)

# --- Broker (every service) -------------------------------------------------
BROKER_PUBLISH_FAILURES = Counter(
    "broker_publish_failures_total",
    "Publishes the broker did not confirm (nack, unroutable, timeout or connection loss).",
    ["exchange", "reason"],
)
MESSAGES_HANDLED = Counter(
    "consumer_messages_total",
    "Messages taken from a queue, by outcome (processed, duplicate, retried, dead_lettered).",
    ["queue", "outcome"],
)
MESSAGE_HANDLE_SECONDS = Histogram(
    "consumer_handle_duration_seconds",
    "Time to handle one message including its database commit.",
    ["queue"],
    buckets=_FAST_BUCKETS,
)
MESSAGES_IN_FLIGHT = Gauge(
    "consumer_messages_in_flight",
    "Messages being handled right now.",
    ["queue"],
)
MESSAGES_HELD = Gauge(
    "consumer_messages_held",
    "Failed messages kept unacknowledged because their copy to a retry or dead-letter "
    "queue could not be published yet (broker alarm, publisher disconnected).",
    ["queue"],
)
DEAD_LETTERS_REDRIVEN = Counter(
    "dead_letters_redriven_total",
    "Dead-lettered messages sent back to their queue by an operator.",
    ["queue"],
)

# --- Webhooks ledger --------------------------------------------------------
LEDGER_EVENTS_STORED = Counter(
    "ledger_events_stored_total",
    "Stripe events written to the ledger for the first time, by type.",
    ["event_type"],
)
LEDGER_EVENTS_REPLAYED = Counter(
    "ledger_events_replayed_total",
    "Stripe events published again from the ledger on an operator's request.",
)

# --- Subscriptions ----------------------------------------------------------
SUBSCRIPTION_EVENTS_APPLIED = Counter(
    "subscriptions_events_applied_total",
    "Subscription events applied to local state, by outcome (applied, stale).",
    ["outcome"],
)
