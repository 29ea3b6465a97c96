"""``GET /v1/admin/events``: newest first, filters, keyset pagination and
parameter validation, over one ledger seeded once for the module."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from tests.gateway.helpers import admin, assert_error, deliver
from tests.support import env
from tests.support import stripe_objects as so
from tests.support.stack import Stack
from tests.support.waiting import eventually

BASE = 1_790_000_000  # 2026-09-21T14:13:20Z
# Two pairs share a ``created`` second: ties are broken by id.
PLAN = [
    ("invoice.paid", BASE + 0),
    ("invoice.paid", BASE + 10),
    ("customer.created", BASE + 10),
    ("invoice.payment_failed", BASE + 20),
    ("invoice.paid", BASE + 30),
    ("customer.created", BASE + 40),
    ("invoice.paid", BASE + 40),
]


@pytest.fixture(scope="module")
async def seeded(module_stack: Stack) -> AsyncIterator[list[dict[str, Any]]]:
    """The events in the ledger (nothing else is delivered in this module)."""
    events = [so.event(kind, so.fixture("invoice"), created=at) for kind, at in PLAN]
    async with aiohttp.ClientSession() as http:
        for evt in events:
            await deliver(http, module_stack.gateway, evt)
    db = await asyncpg.connect(env.DATABASE_URL)
    try:
        await eventually(
            lambda: db.fetchval("SELECT count(*) FROM webhooks.events"),
            until=lambda n: n == len(events),
            what="seeded events in the ledger",
        )
    finally:
        await db.close()
    yield events


def newest_first(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in sorted(events, key=lambda e: (e["created"], e["id"]), reverse=True)]


def matching(
    events: list[dict[str, Any]],
    kind: str | None = None,
    gte: int | None = None,
    lt: int | None = None,
) -> list[str]:
    return newest_first(
        [
            e
            for e in events
            if (kind is None or e["type"] == kind)
            and (gte is None or e["created"] >= gte)
            and (lt is None or e["created"] < lt)
        ]
    )


def iso(unix: int, offset_hours: int = 0) -> str:
    zone = timezone(timedelta(hours=offset_hours))
    return datetime.fromtimestamp(unix, UTC).astimezone(zone).isoformat()


async def list_ids(http: aiohttp.ClientSession, stack: Stack, **params: str) -> list[str]:
    status, answer, _ = await admin(http, stack.gateway, "GET", "/events", params=params)
    assert status == 200, answer
    return [e["id"] for e in answer["data"]]


async def test_listing_is_newest_first_with_summaries(
    module_stack: Stack, http: aiohttp.ClientSession, seeded: list[dict[str, Any]]
) -> None:
    status, answer, _ = await admin(http, module_stack.gateway, "GET", "/events")

    assert status == 200
    assert [e["id"] for e in answer["data"]] == newest_first(seeded)
    assert (answer["has_more"], answer["next_cursor"]) == (False, None)
    newest = next(e for e in seeded if e["id"] == answer["data"][0]["id"])
    first = answer["data"][0]
    assert first["type"] == newest["type"]
    assert datetime.fromisoformat(first["created"]) == datetime.fromtimestamp(BASE + 40, UTC)
    assert first["api_version"] == newest["api_version"]
    assert (first["duplicates"], first["replay_count"], first["last_replayed_at"]) == (0, 0, None)
    assert "payload" not in first


async def test_filter_by_type(
    module_stack: Stack, http: aiohttp.ClientSession, seeded: list[dict[str, Any]]
) -> None:
    assert await list_ids(http, module_stack, type="invoice.paid") == matching(
        seeded, "invoice.paid"
    )
    assert await list_ids(http, module_stack, type="charge.refunded") == []


async def test_filter_by_created_range_in_unix_seconds(
    module_stack: Stack, http: aiohttp.ClientSession, seeded: list[dict[str, Any]]
) -> None:
    expected = matching(seeded, gte=BASE + 10, lt=BASE + 40)
    assert len(expected) == 4  # both bounds cut through a pair of equal timestamps
    got = await list_ids(http, module_stack, created_gte=str(BASE + 10), created_lt=str(BASE + 40))
    assert got == expected


@pytest.mark.parametrize(
    ("gte", "lt"),
    [
        (iso(BASE + 10).replace("+00:00", "Z"), iso(BASE + 40).replace("+00:00", "Z")),
        (iso(BASE + 10), iso(BASE + 40, offset_hours=2)),
        (iso(BASE + 10, offset_hours=-5), iso(BASE + 40, offset_hours=9)),
    ],
)
async def test_filter_by_created_range_in_iso_8601(
    module_stack: Stack,
    http: aiohttp.ClientSession,
    seeded: list[dict[str, Any]],
    gte: str,
    lt: str,
) -> None:
    got = await list_ids(http, module_stack, created_gte=gte, created_lt=lt)
    assert got == matching(seeded, gte=BASE + 10, lt=BASE + 40)


async def test_filters_combine_and_limit_truncates(
    module_stack: Stack, http: aiohttp.ClientSession, seeded: list[dict[str, Any]]
) -> None:
    got = await list_ids(http, module_stack, type="customer.created", created_gte=str(BASE + 20))
    assert got == matching(seeded, "customer.created", gte=BASE + 20)
    assert len(got) == 1
    assert await list_ids(http, module_stack, limit="3") == newest_first(seeded)[:3]


async def walk_pages(
    http: aiohttp.ClientSession, stack: Stack, params: dict[str, str]
) -> tuple[list[str], int]:
    seen: list[str] = []
    pages = 0
    query = dict(params)
    while True:
        status, answer, _ = await admin(http, stack.gateway, "GET", "/events", params=query)
        assert status == 200, answer
        pages += 1
        assert len(answer["data"]) <= int(params["limit"])
        seen.extend(e["id"] for e in answer["data"])
        if not answer["has_more"]:
            assert answer["next_cursor"] is None
            return seen, pages
        assert answer["data"], "has_more with an empty page"
        assert pages <= len(PLAN)
        query = {**params, "cursor": answer["next_cursor"]}


@pytest.mark.parametrize("limit", ["1", "2", "3", "7", "200"])
async def test_pagination_returns_every_event_exactly_once_newest_first(
    module_stack: Stack, http: aiohttp.ClientSession, seeded: list[dict[str, Any]], limit: str
) -> None:
    seen, pages = await walk_pages(http, module_stack, {"limit": limit})
    assert seen == newest_first(seeded)
    assert pages == max(1, -(-len(seeded) // int(limit)))


async def test_pagination_keeps_the_filters(
    module_stack: Stack, http: aiohttp.ClientSession, seeded: list[dict[str, Any]]
) -> None:
    seen, _ = await walk_pages(
        http, module_stack, {"limit": "2", "type": "invoice.paid", "created_lt": str(BASE + 40)}
    )
    assert seen == matching(seeded, "invoice.paid", lt=BASE + 40)


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("limit", "0"),
        ("limit", "201"),
        ("limit", "-1"),
        ("limit", "ten"),
        ("limit", ""),
        ("limit", "1.5"),
        ("cursor", "not-a-cursor"),
        ("cursor", ""),
        ("cursor", "é"),
        ("cursor", _cursor({"created": "2026-01-01T00:00:00+00:00"})),
        ("cursor", _cursor(["yesterday", "evt_x"])),
        ("cursor", _cursor(42)),
        ("cursor", _cursor(["2026-01-01T00:00:00", "evt_x"])),
        ("cursor", _cursor(["2026-01-01T00:00:00+00:00", None])),
        ("cursor", _cursor(["9999-12-31T23:59:59-23:00", "evt_x"])),
        # Postgres text cannot hold a NUL: the query would fail, a 500.
        ("cursor", _cursor(["2026-01-01T00:00:00+00:00", "evt_\u0000x"])),
        ("created_gte", "yesterday"),
        ("created_gte", "2026-13-01T00:00:00Z"),
        ("created_gte", "2026-01-01T00:00:00"),
        ("created_gte", "-5"),
        ("created_gte", "1000000000000000000"),
        ("created_gte", "99999999999999999999999"),
        ("created_lt", "9999-12-31T23:59:59-23:00"),
        ("created_lt", "0001-01-01T00:00:00+05:00"),
        ("type", "invoice paid"),
        ("type", "invoice.\x00paid"),
    ],
)
async def test_bad_parameters_are_422_naming_the_parameter(
    module_stack: Stack, http: aiohttp.ClientSession, param: str, value: str
) -> None:
    status, answer, _ = await admin(
        http, module_stack.gateway, "GET", "/events", params={param: value}
    )
    assert_error(status, answer, 422, "validation_failed", param)
    assert [d["field"] for d in answer["error"]["details"]] == [param]
