"""Queue policies for the tests' own queues (the services apply theirs)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from shared.broker import policies
from shared.broker.policies import Management
from shared.broker.topology import ConsumerQueue
from tests.support import env


def management() -> Management:
    return Management.for_broker(env.AMQP_URL)


@contextlib.asynccontextmanager
async def queue_policies(*specs: ConsumerQueue) -> AsyncIterator[list[policies.QueuePolicy]]:
    """The policies of ``specs`` in force while the block runs, then removed."""
    api = management()
    wanted = policies.all_policies(specs)
    await policies.apply(api, wanted)
    try:
        yield wanted
    finally:
        for policy in wanted:
            with contextlib.suppress(policies.ManagementError):
                await api.delete_policy(policy.name)
