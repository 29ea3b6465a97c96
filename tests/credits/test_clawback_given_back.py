"""What a claw-back took comes back when its cause goes away: a dispute the
business wins, a refund that fails. Exactly once, in any order with the
claw-back, never to a grant that has expired since."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import REGISTRY

from shared.billing_events import (
    Member,
    PaymentDisputeClosed,
    PaymentDisputed,
    PaymentRef,
    PaymentRefunded,
    PaymentRefundFailed,
)
from tests.credits.conftest import MONTH, START, Credits

HOURS = "meeting_room_hours"
PASSES = "guest_passes"
U1 = Member(user_id="u1", customer_id="cus_u1")


def _ref(invoice: str | None, intent: str | None) -> PaymentRef:
    return PaymentRef(payment_id=None, payment_intent_id=intent, invoice_id=invoice)


async def _disputed(
    credits: Credits,
    dispute: str = "dp_1",
    *,
    invoice: str | None = "in_7",
    intent: str | None = None,
) -> str:
    return await credits.send(
        "payment.disputed",
        PaymentDisputed(
            member=U1,
            payment=_ref(invoice, intent),
            dispute_id=dispute,
            amount=19900,
            currency="usd",
            reason="fraudulent",
            status="needs_response",
        ),
    )


async def _closed(
    credits: Credits,
    status: str,
    dispute: str = "dp_1",
    *,
    invoice: str | None = "in_7",
    intent: str | None = None,
    event_id: str | None = None,
) -> str:
    return await credits.send(
        "payment.dispute_closed",
        PaymentDisputeClosed(
            member=U1,
            payment=_ref(invoice, intent),
            dispute_id=dispute,
            amount=19900,
            currency="usd",
            reason="fraudulent",
            status=status,
        ),
        event_id=event_id,
    )


async def _refunded(
    credits: Credits,
    refund: str,
    *,
    this: int,
    total: int,
    paid: int = 20000,
    invoice: str = "in_7",
) -> str:
    return await credits.send(
        "payment.refunded",
        PaymentRefunded(
            member=U1,
            payment=_ref(invoice, None),
            amount_refunded=this,
            total_refunded=total,
            amount=paid,
            currency="usd",
            full=total >= paid,
            refund_id=refund,
        ),
    )


async def _refund_failed(
    credits: Credits,
    refund: str,
    *,
    this: int,
    total: int,
    paid: int = 20000,
    invoice: str = "in_7",
    status: str = "failed",
) -> str:
    return await credits.send(
        "payment.refund_failed",
        PaymentRefundFailed(
            member=U1,
            payment=_ref(invoice, None),
            refund_id=refund,
            amount_refunded=this,
            total_refunded=total,
            amount=paid,
            currency="usd",
            status=status,
            failure_reason="expired_or_canceled_card" if status == "failed" else None,
        ),
    )


def _restored(credit_type: str = HOURS) -> float:
    # The service runs in the test's process: its metrics are in this registry.
    return REGISTRY.get_sample_value("credits_restored_total", {"credit_type": credit_type}) or 0.0


async def _balances(credits: Credits) -> dict[str, int]:
    """The member's hours and passes (the plan's two types)."""
    balances = await credits.balances("u1")
    return {HOURS: balances[HOURS], PASSES: balances[PASSES]}


async def _restorations(credits: Credits) -> list[tuple[str, int, str]]:
    rows = await credits.db.fetch(
        "SELECT credit_type, amount, note FROM credits.entries WHERE kind = 'restoration'"
        " ORDER BY id"
    )
    return [(r["credit_type"], r["amount"], r["note"]) for r in rows]


async def test_a_dispute_won_gives_back_what_it_took(credits: Credits) -> None:
    await credits.activate("u1", "sub_1", invoice="in_7")  # 10 hours, 2 passes
    assert (await credits.spend("u1", 4))[0] == 201
    await _disputed(credits)
    assert await _balances(credits) == {HOURS: 0, PASSES: 0}
    before = _restored()

    closed = await _closed(credits, "won")
    await _closed(credits, "won", event_id=closed)  # the same delivery again
    await _closed(credits, "won")  # the same fact under another event id

    assert await _balances(credits) == {HOURS: 6, PASSES: 2}
    assert _restored() - before == 6
    assert sorted(await _restorations(credits)) == [
        (PASSES, 2, "given back: dispute:dp_1 (the dispute won)"),
        (HOURS, 6, "given back: dispute:dp_1 (the dispute won)"),
    ]
    # The grants are spendable again, to the last credit given back.
    assert (await credits.spend("u1", 6))[0] == 201
    assert (await credits.spend("u1", 1))[0] == 422
    await credits.consistent("u1")


async def test_a_dispute_lost_keeps_what_it_took(credits: Credits) -> None:
    await credits.pay("u1", {"meeting_room_hours_pack_10": 1}, intent="pi_pack")
    await _disputed(credits, invoice=None, intent="pi_pack")
    await _closed(credits, "lost", invoice=None, intent="pi_pack")
    assert (await credits.balances("u1"))[HOURS] == 0
    assert await _restorations(credits) == []
    await credits.consistent("u1")


async def test_a_dispute_closed_before_its_dispute_arrived_takes_nothing(
    credits: Credits,
) -> None:
    await credits.pay("u1", {"meeting_room_hours_pack_10": 1}, intent="pi_pack")
    # The close overtook payment.disputed (that delivery waits in a retry queue).
    await _closed(credits, "won", invoice=None, intent="pi_pack")
    await _disputed(credits, invoice=None, intent="pi_pack")
    assert (await credits.balances("u1"))[HOURS] == 10
    # And both before the credit pack's own payment.
    await _closed(credits, "warning_closed", "dp_2", invoice=None, intent="pi_late")
    await _disputed(credits, "dp_2", invoice=None, intent="pi_late")
    await credits.pay("u1", {"meeting_room_hours_pack_10": 1}, intent="pi_late")
    assert (await credits.balances("u1"))[HOURS] == 20
    assert (
        await credits.db.fetchval("SELECT count(*) FROM credits.entries WHERE kind = 'clawback'")
        == 0
    )
    await credits.consistent("u1")


async def test_a_dispute_won_after_its_grant_expired_gives_nothing_back(
    credits: Credits,
) -> None:
    await credits.activate("u1", "sub_1", allotments={HOURS: 10}, invoice="in_7")
    await credits.pay("u1", {"meeting_room_hours_pack_10": 1}, intent="pi_pack")
    await _disputed(credits)
    assert (await credits.balances("u1"))[HOURS] == 10  # the pack's
    credits.clock.set(START + MONTH + timedelta(minutes=5))  # the period has ended
    await credits.sweep()

    await _closed(credits, "won")

    # The period the dispute took back is over: nothing comes back to it.
    assert (await credits.balances("u1"))[HOURS] == 10
    assert await _restorations(credits) == []
    await credits.consistent("u1")


async def test_a_failed_refund_gives_back_what_it_took(credits: Credits) -> None:
    await credits.activate("u1", "sub_1", invoice="in_7")
    assert (await credits.spend("u1", 1))[0] == 201
    await _refunded(credits, "re_1", this=20000, total=20000)
    assert await _balances(credits) == {HOURS: 0, PASSES: 0}

    for _ in range(2):  # a second delivery under another id gives nothing more
        await _refund_failed(credits, "re_1", this=20000, total=0)

    assert await _balances(credits) == {HOURS: 9, PASSES: 2}
    # A refund canceled before it was applied: it takes nothing when it arrives.
    await _refund_failed(credits, "re_2", this=5000, total=0, status="canceled")
    await _refunded(credits, "re_2", this=5000, total=5000)
    assert await _balances(credits) == {HOURS: 9, PASSES: 2}
    await credits.consistent("u1")


async def test_a_failed_partial_refund_leaves_the_member_as_if_it_never_was(
    credits: Credits,
) -> None:
    # Two members, the same events in two orders: each ends as if only the
    # refund that stood (re_2, 5000 of 20000) had been made: 10 x 1/4 = 2
    # hours and 2 x 1/4 = 0 passes taken.
    await credits.activate("u1", "sub_1", invoice="in_7")
    await _refunded(credits, "re_1", this=5000, total=5000)
    await _refunded(credits, "re_2", this=5000, total=10000)
    # Taken so far: 2 then 5 - 2 = 3 hours (the cumulative share), 0 then 1 pass.
    assert await _balances(credits) == {HOURS: 5, PASSES: 1}

    await _refund_failed(credits, "re_1", this=5000, total=5000)

    assert await _balances(credits) == {HOURS: 8, PASSES: 2}
    # More than re_1 took itself comes back: re_2's share counted re_1.
    assert sorted(await _restorations(credits)) == [
        (PASSES, 1, "given back: refund:re_1 (the refund failed)"),
        (HOURS, 3, "given back: refund:re_1 (the refund failed)"),
    ]
    held = await credits.db.fetch(
        "SELECT c.cause, g.credit_type, c.taken - c.given_back AS held FROM credits.clawbacks c"
        " JOIN credits.grants g ON g.id = c.grant_id ORDER BY c.cause, g.credit_type"
    )
    assert [tuple(r) for r in held] == [
        ("refund:re_1", PASSES, 0),
        ("refund:re_1", HOURS, 0),
        ("refund:re_2", PASSES, 0),
        ("refund:re_2", HOURS, 2),
    ]
    await credits.consistent("u1")


async def test_a_partial_refund_failing_first_then_both_refunds_arrive(
    credits: Credits,
) -> None:
    await credits.activate("u1", "sub_1", invoice="in_7")
    await _refund_failed(credits, "re_1", this=5000, total=5000)
    await _refunded(credits, "re_2", this=5000, total=10000)  # its total still counts re_1
    await _refunded(credits, "re_1", this=5000, total=5000)
    assert await _balances(credits) == {HOURS: 8, PASSES: 2}
    # A later refund of the rest takes everything unspent, as a full one would.
    await _refunded(credits, "re_3", this=15000, total=20000)
    assert await _balances(credits) == {HOURS: 0, PASSES: 0}
    await credits.consistent("u1")


async def test_a_dispute_won_after_a_partial_refund_keeps_the_refunds_share(
    credits: Credits,
) -> None:
    await credits.activate("u1", "sub_1", allotments={HOURS: 10}, invoice="in_7")
    await _refunded(credits, "re_1", this=10000, total=10000)
    await _disputed(credits)
    assert (await credits.balances("u1"))[HOURS] == 0
    await _closed(credits, "won")
    # The refund stands: its half stays taken; the dispute's half comes back.
    assert (await credits.balances("u1"))[HOURS] == 5
    # The refund fails too: all of it is the member's again.
    await _refund_failed(credits, "re_1", this=10000, total=0)
    assert (await credits.balances("u1"))[HOURS] == 10
    await credits.consistent("u1")


async def test_a_refund_failing_while_a_dispute_stands_gives_nothing_until_it_is_won(
    credits: Credits,
) -> None:
    await credits.activate("u1", "sub_1", allotments={HOURS: 10}, invoice="in_7")
    await _refunded(credits, "re_1", this=10000, total=10000)
    await _disputed(credits)
    await _refund_failed(credits, "re_1", this=10000, total=0)
    # The open dispute takes the whole payment's credits.
    assert (await credits.balances("u1"))[HOURS] == 0
    await _closed(credits, "won")
    assert (await credits.balances("u1"))[HOURS] == 10
    await credits.consistent("u1")


async def test_a_spend_reversed_after_its_partial_refund_failed_returns_it_all(
    credits: Credits,
) -> None:
    await credits.activate("u1", "sub_1", allotments={HOURS: 10}, invoice="in_7")
    status, spent = await credits.spend("u1", 10)
    assert status == 201
    await _refunded(credits, "re_1", this=10000, total=10000)
    await _refund_failed(credits, "re_1", this=10000, total=0)
    status, reversal = await credits.request(
        "POST", f"/v1/credits/spends/{spent['id']}/reverse", "u1", json={}
    )
    assert status == 200, reversal
    assert (reversal["returned"], reversal["forfeited"]) == (10, 0)
    assert (await credits.balances("u1"))[HOURS] == 10
    await credits.consistent("u1")
