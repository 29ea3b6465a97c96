"""Stripe events applied end to end: signed webhook -> gateway -> RabbitMQ ->
subscriptions state committed and its domain events relayed.

``make bench`` runs this after the gateway benchmark. It starts a gateway and
a subscriptions service of their own (own database schema, own vhost), then:

1. **throughput**: the events of 10,000 subscriptions (created, first invoice
   drafted, finalized and paid, activated; some renewed, some set to cancel,
   some deleted), 10% of them delivered twice and the whole stream shuffled,
   sent by 64 connections as fast as the gateway takes them. The rate is the
   deliveries answered 200 divided by the time from the first send until the
   last event was applied and every domain event relayed;
2. **the same with 200,000 stored rows**: the service's tables are grown to
   200,000 subscriptions (rows copied under new ids), and a fresh stream of
   10,000 subscriptions is measured again: the rate must stay within 15%;
3. **latency at 1,000 events/s**: an open-loop sender at a fixed rate, and per
   event the time from the gateway's 200 to the commit of the transaction that
   applied it (``pg_xact_commit_timestamp`` when the server tracks commit
   times, else the start of that transaction, which the report says).

After each phase the state is checked: every event the service's queue is
bound to is in its inbox exactly once (zero lost, duplicates absorbed), every
subscription and invoice holds the newest event's status, and the outbox has
nothing left to relay. Any difference ends the run with a non-zero status.
Each phase runs ``--rounds`` times; the report gives min / median / max.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import secrets
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import stripe

from bench.webhooks import ROOT, Spread, free_port, start, wait_ready

SCHEMA = "subscriptions"
QUEUE = "subscriptions.stripe-events"
DOMAIN_SINK = "bench.billing-events"
TARGET_RATE = 2_000
TARGET_P99_MS = 250.0
TARGET_FLATNESS = 0.15
DAY = 86_400


@dataclass
class Stream:
    """The deliveries of one phase, and what the state must be after them."""

    deliveries: list[tuple[str, str, bytes]] = field(default_factory=list)  # id, type, body
    newest_subscription_status: dict[str, str] = field(default_factory=dict)
    newest_invoice_status: dict[str, str] = field(default_factory=dict)

    @property
    def event_types(self) -> dict[str, str]:
        return {event_id: event_type for event_id, event_type, _ in self.deliveries}


class Generator:
    """Stripe-shaped events for many subscriptions, from Stripe's own fixtures."""

    def __init__(self, fixtures: Path, seed: int) -> None:
        resources = json.loads(fixtures.read_text())["resources"]
        self._subscription = resources["subscription"]
        self._invoice = resources["invoice"]
        self._event = resources["event"]
        self._rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
        self._run = secrets.token_hex(3)
        self._serial = 0

    def _id(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}_b{self._run}{self._serial:08d}"

    def _envelope(self, event_type: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
        evt = dict(self._event)
        evt.update(
            id=self._id("evt"),
            type=event_type,
            created=created,
            api_version=stripe.api_version,
            data={"object": obj},
            request={"id": None, "idempotency_key": None},
        )
        return evt

    @staticmethod
    def _metadata(customer: str) -> dict[str, str]:
        """What the product puts on every subscription it creates (and Stripe
        repeats on its invoices): the member and the plan."""
        return {"user_id": f"user_{customer}", "plan": "hot_desk", "interval": "month"}

    def _sub(
        self, sub_id: str, customer: str, status: str, period: tuple[int, int], **kw: Any
    ) -> Any:
        obj = json.loads(json.dumps(self._subscription))
        obj.update(id=sub_id, customer=customer, status=status, metadata=self._metadata(customer))
        obj.update(**kw)
        item = obj["items"]["data"][0]
        item["price"]["id"] = "price_bench_monthly"
        item["price"]["lookup_key"] = "hot_desk_monthly"
        item["current_period_start"], item["current_period_end"] = period
        return obj

    def _inv(  # noqa: PLR0917 - an invoice's fields, in Stripe's order
        self,
        inv_id: str,
        customer: str,
        sub_id: str,
        status: str,
        period: tuple[int, int],
        reason: str,
    ) -> Any:
        obj = json.loads(json.dumps(self._invoice))
        paid = status == "paid"
        obj.update(
            id=inv_id,
            customer=customer,
            status=status,
            subscription=sub_id,
            amount_due=4_900,
            amount_paid=4_900 if paid else 0,
            amount_remaining=0 if paid else 4_900,
            currency="eur",
            period_start=period[0],
            period_end=period[1],
            billing_reason=reason,
            attempt_count=1 if status != "draft" else 0,
            attempted=status != "draft",
            test_clock=None,
        )
        obj["parent"] = {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": self._metadata(customer), "subscription": sub_id},
        }
        return obj

    def lifecycle(self, now: int) -> Iterator[tuple[dict[str, Any], str, str]]:
        """One subscription's events: (event, kind, object id), oldest first.

        Every event of one object has its own second, as on Stripe when the
        changes are apart; same-second ties are the ordering tests' business.
        """
        sub_id, customer = self._id("sub"), self._id("cus")
        t = now - 40 * DAY + self._rng.randrange(DAY)
        period = (t, t + 30 * DAY)
        invoice = self._id("in")

        def sub(
            event_type: str, status: str, per: tuple[int, int], created: int, **fields: Any
        ) -> tuple[dict[str, Any], str, str]:
            obj = self._sub(sub_id, customer, status, per, **fields)
            return self._envelope(event_type, obj, created), "sub", sub_id

        def inv(
            event_type: str, inv_id: str, status: str, per: tuple[int, int], created: int
        ) -> tuple[dict[str, Any], str, str]:
            reason = "subscription_create" if per == period else "subscription_cycle"
            obj = self._inv(inv_id, customer, sub_id, status, per, reason)
            return self._envelope(event_type, obj, created), "inv", inv_id

        yield sub("customer.subscription.created", "incomplete", period, t)
        yield inv("invoice.created", invoice, "draft", period, t)
        yield inv("invoice.finalized", invoice, "open", period, t + 1)
        yield inv("invoice.paid", invoice, "paid", period, t + 2)
        yield sub("customer.subscription.updated", "active", period, t + 2)
        roll = self._rng.random()
        if roll < 0.3:  # renewed once
            t2 = period[1]
            period2 = (t2, t2 + 30 * DAY)
            yield inv("invoice.paid", self._id("in"), "paid", period2, t2 + 3600)
            yield sub("customer.subscription.updated", "active", period2, t2 + 3601)
        elif roll < 0.4:  # set to cancel, then ended
            yield sub(
                "customer.subscription.updated", "active", period, t + 10, cancel_at_period_end=True
            )
            yield sub(
                "customer.subscription.deleted",
                "canceled",
                period,
                period[1],
                canceled_at=period[1],
                ended_at=period[1],
            )

    def stream(self, subscriptions: int, duplicate_share: float, now: int) -> Stream:
        out = Stream()
        events: list[dict[str, Any]] = []
        for _ in range(subscriptions):
            for evt, kind, object_id in self.lifecycle(now):
                events.append(evt)
                status = evt["data"]["object"]["status"]
                target = (
                    out.newest_subscription_status if kind == "sub" else out.newest_invoice_status
                )
                target[object_id] = status  # oldest first: the last one written is the newest
        duplicates = self._rng.sample(events, int(len(events) * duplicate_share))
        events += duplicates
        self._rng.shuffle(events)
        out.deliveries = [
            (e["id"], e["type"], json.dumps(e, separators=(",", ":")).encode()) for e in events
        ]
        return out


@dataclass(frozen=True)
class Sent:
    answered: dict[str, float]  # event id -> time of its (last) 200
    seconds: float
    retried: int


async def send(
    gateway: str,
    secret: str,
    stream: Stream,
    *,
    connections: int,
    rate: float | None = None,
) -> Sent:
    """POST every delivery, Stripe-style: a non-2xx is delivered again."""
    answered: dict[str, float] = {}
    retried = 0
    queue: asyncio.Queue[tuple[int, tuple[str, str, bytes]]] = asyncio.Queue()
    for index, delivery in enumerate(stream.deliveries):
        queue.put_nowait((index, delivery))
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=connections)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal retried
        while True:
            try:
                index, (event_id, _, body) = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if rate is not None:
                due = started + index / rate
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
            while True:
                text = body.decode()
                signature = stripe.WebhookSignature.generate_signature_header(
                    text, secret, timestamp=int(time.time())
                )
                async with session.post(
                    f"{gateway}/webhooks/stripe",
                    data=body,
                    headers={"Content-Type": "application/json", "Stripe-Signature": signature},
                ) as response:
                    await response.read()
                    if response.status == 200:
                        answered[event_id] = time.time()
                        break
                retried += 1
                await asyncio.sleep(0.2)

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    return Sent(answered, time.monotonic() - started, retried)


