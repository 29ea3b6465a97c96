"""Spends through the gateway: the spending order, idempotency, refusals,
reversal to the same grants, and members kept to their own records."""

from __future__ import annotations

import asyncio
import base64
import functools
import uuid
from datetime import timedelta

import orjson
import pytest

from services.credits import ledger
from shared import runtime
from shared.http import idempotency
from tests.credits.conftest import MONTH, START, Credits
from tests.support.billing_events import member_headers


async def _admin_grant(credits: Credits, user: str, amount: int, **extra: object) -> int:
    status, body = await credits.request(
        "POST",
        "/v1/admin/credits/grants",
        "ops-1",
        role="admin",
        json={
            "user_id": user,
            "credit_type": "meeting_room_hours",
            "amount": amount,
            "reason": "goodwill after an outage",
            **extra,
        },
    )
    assert status == 201, body
    return int(body["id"])


async def test_spending_order_is_priority_then_soonest_expiry_then_oldest(
    credits: Credits,
) -> None:
    now = credits.clock.now()
    late = await _admin_grant(
        credits, "u1", 3, priority=10, expires_at=(now + 3 * MONTH).isoformat()
    )
    never = await _admin_grant(credits, "u1", 3, priority=10)
    soon = await _admin_grant(credits, "u1", 3, priority=10, expires_at=(now + MONTH).isoformat())
    soon_too = await _admin_grant(
        credits, "u1", 3, priority=10, expires_at=(now + MONTH).isoformat()
    )
    first = await _admin_grant(credits, "u1", 1, priority=5)
    status, spent = await credits.spend("u1", 12)
    assert status == 201, spent
    assert [(c["grant_id"], c["amount"]) for c in spent["consumed"]] == [
        (first, 1),
        (soon, 3),
        (soon_too, 3),
        (late, 3),
        (never, 2),
    ]
    assert spent["balance_after"] == 1
    entries = await credits.db.fetch(
        "SELECT grant_id, amount FROM credits.entries WHERE spend_id = $1 ORDER BY id",
        spent["id"],
    )
    assert [(e["grant_id"], e["amount"]) for e in entries] == [
        (c["grant_id"], -c["amount"]) for c in spent["consumed"]
    ]
    await credits.consistent("u1")


