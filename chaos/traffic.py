"""The run's traffic: the stories, their events, and the order Stripe delivers them in.

Stripe sends duplicates and does not order deliveries. The schedule takes
each customer's events in the order they happened, defers a share of them
behind one to three later events of the same customer (out of order), adds a
second delivery for another share at a random later point (duplicates), and
interleaves every customer's deliveries over the whole run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from chaos.domain import Domain, StripeEvent, World
from chaos.story import DAY, first_step, new_customer, next_step

# 2031-01-01T00:00:00Z. Stripe's clock runs ahead, as a test clock can: the
# credits granted for the stories' periods expire at the periods' ends, by the
# credits service's own (real) clock, so the members can still spend them.
EPOCH = 1_924_992_000


@dataclass(frozen=True)
class Delivery:
    event: StripeEvent
    duplicate: bool  # the second delivery of the event


@dataclass(frozen=True)
class Schedule:
    deliveries: list[Delivery]
    duplicates: int
    out_of_order: int  # first deliveries that arrive after a later event of their customer


def build_world(
    domains: list[Domain], *, events: int, customers: int, seed: int, tag: str = ""
) -> World:
    """Stories for ``customers`` customers, grown until their domains' events
    reach about ``events`` in all (a few more for the domains' extra events)."""
    rng = random.Random(seed)
    world = World(customers=[new_customer(n, tag) for n in range(customers)])
    # Stripe's clock: a fixed start, so the same seed gives the same events.
    epoch = EPOCH
    budgets = [events // customers + (1 if n < events % customers else 0) for n in range(customers)]
    for customer, budget in zip(world.customers, budgets, strict=True):
        step = first_step(rng, epoch + rng.randint(0, 30 * DAY))
        made = 0
        # Bounded in steps too: a step may make no event with the domains loaded.
        for _ in range(4 * budget + 4):
            customer.steps.append(step)
            for domain in domains:
                new = domain.events(customer, step)
                world.events.extend(new)
                made += len(new)
            if made >= budget or step.status == "canceled":
                break
            step = next_step(rng, customer, last_one=made >= budget - 1)
    for domain in domains:
        world.events.extend(domain.extra_events(world))
    return world


def schedule(
    world: World, *, seed: int, duplicate_share: float = 0.10, out_of_order_share: float = 0.20
) -> Schedule:
    rng = random.Random(seed + 1)
    # Deferred events are not all late: a customer's last event has nothing
    # to be deferred behind, and two deferred neighbours may keep their
    # order. Measured, this deferral rate makes the asked share arrive late.
    defer = out_of_order_share * 1.35
    streams: dict[int, list[StripeEvent]] = {}
    for event in world.events:
        streams.setdefault(event.customer, []).append(event)
    placed: list[tuple[float, Delivery]] = []
    for customer, stream in streams.items():
        if customer < 0:
            # Events outside any story arrive anywhere.
            placed.extend((rng.random(), Delivery(e, duplicate=False)) for e in stream)
            continue
        keys = [
            i + (rng.randint(1, 3) + 0.5 if rng.random() < defer else 0.0)
            for i in range(len(stream))
        ]
        order = sorted(range(len(stream)), key=lambda i: keys[i])
        for position, i in enumerate(order):
            # Spread over the run: the customer's n-th delivery near n/len.
            placed.append(((position + rng.random()) / len(stream), Delivery(stream[i], False)))
    duplicates = 0
    for at, delivery in list(placed):
        if rng.random() < duplicate_share:
            duplicates += 1
            placed.append((rng.uniform(at, min(1.0, at + 0.25)), Delivery(delivery.event, True)))
    placed.sort(key=lambda p: p[0])
    deliveries = [d for _, d in placed]
    return Schedule(deliveries, duplicates, _out_of_order(world, deliveries))


def _out_of_order(world: World, deliveries: list[Delivery]) -> int:
    # By the order the events happened in (a step may make several events at
    # the same second: a renewal's invoice and its subscription's update).
    happened = {e.id: n for n, e in enumerate(world.events)}
    newest: dict[int, int] = {}
    late = 0
    for delivery in deliveries:
        event = delivery.event
        if delivery.duplicate or event.customer < 0:
            continue
        position = happened[event.id]
        if position < newest.get(event.customer, -1):
            late += 1
        newest[event.customer] = max(newest.get(event.customer, -1), position)
    return late
