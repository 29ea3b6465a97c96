"""``Idempotency-Key`` on a state-changing call (``shared/http/idempotency.py``
through ``shared/api/service.py``): the claim and the stored answer commit
with the effect, a retry replays and never re-runs it, a key whose holder
died is taken over after its lease, a retry after a Stripe timeout reuses the
derived Stripe key (one Stripe object), and keys expire after their TTL.

The operation under test is a real endpoint served by ``ServiceRoutes`` in a
scratch schema: it creates a customer in the Stripe sandbox with
``call.stripe_key`` and records it with ``call.commit``, as a domain route
does. A card charge through the same path shows Stripe's decline as the
API's 402.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from pydantic import BaseModel, ConfigDict

from shared.api.caller import Role
from shared.api.endpoint import Access, Endpoint
from shared.api.service import Call, IdempotencySettings, ServiceRoutes
from shared.db import DbConnection, create_pool
from shared.http import idempotency
from shared.migrations import SHARED_MIGRATIONS, migrate
from shared.runtime import base_app
from shared.settings import ServiceSettings
from shared.stripe_calls import StripeCalls
from shared.stripe_client import StripeSettings
from tests.gateway.helpers import assert_error
from tests.support import env
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import common_settings, serve
from tests.support.waiting import eventually

# Short, for the test; wide enough that a loaded machine still answers a
# request well inside them.
TTL = timedelta(seconds=3)
LEASE = timedelta(seconds=2)
_EFFECTS = "CREATE TABLE effects (id serial PRIMARY KEY, email text NOT NULL, customer text);\n"


class NewCustomer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str


class CustomerMade(BaseModel):
    customer: str
    email: str


class Charge(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payment_method: str
    amount: int


class Charged(BaseModel):
    payment_intent: str


CREATE = Endpoint(
    "POST",
    "/v1/probe/customers",
    operation_id="probe_create_customer",
    summary="Create a customer (test)",
    owner="probe",
    access=Access.MEMBER,
    tag="probe",
    body=NewCustomer,
    response=CustomerMade,
    status=201,
)
CHARGE = Endpoint(
    "POST",
    "/v1/probe/charges",
    operation_id="probe_charge",
    summary="Charge a card (test)",
    owner="probe",
    access=Access.MEMBER,
    tag="probe",
    body=Charge,
    response=Charged,
    status=201,
    errors=(402,),
)


@dataclass
class Probe:
    """The probe service, and what its handler did."""

    url: str
    pool: asyncpg.Pool
    sandbox: SandboxProcess
    routes: ServiceRoutes
    runs: list[str] = field(default_factory=list)
    # Set by a test: the handler waits for it before committing.
    gate: asyncio.Event | None = None
    crash_after_commit: bool = False
    fail_in_effect: bool = False

    async def effects(self, email: str) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM effects WHERE email = $1", email))

    async def stripe_customers(self) -> list[Any]:
        """Customers Stripe created (the sandbox is this test's own)."""
        posts = await self.sandbox.requests("/v1/customers", method="POST")
        return [p for p in posts if p["status"] == 200 and not p["replayed"]]


def _headers(key: str | None = None, user: str = "user_probe") -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {env.SERVICE_TOKEN}",
        "X-User-Id": user,
        "X-User-Role": Role.MEMBER.value,
    }
    if key is not None:
        headers[idempotency.HEADER] = key
    return headers


async def _post(
    http: aiohttp.ClientSession,
    probe: Probe,
    body: dict[str, Any],
    key: str | None,
    path: str = "/internal/probe/customers",
) -> tuple[int, Any, Any]:
    async with http.post(f"{probe.url}{path}", json=body, headers=_headers(key)) as response:
        return response.status, await response.json(content_type=None), response.headers


