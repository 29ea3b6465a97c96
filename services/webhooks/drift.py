"""Drift report and repair: every mirrored object compared with Stripe's.

Events can be lost for good (an endpoint down past Stripe's three days, a
dead letter discarded) or a state can change in Stripe without an event the
product received. A state job (a ``reconcile_jobs`` row of kind ``state``,
read like a backfill) asks each service that mirrors Stripe objects
(``shared/mirror_routes.py``) for its kinds and pages its rows; for each
object it reads Stripe's current one through the call policy and evaluates
the owner's field mapping on it (``shared/mirrored_kinds.py``). Every field
that differs is stored with ours and Stripe's value.

With ``repair`` it asks the owner to re-read the object
(``POST /internal/refetch``): the owner applies it through its own event
path, so this service never writes another service's schema, and
apply-if-newer still decides. Each repair is an entry in this service's
audit log, written before the owner is asked (outcome ``pending``) and
settled in the transaction that stores the object's differences.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg

from services.webhooks.contract import Difference
from services.webhooks.job_tasks import JobTasks
from services.webhooks.settings import WebhooksSettings
from shared import audit, db
from shared.api.caller import Caller, Role
from shared.api.pagination import Page, PageQuery, decode_cursor, page_of
from shared.broker.errors import InvalidMessage
from shared.db import DbConnection
from shared.http.errors import ApiError
from shared.logging import get_logger, log_context
from shared.mirrored_kinds import StripeField, differences, stripe_values
from shared.stripe_calls import StripeCalls, fetch_object

log = get_logger(__name__)

# The field a difference names when Stripe no longer has the object at all.
MISSING_IN_STRIPE = "(object)"


class DriftFailed(RuntimeError):
    pass


class OwnerUnavailable(RuntimeError):
    """A service's internal API did not answer as it should."""


@dataclass(frozen=True)
class OwnedKind:
    service: str
    url: str
    token: str
    kind: str
    id_prefix: str
    fields: dict[str, StripeField]


