"""Settings shared by every service, read from the environment.

Each service subclasses :class:`ServiceSettings` with its own fields. Secrets
are ``SecretStr`` without a default: a service refuses to start without them
rather than run with a guessable value, and ``SecretStr`` keeps them out of
reprs and logs. The database and broker URLs may carry passwords too: they are
kept out of the settings' repr.
"""

from __future__ import annotations

import ssl

from pydantic import Field, FilePath, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.broker.tls import client_context
from shared.stripe_client import StripeSettings


class ServiceSettings(StripeSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    database_url: str = Field(default="postgresql://postgres@127.0.0.1:5432/billing", repr=False)
    # amqps:// for TLS (then see the amqp_* TLS settings below). ?heartbeat=N
    # sets the heartbeat in seconds for every broker connection.
    amqp_url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/", repr=False)
    # The token callers (the gateway) must present to this service's internal
    # API; each service has its own. Comma separated during a rotation: the
    # first is current, the others are still accepted.
    service_token: SecretStr

    http_host: str = "127.0.0.1"
    # Bounds on every HTTP connection (shared/http/server.py), so slow or
    # stalled clients hold neither connections nor memory for long: a
    # request's line and headers must arrive within HTTP_HEADER_TIMEOUT of its
    # first byte, its body within HTTP_BODY_TIMEOUT of its headers (else 408
    # and the connection closes); a connection idle between requests closes
    # after HTTP_KEEPALIVE_TIMEOUT, kept longer than a load balancer's own
    # idle timeout (60 s on most) so it never reuses one being closed. Beyond
    # HTTP_MAX_CONNECTIONS open at once, a new connection is closed at once:
    # the cap bounds memory, about 1.7 MiB for a connection stalled with a
    # nearly whole 1 MiB body, so keep cap x 1.7 MiB within the memory limit.
    http_header_timeout: float = Field(default=10.0, gt=0)
    http_body_timeout: float = Field(default=30.0, gt=0)
    http_keepalive_timeout: float = Field(default=75.0, gt=0)
    http_max_connections: int = Field(default=200, gt=0)
    log_level: str = "INFO"
    migrate_on_start: bool = True

    db_pool_min: int = 1
    db_pool_max: int = 10
    # Seconds any one query of the pool may take: a statement stuck behind a
    # lock fails (and its message is retried) instead of holding a connection
    # forever. Migrations run on a connection of their own without it.
    db_command_timeout: float = Field(default=30.0, gt=0)
    # Reset each connection's session (RESET ALL, UNLISTEN, advisory locks)
    # as it goes back to the pool: one round trip per use. A service may turn
    # it off only if none of its code sets session state (shared/db.py).
    db_reset_sessions: bool = True

    # TLS to the broker, for an amqps:// AMQP_URL (managed RabbitMQ). The
    # broker's certificate is always verified: against this CA bundle, or the
    # system's trust store when unset.
    amqp_ca_file: FilePath | None = None
    # A client certificate, for brokers that require one (mutual TLS); the key
    # may be in the certificate file.
    amqp_cert_file: FilePath | None = None
    amqp_key_file: FilePath | None = None
    # Off only for a broker reached by a name its certificate does not list;
    # the certificate must still be signed by the CA.
    amqp_verify_hostname: bool = True

    # RabbitMQ's management API, through which a service applies and checks
    # its queues' policies (shared/broker/policies.py). Unset: the AMQP_URL's
    # host on port 15672 (https on 15671 for amqps://), with its user and
    # password; a URL here may carry a user and password of its own.
    amqp_management_url: str | None = Field(default=None, repr=False)

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

    # SIGTERM: in-flight HTTP requests and messages get this long to finish;
    # what still runs then is cancelled (a message's transaction rolls back and
    # the message goes back to its queue). The orchestrator's grace period must
    # exceed it plus shared/shutdown.py's tail (see deploy/README.md).
    shutdown_drain_seconds: float = Field(default=20.0, gt=0)

    @model_validator(mode="after")
    def _tls_settings_need_amqps(self) -> ServiceSettings:
        tls_files = (self.amqp_ca_file, self.amqp_cert_file, self.amqp_key_file)
        if any(f is not None for f in tls_files) and not self.amqp_tls:
            # Certificates configured for a plain connection: someone believes
            # the traffic is encrypted when it is not.
            raise ValueError("AMQP_CA_FILE/AMQP_CERT_FILE/AMQP_KEY_FILE need an amqps:// AMQP_URL")
        if self.amqp_key_file is not None and self.amqp_cert_file is None:
            raise ValueError("AMQP_KEY_FILE needs AMQP_CERT_FILE")
        return self

    @property
    def amqp_tls(self) -> bool:
        return self.amqp_url.startswith("amqps://")

    def amqp_ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for every broker connection; None for a plain amqp:// URL."""
        if not self.amqp_tls:
            return None
        return client_context(
            ca_file=self.amqp_ca_file,
            cert_file=self.amqp_cert_file,
            key_file=self.amqp_key_file,
            verify_hostname=self.amqp_verify_hostname,
        )
