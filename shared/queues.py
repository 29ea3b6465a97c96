"""Names of the product's consumer queues: part of the messaging contract.

Queue names are shared (the webhooks service inspects every dead-letter
queue); bindings and handlers stay with the service that owns the queue.
"""

from __future__ import annotations

WEBHOOKS_LEDGER = "webhooks.ledger"
SUBSCRIPTIONS_STRIPE = "subscriptions.stripe-events"

ALL = (WEBHOOKS_LEDGER, SUBSCRIPTIONS_STRIPE)
