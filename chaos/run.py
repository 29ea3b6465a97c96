"""A chaos run and the scale-out proof, from start to report."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from chaos.calls import CallStats, run_calls
from chaos.domain import Domain, World
from chaos.domains import all_domains
from chaos.faults import FaultRecord, plan, run_faults
from chaos.infra import remove_tree
from chaos.sender import Sender, SendStats
from chaos.stack import WEBHOOK_SECRET, Stack
from chaos.traffic import Schedule, build_world, schedule
from chaos.verify import Check, Observed, settle, verify


@dataclass(frozen=True)
class Config:
    events: int
    customers: int
    seed: int
    replicas: int
    concurrency: int
    outage_seconds: float
    settle_timeout: float
    keep: bool
    rabbit_nodes: int = 1

    @classmethod
    def from_env(cls) -> Config:
        events = int(os.environ.get("CHAOS_EVENTS", "50000"))
        return cls(
            events=events,
            customers=int(os.environ.get("CHAOS_CUSTOMERS", str(max(1, events // 10)))),
            seed=int(os.environ.get("CHAOS_SEED", "12")),
            replicas=int(os.environ.get("CHAOS_REPLICAS", "1")),
            concurrency=int(os.environ.get("CHAOS_CONCURRENCY", "16")),
            outage_seconds=float(os.environ.get("CHAOS_OUTAGE_SECONDS", "20")),
            settle_timeout=float(os.environ.get("CHAOS_SETTLE_TIMEOUT", "1200")),
            keep=os.environ.get("CHAOS_KEEP") == "1",
            rabbit_nodes=int(os.environ.get("CHAOS_RABBIT_NODES", "1")),
        )


@dataclass
class Outcome:
    replicas: int
    checks: list[Check]
    observed: Observed
    stats: SendStats
    faults: list[FaultRecord]
    seconds: float  # first delivery to settled
    drain_seconds: float = 0.0  # scale runs: consumers started to settled
    consumed: int = 0  # scale runs: messages the consumers took
    calls: CallStats | None = None  # the members' API calls, before and after the traffic

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def _workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="chaos-"))
    path.chmod(0o755)  # the servers run as their own users
    return path


def traffic(config: Config, domains: list[Domain]) -> tuple[World, Schedule]:
    world = build_world(domains, events=config.events, customers=config.customers, seed=config.seed)
    return world, schedule(world, seed=config.seed)


async def _with_stack(
    replicas: int, config: Config, body: Callable[[Stack], Awaitable[Outcome]]
) -> Outcome:
    workdir = _workdir()
    stack = Stack(workdir, replicas=replicas, rabbit_nodes=config.rabbit_nodes)
    print(f"  work directory {workdir} (logs in {stack.logs})", flush=True)
    try:
        await stack.start_infrastructure()
        await stack.start_services()
        return await body(stack)
    finally:
        with contextlib.suppress(Exception):
            await stack.stop()
        if not config.keep:
            remove_tree(workdir / "postgres")
            remove_tree(workdir / "rabbitmq")


async def chaos_run(config: Config) -> Outcome:
    """Every delivery through the gateway while the faults happen, then the comparison."""
    domains = all_domains()
    world, plan_of_delivery = traffic(config, domains)
    _print_traffic(world, plan_of_delivery)

    async def body(stack: Stack) -> Outcome:
        sender = Sender(
            plan_of_delivery.deliveries,
            url=f"{stack.gateway_url}/webhooks/stripe",
            secret=WEBHOOK_SECRET,
            concurrency=config.concurrency,
            seed=config.seed,
        )
        before = await _members_calls(stack, world, domains, config, before_traffic=True)
        faults = plan(stack, domains, outage_seconds=config.outage_seconds)
        t0 = time.monotonic()
        async with asyncio.TaskGroup() as group:
            sending = group.create_task(sender.run())
            faulting = group.create_task(run_faults(faults, sender, t0))
        stats, records = sending.result(), faulting.result()
        print(f"  sent in {stats.seconds:.0f}s; waiting for the consumers", flush=True)
        settled = await settle(stack, within=config.settle_timeout)
        calls = await _members_calls(stack, world, domains, config)
        calls.add(before)
        checks, observed = await verify(
            stack, world, domains, stats, len(plan_of_delivery.deliveries), calls=calls
        )
        return Outcome(stack.replicas, checks, observed, stats, records, settled - t0, calls=calls)

    return await _with_stack(config.replicas, config, body)


async def scale_run(config: Config, replicas: int) -> Outcome:
    """The same traffic without faults, queued first, then drained by ``replicas``
    processes of every consumer service: the consumers' rate, undisturbed."""
    domains = all_domains()
    world, plan_of_delivery = traffic(config, domains)
    consumers = tuple(dict.fromkeys(s for d in domains for s in d.services))

    async def body(stack: Stack) -> Outcome:
        # The queues exist (declared by the first start); now nobody takes.
        before = await _members_calls(stack, world, domains, config, before_traffic=True)
        await stack.stop_consumers(consumers)
        sender = Sender(
            plan_of_delivery.deliveries,
            url=f"{stack.gateway_url}/webhooks/stripe",
            secret=WEBHOOK_SECRET,
            concurrency=config.concurrency,
            seed=config.seed,
        )
        t0 = time.monotonic()
        stats = await sender.run()
        depths = await _waiting(stack, domains)
        started = time.monotonic()
        await stack.start_consumers(consumers)
        settled = await settle(stack, within=config.settle_timeout)
        calls = await _members_calls(stack, world, domains, config)
        calls.add(before)
        checks, observed = await verify(
            stack, world, domains, stats, len(plan_of_delivery.deliveries), calls=calls
        )
        return Outcome(
            stack.replicas,
            checks,
            observed,
            stats,
            [],
            settled - t0,
            drain_seconds=settled - started,
            consumed=depths,
            calls=calls,
        )

    return await _with_stack(replicas, config, body)


async def _members_calls(
    stack: Stack,
    world: World,
    domains: list[Domain],
    config: Config,
    *,
    before_traffic: bool = False,
) -> CallStats:
    """The members' calls: payments started before the traffic (their events
    then refer to them), credit spends once every event is applied (what they
    find is then the model's, whatever order the events came in)."""
    calls = [c for d in domains for c in d.api_calls(world) if c.before_traffic is before_traffic]
    if not calls:
        return CallStats()
    stats = await run_calls(
        calls,
        gateway_url=stack.gateway_url,
        jwt_secret=stack.jwt_secret,
        concurrency=config.concurrency,
    )
    when = "before the traffic" if before_traffic else "once the events were applied"
    print(f"  {stats.calls} members' API calls {when} in {stats.seconds:.0f}s", flush=True)
    for domain in domains:
        domain.answered(stats.bodies)
    # Whatever the calls published is applied before going on.
    await settle(stack, within=config.settle_timeout)
    return stats


async def _waiting(stack: Stack, domains: list[Domain]) -> int:
    """Messages waiting in the consumers' queues."""
    return await stack.ready([q.name for d in domains for q in d.queues])


def _print_traffic(world: World, plan_of_delivery: Schedule) -> None:
    types: dict[str, int] = {}
    for event in world.events:
        types[event.type] = types.get(event.type, 0) + 1
    print(
        f"  {len(world.events)} events for {len(world.customers)} customers;"
        f" {len(plan_of_delivery.deliveries)} deliveries"
        f" ({plan_of_delivery.duplicates} duplicates,"
        f" {plan_of_delivery.out_of_order} out of order)",
        flush=True,
    )
    for name, count in sorted(types.items()):
        print(f"    {name:40s} {count:>7}", flush=True)
