"""Gateway settings."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

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

    jwt_secret: SecretStr
    jwt_leeway_seconds: int = 0

    webhooks_url: str = "http://127.0.0.1:8081"
    subscriptions_url: str = "http://127.0.0.1:8082"
    credits_url: str = "http://127.0.0.1:8083"
    retry_url: str = "http://127.0.0.1:8084"
    upstream_timeout: float = Field(default=10.0, gt=0)

    @field_validator("stripe_webhook_secrets")
    @classmethod
    def _at_least_one_secret(cls, value: SecretStr) -> SecretStr:
        if not [s for s in value.get_secret_value().split(",") if s.strip()]:
            raise ValueError("STRIPE_WEBHOOK_SECRETS must name at least one secret")
        return value

    def webhook_secrets(self) -> list[str]:
        return [
            s.strip()
            for s in self.stripe_webhook_secrets.get_secret_value().split(",")
            if s.strip()
        ]
