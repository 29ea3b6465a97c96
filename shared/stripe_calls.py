"""The Stripe call policy: how every service calls Stripe, in one place.

- **Retries** with tenacity, bounded by attempts and by total time: connection
  failures, 5xx, 429 and a 409 for an idempotency key still in use at Stripe.
  Stripe's ``Retry-After`` is honoured when it sends one (a wait longer than
  the budget allows ends the retries at once), ``Stripe-Should-Retry: false``
  is obeyed. stripe-python's own retries are off (``max_network_retries=0``)
  so there is one policy, not two stacked ones.
- **Idempotency keys**: every write passes one (``options={"idempotency_key":
  ...}``), derived from the client's ``Idempotency-Key`` or from the domain
  (an invoice and attempt number, say), so a retry after a timeout can never
  create a second object or charge twice. The policy retries with the same key.
- **Errors**: what is left after the retries reaches the caller as
  stripe-python's exception; the API layer turns it into the error scheme with
  :func:`api_error_for` (a card error is a 402 with Stripe's decline code,
  Stripe unavailable a 503 with ``Retry-After``).

Stripe is never called inside a database transaction: a slow Stripe must not
hold row locks or a pooled connection.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import stripe
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from shared import metrics
from shared.broker.errors import InvalidMessage, RetryLater
from shared.http.errors import ApiError, ErrorDetail
from shared.logging import get_logger
from shared.stripe_client import StripeSettings, stripe_client

log = get_logger(__name__)

T = TypeVar("T")
StripeCall = Callable[[stripe.StripeClient], Awaitable[T]]


def _header(exc: BaseException, name: str) -> str | None:
    headers = getattr(exc, "headers", None) or {}
    for key, value in headers.items():
        if key.lower() == name:
            return str(value)
    return None


def retry_after_seconds(exc: BaseException) -> float | None:
    value = _header(exc, "retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def is_transient(exc: BaseException) -> bool:
    """A failure that may pass if the same request is sent again."""
    if not isinstance(exc, stripe.StripeError):
        return False
    if _header(exc, "stripe-should-retry") == "false":
        return False
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError):
        return True
    if isinstance(exc, stripe.IdempotencyError):
        # Stripe is still executing the first request with this key.
        return exc.http_status == 409
    status = exc.http_status or 0
    return status >= 500 or status == 429


class _WaitRetryAfter:
    """Stripe's ``Retry-After`` when it gave one, else exponential backoff with jitter."""

    def __init__(self, fallback: Any) -> None:
        self._fallback = fallback

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = retry_after_seconds(exc) if exc is not None else None
        return hinted if hinted is not None else float(self._fallback(state))


class _HintBeyond(stop_base):
    """Stop when Stripe asks us to wait past the call's time budget."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        hinted = retry_after_seconds(exc) if exc is not None else None
        return hinted is not None and time.monotonic() + hinted > self._deadline


class StripeCalls:
    """A service's Stripe: the async client plus the policy. Open it with the app."""

    def __init__(self, settings: StripeSettings) -> None:
        self._http = stripe.AIOHTTPClient(timeout=settings.stripe_timeout_seconds)
        self.client = stripe_client(settings, http_client=self._http, max_network_retries=0)
        self._attempts = settings.stripe_call_attempts
        self._budget = settings.stripe_call_budget_seconds

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def call(self, what: str, fn: StripeCall[T]) -> T:
        """Run ``fn(client)`` under the policy; ``what`` names the call in logs and metrics."""
        deadline = time.monotonic() + self._budget

        retrying = AsyncRetrying(
            stop=stop_any(
                stop_after_attempt(self._attempts),
                stop_after_delay(self._budget),
                _HintBeyond(deadline),
            ),
            wait=_WaitRetryAfter(wait_exponential_jitter(multiplier=0.2, max=4.0, jitter=0.3)),
            retry=retry_if_exception(is_transient),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "stripe_call_retry",
                call=what,
                attempt=state.attempt_number,
                error=repr(state.outcome.exception()) if state.outcome else None,
            ),
        )

        async def attempt() -> T:
            # An async def, not fn itself: tenacity awaits only what it can
            # tell is a coroutine function, and fn is often a lambda.
            return await fn(self.client)

        started = time.perf_counter()
        outcome = "ok"
        try:
            return await retrying(attempt)
        except stripe.CardError:
            outcome = "card_error"
            raise
        except stripe.StripeError as exc:
            outcome = "unavailable" if is_transient(exc) else "error"
            raise
        finally:
            metrics.STRIPE_CALLS.labels(what, outcome).inc()
            metrics.STRIPE_CALL_SECONDS.labels(what).observe(time.perf_counter() - started)


