"""The one middleware every service runs: request id, metrics, JSON errors.

aiohttp answers routing and protocol errors (404, 405, 413) with plain text by
default; clients of a JSON API deserve JSON, so those are rewritten here, and
an unexpected exception becomes a 500 without leaking its text. A request
aiohttp cannot even parse never reaches a middleware: ``shared/http/server.py``
answers it with :func:`unreadable_request`, in the same shape.

Request ids: a client's ``X-Request-Id`` is kept when it is sane (a short
token of safe characters), so a caller can follow its own id through the
logs; otherwise one is made. Every answer carries it back, every log line of
the request carries it, and the gateway passes it to the service it forwards
to. Metrics are by route template (``/v1/subscriptions/{subscription_id}``),
never the raw path, so ids cannot explode label cardinality.

It sits on the webhook hot path, so it is one layer and cheap: request ids
are a per-process random prefix plus a counter (unique without a call into
the OS per request), the log context is a single ContextVar, and metric
children are looked up once per (route, method, status) and cached.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import http_exceptions, web

from shared import metrics
from shared.http.errors import ApiError, json_error
from shared.logging import get_logger, log_context

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    400: "bad_request",
    429: "rate_limited",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
}

_ID_PREFIX = secrets.token_hex(4)
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_id_counter = itertools.count(1)
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _route_name(request: web.Request) -> str:
    # The route pattern, not the path: bounded label values.
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _observe(route: str, method: str, status: int, seconds: float) -> None:
    key = (route, method, status)
    child = _children.get(key)
    if child is None:
        child = (
            metrics.HTTP_REQUESTS.labels(route, method, str(status)),
            metrics.HTTP_REQUEST_SECONDS.labels(route, method),
        )
        _children[key] = child
    child[0].inc()
    child[1].observe(seconds)


def request_id_of(request: web.Request) -> str:
    offered = request.headers.get("X-Request-Id")
    if offered and _SANE_REQUEST_ID.fullmatch(offered):
        return offered
    return _new_request_id()


def _new_request_id() -> str:
    return f"{_ID_PREFIX}-{next(_id_counter):x}"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request_id_of(request)
    route = _route_name(request)
    started = time.perf_counter()
    in_flight = metrics.HTTP_REQUESTS_IN_FLIGHT.labels(route)
    in_flight.inc()
    with log_context(request_id=request_id):
        try:
            response = await handler(request)
        except ApiError as exc:
            response = exc.response()
        except (RequestTimedOut, web.RequestPayloadError) as exc:
            # The body stalled or broke off (shared/http/server.py): the rest
            # of it will not be read, so the connection cannot carry another
            # request.
            if isinstance(exc, RequestTimedOut):
                response = json_error(408, "request_timeout", str(exc))
            else:
                response = json_error(400, "malformed_request", _BROKEN_BODY)
            response.force_close()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _HTTP_CODES.get(exc.status, "http_error")
            response = json_error(exc.status, code, exc.reason, headers=_keep_headers(exc))
        except Exception:
            # The id in the answer is the one on this log line: support can
            # find the stack trace from what the client saw.
            log.exception("unhandled_error", method=request.method, route=route)
            response = json_error(
                500, "internal_error", "internal error; quote the request_id when reporting it"
            )
        finally:
            in_flight.dec()
    response.headers["X-Request-Id"] = request_id
    _observe(route, request.method, response.status, time.perf_counter() - started)
    return response


def _keep_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}


_BROKEN_BODY = "the body does not match its Content-Length or chunks"
# What each of aiohttp's parse errors says about the request, in words of our
# own: aiohttp's message quotes the offending bytes (a header line with its
# token, say), and nothing a client sent is echoed back or logged.
_UNREADABLE: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.BadHttpMethod, "not an HTTP/1.x request (HTTPS sent to an HTTP port?)"),
    (http_exceptions.BadStatusLine, "malformed request line"),
    (http_exceptions.InvalidURLError, "malformed request target"),
    (http_exceptions.LineTooLong, "the request line or a header is too long"),
    (http_exceptions.InvalidHeader, "malformed header"),
    (http_exceptions.PayloadEncodingError, _BROKEN_BODY),
)
_UNREADABLE_CODES = {408: "request_timeout", 413: "payload_too_large", 431: "headers_too_large"}


class RequestTimedOut(TimeoutError):
    """A request's head or body did not arrive in time (``shared/http/server.py``);
    its text is ours, and says which."""


def unreadable_request(status: int, exc: BaseException | None) -> web.Response:
    """The answer to a request aiohttp refused before any handler ran (status
    4xx: a malformed request line, header, Content-Length or chunk), or to an
    error that escaped every middleware (5xx); counted under route
    ``unmatched``, method ``UNKNOWN`` (no method could be read)."""
    request_id = _new_request_id()
    with log_context(request_id=request_id):
        if status >= 500:
            log.error("unhandled_error", status=status, exc_info=exc)
            code = "internal_error"
            message = "internal error; quote the request_id when reporting it"
        else:
            reason = (
                str(exc)
                if isinstance(exc, RequestTimedOut)
                else next(
                    (text for kind, text in _UNREADABLE if isinstance(exc, kind)),
                    "malformed request line, header or body framing",
                )
            )
            # Info, not an error: anything on the internet sends these.
            log.info("unreadable_request", status=status, error=type(exc).__name__, reason=reason)
            code, message = _UNREADABLE_CODES.get(status, "malformed_request"), reason
        response = json_error(status, code, message)
    response.headers["X-Request-Id"] = request_id
    metrics.HTTP_REQUESTS.labels("unmatched", "UNKNOWN", str(status)).inc()
    return response
