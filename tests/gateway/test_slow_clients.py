"""Slow and stalled clients against the real gateway process (``python -m
services.gateway``), over raw sockets: a request's head and body must arrive
in bounded time, a broken chunk is answered when it arrives, an idle
connection is closed, and connections beyond the cap are refused, while
ordinary requests keep being served (``shared/http/server.py``).

The bounds are the ``HTTP_*`` settings, set small here so each test takes
seconds; production's defaults are in README's Configuration table.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.gateway.helpers import assert_error, token
from tests.support import env
from tests.support.processes import ServiceProcess

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
KEEPALIVE_TIMEOUT = 4.0
# What a bound may be overshot by on a loaded test machine.
SLACK = 1.5
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def gateway(logs: Path, **bounds: str) -> ServiceProcess:
    process = ServiceProcess(
        "gateway",
        logs / "gateway.log",
        STRIPE_WEBHOOK_SECRETS=env.WEBHOOK_SECRET,
        JWT_SECRET=env.JWT_SECRET,
        **bounds,
    )
    await process.start()
    return process


@pytest.fixture(scope="module")
async def bounded_gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    process = await gateway(
        tmp_path_factory.mktemp("slow_clients"),
        HTTP_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        HTTP_BODY_TIMEOUT=str(BODY_TIMEOUT),
        HTTP_KEEPALIVE_TIMEOUT=str(KEEPALIVE_TIMEOUT),
    )
    try:
        yield process.url
    finally:
        await process.stop()


@dataclass
class Answer:
    raw: bytes
    seconds: float  # from the last byte sent until the server closed

    @property
    def status(self) -> int:
        return int(self.raw.split(b" ", 2)[1])

    @property
    def json(self) -> object:
        return orjson.loads(self.raw.partition(b"\r\n\r\n")[2])


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def send(url: str, *packets: bytes, pause: float = 0.3, within: float = 15.0) -> Answer:
    """Send each packet, ``pause`` apart, then read until the server closes."""
    reader, writer = await connect(url)
    try:
        for i, packet in enumerate(packets):
            if i:
                await asyncio.sleep(pause)
            writer.write(packet)
            await writer.drain()
        sent = time.monotonic()
        try:
            raw = await asyncio.wait_for(reader.read(), within)
        except ConnectionResetError:
            raw = b""  # closed with what was sent unread
        return Answer(raw, time.monotonic() - sent)
    finally:
        writer.close()


def assert_timed_out(answer: Answer, bound: float) -> None:
    assert answer.raw, "closed without an answer"
    assert_error(answer.status, answer.json, 408, "request_timeout")
    assert answer.seconds < bound + SLACK, answer.seconds


STALLED_HEADS = {
    "half_a_request_line": b"GET /v1/pla",
    "half_the_headers": b"GET /v1/plans HTTP/1.1\r\nHost: x\r\nAuthorization: Bea",
    "headers_without_the_blank_line": b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n",
}


@pytest.mark.parametrize("case", STALLED_HEADS, ids=list(STALLED_HEADS))
async def test_a_request_head_that_stalls_is_answered_408_and_closed(
    bounded_gateway: str, case: str
) -> None:
    assert_timed_out(await send(bounded_gateway, STALLED_HEADS[case]), HEADER_TIMEOUT)


async def test_a_head_sent_a_byte_at_a_time_is_bounded_from_its_first_byte(
    bounded_gateway: str,
) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    reader, writer = await connect(bounded_gateway)
    started = time.monotonic()
    raw = b""
    try:
        for byte in head:
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                # Stop sending once answered: bytes sent after the close
                # would reset the connection, and the answer with it.
                raw = await asyncio.wait_for(reader.read(1 << 16), 0.1)
                break
        raw += await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert_timed_out(Answer(raw, time.monotonic() - started), HEADER_TIMEOUT)


def stalled_body(case: str) -> tuple[bytes, bytes]:
    """A request's head and the start of a body that never ends. Built when the
    test runs: a token minted at import would expire before a long suite got here."""
    if case == "webhook_body_stops":
        return (
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
            b'{"id": "evt_',
        )
    if case == "chunked_body_stops":
        return (
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b'5\r\n{"id"\r\n',
        )
    return (
        b"POST /v1/credits/spend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + token("member", sub="user_slow").encode() + b"\r\n"
        b"Content-Length: 100000\r\n\r\n",
        b'{"amount": ',
    )


@pytest.mark.parametrize("case", ["webhook_body_stops", "chunked_body_stops", "api_body_stops"])
async def test_a_body_that_stalls_is_answered_408_and_closed(
    bounded_gateway: str, case: str
) -> None:
    assert_timed_out(await send(bounded_gateway, *stalled_body(case)), BODY_TIMEOUT)


async def test_a_body_dribbled_a_byte_at_a_time_is_bounded_as_a_whole(
    bounded_gateway: str,
) -> None:
    head = b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    reader, writer = await connect(bounded_gateway)
    writer.write(head)
    await writer.drain()
    started = time.monotonic()
    raw = b""
    try:
        # Never idle for more than 0.1 s: only a bound on the whole body ends it.
        while time.monotonic() - started < BODY_TIMEOUT + SLACK:
            writer.write(b" ")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                raw = await asyncio.wait_for(reader.read(1 << 16), 0.1)
                break
        raw += await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert_timed_out(Answer(raw, time.monotonic() - started), BODY_TIMEOUT)


async def test_a_broken_chunk_in_a_later_packet_is_answered_400_at_once(
    bounded_gateway: str,
) -> None:
    answer = await send(
        bounded_gateway,
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"zzchunk\r\nabc\r\n0\r\n\r\n",
    )
    assert answer.raw, "closed without an answer"
    assert_error(answer.status, answer.json, 400, "malformed_request")
    assert b"zzchunk" not in answer.raw
    assert answer.seconds < 1.0, answer.seconds


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
    bounded_gateway: str,
) -> None:
    answer = await send(bounded_gateway, b"", within=KEEPALIVE_TIMEOUT + 5)
    assert answer.raw == b""
    assert KEEPALIVE_TIMEOUT - 0.5 < answer.seconds < KEEPALIVE_TIMEOUT + SLACK


async def test_a_kept_alive_connection_idle_past_the_header_timeout_still_serves(
    bounded_gateway: str,
) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    reader, writer = await connect(bounded_gateway)
    try:
        for _ in range(2):
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            await asyncio.sleep(HEADER_TIMEOUT * 2)  # idle, not a stalled head
    finally:
        writer.close()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_thousands_of_stalled_connections_leave_normal_requests_served(
    tmp_path: Path,
) -> None:
    stalled_for = 4.0
    process = await gateway(
        tmp_path,
        HTTP_HEADER_TIMEOUT=str(stalled_for),
        HTTP_BODY_TIMEOUT=str(stalled_for),
        HTTP_KEEPALIVE_TIMEOUT=str(stalled_for),
        HTTP_MAX_CONNECTIONS="4000",
    )
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        before = rss_bytes(process.pid)
        for i in range(2_000):
            reader, writer = await connect(process.url)
            if i % 2:
                writer.write(b"GET /v1/plans HTTP/1.1\r\nHost: x\r\nX-A: ")
            else:
                writer.write(
                    b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 100000\r\n\r\n" + b"x" * 50_000
                )
            connections.append((reader, writer))
        opened = time.monotonic()
        served = 0
        while time.monotonic() - opened < 2.0:
            answer = await send(process.url, HEALTH, within=2.0)
            assert answer.status == 200
            served += 1
        assert served >= 5
        # 2,000 connections, half holding 50 kB of a body: about 60 kB each
        # (116 MiB in all, measured); 100 kB each is the bound.
        grown = rss_bytes(process.pid) - before
        assert grown < 2_000 * 100 * 1024, grown

        async def closed(reader: asyncio.StreamReader) -> None:
            with contextlib.suppress(ConnectionError):
                await reader.read()

        await asyncio.wait_for(
            asyncio.gather(*(closed(reader) for reader, _ in connections)),
            stalled_for + 2 * SLACK + 3.0,
        )
    finally:
        for _, writer in connections:
            writer.close()
        await process.stop()


async def test_connections_over_the_cap_are_refused_and_served_again_once_freed(
    tmp_path: Path,
) -> None:
    process = await gateway(
        tmp_path,
        HTTP_MAX_CONNECTIONS="50",
        HTTP_HEADER_TIMEOUT="2",
        HTTP_KEEPALIVE_TIMEOUT="2",
    )
    holding: list[asyncio.StreamWriter] = []
    try:
        for _ in range(50):
            _, writer = await connect(process.url)
            writer.write(b"GET /v1/plans HTTP/1.1\r\n")
            holding.append(writer)
        await asyncio.sleep(0.2)
        refused = await send(process.url, HEALTH, within=2.0)
        assert refused.raw == b"" and refused.seconds < 1.0, refused
        await asyncio.sleep(2.0 + SLACK)  # the stalled ones time out
        answer = await send(process.url, HEALTH)
        assert answer.status == 200
        metrics = await send(
            process.url, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert b"\nhttp_connections_refused_total 1.0\n" in metrics.raw, metrics.raw
    finally:
        for writer in holding:
            writer.close()
        await process.stop()
