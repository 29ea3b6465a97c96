"""Checks schemathesis runs besides its own (loaded with SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

import re
from typing import Any

import schemathesis

_CODE = re.compile(r"[a-z][a-z0-9_]*")


@schemathesis.check
def error_body_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every answer has a request id; every error is exactly the one error shape."""
    request_id = response.headers.get("x-request-id") or response.headers.get("X-Request-Id")
    if isinstance(request_id, list):
        request_id = request_id[0] if request_id else None
    if not request_id:
        raise AssertionError("no X-Request-Id on the answer")
    if response.status_code < 400:
        return None
    body = response.json()
    if not isinstance(body, dict) or set(body) != {"error"}:
        raise AssertionError(f"not the error shape: {body!r}")
    error = body["error"]
    if not (isinstance(error.get("code"), str) and _CODE.fullmatch(error["code"])):
        raise AssertionError(f"error code not lower_snake: {error!r}")
    if not (isinstance(error.get("message"), str) and error["message"]):
        raise AssertionError(f"error without a message: {error!r}")
    details = error.get("details")
    if not isinstance(details, list) or any(
        not isinstance(d, dict) or set(d) != {"field", "reason"} for d in details
    ):
        raise AssertionError(f"details are not a list of {{field, reason}}: {error!r}")
    # A replayed answer (Idempotency-Key) is the first request's, with its id.
    replayed = response.headers.get("idempotent-replayed") or response.headers.get(
        "Idempotent-Replayed"
    )
    if not replayed and error.get("request_id") != request_id:
        raise AssertionError(f"request_id {error.get('request_id')!r} is not {request_id!r}")
    if "Traceback" in response.text:
        raise AssertionError("a stack trace in an answer")
    return None
