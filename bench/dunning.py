"""Dunning throughput: two retry replicas working a backlog against the sandbox.

``make bench`` runs this after the others (``make bench BENCH=dunning`` runs
it alone; options in ``BENCH_ARGS``). It loads ``--cases`` open dunning cases
(100,000 by default) into a
fresh ``retry`` schema, ``--due`` of them due now, each of those with an open
invoice in the Stripe sandbox (made in one step by the sandbox's
``open_invoices`` control; the rest are due tomorrow, so the scheduler works
against a table of the full size). Then two ``python -m services.retry``
processes start and the clock runs until every due case is closed.

``--subscribed`` makes the backlog's invoices renewals of one subscription
of the customer's (the sandbox's control takes it), as dunning meets them in
production: the re-read then carries the subscription's status too.

Reported: attempts per second, the Stripe calls per attempt (counted in the
sandbox's request log: the re-read and the payment), the CPU the sandbox, the
two replicas and the Postgres backends serving the bench's database took while
the clock ran (and each one's share), each replica's resident memory (peak
while working, and after), and the proof that no case was attempted twice:
every idempotency key reached the sandbox once, and every due case has exactly
one attempt.

``--source DIR`` runs the sandbox and the replicas from another checkout of
the project (say ``git worktree add --detach /tmp/base <commit>``) with this
harness, so an older commit is measured the same way, back to back, on the
same machine. ``--rounds N`` repeats the run and reports the median.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from bench.webhooks import free_port, wait_ready
from shared.migrations import SHARED_MIGRATIONS, migrate_database

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATE = 1_000
TARGET_RSS_MB = 150.0
SANDBOX_KEY = "sk_test_bench"
SANDBOX_ARGV = [sys.executable, "-m", "stripe_sandbox", "--smart-retries", "off"]


def pid_cpu_seconds(pid: int) -> float:
    """User plus system CPU of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PostgresCpu:
    """CPU of the Postgres backends serving one database (a local server only).

    Backends are sampled by pid from ``pg_stat_activity``; one that appears
    between two samples counts from zero, one that ends keeps its last sample.
    """

    def __init__(self) -> None:
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}

    async def sample(self, conn: asyncpg.Connection[Any]) -> None:
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        )
        for row in pids:
            pid = int(row["pid"])
            cpu = pid_cpu_seconds(pid)
            self._first.setdefault(pid, 0.0 if self._last else cpu)
            if cpu:
                self._last[pid] = cpu

    def seconds(self) -> float:
        return sum(self._last[p] - self._first.get(p, 0.0) for p in self._last)


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        return pid_cpu_seconds(self.process.pid)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start(name: str, argv: list[str], env: dict[str, str], log: Path, source: Path) -> Proc:
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            argv, cwd=source, env={**os.environ, **env}, stdout=out, stderr=out
        )
    return Proc(name, process)


async def _sandbox_json(url: str, method: str, path: str, body: Any = None, form: str = "") -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        if form:
            async with http.request(
                method,
                f"{url}{path}",
                data=form,
                headers={
                    "Authorization": f"Bearer {SANDBOX_KEY}",
                    "Content-Type": "application/x-www-form-urlencoded",
                },
            ) as response:
                return await response.json()
        async with http.request(method, f"{url}{path}", json=body) as response:
            return await response.json()


async def _subscription(sandbox: str, customer_id: str) -> str:
    product = await _sandbox_json(sandbox, "POST", "/v1/products", form="name=Bench+plan")
    price = await _sandbox_json(
        sandbox,
        "POST",
        "/v1/prices",
        form=f"product={product['id']}&unit_amount=1000&currency=usd&recurring[interval]=month",
    )
    sub = await _sandbox_json(
        sandbox,
        "POST",
        "/v1/subscriptions",
        form=f"customer={customer_id}&items[0][price]={price['id']}",
    )
    return str(sub["id"])


