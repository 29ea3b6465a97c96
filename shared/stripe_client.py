"""The one way the product builds a Stripe client.

Every Stripe call goes through stripe-python's ``StripeClient`` made here, so
``STRIPE_API_BASE`` redirects all of them at once (to the offline sandbox in
development and tests, or a proxy), with or without a real key. The API
version is the one pinned by the stripe-python release in pyproject.toml;
``STRIPE_API_VERSION`` states it, and importing this module fails if a library
upgrade moved it, because object shapes change with the version.
"""

from __future__ import annotations

import stripe
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from stripe._base_address import BaseAddresses

STRIPE_API_VERSION = "2026-10-28.endive"

if stripe.api_version != STRIPE_API_VERSION:  # pragma: no cover - guards upgrades
    raise RuntimeError(
        f"stripe-python speaks {stripe.api_version}, the code expects {STRIPE_API_VERSION}:"
        " review the shapes the services read before moving the pin"
    )


# stripe-python's request telemetry: a JSON header of the previous request's
# latency on every request, and a user-agent JSON rebuilt per request with the
# platform's description. Stripe's own setting turns both off; the call
# metrics (shared/metrics.py) measure latency here.
stripe.enable_telemetry = False


class StripeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    stripe_secret_key: SecretStr | None = None
    # Overrides api.stripe.com for every call when set.
    stripe_api_base: str | None = None
    # Scripts (make seed) use stripe-python's own retries, which reuse the
    # idempotency key. Services use shared/stripe_calls.py instead, which
    # turns these off and applies the settings below.
    stripe_max_network_retries: int = 2
    # The services' call policy: attempts and total time for one call, and
    # the timeout of one HTTP request to Stripe.
    stripe_call_attempts: int = Field(default=4, ge=1)
    stripe_call_budget_seconds: float = Field(default=15.0, gt=0)
    stripe_timeout_seconds: float = Field(default=20.0, gt=0)


class StripeNotConfigured(RuntimeError):
    pass


# The key sent to a non-Stripe API base (the offline sandbox) when none is set.
OFFLINE_KEY = "sk_test_offline"


def stripe_client(
    settings: StripeSettings,
    *,
    http_client: stripe.HTTPClient | None = None,
    max_network_retries: int | None = None,
) -> stripe.StripeClient:
    """A client for ``settings``; pass ``stripe.AIOHTTPClient()`` for the ``*_async`` calls.

    With ``STRIPE_API_BASE`` set, calls go there whether or not a key is set
    (without one, a placeholder test key is sent); with neither, there is no
    Stripe to talk to and this refuses rather than fail on the first call.
    """
    if settings.stripe_secret_key is not None:
        api_key = settings.stripe_secret_key.get_secret_value()
    elif settings.stripe_api_base:
        api_key = OFFLINE_KEY
    else:
        raise StripeNotConfigured("set STRIPE_SECRET_KEY, or STRIPE_API_BASE for an offline Stripe")
    base: BaseAddresses = {}
    if settings.stripe_api_base:
        base["api"] = settings.stripe_api_base.rstrip("/")
    return stripe.StripeClient(
        api_key,
        stripe_version=STRIPE_API_VERSION,
        base_addresses=base,
        http_client=http_client,
        max_network_retries=settings.stripe_max_network_retries
        if max_network_retries is None
        else max_network_retries,
    )
