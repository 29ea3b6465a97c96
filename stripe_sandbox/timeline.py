"""What Stripe does when time passes, run in time order for one clock.

Each test clock has its own timeline (objects of customers on that clock) and
everything else lives on the wall clock.  Advancing a test clock runs every
step that falls due up to the new time, earliest first, with the clock set to
each step's moment; a background task does the same for the wall clock every
second.  The steps, in the order Stripe takes them at one instant:

0. trial_will_end three days before a trial ends; incomplete subscriptions
   expire after 23 hours; refunds and bank debits settle; checkout sessions
   expire at ``expires_at``;
1. a schedule phase ends (its next phase takes effect first), a cancellation
   at period end or ``cancel_at`` happens;
2. a period ends: the renewal (or the trial's end) drafts an invoice;
3. about an hour later the draft is finalized and charged;
4. Smart Retries re-attempt a failed invoice at ``next_payment_attempt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from . import collection, items, lifecycle, payments, refunding, schedules
from .events import current_request
from .resources import checkout
from .sandbox import Sandbox
from .store import Obj

log = logging.getLogger("stripe_sandbox.timeline")
TICK_SECONDS = 1.0


Step = Callable[[Sandbox, int], None]


@dataclass(order=True)
class Due:
    at: int
    order: int
    seq: int
    run: Step = field(compare=False)


def _on(fn: Callable[[Sandbox, Obj, int], object], obj: Obj) -> Step:
    def run(sb: Sandbox, at: int) -> None:
        fn(sb, obj, at)

    return run


def _subscription_steps(sb: Sandbox, sub: Obj, due: list[Due]) -> None:
    seq = sb.store.seq[sub["id"]]
    status = sub["status"]
    if status == "incomplete":
        expires = sub["created"] + lifecycle.INCOMPLETE_EXPIRY
        due.append(Due(expires, 0, seq, _on(lifecycle.expire_incomplete, sub)))
        return
    if status not in lifecycle.LIVE_STATUSES:
        return
    _, end = items.period_of(sub)
    if sub["cancel_at"] and sub["cancel_at"] <= end:
        due.append(Due(sub["cancel_at"], 1, seq, _on(_cancel, sub)))
        return
    if status == "trialing" and sub["id"] not in sb.store.trial_warned:
        warn_at = max(sub["trial_start"], sub["trial_end"] - lifecycle.TRIAL_WARNING)
        due.append(Due(warn_at, 0, seq, _on(_warn_trial, sub)))
    renew_at = sub["trial_end"] if status == "trialing" else end
    due.append(Due(renew_at, 2, seq, _on(lifecycle.renew, sub)))


def _cancel(sb: Sandbox, sub: Obj, at: int) -> None:
    collection.end_subscription(sb, sub, at, reason="cancellation_requested")


def _warn_trial(sb: Sandbox, sub: Obj, _: int) -> None:
    sb.store.trial_warned.add(sub["id"])
    sb.events.emit("customer.subscription.trial_will_end", sub)


def _retry(sb: Sandbox, invoice: Obj, at: int) -> None:
    invoice["next_payment_attempt"] = None
    collection.attempt(sb, invoice, at, automatic=True, off_session=True)


def _settle(sb: Sandbox, obj: Obj, at: int) -> None:
    _, outcome = sb.store.settlements[obj["id"]]
    if obj["object"] == "refund":
        refunding.settle(sb, obj, outcome)
        return
    payments.settle(sb, obj, at, outcome)
    collection.payment_intent_changed(sb, obj, at)


def _expire_checkout(sb: Sandbox, session: Obj, _: int) -> None:
    checkout.expire_session(sb, session)


def due_steps(sb: Sandbox, clock_id: str | None) -> list[Due]:
    """Every step scheduled on this clock, whenever it falls due."""
    due: list[Due] = []
    store = sb.store
    for sub in store.objects["subscription"].values():
        if sub["test_clock"] == clock_id:
            _subscription_steps(sb, sub, due)
    for schedule in store.objects["subscription_schedule"].values():
        current = schedule["current_phase"]
        if schedule["test_clock"] == clock_id and schedule["status"] == "active" and current:
            seq = store.seq[schedule["id"]]
            due.append(Due(current["end_date"], 1, seq, _on(schedules.phase_ends, schedule)))
    for invoice in store.objects["invoice"].values():
        if invoice["test_clock"] != clock_id:
            continue
        seq = store.seq[invoice["id"]]
        finalizes_at = invoice["automatically_finalizes_at"]
        if invoice["status"] == "draft" and invoice["auto_advance"] and finalizes_at:
            due.append(Due(finalizes_at, 3, seq, _on(lifecycle.finalize_renewal, invoice)))
        elif invoice["status"] == "open" and invoice["next_payment_attempt"]:
            due.append(Due(invoice["next_payment_attempt"], 4, seq, _on(_retry, invoice)))
    for object_id, (at, _) in store.settlements.items():
        obj = store.lookup_any(object_id)
        if obj is not None and sb.clock_for(obj) == clock_id:
            due.append(Due(at, 0, store.seq[object_id], _on(_settle, obj)))
    for session in store.objects["checkout.session"].values():
        if session["status"] == "open" and sb.clock_for(session) == clock_id:
            seq = store.seq[session["id"]]
            due.append(Due(session["expires_at"], 0, seq, _on(_expire_checkout, session)))
    return due


def run_until(sb: Sandbox, clock: Obj | None, target: int) -> int:
    """Run every step due on ``clock`` (None: the wall clock) up to ``target``; count them."""
    clock_id = clock["id"] if clock else None
    token = current_request.set((None, None))  # time-driven events have no request
    ran = 0
    try:
        for _ in range(10_000):
            pending = [d for d in due_steps(sb, clock_id) if d.at <= target]
            if not pending:
                break
            step = min(pending)
            if clock is not None:
                clock["frozen_time"] = max(clock["frozen_time"], step.at)
            step.run(sb, max(step.at, clock["frozen_time"]) if clock else step.at)
            ran += 1
        if clock is not None:
            clock["frozen_time"] = target
    finally:
        current_request.reset(token)
    return ran


async def tick_forever(sb: Sandbox) -> None:
    """The wall clock's timeline: whatever is due, every second."""
    while True:
        await asyncio.sleep(TICK_SECONDS)
        try:
            run_until(sb, None, sb.now())
        except Exception:
            # One broken step must not stop time for everything else; it is loud instead.
            log.exception("sandbox timeline step failed")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
