"""The queue arguments that may change, held in RabbitMQ policies.

A queue's declared arguments are fixed for its life: declaring it again with
a different one fails (``PRECONDITION_FAILED``), so a new delivery limit or
dead-letter target in a release would stop every consumer at start. So the
services declare only ``x-queue-type`` (``topology.py``) and everything that
may change lives in one policy per queue, named after the queue:

- ``Q``: dead-letter to ``Q.dlq`` after ``DELIVERY_LIMIT`` redeliveries.
- ``Q.retry.<ms>ms``: the tier's message TTL and its dead-lettering back into
  ``Q`` (at-least-once, which needs ``overflow: reject-publish``). TTL and
  target travel together: a tier without its policy keeps its messages (no
  TTL) rather than expiring them into nowhere.
- ``Q.dlq``: a practically unreachable delivery limit, so a dead letter put
  back (its store unreachable) is never dropped (RabbitMQ 4 defaults quorum
  queues to 20).

A queue without its policy is not safe to consume: a message that keeps
crashing the consumer would come back forever (RabbitMQ 3) or be dropped
after 20 deliveries (RabbitMQ 4), and retries would never come back. So the
policies are part of a service's migrations (``apply``, with
``MIGRATE_ON_START`` or ``python -m services.<name> migrate``), and a
consumer starts only once ``verify`` finds them in force; until then the
service answers 503 on ``/readyz``. Both go through the management API
(``ServiceSettings.amqp_management_url``): AMQP has no way to read or set a
policy.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aiohttp

from shared.broker.confirm_connection import AmqpAddress
from shared.broker.topology import DEAD_LETTER_DELIVERY_LIMIT, DELIVERY_LIMIT, ConsumerQueue
from shared.logging import get_logger

log = get_logger(__name__)

# Above the usual 0 of an operator's catch-all policy: RabbitMQ applies the
# one matching policy with the highest priority (they do not merge).
PRIORITY = 100
_APPLIES_TO_QUEUES = ("queues", "all", "quorum_queues")
_TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass(frozen=True)
class QueuePolicy:
    """The policy of exactly one queue: its name is the queue's."""

    queue: str
    definition: Mapping[str, Any] = field(hash=False)

    @property
    def name(self) -> str:
        return self.queue

    @property
    def pattern(self) -> str:
        return f"^{re.escape(self.queue)}$"

    def body(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "definition": dict(self.definition),
            "priority": PRIORITY,
            "apply-to": "queues",
        }


def policies_for(spec: ConsumerQueue) -> list[QueuePolicy]:
    """Every policy the topology of ``spec`` needs."""
    tiers = [
        QueuePolicy(
            f"{spec.name}.retry.{delay}ms",
            {
                "message-ttl": delay,
                "dead-letter-exchange": "",
                "dead-letter-routing-key": spec.name,
                "dead-letter-strategy": "at-least-once",
                "overflow": "reject-publish",
            },
        )
        for delay in sorted(set(spec.retry_delays_ms))
    ]
    return [
        QueuePolicy(
            spec.name,
            {
                "dead-letter-exchange": "",
                "dead-letter-routing-key": spec.dead_letter_queue,
                "delivery-limit": DELIVERY_LIMIT,
            },
        ),
        QueuePolicy(spec.dead_letter_queue, {"delivery-limit": DEAD_LETTER_DELIVERY_LIMIT}),
        *tiers,
    ]


def all_policies(specs: Iterable[ConsumerQueue]) -> list[QueuePolicy]:
    return [policy for spec in specs for policy in policies_for(spec)]


class ManagementError(RuntimeError):
    """The management API refused or could not be reached."""


