"""``make seed`` after the operator adds ``overage.<type>`` to a plan: the
subscriptions made before carry no metered price, so the seed adds it to each one
Stripe still bills, once however often (or however concurrently) it runs; ended
subscriptions and plans without overage are left alone. The seed runs as the
operator runs it, a process against the sandbox process."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import stripe

from shared.stripe_client import StripeSettings, stripe_client
from tests.support import env
from tests.support.sandbox_process import SandboxProcess

OVERAGE = "overage.meeting_room_hours = "


async def _seed(sandbox: SandboxProcess, catalog: Path) -> tuple[int, str, str]:
    run = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.subscriptions.seed_catalog",
        "--catalog",
        str(catalog),
        cwd=env.ROOT,
        env={
            **{k: v for k, v in os.environ.items() if k != "STRIPE_SECRET_KEY"},
            "STRIPE_API_BASE": sandbox.url,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(run.communicate(), timeout=120)
    assert run.returncode is not None
    return run.returncode, out.decode(), err.decode()


def _catalogs(tmp_path: Path) -> tuple[Path, Path]:
    """The repository's catalog as it is, and as it was before any plan billed overage."""
    text = (Path(env.ROOT) / "catalog.toml").read_text()
    assert OVERAGE in text
    before = tmp_path / "before.toml"
    before.write_text("\n".join(line for line in text.splitlines() if not line.startswith(OVERAGE)))
    after = tmp_path / "after.toml"
    after.write_text(text)
    return before, after


def _price_ids(client: stripe.StripeClient) -> dict[str, str]:
    return {
        p.lookup_key: p.id
        for p in client.v1.prices.list(params={"limit": 100}).data
        if p.lookup_key
    }


def _subscribe(client: stripe.StripeClient, price: str, **extra: Any) -> str:
    customer = client.v1.customers.create(params={"email": "member@example.com"})
    pm = client.v1.payment_methods.attach("pm_card_visa", params={"customer": customer.id})
    client.v1.customers.update(
        customer.id, params={"invoice_settings": {"default_payment_method": pm.id}}
    )
    return client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": price}], **extra}  # type: ignore[typeddict-item]
    ).id


def _prices_of(client: stripe.StripeClient, sub_id: str) -> list[str]:
    sub = client.v1.subscriptions.retrieve(sub_id)
    return [item.price.id for item in sub["items"].data]


async def test_subscriptions_made_before_overage_get_the_metered_price_once(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    before, after = _catalogs(tmp_path)
    code, out, err = await _seed(sandbox, before)
    assert code == 0, err
    assert "metered items: 0 subscription(s)" in out
    client = stripe_client(StripeSettings(stripe_api_base=sandbox.url))
    prices = _price_ids(client)
    assert "meeting_room_hour_overage" not in prices
    desk = _subscribe(client, prices["dedicated_desk_monthly"])
    partner = _subscribe(client, prices["dedicated_desk_partner_monthly"])
    trial = _subscribe(client, prices["dedicated_desk_monthly"], trial_period_days=14)
    office_yearly = _subscribe(client, prices["private_office_yearly"])
    canceled = _subscribe(client, prices["dedicated_desk_monthly"])
    client.v1.subscriptions.cancel(canceled)
    hot = _subscribe(client, prices["hot_desk_monthly"])

    # Two operators run the seed at once: each item is still added once.
    runs = await asyncio.gather(_seed(sandbox, after), _seed(sandbox, after))
    for code, _, err in runs:
        assert code == 0, err

    prices = _price_ids(client)
    monthly, yearly = (
        prices["meeting_room_hour_overage"],
        prices["meeting_room_hour_overage_yearly"],
    )
    expected = {
        desk: [prices["dedicated_desk_monthly"], monthly],
        partner: [prices["dedicated_desk_partner_monthly"], monthly],
        trial: [prices["dedicated_desk_monthly"], monthly],
        office_yearly: [prices["private_office_yearly"], yearly],
        canceled: [prices["dedicated_desk_monthly"]],  # ended: not touched
        hot: [prices["hot_desk_monthly"]],  # its plan bills no overage
    }
    assert {sub: _prices_of(client, sub) for sub in expected} == expected
    added = [line for _, out, _ in runs for line in out.splitlines() if line.startswith("added ")]
    # One line per subscription changed, whichever run changed it.
    assert sorted(line.split()[1] for line in added) == sorted(
        [desk, partner, trial, office_yearly]
    )
    assert f"added   {office_yearly} (active, private_office_yearly): " in "\n".join(added)
    item = next(
        i for i in client.v1.subscriptions.retrieve(desk)["items"].data if i.price.id == monthly
    )
    assert "quantity" not in item.to_dict()  # metered: usage decides

    # A third run changes nothing.
    code, out, err = await _seed(sandbox, after)
    assert code == 0, err
    assert "added " not in out
    assert "metered items: 0 subscription(s)" in out
    assert {sub: _prices_of(client, sub) for sub in expected} == expected
    # Stripe added each item once; the concurrent run's twin was answered as a replay.
    adds = [
        a
        for a in await sandbox.requests("/v1/subscription_items", "POST")
        if a["status"] == 200 and not a["replayed"]
    ]
    assert len(adds) == 4
    assert {a["idempotency_key"] for a in adds} == {
        f"seed-catalog-item-{sub}-{expected[sub][1]}"
        for sub in (desk, partner, trial, office_yearly)
    }
