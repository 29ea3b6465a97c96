"""Billing state mirrored from Stripe's events: subscriptions, invoices,
subscription checkouts and discounts, each applied only if newer
(``shared/mirror.py``), each change kept as a history row, each fact that
other services act on written to the outbox in the same transaction."""
