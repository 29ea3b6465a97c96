"""/v1 resource handlers, one module per Stripe resource family."""

from __future__ import annotations

from ..api import Route
from . import (
    billing_meters,
    billing_portal,
    catalog,
    checkout,
    coupons,
    customers,
    disputes,
    events_api,
    invoices,
    payment_intents,
    payment_methods,
    refunds,
    setup_intents,
    subscription_items,
    subscription_schedules,
    subscriptions,
    test_clocks,
)

ROUTES: list[Route] = [
    *customers.ROUTES,
    *catalog.ROUTES,
    *payment_methods.ROUTES,
    *subscriptions.ROUTES,
    *subscription_items.ROUTES,
    *invoices.ROUTES,
    *payment_intents.ROUTES,
    *setup_intents.ROUTES,
    *refunds.ROUTES,
    *disputes.ROUTES,
    *coupons.ROUTES,
    *subscription_schedules.ROUTES,
    *checkout.ROUTES,
    *billing_portal.ROUTES,
    *events_api.ROUTES,
    *test_clocks.ROUTES,
    *billing_meters.ROUTES,
]
