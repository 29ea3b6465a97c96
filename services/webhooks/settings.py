"""Webhooks service settings."""

from __future__ import annotations

from shared import queues
from shared.settings import ServiceSettings


class WebhooksSettings(ServiceSettings):
    webhooks_port: int = 8081
    # Consumer queues whose dead letters the admin API shows and redrives.
    # Comma separated; defaults to every consumer queue of the product.
    dead_letter_queues: str = ""
    dead_letter_peek_limit: int = 50

    def dead_letter_queue_names(self) -> list[str]:
        configured = [q.strip() for q in self.dead_letter_queues.split(",") if q.strip()]
        return configured or list(queues.ALL)
