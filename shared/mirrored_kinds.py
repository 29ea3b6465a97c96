"""What a service mirrors from Stripe, declared once, for the drift report.

A service that keeps Stripe objects in a table declares each kind with
:class:`MirroredKind`: its table and id column, the columns it keeps with
where each comes from in Stripe's object (:class:`StripeField`), and the
Stripe event type whose handler applies a snapshot of that kind. It passes
them to ``runtime.service_app(mirrors=...)``, which serves them on
``/internal/mirror`` (``shared/mirror_routes.py``): the webhooks service
pages the rows and compares them with Stripe's objects, and asks the owner
to re-read an object when they differ.

The mapping is data, not code: the owner serves it with its rows, so the
service comparing them evaluates the same mapping with :func:`stripe_values`
without importing the owner's modules. Values are compared in one canonical
JSON form (:func:`canonical`): times as ISO 8601 UTC, expanded objects as
their id.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from shared.clock import from_unix

_NAME = re.compile(r"[a-z_][a-z0-9_]*")

# How a Stripe value is read: as it is, a unix time, or an object's id
# (a field Stripe may expand into the whole object).
ValueKind = Literal["value", "timestamp", "id"]


@dataclass(frozen=True)
class StripeField:
    """Where a kept column comes from: the first of ``paths`` (dotted, list
    indexes as numbers: ``items.data.0.price.id``) that holds a value."""

    paths: tuple[str, ...]
    as_: ValueKind = "value"

    def read(self, obj: Mapping[str, Any]) -> Any:
        for path in self.paths:
            found = _at(obj, path)
            if found is not None:
                return _as(found, self.as_)
        return None

    def spec(self) -> dict[str, Any]:
        return {"paths": list(self.paths), "as": self.as_}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> StripeField:
        return cls(tuple(str(p) for p in spec["paths"]), spec.get("as", "value"))


def at(*paths: str, as_: ValueKind = "value") -> StripeField:
    return StripeField(paths, as_)


@dataclass(frozen=True)
class MirroredKind:
    kind: str  # Stripe's object kind, as shared/stripe_calls.fetch_object reads it
    id_prefix: str  # "sub": how its ids start ("sub_...")
    table: str
    id_column: str
    # The Stripe event whose handler applies a snapshot of this kind.
    event_type: str
    fields: Mapping[str, StripeField] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = (self.table, self.id_column, *self.fields)
        bad = [n for n in names if not _NAME.fullmatch(n)]
        if bad:
            raise ValueError(f"not table or column names: {bad}")

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id_prefix": self.id_prefix,
            "event_type": self.event_type,
            "fields": {name: f.spec() for name, f in self.fields.items()},
        }


class MirroredKinds:
    """A service's registry: one :meth:`add` per kind it mirrors."""

    def __init__(self) -> None:
        self._kinds: dict[str, MirroredKind] = {}

    def add(self, kind: MirroredKind) -> None:
        if kind.kind in self._kinds:
            raise ValueError(f"{kind.kind} is already registered")
        self._kinds[kind.kind] = kind

    def get(self, kind: str) -> MirroredKind | None:
        return self._kinds.get(kind)

    def __iter__(self) -> Iterator[MirroredKind]:
        return iter(self._kinds.values())

    def __len__(self) -> int:
        return len(self._kinds)


def canonical(value: Any) -> Any:
    """A kept value in the form both sides are compared in."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


def stripe_values(fields: Mapping[str, StripeField], obj: Mapping[str, Any]) -> dict[str, Any]:
    """The kept columns as Stripe's object says they should be."""
    return {name: canonical(f.read(obj)) for name, f in fields.items()}


def differences(ours: Mapping[str, Any], stripe: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Column -> (ours, Stripe's), for every kept column that differs."""
    return {
        name: (ours.get(name), value)
        for name, value in stripe.items()
        if canonical(ours.get(name)) != value
    }


def _at(obj: Any, path: str) -> Any:
    current = obj
    for part in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(part)
        elif isinstance(current, list) and part.isdigit():
            index = int(part)
            current = current[index] if index < len(current) else None
        else:
            return None
        if current is None:
            return None
    return current


def _as(value: Any, kind: ValueKind) -> Any:
    if kind == "timestamp":
        return from_unix(int(value)) if isinstance(value, int | float) else None
    if kind == "id" and isinstance(value, Mapping):
        return value.get("id")
    return value
