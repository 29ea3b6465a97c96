"""A row for every change of a subscription: who or which event, from, to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.db import DbConnection


async def record(
    conn: DbConnection,
    subscription_id: str,
    *,
    actor_type: str,
    actor: str,
    action: str,
    changes: Mapping[str, tuple[Any, Any]],
) -> None:
    await conn.execute(
        "INSERT INTO subscription_history (stripe_subscription_id, actor_type, actor, action,"
        " changes) VALUES ($1, $2, $3, $4, $5)",
        subscription_id,
        actor_type,
        actor,
        action,
        {field: [old, new] for field, (old, new) in changes.items()},
    )


def diff(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields whose value changed (all of them for a first sighting)."""
    return {
        field: ((before or {}).get(field), value)
        for field, value in after.items()
        if before is None or before.get(field) != value
    }
