"""The internal routes of a service that mirrors Stripe objects
(``shared/mirrored_kinds.py``), installed by ``runtime.service_app``:

- ``GET /internal/mirror``: the kinds it mirrors, with their field mapping;
- ``GET /internal/mirror/{kind}?cursor=&limit=``: its rows, ids and kept
  columns, in id order;
- ``POST /internal/refetch {kind, id}``: reads Stripe's current object and
  applies it through the consumer's own path (``apply_in_inbox``: inbox and
  handler in one transaction, the object as ``ctx.fetched``), so a repair is
  an event like any other: apply-if-newer decides, domain events go out
  through the outbox. Answers ``applied``, ``stale`` (the row holds something
  newer and was kept) or ``unchanged`` (the row already says what Stripe
  says).

The re-read object arrives as a synthetic event of the kind's event type.
Its id is derived from the object's content and the state the row held, so
re-reading an unchanged object again is an inbox duplicate, while an object
that went back to an earlier state is still applied. Its ``created`` is the
version time the row held before the object was read (now, for an object the
service has no row of): Stripe's current object is at least as new as that,
so apply-if-newer settles the tie by what the object proves (progress), then
by content: the same state is left alone (``unchanged``), a different one is
applied as Stripe's current object (``ctx.fetched``). An event applied while
the object was being read carries a later time and wins (``stale``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import orjson
import pydantic
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from shared.api.pagination import PageQuery, decode_cursor, encode_cursor
from shared.broker.consumer import apply_in_inbox
from shared.broker.errors import InvalidMessage, RetryLater
from shared.broker.handlers import Handlers, Registration
from shared.broker.topology import ConsumerQueue
from shared.clock import Clock, to_unix
from shared.http.errors import (
    ApiError,
    from_validation_error,
    invalid_field,
    json_response,
    not_found,
    unavailable,
)
from shared.logging import get_logger
from shared.mirrored_kinds import MirroredKind, MirroredKinds, canonical, stripe_values
from shared.stripe_calls import StripeCalls, fetch_object

log = get_logger(__name__)

KINDS_PATH = "/internal/mirror"
ROWS_PATH = "/internal/mirror/{kind}"
REFETCH_PATH = "/internal/refetch"


class MirrorQuery(PageQuery):
    limit: int = Field(default=100, ge=1, le=500)


class RefetchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(max_length=64)
    id: str = Field(pattern=r"^[a-z]{1,12}_[A-Za-z0-9_]{1,250}$")


class Mirror:
    """One service's mirrored kinds and what applying one takes."""

    def __init__(
        self,
        kinds: MirroredKinds,
        *,
        service: str,
        consumes: Sequence[tuple[ConsumerQueue, Handlers]],
        pool: Callable[[], asyncpg.Pool[Any]],
        clock: Callable[[], Clock],
        stripe: Callable[[], StripeCalls | None],
    ) -> None:
        self._kinds = kinds
        self._service = service
        self._pool = pool
        self._clock = clock
        self._stripe = stripe
        self._handlers: dict[str, tuple[str, Registration]] = {}
        for kind in kinds:
            for queue, handlers in consumes:
                registration = handlers.lookup(kind.event_type)
                if registration is not None:
                    self._handlers[kind.kind] = (queue.name, registration)
                    break
            else:
                raise ValueError(f"{service} has no handler for {kind.event_type} ({kind.kind})")

    def install(self, app: web.Application) -> None:
        app.router.add_get(KINDS_PATH, self.serve_kinds)
        app.router.add_get(ROWS_PATH, self.serve_rows)
        app.router.add_post(REFETCH_PATH, self.serve_refetch)

    def _kind(self, name: str) -> MirroredKind:
        kind = self._kinds.get(name)
        if kind is None:
            raise not_found(f"mirrored kind {name}")
        return kind

    async def serve_kinds(self, request: web.Request) -> web.Response:
        return json_response({"service": self._service, "kinds": [k.spec() for k in self._kinds]})

    async def serve_rows(self, request: web.Request) -> web.Response:
        kind = self._kind(request.match_info["kind"])
        try:
            query = MirrorQuery.model_validate(dict(request.query))
        except pydantic.ValidationError as exc:
            raise from_validation_error(exc) from exc
        after = decode_cursor(query.cursor, str)[0] if query.cursor else ""
        columns = ", ".join(kind.fields)
        rows = await self._pool().fetch(
            f"SELECT {kind.id_column} AS id, {columns} FROM {kind.table}"  # noqa: S608 - names checked
            f" WHERE {kind.id_column} > $1 ORDER BY {kind.id_column} LIMIT $2",
            after,
            query.limit + 1,
        )
        shown = rows[: query.limit]
        more = len(rows) > query.limit
        return json_response(
            {
                "data": [
                    {"id": r["id"], "fields": {f: canonical(r[f]) for f in kind.fields}}
                    for r in shown
                ],
                "has_more": more,
                "next_cursor": encode_cursor(shown[-1]["id"]) if more else None,
            }
        )

    async def _row(self, kind: MirroredKind, object_id: str) -> asyncpg.Record | None:
        columns = ", ".join(kind.fields)
        return await self._pool().fetchrow(
            f"SELECT {columns}, version_created, version_progress, version_digest"  # noqa: S608
            f" FROM {kind.table} WHERE {kind.id_column} = $1",
            object_id,
        )

    async def serve_refetch(self, request: web.Request) -> web.Response:
        try:
            body = RefetchRequest.model_validate_json(await request.read())
        except pydantic.ValidationError as exc:
            raise from_validation_error(exc) from exc
        kind = self._kind(body.kind)
        if not body.id.startswith(f"{kind.id_prefix}_"):
            raise invalid_field("id", f"not a {kind.kind} id")
        calls = self._stripe()
        if calls is None:
            raise unavailable("stripe")
        return json_response(await self.refetch(calls, kind, body.id))

    async def refetch(
        self, calls: StripeCalls, kind: MirroredKind, object_id: str
    ) -> dict[str, Any]:
        held = await self._row(kind, object_id)
        # Outside any transaction, as every Stripe call.
        try:
            obj = await fetch_object(calls, kind.kind, object_id)
        except RetryLater as exc:
            raise unavailable("stripe") from exc
        except InvalidMessage as exc:
            raise ApiError(404, "not_found", f"Stripe has no {kind.kind} {object_id}") from exc
        created = to_unix(held["version_created"] if held else self._clock().now())
        event = {
            "id": _event_id(kind, obj, held),
            "object": "event",
            "type": kind.event_type,
            "created": created,
            "api_version": None,
            "livemode": bool(obj.get("livemode", False)),
            "data": {"object": obj},
            "refetched": True,
        }
        queue, registration = self._handlers[kind.kind]
        outcome = await apply_in_inbox(
            self._pool(),
            queue=queue,
            source=self._service,
            clock=self._clock(),
            body=event,
            registration=registration,
            event=registration.model.model_validate(event),
            fetched=obj,
        )
        after = await self._row(kind, object_id)
        stripe = stripe_values(kind.fields, obj)
        ours = {f: canonical(after[f]) for f in kind.fields} if after is not None else None
        if after is not None and _version(after) != (_version(held) if held else None):
            answer = "applied"
        elif ours == stripe:
            answer = "unchanged"
        else:
            answer = "stale"
        log.info(
            "mirror_refetched",
            kind=kind.kind,
            object_id=object_id,
            outcome=answer,
            inbox=outcome,
        )
        return {
            "kind": kind.kind,
            "id": object_id,
            "outcome": answer,
            "ours": ours,
            "stripe": stripe,
        }


def _version(row: asyncpg.Record) -> tuple[Any, ...]:
    return (row["version_created"], tuple(row["version_progress"]), row["version_digest"])


def _event_id(kind: MirroredKind, obj: dict[str, Any], held: asyncpg.Record | None) -> str:
    content = orjson.dumps(
        [kind.kind, obj, held["version_digest"] if held is not None else None],
        option=orjson.OPT_SORT_KEYS,
    )
    return f"evt_refetch_{hashlib.sha256(content).hexdigest()[:40]}"
