"""Webhook throughput of one gateway process, against a bare aiohttp ceiling.

``make bench`` runs this. Each round runs wrk (64 connections by default)
against a bare aiohttp handler that only answers 200 and against the gateway,
which verifies every signature and answers only after RabbitMQ confirmed the
event into a quorum queue. The order alternates between rounds so drift on a
shared machine hits both alike. The report gives, per variant, the spread over
the rounds (min / median / max of req/s, p50, p99 and CPU per request), not a
single best round, and the ratio of the medians measured in the same run;
the targets are checked against the medians.

Every 200 must be a confirmed message: after each gateway round the sink
queue's depth is checked against the 200s wrk counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import aio_pika

from bench.signed_requests import write_script
from bench.wrk_result import WrkResult

ROOT = Path(__file__).resolve().parents[1]
SINK_QUEUE = "bench.sink"
TARGET_RATE = 5_000
TARGET_P99_MS = 20.0
TARGET_RATIO = 0.15
DEFAULT_ROUNDS = 5


@dataclass(frozen=True)
class Round:
    target: str
    result: WrkResult
    cpu_us_per_request: float | None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback URL we built
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not become ready")
        time.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def sink(amqp_url: str, *, purge: bool) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            "stripe.events", aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(
            SINK_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchange, "#")
        depth = queue.declaration_result.message_count or 0
        if purge:
            await queue.purge()
        return depth


async def drop_sink(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(SINK_QUEUE)


def run_wrk(url: str, script: Path, args: argparse.Namespace) -> WrkResult:
    output = subprocess.run(  # noqa: S603 - fixed argv
        [  # noqa: S607 - wrk comes from the system package, found on PATH
            "wrk",
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{args.duration}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return WrkResult.parse(output)


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - fixed argv
        argv, env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.DEVNULL
    )


@dataclass(frozen=True)
class Spread:
    """One measure over the rounds: a single round says little on a shared machine."""

    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            return cls(float("nan"), float("nan"), float("nan"))
        return cls(min(values), statistics.median(values), max(values))

    def format(self, digits: int) -> str:
        return f"{self.min:.{digits}f} / {self.median:.{digits}f} / {self.max:.{digits}f}"


def summarise(rounds: list[Round], target: str) -> dict[str, Spread]:
    mine = [r for r in rounds if r.target == target]
    return {
        "requests_per_second": Spread.of([r.result.requests_per_second for r in mine]),
        "p50_ms": Spread.of([r.result.p50_ms for r in mine]),
        "p99_ms": Spread.of([r.result.p99_ms for r in mine]),
        "cpu_us_per_request": Spread.of(
            [r.cpu_us_per_request for r in mine if r.cpu_us_per_request is not None]
        ),
    }


def main() -> None:  # noqa: PLR0915 - a linear script reads best top to bottom
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--events", type=int, default=2_000)
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/billing_bench"),
    )
    parser.add_argument(
        "--fixtures",
        type=Path,
        default=Path(
            os.environ.get("STRIPE_FIXTURES", ROOT.parent / "shared" / "stripe" / "fixtures3.json")
        ),
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "webhooks.json")
    args = parser.parse_args()

    secret = f"whsec_{secrets.token_hex(16)}"
    gateway_port, bare_port = free_port(), free_port()
    asyncio.run(sink(args.amqp_url, purge=True))
    gateway = start(
        [sys.executable, "-m", "services.gateway"],
        {
            "AMQP_URL": args.amqp_url,
            "GATEWAY_PORT": str(gateway_port),
            "STRIPE_WEBHOOK_SECRETS": secret,
            "JWT_SECRET": secrets.token_hex(32),
            "SERVICE_TOKEN": secrets.token_hex(32),
            "LOG_LEVEL": "WARNING",
        },
    )
    bare = start([sys.executable, "-m", "bench.bare_server", "--port", str(bare_port)], {})
    pids = {"gateway": gateway.pid, "bare": bare.pid}
    urls = {"gateway": f"http://127.0.0.1:{gateway_port}", "bare": f"http://127.0.0.1:{bare_port}"}
    rounds: list[Round] = []
    try:
        wait_ready(f"{urls['gateway']}/readyz")
        time.sleep(0.5)  # the bare server has no readiness endpoint; give it its start-up
        script = ROOT / ".bench" / "webhooks.lua"
        script.parent.mkdir(exist_ok=True)
        for number in range(args.rounds):
            body_size = write_script(
                script,
                fixtures=args.fixtures,
                secret=secret,
                count=args.events,
                run_id=f"{number}{secrets.token_hex(3)}",
                host="127.0.0.1",
            )
            order = ["bare", "gateway"] if number % 2 == 0 else ["gateway", "bare"]
            for target in order:
                asyncio.run(sink(args.amqp_url, purge=True))
                cpu_before = cpu_seconds(pids[target])
                result = run_wrk(urls[target], script, args)
                cpu = cpu_seconds(pids[target]) - cpu_before
                rounds.append(Round(target, result, cpu / result.requests * 1e6))
                print(
                    f"round {number + 1} {target:8s} {result.requests_per_second:9.0f} req/s"
                    f"  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
                    f"  non-2xx {result.non_2xx}  socket errors {result.socket_errors}"
                    f"  cpu {cpu / result.requests * 1e6:5.0f} us/req",
                    flush=True,
                )
                if target == "gateway":
                    confirmed = asyncio.run(sink(args.amqp_url, purge=True))
                    answered = result.requests - result.non_2xx
                    if result.non_2xx or confirmed < answered:
                        raise SystemExit(
                            f"gateway answered {answered} x 200 but the queue holds {confirmed}"
                            f" ({result.non_2xx} non-2xx): a 200 without a confirmed message"
                        )
    finally:
        for process in (gateway, bare):
            process.terminate()
            process.wait(timeout=20)
        asyncio.run(drop_sink(args.amqp_url))

    gateway_summary, bare_summary = summarise(rounds, "gateway"), summarise(rounds, "bare")
    ratio = (
        gateway_summary["requests_per_second"].median / bare_summary["requests_per_second"].median
    )
    report = {
        "config": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "connections": args.connections,
            "wrk_threads": args.threads,
            "body_bytes": body_size,
            "cpus": os.cpu_count(),
        },
        "gateway": {name: asdict(spread) for name, spread in gateway_summary.items()},
        "bare_aiohttp": {name: asdict(spread) for name, spread in bare_summary.items()},
        "ratio_of_medians": ratio,
        "targets": {
            "rate": TARGET_RATE,
            "p99_ms": TARGET_P99_MS,
            "ratio": TARGET_RATIO,
            "checked_against": "medians",
            "met": gateway_summary["requests_per_second"].median >= TARGET_RATE
            and gateway_summary["p99_ms"].median <= TARGET_P99_MS
            and ratio >= TARGET_RATIO,
        },
        "rounds": [asdict(r) for r in rounds],
    }
    args.out.write_text(json.dumps(report, indent=2))
    print()
    print(
        f"{args.rounds} rounds of {args.duration} s, wrk -t{args.threads} -c{args.connections},"
        f" ~{body_size / 1024:.1f} KB bodies; each cell: min / median / max over the rounds"
    )
    print(f"{'':26s} {'req/s':>23s} {'p50 ms':>20s} {'p99 ms':>20s} {'cpu us/req':>17s}")
    for name, summary in (
        ("bare aiohttp (ceiling)", bare_summary),
        ("gateway (verify+confirm)", gateway_summary),
    ):
        print(
            f"{name:26s} {summary['requests_per_second'].format(0):>23s}"
            f" {summary['p50_ms'].format(1):>20s} {summary['p99_ms'].format(1):>20s}"
            f" {summary['cpu_us_per_request'].format(0):>17s}"
        )
    print(f"gateway / bare ratio of the medians: {ratio:.2f}")
    print(
        f"targets (medians): >= {TARGET_RATE}/s, p99 <= {TARGET_P99_MS} ms,"
        f" ratio >= {TARGET_RATIO}: {'met' if report['targets']['met'] else 'NOT met'}"
    )
    print(f"full report, every round: {args.out}")


if __name__ == "__main__":
    main()
