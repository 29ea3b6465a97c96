"""``make seed`` syncs catalog.toml to Stripe (the sandbox, as a real process):
idempotently by lookup key, archiving what left the file, refusing a key reused
for another amount."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import stripe

from services.subscriptions.seed_catalog import wanted_meters, wanted_prices
from shared import catalog
from tests.stripe_sandbox.sandbox_helpers import REPO_ROOT, Sandbox


def run_seed(sandbox: Sandbox, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STRIPE_API_BASE": sandbox.base_url}
    env.pop("STRIPE_SECRET_KEY", None)
    args = ["--catalog", str(path)] if path else []
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "services.subscriptions.seed_catalog", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _prices(client: stripe.StripeClient) -> list[stripe.Price]:
    return list(client.v1.prices.list(params={"limit": 100}).data)


def test_every_plan_price_eligibility_price_and_product_is_wanted() -> None:
    wanted = {w.lookup_key: w for w in wanted_prices(catalog.load())}
    assert wanted["hot_desk_monthly"].amount == 19900
    assert wanted["hot_desk_yearly"].interval == "year"
    assert wanted["hot_desk_partner_monthly"].metadata["tier"] == "partner"
    assert wanted["day_pass"].interval is None
    assert wanted["hot_desk_monthly"].meter is None
    # Overage: a metered price on the plan's meter, per interval the plans are sold on.
    overage = wanted["meeting_room_hour_overage"]
    assert (overage.amount, overage.interval, overage.meter) == (
        2500,
        "month",
        "meeting_room_hours_overage",
    )
    assert overage.product_id == "overage_meeting_room_hours"
    assert wanted["meeting_room_hour_overage_yearly"].interval == "year"
    assert wanted_meters(catalog.load()) == {
        "meeting_room_hours_overage": "Meeting-room hours overage"
    }


def test_overage_prices_are_metered_on_one_meter_made_once(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    sandbox.reset()
    assert run_seed(sandbox).returncode == 0
    again = run_seed(sandbox)
    assert again.returncode == 0, again.stderr
    assert "meeting_room_hours_overage" in again.stdout and "(exists)" in again.stdout
    [meter] = client.v1.billing.meters.list(params={"limit": 100}).data
    assert (meter.event_name, meter.default_aggregation.formula) == (
        "meeting_room_hours_overage",
        "sum",
    )
    assert meter.customer_mapping.event_payload_key == "stripe_customer_id"
    by_key = {p.lookup_key: p for p in _prices(client)}
    for key, interval in [
        ("meeting_room_hour_overage", "month"),
        ("meeting_room_hour_overage_yearly", "year"),
    ]:
        recurring = by_key[key].recurring
        assert recurring is not None
        assert (recurring.usage_type, recurring.meter, recurring.interval) == (
            "metered",
            meter.id,
            interval,
        )
        assert by_key[key].unit_amount == 2500
    # The plans themselves stay licensed.
    plan = by_key["dedicated_desk_monthly"].recurring
    assert plan is not None and (plan.usage_type, plan.meter) == ("licensed", None)


def test_a_key_stripe_has_as_a_licensed_price_is_refused_as_metered(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    sandbox.reset()
    product = client.v1.products.create(params={"name": "Elsewhere"})
    client.v1.prices.create(
        params={
            "product": product.id,
            "unit_amount": 2500,
            "currency": "usd",
            "recurring": {"interval": "month"},
            "lookup_key": "meeting_room_hour_overage",
        }
    )
    done = run_seed(sandbox)
    assert done.returncode == 2
    assert "'meeting_room_hour_overage'" in done.stderr and "metered" in done.stderr
    assert client.v1.billing.meters.list(params={"limit": 100}).data == []  # nothing changed


def test_seed_is_idempotent(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    sandbox.reset()
    expected = {w.lookup_key: w.amount for w in wanted_prices(catalog.load())}
    first = run_seed(sandbox)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created") == len(expected)
    second = run_seed(sandbox)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("found") == len(expected) and "created" not in second.stdout
    prices = _prices(client)
    assert {p.lookup_key: p.unit_amount for p in prices} == expected  # no duplicate
    hot = next(p for p in prices if p.lookup_key == "hot_desk_monthly")
    assert hot.recurring is not None and hot.recurring.interval == "month"
    assert hot.product == "plan_hot_desk"


def test_a_price_that_left_the_file_is_archived_and_comes_back(
    sandbox: Sandbox, client: stripe.StripeClient, tmp_path: Path
) -> None:
    sandbox.reset()
    assert run_seed(sandbox).returncode == 0
    text = (REPO_ROOT / "catalog.toml").read_text()
    smaller = tmp_path / "catalog.toml"
    smaller.write_text(
        text.replace('prices.year = { lookup_key = "hot_desk_yearly", amount = 199000 }\n', "")
    )

    done = run_seed(sandbox, smaller)

    assert done.returncode == 0, done.stderr
    assert "archived hot_desk_yearly" in done.stdout
    yearly = next(p for p in _prices(client) if p.lookup_key == "hot_desk_yearly")
    assert yearly.active is False
    back = run_seed(sandbox)
    assert "reactivated hot_desk_yearly" in back.stdout
    assert next(p for p in _prices(client) if p.lookup_key == "hot_desk_yearly").active


def test_a_lookup_key_reused_for_another_amount_is_refused_by_name(
    sandbox: Sandbox, client: stripe.StripeClient, tmp_path: Path
) -> None:
    sandbox.reset()
    assert run_seed(sandbox).returncode == 0
    changed = tmp_path / "catalog.toml"
    changed.write_text(
        (REPO_ROOT / "catalog.toml")
        .read_text()
        .replace(
            'lookup_key = "hot_desk_monthly", amount = 19900',
            'lookup_key = "hot_desk_monthly", amount = 20900',
        )
    )
    before = {p.id: (p.unit_amount, p.active) for p in _prices(client)}

    done = run_seed(sandbox, changed)

    assert done.returncode == 2
    assert "'hot_desk_monthly'" in done.stderr and "new key" in done.stderr
    assert {p.id: (p.unit_amount, p.active) for p in _prices(client)} == before  # nothing changed


def test_a_file_reusing_a_key_for_two_amounts_is_refused_by_name(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    text = (REPO_ROOT / "catalog.toml").read_text()
    broken = tmp_path / "catalog.toml"
    broken.write_text(
        text.replace('lookup_key = "dedicated_desk_monthly"', 'lookup_key = "hot_desk_monthly"')
    )
    done = run_seed(sandbox, broken)
    assert done.returncode == 2
    assert "'hot_desk_monthly'" in done.stderr