@pytest.fixture
async def probe(tmp_path: Path, sandbox: SandboxProcess) -> AsyncIterator[Probe]:
    schema = f"probe_{uuid.uuid4().hex[:10]}"
    (tmp_path / "0001_effects.sql").write_text(_EFFECTS)
    admin = await asyncpg.connect(env.DATABASE_URL)
    await migrate(admin, schema, tmp_path, shared=SHARED_MIGRATIONS)
    pool = await create_pool(env.DATABASE_URL, schema, min_size=1, max_size=6)
    # One attempt, a short timeout: a slow Stripe is a timeout the client sees.
    calls = StripeCalls(
        StripeSettings(
            stripe_api_base=sandbox.url, stripe_call_attempts=1, stripe_timeout_seconds=2.0
        )
    )
    routes = ServiceRoutes("probe", [CREATE, CHARGE])
    routes.configure(IdempotencySettings(ttl=timedelta(hours=24), lease=LEASE))
    holder: list[Probe] = []

    @routes.implement(CREATE)
    async def create(call: Call[NewCustomer, Any]) -> CustomerMade:
        made = holder[0]
        made.runs.append(call.body.email)
        customer = await calls.call(
            "create customer",
            lambda c: c.v1.customers.create_async(
                params={"email": call.body.email},
                options={"idempotency_key": call.stripe_key("customer")},
            ),
        )
        if made.gate is not None and len(made.runs) == 1:
            await made.gate.wait()

        async def effect(conn: DbConnection) -> CustomerMade:
            await conn.execute(
                "INSERT INTO effects (email, customer) VALUES ($1, $2)",
                call.body.email,
                customer.id,
            )
            if made.fail_in_effect:
                raise RuntimeError("the effect's transaction failed half-way")
            return CustomerMade(customer=customer.id, email=call.body.email)

        answer = await call.commit(effect)
        if made.crash_after_commit:
            raise RuntimeError("the process died after its commit")
        return answer

    @routes.implement(CHARGE)
    async def charge(call: Call[Charge, Any]) -> Charged:
        intent = await calls.call(
            "charge",
            lambda c: c.v1.payment_intents.create_async(
                params={
                    "amount": call.body.amount,
                    "currency": "usd",
                    "payment_method": call.body.payment_method,
                    "confirm": True,
                    "payment_method_types": ["card"],
                },
                options={"idempotency_key": call.stripe_key("charge")},
            ),
        )
        return Charged(payment_intent=intent.id)

    settings = ServiceSettings(**common_settings())
    app = base_app(settings)
    routes.install(app, lambda: pool)
    running = await serve(app)
    holder.append(Probe(url=running.url, pool=pool, sandbox=sandbox, routes=routes))
    try:
        yield holder[0]
    finally:
        if holder[0].gate is not None:
            holder[0].gate.set()
        await running.stop()
        await calls.close()
        await pool.close()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


def _email() -> str:
    return f"{uuid.uuid4().hex[:12]}@example.com"


async def test_a_retry_gets_the_first_answer_and_no_second_effect(
    probe: Probe, http: aiohttp.ClientSession
) -> None:
    email, key = _email(), uuid.uuid4().hex
    first = await _post(http, probe, {"email": email}, key)
    assert first[0] == 201, first[1]
    second = await _post(http, probe, {"email": email}, key)
    assert (second[0], second[1]) == (201, first[1])
    assert second[2]["Idempotent-Replayed"] == "true"
    assert probe.runs == [email]
    assert await probe.effects(email) == 1


async def test_a_crash_after_the_commit_is_replayed_never_run_again(
    probe: Probe, http: aiohttp.ClientSession
) -> None:
    # The answer was committed with the effect, so the process dying before
    # it could answer leaves the key completed, not stuck and not re-runnable.
    probe.crash_after_commit = True
    email, key = _email(), uuid.uuid4().hex
    status, answer, _ = await _post(http, probe, {"email": email}, key)
    assert_error(status, answer, 500, "internal_error")
    probe.crash_after_commit = False

    status, answer, headers = await _post(http, probe, {"email": email}, key)
    assert status == 201, answer
    assert headers["Idempotent-Replayed"] == "true"
    assert answer["email"] == email
    assert probe.runs == [email]
    assert await probe.effects(email) == 1
    stored = await probe.pool.fetchrow(
        "SELECT status, lease_token FROM idempotency_keys WHERE key = $1", key
    )
    assert (stored["status"], stored["lease_token"]) == (201, None)


