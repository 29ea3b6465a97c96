"""An unexpected error is a JSON 500, never a stack trace or an HTML page,
and its request id is the one on the log line that has the stack trace."""

from __future__ import annotations

import aiohttp
import asyncpg
import orjson

from tests.gateway.helpers import assert_error, bearer, token
from tests.support.logs import log_lines
from tests.support.stack import Stack


async def test_500_is_json_with_the_request_id_its_log_line_carries(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    # A bug's stand-in: the ledger's table is gone under the running service.
    await db.execute("ALTER TABLE webhooks.events RENAME TO events_gone")
    with log_lines() as lines:
        async with http.get(
            f"{stack.gateway}/v1/admin/events",
            headers={**bearer(token("admin")), "X-Request-Id": "support-case-4711"},
        ) as response:
            text = await response.text()
            status, headers = response.status, response.headers
    answer = orjson.loads(text)
    assert_error(status, answer, 500, "internal_error")
    assert response.content_type == "application/json"
    assert answer["error"]["request_id"] == headers["X-Request-Id"] == "support-case-4711"
    assert "Traceback" not in text and "events" not in answer["error"]["message"]
    [logged] = [line for line in lines if line["event"] == "unhandled_error"]
    assert logged["request_id"] == "support-case-4711"
    assert logged["level"] == "error"
    assert "UndefinedTable" in logged["exception"]
