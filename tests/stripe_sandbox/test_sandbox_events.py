"""Events API listing and signed, retried, optionally chaotic webhook delivery."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import stripe
from aiohttp import web

from tests.stripe_sandbox.sandbox_helpers import API_KEY, Sandbox, free_port

SECRET = "whsec_test_sandbox_secret"


@dataclass
class Receiver:
    url: str
    fail_first: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


@pytest.fixture
async def receiver(sandbox: Sandbox) -> AsyncIterator[Receiver]:
    """An aiohttp webhook endpoint that verifies signatures with stripe's own verifier."""
    port = free_port()
    state = Receiver(url=f"http://127.0.0.1:{port}/webhook")

    async def handle(request: web.Request) -> web.Response:
        body = await request.text()
        try:
            event = stripe.Webhook.construct_event(
                body, request.headers["Stripe-Signature"], SECRET, tolerance=300
            )
        except (ValueError, stripe.SignatureVerificationError):
            state.statuses.append(400)
            return web.Response(status=400)
        if state.fail_first > 0:
            state.fail_first -= 1
            state.statuses.append(500)
            return web.Response(status=500)
        stripe.WebhookSignature.verify_header(
            body, request.headers["Stripe-Signature"], SECRET, tolerance=300
        )
        state.received.append(json.loads(body))
        state.statuses.append(200)
        assert event.id
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/webhook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    endpoint = await asyncio.to_thread(
        sandbox.control, "POST", "/_sandbox/webhook_endpoints", {"url": state.url, "secret": SECRET}
    )
    yield state
    await asyncio.to_thread(
        sandbox.control, "DELETE", f"/_sandbox/webhook_endpoints/{endpoint['id']}"
    )
    await asyncio.to_thread(
        sandbox.control,
        "POST",
        "/_sandbox/delivery",
        {"shuffle": False, "duplicates": 0, "paused": False},
    )
    await runner.cleanup()


@pytest.fixture
def async_client(sandbox: Sandbox) -> Iterator[stripe.StripeClient]:
    yield stripe.StripeClient(
        API_KEY,
        base_addresses={"api": sandbox.base_url},
        http_client=stripe.AIOHTTPClient(),
        max_network_retries=2,
    )


async def flush(sandbox: Sandbox) -> dict[str, Any]:
    result = await asyncio.to_thread(sandbox.flush, 10)
    assert result["drained"], result
    return result


async def test_signed_delivery(
    sandbox: Sandbox, receiver: Receiver, async_client: stripe.StripeClient
) -> None:
    customer = await async_client.v1.customers.create_async(
        params={"email": "hook@example.com"}, options={"idempotency_key": "hook-create-1"}
    )
    await async_client.v1.customers.update_async(customer.id, params={"name": "Hook"})
    await flush(sandbox)
    mine = [e for e in receiver.received if e["data"]["object"]["id"] == customer.id]
    assert [e["type"] for e in mine] == ["customer.created", "customer.updated"]
    created, updated = mine
    assert created["object"] == "event" and created["id"].startswith("evt_")
    assert created["api_version"] == stripe.api_version
    assert created["livemode"] is False
    assert created["request"]["idempotency_key"] == "hook-create-1"
    assert created["request"]["id"].startswith("req_")
    assert updated["data"]["previous_attributes"] == {"name": None}
    event = await async_client.v1.events.retrieve_async(created["id"])
    assert event.pending_webhooks == 0


async def test_retries_after_receiver_errors(
    sandbox: Sandbox, receiver: Receiver, async_client: stripe.StripeClient
) -> None:
    receiver.fail_first = 2
    customer = await async_client.v1.customers.create_async(params={"email": "r@example.com"})
    await flush(sandbox)
    assert receiver.statuses[:3] == [500, 500, 200]
    assert [e["data"]["object"]["id"] for e in receiver.received] == [customer.id]
    log = (await asyncio.to_thread(sandbox.control, "GET", "/_sandbox/delivery/log"))["data"]
    attempts = [entry["attempt"] for entry in log if entry["url"] == receiver.url]
    assert attempts == [1, 2, 3]


