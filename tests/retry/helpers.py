"""Members, renewals and mail for the dunning tests (Stripe through the sandbox)."""

from __future__ import annotations

import email
import email.policy
import json
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
import stripe
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support import env
from tests.support.processes import free_port
from tests.support.sandbox_process import SandboxProcess
from tests.support.waiting import eventually

START = 1_767_225_600  # 2026-01-01T00:00:00Z
HOUR = 3_600
DAY = 86_400


@dataclass
class Member:
    clock_id: str
    customer_id: str
    payment_method: str
    subscription_id: str
    period_end: int


async def new_member(client: stripe.StripeClient, email_address: str = "m@example.com") -> Member:
    """A member on a test clock with a monthly plan, paid by a working card."""
    clock = await client.v1.test_helpers.test_clocks.create_async(params={"frozen_time": START})
    customer = await client.v1.customers.create_async(
        params={"email": email_address, "name": "Member", "test_clock": clock.id}
    )
    pm = await client.v1.payment_methods.attach_async(
        "pm_card_visa", params={"customer": customer.id}
    )
    await client.v1.customers.update_async(
        customer.id, params={"invoice_settings": {"default_payment_method": pm.id}}
    )
    product = await client.v1.products.create_async(params={"name": "Hot desk"})
    price = await client.v1.prices.create_async(
        params={
            "product": product.id,
            "unit_amount": 19900,
            "currency": "usd",
            "recurring": {"interval": "month"},
        }
    )
    sub = await client.v1.subscriptions.create_async(
        params={
            "customer": customer.id,
            "items": [{"price": price.id}],
            "metadata": {"user_id": "user_42"},
        }
    )
    return Member(
        clock_id=clock.id,
        customer_id=customer.id,
        payment_method=pm.id,
        subscription_id=sub.id,
        period_end=int(sub["items"].data[0].current_period_end),
    )


async def fail_renewal(
    client: stripe.StripeClient,
    sandbox: SandboxProcess,
    member: Member,
    *,
    declines: int,
    decline_code: str = "generic_decline",
) -> str:
    """Make the card decline its next ``declines`` charges (the renewal's own
    included), move the clock past the renewal; returns the failed invoice."""
    await sandbox.control(
        "POST",
        f"/_sandbox/payment_methods/{member.payment_method}/fail_next",
        {"decline_code": decline_code, "count": declines},
    )
    await client.v1.test_helpers.test_clocks.advance_async(
        member.clock_id, params={"frozen_time": member.period_end + 2 * HOUR}
    )
    sub = await client.v1.subscriptions.retrieve_async(member.subscription_id)
    invoice = await client.v1.invoices.retrieve_async(str(sub.latest_invoice))
    assert invoice.status == "open", invoice.status
    return invoice.id


async def charges_of(client: stripe.StripeClient, customer_id: str) -> list[Any]:
    """The sandbox's record of every charge made to the customer."""
    listed = await client.v1.charges.list_async(params={"customer": customer_id, "limit": 100})
    return list(listed.data)


async def succeeded_charges(client: stripe.StripeClient, customer_id: str) -> list[Any]:
    return [c for c in await charges_of(client, customer_id) if c.status == "succeeded"]


async def case_of(db: asyncpg.Connection, invoice_id: str) -> dict[str, Any] | None:
    row = await db.fetchrow("SELECT * FROM retry.cases WHERE invoice_id = $1", invoice_id)
    return dict(row) if row else None


async def attempts_of(db: asyncpg.Connection, invoice_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT * FROM retry.attempts WHERE invoice_id = $1 ORDER BY number", invoice_id
    )
    return [dict(r) for r in rows]


async def case_in(
    db: asyncpg.Connection, invoice_id: str, *states: str, timeout: float = 20.0
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        try:
            return await case_of(db, invoice_id)
        except asyncpg.UndefinedTableError:
            return None

    found = await eventually(
        probe,
        until=lambda c: c is not None and c["state"] in states,
        timeout=timeout,
        what=f"case {invoice_id} in {states}",
    )
    assert found is not None
    return found


async def outbox_events(db: asyncpg.Connection, event_type: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT body FROM retry.outbox WHERE routing_key = $1 ORDER BY seq", event_type
    )
    return [json.loads(r["body"]) if isinstance(r["body"], str) else r["body"] for r in rows]


# --- mail ----------------------------------------------------------------------


def free_smtp_port() -> int:
    return free_port()


@dataclass
class _Collect:
    folder: Path
    messages: list[EmailMessage] = field(default_factory=list)
    refuse: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.refuse:
            return "421 Service not available, closing transmission channel"
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.messages.append(message)
            (self.folder / f"{len(self.messages):04d}.eml").write_bytes(raw)
        return "250 Message accepted for delivery"


class MailSink:
    """A real SMTP server (aiosmtpd) that keeps what it receives; it can be
    stopped and started again on the same port to play a mail server outage."""

    def __init__(self, port: int, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port
        self._handler = _Collect(folder)
        self._controller: Controller | None = None

    @property
    def messages(self) -> list[EmailMessage]:
        with self._handler.lock:
            return list(self._handler.messages)

    def start(self) -> None:
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def to(self, recipient: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == recipient]


SERVICE_TOKEN = env.SERVICE_TOKEN