class Owners:
    """The internal APIs of the services that mirror Stripe objects."""

    def __init__(self, session: aiohttp.ClientSession, settings: WebhooksSettings) -> None:
        self._session = session
        self._services = settings.mirror_services()

    async def _json(self, method: str, url: str, token: str, **kw: Any) -> Any:
        try:
            async with self._session.request(
                method, url, headers={"Authorization": f"Bearer {token}"}, **kw
            ) as response:
                if response.status == 404:
                    payload = await response.json(content_type=None)
                    message = payload.get("error", {}).get("message", "not found")
                    raise ApiError(404, "not_found", str(message))
                if response.status != 200:
                    raise OwnerUnavailable(f"{url} answered {response.status}")
                return await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OwnerUnavailable(f"{url}: {exc!r}") from exc

    async def kinds(self) -> list[OwnedKind]:
        found: list[OwnedKind] = []
        for service, url, token in self._services:
            if token is None:
                raise DriftFailed(f"set {service.upper()}_SERVICE_TOKEN to compare its objects")
            answer = await self._json("GET", f"{url}/internal/mirror", token)
            for spec in answer["kinds"]:
                found.append(
                    OwnedKind(
                        service=service,
                        url=url,
                        token=token,
                        kind=spec["kind"],
                        id_prefix=spec["id_prefix"],
                        fields={
                            name: StripeField.from_spec(f) for name, f in spec["fields"].items()
                        },
                    )
                )
        return found

    async def owner_of(self, stripe_id: str) -> OwnedKind | None:
        for owned in await self.kinds():
            if stripe_id.startswith(f"{owned.id_prefix}_"):
                return owned
        return None

    async def rows(self, owned: OwnedKind, limit: int) -> AsyncIterator[list[dict[str, Any]]]:
        cursor: str | None = None
        while True:
            params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
            page = await self._json(
                "GET", f"{owned.url}/internal/mirror/{owned.kind}", owned.token, params=params
            )
            yield list(page["data"])
            if not page.get("has_more"):
                return
            cursor = page["next_cursor"]

    async def refetch(self, owned: OwnedKind, object_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._json(
            "POST",
            f"{owned.url}/internal/refetch",
            owned.token,
            json={"kind": owned.kind, "id": object_id},
        )
        return answer


def _requester(job: asyncpg.Record) -> Caller:
    """Who asked for the job: its repairs are theirs in the audit log."""
    return Caller(
        user_id=job["requested_by"] or "system",
        role=Role(job["requested_role"] or Role.ADMIN.value),
    )


async def create_job(
    conn: DbConnection,
    *,
    caller: Caller,
    reason: str,
    repair: bool,
    kinds: list[str] | None,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        "INSERT INTO reconcile_jobs (id, kind, trigger, requested_by, requested_role, reason,"
        " repair, kinds) VALUES ($1, 'state', 'manual', $2, $3, $4, $5, $6) RETURNING *",
        uuid.uuid4(),
        caller.user_id,
        caller.role.value,
        reason,
        repair,
        kinds,
    )
    assert row is not None
    return row  # type: ignore[no-any-return]


async def list_differences(
    pool: asyncpg.Pool[Any], job_id: str, query: PageQuery
) -> Page[Difference]:
    args: list[Any] = [uuid.UUID(job_id), query.limit + 1]
    after = ""
    if query.cursor is not None:
        (last,) = decode_cursor(query.cursor, int)
        args.append(last)
        after = f" AND id > ${len(args)}"
    rows = await pool.fetch(
        f"SELECT * FROM reconcile_differences WHERE job_id = $1{after}"  # noqa: S608
        " ORDER BY id LIMIT $2",
        *args,
    )
    return page_of(
        rows, query.limit, lambda r: Difference.model_validate(dict(r)), lambda r: (r["id"],)
    )


@dataclass
class _Counts:
    checked: int = 0
    differing: int = 0
    repaired: int = 0


class StateReconciler:
    """Starts and runs drift reports in this process."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        calls: StripeCalls | None,
        owners: Owners,
        settings: WebhooksSettings,
    ) -> None:
        self._pool = pool
        self._calls = calls
        self.owners = owners
        self._settings = settings
        self._jobs = JobTasks("drift")

    @property
    def configured(self) -> bool:
        return self._calls is not None

    def start(self, job_id: str) -> None:
        self._jobs.start(job_id, self.run(job_id))

    async def stop(self) -> None:
        await self._jobs.stop()

    async def run(self, job_id: str) -> None:
        with log_context(reconcile_job=job_id):
            job = await self._pool.fetchrow(
                "UPDATE reconcile_jobs SET state = 'running', started_at = now(),"
                " heartbeat_at = now() WHERE id = $1 AND kind = 'state' AND state = 'queued'"
                " RETURNING *",
                uuid.UUID(job_id),
            )
            if job is None:
                return
            try:
                await self._compare(job)
            except asyncio.CancelledError:
                await self._end(job_id, "failed", "interrupted: the service stopped")
                raise
            except Exception as exc:
                log.error("drift_report_failed", error=repr(exc))
                await self._end(job_id, "failed", f"{type(exc).__name__}: {exc}"[:2000])
                return
            await self._end(job_id, "succeeded", None)

    async def _end(self, job_id: str, state: str, error: str | None) -> None:
        await asyncio.shield(
            self._pool.execute(
                "UPDATE reconcile_jobs SET state = $2, error = $3, finished_at = now()"
                " WHERE id = $1",
                uuid.UUID(job_id),
                state,
                error,
            )
        )

    async def _compare(self, job: asyncpg.Record) -> None:
        if self._calls is None:
            raise DriftFailed("no Stripe configured (STRIPE_SECRET_KEY)")
        wanted = set(job["kinds"]) if job["kinds"] else None
        limit = asyncio.Semaphore(self._settings.reconcile_state_concurrency)
        for owned in await self.owners.kinds():
            if wanted is not None and owned.kind not in wanted:
                continue
            async for rows in self.owners.rows(owned, self._settings.reconcile_state_page_size):
                counts = _Counts()
                await asyncio.gather(*(self._check(job, owned, row, counts, limit) for row in rows))
                await self._pool.execute(
                    "UPDATE reconcile_jobs SET checked = checked + $2, differing = differing + $3,"
                    " repaired = repaired + $4, heartbeat_at = now() WHERE id = $1",
                    job["id"],
                    counts.checked,
                    counts.differing,
                    counts.repaired,
                )

    async def _check(
        self,
        job: asyncpg.Record,
        owned: OwnedKind,
        row: dict[str, Any],
        counts: _Counts,
        limit: asyncio.Semaphore,
    ) -> None:
        assert self._calls is not None
        object_id: str = row["id"]
        async with limit:
            try:
                obj = await fetch_object(self._calls, owned.kind, object_id)
            except InvalidMessage:
                # Stripe has no such object (any more): nothing to re-read it from.
                found = {MISSING_IN_STRIPE: ("present", None)}
                repairable = False
            else:
                found = differences(row["fields"], stripe_values(owned.fields, obj))
                repairable = True
            counts.checked += 1
            if not found:
                return
            counts.differing += 1
            outcome: str | None = None
            entry: int | None = None
            if job["repair"] and repairable:
                # Audited before the owner applies anything, in a transaction
                # of its own: a repair never happens without its entry, even
                # if storing the differences fails after it.
                entry = await audit.begin(
                    self._pool,
                    caller=_requester(job),
                    action="reconcile.repair",
                    target_type=owned.kind,
                    target_id=object_id,
                    reason=job["reason"] or "drift repair",
                    request_id=None,
                    details={
                        "job_id": str(job["id"]),
                        "service": owned.service,
                        "fields": {n: {"ours": o, "stripe": s} for n, (o, s) in found.items()},
                    },
                )
                try:
                    outcome = str((await self.owners.refetch(owned, object_id))["outcome"])
                except (OwnerUnavailable, ApiError) as exc:
                    log.warning("drift_repair_failed", object_id=object_id, error=repr(exc))
                    outcome = "failed"
                if outcome == "applied":
                    counts.repaired += 1
        log.info(
            "drift_found",
            kind=owned.kind,
            object_id=object_id,
            fields=sorted(found),
            repair=outcome,
        )
        async with db.transaction(self._pool) as conn:
            await conn.executemany(
                "INSERT INTO reconcile_differences (job_id, service, kind, object_id, field,"
                " ours, stripe, repair) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " ON CONFLICT (job_id, kind, object_id, field) DO NOTHING",
                [
                    (job["id"], owned.service, owned.kind, object_id, name, ours, theirs, outcome)
                    for name, (ours, theirs) in found.items()
                ],
            )
            if entry is not None:
                await audit.settle(conn, entry, {"outcome": outcome})
