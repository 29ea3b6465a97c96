"""The chaos run's traffic and comparison (the run itself is ``make chaos``)."""

from __future__ import annotations

import orjson
import stripe

from chaos.domains import all_domains
from chaos.domains.subscriptions import Subscriptions
from chaos.stripe_events import body_of, signature_header
from chaos.traffic import build_world, schedule
from chaos.verify import diff_states
from services.gateway.signature import verify


def test_the_same_seed_gives_the_same_traffic() -> None:
    first = build_world(all_domains(), events=600, customers=60, seed=3)
    again = build_world(all_domains(), events=600, customers=60, seed=3)
    assert [e.id for e in first.events] == [e.id for e in again.events]
    assert [d.event.id for d in schedule(first, seed=3).deliveries] == [
        d.event.id for d in schedule(again, seed=3).deliveries
    ]


def test_the_schedule_duplicates_and_reorders_about_the_shares_asked() -> None:
    world = build_world(all_domains(), events=5_000, customers=500, seed=1)
    plan = schedule(world, seed=1)
    events = len(world.events)
    assert 4_900 <= events <= 5_600
    assert len(plan.deliveries) == events + plan.duplicates
    assert 0.08 * events <= plan.duplicates <= 0.12 * events
    assert 0.18 * events <= plan.out_of_order <= 0.22 * events
    # Every event is delivered at least once, none more than twice.
    counts: dict[str, int] = {}
    for delivery in plan.deliveries:
        counts[delivery.event.id] = counts.get(delivery.event.id, 0) + 1
    assert set(counts) == {e.id for e in world.events}
    assert max(counts.values()) == 2


def test_each_delivery_is_a_stripe_event_the_gateway_verifies() -> None:
    world = build_world(all_domains(), events=50, customers=5, seed=2)
    event = next(world.of_type("customer.subscription."))
    body = body_of(event)
    verify(body, signature_header(body, "whsec_x"), ["whsec_x"], tolerance=300)
    payload = orjson.loads(body)
    assert payload["object"] == "event"
    assert payload["id"] == event.id
    assert payload["api_version"] == stripe.api_version
    assert payload["data"]["object"]["id"].startswith("sub_")


def test_the_reference_model_is_the_last_step_of_each_story() -> None:
    world = build_world([Subscriptions()], events=400, customers=40, seed=5)
    expected = Subscriptions().expected(world)
    assert len(expected) == 40
    for customer in world.customers:
        status = expected[("subscription", customer.subscription_id)][1]
        assert status == customer.steps[-1].status


def test_a_difference_of_any_kind_is_reported() -> None:
    expected = {("sub", "a"): 1, ("sub", "b"): 2, ("sub", "c"): 3}
    assert diff_states("x", expected, dict(expected)).ok
    check = diff_states("x", expected, {("sub", "a"): 1, ("sub", "b"): 5, ("sub", "d"): 4})
    assert not check.ok
    assert check.note == "1 missing, 1 unexpected, 1 different"
