"""The webhooks service's public operations: the event ledger, replay and dead letters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.api.endpoint import Access, Endpoint, PathParam
from shared.api.pagination import Page, PageQuery
from shared.api.types import UtcDatetime
from shared.audit import Reason
from shared.events import EVENT_ID_PATTERN, EVENT_TYPE_MAX_LENGTH, EVENT_TYPE_PATTERN

EVENT_ID = PathParam(EVENT_ID_PATTERN, "A Stripe event id.", example="evt_1NG8Du2eZvKYlo2CUI79vXWy")


class EventsQuery(PageQuery):
    type: str | None = Field(
        default=None,
        pattern=f"^{EVENT_TYPE_PATTERN}$",
        max_length=EVENT_TYPE_MAX_LENGTH,
        description="Only events of this type.",
    )
    created_gte: UtcDatetime | None = Field(
        default=None, description="Stripe's `created` at or after (ISO 8601 or unix seconds)."
    )
    created_lt: UtcDatetime | None = Field(default=None, description="...and before.")


class EventSummary(BaseModel):
    id: str
    type: str
    api_version: str | None
    livemode: bool
    created: datetime
    received_at: datetime
    duplicates: int = Field(description="Deliveries after the first, from Stripe or replays.")
    replay_count: int
    last_replayed_at: datetime | None


class EventDetail(EventSummary):
    payload: dict[str, Any] = Field(description="The event exactly as Stripe sent it.")


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason


class ReplayResult(BaseModel):
    id: str
    replayed: bool


class DeadLettersQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queue: str | None = Field(default=None, max_length=255, description="One consumer queue.")
    limit: int | None = Field(default=None, ge=1, le=200, description="Messages per queue.")


class DeadLetterView(BaseModel):
    message_id: str | None
    event_type: str | None
    attempts: int
    last_error: str | None
    failed_at: str | None
    original_routing_key: str | None
    body: Any


class DeadLetterQueueView(BaseModel):
    queue: str
    dead_letter_queue: str
    declared: bool
    count: int
    messages: list[DeadLetterView]


class DeadLetters(BaseModel):
    queues: list[DeadLetterQueueView]


class RedriveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queue: str = Field(max_length=255)
    message_ids: list[str] | None = Field(default=None, max_length=1000)
    reason: Reason


class RedriveResult(BaseModel):
    queue: str
    redriven: int


def _admin(method: Any, path: str, operation_id: str, summary: str, **kw: Any) -> Endpoint:
    return Endpoint(
        method,
        path,
        operation_id=operation_id,
        summary=summary,
        owner="webhooks",
        access=Access.ADMIN,
        tag="events",
        **kw,
    )


LIST_EVENTS = _admin(
    "GET",
    "/v1/admin/events",
    "list_events",
    "The ledger of Stripe events, newest first",
    query=EventsQuery,
    response=Page[EventSummary],
)
SHOW_EVENT = _admin(
    "GET",
    "/v1/admin/events/{event_id}",
    "show_event",
    "One event with its payload and how often it was delivered",
    path_params={"event_id": EVENT_ID},
    response=EventDetail,
)
REPLAY_EVENT = _admin(
    "POST",
    "/v1/admin/events/{event_id}/replay",
    "replay_event",
    "Publish an event again (consumers that applied it skip it)",
    path_params={"event_id": EVENT_ID},
    body=ReplayRequest,
    response=ReplayResult,
    status=202,
)
LIST_DEAD_LETTERS = _admin(
    "GET",
    "/v1/admin/dead-letters",
    "list_dead_letters",
    "Dead letters per consumer queue, with their last error",
    query=DeadLettersQuery,
    response=DeadLetters,
)
REDRIVE_DEAD_LETTERS = _admin(
    "POST",
    "/v1/admin/dead-letters/redrive",
    "redrive_dead_letters",
    "Send dead letters back into their queue (all, or those with message_ids)",
    body=RedriveRequest,
    response=RedriveResult,
)

ENDPOINTS = (LIST_EVENTS, SHOW_EVENT, REPLAY_EVENT, LIST_DEAD_LETTERS, REDRIVE_DEAD_LETTERS)
