"""The one error shape every HTTP answer of the product uses.

``{"error": {"code", "message", "details", "request_id"}}``: ``code`` is a
stable lower_snake string a client can branch on, ``message`` is for people,
``details`` names each offending field and why (empty when no field is to
blame), ``request_id`` is the id the log lines of that request carry. The
README's error table lists every status and code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import pydantic
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from shared.logging import current_context


class ErrorDetail(BaseModel):
    model_config = ConfigDict(frozen=True)

    field: str = Field(
        description="The offending field: a body path like `items.0.quantity`, "
        "a query parameter, a path parameter or a header name."
    )
    reason: str = Field(description="Why it was refused.")


class ErrorBody(BaseModel):
    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Stable, lower_snake.")
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)
    request_id: str | None = Field(default=None, description="Also on the request's log lines.")
    decline_code: str | None = Field(
        default=None, description="Stripe's decline code, on a 402 for a declined card."
    )


class ErrorResponse(BaseModel):
    """Every non-2xx answer of the API."""

    error: ErrorBody


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers=dict(headers) if headers else None,
    )


def error_payload(
    code: str, message: str, details: Iterable[ErrorDetail] = (), decline_code: str | None = None
) -> dict[str, Any]:
    request_id = current_context().get("request_id")
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "details": [d.model_dump() for d in details],
        "request_id": request_id if isinstance(request_id, str) else None,
    }
    if decline_code is not None:
        error["decline_code"] = decline_code
    return {"error": error}


def json_error(
    status: int,
    code: str,
    message: str,
    *,
    details: Iterable[ErrorDetail] = (),
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return json_response(error_payload(code, message, details), status=status, headers=headers)


class ApiError(Exception):
    """Raised anywhere under a handler to answer with the error shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Iterable[ErrorDetail] = (),
        headers: Mapping[str, str] | None = None,
        decline_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = tuple(details)
        self.headers = dict(headers or {})
        self.decline_code = decline_code

    def payload(self) -> dict[str, Any]:
        return error_payload(self.code, self.message, self.details, self.decline_code)

    def response(self) -> web.Response:
        return json_response(self.payload(), status=self.status, headers=self.headers)


# --- the common ones, so a code is spelled once ------------------------------


def invalid_field(field: str, reason: str) -> ApiError:
    """A request field that is well-formed but not acceptable."""
    detail = ErrorDetail(field=field, reason=reason)
    return ApiError(422, "validation_failed", f"{field}: {reason}", details=[detail])


def bad_request(code: str, message: str, field: str | None = None) -> ApiError:
    """The request cannot be read: malformed JSON, a malformed header."""
    details = [ErrorDetail(field=field, reason=message)] if field else []
    return ApiError(400, code, message, details=details)


def not_found(what: str) -> ApiError:
    """Also the answer for another member's records: no existence oracle."""
    return ApiError(404, "not_found", f"no such {what}")


def conflict(code: str, message: str, **details: str) -> ApiError:
    return ApiError(
        409, code, message, details=[ErrorDetail(field=k, reason=v) for k, v in details.items()]
    )


def unprocessable(code: str, message: str, **details: str) -> ApiError:
    """A business rule refused the request (invalid transition, insufficient credits...)."""
    return ApiError(
        422, code, message, details=[ErrorDetail(field=k, reason=v) for k, v in details.items()]
    )


def unavailable(what: str, retry_after: int = 5) -> ApiError:
    return ApiError(
        503,
        f"{what}_unavailable",
        f"{what.replace('_', ' ')} unavailable, retry later",
        headers={"Retry-After": str(retry_after)},
    )


def from_validation_error(exc: pydantic.ValidationError, *, prefix: str = "") -> ApiError:
    """pydantic's errors as ``details``: one entry per offending field."""
    details = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in error["loc"])
        field = f"{prefix}{location}" if location else prefix.rstrip(".") or "body"
        details.append(ErrorDetail(field=field, reason=error["msg"]))
    first = details[0] if details else ErrorDetail(field="body", reason="invalid")
    return ApiError(422, "validation_failed", f"{first.field}: {first.reason}", details=details)


def refuse_nul(data: Any) -> None:
    """422 naming the first field whose text holds a NUL character.

    Postgres cannot store one in ``text`` or ``jsonb``: let through, the
    request would fail at its first write or query as a 500, perhaps after
    an effect outside the database (a publish, a Stripe call) went ahead.
    ``data`` is a decoded JSON body or a query's parameters. Walked with a
    stack, not recursion: JSON may nest deeper than Python's recursion limit.
    """
    pending: list[tuple[str, Any]] = [("", data)]
    while pending:
        field, value = pending.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise invalid_field(field or "body", "must not contain a NUL character")
        elif isinstance(value, Mapping):
            for key, item in value.items():
                name = f"{field}.{key}" if field else str(key)
                pending += [(name, item), (name, key)]
        elif isinstance(value, list):
            pending += [(f"{field}.{i}" if field else str(i), v) for i, v in enumerate(value)]
