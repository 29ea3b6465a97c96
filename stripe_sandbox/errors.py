"""Stripe's error envelope: ``{"error": {"type", "code", "message", "param", ...}}``.

Handlers raise :class:`StripeError`; the app middleware turns it into the JSON
shape and HTTP status stripe-python maps onto its exception classes
(400/404 -> InvalidRequestError or IdempotencyError, 401 -> AuthenticationError,
402 -> CardError, 429 -> RateLimitError, 5xx -> APIError).
"""

from __future__ import annotations

from typing import Any

DOC_BASE = "https://stripe.com/docs/error-codes/"


class StripeError(Exception):
    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        validation: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.code = code
        self.param = param
        self.decline_code = decline_code
        self.extra = extra or {}
        self.headers = headers or {}
        # Stripe saves an idempotent result only once the endpoint began executing;
        # a request whose parameters fail validation is not saved and may be retried.
        self.validation = validation

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = DOC_BASE + self.code.replace("_", "-")
        if self.param:
            error["param"] = self.param
        if self.decline_code:
            error["decline_code"] = self.decline_code
        if request_id:
            error["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        error.update(self.extra)
        return {"error": error}


def invalid(message: str, param: str | None = None, code: str | None = None) -> StripeError:
    return StripeError(400, "invalid_request_error", message, param=param, code=code)


def malformed(message: str, param: str | None = None, code: str | None = None) -> StripeError:
    """A parameter that fails validation before the endpoint starts executing."""
    return StripeError(
        400, "invalid_request_error", message, param=param, code=code, validation=True
    )


def missing(label: str, object_id: str, param: str = "id") -> StripeError:
    return StripeError(
        404,
        "invalid_request_error",
        f"No such {label}: '{object_id}'",
        code="resource_missing",
        param=param,
    )


def unknown_param(name: str) -> StripeError:
    return malformed(f"Received unknown parameter: {name}", param=name, code="parameter_unknown")


def required(name: str) -> StripeError:
    return malformed(f"Missing required param: {name}.", param=name, code="parameter_missing")


def auth_missing() -> StripeError:
    return StripeError(
        401,
        "invalid_request_error",
        "You did not provide an API key. You need to provide your API key in the "
        "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
    )


def auth_invalid(key: str) -> StripeError:
    shown = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else key
    return StripeError(
        401,
        "invalid_request_error",
        f"Invalid API Key provided: {shown}",
        code="api_key_invalid",
    )


def idempotency_mismatch(key: str) -> StripeError:
    return StripeError(
        400,
        "idempotency_error",
        "Keys for idempotent requests can only be used with the same parameters they were "
        f"first used with. Try using a key other than '{key}' if you meant to execute a "
        "different request.",
    )


def idempotency_in_use(key: str) -> StripeError:
    # A second request with a key whose first request is still executing: 409, which
    # stripe-python retries (with the same key) until the first one's result is saved.
    return StripeError(
        409,
        "invalid_request_error",
        "There is currently another in-progress request using this Idempotent Key (that "
        "probably means you submitted twice, and the other request is still going through): "
        f"{key}. Please try again later.",
        code="idempotency_key_in_use",
    )


def publishable_key_refused() -> StripeError:
    return StripeError(
        401,
        "invalid_request_error",
        "This API call cannot be made with a publishable API key. Please use a secret API key. "
        "You can find a list of your API keys at https://dashboard.stripe.com/account/apikeys.",
    )


def not_found_url(method: str, path: str) -> StripeError:
    return StripeError(
        404,
        "invalid_request_error",
        f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
        "or we can help at https://support.stripe.com/.",
        validation=True,
    )
