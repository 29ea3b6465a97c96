"""The HTTP server every service runs: aiohttp's, answering in the API's error shape.

aiohttp answers a request its parser refuses (a malformed request line, an
invalid header name, a bad ``Content-Length``, an oversize header, a broken
chunk) itself, before any middleware runs, with a plain-text 400 that quotes
the offending bytes (an ``Authorization`` header among them). It has no hook
for that answer (aio-libs/aiohttp#3287 asks for one), so the protocol class
overrides ``RequestHandler.handle_error``, the one method that builds it, and
answers with ``shared/http/middleware.py``'s :func:`unreadable_request`.

Getting aiohttp to build that class takes two more overrides of private
names (``AppRunner._make_server``, ``Server._kwargs`` and ``_loop``), so this
is written for one aiohttp version: :data:`WRITTEN_FOR`, the version
``pyproject.toml`` pins. ``tests/shared/test_http_server.py`` fails when the
installed aiohttp is another, and the raw-socket tests in
``tests/gateway/test_unreadable_requests.py`` when the behaviour changes.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from shared.http.middleware import unreadable_request

WRITTEN_FOR = "3.14.5"


class _JsonErrorsProtocol(RequestHandler):
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
    def __call__(self) -> RequestHandler:
        return _JsonErrorsProtocol(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer unreadable requests with JSON."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts the app, checks the settings
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **made._kwargs,
        )
