"""The catalog seeder runs against the sandbox as a real process, idempotently."""

from __future__ import annotations

import os
import subprocess
import sys

import stripe

from services.subscriptions.seed_catalog import load_catalog
from tests.stripe_sandbox.sandbox_helpers import REPO_ROOT, Sandbox

EXPECTED = {
    "hot_desk_monthly": 19900,
    "dedicated_desk_monthly": 34900,
    "private_office_monthly": 89900,
    "meeting_room_hour": 2500,
}


def run_seed(sandbox: Sandbox) -> str:
    env = {**os.environ, "STRIPE_API_BASE": sandbox.base_url}
    env.pop("STRIPE_SECRET_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "services.subscriptions.seed_catalog"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_catalog_file() -> None:
    catalog = {p.lookup_key: p for p in load_catalog()}
    assert {k: p.unit_amount for k, p in catalog.items()} == EXPECTED
    assert catalog["hot_desk_monthly"].credits == 10
    assert catalog["meeting_room_hour"].interval is None


def test_seed_is_idempotent(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    sandbox.reset()
    first = run_seed(sandbox)
    assert first.count("created") == 4
    second = run_seed(sandbox)
    assert second.count("found") == 4 and "created" not in second
    prices = client.v1.prices.list(params={"lookup_keys": list(EXPECTED), "limit": 100}).data
    assert {p.lookup_key: p.unit_amount for p in prices} == EXPECTED
    assert len(client.v1.products.list(params={"limit": 100}).data) == 4
    hot = next(p for p in prices if p.lookup_key == "hot_desk_monthly")
    assert hot.recurring is not None and hot.recurring.interval == "month"
    assert hot.metadata["credits"] == "10"
    room = next(p for p in prices if p.lookup_key == "meeting_room_hour")
    assert room.type == "one_time"
