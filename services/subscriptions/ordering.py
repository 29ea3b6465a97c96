"""Which of two subscription events is newer.

Stripe does not order deliveries, so each row remembers the event that last
wrote it and an incoming event applies only if it is newer. "Newer" compares,
in order:

1. the event's ``created`` (Stripe's clock, one-second resolution);
2. on a tie, the lifecycle rank of its type: ``created`` < ``updated`` <
   ``deleted``; an update in the same second as the creation describes a
   later state, and nothing follows a deletion;
3. on a tie still (two updates in the same second), the event id. That
   order is arbitrary but the same everywhere, so every replica and every
   delivery order converges on the same row; the next event (or a
   reconciliation against Stripe) corrects it if it picked the older one.

Separately, ``canceled`` is terminal in Stripe: no event moves a canceled
subscription back to another status.
"""

from __future__ import annotations

LIFECYCLE_RANK = {
    "customer.subscription.created": 0,
    "customer.subscription.updated": 1,
    "customer.subscription.paused": 1,
    "customer.subscription.resumed": 1,
    "customer.subscription.pending_update_applied": 1,
    "customer.subscription.pending_update_expired": 1,
    "customer.subscription.trial_will_end": 1,
    "customer.subscription.deleted": 2,
}
TERMINAL_STATUS = "canceled"
