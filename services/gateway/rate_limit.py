"""Rate limits on the client API: a moving window per caller, in memory.

Authenticated calls are counted per user (the token's ``sub``), with a higher
limit for staff; calls without a valid token per client IP, which also slows
down anyone guessing tokens. Stripe's webhooks are never limited: they are not
under ``/v1``. Each gateway replica counts on its own (in memory), so with N
replicas behind a load balancer a client gets up to N times the limit; a
shared store (Redis) would make it exact.

The window is the ``limits`` library's moving window (N hits in any T
seconds; the limits are written in its notation, ``120/minute``), kept here
as one deque of hit times per caller: a hit costs O(1), and callers idle for
a whole window are swept out once per window. (The library's in-memory
storage walked every caller's list, each through a worker thread, after
every hit: with thousands of callers that was most of a forwarded request's
CPU.)

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
from collections import deque
from collections.abc import Iterable

import limits
from aiohttp import web

from shared import metrics
from shared.api.caller import Caller
from shared.http.errors import ApiError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


class MovingWindow:
    """At most ``amount`` hits per caller in any ``seconds`` long window."""

    def __init__(self, amount: int, seconds: float) -> None:
        self.amount = amount
        self.seconds = seconds
        # Per caller, the times of its hits still inside the window, oldest first.
        self._hits: dict[str, deque[float]] = {}
        self._next_sweep = time.monotonic() + seconds

    @classmethod
    def parse(cls, text: str) -> MovingWindow:
        item = limits.parse(text)
        return cls(item.amount, float(item.get_expiry()))

    def hit(self, who: str, now: float | None = None) -> float | None:
        """Count a hit and return None, or refuse it (counting nothing) and
        return the seconds until the window lets the caller in again."""
        now = time.monotonic() if now is None else now
        if now >= self._next_sweep:
            self._sweep(now)
        hits = self._hits.get(who)
        if hits is None:
            hits = self._hits[who] = deque()
        start = now - self.seconds
        while hits and hits[0] < start:
            hits.popleft()
        if len(hits) >= self.amount:
            return hits[0] + self.seconds - now
        hits.append(now)
        return None

    def _sweep(self, now: float) -> None:
        # Callers with no hit left in the window hold nothing worth keeping.
        start = now - self.seconds
        for who in [w for w, hits in self._hits.items() if not hits or hits[-1] < start]:
            del self._hits[who]
        self._next_sweep = now + self.seconds


class RateLimits:
    def __init__(
        self, *, member: str, staff: str, anonymous: str, trusted_proxies: Iterable[str] = ()
    ) -> None:
        self._member = MovingWindow.parse(member)
        self._staff = MovingWindow.parse(staff)
        self._anonymous = MovingWindow.parse(anonymous)
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
            window, scope, who = self._anonymous, "anonymous", self.client_ip(request)
        elif caller.is_staff:
            window, scope, who = self._staff, "staff", caller.user_id
        else:
            window, scope, who = self._member, "member", caller.user_id
        wait = window.hit(who)
        if wait is None:
            return
        retry_after = max(1, math.ceil(wait))
        metrics.API_RATE_LIMITED.labels(scope).inc()
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
