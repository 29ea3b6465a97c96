"""Every domain event of the contract has a queue to go to.

The outboxes publish mandatory: an event type that no consumer queue binds is
unroutable, its publish is never confirmed, and it holds its service's outbox
(every domain event after it) for good.
"""

from __future__ import annotations

from services.credits.handlers import billing_events_queue
from services.retry.notifications.consumer import notifications_queue
from shared.billing_events import EVENTS
from shared.broker.topology import BILLING_EVENTS


def test_every_domain_event_type_is_bound_by_a_consumer_queue() -> None:
    bound = {
        binding.routing_key
        for queue in (billing_events_queue([1000]), notifications_queue([1000]))
        for binding in queue.bindings
        if binding.exchange == BILLING_EVENTS
    }
    assert set(EVENTS) - bound == set()