async def test_an_effect_that_fails_stores_neither_its_rows_nor_an_answer(
    probe: Probe, http: aiohttp.ClientSession
) -> None:
    # The answer commits with the effect or not at all: after a failure inside
    # the transaction nothing is replayed, and the retry runs (once).
    probe.fail_in_effect = True
    email, key = _email(), uuid.uuid4().hex
    status, answer, _ = await _post(http, probe, {"email": email}, key)
    assert_error(status, answer, 500, "internal_error")
    assert await probe.effects(email) == 0
    probe.fail_in_effect = False

    status, answer, headers = await _post(http, probe, {"email": email}, key)
    assert status == 201, answer
    assert "Idempotent-Replayed" not in headers
    assert probe.runs == [email, email]
    assert await probe.effects(email) == 1
    # Both runs asked Stripe with one derived key: one customer.
    assert len(await probe.stripe_customers()) == 1


def _fingerprint(body: dict[str, Any]) -> str:
    canonical = orjson.dumps(
        NewCustomer(**body).model_dump(mode="json"), option=orjson.OPT_SORT_KEYS
    )
    return idempotency.fingerprint("POST", "/internal/probe/customers", canonical)


async def test_a_key_whose_holder_died_answers_409_until_its_lease_runs_out(
    probe: Probe, http: aiohttp.ClientSession
) -> None:
    email, key = _email(), uuid.uuid4().hex
    # A request claimed the key, then its process was killed: nothing completes it.
    held = await idempotency.claim(
        probe.pool,
        scope="user_probe",
        key=key,
        request_fingerprint=_fingerprint({"email": email}),
        ttl=timedelta(hours=24),
        lease=LEASE,
    )
    assert isinstance(held, idempotency.Claim)

    status, answer, _ = await _post(http, probe, {"email": email}, key)
    assert_error(status, answer, 409, "idempotency_in_progress")
    assert answer["error"]["details"] == [{"field": "Idempotency-Key", "reason": "in progress"}]
    assert probe.runs == []

    await asyncio.sleep(LEASE.total_seconds() + 0.1)
    status, answer, headers = await _post(http, probe, {"email": email}, key)
    assert status == 201, answer
    assert "Idempotent-Replayed" not in headers
    assert await probe.effects(email) == 1
    # The dead holder's late completion cannot overwrite the answer.
    with pytest.raises(idempotency.LeaseLost):
        async with probe.pool.acquire() as conn, conn.transaction():
            await idempotency.complete(conn, held, 201, {"customer": "cus_never"})


async def test_a_request_that_lost_its_lease_rolls_its_effect_back(
    probe: Probe, http: aiohttp.ClientSession
) -> None:
    # The first request stalls past its lease; a retry takes the key over and
    # commits. When the first one wakes, its commit refuses: one effect.
    probe.gate = asyncio.Event()
    email, key = _email(), uuid.uuid4().hex
    stalled = asyncio.create_task(_post(http, probe, {"email": email}, key))
    await eventually(lambda: _ran(probe), what="the first request running")
    await asyncio.sleep(LEASE.total_seconds() + 0.1)
    status, answer, _ = await _post(http, probe, {"email": email}, key)
    assert status == 201, answer
    probe.gate.set()
    status, late, _ = await stalled
    assert_error(status, late, 409, "idempotency_conflict")
    assert await probe.effects(email) == 1
    # Both runs asked Stripe with the same derived key: one customer.
    assert len(await probe.stripe_customers()) == 1


async def _ran(probe: Probe) -> bool:
    return bool(probe.runs)


