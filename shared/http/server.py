"""The HTTP server every service runs: aiohttp's, answering in the API's error
shape, with bounds on how long a client may take.

aiohttp answers a request its parser refuses (a malformed request line, an
invalid header name, a bad ``Content-Length``, an oversize header, a broken
chunk) itself, before any middleware runs, with a plain-text 400 that quotes
the offending bytes (an ``Authorization`` header among them). It has no hook
for that answer (aio-libs/aiohttp#3287 asks for one), so the protocol class
overrides ``RequestHandler.handle_error``, the one method that builds it, and
answers with ``shared/http/middleware.py``'s :func:`unreadable_request`.

aiohttp bounds neither the time a request's head may take to arrive (only
the keep-alive timer, an hour by default, ends a connection stalled in its
first request line) nor its body's (a handler waits on ``request.read()``
for as long as the client keeps the connection open); and a chunk that
breaks in a later packet than the headers is queued as an error answer to a
next request, while the handler waits on its body for ever. The protocol
class therefore watches the bytes as they arrive (:class:`ConnectionLimits`):

- a head must be complete ``header_timeout`` after its first byte, else it
  is answered 408 ``request_timeout`` and the connection closes (an idle
  kept-alive connection, which has sent no byte of a next request, is left
  to the keep-alive timeout);
- a body must be complete ``body_timeout`` after its head, however it
  dribbles in, else reading it fails with :class:`RequestTimedOut`, which the
  middleware answers 408; a body that breaks off fails the read the same way
  with aiohttp's ``RequestPayloadError`` (400). Either way nothing more is read
  from the connection, which closes after that answer;
- past ``max_connections`` open at once, a new connection is closed as it is
  accepted: neither asyncio nor uvloop can pause accepting.

Getting aiohttp to build that class takes overrides of private names
(``AppRunner._make_server``, ``Server._kwargs`` and ``_loop``, and the
protocol's ``_messages``, ``_waiter``, ``_loop`` and ``_ErrInfo``), so this
is written for one aiohttp version: :data:`WRITTEN_FOR`, the version
``pyproject.toml`` pins. ``tests/shared/test_http_server.py`` fails when the
installed aiohttp is another, and the raw-socket tests in
``tests/gateway/test_unreadable_requests.py`` and
``tests/gateway/test_slow_clients.py`` when the behaviour changes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo
from aiohttp.web_request import BaseRequest

from shared import metrics
from shared.http.middleware import RequestTimedOut, unreadable_request
from shared.settings import ServiceSettings

WRITTEN_FOR = "3.14.5"


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take, and how many may connect at once (the
    ``HTTP_*`` settings of ``shared/settings.py``)."""

    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_connections: int

    @classmethod
    def of(cls, settings: ServiceSettings) -> ConnectionLimits:
        return cls(**{name: getattr(settings, f"http_{name}") for name in _LIMITS})

    @classmethod
    def defaults(cls) -> ConnectionLimits:
        """The settings' defaults, for a server started without settings (tests)."""
        fields = ServiceSettings.model_fields
        return cls(**{name: fields[f"http_{name}"].default for name in _LIMITS})


_LIMITS = ("header_timeout", "body_timeout", "keepalive_timeout", "max_connections")


class _Protocol(RequestHandler):
    __slots__ = ("_body", "_body_timer", "_head_timer", "_limits", "_reading_done")

    def __init__(self, manager: web.Server, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        # The body of the request last parsed, while it is still arriving.
        self._body: StreamReader | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        # Set once a head or body timed out or broke: nothing more is parsed.
        self._reading_done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager = self._manager
        if manager is not None and len(manager.connections) > self._limits.max_connections:
            metrics.HTTP_CONNECTIONS_REFUSED.inc()
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_done:
            return
        body = self._body
        if body is not None and body.is_eof():
            body = self._body = None
        if body is None and data and self._head_timer is None:
            # The first byte of a head (a kept-alive connection sends none
            # while idle): from here the whole head has header_timeout.
            self._head_timer = self._loop.call_later(
                self._limits.header_timeout, self._head_timed_out
            )
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) == queued:
            return
        message, payload = self._messages[-1]
        if isinstance(message, _ErrInfo) and body is not None and not body.is_eof():
            # The parser refused bytes of the body under way (a broken chunk):
            # aiohttp would queue its error as the answer to a next request
            # while the handler waits on this body for ever. The read fails
            # instead, and the handler's answer is the connection's last.
            self._messages.pop()
            self._end_body(body, RequestPayloadError(message.message))
            return
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if isinstance(message, _ErrInfo) or payload.is_eof():
            return
        # Pipelined requests before this one were complete: only the last
        # parsed can have a body still arriving.
        self._body = payload
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_timer = self._loop.call_later(
            self._limits.body_timeout, self._body_timed_out, payload
        )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._reading_done or self.transport is None:
            return
        timeout = self._limits.header_timeout
        self._reading_done = True
        error = RequestTimedOut(f"the request line and headers did not arrive within {timeout:g} s")
        # Answered as aiohttp answers a head it cannot parse: handle_error()
        # below, then the connection closes.
        self._messages.append((_ErrInfo(status=408, exc=error, message=str(error)), EMPTY_PAYLOAD))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _body_timed_out(self, body: StreamReader) -> None:
        self._body_timer = None
        if body.is_eof() or body.exception() is not None or self.transport is None:
            return
        timeout = self._limits.body_timeout
        self._end_body(body, RequestTimedOut(f"the body did not arrive within {timeout:g} s"))

    def _end_body(self, body: StreamReader, error: BaseException) -> None:
        self._reading_done = True
        self._body = None
        self._cancel_timers()
        body.set_exception(error)
        # At its end: aiohttp then spends no lingering time reading the rest
        # of a body the handler did not read.
        body.feed_eof()
        self.close()  # no further request on this connection

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # As aiohttp's: once a response has begun, no second one can follow.
        if request.writer.output_size > 0:
            raise ConnectionError("response already begun, cannot send the error")
        response = unreadable_request(status, exc)
        response.force_close()  # as aiohttp's: the stream may be out of step
        return response


class _Server(web.Server):
    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits

    def __call__(self) -> RequestHandler:
        return _Protocol(self, self._limits, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer unreadable requests with JSON
    and hold clients to ``limits``."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=limits.keepalive_timeout, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts the app, checks the settings
        return _Server(
            made.request_handler,
            limits=self._limits,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **made._kwargs,
        )
