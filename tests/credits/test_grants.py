"""Grants from billing events: one per subscription, period and type, however
the events arrive."""

from __future__ import annotations

import itertools
from datetime import timedelta

from shared.billing_events import Period, Plan, SubscriptionChanged
from tests.credits.conftest import MONTH, START, Credits, member


async def _grants(credits: Credits, user: str) -> list[tuple[str, str, int, object]]:
    rows = await credits.db.fetch(
        "SELECT credit_type, source, amount, expires_at FROM credits.grants"
        " WHERE user_id = $1 ORDER BY period_start, credit_type, id",
        user,
    )
    return [(r["credit_type"], r["source"], r["amount"], r["expires_at"]) for r in rows]


async def test_activation_grants_the_allotments_until_the_period_ends(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")
    assert await _grants(credits, "u1") == [
        ("guest_passes", "plan", 2, START + MONTH),
        ("meeting_room_hours", "plan", 10, START + MONTH),
    ]
    assert await credits.balances("u1") == {
        "meeting_room_hours": 10,
        "guest_passes": 2,
        "printing_pages": 0,
    }
    await credits.consistent("u1")


async def test_the_same_period_is_granted_once_however_often_it_arrives(
    credits: Credits,
) -> None:
    first = await credits.activate("u1", "sub_1")
    # The same event redelivered, and the same fact under another event id.
    await credits.activate("u1", "sub_1", event_id=first)
    await credits.activate("u1", "sub_1")
    await credits.renew("u1", "sub_1", start=START, invoice="in_1")
    assert len(await _grants(credits, "u1")) == 2
    assert (await credits.balances("u1"))["meeting_room_hours"] == 10
    await credits.consistent("u1")


async def test_renewals_out_of_order_grant_each_period_once(credits: Credits) -> None:
    # The next period's renewal arrives before the activation.
    await credits.renew("u1", "sub_1", start=START + MONTH, invoice="in_2")
    await credits.activate("u1", "sub_1")
    await credits.renew("u1", "sub_1", start=START + MONTH, invoice="in_2")
    hours = [g for g in await _grants(credits, "u1") if g[0] == "meeting_room_hours"]
    assert [(g[2], g[3]) for g in hours] == [(10, START + MONTH), (10, START + 2 * MONTH)]
    assert (await credits.balances("u1"))["meeting_room_hours"] == 20
    await credits.consistent("u1")


async def test_a_trial_grants_the_catalogs_trial_credits(credits: Credits) -> None:
    # hot_desk: trial_credits = {meeting_room_hours = 2, guest_passes = 0, printing_pages = 20}
    await credits.activate("u1", "sub_1", trial=True, allotments={"meeting_room_hours": 10})
    assert await credits.balances("u1") == {
        "meeting_room_hours": 2,
        "guest_passes": 0,
        "printing_pages": 20,
    }
    assert {g[1] for g in await _grants(credits, "u1")} == {"trial"}


async def test_a_trial_defaults_to_the_full_allotment(credits: Credits) -> None:
    # dedicated_desk has no trial_credits: the trial grants the plan's credits.
    await credits.activate("u1", "sub_1", trial=True, plan="dedicated_desk")
    assert await credits.balances("u1") == {
        "meeting_room_hours": 25,
        "guest_passes": 4,
        "printing_pages": 300,
    }


async def test_an_upgrade_grants_the_difference_at_once_and_only_once(credits: Credits) -> None:
    await credits.activate("u1", "sub_1", allotments={"meeting_room_hours": 10})
    mid = START + timedelta(days=10)
    for _ in range(2):
        await credits.change(
            "u1",
            "sub_1",
            previous={"meeting_room_hours": 10},
            current={"meeting_room_hours": 25},
            effective_at=mid,
        )
    assert (await credits.balances("u1"))["meeting_room_hours"] == 25
    upgrade = [g for g in await _grants(credits, "u1") if g[1] == "upgrade"]
    assert upgrade == [("meeting_room_hours", "upgrade", 15, START + MONTH)]
    await credits.consistent("u1")


async def test_an_upgrade_arriving_before_the_activation_still_totals_the_new_level(
    credits: Credits,
) -> None:
    await credits.change(
        "u1",
        "sub_1",
        previous={"meeting_room_hours": 10},
        current={"meeting_room_hours": 25},
        effective_at=START + timedelta(days=3),
    )
    await credits.activate("u1", "sub_1", allotments={"meeting_room_hours": 10})
    assert (await credits.balances("u1"))["meeting_room_hours"] == 25


async def test_a_downgrade_waits_for_the_next_period(credits: Credits) -> None:
    await credits.activate("u1", "sub_1", allotments={"meeting_room_hours": 25})
    await credits.change(
        "u1",
        "sub_1",
        previous={"meeting_room_hours": 25},
        current={"meeting_room_hours": 10},
        effective_at=START + MONTH,
    )
    assert (await credits.balances("u1"))["meeting_room_hours"] == 25
    await credits.renew("u1", "sub_1", start=START + MONTH, allotments={"meeting_room_hours": 10})
    hours = [g[2] for g in await _grants(credits, "u1") if g[0] == "meeting_room_hours"]
    assert hours == [25, 10]


async def test_cancel_stops_later_grants_and_keeps_what_was_granted(credits: Credits) -> None:
    await credits.activate("u1", "sub_1")
    await credits.cancel("u1", "sub_1", ended_at=START + MONTH)
    # A renewal for a period after the end (late, or replayed) grants nothing.
    await credits.renew("u1", "sub_1", start=START + MONTH)
    assert (await credits.balances("u1"))["meeting_room_hours"] == 10
    assert len(await _grants(credits, "u1")) == 2


async def test_a_credit_pack_payment_grants_its_credits_with_its_own_expiry_and_priority(
    credits: Credits,
) -> None:
    await credits.pay("u1", {"meeting_room_hours_pack_10": 2, "day_pass": 1}, intent="pi_9")
    await credits.pay("u1", {"meeting_room_hours_pack_10": 2, "day_pass": 1}, intent="pi_9")
    row = await credits.db.fetchrow(
        "SELECT * FROM credits.grants WHERE user_id = 'u1' AND source = 'pack'"
    )
    assert row is not None
    assert row["amount"] == 20
    assert row["priority"] == 50
    assert row["expires_at"] == credits.clock.now() + timedelta(days=365)
    assert (await credits.balances("u1"))["meeting_room_hours"] == 20


async def test_a_change_during_a_trial_grants_the_new_plans_trial_credits(
    credits: Credits,
) -> None:
    # hot_desk's trial grants 2 hours, 0 passes, 20 pages of its 10 / 2 / 100.
    await credits.activate("u1", "sub_1", trial=True)
    # Still trialing, the member switches to yearly billing: the event carries
    # the plan's full allotments, but the trial is still a trial.
    await credits.send(
        "subscription.changed",
        SubscriptionChanged(
            member=member("u1"),
            subscription_id="sub_1",
            previous=Plan(plan="hot_desk", interval="month"),
            current=Plan(plan="hot_desk", interval="year"),
            previous_allotments={"meeting_room_hours": 10, "guest_passes": 2},
            current_allotments={"meeting_room_hours": 10, "guest_passes": 2},
            effective_at=START + timedelta(days=3),
            period=Period(start=START, end=START + MONTH),
        ),
    )
    assert await credits.balances("u1") == {
        "meeting_room_hours": 2,
        "guest_passes": 0,
        "printing_pages": 20,
    }
    # An upgrade during the trial tops it up to the new plan's trial level
    # (dedicated_desk has no trial_credits: its trial is the full allotment).
    await credits.change(
        "u1",
        "sub_1",
        previous={"meeting_room_hours": 10},
        current={"meeting_room_hours": 25},
        effective_at=START + timedelta(days=4),
    )
    assert (await credits.balances("u1"))["meeting_room_hours"] == 25
    # The trial converts: the paid period has the plan's full allotments.
    await credits.renew("u1", "sub_1", start=START + MONTH, allotments={"guest_passes": 4})
    hours = [g for g in await _grants(credits, "u1") if g[0] == "guest_passes"]
    assert [(g[1], g[2]) for g in hours] == [("upgrade", 4), ("plan", 4)]
    await credits.consistent("u1")


# catalog.toml: what hot_desk grants paid and during its trial; dedicated_desk
# has no trial_credits, so its trial grants its full allotment.
HOT_DESK = {"meeting_room_hours": 10, "guest_passes": 2, "printing_pages": 100}
HOT_DESK_TRIAL = {"meeting_room_hours": 2, "guest_passes": 0, "printing_pages": 20}
DEDICATED_DESK = {"meeting_room_hours": 25, "guest_passes": 4, "printing_pages": 300}
MONTHLY = Plan(plan="hot_desk", interval="month")
YEARLY = Plan(plan="hot_desk", interval="year")
DEDICATED = Plan(plan="dedicated_desk", interval="month")


async def _to_yearly(credits: Credits, user: str, sub: str, *, status: str | None) -> str:
    """The member switches to yearly billing in the first days of the trial."""
    return await credits.change(
        user,
        sub,
        previous=HOT_DESK,
        current=HOT_DESK,
        previous_plan=MONTHLY,
        current_plan=YEARLY,
        effective_at=START + timedelta(minutes=1),
        status=status,
    )


async def _to_dedicated(credits: Credits, user: str, sub: str, *, status: str | None) -> str:
    """Then upgrades to a dedicated desk, still trialing."""
    return await credits.change(
        user,
        sub,
        previous=HOT_DESK,
        current=DEDICATED_DESK,
        previous_plan=YEARLY,
        current_plan=DEDICATED,
        effective_at=START + timedelta(minutes=2),
        status=status,
    )


async def test_a_change_overtaking_its_trials_activation_grants_trial_credits(
    credits: Credits,
) -> None:
    # The change's event is applied before the trial's activation (events
    # are not ordered). It says the subscription is trialing: the period is
    # the trial's from the first event, never a paid one.
    await _to_yearly(credits, "u1", "sub_1", status="trialing")
    assert await credits.balances("u1") == HOT_DESK_TRIAL
    await credits.activate("u1", "sub_1", trial=True)
    assert await credits.balances("u1") == HOT_DESK_TRIAL
    await credits.consistent("u1")


async def test_a_trial_learned_after_a_change_granted_as_paid_takes_the_excess_back(
    credits: Credits,
) -> None:
    # A change without the subscription's status (published before the event
    # carried it) overtook the trial's activation: nothing said the period was
    # a trial, so it was granted as a paid one, and the member spent some.
    await _to_yearly(credits, "u1", "sub_1", status=None)
    assert await credits.balances("u1") == HOT_DESK
    assert (await credits.spend("u1", 3))[0] == 201
    await credits.activate("u1", "sub_1", trial=True)
    # The trial holds its trial credits: what is unspent beyond them is taken
    # back; of the hours, 8 too many, 3 of them already spent (reported).
    assert await credits.balances("u1") == {
        "meeting_room_hours": 0,
        "guest_passes": 0,
        "printing_pages": 20,
    }
    taken = await credits.db.fetch(
        "SELECT g.credit_type, c.cause, c.taken, c.already_spent FROM credits.clawbacks c"
        " JOIN credits.grants g ON g.id = c.grant_id ORDER BY g.credit_type"
    )
    assert [tuple(r) for r in taken] == [
        ("guest_passes", "trial", 2, 0),
        ("meeting_room_hours", "trial", 7, 3),
        ("printing_pages", "trial", 80, 0),
    ]
    # The same activation again (another event id) takes nothing more.
    await credits.activate("u1", "sub_1", trial=True)
    assert (await credits.balances("u1"))["printing_pages"] == 20
    # An upgrade during the trial counts what the period still holds from
    # then (3 hours: 10 granted, 7 taken back) towards its trial level.
    await _to_dedicated(credits, "u1", "sub_1", status="trialing")
    assert await credits.balances("u1") == {
        "meeting_room_hours": 22,
        "guest_passes": 4,
        "printing_pages": 300,
    }
    await credits.consistent("u1")


async def test_a_trials_credits_do_not_depend_on_the_order_or_number_of_its_events(
    credits: Credits,
) -> None:
    async def activate(user: str, sub: str) -> str:
        return await credits.activate(user, sub, trial=True)

    async def yearly(user: str, sub: str) -> str:
        # Without status: the case where the credits service cannot tell.
        return await _to_yearly(credits, user, sub, status=None)

    async def dedicated(user: str, sub: str) -> str:
        return await _to_dedicated(credits, user, sub, status="trialing")

    three = itertools.permutations((activate, yearly, dedicated))
    two = itertools.permutations((activate, yearly))
    cases = [*((o, DEDICATED_DESK) for o in three), *((o, HOT_DESK_TRIAL) for o in two)]
    for n, (order, trial_credits) in enumerate(cases):
        user, sub = f"u{n}", f"sub_{n}"
        # Each event once, then each again under another event id, backwards.
        for send in (*order, *reversed(order)):
            await send(user, sub)
        assert await credits.balances(user) == trial_credits, [f.__name__ for f in order]
        await credits.consistent(user)
