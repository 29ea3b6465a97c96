"""Gateway settings."""

from __future__ import annotations

import ipaddress

import limits
from pydantic import Field, SecretStr, field_validator, model_validator

from shared.http.internal_auth import tokens_of
from shared.settings import ServiceSettings

# The services the gateway forwards to.
UPSTREAMS = ("webhooks", "subscriptions", "credits", "retry")


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
    # During a rotation, the secret (or comma separated secrets) being retired:
    # tokens signed with it still verify until it is removed, so clients need
    # no re-login (docs/runbook.md, "JWT secret"). Unset outside a rotation.
    jwt_previous_secrets: SecretStr | None = None
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
    # Comma separated addresses or networks of the load balancers in front of
    # the gateway: from them, the client's address is read from
    # X-Forwarded-For (see rate_limit.py). Empty: the connection's peer.
    trusted_proxies: str = ""

    webhooks_url: str = "http://127.0.0.1:8081"
    subscriptions_url: str = "http://127.0.0.1:8082"
    credits_url: str = "http://127.0.0.1:8083"
    retry_url: str = "http://127.0.0.1:8084"
    upstream_timeout: float = Field(default=10.0, gt=0)
    # The token presented to each service's internal API: each service has
    # its own, so one leaked token opens one service. The gateway serves no
    # internal API itself; its SERVICE_TOKEN, when set, is only the token for
    # every upstream without one of its own (one shared token, as in tests).
    service_token: SecretStr | None = None  # type: ignore[assignment]
    webhooks_service_token: SecretStr | None = None
    subscriptions_service_token: SecretStr | None = None
    credits_service_token: SecretStr | None = None
    retry_service_token: SecretStr | None = None

    @field_validator("jwt_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().encode()) < 32:
            raise ValueError("JWT_SECRET must be at least 32 bytes")
        return value

    @field_validator("jwt_previous_secrets")
    @classmethod
    def _previous_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and any(
            len(s.encode()) < 32 for s in _split(value.get_secret_value())
        ):
            raise ValueError("every secret in JWT_PREVIOUS_SECRETS must be at least 32 bytes")
        return value

    @field_validator("rate_limit_member", "rate_limit_staff", "rate_limit_anonymous")
    @classmethod
    def _a_rate(cls, value: str) -> str:
        limits.parse(value)  # raises ValueError for anything it cannot read
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                ipaddress.ip_network(part.strip(), strict=False)  # ValueError if not one
        return value

    def trusted_proxy_list(self) -> list[str]:
        return [p.strip() for p in self.trusted_proxies.split(",") if p.strip()]

    @field_validator("stripe_webhook_secrets")
    @classmethod
    def _at_least_one_secret(cls, value: SecretStr) -> SecretStr:
        if not [s for s in value.get_secret_value().split(",") if s.strip()]:
            raise ValueError("STRIPE_WEBHOOK_SECRETS must name at least one secret")
        return value

    @model_validator(mode="after")
    def _a_token_for_every_upstream(self) -> GatewaySettings:
        for upstream in UPSTREAMS:
            self.upstream_token(upstream)  # raises ValueError when there is none
        return self

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
        return _split(self.stripe_webhook_secrets.get_secret_value())

    def upstream_url(self, upstream: str) -> str:
        url: str = getattr(self, f"{upstream}_url")
        return url

    def upstream_token(self, upstream: str) -> str:
        """The token for ``upstream``'s internal API: its own, else SERVICE_TOKEN."""
        own: SecretStr | None = getattr(self, f"{upstream}_service_token")
        token = own or self.service_token
        if token is None:
            raise ValueError(f"set {upstream.upper()}_SERVICE_TOKEN (or SERVICE_TOKEN)")
        # The first of a comma separated list: the service's current token.
        return tokens_of(token.get_secret_value())[0]

    def jwt_previous(self) -> tuple[str, ...]:
        if self.jwt_previous_secrets is None:
            return ()
        return tuple(_split(self.jwt_previous_secrets.get_secret_value()))


def _split(secrets: str) -> list[str]:
    return [s.strip() for s in secrets.split(",") if s.strip()]
