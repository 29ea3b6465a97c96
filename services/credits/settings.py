"""Credits service settings."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class CreditsSettings(ServiceSettings):
    credits_port: int = 8083
    # How often each replica sweeps expired credits. Expired credits are never
    # spendable whatever the sweep's delay (a spend checks the expiry); the
    # sweep writes their ledger entries and the rollovers.
    credits_sweep_interval_seconds: float = Field(default=60.0, gt=0)
    # How often each replica retries overage Stripe has not accepted yet
    # (reported at once after the spend; this catches what failed then).
    credits_overage_retry_seconds: float = Field(default=30.0, gt=0)
    # Credits' queries leave no session state: no SET outside SET LOCAL, no
    # session advisory locks, no LISTEN or held cursor on a pooled connection
    # (the outbox listens on a connection of its own). Skipping the reset
    # query saves a round trip on every pooled use; a spend makes two.
    db_reset_sessions: bool = False
