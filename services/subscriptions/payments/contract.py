"""The public operations of booking payments, refunds and the product list."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.api.endpoint import Access, Endpoint, PathParam
from shared.api.pagination import Page, PageQuery
from shared.api.types import UtcDatetime
from shared.audit import Reason
from shared.events import stripe_id_pattern

BOOKING_REF_PATTERN = r"^[A-Za-z0-9_:\-]{1,64}$"
# Ours are pay_ + 32 hex digits; any id of this form is looked up (and 404s).
PAYMENT_ID_PATTERN = r"pay_[A-Za-z0-9]{1,64}"
PAYMENT_ID = PathParam(PAYMENT_ID_PATTERN, "A payment id.", example="pay_" + "0" * 32)
INVOICE_ID = PathParam(stripe_id_pattern("in"), "A Stripe invoice id.")
# Each booking ref is one metadata key on the payment intent (Stripe allows 50).
MAX_ITEMS = 20

Status = Literal[
    "pending",
    "processing",
    "succeeded",
    "failed",
    "canceled",
    "expired",
    "partially_refunded",
    "refunded",
    "disputed",
]


# --- products -----------------------------------------------------------------


class ProductView(BaseModel):
    product: str = Field(description="The catalog key, used in a payment's items.")
    name: str
    description: str
    unit_amount: int
    currency: str
    max_quantity: int
    grants: dict[str, int] = Field(description="Credits one unit grants (credit packs).")


class ProductList(BaseModel):
    data: list[ProductView]


LIST_PRODUCTS = Endpoint(
    "GET",
    "/v1/products",
    operation_id="list_products",
    summary="One-time products members can buy: bookings, passes, credit packs",
    owner="subscriptions",
    access=Access.PUBLIC,
    tag="payments",
    response=ProductList,
)


# --- creating a payment ---------------------------------------------------------


def _no_duplicates(items: list[Item]) -> list[Item]:
    refs = [item.booking_ref for item in items]
    for index, ref in enumerate(refs):
        if ref in refs[:index]:
            raise ValueError(f"booking_ref {ref!r} appears twice in the cart")
    return items


class Item(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a client's unit price is ignored

    product: str = Field(min_length=1, max_length=64, description="A key of `GET /v1/products`.")
    quantity: int = Field(ge=1, description="At most the product's `max_quantity`.")
    booking_ref: str = Field(
        pattern=BOOKING_REF_PATTERN,
        description="The host application's booking: 1-64 letters, digits, `_`, `-`, `:`.",
    )


class CreatePayment(BaseModel):
    # extra="ignore": an `amount` (or anything else) sent by the client is
    # ignored; the server prices the cart from the catalog.
    model_config = ConfigDict(extra="ignore")

    items: Annotated[
        list[Item], Field(min_length=1, max_length=MAX_ITEMS), AfterValidator(_no_duplicates)
    ]


class CreateCheckout(CreatePayment):
    success_url: str = Field(max_length=2048, description="On the redirect origin allow-list.")
    cancel_url: str = Field(max_length=2048, description="On the redirect origin allow-list.")


class Line(BaseModel):
    product: str
    name: str
    booking_ref: str | None = Field(description="None for the processing fee line.")
    quantity: int
    unit_amount: int
    amount: int


class PaymentCreated(BaseModel):
    payment_id: str
    status: Status
    amount: int
    currency: str
    lines: list[Line]
    client_secret: str = Field(description="Confirm the payment with Stripe.js (Elements).")
    payment_intent_id: str


class CheckoutCreated(BaseModel):
    payment_id: str
    amount: int
    currency: str
    lines: list[Line]
    checkout_url: str
    session_id: str
    expires_at: datetime


CREATE_PAYMENT = Endpoint(
    "POST",
    "/v1/payments",
    operation_id="create_payment",
    summary="Pay a cart of bookings by card: a PaymentIntent priced on the server",
    owner="subscriptions",
    access=Access.MEMBER,
    tag="payments",
    body=CreatePayment,
    response=PaymentCreated,
    status=201,
    errors=(409, 422, 503),
    description="409 when a booking already has a live payment (the detail names it).",
)

CREATE_PAYMENT_CHECKOUT = Endpoint(
    "POST",
    "/v1/payments/checkout",
    operation_id="create_payment_checkout",
    summary="Pay a cart of bookings on Stripe's hosted Checkout page",
    owner="subscriptions",
    access=Access.MEMBER,
    tag="payments",
    body=CreateCheckout,
    response=CheckoutCreated,
    status=201,
    errors=(409, 422, 503),
)


# --- reading ----------------------------------------------------------------------


class Dispute(BaseModel):
    id: str
    status: str
    amount: int | None
    reason: str | None


class PaymentView(BaseModel):
    id: str
    kind: Literal["booking", "invoice"]
    status: Status
    user_id: str | None
    amount: int
    currency: str
    lines: list[Line]
    booking_refs: list[str]
    invoice_id: str | None
    subscription_id: str | None
    payment_intent_id: str | None
    checkout_session_id: str | None
    charge_id: str | None
    amount_paid: int | None
    paid_at: datetime | None
    failure_code: str | None
    decline_code: str | None
    amount_refunded: int
    dispute: Dispute | None
    created_at: datetime
    updated_at: datetime


class PaymentsQuery(PageQuery):
    booking_ref: str | None = Field(default=None, pattern=BOOKING_REF_PATTERN)


class AdminPaymentsQuery(PageQuery):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    status: Status | None = None
    from_: UtcDatetime | None = Field(default=None, alias="from", description="created_at >= from")
    to: UtcDatetime | None = Field(default=None, description="created_at < to")


class SummaryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: UtcDatetime | None = Field(default=None, alias="from")
    to: UtcDatetime | None = None


class Figure(BaseModel):
    count: int
    amount: dict[str, int] = Field(description="Minor units per currency.")


class PaymentsSummary(BaseModel):
    succeeded: Figure
    failed: Figure
    refunded: Figure = Field(description="Payments with refunds; amount is what was refunded.")
    disputed: Figure
    success_rate: float | None = Field(description="succeeded / (succeeded + failed).")


SHOW_PAYMENT = Endpoint(
    "GET",
    "/v1/payments/{payment_id}",
    operation_id="show_payment",
    summary="One payment (a member's own; staff any)",
    owner="subscriptions",
    access=Access.MEMBER,
    tag="payments",
    path_params={"payment_id": PAYMENT_ID},
    response=PaymentView,
)

LIST_PAYMENTS = Endpoint(
    "GET",
    "/v1/payments",
    operation_id="list_payments",
    summary="Payments, newest first (a member's own; staff all), by booking ref",
    owner="subscriptions",
    access=Access.MEMBER,
    tag="payments",
    query=PaymentsQuery,
    response=Page[PaymentView],
)

ADMIN_LIST_PAYMENTS = Endpoint(
    "GET",
    "/v1/admin/payments",
    operation_id="admin_list_payments",
    summary="Transaction history across bookings and invoices",
    owner="subscriptions",
    access=Access.STAFF,
    tag="payments",
    query=AdminPaymentsQuery,
    response=Page[PaymentView],
)

ADMIN_PAYMENTS_SUMMARY = Endpoint(
    "GET",
    "/v1/admin/payments/summary",
    operation_id="admin_payments_summary",
    summary="Count and amount succeeded, failed, refunded, disputed; the success rate",
    owner="subscriptions",
    access=Access.STAFF,
    tag="payments",
    query=SummaryQuery,
    response=PaymentsSummary,
)


CANCEL_PAYMENT = Endpoint(
    "POST",
    "/v1/payments/{payment_id}/cancel",
    operation_id="cancel_payment",
    summary="Give up one's own payment not paid yet, releasing its bookings",
    owner="subscriptions",
    access=Access.MEMBER,
    tag="payments",
    path_params={"payment_id": PAYMENT_ID},
    response=PaymentView,
    errors=(409, 503),
    description="Cancels the intent (or expires the Checkout session) in Stripe; the "
    "payment becomes canceled (or expired) when Stripe's event arrives. 409 once it is "
    "processing or paid.",
)


# --- refunds -------------------------------------------------------------------------


class CreateRefund(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: int | None = Field(default=None, ge=1, description="Omitted: all that is left.")
    reason: Reason


class RefundView(BaseModel):
    refund_id: str
    payment_id: str
    amount: int
    currency: str
    status: str
    remaining: int = Field(description="What can still be refunded after this one.")


CREATE_PAYMENT_REFUND = Endpoint(
    "POST",
    "/v1/payments/{payment_id}/refunds",
    operation_id="create_payment_refund",
    summary="Refund a payment, fully or in part (staff)",
    owner="subscriptions",
    access=Access.STAFF,
    tag="payments",
    path_params={"payment_id": PAYMENT_ID},
    body=CreateRefund,
    response=RefundView,
    status=201,
    errors=(422, 503),
)

CREATE_INVOICE_REFUND = Endpoint(
    "POST",
    "/v1/invoices/{invoice_id}/refunds",
    operation_id="create_invoice_refund",
    summary="Refund a subscription invoice's charge, fully or in part (staff)",
    owner="subscriptions",
    access=Access.STAFF,
    tag="payments",
    path_params={"invoice_id": INVOICE_ID},
    body=CreateRefund,
    response=RefundView,
    status=201,
    errors=(422, 503),
)

ENDPOINTS = (
    LIST_PRODUCTS,
    CREATE_PAYMENT,
    CREATE_PAYMENT_CHECKOUT,
    SHOW_PAYMENT,
    LIST_PAYMENTS,
    CANCEL_PAYMENT,
    ADMIN_LIST_PAYMENTS,
    ADMIN_PAYMENTS_SUMMARY,
    CREATE_PAYMENT_REFUND,
    CREATE_INVOICE_REFUND,
)
