"""The expiry sweep: grants past their expiry, rollover caps, several replicas."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from services.credits import ledger
from shared import db, runtime
from tests.credits.conftest import MONTH, START, Credits


async def _entries(credits: Credits, user: str, kind: str) -> list[tuple[str, int]]:
    rows = await credits.db.fetch(
        "SELECT credit_type, amount FROM credits.entries WHERE user_id = $1 AND kind = $2"
        " ORDER BY credit_type, id",
        user,
        kind,
    )
    return [(r["credit_type"], r["amount"]) for r in rows]


async def test_unused_credits_beyond_the_rollover_cap_expire_with_their_own_entry(
    credits: Credits,
) -> None:
    # meeting_room_hours: cap 5; guest_passes: cap 0.
    await credits.activate("u1", "sub_1")
    assert (await credits.spend("u1", 3))[0] == 201
    await credits.renew("u1", "sub_1", start=START + MONTH)
    credits.clock.set(START + MONTH + timedelta(minutes=5))
    result = await credits.sweep()
    assert result.expired == {"meeting_room_hours": 2, "guest_passes": 2}
    assert result.rolled_over == {"meeting_room_hours": 5}
    assert await _entries(credits, "u1", "expiry") == [
        ("guest_passes", -2),
        ("meeting_room_hours", -2),
    ]
    assert await _entries(credits, "u1", "rollover") == [("meeting_room_hours", -5)]
    rollover = await credits.db.fetchrow(
        "SELECT * FROM credits.grants WHERE user_id = 'u1' AND source = 'rollover'"
    )
    assert rollover is not None
    assert rollover["amount"] == 5
    assert rollover["expires_at"] == START + 2 * MONTH
    assert await credits.balances("u1") == {
        "meeting_room_hours": 15,
        "guest_passes": 2,
        "printing_pages": 0,
    }
    # Nothing is left to sweep: a second run changes nothing.
    again = await credits.sweep()
    assert (again.expired, again.rolled_over) == ({}, {})
    await credits.consistent("u1")


async def test_a_canceled_subscription_rolls_nothing_over(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")
    await credits.cancel("u1", "sub_1", ended_at=START + MONTH)
    credits.clock.set(START + MONTH + timedelta(minutes=5))
    result = await credits.sweep()
    assert result.expired == {"meeting_room_hours": 10, "guest_passes": 2}
    assert result.rolled_over == {}
    await credits.consistent("u1")


async def test_admin_grants_expire_at_their_own_expiry(credits: Credits) -> None:
    now = credits.clock.now()
    status, _ = await credits.request(
        "POST",
        "/v1/admin/credits/grants",
        "ops-1",
        role="admin",
        json={
            "user_id": "u1",
            "credit_type": "printing_pages",
            "amount": 40,
            "expires_at": (now + timedelta(days=2)).isoformat(),
            "reason": "printer was broken for a week",
        },
    )
    assert status == 201
    credits.clock.advance(timedelta(days=1))
    assert (await credits.sweep()).expired == {}
    credits.clock.advance(timedelta(days=1))
    # An admin grant does not roll over, whatever the type's cap.
    assert (await credits.sweep()).expired == {"printing_pages": 40}
    await credits.consistent("u1")


async def test_replicas_sweeping_together_expire_each_credit_once(credits: Credits) -> None:
    users = [f"m{n}" for n in range(30)]
    for n, user in enumerate(users):
        await credits.activate(user, f"sub_{n}", invoice=f"in_{n}")
    await credits.cancel(users[0], "sub_0", ended_at=START + MONTH)
    credits.clock.set(START + MONTH + timedelta(minutes=1))
    results = await asyncio.gather(*(credits.sweep() for _ in range(4)))
    expired = sum(r.expired.get("meeting_room_hours", 0) for r in results)
    rolled = sum(r.rolled_over.get("meeting_room_hours", 0) for r in results)
    # 29 live subscriptions carry 5 and expire 5; the canceled one expires 10.
    assert (expired, rolled) == (29 * 5 + 10, 29 * 5)
    count = await credits.db.fetchval(
        "SELECT count(*) FROM credits.entries"
        " WHERE kind = 'expiry' AND credit_type = 'meeting_room_hours'"
    )
    assert count == 30
    for user in users:
        await credits.consistent(user)


async def test_balances_at_a_past_instant_come_from_the_ledger(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")
    before_spend = credits.clock.now()
    credits.clock.advance(timedelta(days=1))
    assert (await credits.spend("u1", 4))[0] == 201
    credits.clock.set(START + MONTH + timedelta(days=1))
    await credits.sweep()

    async def at(moment: object) -> dict[str, int]:
        status, body = await credits.request(
            "GET", "/v1/admin/credits/u1", "ops-1", role="admin", params={"at": str(moment)}
        )
        assert status == 200, body
        return {b["credit_type"]: b["balance"] for b in body["balances"]}

    assert await at((START - timedelta(days=1)).isoformat()) == {}
    assert (await at(before_spend.isoformat()))["meeting_room_hours"] == 10
    assert (await at((before_spend + timedelta(days=2)).isoformat()))["meeting_room_hours"] == 6
    # Expired at the period's end (the sweep ran a day later): the rollover carries 5.
    assert (await at((START + MONTH).isoformat()))["meeting_room_hours"] == 5
    status, body = await credits.request(
        "GET", "/v1/admin/credits/u1", "u1", params={"at": START.isoformat()}
    )
    assert (status, body["error"]["code"]) == (403, "forbidden")


async def test_the_sweep_and_spends_on_one_account_at_once_stay_consistent(
    credits: Credits,
) -> None:
    await credits.activate("u1", "sub_1")
    await credits.renew("u1", "sub_1", start=START + MONTH)
    await credits.pay("u1", {"meeting_room_hours_pack_10": 3})
    credits.clock.set(START + MONTH + timedelta(minutes=1))
    # 10 expiring (5 carried), 10 of the new period, 30 from packs.
    results = await asyncio.gather(
        *(credits.spend("u1", 2) for _ in range(30)), credits.sweep(), credits.sweep()
    )
    assert {r[0] for r in results[:30]} <= {201, 422}
    spent = sum(2 for r in results[:30] if r[0] == 201)
    # Whether a spend came before the rollover or after, nothing is lost or
    # made: what was spent and what is left make the 45 there were.
    assert spent + (await credits.balances("u1"))["meeting_room_hours"] == 45
    await credits.consistent("u1")


async def test_what_rolled_over_is_spent_first_whether_the_sweep_ran_before_the_renewal(
    credits: Credits,
) -> None:
    # Two members, the same facts: 10 hours, 2 spent, 5 carried over (the
    # cap), a renewal of 10, then 10 spent. Only the order in which this
    # service happened to apply the renewal and the sweep differs.
    boundary = START + MONTH
    for user, sweep_first in (("u1", True), ("u2", False)):
        credits.clock.set(START + timedelta(hours=1))
        sub = f"sub_{user}"
        await credits.activate(user, sub, allotments={"meeting_room_hours": 10})
        assert (await credits.spend(user, 2))[0] == 201
        credits.clock.set(boundary + timedelta(minutes=5))
        if sweep_first:
            await credits.sweep()
        await credits.renew(
            user, sub, start=boundary, allotments={"meeting_room_hours": 10}, invoice=f"in_{user}"
        )
        if not sweep_first:
            await credits.sweep()
        assert (await credits.balances(user))["meeting_room_hours"] == 15
        status, spent = await credits.spend(user, 10)
        assert status == 201, spent
    # The carried credits are the older ones: spent first, in both cases.
    credits.clock.set(boundary + MONTH + timedelta(minutes=5))
    await credits.sweep()
    for user in ("u1", "u2"):
        await credits.renew(
            user,
            f"sub_{user}",
            start=boundary + MONTH,
            allotments={"meeting_room_hours": 10},
            invoice=f"in_{user}_3",
        )
    assert (await credits.balances("u1"))["meeting_room_hours"] == 15
    assert (await credits.balances("u2"))["meeting_room_hours"] == 15
    await credits.consistent("u1")
    await credits.consistent("u2")


async def test_a_cancel_applied_after_the_sweep_rolled_over_takes_the_rollover_back(
    credits: Credits,
) -> None:
    # Canceled at the period end; the sweep ran at the boundary, before the
    # subscription.canceled (Stripe ends it a little later) was applied.
    await credits.activate("u1", "sub_1", allotments={"meeting_room_hours": 10})
    assert (await credits.spend("u1", 2))[0] == 201
    credits.clock.set(START + MONTH + timedelta(minutes=1))
    assert (await credits.sweep()).rolled_over == {"meeting_room_hours": 5}
    credits.clock.set(START + MONTH + timedelta(minutes=40))
    await credits.cancel("u1", "sub_1", ended_at=START + MONTH)
    # Nothing rolls over past the end: the 8 unspent hours expired at it.
    assert (await credits.balances("u1"))["meeting_room_hours"] == 0
    # 3 over the cap at the sweep, the 5 carried once the end was known.
    assert await _entries(credits, "u1", "expiry") == [
        ("meeting_room_hours", -3),
        ("meeting_room_hours", -5),
    ]
    status, at = await credits.request(
        "GET",
        "/v1/admin/credits/u1",
        "ops-1",
        role="admin",
        params={"at": (START + MONTH + timedelta(seconds=1)).isoformat()},
    )
    assert status == 200, at
    assert at["balances"] == [{"credit_type": "meeting_room_hours", "balance": 0}]
    await credits.consistent("u1")


async def test_a_cancel_applied_while_the_sweep_rolls_over_still_takes_it_back(
    credits: Credits,
) -> None:
    await credits.activate("u1", "sub_1", allotments={"meeting_room_hours": 10})
    credits.clock.set(START + MONTH + timedelta(minutes=1))
    pool = credits.stack.app("credits")[runtime.POOL]
    # A replica's sweep has rolled the account over and not yet committed
    # when the cancellation is applied.
    async with db.transaction(pool) as conn:
        (account,) = await ledger.accounts_to_sweep(conn, credits.clock.now(), 10)
        await ledger.expire_account(
            conn,
            "u1",
            account["credit_type"],
            now=credits.clock.now(),
            rollover_cap=5,
            result=ledger.SweepResult(),
        )
        cancel = asyncio.create_task(credits.cancel("u1", "sub_1", ended_at=START + MONTH))
        await asyncio.sleep(1.0)
    await cancel
    assert (await credits.balances("u1"))["meeting_room_hours"] == 0
    await credits.consistent("u1")