async def test_the_same_idempotency_key_answers_the_same_spend_once(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")
    first = await credits.spend("u1", 3, key="book-42")
    again = await credits.spend("u1", 3, key="book-42")
    assert first[0] == again[0] == 201
    assert first[1] == again[1]
    assert (await credits.balances("u1"))["meeting_room_hours"] == 7
    status, body = await credits.spend("u1", 4, key="book-42")
    assert status == 422, body
    assert (await credits.balances("u1"))["meeting_room_hours"] == 7


async def test_a_spend_needs_an_idempotency_key(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")
    async with credits.http.post(
        f"{credits.gateway}/v1/credits/spend",
        json={"credit_type": "meeting_room_hours", "amount": 1, "reference": "b"},
        headers=member_headers("u1"),
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "idempotency_key_required"
    assert (await credits.balances("u1"))["meeting_room_hours"] == 10


async def test_a_spend_beyond_the_balance_is_refused_with_the_balance(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")
    status, body = await credits.spend("u1", 11, key="too-much")
    assert status == 422
    assert body["error"]["code"] == "insufficient_credits"
    assert {"field": "balance", "reason": "10"} in body["error"]["details"]
    # The same key answers the same refusal, even once credits arrived.
    await credits.renew("u1", "sub_1", start=START + MONTH)
    assert (await credits.spend("u1", 11, key="too-much"))[1] == body
    assert (await credits.spend("u1", 11))[0] == 201
    await credits.consistent("u1")


async def test_an_unknown_credit_type_is_a_validation_error(credits: Credits) -> None:
    status, body = await credits.spend("u1", 1, credit_type="parking_spots")
    assert status == 422
    assert body["error"]["details"][0]["field"] == "credit_type"


async def test_expired_credits_are_not_spendable_even_before_the_sweep(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")
    credits.clock.advance(MONTH)
    status, body = await credits.spend("u1", 1)
    assert status == 422
    assert {"field": "balance", "reason": "0"} in body["error"]["details"]


async def test_reverse_returns_credits_to_the_grants_they_came_from_once(
    credits: Credits,
) -> None:
    await credits.activate("u1", "sub_1")
    await credits.pay("u1", {"meeting_room_hours_pack_10": 1})
    status, spent = await credits.spend("u1", 12)
    assert status == 201
    for _ in range(2):
        status, reversal = await credits.request(
            "POST", f"/v1/credits/spends/{spent['id']}/reverse", "u1", json={}
        )
        assert status == 200, reversal
        assert (reversal["returned"], reversal["forfeited"]) == (12, 0)
    rows = await credits.db.fetch(
        "SELECT grant_id, amount FROM credits.entries WHERE spend_id = $1 AND kind = 'reversal'"
        " ORDER BY id",
        spent["id"],
    )
    assert [(r["grant_id"], r["amount"]) for r in rows] == [
        (c["grant_id"], c["amount"]) for c in spent["consumed"]
    ]
    assert (await credits.balances("u1"))["meeting_room_hours"] == 20
    await credits.consistent("u1")


async def test_reverse_forfeits_what_came_from_an_expired_grant(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")  # 10, expiring at START + MONTH
    await credits.pay("u1", {"meeting_room_hours_pack_10": 1})  # 10, a year
    status, spent = await credits.spend("u1", 12)
    assert status == 201
    credits.clock.set(START + MONTH + timedelta(hours=1))
    status, reversal = await credits.request(
        "POST", f"/v1/credits/spends/{spent['id']}/reverse", "u1", json={}
    )
    assert status == 200
    assert (reversal["returned"], reversal["forfeited"]) == (2, 10)
    assert (await credits.balances("u1"))["meeting_room_hours"] == 10


async def test_another_members_spend_is_not_found(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")
    status, spent = await credits.spend("u1", 2)
    assert status == 201
    status, body = await credits.request(
        "POST", f"/v1/credits/spends/{spent['id']}/reverse", "u2", json={}
    )
    assert status == 404
    assert body["error"]["code"] == "not_found"
    missing = "csp_" + "0" * 32
    assert (await credits.request("POST", f"/v1/credits/spends/{missing}/reverse", "u1", json={}))[
        0
    ] == 404
    # Nor does it show in the other member's balances or ledger.
    assert (await credits.balances("u2"))["meeting_room_hours"] == 0
    status, page = await credits.request("GET", "/v1/credits/me/transactions", "u2")
    assert status == 200
    assert page["data"] == []
    # u2 spending cannot reach u1's credits.
    assert (await credits.spend("u2", 1))[0] == 422
    assert (await credits.balances("u1"))["meeting_room_hours"] == 8


async def test_staff_reverse_a_members_spend_with_a_reason_on_record(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")
    _, spent = await credits.spend("u1", 2)
    path = f"/v1/credits/spends/{spent['id']}/reverse"
    status, body = await credits.request("POST", path, "ops-1", role="admin", json={})
    assert status == 422
    assert body["error"]["details"][0]["field"] == "reason"
    status, body = await credits.request(
        "POST", path, "ops-1", role="admin", json={"reason": "booking cancelled by the desk"}
    )
    assert status == 200, body
    entry = await credits.db.fetchrow(
        "SELECT * FROM credits.audit_log WHERE target_id = $1", spent["id"]
    )
    assert entry is not None
    assert entry["reason"] == "booking cancelled by the desk"
    assert entry["actor_id"] == "ops-1"


async def test_my_credits_say_what_expires_when(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")
    await credits.pay("u1", {"meeting_room_hours_pack_10": 1})
    status, body = await credits.request("GET", "/v1/credits/me", "u1")
    assert status == 200
    hours = next(b for b in body["balances"] if b["credit_type"] == "meeting_room_hours")
    assert hours["name"] == "Meeting-room hours"
    assert hours["balance"] == 20
    assert [e["amount"] for e in hours["expiring"]] == [10, 10]
    assert hours["expiring"][0]["expires_at"].startswith("2026-03-31")


async def test_transactions_paginate_newest_first(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")
    for n in range(5):
        assert (await credits.spend("u1", 1, reference=f"b{n}"))[0] == 201
    seen: list[int] = []
    cursor: str | None = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        status, page = await credits.request(
            "GET", "/v1/credits/me/transactions", "u1", params=params
        )
        assert status == 200, page
        seen += [t["id"] for t in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            assert not page["has_more"]
            break
    assert len(seen) == 7  # two grants, five spends
    assert seen == sorted(seen, reverse=True)
    status, body = await credits.request(
        "GET", "/v1/credits/me/transactions", "u1", params={"cursor": "nonsense"}
    )
    assert status == 422
    assert body["error"]["details"][0]["field"] == "cursor"
    # Past Postgres' bigint, the largest integer a cursor can carry.
    huge = base64.urlsafe_b64encode(b"[18446744073709551615]").decode().rstrip("=")
    status, body = await credits.request(
        "GET", "/v1/credits/me/transactions", "u1", params={"cursor": huge}
    )
    assert (status, body["error"]["details"][0]["field"]) == (422, "cursor")


async def test_text_postgres_cannot_store_is_refused_as_invalid(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")
    status, body = await credits.spend("u1", 1, reference="booking\x00-1")
    assert (status, body["error"]["details"][0]["field"]) == (422, "reference")
    status, body = await credits.request(
        "POST",
        "/v1/admin/credits/grants",
        "ops-1",
        role="admin",
        json={"user_id": "u1", "credit_type": "guest_passes", "amount": 1, "reason": "why\x00"},
    )
    assert (status, body["error"]["details"][0]["field"]) == (422, "reason")
    assert (await credits.balances("u1"))["meeting_room_hours"] == 10


async def test_a_spend_whose_key_was_taken_over_is_undone_and_one_holding_it_stores_its_answer(
    credits: Credits,
) -> None:
    # The one-statement spend (ledger.spend_answered) stores its answer only
    # under the lease it holds; after a takeover nothing of it remains.
    await credits.activate("u1", "sub_1")
    pool = credits.stack.app("credits")[runtime.POOL]
    lease = await pool.fetchval(
        "INSERT INTO idempotency_keys (scope, key, request_hash, lease_token, leased_until)"
        " VALUES ('u1', 'taken', 'h', gen_random_uuid(), now() + interval '1 minute')"
        " RETURNING lease_token"
    )
    spend = functools.partial(
        ledger.spend_answered,
        user_id="u1",
        credit_type="meeting_room_hours",
        amount=3,
        reference="room",
        now=credits.clock.now(),
        status=201,
        answer={"id": "csp_taken", "balance_after": 0, "consumed": []},
    )
    async with pool.acquire() as conn:
        with pytest.raises(ledger.AnswerNotStored):
            await spend(conn, spend_id="csp_lost", key=("u1", "taken", uuid.uuid4()))
        assert await conn.fetchval("SELECT count(*) FROM spends WHERE user_id = 'u1'") == 0
        assert (
            await conn.fetchval(
                "SELECT status FROM idempotency_keys WHERE scope = 'u1' AND key = 'taken'"
            )
            is None
        )
        done = await spend(conn, spend_id="csp_taken", key=("u1", "taken", lease))
        assert done is not None and done.balance_after == 7
        stored = await conn.fetchrow(
            "SELECT status, response, lease_token FROM idempotency_keys"
            " WHERE scope = 'u1' AND key = 'taken'"
        )
        # Beyond the balance: nothing written, the key still held.
        assert await spend(conn, spend_id="csp_over", key=("u1", "taken", lease), amount=8) is None
    assert stored is not None
    assert stored["status"] == 201 and stored["lease_token"] is None
    assert stored["response"] == {
        "id": "csp_taken",
        "balance_after": 7,
        "consumed": [{"grant_id": g, "amount": a} for g, a in done.consumed],
    }
    assert (await credits.balances("u1"))["meeting_room_hours"] == 7
    await credits.consistent("u1")


async def test_a_new_key_is_claimed_and_answered_in_the_spends_own_commit(
    credits: Credits,
) -> None:
    await credits.activate("u1", "sub_1")
    status, spent = await credits.spend("u1", 3, key="one-commit")
    assert status == 201, spent
    stored = await credits.db.fetchrow(
        "SELECT status, response, lease_token, created_at, completed_at"
        " FROM credits.idempotency_keys WHERE scope = 'u1' AND key = 'one-commit'"
    )
    assert stored is not None
    assert (stored["status"], stored["lease_token"]) == (201, None)
    assert orjson.loads(stored["response"]) == spent
    # now() is the transaction's start: one transaction claimed and completed it.
    assert stored["created_at"] == stored["completed_at"]


async def test_concurrent_requests_with_one_key_spend_once(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")
    answers = await asyncio.gather(*(credits.spend("u1", 3, key="double-click") for _ in range(20)))
    assert {s for s, _ in answers} <= {201, 409}, answers
    made = [body for status, body in answers if status == 201]
    assert made and all(body == made[0] for body in made)
    assert (
        await credits.db.fetchval("SELECT count(*) FROM credits.spends WHERE user_id = 'u1'") == 1
    )
    assert (await credits.balances("u1"))["meeting_room_hours"] == 7
    await credits.consistent("u1")


async def test_a_refusal_before_the_spend_is_stored_under_its_key(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")
    status, refused = await credits.spend("u1", 1, credit_type="parking_spots", key="typo")
    assert (status, refused["error"]["details"][0]["field"]) == (422, "credit_type")
    # The key is bound to the refused request: the same one replays its refusal,
    # another one is a reuse.
    assert await credits.spend("u1", 1, credit_type="parking_spots", key="typo") == (422, refused)
    status, body = await credits.spend("u1", 1, key="typo")
    assert (status, body["error"]["code"]) == (422, "idempotency_key_reused")
    assert (await credits.balances("u1"))["meeting_room_hours"] == 10


def _spend_fingerprint(amount: int) -> str:
    body = {"credit_type": "meeting_room_hours", "amount": amount, "reference": "booking-1"}
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return idempotency.fingerprint("POST", "/internal/credits/spend", canonical)


async def test_a_key_whose_holder_died_is_taken_over_once_its_lease_ran_out(
    credits: Credits,
) -> None:
    await credits.activate("u1", "sub_1")
    since = await credits.db.fetchval(
        "INSERT INTO credits.idempotency_keys (scope, key, request_hash, lease_token, leased_until)"
        " VALUES ('u1', 'held', $1, gen_random_uuid(), now() + interval '1 minute')"
        " RETURNING created_at",
        _spend_fingerprint(3),
    )
    status, body = await credits.spend("u1", 3, key="held")
    assert (status, body["error"]["code"]) == (409, "idempotency_in_progress")
    assert (await credits.balances("u1"))["meeting_room_hours"] == 10
    await credits.db.execute(
        "UPDATE credits.idempotency_keys SET leased_until = now() - interval '1 second'"
        " WHERE scope = 'u1' AND key = 'held'"
    )
    status, spent = await credits.spend("u1", 3, key="held")
    assert status == 201, spent
    assert await credits.spend("u1", 3, key="held") == (201, spent)
    assert (await credits.balances("u1"))["meeting_room_hours"] == 7
    # A takeover keeps the key's lifetime.
    assert (
        await credits.db.fetchval(
            "SELECT created_at FROM credits.idempotency_keys WHERE scope = 'u1' AND key = 'held'"
        )
        == since
    )
    await credits.consistent("u1")


async def test_an_expired_key_spends_again_as_a_new_request(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")
    assert (await credits.spend("u1", 3, key="monthly"))[0] == 201
    await credits.db.execute(
        "UPDATE credits.idempotency_keys SET created_at = created_at - interval '25 hours'"
        " WHERE scope = 'u1' AND key = 'monthly'"
    )
    status, spent = await credits.spend("u1", 4, key="monthly")
    assert status == 201, spent
    assert spent["balance_after"] == 3
    assert await credits.spend("u1", 4, key="monthly") == (201, spent)
    assert (await credits.balances("u1"))["meeting_room_hours"] == 3
    await credits.consistent("u1")


async def test_a_spend_whose_new_key_another_request_recorded_meanwhile_is_undone(
    credits: Credits,
) -> None:
    # The one-statement spend (ledger.spend_claimed) looks its key up, spends,
    # then records the key. Another request recording the same key in between
    # (here: an open transaction, committed while the spend waits on it) wins:
    # the spend is undone and the caller is told the key exists.
    await credits.activate("u1", "sub_1")
    pool = credits.stack.app("credits")[runtime.POOL]
    async with pool.acquire() as other, pool.acquire() as conn:
        first = other.transaction()
        await first.start()
        await other.execute(
            "INSERT INTO idempotency_keys (scope, key, request_hash, lease_token, leased_until)"
            " VALUES ('u1', 'raced', 'h', gen_random_uuid(), now() + interval '1 minute')"
        )
        spend = asyncio.create_task(
            ledger.spend_claimed(
                conn,
                user_id="u1",
                credit_type="meeting_room_hours",
                amount=3,
                reference="room",
                now=credits.clock.now(),
                spend_id="csp_raced",
                key=("u1", "raced", "h"),
                lease=timedelta(minutes=1),
                status=201,
                answer={"id": "csp_raced", "balance_after": 0, "consumed": []},
            )
        )
        # The spend is made and waits to record the key behind the open insert.
        for _ in range(100):
            waiting = await credits.db.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND query LIKE '%spend_credits_claimed%'"
            )
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting == 1
        await first.commit()
        assert await spend is None
    assert (
        await credits.db.fetchval("SELECT count(*) FROM credits.spends WHERE user_id = 'u1'") == 0
    )
    assert (await credits.balances("u1"))["meeting_room_hours"] == 10
    await credits.consistent("u1")


async def test_a_spend_updates_its_grant_in_place_until_the_grant_is_emptied(
    credits: Credits,
) -> None:
    # A spend changes only `remaining`, which no index of grants names (the
    # spending order's and the sweep's indexes hold the grants not
    # `depleted`): its update is HOT, adding no index entry, as long as the
    # grant keeps something. Emptying it is the one update that is not.
    grant_id = await _admin_grant(credits, "u1", 10)
    pool = credits.stack.app("credits")[runtime.POOL]
    updates = (
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables"
        " WHERE schemaname = 'credits' AND relname = 'grants'"
    )
    async with pool.acquire() as conn, conn.transaction():
        for amount in (3, 3, 3):
            await ledger.spend(
                conn,
                user_id="u1",
                credit_type="meeting_room_hours",
                amount=amount,
                reference="room",
                now=credits.clock.now(),
            )
        assert tuple(await conn.fetchrow(updates)) == (3, 3)
        emptied = await ledger.spend(
            conn,
            user_id="u1",
            credit_type="meeting_room_hours",
            amount=1,
            reference="room",
            now=credits.clock.now(),
        )
        assert emptied.consumed == [(grant_id, 1)]
        assert tuple(await conn.fetchrow(updates)) == (4, 3)
        assert await conn.fetchval("SELECT depleted FROM grants WHERE id = $1", grant_id)
    status, reversed_ = await credits.request(
        "POST", f"/v1/credits/spends/{emptied.id}/reverse", "u1", json={}
    )
    assert status == 200, reversed_
    assert not await credits.db.fetchval(
        "SELECT depleted FROM credits.grants WHERE id = $1", grant_id
    )
    status, spent = await credits.spend("u1", 1)
    assert status == 201, spent
    assert [(c["grant_id"], c["amount"]) for c in spent["consumed"]] == [(grant_id, 1)]
    await credits.consistent("u1")
