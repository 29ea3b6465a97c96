"""Member emails from domain events, through a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
import stripe

from services.retry.notifications.render import Renderer, money
from services.retry.notifications.sender import build_message
from shared import billing_events
from shared.broker.topology import BILLING_EVENTS
from tests.retry.helpers import MailSink, attempts_of, case_in, fail_renewal, new_member
from tests.support import env
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack
from tests.support.waiting import eventually

MEMBER = billing_events.Member(user_id="u1", customer_id="cus_1", email="ada@example.com")


async def _publish(event_type: str, data: billing_events.BaseModel, event_id: str) -> None:
    body = {
        "id": event_id,
        "type": event_type,
        "schema_version": 1,
        "source": "test",
        "occurred_at": datetime.now(UTC).isoformat(),
        "data": data.model_dump(mode="json"),
    }
    connection = await aio_pika.connect(env.AMQP_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(BILLING_EVENTS)
        await exchange.publish(
            aio_pika.Message(orjson.dumps(body), message_id=event_id), routing_key=event_type
        )


def _refund(amount: int) -> billing_events.PaymentRefunded:
    return billing_events.PaymentRefunded(
        member=MEMBER,
        payment=billing_events.PaymentRef(payment_id="pay_1", payment_intent_id="pi_1"),
        amount_refunded=amount,
        total_refunded=amount,
        amount=5000,
        currency="usd",
        full=False,
        refund_id="re_1",
    )


async def test_every_email_arrives_once_after_the_mail_server_was_down(
    dunning_stack: Stack, mail: MailSink, db: asyncpg.Connection
) -> None:
    mail.stop()  # the mail server is down
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for n, event_id in enumerate(ids):
        await _publish("payment.refunded", _refund(1000 + n), event_id)
    # A duplicate delivery of the first event changes nothing.
    await _publish("payment.refunded", _refund(1000), ids[0])

    await eventually(
        lambda: db.fetchval("SELECT min(tries) FROM retry.mail WHERE state = 'pending'"),
        until=lambda tries: tries is not None and tries >= 2,
        what="sends failing while the server is down",
    )
    assert mail.messages == []
    mail.start()  # back

    await eventually(
        lambda: db.fetchval("SELECT count(*) FROM retry.mail WHERE state = 'sent'"),
        until=lambda sent: sent == 3,
        what="every email sent",
    )
    await asyncio.sleep(0.5)  # a second copy would have come by now
    received = mail.to("ada@example.com")
    assert sorted(m["X-Billing-Event-Id"] for m in received) == sorted(ids)
    assert sorted(m["Subject"] for m in received) == [
        "Refund issued: 10.00 USD",
        "Refund issued: 10.01 USD",
        "Refund issued: 10.02 USD",
    ]
    body = received[0]
    assert body.get_body(("plain",)) is not None and body.get_body(("html",)) is not None


async def test_a_failed_renewal_emails_the_member_the_next_date_and_the_recovery(
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    mail: MailSink,
) -> None:
    member = await new_member(stripe_client, "grace@example.com")
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=2)
    await case_in(db, invoice_id, "recovered")

    received = await eventually(
        lambda: asyncio.sleep(0, mail.to("grace@example.com")),
        until=lambda got: len(got) == 3,
        what="two payment-failed emails and a recovery",
    )
    subjects = [m["Subject"] for m in received]
    assert subjects.count("We could not take your payment of 199.00 USD") == 2
    assert "Payment received: 199.00 USD" in subjects
    failed = received[0].get_body(("plain",))
    assert failed is not None
    text = failed.get_content()
    assert "We will try again on" in text
    assert "https://invoice.stripe.com/" in text


async def test_a_renewal_hard_declined_emails_the_member_once_to_add_a_card(
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    mail: MailSink,
) -> None:
    member = await new_member(stripe_client, "hana@example.com")
    # The renewal meets a hard decline; our first attempt finds it on the same
    # card, charges nothing, and the case waits for a new card.
    invoice_id = await fail_renewal(
        stripe_client, sandbox, member, declines=10, decline_code="stolen_card"
    )
    await case_in(db, invoice_id, "paused")
    await eventually(
        lambda: attempts_of(db, invoice_id),
        until=lambda found: [a["outcome"] for a in found] == ["skipped"],
        what="the skipped attempt",
    )
    # Every dunning event so far has reached the emails, and each email is sent.
    await eventually(
        lambda: db.fetchval(
            "SELECT count(*) FROM retry.outbox o WHERE o.routing_key LIKE 'dunning.%'"
            " AND NOT EXISTS (SELECT 1 FROM retry.inbox i WHERE i.queue = 'retry.notifications'"
            " AND i.event_id = o.id::text)"
            " OR EXISTS (SELECT 1 FROM retry.mail WHERE state = 'pending')"
        ),
        until=lambda waiting: waiting == 0,
        what="every dunning event notified",
    )
    await asyncio.sleep(0.5)

    # One email for the one failure, and it asks for a new card.
    [failed] = mail.to("hana@example.com")
    assert failed["Subject"] == "We could not take your payment of 199.00 USD"
    body = failed.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "If your card has changed, or was lost or stolen, please add a new one." in text
    assert "Update your card: https://invoice.stripe.com/" in text

    # The new card pays: the member hears of it, and of nothing else.
    new_card = await stripe_client.v1.payment_methods.attach_async(
        "pm_card_mastercard", params={"customer": member.customer_id}
    )
    await stripe_client.v1.customers.update_async(
        member.customer_id, params={"invoice_settings": {"default_payment_method": new_card.id}}
    )
    await case_in(db, invoice_id, "recovered")
    received = await eventually(
        lambda: asyncio.sleep(0, mail.to("hana@example.com")),
        until=lambda got: len(got) >= 2,
        what="the recovery email",
    )
    await asyncio.sleep(0.5)
    received = mail.to("hana@example.com")
    assert [m["Subject"] for m in received] == [
        "We could not take your payment of 199.00 USD",
        "Payment received: 199.00 USD",
    ]


def test_templates_escape_html_but_not_text() -> None:
    renderer = Renderer()
    data = billing_events.PaymentSucceeded(
        member=MEMBER,
        payment=billing_events.PaymentRef(
            payment_id="pay_1", payment_intent_id="pi_1", booking_refs=["<Room A> & B"]
        ),
        amount=2500,
        currency="eur",
    )
    email = renderer.render("booking_confirmed", {"data": data.model_dump()})
    assert email.subject == "Booking confirmed: 25.00 EUR paid"
    assert "<Room A> & B" in email.text
    assert "&lt;Room A&gt; &amp; B" in email.html


def test_an_email_sent_again_carries_the_same_message_id() -> None:
    # A replica killed after the server accepted an email sends it again once
    # its lease ends; the copy must be recognisably the same message.
    row = {
        "event_id": "evt_mail_1",
        "recipient": "ada@example.com",
        "subject": "Payment received",
        "created_at": datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
        "body_text": "text",
        "body_html": "<p>html</p>",
    }
    first = build_message(row, "Billing <billing@example.com>")
    again = build_message(row, "Billing <billing@example.com>")
    other = build_message({**row, "event_id": "evt_mail_2"}, "Billing <billing@example.com>")
    assert first["Message-ID"] == again["Message-ID"]
    assert first["Message-ID"] != other["Message-ID"]
    assert first["Message-ID"].endswith("@example.com>")


def test_money_reads_minor_units() -> None:
    assert money(19900, "usd") == "199.00 USD"
    assert money(5, "eur") == "0.05 EUR"
    assert money(1200, "jpy") == "1200 JPY"
    # Three-decimal currencies: Stripe's minor unit is a thousandth.
    assert money(12_340, "kwd") == "12.340 KWD"
    assert money(5_000, "bhd") == "5.000 BHD"


@pytest.fixture
def few_tries(retry_settings: dict[str, Any]) -> dict[str, Any]:
    retry_settings["mail_max_tries"] = 2
    return retry_settings


async def test_an_email_the_server_keeps_refusing_is_dead_lettered_not_lost(
    few_tries: dict[str, Any], dunning_stack: Stack, mail: MailSink, db: asyncpg.Connection
) -> None:
    mail.stop()
    event_id = str(uuid.uuid4())
    await _publish("payment.refunded", _refund(700), event_id)
    row = await eventually(
        lambda: db.fetchrow("SELECT * FROM retry.mail WHERE event_id = $1", event_id),
        until=lambda r: r is not None and r["state"] == "dead",
        what="the email dead-lettered",
    )
    assert row["tries"] == 2 and "SMTPConnectError" in row["last_error"]
    # Billing went on meanwhile: the consumer acked the event long ago.
    assert (
        await db.fetchval(
            "SELECT count(*) FROM retry.inbox"
            " WHERE queue = 'retry.notifications' AND event_id = $1",
            event_id,
        )
        == 1
    )


async def test_an_email_that_cannot_be_built_is_dead_lettered_and_holds_no_other_back(
    few_tries: dict[str, Any], dunning_stack: Stack, mail: MailSink, db: asyncpg.Connection
) -> None:
    # An address the email package cannot parse: no server will ever take it.
    broken = billing_events.PaymentRefunded(
        **{**_refund(500).model_dump(), "member": {**MEMBER.model_dump(), "email": "ada@"}}
    )
    broken_id, fine_id = str(uuid.uuid4()), str(uuid.uuid4())
    await _publish("payment.refunded", broken, broken_id)
    await _publish("payment.refunded", _refund(600), fine_id)

    row = await eventually(
        lambda: db.fetchrow("SELECT * FROM retry.mail WHERE event_id = $1", broken_id),
        until=lambda r: r is not None and r["state"] == "dead",
        what="the unbuildable email dead-lettered",
    )
    assert row["last_error"]
    received = await eventually(
        lambda: asyncio.sleep(0, mail.to("ada@example.com")),
        until=lambda got: len(got) == 1,
        what="the other email sent",
    )
    assert received[0]["X-Billing-Event-Id"] == fine_id


async def test_a_refund_that_failed_after_its_email_tells_the_member_once(
    dunning_stack: Stack, mail: MailSink, db: asyncpg.Connection
) -> None:
    issued, failed = str(uuid.uuid4()), str(uuid.uuid4())
    await _publish("payment.refunded", _refund(1250), issued)
    refund_failed = billing_events.PaymentRefundFailed(
        member=MEMBER,
        payment=billing_events.PaymentRef(payment_id="pay_1", payment_intent_id="pi_1"),
        refund_id="re_1",
        amount_refunded=1250,
        total_refunded=0,
        amount=5000,
        currency="usd",
        status="failed",
        failure_reason="expired_or_canceled_card",
    )
    await _publish("payment.refund_failed", refund_failed, failed)
    await _publish("payment.refund_failed", refund_failed, failed)  # delivered again

    received = await eventually(
        lambda: asyncio.sleep(0, mail.to("ada@example.com")),
        until=lambda got: len(got) >= 2,
        what="the refund's email and its failure's",
    )
    await asyncio.sleep(0.5)  # a second copy would have come by now
    received = mail.to("ada@example.com")
    assert sorted(m["Subject"] for m in received) == [
        "Refund issued: 12.50 USD",
        "Your refund of 12.50 USD could not be completed",
    ]
    [message] = [m for m in received if m["X-Billing-Event-Id"] == failed]
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    assert "could not complete the refund of 12.50 USD" in text.get_content()
    assert "please contact us" in text.get_content()
    assert "<strong>12.50 USD</strong>" in html.get_content()
    assert (
        await db.fetchval(
            "SELECT count(*) FROM retry.mail WHERE event_type = 'payment.refund_failed'"
        )
        == 1
    )


def test_a_canceled_refund_reads_as_one_not_completed() -> None:
    data = billing_events.PaymentRefundFailed(
        member=MEMBER,
        payment=billing_events.PaymentRef(payment_id="pay_1", payment_intent_id="pi_1"),
        refund_id="re_2",
        amount_refunded=1200,
        total_refunded=0,
        amount=1200,
        currency="jpy",
        status="canceled",
    )
    email = Renderer().render("refund_failed", {"data": data.model_dump()})
    assert email.subject == "Your refund of 1200 JPY could not be completed"
    assert "The refund of 1200 JPY was canceled" in email.text
