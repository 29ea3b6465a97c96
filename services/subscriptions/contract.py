"""The subscriptions service's public operations.

``ENDPOINTS`` is one flat tuple; booking payments add theirs by importing
from ``payments/contract.py``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from services.subscriptions.payments import contract as payments_contract
from shared.api.endpoint import Access, Endpoint, PathParam
from shared.api.pagination import Page, PageQuery
from shared.api.types import UtcDatetime
from shared.audit import Reason
from shared.events import SUBSCRIPTION_ID_PATTERN, stripe_id_pattern

SUBSCRIPTION_ID = PathParam(SUBSCRIPTION_ID_PATTERN, "A Stripe subscription id.", "sub_1Pq")
SESSION_ID = PathParam(stripe_id_pattern("cs"), "A Stripe Checkout Session id.", "cs_test_a1")
PAYMENT_METHOD_ID = PathParam(stripe_id_pattern("pm"), "A Stripe payment method id.", "pm_1Pq")
USER_ID = PathParam(r"[A-Za-z0-9_.@|:-]{1,200}", "The host application's user id.", "user_42")

Interval = Literal["month", "year"]
TAG = "subscriptions"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- records ----------------------------------------------------------------------


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
    last_event: LastEvent | None
    updated_at: datetime


class PendingChange(BaseModel):
    plan: str
    interval: Interval
    effective_at: datetime


class Discount(BaseModel):
    coupon: str
    percent_off: float | None
    amount_off: int | None
    duration: str
    ends_at: datetime | None


class SubscriptionView(BaseModel):
    id: str
    user_id: str | None
    status: str
    plan: str | None
    interval: str | None
    amount: int | None = Field(description="Per interval, minor units, before discounts.")
    currency: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    trial_end: datetime | None
    cancel_at_period_end: bool
    cancel_at: datetime | None
    canceled_at: datetime | None
    ended_at: datetime | None
    pending_change: PendingChange | None
    discounts: list[Discount]
    latest_invoice_id: str | None


class PlanPrice(BaseModel):
    interval: Interval
    amount: int
    currency: str
    lookup_key: str
    eligibility: str | None = Field(description="The discount tier this price is for, if any.")


class PlanView(BaseModel):
    key: str
    name: str
    description: str
    features: list[str]
    trial_days: int | None
    credits: dict[str, int]
    prices: list[PlanPrice]


class PlanList(BaseModel):
    data: list[PlanView]


class SetupIntentAnswer(BaseModel):
    setup_intent_id: str
    client_secret: str


class PaymentMethodView(BaseModel):
    id: str
    type: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    default: bool


class PaymentMethodList(BaseModel):
    data: list[PaymentMethodView]


class NewSubscription(_Body):
    plan: str = Field(min_length=1, max_length=64)
    interval: Interval
    promotion_code: str | None = Field(default=None, min_length=1, max_length=200)


class SubscriptionCreated(BaseModel):
    id: str
    status: str
    client_secret: str | None = Field(
        description="Confirm with Stripe.js: a PaymentIntent's (first payment) or, for a"
        " trial, a SetupIntent's (to save a card); none when nothing is left to confirm."
    )
    client_secret_type: Literal["payment_intent", "setup_intent"] | None


class NewCheckoutSession(_Body):
    plan: str = Field(min_length=1, max_length=64)
    interval: Interval
    success_url: AnyHttpUrl
    cancel_url: AnyHttpUrl
    promotion_code: str | None = Field(default=None, min_length=1, max_length=200)


class CheckoutSessionCreated(BaseModel):
    session_id: str
    checkout_url: str
    expires_at: datetime


class CheckoutOutcome(BaseModel):
    session_id: str
    status: Literal["open", "complete", "expired"]
    payment_status: str | None
    subscription_id: str | None
    plan: str | None
    interval: str | None
    expires_at: datetime | None


class PlanChange(_Body):
    plan: str = Field(min_length=1, max_length=64)
    interval: Interval


class ChangePreview(BaseModel):
    kind: Literal["upgrade", "downgrade", "same"]
    amount_due_now: int = Field(description="Prorated, minor units; 0 for a downgrade.")
    currency: str
    effective_at: datetime
    next_amount: int = Field(description="What each following period costs.")


class Cancel(_Body):
    at_period_end: bool = True


class PortalRequest(_Body):
    return_url: AnyHttpUrl


class PortalSession(BaseModel):
    url: str


class InvoiceView(BaseModel):
    id: str
    subscription_id: str | None
    number: str | None
    status: str
    billing_reason: str | None
    amount_due: int
    amount_paid: int
    currency: str
    attempt_count: int
    next_payment_attempt: datetime | None
    period_start: datetime | None
    period_end: datetime | None
    hosted_invoice_url: str | None
    invoice_pdf: str | None
    created: datetime


class Entitlements(BaseModel):
    active: bool
    plan: str | None
    interval: str | None
    features: list[str]
    credits: dict[str, int]
    status: str | None
    access_until: datetime | None = Field(
        description="When access ends unless paid again: the period end, a trial's end,"
        " or a past-due subscription's grace period."
    )
    subscription_id: str | None


# --- staff ------------------------------------------------------------------------


class AdminSubscriptionQuery(PageQuery):
    status: str | None = Field(default=None, max_length=32)
    plan: str | None = Field(default=None, max_length=64)


class CustomerQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(min_length=3, max_length=320)


class HistoryEntry(BaseModel):
    subscription_id: str
    at: datetime
    actor_type: str
    actor: str
    action: str
    changes: dict[str, Any]


class CustomerView(BaseModel):
    user_id: str
    stripe_customer_id: str
    email: str | None
    test_clock_id: str | None
    created_at: datetime


class CustomerDetail(BaseModel):
    customer: CustomerView
    subscriptions: list[SubscriptionView]
    invoices: list[InvoiceView]
    history: list[HistoryEntry]


class StaffCancel(Cancel):
    reason: Reason


class StaffResume(_Body):
    reason: Reason


class StaffPlanChange(PlanChange):
    reason: Reason


class RevenueQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: UtcDatetime | None = Field(default=None, description="Default: now.")


class CurrencyRevenue(BaseModel):
    currency: str
    mrr: int
    arr: int


class Revenue(BaseModel):
    at: datetime
    by_currency: list[CurrencyRevenue]
    active: int
    trialing: int
    new_last_30_days: int
    churned_last_30_days: int


class ClockAdvance(_Body):
    # With its offset: a naive time would be read in the server's own zone
    # (and year 1 without one is past what a timestamp holds: a 500).
    to: UtcDatetime
    reason: Reason


class ClockState(BaseModel):
    user_id: str
    test_clock_id: str
    frozen_time: datetime
    status: str


# --- endpoints --------------------------------------------------------------------

SHOW_SUBSCRIPTION_RECORD = Endpoint(
    "GET",
    "/v1/admin/subscriptions/{stripe_subscription_id}",
    operation_id="show_subscription_record",
    summary="The local state of one subscription, as last mirrored from Stripe",
    owner="subscriptions",
    access=Access.ADMIN,
    tag=TAG,
    path_params={"stripe_subscription_id": SUBSCRIPTION_ID},
    response=SubscriptionRecord,
)
LIST_PLANS = Endpoint(
    "GET",
    "/v1/plans",
    operation_id="list_plans",
    summary="The plans on offer; with a token, also the caller's eligibility prices",
    owner="subscriptions",
    access=Access.PUBLIC,
    tag=TAG,
    response=PlanList,
)
SETUP_PAYMENT_METHOD = Endpoint(
    "POST",
    "/v1/payment-methods/setup",
    operation_id="setup_payment_method",
    summary="A SetupIntent client secret to add a card with Stripe.js",
    owner="subscriptions",
    access=Access.MEMBER,
    tag=TAG,
    response=SetupIntentAnswer,
    status=201,
)
LIST_PAYMENT_METHODS = Endpoint(
    "GET",
    "/v1/payment-methods",
    operation_id="list_payment_methods",
    summary="The caller's saved payment methods",
    owner="subscriptions",
    access=Access.MEMBER,
    tag=TAG,
    response=PaymentMethodList,
)
DEFAULT_PAYMENT_METHOD = Endpoint(
    "POST",
    "/v1/payment-methods/{payment_method_id}/default",
    operation_id="set_default_payment_method",
    summary="Charge this payment method from now on",
    owner="subscriptions",
    access=Access.MEMBER,
    tag=TAG,
    path_params={"payment_method_id": PAYMENT_METHOD_ID},
    response=PaymentMethodView,
)
CREATE_SUBSCRIPTION = Endpoint(
    "POST",
    "/v1/subscriptions",
    operation_id="create_subscription",
    summary="Subscribe to a plan; confirm the first payment with the client secret",
    owner="subscriptions",
    access=Access.MEMBER,
    tag=TAG,
    body=NewSubscription,
    response=SubscriptionCreated,
    status=201,
    errors=(402, 409),
)
CREATE_CHECKOUT_SESSION = Endpoint(
    "POST",
    "/v1/checkout/sessions",
    operation_id="create_checkout_session",
    summary="Subscribe on Stripe's hosted checkout page",
    owner="subscriptions",
    access=Access.MEMBER,
    tag=TAG,
    body=NewCheckoutSession,
    response=CheckoutSessionCreated,
    status=201,
    errors=(409,),
)
SHOW_CHECKOUT_SESSION = Endpoint(
    "GET",
    "/v1/checkout/sessions/{session_id}",
    operation_id="show_checkout_session",
    summary="What Stripe reports of a checkout: complete, open or expired",
    owner="subscriptions",
    access=Access.MEMBER,
    tag=TAG,
    path_params={"session_id": SESSION_ID},
    response=CheckoutOutcome,
)
MY_SUBSCRIPTION = Endpoint(
    "GET",
    "/v1/subscriptions/me",
    operation_id="my_subscription",
    summary="The caller's current subscription (404 when none)",
    owner="subscriptions",
    access=Access.MEMBER,
    tag=TAG,
    errors=(404,),
    response=SubscriptionView,
)
SHOW_SUBSCRIPTION = Endpoint(
    "GET",
    "/v1/subscriptions/{subscription_id}",
    operation_id="show_subscription",
    summary="One of the caller's subscriptions",
    owner="subscriptions",
    access=Access.MEMBER,
    tag=TAG,
    path_params={"subscription_id": SUBSCRIPTION_ID},
    response=SubscriptionView,
)
PREVIEW_CHANGE = Endpoint(
    "POST",
    "/v1/subscriptions/{subscription_id}/preview-change",
    operation_id="preview_subscription_change",
    summary="What a plan change would cost now (Stripe's upcoming-invoice preview)",
    owner="subscriptions",
    access=Access.MEMBER,
    tag=TAG,
    path_params={"subscription_id": SUBSCRIPTION_ID},
    body=PlanChange,
    response=ChangePreview,
)
CHANGE_SUBSCRIPTION = Endpoint(
    "PATCH",
    "/v1/subscriptions/{subscription_id}",
    operation_id="change_subscription",
    summary="Change plan: an upgrade at once with proration, a downgrade at the period end",
    owner="subscriptions",
    access=Access.MEMBER,
    tag=TAG,
    path_params={"subscription_id": SUBSCRIPTION_ID},
    body=PlanChange,
    response=SubscriptionView,
    errors=(402, 409),
)
CANCEL_SUBSCRIPTION = Endpoint(
    "POST",
    "/v1/subscriptions/{subscription_id}/cancel",
    operation_id="cancel_subscription",
    summary="Cancel now, or at the end of the period",
    owner="subscriptions",
    access=Access.MEMBER,
    tag=TAG,
    path_params={"subscription_id": SUBSCRIPTION_ID},
    body=Cancel,
    response=SubscriptionView,
    errors=(409,),
)
RESUME_SUBSCRIPTION = Endpoint(
    "POST",
    "/v1/subscriptions/{subscription_id}/resume",
    operation_id="resume_subscription",
    summary="Undo a cancellation at period end, or resume a paused subscription",
    owner="subscriptions",
    access=Access.MEMBER,
    tag=TAG,
    path_params={"subscription_id": SUBSCRIPTION_ID},
    response=SubscriptionView,
    errors=(409,),
)
BILLING_PORTAL = Endpoint(
    "POST",
    "/v1/billing-portal/sessions",
    operation_id="create_billing_portal_session",
    summary="A link to Stripe's billing portal for the caller",
    owner="subscriptions",
    access=Access.MEMBER,
    tag=TAG,
    body=PortalRequest,
    response=PortalSession,
    status=201,
)
LIST_INVOICES = Endpoint(
    "GET",
    "/v1/invoices",
    operation_id="list_invoices",
    summary="The caller's invoices, newest first, with hosted page and PDF links",
    owner="subscriptions",
    access=Access.MEMBER,
    tag=TAG,
    query=PageQuery,
    response=Page[InvoiceView],
)
MY_ENTITLEMENTS = Endpoint(
    "GET",
    "/v1/entitlements/me",
    operation_id="my_entitlements",
    summary="Whether the caller has access, to what, and until when",
    owner="subscriptions",
    access=Access.MEMBER,
    tag=TAG,
    response=Entitlements,
)
ADMIN_LIST_SUBSCRIPTIONS = Endpoint(
    "GET",
    "/v1/admin/subscriptions",
    operation_id="admin_list_subscriptions",
    summary="Every subscription, newest first, filtered by status and plan",
    owner="subscriptions",
    access=Access.STAFF,
    tag=TAG,
    query=AdminSubscriptionQuery,
    response=Page[SubscriptionView],
)
ADMIN_FIND_CUSTOMER = Endpoint(
    "GET",
    "/v1/admin/customers",
    operation_id="admin_find_customer",
    summary="A customer by email: subscriptions, invoices, history",
    owner="subscriptions",
    access=Access.STAFF,
    tag=TAG,
    query=CustomerQuery,
    errors=(404,),
    response=CustomerDetail,
)
ADMIN_SHOW_CUSTOMER = Endpoint(
    "GET",
    "/v1/admin/customers/{user_id}",
    operation_id="admin_show_customer",
    summary="A member's customer, subscriptions, invoices and history",
    owner="subscriptions",
    access=Access.STAFF,
    tag=TAG,
    path_params={"user_id": USER_ID},
    response=CustomerDetail,
)
ADMIN_CANCEL = Endpoint(
    "POST",
    "/v1/admin/subscriptions/{subscription_id}/cancel",
    operation_id="admin_cancel_subscription",
    summary="Cancel a member's subscription on their behalf (audited)",
    owner="subscriptions",
    access=Access.STAFF,
    tag=TAG,
    path_params={"subscription_id": SUBSCRIPTION_ID},
    body=StaffCancel,
    response=SubscriptionView,
    errors=(409,),
)
ADMIN_RESUME = Endpoint(
    "POST",
    "/v1/admin/subscriptions/{subscription_id}/resume",
    operation_id="admin_resume_subscription",
    summary="Resume a member's subscription on their behalf (audited)",
    owner="subscriptions",
    access=Access.STAFF,
    tag=TAG,
    path_params={"subscription_id": SUBSCRIPTION_ID},
    body=StaffResume,
    response=SubscriptionView,
    errors=(409,),
)
ADMIN_CHANGE = Endpoint(
    "PATCH",
    "/v1/admin/subscriptions/{subscription_id}",
    operation_id="admin_change_subscription",
    summary="Change a member's plan on their behalf (audited)",
    owner="subscriptions",
    access=Access.STAFF,
    tag=TAG,
    path_params={"subscription_id": SUBSCRIPTION_ID},
    body=StaffPlanChange,
    response=SubscriptionView,
    errors=(402, 409),
)
ADMIN_REVENUE = Endpoint(
    "GET",
    "/v1/admin/revenue",
    operation_id="admin_revenue",
    summary="MRR and ARR per currency, counts, churn and new, from the mirrored state",
    owner="subscriptions",
    access=Access.ADMIN,
    tag=TAG,
    query=RevenueQuery,
    response=Revenue,
)
ADVANCE_TEST_CLOCK = Endpoint(
    "POST",
    "/v1/admin/test-clocks/{user_id}/advance",
    operation_id="advance_test_clock",
    summary="Test mode only: move a member's Stripe test clock (renewals, trials, dunning)",
    owner="subscriptions",
    access=Access.STAFF,
    tag=TAG,
    path_params={"user_id": USER_ID},
    body=ClockAdvance,
    response=ClockState,
    errors=(409,),
)

ENDPOINTS = (
    SHOW_SUBSCRIPTION_RECORD,
    LIST_PLANS,
    SETUP_PAYMENT_METHOD,
    LIST_PAYMENT_METHODS,
    DEFAULT_PAYMENT_METHOD,
    CREATE_SUBSCRIPTION,
    CREATE_CHECKOUT_SESSION,
    SHOW_CHECKOUT_SESSION,
    MY_SUBSCRIPTION,
    SHOW_SUBSCRIPTION,
    PREVIEW_CHANGE,
    CHANGE_SUBSCRIPTION,
    CANCEL_SUBSCRIPTION,
    RESUME_SUBSCRIPTION,
    BILLING_PORTAL,
    LIST_INVOICES,
    MY_ENTITLEMENTS,
    ADMIN_LIST_SUBSCRIPTIONS,
    ADMIN_FIND_CUSTOMER,
    ADMIN_SHOW_CUSTOMER,
    ADMIN_CANCEL,
    ADMIN_RESUME,
    ADMIN_CHANGE,
    ADMIN_REVENUE,
    ADVANCE_TEST_CLOCK,
    *payments_contract.ENDPOINTS,
)
