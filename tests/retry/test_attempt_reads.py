"""An attempt's re-read: the invoice comes with its subscription expanded, so
the subscription's status costs no request of its own; an invoice without it
(an older API version's top-level ``subscription``) still has it read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import stripe

from services.retry.attempts import Attempts
from services.retry.handlers import schedule_of
from services.retry.settings import RetrySettings
from services.retry.stripe_objects import Invoice
from shared.clock import SystemClock
from shared.stripe_calls import StripeCalls
from shared.stripe_client import StripeSettings
from tests.retry.helpers import fail_renewal, new_member
from tests.support.sandbox_process import SandboxProcess


def _invoice(**fields: Any) -> dict[str, Any]:
    return {"id": "in_1", "customer": "cus_1", "currency": "usd", "status": "open", **fields}


def test_an_expanded_subscription_gives_its_id_and_status() -> None:
    invoice = Invoice.model_validate(
        _invoice(
            parent={
                "type": "subscription_details",
                "subscription_details": {
                    "metadata": {"user_id": "user_42"},
                    "subscription": {"id": "sub_1", "object": "subscription", "status": "canceled"},
                },
            }
        )
    )
    assert invoice.subscription_id == "sub_1"
    assert invoice.subscription_status == "canceled"
    assert invoice.user_id == "user_42"


@pytest.mark.parametrize(
    "fields",
    [
        # Not expanded: the id alone.
        {"parent": {"subscription_details": {"subscription": "sub_1"}}},
        # An older API version: the subscription at the top level (even expanded).
        {"subscription": "sub_1"},
        {"subscription": {"id": "sub_1", "status": "active"}},
    ],
)
def test_without_the_expanded_subscription_its_status_is_unknown(fields: dict[str, Any]) -> None:
    invoice = Invoice.model_validate(_invoice(**fields))
    assert invoice.subscription_id == "sub_1"
    assert invoice.subscription_status is None


def test_an_invoice_without_a_subscription_has_no_status() -> None:
    invoice = Invoice.model_validate(_invoice(parent=None))
    assert invoice.subscription_id is None
    assert invoice.subscription_status is None


@pytest.fixture
async def attempts(sandbox: SandboxProcess) -> AsyncIterator[Attempts]:
    settings = RetrySettings(service_token="test-token", stripe_api_base=sandbox.url)  # type: ignore[arg-type]
    calls = StripeCalls(StripeSettings(stripe_api_base=sandbox.url))
    # The database is not reached by a re-read: no pool.
    yield Attempts(
        None,
        calls=calls,
        clock=SystemClock(),
        settings=settings,
        schedule=schedule_of(settings),
        owner="test",
    )
    await calls.close()


async def _subscription_reads(sandbox: SandboxProcess, subscription_id: str) -> int:
    return len(await sandbox.requests(f"/v1/subscriptions/{subscription_id}", method="GET"))


async def test_the_re_read_takes_the_status_from_the_expanded_invoice(
    attempts: Attempts, sandbox: SandboxProcess, stripe_client: stripe.StripeClient
) -> None:
    member = await new_member(stripe_client)
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=1)
    # (the helper read the subscription and the invoice itself)
    sub_reads = await _subscription_reads(sandbox, member.subscription_id)
    invoice_reads = len(await sandbox.requests(f"/v1/invoices/{invoice_id}", method="GET"))

    invoice = await attempts._read_invoice(invoice_id)
    assert invoice.subscription_id == member.subscription_id
    assert invoice.subscription_status == "past_due"
    assert await attempts._subscription_ended(invoice) is False

    await stripe_client.v1.subscriptions.cancel_async(member.subscription_id)
    invoice = await attempts._read_invoice(invoice_id)
    assert invoice.subscription_status == "canceled"
    assert await attempts._subscription_ended(invoice) is True
    # The subscription was never read on its own; the invoice was, expanded.
    assert await _subscription_reads(sandbox, member.subscription_id) == sub_reads
    reads = (await sandbox.requests(f"/v1/invoices/{invoice_id}", method="GET"))[invoice_reads:]
    assert len(reads) == 2
    assert all("parent.subscription_details.subscription" in r["query"] for r in reads)


async def test_an_invoice_in_the_older_shape_has_its_subscription_read(
    attempts: Attempts, sandbox: SandboxProcess, stripe_client: stripe.StripeClient
) -> None:
    member = await new_member(stripe_client)
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=1)
    older = Invoice.model_validate(
        _invoice(id=invoice_id, customer=member.customer_id, subscription=member.subscription_id)
    )
    sub_reads = await _subscription_reads(sandbox, member.subscription_id)

    assert await attempts._subscription_ended(older) is False
    assert await _subscription_reads(sandbox, member.subscription_id) == sub_reads + 1
    await stripe_client.v1.subscriptions.cancel_async(member.subscription_id)
    assert await attempts._subscription_ended(older) is True
    assert await _subscription_reads(sandbox, member.subscription_id) == sub_reads + 2