async def prepare(
    database_url: str, sandbox: str, cases: int, due: int, source: Path, *, subscribed: bool
) -> tuple[list[str], int]:
    """The backlog's open invoices, and how many requests the sandbox had logged then."""
    customer = await _sandbox_json(sandbox, "POST", "/v1/customers", form="email=bench@example.com")
    pm = await _sandbox_json(
        sandbox,
        "POST",
        "/v1/payment_methods/pm_card_visa/attach",
        form=f"customer={customer['id']}",
    )
    await _sandbox_json(
        sandbox,
        "POST",
        f"/v1/customers/{customer['id']}",
        form=f"invoice_settings[default_payment_method]={pm['id']}",
    )
    subscription = await _subscription(sandbox, customer["id"]) if subscribed else None
    bulk: dict[str, Any] = {"count": due, "amount": 1000}
    if subscription is not None:
        bulk["subscription"] = subscription
    made = await _sandbox_json(
        sandbox, "POST", f"/_sandbox/customers/{customer['id']}/open_invoices", bulk
    )
    if "data" not in made:
        raise SystemExit(f"the sandbox made no backlog: {made}")
    invoices: list[str] = made["data"]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS retry CASCADE")
        await migrate_database(
            database_url, "retry", source / "services/retry/migrations", shared=SHARED_MIGRATIONS
        )
        now = await conn.fetchval("SELECT now()")
        later = await conn.fetchval("SELECT now() + interval '1 day'")
        ids = invoices + [f"in_bench_later_{n}" for n in range(cases - due)]
        await conn.copy_records_to_table(
            "cases",
            schema_name="retry",
            columns=[
                "invoice_id",
                "customer_id",
                "subscription_id",
                "amount_due",
                "currency",
                "next_attempt_at",
                "opened_at",
                "updated_at",
            ],
            records=[
                (i, customer["id"], subscription, 1000, "usd", now if n < due else later, now, now)
                for n, i in enumerate(ids)
            ],
        )
    finally:
        await conn.close()
    logged = await _sandbox_json(sandbox, "GET", "/_sandbox/requests")
    return invoices, int(logged["count"])


