"""Members' API calls through the gateway (a credit spend), as a client makes them.

Each member's calls go one after the other in the story's order, members in
parallel. A call is signed in as its member (a JWT the run's gateway
accepts) and carries its Idempotency-Key; a 5xx or a refused connection is
sent again with the same key, as a client retries, and a call the domain
marks ``sends=2`` is sent again after its answer (the client lost it). Every
answer must be the status the reference model expects: a retry answers what
the first request did, it never acts twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import orjson

from chaos.domain import ApiCall

EXAMPLES = 5
RETRIES = 20


@dataclass
class CallStats:
    calls: int = 0
    requests: int = 0
    resent: int = 0  # the same request again (a lost answer), not counting 5xx retries
    answers: Counter[int] = field(default_factory=Counter)
    wrong: int = 0  # answers other than the model's
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    bodies: dict[str, Any] = field(default_factory=dict)  # 2xx answers, by Idempotency-Key

    def add(self, other: CallStats) -> None:
        self.calls += other.calls
        self.requests += other.requests
        self.resent += other.resent
        self.answers.update(other.answers)
        self.wrong += other.wrong
        self.examples += other.examples[: EXAMPLES - len(self.examples)]
        self.seconds += other.seconds


def member_token(secret: str, user_id: str) -> str:
    claims = {"sub": user_id, "role": "member", "exp": int(time.time()) + 3600}
    return jwt.encode(claims, secret, algorithm="HS256")


async def run_calls(
    calls: list[ApiCall], *, gateway_url: str, jwt_secret: str, concurrency: int = 16
) -> CallStats:
    stats = CallStats(calls=len(calls))
    by_member: dict[str, list[ApiCall]] = {}
    for call in calls:
        by_member.setdefault(call.user_id, []).append(call)
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def one(http: aiohttp.ClientSession, call: ApiCall, token: str) -> int:
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": call.idempotency_key}
        for attempt in range(RETRIES):
            stats.requests += 1
            try:
                async with http.request(
                    call.method, f"{gateway_url}{call.path}", json=call.body, headers=headers
                ) as response:
                    body = await response.read()
                    if response.status < 300 and call.idempotency_key not in stats.bodies:
                        stats.bodies[call.idempotency_key] = orjson.loads(body)
                    if response.status < 500:
                        return response.status
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
        return 0

    async def member(http: aiohttp.ClientSession, user_id: str, mine: list[ApiCall]) -> None:
        token = member_token(jwt_secret, user_id)
        async with gate:
            for call in mine:
                for n in range(call.sends):
                    status = await one(http, call, token)
                    stats.answers[status] += 1
                    stats.resent += n > 0
                    if status == call.expect:
                        continue
                    stats.wrong += 1
                    if len(stats.examples) < EXAMPLES:
                        stats.examples.append(
                            f"{call.method} {call.path} {call.idempotency_key}"
                            f" (send {n + 1}): {status}, expected {call.expect}"
                        )

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http, asyncio.TaskGroup() as group:
        for user_id, mine in by_member.items():
            group.create_task(member(http, user_id, mine))
    stats.seconds = time.monotonic() - started
    return stats
