"""Settings shared by every service, read from the environment.

Each service subclasses :class:`ServiceSettings` with its own fields. Secrets
are ``SecretStr`` without a default: a service refuses to start without them
rather than run with a guessable value, and ``SecretStr`` keeps them out of
reprs and logs.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.stripe_client import StripeSettings


class ServiceSettings(StripeSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    database_url: str = "postgresql://postgres@127.0.0.1:5432/billing"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # Shared secret the gateway presents to the services' internal APIs.
    service_token: SecretStr

    http_host: str = "127.0.0.1"
    log_level: str = "INFO"
    migrate_on_start: bool = True

    db_pool_min: int = 1
    db_pool_max: int = 10

    # Consumers: prefetch bounds the messages one replica holds unacked, and so
    # the handlers it runs at once. Higher hides DB latency; lower spreads work
    # more evenly across replicas and bounds redelivery after a crash.
    consumer_prefetch: int = 32
    # Delays of the retry tiers, in milliseconds. A failing message waits in
    # tier n on its (n+1)-th retry. A bug's failure is dead-lettered past the
    # last tier; RetryLater and infrastructure errors (a database outage)
    # repeat the last tier, up to 20 attempts in all, before they are.
    retry_delays_ms: list[int] = Field(default=[1_000, 5_000, 30_000, 120_000, 600_000])

    # Idempotency-Key: how long a key is remembered (Stripe keeps 24 h), and
    # how long a request may hold one before a retry may take it over (a
    # request that died). Longer than the slowest Stripe call it may make.
    idempotency_key_ttl_seconds: int = Field(default=24 * 3600, gt=0)
    idempotency_lease_seconds: float = Field(default=60.0, gt=0)
    # Published outbox rows are kept this long for inspection, then purged.
    outbox_retention_days: int = Field(default=7, ge=1)
    housekeeping_interval_seconds: float = Field(default=3600.0, gt=0)
