"""The run's mail server: an SMTP sink that counts every message it accepts.

The retry service's notifications go to it exactly as they go to a real
server (``SMTP_HOST``/``SMTP_PORT``). Each message carries the domain event
it was made for (``X-Billing-Event-Id``); the sink counts deliveries per
event, so an email sent twice shows as a count of 2.
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

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        message = message_from_bytes(envelope.original_content or b"")
        self.received[str(message.get("X-Billing-Event-Id", ""))] += 1
        return "250 Message accepted for delivery"


class MailSink:
    def __init__(self) -> None:
        self.port = free_port()
        self._handler = _Count()
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=self.port)

    @property
    def received(self) -> Counter[str]:
        """Messages accepted per event id."""
        return self._handler.received

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()
