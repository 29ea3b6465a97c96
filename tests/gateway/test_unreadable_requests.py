"""A request aiohttp's parser refuses, before any handler runs, is answered in
the API's error shape by the real processes (``python -m services.<name>``),
sent byte by byte over a raw socket: no client library would send these.

aiohttp's own answer is a plain-text 400 that quotes the offending bytes, an
``Authorization`` header among them; ``shared/http/server.py`` replaces it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.helpers import assert_error
from tests.support import env
from tests.support.processes import ServiceProcess

SECRET = "tok_do_not_echo_9f3a"

# name: (bytes sent, text of them that must not come back)
UNREADABLE = {
    "invalid_header_name": (
        b"GET /v1/plans HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        "Bad Header",
    ),
    "garbage_request_line": (b"GARBAGE\r\n\r\n", "GARBAGE"),
    "content_length_not_a_number": (
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        "Content-Length: abc",
    ),
    "content_length_twice": (
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "Content-Length: 2",
    ),
    "broken_chunk": (
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zzchunk\r\nabc\r\n0\r\n\r\n",
        "zzchunk",
    ),
    "oversize_header": (
        b"GET /v1/plans HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"padpadpad" * 1000 + b"\r\n\r\n",
        "padpadpad",
    ),
    "control_character_in_a_secret_header": (
        b"GET /v1/plans HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET.encode()
        + b"\x01\r\n\r\n",
        SECRET,
    ),
    "tls_sent_to_the_http_port": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", "\x16\x03"),
}


@pytest.fixture(scope="module")
async def gateway_process(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    logs: Path = tmp_path_factory.mktemp("unreadable")
    process = ServiceProcess(
        "gateway",
        logs / "gateway.log",
        STRIPE_WEBHOOK_SECRETS=env.WEBHOOK_SECRET,
        JWT_SECRET=env.JWT_SECRET,
    )
    try:
        await process.start()
        yield process.url
    finally:
        await process.stop()


@pytest.fixture(scope="module")
async def credits_process(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    logs: Path = tmp_path_factory.mktemp("unreadable")
    process = ServiceProcess("credits", logs / "credits.log")
    try:
        await process.start()
        yield process.url
    finally:
        await process.stop()


async def send_raw(url: str, data: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """Send ``data`` as it is; read the answer until the server closes.
    Returns (status, headers with lower-case names, body, the raw answer)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body, raw


def assert_json_error(answer: tuple[int, dict[str, str], bytes, bytes], echo: str) -> None:
    status, headers, body, raw = answer
    assert headers["content-type"].startswith("application/json"), raw
    error = orjson.loads(body)
    assert_error(status, error, 400, "malformed_request")
    assert headers["x-request-id"] == error["error"]["request_id"]
    assert echo.encode() not in raw, raw
    assert b"aiohttp" not in body and b"Bad Request" not in body, raw


@pytest.mark.parametrize("case", UNREADABLE, ids=list(UNREADABLE))
async def test_the_gateway_answers_an_unreadable_request_in_the_error_shape(
    gateway_process: str, case: str
) -> None:
    data, echo = UNREADABLE[case]
    assert_json_error(await send_raw(gateway_process, data), echo)


async def test_an_unreadable_request_is_counted_and_the_gateway_serves_on(
    gateway_process: str, http: aiohttp.ClientSession
) -> None:
    def refused(metrics_text: str) -> float:
        return sum(
            sample.value
            for family in text_string_to_metric_families(metrics_text)
            for sample in family.samples
            if sample.name == "http_requests_total"
            and sample.labels == {"route": "unmatched", "method": "UNKNOWN", "status": "400"}
        )

    async with http.get(f"{gateway_process}/metrics") as response:
        before = refused(await response.text())
    assert_json_error(await send_raw(gateway_process, b"GARBAGE\r\n\r\n"), "GARBAGE")
    async with http.get(f"{gateway_process}/metrics") as response:
        assert refused(await response.text()) == before + 1
    async with http.get(f"{gateway_process}/v1/openapi.json") as response:
        assert response.status == 200


@pytest.mark.parametrize(
    "case", ["invalid_header_name", "content_length_not_a_number", "broken_chunk"]
)
async def test_a_service_answers_an_unreadable_request_in_the_error_shape(
    credits_process: str, case: str
) -> None:
    data, echo = UNREADABLE[case]
    assert_json_error(await send_raw(credits_process, data), echo)
