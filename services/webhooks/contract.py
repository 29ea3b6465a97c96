"""The webhooks service's public operations: the event ledger, replay, dead letters
and reconciliation with Stripe's Events API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

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


DEAD_LETTER_ID = PathParam(r"[0-9]{1,18}", "A dead letter's id.", example="42")
JOB_ID = PathParam(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    "A reconciliation job's id.",
    example="3f0c9a52-8d0b-4c41-9a57-0f4c2a3c8e11",
)
STRIPE_OBJECT_ID = PathParam(
    r"[a-z]{1,12}_[A-Za-z0-9_]{1,250}",
    "A Stripe object's id; its prefix (sub_, in_, pi_, cs_...) says its kind.",
    example="sub_1MowQVLkdIwHu7ixeRlqHVzs",
)

DeadLetterState = Literal["dead", "redriving", "redriven", "discarded"]


class DeadLettersQuery(PageQuery):
    queue: str | None = Field(default=None, max_length=255, description="One consumer queue.")
    state: DeadLetterState | None = Field(
        default="dead",
        description="Letters in this state; `dead` (the default) are those waiting for an "
        "operator.",
    )
    event_type: str | None = Field(
        default=None,
        pattern=f"^{EVENT_TYPE_PATTERN}$",
        max_length=EVENT_TYPE_MAX_LENGTH,
        description="Only letters of this event type.",
    )


class DeadLetterView(BaseModel):
    id: int
    queue: str = Field(description="The consumer queue the message failed in.")
    message_id: str | None
    event_type: str | None
    original_routing_key: str | None
    state: DeadLetterState
    attempts: int = Field(description="Retries the consumer made before dead-lettering it.")
    last_error: str | None
    times_dead_lettered: int = Field(description="How often it reached the dead-letter queue.")
    first_seen_at: datetime
    last_seen_at: datetime
    redrive_count: int
    last_redriven_at: datetime | None
    discarded_at: datetime | None
    discard_reason: str | None
    body: Any = Field(description="The message body: JSON when it was JSON, else text.")
    unfit_reason: str | None = Field(
        default=None,
        description="Why the letter could not be stored as it came (a NUL in a header,"
        " a count beyond an integer...): its text fields are then cleaned and capped, its"
        " body whole. Null for a letter stored as it came.",
    )


class DeadLetterQueueSummary(BaseModel):
    queue: str
    dead_letter_queue: str
    dead: int = Field(description="Letters waiting for an operator.")
    oldest_first_seen_at: datetime | None


class DeadLetterQueues(BaseModel):
    queues: list[DeadLetterQueueSummary]


class RedriveRequest(BaseModel):
    """Which dead letters go back to their queue: those matching every filter
    given, or every waiting one with ``all``."""

    model_config = ConfigDict(extra="forbid")

    # The ids the path's DEAD_LETTER_ID allows: a bigserial is at most 18
    # digits here, and a larger number would not fit the query's bigint.
    ids: list[Annotated[int, Field(ge=1, le=999_999_999_999_999_999)]] | None = Field(
        default=None, min_length=1, max_length=1000
    )
    queue: str | None = Field(default=None, max_length=255)
    message_ids: list[str] | None = Field(default=None, min_length=1, max_length=1000)
    event_type: str | None = Field(
        default=None, pattern=f"^{EVENT_TYPE_PATTERN}$", max_length=EVENT_TYPE_MAX_LENGTH
    )
    all: bool = Field(default=False, description="Every waiting dead letter, when no filter.")
    limit: int = Field(default=10_000, ge=1, le=100_000, description="At most this many.")
    reason: Reason

    @property
    def says_which(self) -> bool:
        filters = (self.ids, self.queue, self.message_ids, self.event_type)
        return self.all or any(f is not None for f in filters)


class RedriveResult(BaseModel):
    redriven: int
    ids: list[int] = Field(description="The letters this request sent back.")
    complete: bool = Field(
        description="False when the broker stopped taking them (the rest stay dead, "
        "send the request again) or a letter's queue is gone (it stays dead)."
    )


class DiscardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason


class ReconcileEventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: UtcDatetime | None = Field(
        default=None,
        description="Check events Stripe created from then on (at most 30 days back); "
        "default: from the stored cursor.",
    )
    reason: Reason


class ReconcileJob(BaseModel):
    id: str
    kind: Literal["events", "state"] = Field(
        description="`events`: a backfill from Stripe's Events API; `state`: a drift report."
    )
    trigger: Literal["schedule", "manual"]
    state: Literal["queued", "running", "succeeded", "failed"]
    since: datetime | None = Field(description="A backfill's window (none for a drift report).")
    until: datetime | None
    seen: int = Field(description="Events Stripe listed in the window.")
    already_had: int = Field(description="...that the ledger had, or another backfill published.")
    recovered: int = Field(description="...that were missing and were published now.")
    repair: bool = Field(default=False, description="A drift report that repairs what differs.")
    kinds: list[str] | None = Field(
        default=None, description="The kinds a drift report compared; none: every kind."
    )
    checked: int = Field(default=0, description="Objects a drift report compared with Stripe.")
    differing: int = Field(default=0, description="...that differed in at least one field.")
    repaired: int = Field(default=0, description="...applied again from Stripe's object.")
    error: str | None
    requested_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ReconcileStateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repair: bool = Field(
        default=False,
        description="Apply Stripe's object to every object that differs, through the owning "
        "service's event path (each repair in the audit log).",
    )
    kinds: list[Annotated[str, Field(pattern=r"^[a-z_]{1,64}$")]] | None = Field(
        default=None,
        min_length=1,
        max_length=20,
        description="Only these kinds (`subscription`, ...); default: every mirrored kind.",
    )
    reason: Reason


class Difference(BaseModel):
    id: int
    service: str = Field(description="The service that keeps the object.")
    kind: str
    object_id: str
    field: str
    ours: Any = Field(description="What the service holds.")
    stripe: Any = Field(description="What Stripe's object says.")
    repair: Literal["applied", "stale", "unchanged", "failed"] | None = Field(
        description="The owner's answer to the repair: `applied`, `stale` (it holds something "
        "newer), `unchanged`; none without repair."
    )
    found_at: datetime


class RefetchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason


class RefetchResult(BaseModel):
    id: str
    kind: str
    service: str
    outcome: Literal["applied", "stale", "unchanged"] = Field(
        description="`applied`: the object now holds Stripe's state; `stale`: it holds something "
        "newer and was kept; `unchanged`: it already said what Stripe says."
    )
    ours: dict[str, Any] | None = Field(description="The kept fields after the re-read.")
    stripe: dict[str, Any] = Field(description="The same fields in Stripe's object.")


def _admin(method: Any, path: str, operation_id: str, summary: str, **kw: Any) -> Endpoint:
    return Endpoint(
        method,
        path,
        operation_id=operation_id,
        summary=summary,
        owner="webhooks",
        access=Access.ADMIN,
        **{"tag": "events", **kw},
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
    "Dead letters, oldest first, with their queue, last error and attempts",
    query=DeadLettersQuery,
    response=Page[DeadLetterView],
    tag="dead letters",
)
DEAD_LETTER_QUEUES = _admin(
    "GET",
    "/v1/admin/dead-letters/queues",
    "dead_letter_queues",
    "Per consumer queue: dead letters waiting and the oldest",
    response=DeadLetterQueues,
    tag="dead letters",
)
REDRIVE_DEAD_LETTERS = _admin(
    "POST",
    "/v1/admin/dead-letters/redrive",
    "redrive_dead_letters",
    "Send dead letters back into their queue: by id, by filter, or all; each once",
    body=RedriveRequest,
    response=RedriveResult,
    errors=(503,),
    tag="dead letters",
)
DISCARD_DEAD_LETTER = _admin(
    "POST",
    "/v1/admin/dead-letters/{dead_letter_id}/discard",
    "discard_dead_letter",
    "Give up on a dead letter, saying why",
    path_params={"dead_letter_id": DEAD_LETTER_ID},
    body=DiscardRequest,
    response=DeadLetterView,
    errors=(404, 409),
    tag="dead letters",
)
RECONCILE_EVENTS = _admin(
    "POST",
    "/v1/admin/reconcile/events",
    "reconcile_events",
    "Backfill from Stripe's Events API: publish every event the ledger lacks",
    body=ReconcileEventsRequest,
    response=ReconcileJob,
    status=202,
    tag="reconciliation",
)
SHOW_RECONCILE_JOB = _admin(
    "GET",
    "/v1/admin/reconcile/jobs/{job_id}",
    "show_reconcile_job",
    "A reconciliation job: its state and counts",
    path_params={"job_id": JOB_ID},
    response=ReconcileJob,
    errors=(404,),
    tag="reconciliation",
)

RECONCILE_STATE = _admin(
    "POST",
    "/v1/admin/reconcile/state",
    "reconcile_state",
    "Drift report: compare every mirrored object with Stripe's; with repair, apply Stripe's",
    body=ReconcileStateRequest,
    response=ReconcileJob,
    status=202,
    errors=(503,),
    tag="reconciliation",
)
LIST_RECONCILE_DIFFERENCES = _admin(
    "GET",
    "/v1/admin/reconcile/jobs/{job_id}/differences",
    "list_reconcile_differences",
    "The differences a drift report found: object, field, ours, Stripe's",
    path_params={"job_id": JOB_ID},
    query=PageQuery,
    response=Page[Difference],
    errors=(404,),
    tag="reconciliation",
)
REFETCH_OBJECT = _admin(
    "POST",
    "/v1/admin/objects/{stripe_id}/refetch",
    "refetch_object",
    "Re-read one object from Stripe and apply it through its owner's event path",
    path_params={"stripe_id": STRIPE_OBJECT_ID},
    body=RefetchRequest,
    response=RefetchResult,
    errors=(404, 503),
    tag="reconciliation",
)

ENDPOINTS = (
    LIST_EVENTS,
    SHOW_EVENT,
    REPLAY_EVENT,
    LIST_DEAD_LETTERS,
    DEAD_LETTER_QUEUES,
    REDRIVE_DEAD_LETTERS,
    DISCARD_DEAD_LETTER,
    RECONCILE_EVENTS,
    SHOW_RECONCILE_JOB,
    RECONCILE_STATE,
    LIST_RECONCILE_DIFFERENCES,
    REFETCH_OBJECT,
)
