"""A spend reversed while a dispute or a full refund holds its grant, then the
dispute won or the refund failed: the member ends as if there had been no
dispute or refund, whichever order the reversal, the claw-back and its
withdrawal come in. Every order is tried, each on a member of its own."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import pytest

from shared.billing_events import (
    Member,
    PaymentDisputeClosed,
    PaymentDisputed,
    PaymentRef,
    PaymentRefunded,
    PaymentRefundFailed,
)
from tests.credits.conftest import Credits

HOURS = "meeting_room_hours"
PASSES = "guest_passes"
PAID = 19900

Step = Callable[[], Awaitable[object]]


def _payment(invoice: str) -> PaymentRef:
    return PaymentRef(payment_id=None, payment_intent_id=None, invoice_id=invoice)


def _claw_back(credits: Credits, member: Member, invoice: str, cause: str) -> tuple[Step, Step]:
    """The claw-back and what withdraws it: a dispute and its close as
    ``won`` / ``lost``, or a full refund and its failure."""

    async def disputed() -> object:
        return await credits.send(
            "payment.disputed",
            PaymentDisputed(
                member=member,
                payment=_payment(invoice),
                dispute_id=f"dp_{invoice}",
                amount=PAID,
                currency="usd",
                reason="fraudulent",
                status="needs_response",
            ),
        )

    async def closed() -> object:
        return await credits.send(
            "payment.dispute_closed",
            PaymentDisputeClosed(
                member=member,
                payment=_payment(invoice),
                dispute_id=f"dp_{invoice}",
                amount=PAID,
                currency="usd",
                reason="fraudulent",
                status=cause.removeprefix("dispute_"),
            ),
        )

    async def refunded() -> object:
        return await credits.send(
            "payment.refunded",
            PaymentRefunded(
                member=member,
                payment=_payment(invoice),
                amount_refunded=PAID,
                total_refunded=PAID,
                amount=PAID,
                currency="usd",
                full=True,
                refund_id=f"re_{invoice}",
            ),
        )

    async def refund_failed() -> object:
        return await credits.send(
            "payment.refund_failed",
            PaymentRefundFailed(
                member=member,
                payment=_payment(invoice),
                refund_id=f"re_{invoice}",
                amount_refunded=PAID,
                total_refunded=0,
                amount=PAID,
                currency="usd",
                status="failed",
                failure_reason="expired_or_canceled_card",
            ),
        )

    if cause == "refund_failed":
        return refunded, refund_failed
    return disputed, closed


# (the spend reversed, the spend kept): the grant keeps 3 unspent, or none.
SPENDS = [(4, 3), (4, 6)]


@pytest.mark.parametrize(
    ("cause", "kept_by_cause"),
    [("dispute_won", False), ("refund_failed", False), ("dispute_lost", True)],
)
async def test_a_reversal_ends_the_same_in_any_order_with_a_claw_back_and_its_withdrawal(
    credits: Credits, cause: str, kept_by_cause: bool
) -> None:
    ended: dict[tuple[tuple[int, int], tuple[str, ...]], dict[str, int]] = {}
    expected: dict[tuple[tuple[int, int], tuple[str, ...]], dict[str, int]] = {}
    n = 0
    for spends in SPENDS:
        for order in itertools.permutations(("reverse", "claw_back", "withdraw")):
            n += 1
            user, invoice = f"r{n}", f"in_r{n}"
            member = Member(user_id=user, customer_id=f"cus_{user}")
            await credits.activate(user, f"sub_r{n}", invoice=invoice)  # 10 hours, 2 passes
            reversed_, kept = spends
            status, spent = await credits.spend(user, reversed_)
            assert status == 201, spent
            assert (await credits.spend(user, kept))[0] == 201
            claw_back, withdraw = _claw_back(credits, member, invoice, cause)

            async def reverse(spend_id: str = spent["id"], user: str = user) -> object:
                status, body = await credits.request(
                    "POST", f"/v1/credits/spends/{spend_id}/reverse", user, json={}
                )
                assert status == 200, body
                return body

            steps = {"reverse": reverse, "claw_back": claw_back, "withdraw": withdraw}
            for name in order:
                await steps[name]()
            await credits.consistent(user)
            balances = await credits.balances(user)
            ended[spends, order] = {HOURS: balances[HOURS], PASSES: balances[PASSES]}
            # As if the payment had never been disputed or refunded: the spend
            # reversed back, the rest unspent; all gone to a dispute lost.
            expected[spends, order] = (
                {HOURS: 0, PASSES: 0} if kept_by_cause else {HOURS: 10 - kept, PASSES: 2}
            )
            # What the balance says is spendable, to the last credit.
            if ended[spends, order][HOURS]:
                assert (await credits.spend(user, ended[spends, order][HOURS]))[0] == 201
            assert (await credits.spend(user, 1))[0] == 422
            await credits.consistent(user)
    assert ended == expected


async def test_a_partial_refund_standing_keeps_its_share_in_any_order_of_a_dispute_and_a_reversal(
    credits: Credits,
) -> None:
    # Half the payment refunded (it stands): half of the 10 hours stays taken
    # whatever order the dispute, its win and the reversal come in.
    ended: dict[tuple[str, ...], int] = {}
    for n, order in enumerate(itertools.permutations(("reverse", "claw_back", "withdraw"))):
        user, invoice = f"p{n}", f"in_p{n}"
        member = Member(user_id=user, customer_id=f"cus_{user}")
        await credits.activate(user, f"sub_p{n}", allotments={HOURS: 10}, invoice=invoice)
        status, spent = await credits.spend(user, 4)
        assert status == 201, spent
        await credits.send(
            "payment.refunded",
            PaymentRefunded(
                member=member,
                payment=_payment(invoice),
                amount_refunded=PAID // 2,
                total_refunded=PAID // 2,
                amount=PAID,
                currency="usd",
                full=False,
                refund_id=f"re_{invoice}",
            ),
        )
        claw_back, withdraw = _claw_back(credits, member, invoice, "dispute_won")

        async def reverse(spend_id: str = spent["id"], user: str = user) -> object:
            status, body = await credits.request(
                "POST", f"/v1/credits/spends/{spend_id}/reverse", user, json={}
            )
            assert status == 200, body
            return body

        steps = {"reverse": reverse, "claw_back": claw_back, "withdraw": withdraw}
        for name in order:
            await steps[name]()
        await credits.consistent(user)
        ended[order] = (await credits.balances(user))[HOURS]
        # A reversal into the grant the dispute closed is taken by the
        # dispute, not by the refund, which took its share once.
        taken_by_refund = await credits.db.fetchval(
            "SELECT sum(amount) FROM credits.entries WHERE user_id = $1 AND kind = 'clawback'"
            " AND note = $2",
            user,
            f"taken back: refund:re_{invoice}",
        )
        assert taken_by_refund == -5, order
    # 10 x 9950 / 19900 = 5 hours taken by the refund, the other 5 the member's.
    assert ended == dict.fromkeys(ended, 5)
