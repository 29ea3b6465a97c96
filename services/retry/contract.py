"""The retry service's public operations: dunning for operators."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.api.endpoint import Access, Endpoint, PathParam
from shared.api.pagination import Page, PageQuery
from shared.audit import Reason

CaseState = Literal["open", "paused", "recovered", "canceled", "exhausted"]

# An invoice id, or a subscription id (retry-now finds its open invoice).
INVOICE_OR_SUBSCRIPTION = PathParam(
    r"(in|sub)_[A-Za-z0-9_]{1,250}",
    "The invoice (in_...), or its subscription (sub_...): the open case is found",
    example="in_1MtHbELkdIwHu7ixl4OzzPMv",
)


class CasesQuery(PageQuery):
    model_config = ConfigDict(extra="forbid")

    state: CaseState | None = Field(default=None, description="Only cases in this state.")


class AttemptView(BaseModel):
    number: int
    started_at: datetime
    finished_at: datetime | None
    outcome: str = Field(
        description=(
            "pending, succeeded, failed, already_settled, unavailable, error, observed,"
            " superseded, skipped (no charge: the card to be charged had met a hard decline)"
        )
    )
    decline_code: str | None
    amount: int
    currency: str


class CaseView(BaseModel):
    invoice_id: str
    subscription_id: str | None
    customer_id: str
    user_id: str | None
    state: CaseState
    amount_due: int
    currency: str
    attempts_made: int = Field(
        description=(
            "Attempts finished, of DUNNING_MAX_ATTEMPTS; a skipped one is listed in"
            " attempts but not counted: it charged nothing"
        )
    )
    next_attempt_at: datetime | None = Field(
        description="When the next attempt is due (open), or when a paused case gives up."
    )
    last_decline_code: str | None
    opened_at: datetime
    closed_at: datetime | None
    close_reason: str | None
    end_action: str | None
    end_action_done_at: datetime | None
    attempts: list[AttemptView]


class StaffAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason


def _admin(method: Any, path: str, operation_id: str, summary: str, **kw: Any) -> Endpoint:
    return Endpoint(
        method,
        path,
        operation_id=operation_id,
        summary=summary,
        owner="retry",
        access=Access.STAFF,
        tag="dunning",
        **kw,
    )


LIST_CASES = _admin(
    "GET",
    "/v1/admin/dunning",
    "list_dunning_cases",
    "Dunning cases with their attempts, newest first",
    query=CasesQuery,
    response=Page[CaseView],
)
RETRY_NOW = _admin(
    "POST",
    "/v1/admin/dunning/{invoice_id}/retry-now",
    "retry_dunning_case_now",
    "Make the case's next attempt due now (a paused case too)",
    path_params={"invoice_id": INVOICE_OR_SUBSCRIPTION},
    body=StaffAction,
    response=CaseView,
    errors=(404, 409),
    description=(
        "404 when no open or paused case matches; 409 when the case is closed, or an"
        " attempt of it is under way, or (several_open_cases) a subscription id matches"
        " more than one open case: the error names their invoices."
    ),
)
STOP = _admin(
    "POST",
    "/v1/admin/dunning/{invoice_id}/stop",
    "stop_dunning_case",
    "Close the case as canceled: no further attempt, no end action",
    path_params={"invoice_id": INVOICE_OR_SUBSCRIPTION},
    body=StaffAction,
    response=CaseView,
    errors=(404, 409),
    description=(
        "404 when no case matches; 409 when the case is closed, or an attempt of it is"
        " under way (its charge cannot be stopped: try again once it has ended), or"
        " (several_open_cases) a subscription id matches more than one open case."
    ),
)

ENDPOINTS: tuple[Endpoint, ...] = (LIST_CASES, RETRY_NOW, STOP)
