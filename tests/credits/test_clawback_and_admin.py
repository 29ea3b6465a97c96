"""Claw-back after a refund or dispute; staff grants on the audit record."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shared.billing_events import Member, PaymentDisputed, PaymentRef, PaymentRefunded
from tests.credits.conftest import MONTH, START, Credits


async def test_a_refunded_invoice_takes_back_its_periods_unspent_credits(
    credits: Credits,
) -> None:
    await credits.activate("u1", "sub_1", invoice="in_7")
    await credits.pay("u1", {"meeting_room_hours_pack_10": 1}, intent="pi_pack")
    assert (await credits.spend("u1", 4))[0] == 201
    await credits.refund("u1", invoice="in_7")
    await credits.refund("u1", invoice="in_7")  # the same refund again: nothing more
    # The pack stays; the period's 6 unspent hours and 2 passes are taken back.
    assert (await credits.balances("u1"))["meeting_room_hours"] == 10
    assert (await credits.balances("u1"))["guest_passes"] == 0
    rows = await credits.db.fetch(
        "SELECT g.credit_type, c.taken, c.already_spent, c.cause FROM credits.clawbacks c"
        " JOIN credits.grants g ON g.id = c.grant_id ORDER BY g.credit_type"
    )
    assert [tuple(r) for r in rows] == [
        ("guest_passes", 2, 0, "refund:re_1"),
        ("meeting_room_hours", 6, 4, "refund:re_1"),
    ]
    note = await credits.db.fetchval(
        "SELECT note FROM credits.entries"
        " WHERE kind = 'clawback' AND credit_type = 'meeting_room_hours'"
    )
    assert note == "taken back: refund:re_1"
    await credits.consistent("u1")


async def test_a_disputed_credit_pack_payment_takes_back_the_pack(credits: Credits) -> None:
    await credits.pay("u1", {"meeting_room_hours_pack_10": 1}, intent="pi_pack")
    status, spent = await credits.spend("u1", 12 - 10 + 1)
    assert status == 201
    await credits.send(
        "payment.disputed",
        PaymentDisputed(
            member=Member(user_id="u1", customer_id="cus_u1"),
            payment=PaymentRef(payment_id="pay_pi_pack", payment_intent_id="pi_pack"),
            dispute_id="dp_1",
            amount=20000,
            currency="usd",
            reason="fraudulent",
            status="needs_response",
        ),
    )
    assert (await credits.balances("u1"))["meeting_room_hours"] == 0
    # Reversing the spend now returns nothing to a grant that was taken back.
    status, reversal = await credits.request(
        "POST", f"/v1/credits/spends/{spent['id']}/reverse", "u1", json={}
    )
    assert status == 200
    assert (reversal["returned"], reversal["forfeited"]) == (0, 3)
    await credits.consistent("u1")


async def test_a_staff_grant_needs_a_reason_and_is_audited(credits: Credits) -> None:
    payload = {"user_id": "u9", "credit_type": "guest_passes", "amount": 3}
    status, body = await credits.request(
        "POST", "/v1/admin/credits/grants", "ops-1", role="admin", json=payload
    )
    assert status == 422
    assert body["error"]["details"][0]["field"] == "reason"
    status, body = await credits.request(
        "POST",
        "/v1/admin/credits/grants",
        "ops-1",
        role="staff",
        json={**payload, "reason": "welcome gift"},
        key="gift-u9",
    )
    assert status == 201, body
    assert (body["source"], body["priority"], body["remaining"]) == ("admin", 20, 3)
    # Replayed with its key: the same grant, not a second one.
    again = await credits.request(
        "POST",
        "/v1/admin/credits/grants",
        "ops-1",
        role="staff",
        json={**payload, "reason": "welcome gift"},
        key="gift-u9",
    )
    assert again == (201, body)
    assert (await credits.balances("u9"))["guest_passes"] == 3
    status, audit = await credits.request(
        "GET", "/v1/admin/audit", "ops-1", role="admin", params={"target": str(body["id"])}
    )
    assert status == 200, audit
    (entry,) = audit["data"]
    assert (entry["service"], entry["action"], entry["reason"], entry["actor_id"]) == (
        "credits",
        "credits.grant.create",
        "welcome gift",
        "ops-1",
    )
    # Members cannot grant themselves credits.
    status, _ = await credits.request(
        "POST", "/v1/admin/credits/grants", "u9", json={**payload, "reason": "because"}
    )
    assert status == 403


async def test_a_staff_grant_of_an_unknown_type_or_past_expiry_is_refused(
    credits: Credits,
) -> None:
    base = {"user_id": "u9", "amount": 3, "reason": "test grant"}
    status, body = await credits.request(
        "POST",
        "/v1/admin/credits/grants",
        "ops-1",
        role="admin",
        json={**base, "credit_type": "parking"},
    )
    assert (status, body["error"]["details"][0]["field"]) == (422, "credit_type")
    status, body = await credits.request(
        "POST",
        "/v1/admin/credits/grants",
        "ops-1",
        role="admin",
        json={**base, "credit_type": "guest_passes", "expires_at": "2020-01-01T00:00:00Z"},
    )
    assert (status, body["error"]["details"][0]["field"]) == (422, "expires_at")


async def test_a_refund_takes_back_a_period_whose_upgrade_arrived_before_its_invoice(
    credits: Credits,
) -> None:
    # The upgrade's event overtook the activation's: the period was granted
    # (25) before the paid invoice was known, and the activation adds nothing.
    await credits.change(
        "u1",
        "sub_1",
        previous={"meeting_room_hours": 10},
        current={"meeting_room_hours": 25},
        effective_at=START + timedelta(days=3),
    )
    await credits.activate("u1", "sub_1", allotments={"meeting_room_hours": 10}, invoice="in_7")
    assert (await credits.spend("u1", 4))[0] == 201
    await credits.refund("u1", invoice="in_7")
    # The invoice paid for that period: its 21 unspent hours are taken back.
    assert (await credits.balances("u1"))["meeting_room_hours"] == 0
    taken = await credits.db.fetchval("SELECT sum(taken) FROM credits.clawbacks")
    assert taken == 21
    await credits.consistent("u1")


async def test_a_refund_after_the_period_ended_takes_back_what_it_rolled_over(
    credits: Credits,
) -> None:
    await credits.activate("u1", "sub_1", allotments={"meeting_room_hours": 10}, invoice="in_7")
    assert (await credits.spend("u1", 2))[0] == 201
    credits.clock.set(START + MONTH + timedelta(minutes=5))
    swept = await credits.sweep()
    assert swept.rolled_over == {"meeting_room_hours": 5}
    await credits.renew(
        "u1", "sub_1", start=START + MONTH, allotments={"meeting_room_hours": 10}, invoice="in_8"
    )
    await credits.change(
        "u1",
        "sub_1",
        previous={"meeting_room_hours": 10},
        current={"meeting_room_hours": 25},
        effective_at=START + MONTH + timedelta(days=2),
        start=START + MONTH,
    )
    assert (await credits.balances("u1"))["meeting_room_hours"] == 5 + 25
    # The first period's invoice is refunded (or disputed) during the next
    # one: the credits it carried over are that period's unspent credits too;
    # the next period, paid by its own invoice, keeps all it was granted.
    await credits.refund("u1", invoice="in_7")
    assert (await credits.balances("u1"))["meeting_room_hours"] == 25
    await credits.consistent("u1")


async def test_a_staff_grant_key_reused_after_it_expired_is_a_new_grant(
    credits: Credits,
) -> None:
    async def grant(user_id: str, amount: int) -> tuple[int, Any]:
        return await credits.request(
            "POST",
            "/v1/admin/credits/grants",
            "ops-1",
            role="staff",
            json={
                "user_id": user_id,
                "credit_type": "guest_passes",
                "amount": amount,
                "reason": "monthly goodwill",
            },
            key="goodwill",
        )

    status, first = await grant("u1", 3)
    assert status == 201, first
    # A day later the key has expired and is forgotten (README: keys expire
    # after 24 h): the same key now names another request.
    await credits.db.execute(
        "UPDATE credits.idempotency_keys SET created_at = created_at - interval '25 hours'"
    )
    status, second = await grant("u2", 7)
    assert status == 201, second
    assert (second["user_id"], second["amount"]) == ("u2", 7)
    assert second["id"] != first["id"]
    assert (await credits.balances("u2"))["guest_passes"] == 7
    assert (await credits.balances("u1"))["guest_passes"] == 3
    audited = await credits.db.fetch(
        "SELECT target_id, details->>'user_id' AS user_id FROM credits.audit_log"
    )
    assert sorted((r["target_id"], r["user_id"]) for r in audited) == sorted(
        [(str(first["id"]), "u1"), (str(second["id"]), "u2")]
    )


async def test_a_refund_arriving_before_the_grant_it_refunds_still_takes_it_back(
    credits: Credits,
) -> None:
    # Events are not ordered: the renewal's delivery failed once and waits
    # in the retry queue while the refund of its invoice is applied.
    await credits.refund("u1", invoice="in_7")
    await credits.activate("u1", "sub_1", allotments={"meeting_room_hours": 10}, invoice="in_7")
    assert (await credits.balances("u1"))["meeting_room_hours"] == 0
    # The same for a credit pack whose dispute overtook its payment.
    await credits.send(
        "payment.disputed",
        PaymentDisputed(
            member=Member(user_id="u1", customer_id="cus_u1"),
            payment=PaymentRef(payment_id="pay_pi_pack", payment_intent_id="pi_pack"),
            dispute_id="dp_1",
            amount=20000,
            currency="usd",
            reason="fraudulent",
            status="needs_response",
        ),
    )
    await credits.pay("u1", {"meeting_room_hours_pack_10": 1}, intent="pi_pack")
    await credits.pay("u1", {"meeting_room_hours_pack_10": 1}, intent="pi_other")
    assert (await credits.balances("u1"))["meeting_room_hours"] == 10
    causes = await credits.db.fetch(
        "SELECT c.cause, c.taken FROM credits.clawbacks c ORDER BY c.cause"
    )
    assert [tuple(r) for r in causes] == [("dispute:dp_1", 10), ("refund:re_1", 10)]
    await credits.consistent("u1")


async def test_an_upgrade_applied_after_its_periods_refund_is_taken_back_too(
    credits: Credits,
) -> None:
    # The refund of the period's invoice is applied before the upgrade's event
    # (which waited in a retry queue): in the other order the refund takes
    # back the upgrade's credits with the period's, and so it must here.
    await credits.activate("u1", "sub_1", allotments={"meeting_room_hours": 10}, invoice="in_7")
    await credits.refund("u1", invoice="in_7")
    await credits.change(
        "u1",
        "sub_1",
        previous={"meeting_room_hours": 10},
        current={"meeting_room_hours": 25},
        effective_at=START + timedelta(days=3),
    )
    assert (await credits.balances("u1"))["meeting_room_hours"] == 0
    taken = await credits.db.fetchval("SELECT sum(taken) FROM credits.clawbacks")
    assert taken == 25
    await credits.consistent("u1")


async def _refund(
    credits: Credits,
    *,
    refund_id: str,
    this: int,
    total: int,
    paid: int = 20000,
    invoice: str | None = None,
    intent: str | None = None,
) -> None:
    await credits.send(
        "payment.refunded",
        PaymentRefunded(
            member=Member(user_id="u1", customer_id="cus_u1"),
            payment=PaymentRef(payment_id=None, payment_intent_id=intent, invoice_id=invoice),
            amount_refunded=this,
            total_refunded=total,
            amount=paid,
            currency="usd",
            full=total >= paid,
            refund_id=refund_id,
        ),
    )


async def _taken(credits: Credits) -> list[tuple[str, str, int]]:
    rows = await credits.db.fetch(
        "SELECT c.cause, g.credit_type, c.taken FROM credits.clawbacks c"
        " JOIN credits.grants g ON g.id = c.grant_id ORDER BY c.cause, g.credit_type"
    )
    return [(r["cause"], r["credit_type"], r["taken"]) for r in rows]


async def test_partial_refunds_of_an_invoice_take_back_the_refunded_share(
    credits: Credits,
) -> None:
    await credits.activate("u1", "sub_1", invoice="in_7")  # 10 hours, 2 passes
    assert (await credits.spend("u1", 1))[0] == 201
    # Half the invoice paid back (goodwill): half the period's credits go.
    for _ in range(2):  # a replay takes nothing more
        await _refund(credits, refund_id="re_1", this=10000, total=10000, invoice="in_7")
    assert (await credits.balances("u1"))["meeting_room_hours"] == 4
    assert (await credits.balances("u1"))["guest_passes"] == 1
    # The rest of it: everything unspent goes, never more than was granted.
    await _refund(credits, refund_id="re_2", this=10000, total=20000, invoice="in_7")
    assert (await credits.balances("u1"))["meeting_room_hours"] == 0
    assert (await credits.balances("u1"))["guest_passes"] == 0
    assert await _taken(credits) == [
        ("refund:re_1", "guest_passes", 1),
        ("refund:re_1", "meeting_room_hours", 5),
        ("refund:re_2", "guest_passes", 1),
        ("refund:re_2", "meeting_room_hours", 4),
    ]
    await credits.consistent("u1")


async def test_a_partial_refund_of_a_cart_takes_back_its_share_of_the_pack(
    credits: Credits,
) -> None:
    # A 20000 cart with a 10-hour pack in it; one booking of 5000 is refunded.
    await credits.pay("u1", {"meeting_room_hours_pack_10": 1, "day_pass": 1}, intent="pi_cart")
    await _refund(credits, refund_id="re_1", this=5000, total=5000, intent="pi_cart")
    assert (await credits.balances("u1"))["meeting_room_hours"] == 8  # 2.5 rounds down
    # A partial refund applied before its grant (overtaken) takes its share too.
    await _refund(credits, refund_id="re_9", this=10000, total=10000, invoice="in_9")
    await credits.activate("u1", "sub_9", invoice="in_9")
    assert (await credits.balances("u1"))["meeting_room_hours"] == 8 + 5
    await credits.consistent("u1")


async def test_a_spend_reversed_after_a_partial_refund_gives_back_the_refunded_share(
    credits: Credits,
) -> None:
    await credits.activate("u1", "sub_1", allotments={"meeting_room_hours": 10}, invoice="in_7")
    status, spent = await credits.spend("u1", 10)
    assert status == 201
    # Half the invoice paid back while all its hours were spent: nothing to take.
    await _refund(credits, refund_id="re_1", this=10000, total=10000, invoice="in_7")
    assert (await credits.balances("u1"))["meeting_room_hours"] == 0
    # The booking is cancelled: only the half still paid for comes back.
    status, reversal = await credits.request(
        "POST", f"/v1/credits/spends/{spent['id']}/reverse", "u1", json={}
    )
    assert status == 200, reversal
    assert (reversal["returned"], reversal["forfeited"]) == (5, 5)
    assert (await credits.balances("u1"))["meeting_room_hours"] == 5
    assert await _taken(credits) == [("refund:re_1", "meeting_room_hours", 5)]
    # The rest of the refund takes what is left, as a full one would.
    await _refund(credits, refund_id="re_2", this=10000, total=20000, invoice="in_7")
    assert (await credits.balances("u1"))["meeting_room_hours"] == 0
    await credits.consistent("u1")