def _topic_matches(pattern: str, key: str) -> bool:
    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] in ("*", k[0])) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


def bound_patterns(management: str, vhost: str) -> list[str]:
    """The routing keys the service's queue is bound to, as RabbitMQ has them."""
    parsed = urllib.parse.urlsplit(management)
    vhost_part = urllib.parse.quote(vhost, safe="")
    url = f"{parsed.scheme}://{parsed.hostname}:{parsed.port}/api/queues/{vhost_part}/{QUEUE}/bindings"
    request = urllib.request.Request(url)  # noqa: S310 - loopback management API
    token = base64.b64encode(f"{parsed.username}:{parsed.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return [b["routing_key"] for b in json.load(response) if b["source"]]


async def wait_applied(pool: asyncpg.Pool[Any], expected: set[str], within: float) -> float:
    """Until every expected event is in the inbox and the outbox is empty; the time it took."""
    started = time.monotonic()
    while True:
        applied = await pool.fetchval(
            "SELECT count(*) FROM inbox WHERE queue = $1 AND event_id = ANY($2::text[])",
            QUEUE,
            list(expected),
        )
        pending = await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        if applied == len(expected) and pending == 0:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise SystemExit(
                f"after {within:.0f} s: {applied} of {len(expected)} events applied, "
                f"{pending} domain events not relayed"
            )
        # Each poll looks up every expected id: polled faster, it would take
        # a noticeable share of the Postgres it measures.
        await asyncio.sleep(0.25)


async def check_state(pool: asyncpg.Pool[Any], stream: Stream, expected: set[str]) -> list[str]:
    """Differences between the service's state and the newest event per object."""
    problems: list[str] = []
    rows = await pool.fetch(
        "SELECT event_id FROM inbox WHERE queue = $1 AND event_id = ANY($2::text[])",
        QUEUE,
        list(expected),
    )
    if len(rows) != len(expected):
        problems.append(f"{len(expected) - len(rows)} events lost")
    subs = dict(
        await pool.fetch(
            "SELECT stripe_subscription_id, status FROM subscriptions"
            " WHERE stripe_subscription_id = ANY($1::text[])",
            list(stream.newest_subscription_status),
        )
    )
    wrong = [s for s, status in stream.newest_subscription_status.items() if subs.get(s) != status]
    if wrong:
        sample = [(s, subs.get(s), stream.newest_subscription_status[s]) for s in wrong[:3]]
        problems.append(
            f"{len(wrong)} subscriptions not in their newest state,"
            f" e.g. (id, held, newest) {sample}"
        )
    invoice_id = await _id_column(pool, "invoices")
    if invoice_id is not None and any(
        t.startswith("invoice.") for t in stream.event_types.values()
    ):
        invoices = dict(
            await pool.fetch(
                f"SELECT {invoice_id}, status FROM invoices WHERE {invoice_id} = ANY($1::text[])",  # noqa: S608 - a column name read from the catalog
                list(stream.newest_invoice_status),
            )
        )
        bound_invoices = [
            i for i, status in stream.newest_invoice_status.items() if invoices.get(i) != status
        ]
        if bound_invoices:
            problems.append(f"{len(bound_invoices)} invoices not in their newest state")
    return problems


async def _id_column(pool: asyncpg.Pool[Any], table: str) -> str | None:
    """The first primary-key column of a table of the service, if it has the table."""
    column: str | None = await pool.fetchval(
        """
        SELECT a.attname FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = to_regclass($1) AND i.indisprimary
        """,
        f"{SCHEMA}.{table}",
    )
    return column


async def grow(pool: asyncpg.Pool[Any], rows: int) -> dict[str, int]:
    """Copy the service's rows under new ids until ``subscriptions`` holds ``rows``.

    Every table keyed by a text id is grown by the same factor (subscriptions,
    invoices, their history, the inbox), so indexes are as deep as they would
    be after that many real events. A table whose other constraints refuse a
    copy is left as it is, and the report says so.
    """
    have = await pool.fetchval("SELECT count(*) FROM subscriptions")
    factor = max(0, -(-rows // max(have, 1)) - 1)
    grown: dict[str, int] = {}
    tables = await pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1 AND tablename NOT IN"
        " ('outbox', 'schema_migrations', 'idempotency_keys', 'audit_log')",
        SCHEMA,
    )
    for (table,) in tables:
        key = await pool.fetch(
            """
            SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
            FROM pg_index i JOIN pg_attribute a
              ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
            WHERE i.indrelid = to_regclass($1) AND i.indisprimary
            """,
            f"{SCHEMA}.{table}",
        )
        text_keys = [k["attname"] for k in key if k["type"] == "text"]
        if not text_keys or factor == 0:
            continue
        # Text columns of the other unique indexes (a payment's invoice_id)
        # get the copy's suffix too, or the copy would collide with its original.
        unique = {
            r["attname"]
            for r in await pool.fetch(
                """
                SELECT a.attname FROM pg_index i JOIN pg_attribute a
                  ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                WHERE i.indrelid = to_regclass($1) AND i.indisunique AND NOT i.indisprimary
                  AND format_type(a.atttypid, a.atttypmod) = 'text'
                """,
                f"{SCHEMA}.{table}",
            )
        }
        columns = [
            r["attname"]
            for r in await pool.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1)"
                " AND attnum > 0 AND NOT attisdropped AND attidentity = '' AND attgenerated = ''",
                f"{SCHEMA}.{table}",
            )
        ]
        suffixed = {text_keys[-1], *unique}
        select = ", ".join(f"{c} || '_g' || g" if c in suffixed else c for c in columns)
        try:
            status = await pool.execute(
                f"INSERT INTO {table} ({', '.join(columns)})"  # noqa: S608 - names from the catalog
                f" SELECT {select} FROM {table}, generate_series(1, $1) AS g",
                factor,
            )
            grown[table] = int(status.split()[-1])
        except asyncpg.PostgresError as exc:
            grown[table] = -1
            print(f"  {table} not grown: {exc}", file=sys.stderr)
    await pool.execute("ANALYZE")
    return grown


