"""``python -m chaos [run|scale]`` (``make chaos``, ``make chaos-scale``).

``run``: the members' payments started through the API, then signed Stripe
events for every story, 10% delivered twice and 20% out of order, while
RabbitMQ restarts, each consumer service is SIGKILLed, Postgres restarts and
the gateway loses its broker for 20 s; then the members' credit spends
(some retried with the same Idempotency-Key), and every service's state is
compared with the reference model. ``scale``: the same
traffic drained by one, then two, replicas of every consumer service; both
must end in the same state, and the rates are compared.

Sizes and knobs from the environment: CHAOS_EVENTS (50000), CHAOS_CUSTOMERS
(events / 10), CHAOS_SEED, CHAOS_REPLICAS (run only; 1), CHAOS_CONCURRENCY
(16 deliveries at once), CHAOS_OUTAGE_SECONDS (20), CHAOS_SETTLE_TIMEOUT,
CHAOS_KEEP=1 (keep the data directories). Exits non-zero on any difference.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from chaos.run import Config, Outcome, chaos_run, scale_run
from chaos.verify import compare_runs


def report(title: str, outcome: Outcome) -> None:
    stats = outcome.stats
    print(f"\n== {title}: {'PASS' if outcome.ok else 'FAIL'}", flush=True)
    print(
        f"  deliveries accepted {stats.accepted}, attempts {stats.attempts},"
        f" delivered again after a 503 or connection error {stats.redelivered}",
        flush=True,
    )
    print("  answers: " + ", ".join(f"{k} x{v}" for k, v in stats.answers.most_common()))
    for fault in outcome.faults:
        print(
            f"  fault at {fault.started:6.1f}s for {fault.seconds:5.1f}s"
            f" (delivery {fault.at_delivery}): {fault.note}"
        )
    for check in outcome.checks:
        mark = "ok  " if check.ok else "FAIL"
        print(f"  {mark} {check.name:38s} {check.compared:>7} compared  {check.note}")
        for difference in check.differences:
            print(f"         {difference}")
    print(f"  traffic to settled: {outcome.seconds:.0f}s", flush=True)


async def main(command: str) -> int:
    # SIGTERM (and Ctrl-C) cancel the run, so its Postgres, RabbitMQ and
    # services are stopped on the way out rather than left running.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    config = Config.from_env()
    started = time.monotonic()
    if command == "run":
        print(f"chaos run: {config}", flush=True)
        outcome = await chaos_run(config)
        report(f"chaos run, {config.replicas} replica(s) per consumer service", outcome)
        print(f"total {time.monotonic() - started:.0f}s")
        return 0 if outcome.ok else 1
    if command == "scale":
        print(f"scale-out proof: {config}", flush=True)
        outcomes = []
        for replicas in (1, 2):
            print(f"\n-- {replicas} replica(s) per consumer service", flush=True)
            outcome = await scale_run(config, replicas)
            report(f"{replicas} replica(s)", outcome)
            outcomes.append(outcome)
        one, two = outcomes
        comparison = compare_runs(one.observed, two.observed)
        same = comparison.same
        print("\n== scale-out")
        print(f"  final state the same with one and two replicas: {same}")
        for domain, key in comparison.determined[:20]:
            print(
                f"    differs: {domain} {key}: one replica"
                f" {one.observed.states[domain].get(key)!r},"
                f" two {two.observed.states[domain].get(key)!r}"
            )
        if comparison.order_dependent:
            print(
                f"  {len(comparison.order_dependent)} order-dependent outcome(s) differ,"
                " each allowed by the model in both runs: "
                + ", ".join(f"{d} {k}" for d, k in comparison.order_dependent[:5])
            )
        for o in outcomes:
            rate = o.consumed / o.drain_seconds if o.drain_seconds else 0.0
            print(
                f"  {o.replicas} replica(s): {o.consumed} queued messages drained in"
                f" {o.drain_seconds:.1f}s = {rate:.0f} messages/s"
            )
        if one.drain_seconds and two.drain_seconds:
            print(f"  two replicas vs one: x{one.drain_seconds / two.drain_seconds:.2f}")
        print(f"total {time.monotonic() - started:.0f}s")
        return 0 if same and one.ok and two.ok else 1
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "run")))
