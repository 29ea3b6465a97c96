"""The subscriptions service's public operations."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from shared.api.endpoint import Access, Endpoint, PathParam
from shared.events import SUBSCRIPTION_ID_PATTERN

SUBSCRIPTION_ID = PathParam(SUBSCRIPTION_ID_PATTERN, "A Stripe subscription id.")


class LastEvent(BaseModel):
    id: str
    type: str
    created: datetime


class SubscriptionRecord(BaseModel):
    id: str
    customer: str
    status: str
    price_id: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    last_event: LastEvent
    updated_at: datetime


SHOW_SUBSCRIPTION_RECORD = Endpoint(
    "GET",
    "/v1/admin/subscriptions/{stripe_subscription_id}",
    operation_id="show_subscription_record",
    summary="The local state of one subscription, as last mirrored from Stripe",
    owner="subscriptions",
    access=Access.ADMIN,
    tag="subscriptions",
    path_params={"stripe_subscription_id": SUBSCRIPTION_ID},
    response=SubscriptionRecord,
)

ENDPOINTS = (SHOW_SUBSCRIPTION_RECORD,)