async def commit_latencies(pool: asyncpg.Pool[Any], sent: Sent) -> tuple[list[float], str]:
    tracked = await pool.fetchval("SELECT current_setting('track_commit_timestamp')") == "on"
    when = "pg_xact_commit_timestamp(xmin)" if tracked else "first_seen_at"
    rows = await pool.fetch(
        f"SELECT event_id, extract(epoch FROM {when})::float8 AS at FROM inbox"  # noqa: S608 - one of two fixed expressions
        " WHERE queue = $1 AND event_id = ANY($2::text[])",
        QUEUE,
        list(sent.answered),
    )
    latencies = [max(0.0, (r["at"] - sent.answered[r["event_id"]]) * 1000) for r in rows]
    return latencies, "commit" if tracked else "start of the applying transaction"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def reset(database_url: str, amqp_management: str, vhost: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for schema in (SCHEMA, "webhooks"):
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()
    parsed = urllib.parse.urlsplit(amqp_management)
    auth = {
        "Authorization": "Basic "
        + base64.b64encode(f"{parsed.username}:{parsed.password}".encode()).decode()
    }
    base = f"{parsed.scheme}://{parsed.hostname}:{parsed.port}/api"
    quoted = urllib.parse.quote(vhost, safe="")
    async with aiohttp.ClientSession(headers=auth) as session:
        async with session.delete(f"{base}/vhosts/{quoted}"):
            pass
        async with session.put(f"{base}/vhosts/{quoted}", json={}) as response:
            response.raise_for_status()
        async with session.put(
            f"{base}/permissions/{quoted}/{parsed.username}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        ) as response:
            response.raise_for_status()
        # The domain events' consumers (credits, retry...), as in production:
        # a sink bound to every type, so the relay's publishes are routed.
        for url, body in (
            (f"{base}/exchanges/{quoted}/billing.events", {"type": "topic", "durable": True}),
            (
                f"{base}/queues/{quoted}/{DOMAIN_SINK}",
                {"durable": True, "arguments": {"x-max-length": 100_000}},
            ),
        ):
            async with session.put(url, json=body) as response:
                response.raise_for_status()
        async with session.post(
            f"{base}/bindings/{quoted}/e/billing.events/q/{DOMAIN_SINK}", json={"routing_key": "#"}
        ) as response:
            response.raise_for_status()


async def phase(  # noqa: PLR0917 - one phase's whole configuration
    name: str,
    pool: asyncpg.Pool[Any],
    gen: Generator,
    args: argparse.Namespace,
    env: dict[str, str],
    patterns: list[str],
    *,
    rate: float | None = None,
    subscriptions: int,
) -> dict[str, Any]:
    stream = gen.stream(subscriptions, args.duplicates, int(time.time()))
    expected = {
        i for i, t in stream.event_types.items() if any(_topic_matches(p, t) for p in patterns)
    }
    started = time.monotonic()
    sent = await send(
        env["gateway"], env["secret"], stream, connections=args.connections, rate=rate
    )
    await wait_applied(pool, expected, within=600)
    elapsed = time.monotonic() - started
    problems = await check_state(pool, stream, expected)
    if problems:
        raise SystemExit(f"{name}: " + "; ".join(problems))
    result: dict[str, Any] = {
        "deliveries": len(stream.deliveries),
        "distinct_events_applied": len(expected),
        "events_per_second": len(stream.deliveries) / elapsed,
        "send_seconds": sent.seconds,
        "redelivered_after_non_2xx": sent.retried,
    }
    if rate is not None:
        latencies, measured_to = await commit_latencies(pool, sent)
        result.update(
            p50_ms=percentile(latencies, 0.5),
            p99_ms=percentile(latencies, 0.99),
            latency_to=measured_to,
            offered_rate=rate,
        )
    print(
        f"  {name}: {result['events_per_second']:7.0f} events/s"
        + (f"  p99 {result['p99_ms']:6.1f} ms" if rate is not None else "")
        + f"  ({len(stream.deliveries)} deliveries, {sent.retried} redelivered)",
        flush=True,
    )
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    secret = f"whsec_{secrets.token_hex(16)}"
    token = secrets.token_hex(32)
    await reset(args.database_url, args.amqp_management_url, args.vhost)
    amqp_url = f"{args.amqp_base}/{urllib.parse.quote(args.vhost, safe='')}"
    gateway_port, subs_port, ledger_port = free_port(), free_port(), free_port()
    common = {
        "AMQP_URL": amqp_url,
        "AMQP_MANAGEMENT_URL": args.amqp_management_url,
        "SERVICE_TOKEN": token,
        "LOG_LEVEL": "WARNING",
    }
    subscriptions = start(
        [sys.executable, "-m", "services.subscriptions"],
        {
            **common,
            "DATABASE_URL": args.database_url,
            "SUBSCRIPTIONS_PORT": str(subs_port),
            "DB_POOL_MAX": "20",
        },
    )
    # The ledger takes every event, as in production: without it an event no
    # domain service consumes would be unroutable and refused.
    ledger = start(
        [sys.executable, "-m", "services.webhooks"],
        {**common, "DATABASE_URL": args.database_url, "WEBHOOKS_PORT": str(ledger_port)},
    )
    gateway = start(
        [sys.executable, "-m", "services.gateway"],
        {
            **common,
            "GATEWAY_PORT": str(gateway_port),
            "STRIPE_WEBHOOK_SECRETS": secret,
            "JWT_SECRET": secrets.token_hex(32),
            "SUBSCRIPTIONS_URL": f"http://127.0.0.1:{subs_port}",
            "WEBHOOKS_URL": f"http://127.0.0.1:{ledger_port}",
        },
    )
    env = {"gateway": f"http://127.0.0.1:{gateway_port}", "secret": secret}
    report: dict[str, Any] = {}
    try:
        wait_ready(f"http://127.0.0.1:{subs_port}/readyz", timeout=60)
        wait_ready(f"http://127.0.0.1:{ledger_port}/readyz", timeout=60)
        wait_ready(f"{env['gateway']}/readyz", timeout=60)
        patterns = bound_patterns(args.amqp_management_url, args.vhost)
        pool = await asyncpg.create_pool(
            args.database_url, min_size=1, max_size=4, server_settings={"search_path": SCHEMA}
        )
        assert pool is not None
        gen = Generator(args.fixtures, seed=args.seed)
        small, large, latency = [], [], []
        async with pool:
            print(f"throughput with ~{args.subscriptions} subscriptions stored", flush=True)
            for n in range(args.rounds):
                small.append(
                    await phase(
                        f"round {n + 1}",
                        pool,
                        gen,
                        args,
                        env,
                        patterns,
                        subscriptions=args.subscriptions,
                    )
                )
            grown = await grow(pool, args.stored_rows)
            stored = await pool.fetchval("SELECT count(*) FROM subscriptions")
            print(f"throughput with {stored} subscriptions stored (grown: {grown})", flush=True)
            for n in range(args.rounds):
                large.append(
                    await phase(
                        f"round {n + 1}",
                        pool,
                        gen,
                        args,
                        env,
                        patterns,
                        subscriptions=args.subscriptions,
                    )
                )
            print(f"latency at {args.rate:.0f} events/s offered", flush=True)
            per_round = max(1, int(args.rate * args.latency_seconds / 6.2))
            for n in range(args.rounds):
                latency.append(
                    await phase(
                        f"round {n + 1}",
                        pool,
                        gen,
                        args,
                        env,
                        patterns,
                        rate=args.rate,
                        subscriptions=per_round,
                    )
                )
        report = {
            "patterns": patterns,
            "small": small,
            "large": large,
            "latency": latency,
            "stored_rows": stored,
        }
    finally:
        for process in (gateway, subscriptions, ledger):
            process.terminate()
            process.wait(timeout=30)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--stored-rows", type=int, default=200_000)
    parser.add_argument("--duplicates", type=float, default=0.10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=float, default=1_000.0)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/billing_bench"
        ),
    )
    parser.add_argument(
        "--amqp-base",
        default=os.environ.get("BENCH_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672"),
    )
    parser.add_argument("--vhost", default="billing_bench_pipeline")
    parser.add_argument(
        "--amqp-management-url",
        default=os.environ.get("BENCH_AMQP_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672"),
    )
    parser.add_argument(
        "--fixtures",
        type=Path,
        default=Path(
            os.environ.get("STRIPE_FIXTURES", ROOT.parent / "shared" / "stripe" / "fixtures3.json")
        ),
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "pipeline.json")
    args = parser.parse_args()

    report = asyncio.run(run(args))
    small_rate = Spread.of([r["events_per_second"] for r in report["small"]])
    large_rate = Spread.of([r["events_per_second"] for r in report["large"]])
    p99 = Spread.of([r["p99_ms"] for r in report["latency"]])
    drift = abs(large_rate.median - small_rate.median) / small_rate.median
    met = (
        small_rate.median >= TARGET_RATE
        and p99.median <= TARGET_P99_MS
        and drift <= TARGET_FLATNESS
    )
    report["summary"] = {
        "events_per_second_small": small_rate.__dict__,
        "events_per_second_large": large_rate.__dict__,
        "p99_ms_at_rate": p99.__dict__,
        "rate_change_small_to_large": drift,
        "latency_to": report["latency"][0]["latency_to"],
        "targets": {
            "rate": TARGET_RATE,
            "p99_ms": TARGET_P99_MS,
            "flatness": TARGET_FLATNESS,
            "met": met,
        },
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print()
    print(f"{args.rounds} rounds each; cells are min / median / max over the rounds")
    print(f"events/s, ~{args.subscriptions} subscriptions stored:  {small_rate.format(0)}")
    print(
        f"events/s, {report['stored_rows']} subscriptions stored: {large_rate.format(0)}"
        f"  (median change {drift:.1%})"
    )
    print(
        f"p99 ms at {args.rate:.0f} events/s, gateway 200 -> {report['summary']['latency_to']}:"
        f" {p99.format(1)}"
    )
    print(
        f"targets (medians): >= {TARGET_RATE}/s, p99 <= {TARGET_P99_MS:.0f} ms,"
        f" change <= {TARGET_FLATNESS:.0%}:"
        f" {'met' if met else 'NOT met'}"
    )
    print(f"full report: {args.out}")


if __name__ == "__main__":
    main()
