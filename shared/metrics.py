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
    "Time to answer an HTTP request, by route template and method.",
    ["route", "method"],
    buckets=_FAST_BUCKETS,
)
HTTP_REQUESTS_IN_FLIGHT = Gauge(
    "http_requests_in_flight",
    "HTTP requests being answered right now, by route template.",
    ["route"],
)
HTTP_CONNECTIONS_REFUSED = Counter(
    "http_connections_refused_total",
    "Connections closed as they were accepted: HTTP_MAX_CONNECTIONS were open.",
)
SERVICE_READY = Gauge(
    "service_ready",
    "1 when the readiness check passed at the last /readyz or /metrics request, else 0, "
    "by check (database, broker, consumers).",
    ["check"],
)
DB_POOL_CONNECTIONS = Gauge(
    "db_pool_connections",
    "Postgres connections of a service's pool, by schema and state (open, in_use, max).",
    ["schema", "state"],
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
API_PREVIOUS_SECRET_TOKENS = Counter(
    "gateway_api_previous_secret_tokens_total",
    "Client API tokens accepted with a secret of JWT_PREVIOUS_SECRETS (a rotation in "
    "progress); once it stays at zero for a token lifetime, the old secret can go.",
)
API_RATE_LIMITED = Counter(
    "gateway_api_rate_limited_total",
    "Client API requests refused with 429, by who was counted (member, staff, anonymous).",
    ["scope"],
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
MESSAGE_WAIT_SECONDS = Histogram(
    "consumer_message_wait_seconds",
    "Time a message waited in its queue, from its publish (the AMQP timestamp, whole "
    "seconds) to its first delivery; in a queue worked in order, the age of the oldest "
    "message. Retried and redelivered messages are left out (their wait includes the delay).",
    ["queue"],
    buckets=(1.0, 2.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
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
QUEUE_POLICY_IN_FORCE = Gauge(
    "broker_queue_policy_in_force",
    "1 when the queue's RabbitMQ policy (delivery limit, TTL, dead-letter target) was found "
    "in force at the last check, else 0; consumers take no message before it is.",
    ["queue"],
)
DEAD_LETTERS_REDRIVEN = Counter(
    "dead_letters_redriven_total",
    "Dead-lettered messages sent back to their queue by an operator.",
    ["queue"],
)
DEAD_LETTERS_RECORDED = Counter(
    "dead_letters_recorded_total",
    "Dead-lettered messages taken from a dead-letter queue into the webhooks service's store.",
    ["queue"],
)
DEAD_LETTERS_FITTED = Counter(
    "dead_letters_fitted_total",
    "Dead letters the store refused as they came, stored with their text fields cleaned"
    " (their row's unfit_reason says why).",
    ["queue"],
)
DEAD_LETTERS_PARKED = Counter(
    "dead_letters_parked_total",
    "Dead letters that could not be stored even fitted, moved whole to <queue>.dlq.parked.",
    ["queue"],
)
DEAD_LETTERS_DISCARDED = Counter(
    "dead_letters_discarded_total",
    "Dead letters an operator gave up on, with a reason.",
    ["queue"],
)
DEAD_LETTERS = Gauge(
    "dead_letters",
    "Dead letters waiting for an operator (neither redriven nor discarded), by consumer queue.",
    ["queue"],
)
DEAD_LETTERS_OLDEST_AGE_SECONDS = Gauge(
    "dead_letters_oldest_age_seconds",
    "Age of the oldest dead letter waiting for an operator, by consumer queue (0 when none).",
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

RECONCILE_EVENTS = Counter(
    "reconcile_events_total",
    "Events listed from Stripe's Events API by a backfill, by outcome "
    "(already_had: in the ledger or published by another backfill; recovered: published now).",
    ["outcome"],
)
RECONCILE_JOBS = Counter(
    "reconcile_jobs_total",
    "Backfill jobs finished, by trigger (schedule, manual) and state (succeeded, failed).",
    ["trigger", "state"],
)
RECONCILE_CHECKED_UNTIL_SECONDS = Gauge(
    "reconcile_checked_until_timestamp_seconds",
    "Unix time up to which every Stripe event was checked against the ledger.",
)

# --- Subscriptions ----------------------------------------------------------
SUBSCRIPTION_EVENTS_APPLIED = Counter(
    "subscriptions_events_applied_total",
    "Subscription events applied to local state, by outcome (applied, stale).",
    ["outcome"],
)

# --- Stripe (every service that calls it) -----------------------------------
STRIPE_CALLS = Counter(
    "stripe_calls_total",
    "Calls to Stripe's API after the call policy's retries, by call and outcome "
    "(ok, card_error, unavailable, error).",
    ["call", "outcome"],
)
STRIPE_CALL_SECONDS = Histogram(
    "stripe_call_duration_seconds",
    "Time one call to Stripe took, retries included.",
    ["call"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0),
)

# --- Outbox (every service that emits domain events) -------------------------
OUTBOX_PUBLISHED = Counter(
    "outbox_events_published_total",
    "Domain events relayed from the outbox to the broker and confirmed, by type.",
    ["event_type"],
)
OUTBOX_RELAY_LAG_SECONDS = Histogram(
    "outbox_relay_lag_seconds",
    "Time from a domain event's commit to its broker confirm.",
    buckets=_FAST_BUCKETS,
)
OUTBOX_PENDING = Gauge(
    "outbox_pending_events",
    "Domain events committed but not yet confirmed by the broker, by schema.",
    ["schema"],
)
OUTBOX_OLDEST_PENDING_SECONDS = Gauge(
    "outbox_oldest_pending_age_seconds",
    "Age of the oldest domain event not yet confirmed by the broker, by schema.",
    ["schema"],
)

# --- Retry: dunning ------------------------------------------------------------
DUNNING_CASES_OPENED = Counter(
    "dunning_cases_opened_total",
    "Dunning cases opened (a renewal's first failed payment).",
)
DUNNING_CASES_CLOSED = Counter(
    "dunning_cases_closed_total",
    "Dunning cases closed, by final state (recovered, canceled, exhausted) and reason.",
    ["state", "reason"],
)
DUNNING_CASES_RESUMED = Counter(
    "dunning_cases_resumed_total",
    "Paused cases (hard decline) made due again by a new payment method or an operator.",
)
DUNNING_ATTEMPTS = Counter(
    "dunning_attempts_total",
    "Dunning attempts finished, by outcome (succeeded, failed, already_settled, unavailable, "
    "error, observed, skipped: no charge, the card had met a hard decline) and Stripe decline "
    "code (empty when none).",
    ["outcome", "decline_code"],
)
DUNNING_RECOVERED_AMOUNT = Counter(
    "dunning_recovered_amount_total",
    "Money recovered by dunning cases, in the currency's minor units.",
    ["currency"],
)
DUNNING_END_ACTIONS = Counter(
    "dunning_end_actions_total",
    "End actions of exhausted cases run, by action and outcome (done, failed).",
    ["action", "outcome"],
)
DUNNING_CASES = Gauge(
    "dunning_cases",
    "Dunning cases by state, as the database holds them (refreshed by the scheduler).",
    ["state"],
)
DUNNING_RECOVERY_RATE = Gauge(
    "dunning_recovery_rate",
    "Recovered cases over all closed cases (recovered, canceled, exhausted); 0 when none closed.",
)
DUNNING_OLDEST_DUE_SECONDS = Gauge(
    "dunning_oldest_due_attempt_age_seconds",
    "How long the most overdue attempt has been due; 0 when none is due (a growing value: "
    "the scheduler is not keeping up, or not running).",
)

# --- Retry: notifications ------------------------------------------------------
EMAILS_SENT = Counter(
    "notifications_emails_sent_total",
    "Emails accepted by the mail server, by template.",
    ["template"],
)
EMAILS_FAILED = Counter(
    "notifications_emails_failed_total",
    "Emails not sent, by why: retry (a send failed, tried again later), dead (given up), "
    "no_recipient (the event names no email), skipped, disabled (NOTIFICATIONS_ENABLED off).",
    ["outcome"],
)
EMAILS_PENDING = Gauge(
    "notifications_emails_pending",
    "Emails waiting to be sent (the mail server is down or slow when this grows).",
)
