"""Credit spends per second through the gateway, with the ledger checked after.

``make bench`` runs this after the webhook and pipeline benchmarks. One
gateway and one credits process, as ``python -m services.<name>`` runs them,
against a database of its own, ``billing_bench_credits`` (its schema is reset
each run). wrk (64 connections by default) sends ``POST /v1/credits/spend``
with a member token and a fresh Idempotency-Key per request, in two
scenarios each round:

* ``spread``: each request for the next of 10,000 accounts, round-robin;
* ``hot``: every request for one account (they all queue on its row lock).

After every round the database must show no overdraft and a reconciled
ledger: no negative balance, and for every account balance = sum of its
entries = sum of what its grants hold; and every 2xx wrk counted is a
recorded spend (beyond them, only the requests wrk cut off as it stopped).
The report gives min / median / max over the rounds of spends/s, p50, p99
and CPU per spend of each process, and checks the targets against the
medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import jwt

from bench.webhooks import ROOT, Spread, cpu_seconds, free_port, run_wrk, start, wait_ready
from bench.wrk_result import WrkResult

TARGETS = {"spread": 3_000.0, "hot": 1_000.0}
TARGET_P99_MS = 50.0
ACCOUNTS = 10_000
HOT_ACCOUNT = "bench-hot"
CREDIT_TYPE = "meeting_room_hours"
# Plenty for any run: a refusal is cheaper than a spend and would flatter the figure.
GRANT_PER_ACCOUNT = 1_000_000
DEFAULT_ROUNDS = 3

_LUA = """
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  n = 0
end
function request()
  n = n + 1
  local account = ((n * 64 + id * 7919) % #tokens) + 1
  return wrk.format("POST", "/v1/credits/spend", {
    ["Host"] = host,
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tokens[account],
    ["Idempotency-Key"] = run .. "-" .. id .. "-" .. n,
  }, body)
end
"""


@dataclass(frozen=True)
class Round:
    scenario: str
    result: WrkResult
    spends_recorded: int
    reconciled: bool
    overdrafts: int
    # CPU time of each process per answered request, in microseconds.
    cpu_us: dict[str, float]


def write_script(path: Path, *, tokens: list[str], run_id: str, host: str) -> None:
    body = json.dumps({"credit_type": CREDIT_TYPE, "amount": 1, "reference": "bench"})
    lines = [
        f"host = {json.dumps(host)}",
        f"run = {json.dumps(run_id)}",
        f"body = {json.dumps(body)}",
        "tokens = {",
        *(f'"{t}",' for t in tokens),
        "}",
        _LUA,
    ]
    path.write_text("\n".join(lines))


def token(secret: str, user_id: str) -> str:
    return jwt.encode(
        {"sub": user_id, "role": "member", "exp": int(time.time()) + 3600},
        secret,
        algorithm="HS256",
    )


async def reset(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS credits CASCADE")
    finally:
        await conn.close()


async def seed(dsn: str, users: list[str]) -> None:
    """One never-expiring grant per account, written as the ledger writes one."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "credits"})
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO balances (user_id, credit_type, balance)"
                " SELECT u, $2, $3 FROM unnest($1::text[]) AS u",
                users,
                CREDIT_TYPE,
                GRANT_PER_ACCOUNT,
            )
            await conn.execute(
                """
                WITH made AS (
                    INSERT INTO grants (grant_key, user_id, credit_type, source, amount,
                                        remaining, priority, granted_at)
                    SELECT 'bench:' || u, u, $2, 'admin', $3, $3, 20, now()
                    FROM unnest($1::text[]) AS u
                    RETURNING id, user_id, amount, granted_at
                )
                INSERT INTO entries (user_id, credit_type, grant_id, kind, amount, at)
                SELECT user_id, $2, id, 'grant', amount, granted_at FROM made
                """,
                users,
                CREDIT_TYPE,
                GRANT_PER_ACCOUNT,
            )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def audit(dsn: str) -> dict[str, int]:
    """Spends recorded, accounts whose three sums disagree, negative balances."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "credits"})
    try:
        row = await conn.fetchrow(
            """
            WITH e AS (SELECT user_id, credit_type, sum(amount) AS s FROM entries
                       GROUP BY 1, 2),
                 g AS (SELECT user_id, credit_type, sum(remaining) AS s FROM grants
                       GROUP BY 1, 2)
            SELECT
              (SELECT count(*) FROM spends) AS spends,
              (SELECT count(*) FROM balances b
                 LEFT JOIN e USING (user_id, credit_type)
                 LEFT JOIN g USING (user_id, credit_type)
               WHERE b.balance IS DISTINCT FROM e.s OR b.balance IS DISTINCT FROM g.s)
                 AS unreconciled,
              (SELECT count(*) FROM balances WHERE balance < 0) AS negative,
              (SELECT count(*) FROM grants WHERE remaining < 0) AS negative_grants
            """
        )
        assert row is not None
        return dict(row)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--accounts", type=int, default=ACCOUNTS)
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_CREDITS_DATABASE_URL",
            "postgresql://postgres@127.0.0.1:5432/billing_bench_credits",
        ),
    )
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/billing_bench"),
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "credits.json")
    args = parser.parse_args()

    jwt_secret, service_token = secrets.token_hex(32), secrets.token_hex(32)
    gateway_port, credits_port = free_port(), free_port()
    asyncio.run(reset(args.database_url))
    common = {
        "DATABASE_URL": args.database_url,
        "AMQP_URL": args.amqp_url,
        "SERVICE_TOKEN": service_token,
        "LOG_LEVEL": "WARNING",
    }
    credits = start(
        [sys.executable, "-m", "services.credits"],
        {**common, "CREDITS_PORT": str(credits_port), "DB_POOL_MAX": "20"},
    )
    gateway = start(
        [sys.executable, "-m", "services.gateway"],
        {
            **common,
            "GATEWAY_PORT": str(gateway_port),
            "CREDITS_URL": f"http://127.0.0.1:{credits_port}",
            "JWT_SECRET": jwt_secret,
            "STRIPE_WEBHOOK_SECRETS": f"whsec_{secrets.token_hex(16)}",
            # Limits count per member: the hot account alone sends thousands a
            # second. A one-second window keeps the in-memory moving window
            # short (a minute's window holds every hit of the last minute, and
            # the gateway walks it on each request).
            "RATE_LIMIT_MEMBER": "1000000/second",
        },
    )
    processes = {"gateway": gateway, "credits": credits}
    url = f"http://127.0.0.1:{gateway_port}"
    rounds: list[Round] = []
    try:
        wait_ready(f"http://127.0.0.1:{credits_port}/readyz", timeout=60)
        wait_ready(f"{url}/readyz")
        users = [f"bench-{n:05d}" for n in range(args.accounts)]
        asyncio.run(seed(args.database_url, [*users, HOT_ACCOUNT]))
        tokens = {
            "spread": [token(jwt_secret, u) for u in users],
            "hot": [token(jwt_secret, HOT_ACCOUNT)],
        }
        (ROOT / ".bench").mkdir(exist_ok=True)
        for n in range(args.rounds):
            # Alternate the order: drift on a shared machine hits both alike.
            order = ["spread", "hot"] if n % 2 == 0 else ["hot", "spread"]
            for scenario in order:
                before = asyncio.run(audit(args.database_url))
                cpu_before = {name: cpu_seconds(p.pid) for name, p in processes.items()}
                script = ROOT / ".bench" / f"credits-{scenario}.lua"
                write_script(
                    script,
                    tokens=tokens[scenario],
                    run_id=f"r{n}{scenario}{secrets.token_hex(4)}",
                    host=f"127.0.0.1:{gateway_port}",
                )
                result = run_wrk(url, script, args)
                cpu = {
                    name: (cpu_seconds(p.pid) - cpu_before[name]) * 1e6 / max(result.requests, 1)
                    for name, p in processes.items()
                }
                time.sleep(1.0)  # requests wrk cut off at the end finish first
                after = asyncio.run(audit(args.database_url))
                recorded = after["spends"] - before["spends"]
                rounds.append(
                    Round(
                        scenario=scenario,
                        result=result,
                        spends_recorded=recorded,
                        reconciled=after["unreconciled"] == 0,
                        overdrafts=after["negative"] + after["negative_grants"],
                        cpu_us=cpu,
                    )
                )
                print(
                    f"round {n + 1} {scenario:6}: {result.requests_per_second:8.0f} spends/s"
                    f"  p50 {result.p50_ms:6.1f} ms  p99 {result.p99_ms:6.1f} ms"
                    f"  non-2xx {result.non_2xx}  recorded {recorded}/{result.requests}"
                    f"  reconciled {after['unreconciled'] == 0}"
                    f"  cpu/req gateway {cpu['gateway']:.0f} us credits {cpu['credits']:.0f} us",
                    flush=True,
                )
    finally:
        for process in (gateway, credits):
            process.terminate()
        for process in (gateway, credits):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    report(rounds, args)


def report(rounds: list[Round], args: argparse.Namespace) -> None:
    summary: dict[str, Any] = {
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "accounts": args.accounts,
    }
    ok = True
    print(
        f"\ncredits spend, {args.connections} connections, {args.rounds} rounds x {args.duration} s"
    )
    print("                    spends/s (min / median / max)     p99 ms (min / median / max)")
    for scenario in ("spread", "hot"):
        mine = [r for r in rounds if r.scenario == scenario]
        rate = Spread.of([r.result.requests_per_second for r in mine])
        p50 = Spread.of([r.result.p50_ms for r in mine])
        p99 = Spread.of([r.result.p99_ms for r in mine])
        # Every 2xx is a recorded spend; beyond them only the requests wrk cut
        # off when it stopped (at most one per connection); nothing negative;
        # the sums agree.
        sound = all(
            r.reconciled
            and r.overdrafts == 0
            and r.result.non_2xx == 0
            and r.result.requests <= r.spends_recorded <= r.result.requests + args.connections
            for r in mine
        )
        meets = rate.median >= TARGETS[scenario] and p99.median <= TARGET_P99_MS
        ok = ok and sound
        print(
            f"  {scenario:6} {rate.format(0):>34}   {p99.format(1):>26}"
            f"   target {TARGETS[scenario]:.0f}/s p99<={TARGET_P99_MS:.0f}:"
            f" {'met' if meets else 'NOT met'}; ledger {'sound' if sound else 'BROKEN'}"
        )
        summary[scenario] = {
            "spends_per_second": asdict(rate),
            "p50_ms": asdict(p50),
            "p99_ms": asdict(p99),
            "target_spends_per_second": TARGETS[scenario],
            "target_p99_ms": TARGET_P99_MS,
            "target_met": meets,
            "ledger_sound": sound,
            "cpu_us_per_request": {
                name: asdict(Spread.of([r.cpu_us[name] for r in mine]))
                for name in ("gateway", "credits")
            },
            "rounds": [
                {
                    **asdict(r.result),
                    "spends_recorded": r.spends_recorded,
                    "reconciled": r.reconciled,
                    "overdrafts": r.overdrafts,
                }
                for r in mine
            ],
        }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"report: {args.out}")
    if not ok:
        raise SystemExit("the ledger did not reconcile after a run")


if __name__ == "__main__":
    main()
