"""Where the tests find Postgres and RabbitMQ, and the secrets they use.

``make test`` creates the ``billing_test`` database and vhost, so tests never
touch a running dev stack's data.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/billing_test"
)
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/billing_test")


def _beside_the_checkout() -> Path:
    """``shared/stripe/fixtures3.json`` in the nearest folder above the checkout
    that has one (the checkout may sit one level deeper, e.g. a git worktree)."""
    for folder in ROOT.parents:
        candidate = folder / "shared" / "stripe" / "fixtures3.json"
        if candidate.exists():
            return candidate
    return ROOT.parent / "shared" / "stripe" / "fixtures3.json"


STRIPE_FIXTURES = Path(os.environ.get("STRIPE_FIXTURES") or _beside_the_checkout())

WEBHOOK_SECRET = "whsec_test_primary_secret"
ROTATED_WEBHOOK_SECRET = "whsec_test_rotated_secret"
JWT_SECRET = "test-jwt-secret-that-is-long-enough-for-hs256"
SERVICE_TOKEN = "test-service-token"
# Short backoff tiers so retry tests take well under a second per attempt.
FAST_RETRY_DELAYS_MS = [100, 200, 400]
SCHEMAS = ("webhooks", "subscriptions", "credits", "retry")
