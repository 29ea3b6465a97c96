"""How many messages of a consumer queue were dead-lettered, wherever they are.

With the webhooks service running, its recorder moves each message out of
``<queue>.dlq`` into its store (``webhooks.dead_letters``) at once, so a
check of the dead-letter queue alone would pass whatever happened.
"""

from __future__ import annotations

import asyncpg

from tests.support.amqp import message_count


async def dead_lettered(db: asyncpg.Connection, queue: str) -> int:
    in_store = await db.fetchval(
        "SELECT count(*) FROM webhooks.dead_letters WHERE queue = $1"
        " AND state IN ('dead', 'redriving')",
        queue,
    )
    return int(in_store) + await message_count(f"{queue}.dlq")
