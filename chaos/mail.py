"""The run's mail server: an SMTP sink that counts every message it accepts.

The retry service's notifications go to it exactly as they go to a real
server (``SMTP_HOST``/``SMTP_PORT``). Each message carries the domain event
it was made for (``X-Billing-Event-Id``) and its ``Message-ID``, stable per
email. The sink counts, per event, the distinct Message-IDs it accepted: what
a member's mailbox shows. Two different emails for one event count 2.

SMTP has no idempotency: when the retry service is killed after the server
accepted an email and before the service recorded it as sent, the email goes
out again once its lease ends, with the same Message-ID, which mail clients
show once. Those copies are counted apart (``resent``) and reported.
"""

from __future__ import annotations

from collections import Counter
from email import message_from_bytes

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from chaos.infra import free_port


class _Count:
    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.resent: Counter[str] = Counter()
        self._seen: set[str] = set()

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        message = message_from_bytes(envelope.original_content or b"")
        event_id = str(message.get("X-Billing-Event-Id", ""))
        message_id = str(message.get("Message-ID", "")) or f"no-id-{len(self._seen)}"
        if message_id in self._seen:
            self.resent[event_id] += 1
        else:
            self._seen.add(message_id)
            self.received[event_id] += 1
        return "250 Message accepted for delivery"


class MailSink:
    def __init__(self) -> None:
        self.port = free_port()
        self._handler = _Count()
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=self.port)

    @property
    def received(self) -> Counter[str]:
        """Distinct emails (Message-IDs) accepted per event id."""
        return self._handler.received

    @property
    def resent(self) -> Counter[str]:
        """Copies of an email already accepted (same Message-ID), per event id."""
        return self._handler.resent

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()
