"""One error shape for every HTTP answer: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def json_error(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    return json_response(
        {"error": {"code": code, "message": message, **extra}}, status=status, headers=headers
    )


class ApiError(Exception):
    """Raised by a handler to answer with a JSON error."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def response(self) -> web.Response:
        return json_error(self.status, self.code, self.message, **self.extra)
