"""The credits service's public operations: balances, spends, reversals, staff grants."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.api.endpoint import Access, Endpoint, PathParam
from shared.api.pagination import Page, PageQuery
from shared.api.types import UtcDatetime
from shared.audit import Reason

SPEND_ID_PATTERN = r"^csp_[0-9a-f]{32}$"
SPEND_ID = PathParam(SPEND_ID_PATTERN, "A spend's id.", example="csp_" + "0" * 32)
USER_ID = PathParam(r"^[A-Za-z0-9_.:@|-]{1,255}$", "A member's user id.", example="user_42")

CreditTypeKey = str
EntryKind = Literal["grant", "spend", "reversal", "expiry", "rollover", "clawback", "restoration"]
GrantSource = Literal["plan", "trial", "upgrade", "rollover", "pack", "admin"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        # Postgres text cannot hold NUL: refuse it as invalid input, not a 500.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


# --- balances ------------------------------------------------------------------


class Expiring(BaseModel):
    amount: int
    expires_at: datetime | None = Field(description="None: these credits never expire.")


class Balance(BaseModel):
    credit_type: str
    name: str
    balance: int = Field(description="What can be spent now.")
    expiring: list[Expiring] = Field(description="The balance by expiry, soonest first.")


class Balances(BaseModel):
    user_id: str
    at: datetime
    balances: list[Balance]


class BalancesAtQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: UtcDatetime | None = Field(
        default=None, description="The instant (ISO 8601); now when left out."
    )


class BalanceAt(BaseModel):
    credit_type: str
    balance: int


class BalancesAt(BaseModel):
    user_id: str
    at: datetime
    balances: list[BalanceAt] = Field(description="From the ledger: every entry up to `at`.")


# --- ledger entries ----------------------------------------------------------------


class Transaction(BaseModel):
    id: int
    kind: EntryKind
    credit_type: str
    amount: int = Field(description="Signed: credits added (+) or taken (-).")
    at: datetime
    grant_id: int
    spend_id: str | None
    note: str | None


# --- spends -----------------------------------------------------------------------


class SpendRequest(_Body):
    credit_type: CreditTypeKey = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    amount: int = Field(gt=0, le=1_000_000)
    reference: str = Field(
        min_length=1, max_length=255, description="What the credits paid for, e.g. a booking id."
    )


class Consumed(BaseModel):
    grant_id: int
    amount: int


class Spend(BaseModel):
    id: str
    credit_type: str
    amount: int
    reference: str
    created_at: datetime
    balance_after: int = Field(description="What remained spendable of this type right after.")
    consumed: list[Consumed] = Field(description="The grants it came from, in spending order.")
    overage: int = Field(
        default=0,
        description="Beyond the balance, billed on the next invoice (plans with overage only).",
    )


class ReverseRequest(_Body):
    reason: Reason | None = Field(
        default=None, description="Required when staff reverse a member's spend."
    )


class Reversal(BaseModel):
    spend_id: str
    reversed_at: datetime
    returned: int = Field(description="Credits back in the grants they came from.")
    forfeited: int = Field(
        description="Credits whose grant has expired or been taken back (those a dispute or"
        " refund still holds come back to the grant if it is won or fails)."
    )


# --- staff grants -----------------------------------------------------------------


class AdminGrantRequest(_Body):
    user_id: str = Field(pattern=USER_ID.pattern)
    credit_type: CreditTypeKey = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    amount: int = Field(gt=0, le=1_000_000)
    expires_at: UtcDatetime | None = None
    priority: int | None = Field(default=None, ge=0, le=1000)
    reason: Reason


class Grant(BaseModel):
    id: int
    user_id: str
    credit_type: str
    source: GrantSource
    amount: int
    remaining: int
    priority: int
    granted_at: datetime
    expires_at: datetime | None


SHOW_MY_CREDITS = Endpoint(
    "GET",
    "/v1/credits/me",
    operation_id="show_my_credits",
    summary="My spendable credits per type, and what expires when",
    owner="credits",
    access=Access.MEMBER,
    tag="credits",
    response=Balances,
)

LIST_MY_TRANSACTIONS = Endpoint(
    "GET",
    "/v1/credits/me/transactions",
    operation_id="list_my_credit_transactions",
    summary="My credit ledger, newest first",
    owner="credits",
    access=Access.MEMBER,
    tag="credits",
    query=PageQuery,
    response=Page[Transaction],
)

SPEND_CREDITS = Endpoint(
    "POST",
    "/v1/credits/spend",
    operation_id="spend_credits",
    summary="Spend credits (requires an Idempotency-Key)",
    description=(
        "Consumes grants in the spending order: lower priority number first, then the"
        " soonest expiry, then the oldest grant. The same Idempotency-Key answers the"
        " same spend and never spends twice; with other parameters it is a 422. A"
        " spend beyond the balance takes what there is and bills the rest as `overage`"
        " where the member's plan says so (a Stripe meter event); anywhere else it is"
        " refused with 422 `insufficient_credits` and the balance in `details`."
    ),
    owner="credits",
    access=Access.MEMBER,
    tag="credits",
    body=SpendRequest,
    response=Spend,
    status=201,
    errors=(400, 422),
    # One statement claims a new key, spends and stores the answer (api.py).
    claims_own_key=True,
)

REVERSE_SPEND = Endpoint(
    "POST",
    "/v1/credits/spends/{spend_id}/reverse",
    operation_id="reverse_credit_spend",
    summary="Return a spend's credits to the grants they came from (once)",
    description=(
        "Credits whose grant has expired since are forfeited. Calling it again"
        " answers the first reversal."
    ),
    owner="credits",
    access=Access.MEMBER,
    tag="credits",
    path_params={"spend_id": SPEND_ID},
    body=ReverseRequest,
    response=Reversal,
    errors=(404, 422),
)

CREATE_ADMIN_GRANT = Endpoint(
    "POST",
    "/v1/admin/credits/grants",
    operation_id="create_credit_grant",
    summary="Grant credits to a member (audited)",
    owner="credits",
    access=Access.STAFF,
    tag="credits",
    body=AdminGrantRequest,
    response=Grant,
    status=201,
    errors=(422,),
)

SHOW_BALANCES_AT = Endpoint(
    "GET",
    "/v1/admin/credits/{user_id}",
    operation_id="show_credit_balances_at",
    summary="A member's balances at an instant, from the ledger",
    owner="credits",
    access=Access.STAFF,
    tag="credits",
    path_params={"user_id": USER_ID},
    query=BalancesAtQuery,
    response=BalancesAt,
)

ENDPOINTS: tuple[Endpoint, ...] = (
    SHOW_MY_CREDITS,
    LIST_MY_TRANSACTIONS,
    SPEND_CREDITS,
    REVERSE_SPEND,
    CREATE_ADMIN_GRANT,
    SHOW_BALANCES_AT,
)
