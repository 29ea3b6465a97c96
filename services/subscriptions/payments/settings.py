"""Settings of booking payments (part of the subscriptions service's settings)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class PaymentsSettings(ServiceSettings):
    # A processing fee added to every cart: a fixed part in minor units plus a
    # share of the subtotal in basis points (100 = 1 %), rounded half up.
    # Both 0: no fee line.
    payments_processing_fee_minor: int = Field(default=0, ge=0)
    payments_processing_fee_bps: int = Field(default=0, ge=0, le=10_000)
    # Origins a Checkout redirect (success_url, cancel_url) may point to, so the
    # API is no open redirect. "scheme://host" allows any port of that host;
    # "scheme://host:port" only that port.
    payments_redirect_origins: list[str] = Field(default=["http://localhost", "http://127.0.0.1"])
    # How long a hosted Checkout page stays payable (Stripe: 30 min to 24 h).
    payments_checkout_expires_minutes: int = Field(default=60, ge=30, le=24 * 60)
