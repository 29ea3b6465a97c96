"""The webhooks service's API (``services/webhooks/contract.py``), served on ``/internal``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
from aiohttp import web

from services.webhooks import backfill, contract, dead_letter_store, drift, queries, redrive
from services.webhooks.backfill import Backfills
from services.webhooks.dead_letter_recorder import DeadLetterRecorder
from services.webhooks.drift import OwnerUnavailable, StateReconciler
from services.webhooks.settings import WebhooksSettings
from shared import audit, metrics, queues
from shared.api.pagination import Page, PageQuery
from shared.api.service import Call, Empty, ServiceRoutes
from shared.broker.errors import PublishFailed
from shared.broker.topology import STRIPE_EVENTS
from shared.counting import count
from shared.db import DbConnection
from shared.http.errors import ApiError, conflict, invalid_field, not_found, unavailable
from shared.runtime import PUBLISHER

SETTINGS = web.AppKey("settings", WebhooksSettings)
RECORDER = web.AppKey("dead_letter_recorder", DeadLetterRecorder)
BACKFILLS = web.AppKey("backfills", Backfills)
STATE_RECONCILER = web.AppKey("state_reconciler", StateReconciler)

routes = ServiceRoutes("webhooks", contract.ENDPOINTS)


@routes.implement(contract.LIST_EVENTS)
async def list_events(
    call: Call[Empty, contract.EventsQuery],
) -> Page[contract.EventSummary]:
    return await queries.list_events(call.pool, queues.WEBHOOKS_LEDGER, call.query)


@routes.implement(contract.SHOW_EVENT)
async def show_event(call: Call[Empty, Empty]) -> contract.EventDetail:
    event = await queries.get_event(call.pool, queues.WEBHOOKS_LEDGER, call.path["event_id"])
    if event is None:
        raise not_found("event")
    return event


@routes.implement(contract.REPLAY_EVENT)
async def replay_event(call: Call[contract.ReplayRequest, Empty]) -> contract.ReplayResult:
    event_id = call.path["event_id"]
    event = await queries.get_event(call.pool, queues.WEBHOOKS_LEDGER, event_id)
    if event is None:
        raise not_found("event")
    # Audited before it is published, in a transaction of its own: a publish
    # cannot share the database's transaction, and a replay must never go out
    # with no entry (should the database or the process fail after it).
    entry = await audit.begin(
        call.pool,
        caller=call.caller,
        action="event.replay",
        target_type="event",
        target_id=event_id,
        reason=call.body.reason,
        request_id=call.request_id,
    )
    # Same id, so every consumer that already applied it skips it; the ones
    # that never did (dead-lettered, bound later) apply it now.
    try:
        await call.request.app[PUBLISHER].publish(
            STRIPE_EVENTS,
            event.type,
            orjson.dumps(event.payload),
            message_id=event_id,
            headers={"x-replayed": True},
        )
    except PublishFailed as exc:
        await audit.settle(call.pool, entry, {"outcome": "failed"})
        raise unavailable("broker") from exc
    metrics.LEDGER_EVENTS_REPLAYED.inc()

    async def effect(conn: DbConnection) -> contract.ReplayResult:
        await queries.mark_replayed(conn, event_id)
        await audit.settle(conn, entry, {"outcome": "published"})
        return contract.ReplayResult(id=event_id, replayed=True)

    return await call.commit(effect)


def _known_queue(settings: WebhooksSettings, queue: str, field: str = "queue") -> str:
    known = settings.dead_letter_queue_names()
    if queue not in known:
        raise invalid_field(field, f"must be one of {known}")
    return queue


def _letter_changed(call: Call[Any, Any]) -> None:
    recorder = call.request.app.get(RECORDER)
    if recorder is not None:
        recorder.changed()


@routes.implement(contract.LIST_DEAD_LETTERS)
async def list_dead_letters(
    call: Call[Empty, contract.DeadLettersQuery],
) -> Page[contract.DeadLetterView]:
    # A plain read of the store: it hides nothing from a redrive running at
    # the same time and counts as no delivery of any message.
    if call.query.queue is not None:
        _known_queue(call.request.app[SETTINGS], call.query.queue)
    return await dead_letter_store.list_letters(call.pool, call.query)


@routes.implement(contract.DEAD_LETTER_QUEUES)
async def dead_letter_queues(call: Call[Empty, Empty]) -> contract.DeadLetterQueues:
    names = call.request.app[SETTINGS].dead_letter_queue_names()
    return contract.DeadLetterQueues(queues=await dead_letter_store.summaries(call.pool, names))


@routes.implement(contract.REDRIVE_DEAD_LETTERS)
async def redrive_dead_letters(
    call: Call[contract.RedriveRequest, Empty],
) -> contract.RedriveResult:
    settings = call.request.app[SETTINGS]
    body = call.body
    if not body.says_which:
        # Never everything by accident: "all" has to be said.
        raise invalid_field("all", "name the letters (ids, queue, message_ids, event_type) or all")
    if body.queue is not None:
        _known_queue(settings, body.queue)
    # Audited before any letter is sent, in a transaction of its own (a
    # publish cannot share it): no redrive goes ahead without its entry.
    entry = await audit.begin(
        call.pool,
        caller=call.caller,
        action="dead_letters.redrive",
        target_type="dead_letters",
        target_id=body.queue or "*",
        reason=body.reason,
        request_id=call.request_id,
        details={"filter": body.model_dump(mode="json", exclude={"reason"})},
    )
    outcome = await redrive.redrive(
        call.pool,
        call.request.app[PUBLISHER],
        dead_letter_store.RedriveFilter(
            ids=body.ids, queue=body.queue, message_ids=body.message_ids, event_type=body.event_type
        ),
        limit=body.limit,
        lease=timedelta(seconds=settings.dead_letter_redrive_lease_seconds),
    )
    _letter_changed(call)
    failed = not outcome.redriven and outcome.broker_failed
    settled = {
        "outcome": "failed" if failed else "redriven",
        "redriven": outcome.redriven,
        "complete": outcome.complete,
    }
    if failed:
        await audit.settle(call.pool, entry, settled)
        raise unavailable("broker")

    async def effect(conn: DbConnection) -> contract.RedriveResult:
        await audit.settle(conn, entry, settled)
        return contract.RedriveResult(
            redriven=len(outcome.redriven), ids=outcome.redriven, complete=outcome.complete
        )

    return await call.commit(effect)


@routes.implement(contract.DISCARD_DEAD_LETTER)
async def discard_dead_letter(
    call: Call[contract.DiscardRequest, Empty],
) -> contract.DeadLetterView:
    letter_id = int(call.path["dead_letter_id"])

    async def effect(conn: DbConnection) -> contract.DeadLetterView:
        row = await dead_letter_store.discard(conn, letter_id, call.body.reason)
        if row is None:
            existing = await dead_letter_store.get(conn, letter_id)
            if existing is None:
                raise not_found("dead letter")
            raise conflict(
                "dead_letter_not_waiting",
                f"the dead letter is {existing['state']}, only a waiting one can be discarded",
                state=existing["state"],
            )
        await audit.record(
            conn,
            caller=call.caller,
            action="dead_letters.discard",
            target_type="dead_letter",
            target_id=str(letter_id),
            reason=call.body.reason,
            request_id=call.request_id,
            details={"queue": row["queue"], "message_id": row["message_id"]},
        )
        count(metrics.DEAD_LETTERS_DISCARDED.labels(row["queue"]))
        return dead_letter_store.view(row)

    result = await call.commit(effect)
    _letter_changed(call)
    return result


@routes.implement(contract.RECONCILE_EVENTS)
async def reconcile_events(
    call: Call[contract.ReconcileEventsRequest, Empty],
) -> contract.ReconcileJob:
    backfills = call.request.app[BACKFILLS]
    if not backfills.configured:
        raise unavailable("stripe")
    window = backfills.window(call.body.since, await backfills.cursor())

    async def effect(conn: DbConnection) -> contract.ReconcileJob:
        job = await backfill.create_job(
            conn,
            trigger="manual",
            since=window.since,
            until=window.until,
            caller=call.caller,
            reason=call.body.reason,
        )
        await audit.record(
            conn,
            caller=call.caller,
            action="reconcile.events",
            target_type="reconcile_job",
            target_id=str(job["id"]),
            reason=call.body.reason,
            request_id=call.request_id,
            details={"since": window.since.isoformat(), "until": window.until.isoformat()},
        )
        return backfill.job_view(job)

    job = await call.commit(effect)
    # After the commit: the job row exists for whoever reads it at once.
    backfills.start(job.id)
    return job


@routes.implement(contract.SHOW_RECONCILE_JOB)
async def show_reconcile_job(call: Call[Empty, Empty]) -> contract.ReconcileJob:
    row = await backfill.get_job(call.pool, call.path["job_id"])
    if row is None:
        raise not_found("reconcile job")
    return backfill.job_view(row)


@routes.implement(contract.RECONCILE_STATE)
async def reconcile_state(
    call: Call[contract.ReconcileStateRequest, Empty],
) -> contract.ReconcileJob:
    reconciler = call.request.app[STATE_RECONCILER]
    if not reconciler.configured:
        raise unavailable("stripe")
    kinds = sorted(set(call.body.kinds)) if call.body.kinds else None
    if kinds is not None:
        try:
            known = {k.kind for k in await reconciler.owners.kinds()}
        except (OwnerUnavailable, drift.DriftFailed) as exc:
            raise unavailable("mirror services") from exc
        if unknown := [k for k in kinds if k not in known]:
            raise invalid_field("kinds", f"not mirrored: {unknown}; known: {sorted(known)}")

    async def effect(conn: DbConnection) -> contract.ReconcileJob:
        job = await drift.create_job(
            conn, caller=call.caller, reason=call.body.reason, repair=call.body.repair, kinds=kinds
        )
        await audit.record(
            conn,
            caller=call.caller,
            action="reconcile.state",
            target_type="reconcile_job",
            target_id=str(job["id"]),
            reason=call.body.reason,
            request_id=call.request_id,
            details={"repair": call.body.repair, "kinds": kinds},
        )
        return backfill.job_view(job)

    job = await call.commit(effect)
    reconciler.start(job.id)
    return job


@routes.implement(contract.LIST_RECONCILE_DIFFERENCES)
async def list_reconcile_differences(
    call: Call[Empty, PageQuery],
) -> Page[contract.Difference]:
    job_id = call.path["job_id"]
    if await backfill.get_job(call.pool, job_id) is None:
        raise not_found("reconcile job")
    return await drift.list_differences(call.pool, job_id, call.query)


@routes.implement(contract.REFETCH_OBJECT)
async def refetch_object(call: Call[contract.RefetchRequest, Empty]) -> contract.RefetchResult:
    stripe_id = call.path["stripe_id"]
    owners = call.request.app[STATE_RECONCILER].owners
    try:
        owned = await owners.owner_of(stripe_id)
    except (OwnerUnavailable, drift.DriftFailed) as exc:
        raise unavailable("mirror services") from exc
    if owned is None:
        raise not_found(f"a mirrored kind for {stripe_id}")
    # Audited before the owner applies anything, in a transaction of its own
    # (the write happens in another service): no repair without its entry.
    entry = await audit.begin(
        call.pool,
        caller=call.caller,
        action="object.refetch",
        target_type=owned.kind,
        target_id=stripe_id,
        reason=call.body.reason,
        request_id=call.request_id,
        details={"service": owned.service},
    )
    try:
        # The owner reads Stripe and applies the object through its event path.
        answer = await owners.refetch(owned, stripe_id)
    except ApiError as exc:
        # The owner refused it (Stripe has no such object, say): nothing
        # applied. A 5xx may have come after the write: left pending.
        if exc.status < 500:
            await audit.settle(call.pool, entry, {"outcome": "failed"})
        raise
    except (OwnerUnavailable, drift.DriftFailed) as exc:
        # Unknown whether the owner applied it: the entry stays pending.
        raise unavailable("mirror services") from exc
    result = contract.RefetchResult(service=owned.service, **answer)

    async def effect(conn: DbConnection) -> contract.RefetchResult:
        await audit.settle(conn, entry, {"outcome": result.outcome})
        return result

    return await call.commit(effect)
