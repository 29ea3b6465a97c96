"""The fields we keep of Stripe's objects, read from current and older locations.

Current API versions moved fields: a subscription's billing period is on its
items (``items.data[].current_period_*``), an invoice's subscription is at
``parent.subscription_details.subscription``. Both locations are read, the
current one first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.clock import from_unix

SubscriptionStatus = Literal[
    "incomplete",
    "incomplete_expired",
    "trialing",
    "active",
    "past_due",
    "canceled",
    "unpaid",
    "paused",
]
# Stripe never moves a subscription out of these.
ENDED = frozenset({"canceled", "incomplete_expired"})
# Statuses in which a member "has" a subscription: a second one is refused.
LIVE = frozenset({"incomplete", "trialing", "active", "past_due", "unpaid", "paused"})


def _ts(value: int | None) -> datetime | None:
    return from_unix(value) if value is not None else None


def _id_of(value: Any) -> Any:
    """An expanded object's id; ids pass through."""
    return value.get("id") if isinstance(value, dict) else value


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Recurring(_Loose):
    interval: str
    interval_count: int = 1
    usage_type: str = "licensed"


class _Price(_Loose):
    id: str
    lookup_key: str | None = None
    unit_amount: int | None = None
    currency: str | None = None
    recurring: _Recurring | None = None


class _Item(_Loose):
    price: _Price | None = None
    quantity: int | None = 1
    current_period_start: int | None = None
    current_period_end: int | None = None


class _Items(_Loose):
    data: list[_Item] = Field(default_factory=list)


class _CancellationDetails(_Loose):
    reason: str | None = None