# How each mirrored kind is read back from Stripe (shared/mirror.py ties).
_RETRIEVE: dict[str, Callable[[stripe.StripeClient, str], Awaitable[Any]]] = {
    "subscription": lambda c, i: c.v1.subscriptions.retrieve_async(i),
    "invoice": lambda c, i: c.v1.invoices.retrieve_async(i),
    "payment_intent": lambda c, i: c.v1.payment_intents.retrieve_async(i),
    "checkout_session": lambda c, i: c.v1.checkout.sessions.retrieve_async(i),
    # With its refunds: current API versions list them only when expanded.
    "charge": lambda c, i: c.v1.charges.retrieve_async(i, {"expand": ["refunds"]}),
    "refund": lambda c, i: c.v1.refunds.retrieve_async(i),
    "dispute": lambda c, i: c.v1.disputes.retrieve_async(i),
    "customer": lambda c, i: c.v1.customers.retrieve_async(i),
    "subscription_schedule": lambda c, i: c.v1.subscription_schedules.retrieve_async(i),
    "coupon": lambda c, i: c.v1.coupons.retrieve_async(i),
}


async def fetch_object(calls: StripeCalls, kind: str, object_id: str) -> dict[str, Any]:
    """Stripe's current object, for a consumer settling an ordering tie.

    A transient failure becomes ``RetryLater`` (the message waits in the delay
    queues); an object Stripe no longer has is an invalid message for an
    operator to look at.
    """
    retrieve = _RETRIEVE.get(kind)
    if retrieve is None:
        raise InvalidMessage(f"cannot read {kind} objects from Stripe")
    try:
        obj = await calls.call(f"retrieve {kind}", lambda c: retrieve(c, object_id))
    except stripe.StripeError as exc:
        if is_transient(exc):
            raise RetryLater(f"reading {kind} {object_id}: {exc}") from exc
        raise InvalidMessage(f"reading {kind} {object_id}: {exc}") from exc
    return stripe_json(obj)


def stripe_json(obj: stripe.StripeObject) -> dict[str, Any]:
    """An object returned by a call, as the JSON Stripe sent (the shape events carry).

    stripe-python's ``to_dict`` turns decimal fields into ``Decimal``; the raw
    body keeps them as Stripe wrote them, so the same models read API answers
    and webhook payloads alike.
    """
    response = obj.last_response
    if response is not None:
        data = orjson.loads(response.body)
        if isinstance(data, dict):
            return data
    return orjson.loads(orjson.dumps(obj.to_dict(), default=str))  # type: ignore[no-any-return]


def decline_code_of(exc: stripe.CardError) -> str | None:
    error = exc.error
    code = getattr(error, "decline_code", None) if error is not None else None
    return code if isinstance(code, str) else exc.code


def api_error_for(exc: stripe.StripeError) -> ApiError:
    """The API's answer for a Stripe failure that reached a handler."""
    if isinstance(exc, stripe.CardError):
        decline = decline_code_of(exc)
        return ApiError(
            402,
            "card_declined",
            exc.user_message or "the card was declined",
            details=[ErrorDetail(field="payment_method", reason=decline or "card_declined")],
            decline_code=decline,
        )
    if is_transient(exc) or isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        if not is_transient(exc):
            log.error("stripe_misconfigured", error=repr(exc))
        hinted = retry_after_seconds(exc)
        return ApiError(
            503,
            "stripe_unavailable",
            "Stripe is unavailable, retry later",
            headers={"Retry-After": str(int(hinted) if hinted is not None else 5)},
        )
    log.error("stripe_rejected", error=repr(exc))
    param = getattr(exc, "param", None)
    details = [ErrorDetail(field=param, reason=exc.user_message or "")] if param else []
    return ApiError(422, "stripe_rejected", exc.user_message or "Stripe refused", details=details)