async def attempts_per_case(database_url: str) -> Counter[int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT count(*) AS n FROM retry.attempts GROUP BY invoice_id")
        return Counter(r["n"] for r in rows)
    finally:
        await conn.close()


def _check_replicas(replicas: list[Proc], peak: list[float]) -> None:
    """Stop at once if a replica died; keep each one's peak resident memory."""
    for n, replica in enumerate(replicas):
        if replica.process.poll() is not None:
            raise SystemExit(f"{replica.name} exited; see .bench/dunning-retry-{n}.log")
        peak[n] = max(peak[n], replica.rss_mb())


def _replica_env(args: argparse.Namespace, sandbox_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": args.database_url,
        "AMQP_URL": args.amqp_url,
        "SERVICE_TOKEN": "bench-token",
        "STRIPE_API_BASE": sandbox_url,
        "STRIPE_SECRET_KEY": SANDBOX_KEY,
        "LOG_LEVEL": "WARNING",
        "DUNNING_BATCH_SIZE": str(args.batch),
        "DUNNING_POLL_SECONDS": "0.05",
        "DB_POOL_MAX": "10",
        "SMTP_PORT": str(free_port()),  # nobody: the backlog's cases have no email
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    logs = ROOT / ".bench"
    logs.mkdir(exist_ok=True)
    source = Path(args.source)
    sandbox_port = free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    sandbox = start(
        "sandbox",
        [*SANDBOX_ARGV, "--port", str(sandbox_port)],
        {},
        logs / "dunning-sandbox.log",
        source,
    )
    replicas: list[Proc] = []
    postgres = PostgresCpu()
    watch = await asyncpg.connect(args.database_url)
    try:
        wait_ready(f"{sandbox_url}/_sandbox/health")
        started = time.perf_counter()
        invoices, logged_before = await prepare(
            args.database_url, sandbox_url, args.cases, args.due, source, subscribed=args.subscribed
        )
        print(f"backlog ready in {time.perf_counter() - started:.1f}s", flush=True)
        env = _replica_env(args, sandbox_url)
        ports = [free_port() for _ in range(2)]
        for n, port in enumerate(ports):
            replicas.append(
                start(
                    f"retry-{n}",
                    [sys.executable, "-m", "services.retry"],
                    {**env, "RETRY_PORT": str(port)},
                    logs / f"dunning-retry-{n}.log",
                    source,
                )
            )
        began = time.perf_counter()
        peak = [0.0, 0.0]
        # The clock starts at the first closed case: start-up (migrations,
        # queue policies, connections) is not dunning throughput.
        first: tuple[float, int] | None = None
        sandbox_before = replicas_before = 0.0
        while True:
            done = int(
                await watch.fetchval("SELECT count(*) FROM retry.cases WHERE state <> 'open'")
            )
            if first is None and done:
                first = (time.perf_counter(), done)
                sandbox_before = sandbox.cpu_seconds()
                replicas_before = sum(r.cpu_seconds() for r in replicas)
            if first is not None:
                await postgres.sample(watch)
            _check_replicas(replicas, peak)
            if done >= args.due:
                break
            if time.perf_counter() - began > args.timeout:
                raise SystemExit(f"only {done} of {args.due} cases closed in {args.timeout}s")
            await asyncio.sleep(0.2)
        assert first is not None
        elapsed = time.perf_counter() - first[0]
        measured = args.due - first[1]
        sandbox_cpu = sandbox.cpu_seconds() - sandbox_before
        replica_cpu = sum(r.cpu_seconds() for r in replicas) - replicas_before
        postgres_cpu = postgres.seconds()
        for port in ports:
            wait_ready(f"http://127.0.0.1:{port}/readyz")
        rss_after = [r.rss_mb() for r in replicas]
        requests = await _sandbox_json(sandbox_url, "GET", "/_sandbox/requests")
        keys = Counter(
            r["idempotency_key"]
            for r in requests["data"]
            if r["method"] == "POST" and r["path"].startswith("/v1/invoices/")
        )
        per_case = await attempts_per_case(args.database_url)
    finally:
        await watch.close()
        for proc in (*replicas, sandbox):
            proc.stop()
    return _report(
        args,
        source=source,
        measured=measured,
        elapsed=elapsed,
        cpu={"sandbox": sandbox_cpu, "retry_replicas": replica_cpu, "postgres": postgres_cpu},
        peak=peak,
        rss_after=rss_after,
        keys=keys,
        per_case=per_case,
        invoices=len(invoices),
        # Every due case is attempted once (the report checks it): the /v1
        # requests made since the backlog was ready, per due case.
        calls_per_attempt=(int(requests["count"]) - logged_before) / args.due,
    )


def _report(
    args: argparse.Namespace,
    *,
    source: Path,
    measured: int,
    elapsed: float,
    cpu: dict[str, float],
    peak: list[float],
    rss_after: list[float],
    keys: Counter[str],
    per_case: Counter[int],
    invoices: int,
    calls_per_attempt: float,
) -> dict[str, Any]:
    rate = measured / elapsed if elapsed > 0 else 0.0
    total_cpu = sum(cpu.values()) or 1.0
    return {
        "source": str(source),
        "cases_open": args.cases,
        "cases_due": args.due,
        "attempts_measured": measured,
        "seconds": round(elapsed, 2),
        "attempts_per_second": round(rate, 1),
        "subscribed": args.subscribed,
        "stripe_calls_per_attempt": round(calls_per_attempt, 3),
        "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()},
        "cpu_ms_per_attempt": {k: round(1000 * v / max(measured, 1), 3) for k, v in cpu.items()},
        "cpu_share": {k: round(v / total_cpu, 2) for k, v in cpu.items()},
        "sandbox_cpu_share": round(cpu["sandbox"] / total_cpu, 2),
        "rss_mb_peak": [round(x, 1) for x in peak],
        "rss_mb_after": [round(x, 1) for x in rss_after],
        "keys_sent_twice": sum(1 for n in keys.values() if n > 1),
        "cases_with_more_than_one_attempt": sum(c for n, c in per_case.items() if n > 1),
        "charged": len(keys),
        "invoices": invoices,
        "targets": {
            "attempts_per_second": f">= {TARGET_RATE}",
            "rss_mb": f"< {TARGET_RSS_MB}",
        },
    }


def _median_report(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run (by attempts/s), with every run's rate and the medians of the costs."""
    ordered = sorted(runs, key=lambda r: float(r["attempts_per_second"]))
    report = dict(ordered[(len(ordered) - 1) // 2])
    report["rounds"] = len(runs)
    report["attempts_per_second_runs"] = [r["attempts_per_second"] for r in runs]
    report["attempts_per_second"] = round(
        statistics.median(float(r["attempts_per_second"]) for r in runs), 1
    )
    for field in ("cpu_ms_per_attempt", "cpu_share"):
        report[field] = {
            k: round(statistics.median(float(r[field][k]) for r in runs), 3) for k in runs[0][field]
        }
    report["rss_mb_peak_max"] = max(max(r["rss_mb_peak"]) for r in runs)
    report["keys_sent_twice"] = sum(int(r["keys_sent_twice"]) for r in runs)
    report["cases_with_more_than_one_attempt"] = sum(
        int(r["cases_with_more_than_one_attempt"]) for r in runs
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--subscribed",
        action="store_true",
        help="the backlog's invoices are renewals of a subscription (not one-off invoices)",
    )
    parser.add_argument(
        "--source",
        default=str(ROOT),
        help="checkout whose sandbox and retry service run (default: this one)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/billing_bench"
        ),
    )
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/billing_bench"),
    )
    # BENCH_ARGS go to every benchmark: options meant for another are ignored.
    args, ignored = parser.parse_known_args()
    if ignored:
        print(f"dunning bench ignores {ignored}", flush=True)
    args.source = str(Path(args.source).resolve())
    if not 0 < args.due <= args.cases:
        parser.error("--due must be between 1 and --cases")
    runs = []
    for n in range(max(1, args.rounds)):
        runs.append(asyncio.run(run(args)))
        if args.rounds > 1:
            print(f"round {n + 1}: {runs[-1]['attempts_per_second']} attempts/s", flush=True)
    report = _median_report(runs) if len(runs) > 1 else runs[0]
    print(json.dumps(report, indent=2))
    out = ROOT / ".bench" / "dunning.json"
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    with contextlib.suppress(Exception):
        print(f"report: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
