"""Typed message handlers: ``handle(event, ctx)``, registered by message type.

A service declares what it consumes with a :class:`Handlers` registry::

    handlers = Handlers()

    @handlers.on("invoice.paid", "invoice.payment_failed", model=InvoiceEvent)
    async def apply_invoice(event: InvoiceEvent, ctx: Context) -> None: ...

The consumer base (``shared/broker/consumer.py``) decodes the body once,
validates it against the handler's pydantic model (a message that does not
fit is invalid and dead-lettered), and calls the handler inside the
transaction that also records the message in the inbox. The handler gets a
:class:`Context`: that transaction's connection, the service's clock, an
outbox bound to the same transaction, and, when an ordering tie had to be
settled, the object as Stripe has it now (``ctx.fetched``).

Handlers never call Stripe: they run inside a database transaction. One that
needs Stripe's current object raises :class:`Refetch`; the consumer rolls
back, fetches the object outside any transaction and runs the handler again
with it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from shared.clock import Clock
from shared.db import DbConnection
from shared.outbox import Outbox

# "*" matches any type the queue's bindings let through.
ANY_TYPE = "*"

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Context:
    conn: DbConnection
    clock: Clock
    outbox: Outbox
    message_id: str
    queue: str
    # The message as it arrived, decoded (the ledger stores it verbatim).
    body: Mapping[str, Any]
    # The object re-read from Stripe to settle a tie (see shared/mirror.py).
    fetched: Mapping[str, Any] | None = None


HandlerFn = Callable[[Any, Context], Awaitable[None]]
TypedHandler = Callable[[M, Context], Awaitable[None]]


@dataclass(frozen=True)
class Registration:
    model: type[BaseModel]
    handle: HandlerFn


class Refetch(Exception):
    """Raised by a handler that needs the object as Stripe has it now."""

    def __init__(self, kind: str, object_id: str) -> None:
        super().__init__(f"refetch {kind} {object_id}")
        self.kind = kind
        self.object_id = object_id


# Reads an object from Stripe (outside any transaction): kind, id -> object.
Fetcher = Callable[[str, str], Awaitable[Mapping[str, Any]]]


class Handlers:
    def __init__(self) -> None:
        self._by_type: dict[str, Registration] = {}

    def on(
        self, *event_types: str, model: type[M]
    ) -> Callable[
        [Callable[[M, Context], Awaitable[None]]], Callable[[M, Context], Awaitable[None]]
    ]:
        def register(
            fn: Callable[[M, Context], Awaitable[None]],
        ) -> Callable[[M, Context], Awaitable[None]]:
            for event_type in event_types:
                if event_type in self._by_type:
                    raise ValueError(f"{event_type} already has a handler")
                self._by_type[event_type] = Registration(model, fn)
            return fn

        return register

    def lookup(self, event_type: str) -> Registration | None:
        """The handler for ``event_type``: an exact registration first, then the
        first pattern (``customer.subscription.*``, ``*``) that matches."""
        found = self._by_type.get(event_type)
        if found is not None:
            return found
        for pattern, registration in self._by_type.items():
            if "*" in pattern and fnmatch.fnmatchcase(event_type, pattern):
                return registration
        return None

    @property
    def event_types(self) -> tuple[str, ...]:
        return tuple(self._by_type)
