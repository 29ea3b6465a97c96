"""Webhooks service settings."""

from __future__ import annotations

from pydantic import Field, SecretStr

from shared import queues
from shared.http.internal_auth import tokens_of
from shared.settings import ServiceSettings

# The services whose mirrored Stripe objects the drift report compares.
MIRROR_SERVICES = ("subscriptions",)


class WebhooksSettings(ServiceSettings):
    webhooks_port: int = 8081
    # Consumer queues whose dead letters this service takes into its store,
    # lists and redrives. Comma separated; defaults to every consumer queue of
    # the product.
    dead_letter_queues: str = ""
    # Dead-lettered messages the recorder holds unacked at once per replica.
    dead_letter_prefetch: int = Field(default=16, ge=1)
    # A redrive that claimed letters and died before publishing them all (its
    # replica killed) leaves them "redriving"; after this long another redrive
    # may take them (the consumers' inboxes absorb a second copy).
    dead_letter_redrive_lease_seconds: float = Field(default=300.0, gt=0)
    # How often the dead-letter gauges (count, age of the oldest) are refreshed.
    dead_letter_metrics_seconds: float = Field(default=15.0, gt=0)

    # Backfill from Stripe's Events API. Every replica runs the schedule; an
    # advisory lock lets one at a time start a job, at most one per interval.
    # 0 turns the schedule off (a backfill then only runs on request).
    reconcile_interval_seconds: float = Field(default=600.0, ge=0)
    # Stripe keeps events listable for 30 days: no backfill looks further back.
    reconcile_max_lookback_days: int = Field(default=30, ge=1, le=30)
    # Events younger than this are left to their webhook (normally seconds
    # away); a backfill checks up to now minus this, and the next one resumes there.
    reconcile_grace_seconds: float = Field(default=60.0, ge=0)
    # Each scheduled run starts this far before the stored cursor, for events
    # Stripe lists a little after their `created` second.
    reconcile_overlap_seconds: float = Field(default=300.0, ge=0)
    # Events per page of GET /v1/events (Stripe's maximum is 100).
    reconcile_page_size: int = Field(default=100, ge=1, le=100)
    # A job whose heartbeat is older than this died with its replica.
    reconcile_job_stale_seconds: float = Field(default=600.0, gt=0)

    # Drift report and repair (services/webhooks/drift.py): the services that
    # mirror Stripe objects, reached on their internal API as the gateway
    # reaches them, each with its own token (no token: not checked, the job
    # says so).
    subscriptions_url: str = "http://127.0.0.1:8082"
    subscriptions_service_token: SecretStr | None = None
    # Rows asked of a service per page, and Stripe objects read at once.
    reconcile_state_page_size: int = Field(default=100, ge=1, le=500)
    reconcile_state_concurrency: int = Field(default=4, ge=1, le=32)
    reconcile_state_timeout_seconds: float = Field(default=30.0, gt=0)

    def mirror_services(self) -> list[tuple[str, str, str | None]]:
        """(name, internal API URL, token) of every service that mirrors Stripe objects."""
        out: list[tuple[str, str, str | None]] = []
        for name in MIRROR_SERVICES:
            url: str = getattr(self, f"{name}_url")
            token: SecretStr | None = getattr(self, f"{name}_service_token")
            # The first of a comma separated list: the service's current token.
            current = tokens_of(token.get_secret_value())[0] if token is not None else None
            out.append((name, url.rstrip("/"), current))
        return out

    def dead_letter_queue_names(self) -> list[str]:
        configured = [q.strip() for q in self.dead_letter_queues.split(",") if q.strip()]
        return configured or list(queues.ALL)