class SubscriptionSnapshot(_Loose):
    """A Stripe ``subscription`` object."""

    id: str = Field(pattern=r"^sub_")
    customer: str
    status: SubscriptionStatus
    items: _Items = Field(default_factory=_Items)
    cancel_at_period_end: bool = False
    cancel_at: int | None = None
    canceled_at: int | None = None
    ended_at: int | None = None
    trial_start: int | None = None
    trial_end: int | None = None
    created: int | None = None
    latest_invoice: str | None = None
    schedule: str | None = None
    discounts: list[str] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)
    cancellation_details: _CancellationDetails | None = None
    # Older API versions: the period on the subscription itself.
    current_period_start: int | None = None
    current_period_end: int | None = None

    @field_validator("customer", "latest_invoice", "schedule", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _id_of(value)

    @field_validator("discounts", mode="before")
    @classmethod
    def _discount_ids(cls, value: Any) -> Any:
        return [_id_of(v) for v in value] if isinstance(value, list) else []

    def period(self) -> tuple[datetime | None, datetime | None]:
        for item in self.items.data:
            if item.current_period_start is not None and item.current_period_end is not None:
                return from_unix(item.current_period_start), from_unix(item.current_period_end)
        return _ts(self.current_period_start), _ts(self.current_period_end)

    def _plan_items(self) -> list[_Item]:
        """Items on licensed prices: the plan's. A metered item (overage, billed
        from a meter's usage) rides along and says nothing of the plan."""
        return [
            item
            for item in self.items.data
            if item.price is None
            or item.price.recurring is None
            or item.price.recurring.usage_type != "metered"
        ]

    def price(self) -> _Price | None:
        for item in self._plan_items():
            if item.price is not None:
                return item.price
        return None

    def price_id(self) -> str | None:
        price = self.price()
        return price.id if price else None

    def quantity(self) -> int:
        for item in self._plan_items():
            return item.quantity or 1
        return 1

    def progress(self) -> tuple[int, ...]:
        """What only moves forward: the period end, then whether it has ended."""
        _, end = self.period()
        return (int(end.timestamp()) if end else 0, int(self.status in ENDED))


class _Period(_Loose):
    start: int
    end: int


class _LineParentDetails(_Loose):
    subscription: str | None = None
    proration: bool = False


class _LineParent(_Loose):
    subscription_item_details: _LineParentDetails | None = None


class _Line(_Loose):
    period: _Period | None = None
    subscription: str | None = None
    parent: _LineParent | None = None

    @field_validator("subscription", mode="before")
    @classmethod
    def _sub_id(cls, value: Any) -> Any:
        return _id_of(value)

    @property
    def proration(self) -> bool:
        details = self.parent.subscription_item_details if self.parent else None
        return bool(details and details.proration)


class _Lines(_Loose):
    data: list[_Line] = Field(default_factory=list)


class _SubscriptionDetails(_Loose):
    subscription: str | None = None
    metadata: dict[str, str] | None = None

    @field_validator("subscription", mode="before")
    @classmethod
    def _sub_id(cls, value: Any) -> Any:
        return _id_of(value)


class _InvoiceParent(_Loose):
    subscription_details: _SubscriptionDetails | None = None


class _StatusTransitions(_Loose):
    paid_at: int | None = None


INVOICE_STATUS_RANK = {"draft": 0, "open": 1, "paid": 2, "uncollectible": 2, "void": 3}


class InvoiceSnapshot(_Loose):
    """A Stripe ``invoice`` object."""

    id: str = Field(pattern=r"^in_")
    customer: str
    status: str
    billing_reason: str | None = None
    currency: str
    amount_due: int = 0
    amount_paid: int = 0
    amount_remaining: int = 0
    total: int = 0
    attempt_count: int = 0
    next_payment_attempt: int | None = None
    period_start: int | None = None
    period_end: int | None = None
    hosted_invoice_url: str | None = None
    invoice_pdf: str | None = None
    number: str | None = None
    created: int
    lines: _Lines = Field(default_factory=_Lines)
    parent: _InvoiceParent | None = None
    status_transitions: _StatusTransitions | None = None
    # Older API versions: the subscription at the top level.
    subscription: str | None = None

    @field_validator("customer", "subscription", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _id_of(value)

    def subscription_id(self) -> str | None:
        details = self.parent.subscription_details if self.parent else None
        if details is not None and details.subscription:
            return details.subscription
        if self.subscription:
            return self.subscription
        for line in self.lines.data:
            if line.subscription:
                return line.subscription
        return None

    def subscription_metadata(self) -> dict[str, str]:
        details = self.parent.subscription_details if self.parent else None
        return dict(details.metadata or {}) if details else {}

    def billed_period(self) -> tuple[datetime | None, datetime | None]:
        """The period the invoice pays for: its subscription line's (not a proration's).

        Stripe's invoice-level period of a renewal is the period that just
        ended; the line carries the one being paid for. A metered (overage)
        line of a renewal bills the period that ended, in arrears: of the
        lines that are not prorations, the one reaching furthest is the plan's.
        """
        lines = [line for line in self.lines.data if line.period is not None]

        def order(line: _Line) -> tuple[bool, int]:
            assert line.period is not None
            return line.proration, -line.period.end

        for line in sorted(lines, key=order):
            assert line.period is not None
            return from_unix(line.period.start), from_unix(line.period.end)
        return _ts(self.period_start), _ts(self.period_end)

    def paid_at(self) -> datetime | None:
        return _ts(self.status_transitions.paid_at) if self.status_transitions else None

    def progress(self) -> tuple[int, ...]:
        return (INVOICE_STATUS_RANK.get(self.status, 0), self.attempt_count)


CHECKOUT_STATUS_RANK = {"open": 0, "complete": 1, "expired": 1}


class CheckoutSessionSnapshot(_Loose):
    id: str = Field(pattern=r"^cs_")
    mode: str
    status: str | None = None
    payment_status: str | None = None
    customer: str | None = None
    subscription: str | None = None
    client_reference_id: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    url: str | None = None
    expires_at: int | None = None

    @field_validator("customer", "subscription", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _id_of(value)

    def progress(self) -> tuple[int, ...]:
        return (CHECKOUT_STATUS_RANK.get(self.status or "open", 0),)


class _DiscountSource(_Loose):
    coupon: str | None = None

    @field_validator("coupon", mode="before")
    @classmethod
    def _coupon_id(cls, value: Any) -> Any:
        return _id_of(value)


class DiscountSnapshot(_Loose):
    id: str
    subscription: str | None = None
    promotion_code: str | None = None
    start: int | None = None
    end: int | None = None
    source: _DiscountSource | None = None
    # Older API versions: the coupon object on the discount itself.
    coupon: dict[str, Any] | None = None

    @field_validator("subscription", "promotion_code", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _id_of(value)

    def coupon_id(self) -> str | None:
        if self.source is not None and self.source.coupon:
            return self.source.coupon
        return str(self.coupon["id"]) if self.coupon and "id" in self.coupon else None


class CouponSnapshot(_Loose):
    id: str
    percent_off: float | None = None
    amount_off: int | None = None
    currency: str | None = None
    duration: str = "once"
    duration_in_months: int | None = None
