"""Domain events as the subscriptions and payments services publish them.

Tests of a consumer of ``billing.events`` publish contract-conforming
envelopes (``shared/billing_events.py``) to the exchange: the service
boundary, whoever the producer turns out to be.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import jwt
import orjson
from pydantic import BaseModel

from shared.billing_events import SCHEMA_VERSION, model_for
from shared.broker.topology import BILLING_EVENTS
from tests.support import env
from tests.support.amqp import publish_raw
from tests.support.waiting import eventually


def envelope(
    event_type: str,
    data: BaseModel | dict[str, Any],
    *,
    occurred_at: datetime,
    event_id: str | None = None,
    source: str = "subscriptions",
) -> dict[str, Any]:
    """An envelope whose data is checked against the contract's model first."""
    model = model_for(event_type)
    payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    model.model_validate(payload)
    return {
        "id": event_id or str(uuid.uuid4()),
        "type": event_type,
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "occurred_at": occurred_at.isoformat(),
        "data": payload,
    }


async def publish(body: dict[str, Any]) -> str:
    await publish_raw(BILLING_EVENTS, body["type"], orjson.dumps(body), message_id=body["id"])
    return str(body["id"])


async def wait_handled(db: asyncpg.Connection, schema: str, *event_ids: str) -> None:
    """Until the consumer's inbox (in ``schema``) holds every one of ``event_ids``."""
    ids = list(event_ids)
    await eventually(
        lambda: db.fetchval(
            f"SELECT count(*) FROM {schema}.inbox WHERE event_id = ANY($1)",  # noqa: S608
            ids,
        ),
        until=lambda n: n == len(ids),
        timeout=15,
        what=f"{ids} handled by {schema}",
    )


def member_headers(user_id: str, *, role: str = "member") -> dict[str, str]:
    token = jwt.encode(
        {"sub": user_id, "role": role, "exp": int(time.time()) + 600},
        env.JWT_SECRET,
        algorithm="HS256",
    )
    return {"Authorization": f"Bearer {token}"}
