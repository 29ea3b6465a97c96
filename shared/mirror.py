"""Apply if newer: the one ordering rule for every object mirrored from Stripe.

Stripe does not order deliveries, so every mirrored row (a subscription, an
invoice, a payment intent, a checkout session...) keeps the version of the
state it holds, and an event's snapshot is applied only if it is newer.
A :class:`Version` compares, in order:

1. ``created``: the event's timestamp (Stripe's clock, one-second
   resolution; for an object on a test clock, the clock's time);
2. ``progress``: what the object itself proves about its age, chosen per
   kind from fields that only ever move forward: a subscription's period end
   and whether it has ended, an invoice's status (draft < open < settled)
   and attempt count, a payment intent or checkout session reaching a
   terminal status.

When both are equal the envelope cannot say which state is newer (two
updates in the same second, e.g. ``active`` then ``past_due``). If the two
snapshots agree (``digest``), there is nothing to do. If they differ, the
handler raises :class:`~shared.broker.handlers.Refetch`: the consumer reads
the object from Stripe outside the transaction and the handler applies that,
because Stripe's current object is newer than either event. Only a read of
that same object settles the tie, never another one a handler read. The event id,
which Stripe makes random, never decides.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import orjson

from shared.broker.handlers import Context, Refetch
from shared.clock import from_unix
from shared.db import DbConnection

_TABLE = re.compile(r"[a-z_][a-z0-9_]*")


class Verdict(Enum):
    APPLY = "apply"  # newer (or first seen, or settled by Stripe's current object)
    STALE = "stale"  # older than what the row holds
    SAME = "same"  # as new as the row, and the same state


@dataclass(frozen=True, order=True)
class Version:
    created: datetime
    progress: tuple[int, ...] = ()

    @classmethod
    def of(cls, created_unix: int, *progress: int) -> Version:
        return cls(from_unix(created_unix), tuple(progress))


def digest(snapshot: Any) -> str:
    """A fingerprint of the state a row keeps (what the handler parsed, not the raw event)."""
    return hashlib.sha256(orjson.dumps(snapshot, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


async def lock(ctx: Context, *, table: str, stripe_id: str) -> None:
    """The transaction-level lock on one mirrored object, the one ``decide``
    takes: held until commit, whether or not the object's row exists yet.

    A handler that writes another object's row besides its own (an invoice
    activating its subscription) takes that object's lock first, so both
    handlers lock in the same order (see ``state/invoices.py`` in the
    subscriptions service).
    """
    await ctx.conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{table}:{stripe_id}"
    )


async def decide(
    ctx: Context,
    *,
    kind: str,
    table: str,
    stripe_id: str,
    version: Version,
    state_digest: str,
    id_column: str = "stripe_id",
) -> Verdict:
    """Compare an incoming snapshot with the row, locking the row for the upsert.

    ``table`` must have the columns ``id_column``, ``version_created``,
    ``version_progress`` (int[]) and ``version_digest``; the handler writes
    them with the state when the verdict is ``APPLY``. Raises ``Refetch`` on an
    unsettled tie.
    """
    if not (_TABLE.fullmatch(table) and _TABLE.fullmatch(id_column)):
        raise ValueError(f"not a table and column name: {table!r}, {id_column!r}")
    # FOR UPDATE locks only a row that exists: two first events for one object
    # (created and updated, handled at once) would both find none, both apply,
    # and the later commit would win, older or not. The lock on the object's
    # id serialises them whether or not its row exists yet; it is taken in its
    # own statement so the read below sees what the other transaction committed.
    await lock(ctx, table=table, stripe_id=stripe_id)
    row = await ctx.conn.fetchrow(
        f"SELECT version_created, version_progress, version_digest FROM {table}"  # noqa: S608
        f" WHERE {id_column} = $1 FOR UPDATE",
        stripe_id,
    )
    if row is None or row["version_created"] is None:
        # No row, or one written before any event about the object (a payment
        # the API created before calling Stripe): nothing newer is held.
        return Verdict.APPLY
    held = Version(row["version_created"], tuple(row["version_progress"]))
    if version > held:
        return Verdict.APPLY
    if version < held:
        return Verdict.STALE
    if row["version_digest"] == state_digest:
        return Verdict.SAME
    if ctx.fetched is not None and ctx.fetched.get("id") == stripe_id:
        return Verdict.APPLY
    # Only this object as Stripe holds it settles the tie. A handler may have
    # read another one (the customer, to learn whose the object is; the
    # subscription of an invoice): that says nothing about which state is newer.
    raise Refetch(kind, stripe_id)


async def supersede(
    conn: DbConnection, *, table: str, row_id: str, progress: tuple[int, ...], id_column: str = "id"
) -> None:
    """Hold this moment as the version of a row whose state the service
    decided itself, without an event (a payment given up before Stripe's
    answer came): every event about the object from before now is then
    ``STALE`` to :func:`decide`, and a later one still applies. The digest is
    empty, so a tie with an event is settled from Stripe, as any other.
    """
    if not (_TABLE.fullmatch(table) and _TABLE.fullmatch(id_column)):
        raise ValueError(f"not a table and column name: {table!r}, {id_column!r}")
    await conn.execute(
        f"UPDATE {table} SET version_created = now(), version_progress = $2,"  # noqa: S608
        f" version_digest = '' WHERE {id_column} = $1",
        row_id,
        list(progress),
    )