class Management:
    """The few calls of RabbitMQ's management HTTP API this product makes,
    for one virtual host."""

    def __init__(
        self,
        base_url: str,
        *,
        user: str,
        password: str,
        vhost: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._vhost = quote(vhost, safe="")
        self._headers = {"Authorization": aiohttp.encode_basic_auth(user, password)}
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self.vhost = vhost
        self.user = user
        # The base URL holds no credentials: fit for messages and logs.
        self.where = self._base

    @classmethod
    def for_broker(
        cls,
        amqp_url: str,
        management_url: str | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Management:
        """The management API of the broker and virtual host ``amqp_url`` names.

        Unless ``management_url`` says otherwise, it is the AMQP host on the
        management plugin's default port (15672, or 15671 over https for
        ``amqps://``), with the AMQP user and password. ``management_url`` may
        carry a user and password of its own.
        """
        amqp = AmqpAddress.parse(amqp_url)
        if not management_url:
            scheme, port = ("https", 15671) if amqp.tls else ("http", 15672)
            management_url = f"{scheme}://{amqp.host}:{port}"
        parts = urlsplit(management_url)
        user = unquote(parts.username) if parts.username else amqp.user
        password = unquote(parts.password) if parts.password is not None else amqp.password
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        base = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        tls = ssl_context if parts.scheme == "https" else None
        return cls(base, user=user, password=password, vhost=amqp.vhost, ssl_context=tls)

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self._base}/api/{path}"
        try:
            async with (
                aiohttp.ClientSession(timeout=_TIMEOUT, headers=self._headers) as http,
                http.request(method, url, json=body, ssl=self._ssl) as response,
            ):
                if response.status >= 400:
                    text = (await response.text())[:300]
                    raise ManagementError(
                        f"{method} {self.where}/api/{path}: {response.status} {text}"
                    )
                if response.status == 204 or response.content_length == 0:
                    return None
                return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ManagementError(f"{method} {self.where}/api/{path}: {exc!r}") from exc

    async def policies(self) -> list[dict[str, Any]]:
        found = await self._request("GET", f"policies/{self._vhost}")
        return list(found or [])

    async def put_policy(self, policy: QueuePolicy) -> None:
        await self._request(
            "PUT", f"policies/{self._vhost}/{quote(policy.name, safe='')}", policy.body()
        )

    async def queues(self) -> list[dict[str, Any]]:
        """Every queue of the virtual host, as the management API lists them."""
        found = await self._request("GET", f"queues/{self._vhost}")
        return list(found or [])

    async def queue(self, name: str) -> dict[str, Any]:
        """A queue as the management API shows it (arguments, policy, counts)."""
        found = await self._request("GET", f"queues/{self._vhost}/{quote(name, safe='')}")
        return dict(found)

    async def delete_policy(self, name: str) -> None:
        await self._request("DELETE", f"policies/{self._vhost}/{quote(name, safe='')}")

    async def put_user(self, name: str, password: str, tags: Iterable[str]) -> None:
        """Create or update a user (shared/broker/users.py); needs an administrator."""
        body = {"password": password, "tags": ",".join(tags)}
        await self._request("PUT", f"users/{quote(name, safe='')}", body)

    async def put_permissions(self, user: str, *, configure: str, write: str, read: str) -> None:
        """Set ``user``'s permission regexes in this virtual host."""
        body = {"configure": configure, "write": write, "read": read}
        await self._request("PUT", f"permissions/{self._vhost}/{quote(user, safe='')}", body)


def _same(existing: Mapping[str, Any] | None, policy: QueuePolicy) -> bool:
    if existing is None:
        return False
    wanted = policy.body()
    return all(existing.get(key) == value for key, value in wanted.items())


async def apply(management: Management, policies: Sequence[QueuePolicy]) -> list[str]:
    """Create or update ``policies``; returns the names of those that changed.

    Only this product's own policies are written, and only when they differ,
    so running it at every start costs one read.
    """
    existing = {p.get("name"): p for p in await management.policies()}
    changed = []
    for policy in policies:
        if not _same(existing.get(policy.name), policy):
            await management.put_policy(policy)
            changed.append(policy.name)
    if changed:
        log.info("queue_policies_applied", policies=changed)
    return changed


def _in_force(policies: Sequence[Mapping[str, Any]], queue: str) -> list[Mapping[str, Any]]:
    """The policies RabbitMQ may apply to ``queue``: those matching it at the
    highest priority (one, unless two tie and the choice is arbitrary)."""
    matching = []
    for policy in policies:
        if policy.get("apply-to", "all") not in _APPLIES_TO_QUEUES:
            continue
        try:
            if re.search(str(policy.get("pattern", "")), queue):
                matching.append(policy)
        except re.error:
            continue
    if not matching:
        return []
    top = max(int(p.get("priority", 0)) for p in matching)
    return [p for p in matching if int(p.get("priority", 0)) == top]


def problems(
    policies: Sequence[Mapping[str, Any]], wanted: Sequence[QueuePolicy]
) -> dict[str, str]:
    """Why each of ``wanted`` is not in force, by queue; empty when all are."""
    found: dict[str, str] = {}
    for policy in wanted:
        winners = _in_force(policies, policy.queue)
        if not winners:
            found[policy.queue] = "no policy matches it"
            continue
        if len(winners) > 1:
            names = ", ".join(repr(w.get("name")) for w in winners)
            found[policy.queue] = f"policies {names} match it at the same priority"
            continue
        winner = winners[0]
        definition = winner.get("definition") or {}
        wrong = sorted(k for k, v in policy.definition.items() if definition.get(k) != v)
        if wrong:
            missing = ", ".join(f"{k}={policy.definition[k]!r}" for k in wrong)
            found[policy.queue] = f"policy {winner.get('name')!r} is in force without {missing}"
    return found


async def verify(management: Management, wanted: Sequence[QueuePolicy]) -> dict[str, str]:
    """Check ``wanted`` against the broker's policies; see :func:`problems`."""
    return problems(await management.policies(), wanted)
