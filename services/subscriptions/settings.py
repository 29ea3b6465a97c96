"""Subscriptions service settings."""

from __future__ import annotations

from pydantic import Field

from services.subscriptions.payments.settings import PaymentsSettings


class SubscriptionsSettings(PaymentsSettings):  # booking payments' settings, and:
    subscriptions_port: int = 8082
    # A past_due subscription keeps access this long after its first failed
    # payment (GET /v1/entitlements/me); dunning has this long to recover it.
    grace_period_days: int = Field(default=7, ge=0)
    # Origins checkout success/cancel and billing-portal return URLs may point
    # at ("scheme://host" matches any port, "scheme://host:port" only that
    # one): the API must not be an open redirect. A JSON list in the environment.
    checkout_allowed_origins: list[str] = Field(default_factory=list)
    # Test mode only (the sandbox, or an sk_test_ key): each new customer on
    # its own Stripe test clock, moved by POST /v1/admin/test-clocks/{user_id}/advance.
    test_clocks: bool = False
    # How often each replica recomputes the MRR gauge from the state.
    revenue_gauge_seconds: float = Field(default=60.0, gt=0)
