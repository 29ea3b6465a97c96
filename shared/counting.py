"""Counters that count what committed.

A handler's transaction can fail after its work ran: a deadlock, a lost
connection, a constraint at commit. The message is then delivered again, or an
outcome is written again alone, and the work runs a second time. A counter
bumped as the work ran would count it twice, and a money counter
(``amount_collected``, ``credits_granted``) would drift from the records an
operator reconciles it with.

So counting work done inside a transaction is deferred: :func:`count` notes
the bump, and :func:`on_commit` (around the transaction) makes the noted bumps
when its body ends without an error, that is once the transaction committed,
and drops them otherwise. A scope inside another (a savepoint) hands its
bumps to the outer scope, which alone knows whether they committed. Outside
any scope a bump is made at once, so code that runs both ways counts right in
both.

The scope lives in a context variable, which a task started inside it
inherits. A scope belongs to the task that opened it: another task (a relay
or a writer started lazily from inside a transaction) lives on after the
scope has ended, so what it counts is counted at once, or by its own scopes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from prometheus_client import Counter


@dataclass
class _Scope:
    task: asyncio.Task[object] | None
    bumps: list[Callable[[], None]] = field(default_factory=list)


_scope: ContextVar[_Scope | None] = ContextVar("counts_on_commit", default=None)


def _current_task() -> asyncio.Task[object] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no event loop: plain synchronous code
        return None


def _open_scope() -> _Scope | None:
    scope = _scope.get()
    return scope if scope is not None and scope.task is _current_task() else None


def count(counter: Counter, amount: float = 1) -> None:
    """Bump ``counter`` (a labelled child) by ``amount``, once the enclosing
    transaction commits, or now outside of one."""
    scope = _open_scope()
    if scope is None:
        counter.inc(amount)
    else:
        scope.bumps.append(lambda: counter.inc(amount))


@contextmanager
def on_commit() -> Iterator[None]:
    """Around a transaction: bumps noted inside it are made if it commits."""
    outer = _open_scope()
    scope = _Scope(_current_task())
    token = _scope.set(scope)
    try:
        yield
    finally:
        _scope.reset(token)
    # Reached only when the body ended without an error (the commit included).
    if outer is not None:
        outer.bumps.extend(scope.bumps)
    else:
        for bump in scope.bumps:
            bump()
