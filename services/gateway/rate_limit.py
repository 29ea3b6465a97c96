"""Rate limits on the client API, with the ``limits`` library.

Authenticated calls are counted per user (the token's ``sub``), with a higher
limit for staff; calls without a valid token per client IP, which also slows
down anyone guessing tokens. Stripe's webhooks are never limited: they are not
under ``/v1``. Each gateway replica counts on its own (in memory), so with N
replicas behind a load balancer a client gets up to N times the limit; a
shared store (``limits`` speaks Redis) would make it exact.
"""

from __future__ import annotations

import math
import time

import limits
from aiohttp import web
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from shared import metrics
from shared.api.caller import Caller
from shared.http.errors import ApiError


class RateLimits:
    def __init__(self, *, member: str, staff: str, anonymous: str) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._member = limits.parse(member)
        self._staff = limits.parse(staff)
        self._anonymous = limits.parse(anonymous)

    async def check(self, request: web.Request, caller: Caller | None) -> None:
        if caller is None:
            item, scope, who = self._anonymous, "anonymous", f"ip:{request.remote or 'unknown'}"
        elif caller.is_staff:
            item, scope, who = self._staff, "staff", f"user:{caller.user_id}"
        else:
            item, scope, who = self._member, "member", f"user:{caller.user_id}"
        if await self._limiter.hit(item, who):
            return
        stats = await self._limiter.get_window_stats(item, who)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        metrics.API_RATE_LIMITED.labels(scope).inc()
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
