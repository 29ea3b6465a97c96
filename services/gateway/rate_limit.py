"""Rate limits on the client API, with the ``limits`` library.

Authenticated calls are counted per user (the token's ``sub``), with a higher
limit for staff; calls without a valid token per client IP, which also slows
down anyone guessing tokens. Stripe's webhooks are never limited: they are not
under ``/v1``. Each gateway replica counts on its own (in memory), so with N
replicas behind a load balancer a client gets up to N times the limit; a
shared store (``limits`` speaks Redis) would make it exact.

Behind a load balancer every connection comes from the balancer. Its
addresses go in ``trusted_proxies``; for a connection from one of them the
client is the right-most address of ``X-Forwarded-For`` that is not itself a
trusted proxy (what the balancer saw, not what the client claims). From any
other peer the header is ignored, so a client cannot pick its own bucket.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Iterable

import limits
from aiohttp import web
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from shared import metrics
from shared.api.caller import Caller
from shared.http.errors import ApiError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


class RateLimits:
    def __init__(
        self, *, member: str, staff: str, anonymous: str, trusted_proxies: Iterable[str] = ()
    ) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._member = limits.parse(member)
        self._staff = limits.parse(staff)
        self._anonymous = limits.parse(anonymous)
        self._trusted: tuple[Network, ...] = tuple(
            ipaddress.ip_network(p.strip(), strict=False) for p in trusted_proxies if p.strip()
        )

    def _trusted_peer(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self._trusted)

    def client_ip(self, request: web.Request) -> str:
        """The address an anonymous call is counted by."""
        peer = _address(request.remote or "")
        if peer is None:
            return request.remote or "unknown"
        if not self._trusted_peer(peer):
            return str(peer)
        hops = [
            h for value in request.headers.getall("X-Forwarded-For", []) for h in value.split(",")
        ]
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                break  # unreadable: trust nothing further left
            if not self._trusted_peer(address):
                return str(address)
        return str(peer)

    async def check(self, request: web.Request, caller: Caller | None) -> None:
        if caller is None:
            item, scope, who = self._anonymous, "anonymous", f"ip:{self.client_ip(request)}"
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