async def test_a_retry_after_a_stripe_timeout_creates_one_stripe_object(
    probe: Probe, http: aiohttp.ClientSession
) -> None:
    email, key = _email(), uuid.uuid4().hex
    # Stripe takes longer than the call's timeout, but does create the customer.
    await probe.sandbox.control(
        "POST", "/_sandbox/faults", {"kind": "slow", "count": 1, "delay_ms": 4000}
    )
    status, answer, headers = await _post(http, probe, {"email": email}, key)
    assert_error(status, answer, 503, "stripe_unavailable")
    assert int(headers["Retry-After"]) > 0
    assert await probe.effects(email) == 0

    await eventually(probe.stripe_customers, what="the slow create finishing in Stripe")

    status, answer, _ = await _post(http, probe, {"email": email}, key)
    assert status == 201, answer
    posts = await probe.sandbox.requests("/v1/customers", method="POST")
    assert len(posts) == 2
    assert posts[0]["idempotency_key"] == posts[1]["idempotency_key"]
    assert posts[1]["replayed"] is True
    assert len(await probe.stripe_customers()) == 1
    assert await probe.effects(email) == 1


async def test_keys_expire_after_their_ttl(probe: Probe, http: aiohttp.ClientSession) -> None:
    probe.routes.configure(IdempotencySettings(ttl=TTL, lease=LEASE))
    key = uuid.uuid4().hex
    first, other = _email(), _email()
    assert (await _post(http, probe, {"email": first}, key))[0] == 201
    status, answer, _ = await _post(http, probe, {"email": other}, key)
    assert_error(status, answer, 422, "idempotency_key_reused")

    await asyncio.sleep(TTL.total_seconds() + 0.1)
    status, answer, headers = await _post(http, probe, {"email": other}, key)
    assert status == 201, answer
    assert "Idempotent-Replayed" not in headers
    assert probe.runs == [first, other]
    # The expired key's new life asked Stripe with a Stripe key of its own.
    posts = await probe.sandbox.requests("/v1/customers", method="POST")
    assert len({p["idempotency_key"] for p in posts}) == 2

    await asyncio.sleep(TTL.total_seconds() + 0.1)
    assert await idempotency.purge_expired(probe.pool, TTL) == 1
    assert await probe.pool.fetchval("SELECT count(*) FROM idempotency_keys") == 0


def test_keys_live_24_hours_unless_configured() -> None:
    settings = ServiceSettings(**common_settings())
    assert settings.idempotency_key_ttl_seconds == 24 * 3600
    configured = ServiceSettings(**common_settings(idempotency_key_ttl_seconds=60))
    assert configured.idempotency_key_ttl_seconds == 60


def test_derived_stripe_keys_are_stable_and_distinct() -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    claim = idempotency.Claim("user_a", "key-1", uuid.uuid4(), since)
    again = idempotency.Claim("user_a", "key-1", uuid.uuid4(), since)  # a takeover
    assert claim.derived_key("subscriptions", "create") == again.derived_key(
        "subscriptions", "create"
    )
    keys = {
        claim.derived_key("subscriptions", "create"),
        claim.derived_key("subscriptions", "pay"),
        claim.derived_key("credits", "create"),
        idempotency.Claim("user_b", "key-1", uuid.uuid4(), since).derived_key(
            "subscriptions", "create"
        ),
        # The same client key in a later life (after it expired).
        idempotency.Claim("user_a", "key-1", uuid.uuid4(), since + timedelta(days=1)).derived_key(
            "subscriptions", "create"
        ),
    }
    assert len(keys) == 5


async def test_a_declined_card_is_a_402_with_stripes_decline_code(
    probe: Probe, http: aiohttp.ClientSession
) -> None:
    status, answer, _ = await _post(
        http,
        probe,
        {"payment_method": "pm_card_chargeDeclinedInsufficientFunds", "amount": 2500},
        uuid.uuid4().hex,
        path="/internal/probe/charges",
    )
    assert_error(status, answer, 402, "card_declined")
    assert answer["error"]["decline_code"] == "insufficient_funds"
    assert answer["error"]["details"] == [
        {"field": "payment_method", "reason": "insufficient_funds"}
    ]


async def test_without_a_key_each_request_runs(probe: Probe, http: aiohttp.ClientSession) -> None:
    email = _email()
    for _ in range(2):
        assert (await _post(http, probe, {"email": email}, None))[0] == 201
    assert await probe.effects(email) == 2
