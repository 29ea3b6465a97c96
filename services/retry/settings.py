"""Retry service settings: the dunning schedule, its end action, and email."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from shared.settings import ServiceSettings

EndAction = Literal["cancel_subscription", "mark_uncollectible", "leave_past_due"]


class RetrySettings(ServiceSettings):
    retry_port: int = 8084

    # The schedule (services/retry/backoff.py): attempt n waits a random time up
    # to min(max, first * factor**(n-1)) after the previous failure. The
    # defaults spread three attempts over about 1, 3 and 7 days.
    dunning_first_delay_seconds: float = Field(default=86_400.0, gt=0)
    dunning_backoff_factor: float = Field(default=3.0, ge=1.0)
    dunning_max_delay_seconds: float = Field(default=7 * 86_400.0, gt=0)
    dunning_max_attempts: int = Field(default=3, ge=1, le=20)
    # A hard decline pauses the case until the member adds a payment method;
    # without one within this long, the case is exhausted (never open forever).
    dunning_pause_max_seconds: float = Field(default=14 * 86_400.0, gt=0)
    # What closes an exhausted case: cancel the subscription (as Stripe's own
    # lifecycle does by default), mark the invoice uncollectible, or leave it
    # past_due for a person to decide.
    dunning_end_action: EndAction = "cancel_subscription"
    # Observe-only: cases are opened, recorded and notified from Stripe's own
    # events, but this service never charges (for accounts that keep Stripe's
    # Smart Retries on; running both would charge twice).
    dunning_observe_only: bool = False

    # The scheduler: how often a replica looks for due attempts, how many it
    # claims at once (and runs concurrently), and how long a claim holds a case
    # before another replica may take it over (longer than an attempt's Stripe
    # calls can take: see STRIPE_CALL_BUDGET_SECONDS).
    # Off: this replica consumes events and serves the API but makes no attempt
    # (the scheduler runs in the other replicas).
    dunning_scheduler_enabled: bool = True
    dunning_poll_seconds: float = Field(default=1.0, gt=0)
    dunning_batch_size: int = Field(default=50, ge=1, le=1000)
    dunning_lease_seconds: float = Field(default=120.0, gt=0)
    # Attempts' outcomes are written many to a transaction (services/retry/
    # outcomes.py); the first of a batch waits this long for others to join.
    dunning_outcome_linger_seconds: float = Field(default=0.01, ge=0, le=10.0)
    # When Stripe itself was unreachable during an attempt, the same attempt
    # (same idempotency key) is tried again after this long.
    dunning_unavailable_retry_seconds: float = Field(default=60.0, gt=0)
    # Where the member updates a card, for the payment-failed email.
    dunning_update_payment_method_url: str | None = None

    # Email (services/retry/notifications): SMTP through aiosmtplib. Off: the
    # domain events are still consumed (and acked), no email is made.
    notifications_enabled: bool = True
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_start_tls: bool = False
    smtp_use_tls: bool = False
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    mail_from: str = "Billing <billing@example.com>"
    # A message the mail server keeps refusing is retried with backoff (first,
    # doubling, up to the max) this many times, then dead-lettered.
    mail_retry_first_seconds: float = Field(default=5.0, gt=0)
    mail_retry_max_seconds: float = Field(default=600.0, gt=0)
    mail_max_tries: int = Field(default=12, ge=1)
    mail_poll_seconds: float = Field(default=1.0, gt=0)
