"""The faults of a run, each at a point of the schedule.

In order: RabbitMQ restarted (the whole node), each consumer service
SIGKILLed once while its queue has a backlog (and started again), Postgres
restarted, and the gateway's broker taken away for ``outage_seconds`` (the
gateway answers 503 and the sender delivers again later). The sender is held
at each fault's point until the fault has started (``Sender.gate``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from chaos.domain import Domain
from chaos.sender import Sender
from chaos.stack import Stack

# A kill waits (frozen) for this many messages queued for the service, or this long.
KILL_BACKLOG = 300
KILL_BACKLOG_WAIT = 10.0


@dataclass
class FaultRecord:
    name: str
    at_delivery: int
    started: float  # seconds since the run's traffic began
    seconds: float
    note: str


@dataclass(frozen=True)
class Fault:
    name: str
    at: float  # share of the schedule delivered before it starts
    act: Callable[[], Coroutine[Any, Any, str]]


def plan(stack: Stack, domains: list[Domain], *, outage_seconds: float) -> list[Fault]:
    consumers = [s for d in domains for s in d.services]
    consumers = list(dict.fromkeys(consumers))
    queues = {s: [q.name for d in domains if s in d.services for q in d.queues] for s in consumers}

    async def restart_rabbit() -> str:
        await stack.rabbit.restart()
        return "node stopped (rabbitmqctl stop) and started again"

    def kill(service: str) -> Callable[[], Coroutine[Any, Any, str]]:
        async def act() -> str:
            # Frozen first, so the kill lands mid-batch even when the consumer
            # keeps up with the traffic: it holds its prefetched messages
            # unacked while a backlog builds behind it.
            victim = stack.processes[service][0]
            victim.freeze()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + KILL_BACKLOG_WAIT
            backlog = 0
            while loop.time() < deadline and backlog < KILL_BACKLOG:
                await asyncio.sleep(0.5)
                backlog = await stack.ready(queues[service])
            await victim.kill()
            await asyncio.sleep(1.0)
            await victim.start()
            return f"SIGKILL {victim.name} (frozen, {backlog} messages waiting); restarted"

        return act

    async def restart_postgres() -> str:
        await stack.postgres.restart()
        return "pg_ctl restart -m fast (every connection dropped)"

    async def broker_outage() -> str:
        stack.proxy.refuse()
        await asyncio.sleep(outage_seconds)
        stack.proxy.restore()
        return f"gateway cut from the broker for {outage_seconds:.0f}s"

    async def stop_a_node() -> str:
        # The last node: the gateway and the run's tools are on the first.
        node = stack.rabbits[-1]
        await node.stop()
        await asyncio.sleep(outage_seconds)
        await node.start()
        cluster = len(stack.rabbits)
        return f"node {node.node} of {cluster} stopped for {outage_seconds:.0f}s, started again"

    faults = [
        Fault("stop one RabbitMQ node", 0.10, stop_a_node)
        if len(stack.rabbits) > 1
        else Fault("restart RabbitMQ", 0.10, restart_rabbit)
    ]
    for n, service in enumerate(consumers):
        share = 0.20 + 0.30 * n / max(1, len(consumers))
        faults.append(Fault(f"SIGKILL {service}", share, kill(service)))
    faults.append(Fault("restart Postgres", 0.55, restart_postgres))
    faults.append(Fault("gateway's broker down", 0.75, broker_outage))
    return faults


async def run_faults(faults: list[Fault], sender: Sender, t0: float) -> list[FaultRecord]:
    gates = [(f, int(f.at * sender.total), *sender.gate(int(f.at * sender.total))) for f in faults]
    records: list[FaultRecord] = []
    for fault, index, reached, release in gates:
        await reached.wait()
        started = time.monotonic()
        task = asyncio.create_task(fault.act())
        # Traffic goes on while the fault happens.
        await asyncio.sleep(0.2)
        release.set()
        note = await task
        records.append(
            FaultRecord(fault.name, index, started - t0, time.monotonic() - started, note)
        )
        print(f"  fault: {fault.name} at delivery {index}: {note}", flush=True)
    return records