async def test_delivery_to_dead_endpoint_is_bounded(
    sandbox: Sandbox, async_client: stripe.StripeClient
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/gone"
    endpoint = await asyncio.to_thread(
        sandbox.control, "POST", "/_sandbox/webhook_endpoints", {"url": dead, "secret": SECRET}
    )
    before = (await asyncio.to_thread(sandbox.control, "GET", "/_sandbox/delivery"))["failed"]
    await async_client.v1.customers.create_async(params={"email": "dead@example.com"})
    stats = await flush(sandbox)
    assert stats["failed"] == before + 1
    await asyncio.to_thread(
        sandbox.control, "DELETE", f"/_sandbox/webhook_endpoints/{endpoint['id']}"
    )


async def test_pause_and_resume(
    sandbox: Sandbox, receiver: Receiver, async_client: stripe.StripeClient
) -> None:
    await asyncio.to_thread(sandbox.control, "POST", "/_sandbox/delivery", {"paused": True})
    await async_client.v1.customers.create_async(params={"email": "p@example.com"})
    stats = await asyncio.to_thread(sandbox.control, "GET", "/_sandbox/delivery")
    assert stats["paused"] and stats["pending"] >= 1
    short = await asyncio.to_thread(sandbox.flush, 0.2)
    assert not short["drained"]
    assert receiver.received == []
    await asyncio.to_thread(sandbox.control, "POST", "/_sandbox/delivery", {"paused": False})
    await flush(sandbox)
    assert len(receiver.received) == 1


async def test_chaos_shuffles_and_duplicates(
    sandbox: Sandbox, receiver: Receiver, async_client: stripe.StripeClient
) -> None:
    await asyncio.to_thread(
        sandbox.control,
        "POST",
        "/_sandbox/delivery",
        {"shuffle": True, "duplicates": 0.5, "seed": 7},
    )
    customers = []
    for index in range(12):
        customers.append(
            await async_client.v1.customers.create_async(
                params={"email": f"chaos{index}@example.com"}
            )
        )
    await flush(sandbox)
    ids = [e["id"] for e in receiver.received]
    assert len(ids) > len(set(ids)), "expected duplicate deliveries"
    assert len(set(ids)) == 12
    stats = await asyncio.to_thread(sandbox.control, "GET", "/_sandbox/delivery")
    assert stats["duplicates_delivered"] >= 1


def test_event_listing_filters_and_pagination(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    sandbox.reset()
    created = [client.v1.customers.create(params={"email": f"e{i}@example.com"}) for i in range(5)]
    client.v1.customers.update(created[0].id, params={"name": "Updated"})
    events = client.v1.events.list(params={"limit": 100})
    assert [e.type for e in events.data] == ["customer.updated"] + ["customer.created"] * 5
    assert [e.data.object["id"] for e in events.data[1:]] == [c.id for c in reversed(created)]

    page1 = client.v1.events.list(params={"limit": 2})
    assert page1.has_more and len(page1.data) == 2
    page2 = client.v1.events.list(params={"limit": 2, "starting_after": page1.data[-1].id})
    page3 = client.v1.events.list(params={"limit": 2, "starting_after": page2.data[-1].id})
    assert not page3.has_more
    seen = [e.id for e in page1.data + page2.data + page3.data]
    assert seen == [e.id for e in events.data]
    back = client.v1.events.list(params={"limit": 2, "ending_before": page2.data[0].id})
    assert [e.id for e in back.data] == [e.id for e in page1.data]
    every = [e.id for e in client.v1.events.list(params={"limit": 1}).auto_paging_iter()]
    assert every == seen

    assert len(client.v1.events.list(params={"type": "customer.updated"}).data) == 1
    assert len(client.v1.events.list(params={"type": "customer.*"}).data) == 6
    assert (
        len(client.v1.events.list(params={"types": ["customer.updated", "customer.created"]}).data)
        == 6
    )
    newest = events.data[0].created
    assert len(client.v1.events.list(params={"created": {"gt": newest}}).data) == 0
    assert (
        len(client.v1.events.list(params={"created": {"gte": newest - 60, "lte": newest}}).data)
        == 6
    )
    assert client.v1.events.retrieve(events.data[0].id).type == "customer.updated"


def test_a_created_window_pages_with_starting_after_as_a_backfill_reads_it(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    # What the product's backfill sends: a created[gte]/created[lte] window,
    # paged newest first with starting_after; has_more speaks of the window.
    sandbox.reset()
    for i in range(5):
        client.v1.customers.create(params={"email": f"w{i}@example.com"})
    every = client.v1.events.list(params={"limit": 100}).data
    newest = every[0].created
    window = {"gte": newest - 3600, "lte": newest}
    seen: list[str] = []
    params: dict[str, object] = {"created": window, "limit": 2}
    while True:
        page = client.v1.events.list(params=params)
        assert page.object == "list" and page.url == "/v1/events"
        seen += [e.id for e in page.data]
        if not page.has_more:
            break
        params["starting_after"] = page.data[-1].id
    assert seen == [e.id for e in every]
    # A window after the newest event is empty, and says there is no more.
    later = client.v1.events.list(params={"created": {"gt": newest}, "limit": 2})
    assert (later.data, later.has_more) == ([], False)
    # Each listed event is the whole event, as a webhook carries it.
    assert {"id", "object", "type", "created", "data", "api_version", "livemode"} <= set(
        every[0].to_dict()
    )
