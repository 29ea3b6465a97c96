"""Message models shared by producers and consumers.

Every message on the spine is a JSON object with an ``id`` and a ``type``:
Stripe events as Stripe sent them, and the product's own domain events.
Models are validated before a handler runs; a message that does not fit is
invalid and goes to the dead-letter queue.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# What Stripe ids and event types look like; checked wherever they enter,
# always with fullmatch (a "$" would let a trailing newline through).
EVENT_ID_PATTERN = r"evt_[A-Za-z0-9_]{1,250}"
SUBSCRIPTION_ID_PATTERN = r"sub_[A-Za-z0-9_]{1,250}"
# Dotted lowercase words; also a routing key, so well inside AMQP's 255 bytes.
EVENT_TYPE_PATTERN = r"[a-z0-9_]+(\.[a-z0-9_]+)*"
EVENT_TYPE_MAX_LENGTH = 200
EVENT_ID = re.compile(EVENT_ID_PATTERN)
SUBSCRIPTION_ID = re.compile(SUBSCRIPTION_ID_PATTERN)
EVENT_TYPE = re.compile(EVENT_TYPE_PATTERN)


def stripe_id_pattern(prefix: str) -> str:
    """The pattern of a Stripe id with ``prefix`` (``cus``, ``in``, ``pi``...)."""
    return rf"{prefix}_[A-Za-z0-9_]{{1,250}}"


class StripeEventData(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    object: dict[str, Any]
    previous_attributes: dict[str, Any] | None = None


class StripeEvent(BaseModel):
    """A Stripe ``event`` object (snapshot payload), as delivered to webhooks."""

    model_config = ConfigDict(extra="allow")

    # pydantic's patterns use Rust's regex engine, where "$" is the end of the text.
    id: str = Field(pattern=f"^{EVENT_ID_PATTERN}$")
    type: str = Field(pattern=f"^{EVENT_TYPE_PATTERN}$", max_length=EVENT_TYPE_MAX_LENGTH)
    created: int
    api_version: str | None = None
    livemode: bool = False
    data: StripeEventData
