"""Gateway settings."""

from __future__ import annotations

import limits
from pydantic import Field, SecretStr, field_validator, model_validator

from shared.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    gateway_port: int = 8080
    # Comma separated; during a rotation both the old and the new endpoint
    # secret verify. Kept as a string so pydantic-settings does not try JSON.
    stripe_webhook_secrets: SecretStr
    # Must be positive: stripe-python treats 0 (or None) as "no tolerance",
    # which would accept a replayed delivery of any age.
    webhook_tolerance_seconds: int = Field(default=300, gt=0)
    # How long a webhook may wait for the broker's confirm before we answer
    # 503 (Stripe then retries). Well under Stripe's own request timeout.
    publish_confirm_timeout: float = 5.0
    max_webhook_bytes: int = 1024 * 1024

    # HS256 key: at least 32 bytes (RFC 7518 wants a key as long as the hash).
    jwt_secret: SecretStr
    jwt_leeway_seconds: int = Field(default=0, ge=0, le=300)
    # When set, tokens must carry this issuer / audience.
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # A token whose exp lies further ahead than this is refused: a leaked
    # token must not stay useful for months.
    jwt_max_lifetime_seconds: int = Field(default=24 * 3600, gt=0)

    # Client API rate limits (the `limits` notation: "<count>/<period>"),
    # counted by each gateway replica on its own. Webhooks are never limited.
    rate_limit_member: str = "120/minute"
    rate_limit_staff: str = "1200/minute"
    rate_limit_anonymous: str = "60/minute"

    webhooks_url: str = "http://127.0.0.1:8081"
    subscriptions_url: str = "http://127.0.0.1:8082"
    credits_url: str = "http://127.0.0.1:8083"
    retry_url: str = "http://127.0.0.1:8084"
    upstream_timeout: float = Field(default=10.0, gt=0)

    @field_validator("jwt_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().encode()) < 32:
            raise ValueError("JWT_SECRET must be at least 32 bytes")
        return value

    @field_validator("rate_limit_member", "rate_limit_staff", "rate_limit_anonymous")
    @classmethod
    def _a_rate(cls, value: str) -> str:
        limits.parse(value)  # raises ValueError for anything it cannot read
        return value

    @field_validator("stripe_webhook_secrets")
    @classmethod
    def _at_least_one_secret(cls, value: SecretStr) -> SecretStr:
        if not [s for s in value.get_secret_value().split(",") if s.strip()]:
            raise ValueError("STRIPE_WEBHOOK_SECRETS must name at least one secret")
        return value

    @model_validator(mode="after")
    def _drain_outlasts_a_request(self) -> GatewaySettings:
        # On SIGTERM an in-flight webhook or forwarded call must get its answer
        # (200, or 503 for a confirm that never came) before the gateway stops.
        slowest = max(self.publish_confirm_timeout, self.upstream_timeout)
        if self.shutdown_drain_seconds <= slowest:
            raise ValueError(
                "SHUTDOWN_DRAIN_SECONDS must exceed PUBLISH_CONFIRM_TIMEOUT and UPSTREAM_TIMEOUT"
            )
        return self

    def webhook_secrets(self) -> list[str]:
        return [
            s.strip()
            for s in self.stripe_webhook_secrets.get_secret_value().split(",")
            if s.strip()
        ]
