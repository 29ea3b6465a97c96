"""Message models shared by producers and consumers.

Every message on the spine is a JSON object with an ``id`` and a ``type``:
Stripe events as Stripe sent them, and the product's own domain events.
Models are validated before a handler runs; a message that does not fit is
invalid and goes to the dead-letter queue.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StripeEventData(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    object: dict[str, Any]
    previous_attributes: dict[str, Any] | None = None


class StripeEvent(BaseModel):
    """A Stripe ``event`` object (snapshot payload), as delivered to webhooks."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(pattern=r"^evt_")
    type: str = Field(min_length=1)
    created: int
    api_version: str | None = None
    livemode: bool = False
    data: StripeEventData
