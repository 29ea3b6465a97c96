"""Dunning with real retry processes: two replicas never attempt one case
twice, and a replica SIGKILLed in the middle of an attempt charges no more
than once after a restart (proved from the sandbox's record of charges)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import stripe

from tests.retry.helpers import (
    attempts_of,
    case_in,
    fail_renewal,
    new_member,
    succeeded_charges,
)
from tests.support.processes import ServiceProcess
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack, start_stack
from tests.support.waiting import eventually

Replica = Callable[..., ServiceProcess]


@pytest.fixture
async def stack_without_scheduler(
    clean_state: None, sandbox: SandboxProcess, retry_settings: dict[str, Any]
) -> AsyncIterator[Stack]:
    """The product with an in-process retry service that makes no attempts: the
    replicas under test (real processes) do."""
    running = await start_stack(
        stripe_api_base=sandbox.url,
        retry={**retry_settings, "dunning_scheduler_enabled": False},
    )
    await sandbox.deliver_to(f"{running.gateway}/webhooks/stripe")
    yield running
    await running.stop()


@pytest.fixture
async def replica(
    tmp_path: Path, sandbox: SandboxProcess, retry_settings: dict[str, Any]
) -> AsyncIterator[Replica]:
    started: list[ServiceProcess] = []

    def make(**extra: str) -> ServiceProcess:
        environment = {key.upper(): str(value) for key, value in retry_settings.items()}
        environment.update(extra)
        process = ServiceProcess(
            "retry",
            tmp_path / f"retry-{len(started)}.log",
            STRIPE_API_BASE=sandbox.url,
            STRIPE_SECRET_KEY="sk_test_sandbox",
            # One case per claim: the replicas contend for every case.
            **{"DUNNING_BATCH_SIZE": "1", **environment},
        )
        started.append(process)
        return process

    yield make
    for process in started:
        await process.stop()


async def _pay_requests(sandbox: SandboxProcess, invoice_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in await sandbox.requests(f"/v1/invoices/{invoice_id}/pay", method="POST")
        if (r["idempotency_key"] or "").startswith("dunning-")
    ]


async def test_two_replicas_never_attempt_one_case_twice(
    stack_without_scheduler: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    replica: Replica,
) -> None:
    first, second = replica(), replica()
    await asyncio.gather(first.start(), second.start())
    members = [await new_member(stripe_client, f"m{i}@example.com") for i in range(6)]
    # Every case fails its first attempt and is recovered on its second.
    invoices = [
        await fail_renewal(stripe_client, sandbox, member, declines=2) for member in members
    ]

    for invoice_id in invoices:
        await case_in(db, invoice_id, "recovered", timeout=40)
    for invoice_id, member in zip(invoices, members, strict=True):
        attempts = await attempts_of(db, invoice_id)
        assert [a["outcome"] for a in attempts] == ["failed", "succeeded"]
        keys = Counter(r["idempotency_key"] for r in await _pay_requests(sandbox, invoice_id))
        # Each attempt sent once, by one replica: no key twice, no third attempt.
        assert sorted(keys.values()) == [1, 1], keys
        assert len(await succeeded_charges(stripe_client, member.customer_id)) == 2
    replicas = [a["replica"] for i in invoices for a in await attempts_of(db, i)]
    assert None not in replicas  # every attempt says which replica made it


async def test_a_replica_killed_mid_attempt_never_charges_twice(
    stack_without_scheduler: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    replica: Replica,
) -> None:
    member = await new_member(stripe_client)
    # Only the renewal fails: our first attempt will charge.
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=1)
    await case_in(db, invoice_id, "open")
    # Stripe's events stop reaching us, so only the repeated attempt can tell
    # the product the invoice was paid.
    await sandbox.stop_deliveries()
    # The charge request hangs at Stripe long enough to kill the replica under it.
    await sandbox.control(
        "POST",
        "/_sandbox/faults",
        {"kind": "slow", "delay_ms": 2_000, "path_prefix": f"/v1/invoices/{invoice_id}/pay"},
    )
    doomed = replica()
    await doomed.start()
    await eventually(
        lambda: _pay_requests(sandbox, invoice_id), what="the attempt's charge request"
    )
    assert await doomed.kill() != 0

    # Stripe finishes the request the dead replica made; a new replica takes the
    # case over when its lease ends and repeats the attempt with the same key.
    successor = replica()
    await successor.start()
    case = await case_in(db, invoice_id, "recovered", timeout=40)
    assert case["attempts"] == 1
    requests = await _pay_requests(sandbox, invoice_id)
    assert {r["idempotency_key"] for r in requests} == {f"dunning-{invoice_id}-attempt-1"}
    # The same attempt was sent again after the restart, and Stripe answered it
    # from its first execution (or the re-read found the invoice paid first).
    attempts = await attempts_of(db, invoice_id)
    assert [(a["number"], a["outcome"]) for a in attempts] in (
        [(1, "succeeded")],
        [(1, "already_settled")],
    )
    if attempts[0]["outcome"] == "succeeded":
        assert len(requests) >= 2 and any(r["replayed"] for r in requests), requests
    # The sandbox's record of charges: the first month's, and one recovery.
    assert len(await succeeded_charges(stripe_client, member.customer_id)) == 2


async def test_a_replica_killed_before_its_outcome_commits_never_charges_twice(
    stack_without_scheduler: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    replica: Replica,
) -> None:
    """Outcomes are written many to a transaction: one that Stripe has answered
    but that waits for its batch is lost with the replica. The case keeps its
    pending attempt, so the next replica repeats attempt 1 (same key), never an
    attempt 2."""
    member = await new_member(stripe_client)
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=1)
    await case_in(db, invoice_id, "open")
    await sandbox.stop_deliveries()
    # The outcome waits seconds for others to join its transaction (room for
    # ten, one due): the kill lands after Stripe charged and before anything
    # about it committed.
    doomed = replica(DUNNING_OUTCOME_LINGER_SECONDS="3", DUNNING_BATCH_SIZE="10")
    await doomed.start()
    await eventually(
        lambda: _pay_requests(sandbox, invoice_id), what="the attempt's charge request"
    )
    [attempt] = await attempts_of(db, invoice_id)
    assert attempt["outcome"] == "pending"
    assert await doomed.kill() != 0

    successor = replica()
    await successor.start()
    case = await case_in(db, invoice_id, "recovered", timeout=40)
    assert case["attempts"] == 1
    requests = await _pay_requests(sandbox, invoice_id)
    assert {r["idempotency_key"] for r in requests} == {f"dunning-{invoice_id}-attempt-1"}
    attempts = await attempts_of(db, invoice_id)
    # The successor's re-read finds the invoice paid (the charge went through).
    assert [(a["number"], a["outcome"]) for a in attempts] in (
        [(1, "succeeded")],
        [(1, "already_settled")],
    )
    assert len(await succeeded_charges(stripe_client, member.customer_id)) == 2
