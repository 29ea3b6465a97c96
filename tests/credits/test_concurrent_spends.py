"""200 spends at once against one balance, through the gateway: none overdraws,
and the ledger sums to the balance."""

from __future__ import annotations

import asyncio
import uuid

from tests.credits.conftest import Credits


async def test_two_hundred_concurrent_spends_never_overdraw(credits: Credits) -> None:
    status, _ = await credits.request(
        "POST",
        "/v1/admin/credits/grants",
        "ops-1",
        role="admin",
        json={
            "user_id": "hot",
            "credit_type": "printing_pages",
            "amount": 150,
            "reason": "load test allowance",
        },
    )
    assert status == 201
    await credits.activate("hot", "sub_hot", allotments={"printing_pages": 100})
    # 250 pages held; 200 spends of 1 or 2 pages ask for 300.
    amounts = [1 + n % 2 for n in range(200)]
    answers = await asyncio.gather(
        *(
            credits.spend("hot", a, credit_type="printing_pages", key=uuid.uuid4().hex)
            for a in amounts
        )
    )
    statuses = [s for s, _ in answers]
    assert set(statuses) <= {201, 422}, statuses
    spent = sum(a for a, (s, _) in zip(amounts, answers, strict=True) if s == 201)
    refused = [a for a, (s, _) in zip(amounts, answers, strict=True) if s == 422]
    assert spent <= 250
    # Every refusal saw less than it asked for, so at most 1 page can be left.
    assert 250 - spent < min(refused, default=3)
    assert (await credits.balances("hot"))["printing_pages"] == 250 - spent
    entries = await credits.db.fetchval(
        "SELECT -sum(amount) FROM credits.entries WHERE user_id = 'hot' AND kind = 'spend'"
    )
    assert entries == spent
    await credits.consistent("hot")
