"""Renewals on a test clock: the draft hour, Smart Retries and what follows them,
and event times that follow the clock."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import stripe

from tests.stripe_sandbox.sandbox_helpers import (
    DAY,
    HOUR,
    REPO_ROOT,
    START,
    Sandbox,
    advance,
    events_of,
    free_port,
    new_clock,
    new_customer,
    types_of,
)

Account = Callable[..., dict[str, Any]]


def subscribe(
    client: stripe.StripeClient, price: str, card: str = "pm_card_visa"
) -> tuple[str, stripe.Subscription, str | None]:
    clock_id = new_clock(client)
    customer, pm = new_customer(client, card=card, clock=clock_id)
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": price}]}
    )
    return clock_id, sub, pm


def failing_card(client: stripe.StripeClient, customer: str) -> str:
    bad = client.v1.payment_methods.attach(
        "pm_card_chargeCustomerFail", params={"customer": customer}
    )
    client.v1.customers.update(
        customer, params={"invoice_settings": {"default_payment_method": bad.id}}
    )
    return bad.id


def test_renewal_invoice_stays_draft_for_an_hour(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    sandbox.reset()
    catalog = _catalog(client)
    clock_id, sub, _ = subscribe(client, catalog["hot_desk"])
    period_end = sub["items"].data[0].current_period_end

    advance(client, clock_id, period_end + 30 * 60)
    sub = client.v1.subscriptions.retrieve(sub.id)
    renewal = client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert renewal.billing_reason == "subscription_cycle"
    assert renewal.status == "draft" and renewal.attempt_count == 0
    assert renewal.automatically_finalizes_at == period_end + HOUR
    assert renewal.created == period_end
    assert sub.status == "active" and sub["items"].data[0].current_period_start == period_end
    assert types_of(client, renewal.id, "invoice.") == ["invoice.created"]

    advance(client, clock_id, period_end + 2 * HOUR)
    renewal = client.v1.invoices.retrieve(renewal.id)
    assert renewal.status == "paid" and renewal.attempt_count == 1
    assert renewal.status_transitions.finalized_at == period_end + HOUR
    assert renewal.status_transitions.paid_at == period_end + HOUR
    assert types_of(client, renewal.id, "invoice.") == [
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
    ]


def test_event_created_follows_the_test_clock(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    sandbox.reset()
    catalog = _catalog(client)
    clock_id, sub, _ = subscribe(client, catalog["hot_desk"])
    assert {e.created for e in events_of(client, sub.id)} == {START}
    period_end = sub["items"].data[0].current_period_end
    advance(client, clock_id, period_end + 2 * HOUR)
    renewal = str(client.v1.subscriptions.retrieve(sub.id).latest_invoice)
    times = {e.type: e.created for e in events_of(client, renewal)}
    assert times["invoice.created"] == period_end
    assert times["invoice.finalized"] == period_end + HOUR
    assert times["invoice.paid"] == period_end + HOUR
    updated = events_of(client, sub.id, "customer.subscription.updated")[-1:]
    assert [e.created for e in updated] == [period_end]
    # Time-driven events carry no request; objects off any clock use wall time.
    assert updated[0].request is not None and updated[0].request.id is None
    before = int(time.time())
    plain = client.v1.customers.create(params={"email": "wall@example.com"})
    assert events_of(client, plain.id)[0].created >= before


def _catalog(client: stripe.StripeClient) -> dict[str, str]:
    product = client.v1.products.create(params={"name": "Hot desk"})
    price = client.v1.prices.create(
        params={
            "product": product.id,
            "unit_amount": 19900,
            "currency": "usd",
            "recurring": {"interval": "month"},
        }
    )
    return {"hot_desk": price.id}


def _fail_every_retry(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> tuple[str, stripe.Subscription, int]:
    clock_id, sub, _ = subscribe(client, catalog["hot_desk"].id)
    failing_card(client, str(sub.customer))
    period_end = sub["items"].data[0].current_period_end
    first_attempt = period_end + HOUR
    # 8 tries within 2 weeks: the first, then one every 2 days.
    advance(client, clock_id, first_attempt + 14 * DAY + HOUR)
    return clock_id, client.v1.subscriptions.retrieve(sub.id), first_attempt


def test_after_all_retries_fail_the_subscription_is_canceled_by_default(
    client: stripe.StripeClient, catalog: dict[str, Any], account: Account
) -> None:
    assert account()["after_retries"] == "canceled"
    _, sub, first_attempt = _fail_every_retry(client, catalog)
    assert sub.status == "canceled"
    assert sub.ended_at == first_attempt + 14 * DAY
    assert sub.cancellation_details is not None
    assert sub.cancellation_details.reason == "payment_failed"
    renewal = client.v1.invoices.retrieve(
        client.v1.invoices.list(params={"subscription": sub.id, "limit": 1}).data[0].id
    )
    assert renewal.attempt_count == 8 and renewal.next_payment_attempt is None
    failures = events_of(client, renewal.id, "invoice.payment_failed")
    assert [e.created for e in failures] == [first_attempt + k * 2 * DAY for k in range(8)]
    assert [e.data.object["next_payment_attempt"] for e in failures] == [
        first_attempt + k * 2 * DAY for k in range(1, 8)
    ] + [None]


def test_after_all_retries_fail_the_subscription_can_become_unpaid(
    client: stripe.StripeClient, catalog: dict[str, Any], account: Account
) -> None:
    account(after_retries="unpaid")
    clock_id, sub, _ = _fail_every_retry(client, catalog)
    assert sub.status == "unpaid"
    statuses = [
        e.data.object["status"] for e in events_of(client, sub.id, "customer.subscription.updated")
    ]
    assert statuses[-2:] == ["past_due", "unpaid"]

    # An unpaid subscription keeps being invoiced, but Stripe no longer attempts payment.
    next_end = sub["items"].data[0].current_period_end
    advance(client, clock_id, next_end + 2 * HOUR)
    sub = client.v1.subscriptions.retrieve(sub.id)
    assert sub.status == "unpaid"
    latest = client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert latest.status == "open" and latest.attempt_count == 0
    assert latest.next_payment_attempt is None

    # Paying the latest invoice makes the subscription active again.
    paid = client.v1.invoices.pay(latest.id, params={"payment_method": "pm_card_visa"})
    assert paid.status == "paid"
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"


def test_after_all_retries_fail_the_subscription_can_stay_past_due(
    client: stripe.StripeClient, catalog: dict[str, Any], account: Account
) -> None:
    account(after_retries="past_due", retry_tries=4, retry_window_days=7)
    clock_id, sub, _ = subscribe(client, catalog["hot_desk"].id)
    failing_card(client, str(sub.customer))
    first_attempt = sub["items"].data[0].current_period_end + HOUR
    advance(client, clock_id, first_attempt + 10 * DAY)
    sub = client.v1.subscriptions.retrieve(sub.id)
    assert sub.status == "past_due"
    renewal = client.v1.invoices.retrieve(str(sub.latest_invoice))
    # 4 tries within a week: every 7/3 days (integer seconds).
    assert renewal.attempt_count == 4 and renewal.next_payment_attempt is None


def test_without_smart_retries_a_failed_renewal_waits_for_the_business(
    client: stripe.StripeClient, catalog: dict[str, Any], account: Account
) -> None:
    account(smart_retries=False)
    clock_id, sub, _ = subscribe(client, catalog["hot_desk"].id)
    failing_card(client, str(sub.customer))
    period_end = sub["items"].data[0].current_period_end
    advance(client, clock_id, period_end + 2 * HOUR)
    renewal = client.v1.invoices.retrieve(
        str(client.v1.subscriptions.retrieve(sub.id).latest_invoice)
    )
    assert renewal.status == "open" and renewal.attempt_count == 1
    assert renewal.next_payment_attempt is None
    failed = events_of(client, renewal.id, "invoice.payment_failed")
    assert [e.data.object["next_payment_attempt"] for e in failed] == [None]

    advance(client, clock_id, period_end + 20 * DAY)
    renewal = client.v1.invoices.retrieve(renewal.id)
    assert renewal.attempt_count == 1  # nothing re-attempted it
    assert client.v1.subscriptions.retrieve(sub.id).status == "past_due"

    # The product's own dunning collects it.
    paid = client.v1.invoices.pay(renewal.id, params={"payment_method": "pm_card_mastercard"})
    assert paid.status == "paid" and paid.attempt_count == 2
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"


def test_hard_declines_are_not_retried(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    clock_id, sub, pm = subscribe(client, catalog["hot_desk"].id)
    sandbox.control(
        "POST", f"/_sandbox/payment_methods/{pm}/fail_next", {"decline_code": "stolen_card"}
    )
    advance(client, clock_id, sub["items"].data[0].current_period_end + 2 * HOUR)
    renewal = client.v1.invoices.retrieve(
        str(client.v1.subscriptions.retrieve(sub.id).latest_invoice)
    )
    assert renewal.attempt_count == 1 and renewal.next_payment_attempt is None


def test_settings_control_validates(sandbox: Sandbox, account: Account) -> None:
    assert account(smart_retries=False)["smart_retries"] is False
    bad = sandbox.raw("POST", "/_sandbox/settings", json={"after_retries": "deleted"})
    assert bad.status_code == 400
    assert "after_retries" in bad.json()["error"]["message"]
    unknown = sandbox.raw("POST", "/_sandbox/settings", json={"retries": 3})
    assert unknown.status_code == 400
    # A refused update changes nothing.
    assert sandbox.control("GET", "/_sandbox/settings")["smart_retries"] is False


@pytest.fixture
def configured_sandbox() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, our own interpreter
        [
            sys.executable,
            "-m",
            "stripe_sandbox",
            "--port",
            str(port),
            "--smart-retries",
            "off",
            "--after-retries",
            "unpaid",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                if requests.get(url + "/_sandbox/health", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "sandbox did not start"
            time.sleep(0.05)  # waiting for a process to bind; nothing to poll but the port
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_settings_come_from_the_command_line(configured_sandbox: str) -> None:
    settings = requests.get(configured_sandbox + "/_sandbox/settings", timeout=10).json()
    assert settings["smart_retries"] is False and settings["after_retries"] == "unpaid"
    requests.post(
        configured_sandbox + "/_sandbox/settings", json={"smart_retries": True}, timeout=10
    )
    # A reset goes back to what the command line said.
    requests.post(configured_sandbox + "/_sandbox/reset", timeout=10)
    settings = requests.get(configured_sandbox + "/_sandbox/settings", timeout=10).json()
    assert settings["smart_retries"] is False


def test_renewal_needing_authentication_asks_for_action(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    clock_id, sub, _ = subscribe(client, catalog["hot_desk"].id)
    card = client.v1.payment_methods.attach(
        "pm_card_authenticationRequired", params={"customer": str(sub.customer)}
    )
    client.v1.subscriptions.update(sub.id, params={"default_payment_method": card.id})
    advance(client, clock_id, sub["items"].data[0].current_period_end + 2 * HOUR)
    sub = client.v1.subscriptions.retrieve(sub.id)
    assert sub.status == "past_due"
    renewal = client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert renewal.status == "open" and renewal.next_payment_attempt is None
    assert types_of(client, renewal.id, "invoice.payment")[-2:] == [
        "invoice.payment_failed",
        "invoice.payment_action_required",
    ]
    # The customer authenticates (on the hosted invoice page): the invoice is paid.
    payment = client.v1.invoice_payments.list(params={"invoice": renewal.id}).data[0]
    pi_id = str(payment.payment.payment_intent)
    assert client.v1.payment_intents.retrieve(pi_id).status == "requires_action"
    sandbox.control(
        "POST", f"/_sandbox/payment_intents/{pi_id}/authenticate", {"outcome": "succeeded"}
    )
    assert client.v1.invoices.retrieve(renewal.id).status == "paid"
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"


def test_renewal_paid_from_a_bank_account_settles_later(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    clock_id, sub, _ = subscribe(client, catalog["hot_desk"].id)
    bank = client.v1.payment_methods.attach(
        "pm_usBankAccount_success", params={"customer": str(sub.customer)}
    )
    client.v1.subscriptions.update(sub.id, params={"default_payment_method": bank.id})
    period_end = sub["items"].data[0].current_period_end
    advance(client, clock_id, period_end + 90 * 60)  # finalized and debited at +1 h
    renewal = client.v1.invoices.retrieve(
        str(client.v1.subscriptions.retrieve(sub.id).latest_invoice)
    )
    assert renewal.status == "open" and renewal.attempt_count == 1
    payment = client.v1.invoice_payments.list(params={"invoice": renewal.id}).data[0]
    assert (
        client.v1.payment_intents.retrieve(str(payment.payment.payment_intent)).status
        == "processing"
    )
    # The debit clears an hour after it started; the invoice is paid then.
    advance(client, clock_id, period_end + 3 * HOUR)
    assert client.v1.invoices.retrieve(renewal.id).status == "paid"
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"
