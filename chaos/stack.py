"""The product for one run: its own Postgres, RabbitMQ, mail server and Stripe
sandbox, and every service as processes.

As in production, each service connects as its own Postgres role and
RabbitMQ user (provisioned here with the run's admin rights, by the same code
as ``make dev``, the compose file and the Kubernetes Jobs) and presents its
own internal-API token. Each consumer service runs ``replicas`` processes
(competing consumers on the same queues); the gateway runs once, reaching the
broker through a proxy so the broker can be taken away from the gateway alone.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp

from chaos.infra import Postgres, RabbitNode, free_port, new_rabbit
from chaos.mail import MailSink
from chaos.processes import ServiceProcess
from chaos.proxy import BrokerProxy
from shared.broker.policies import Management
from shared.broker.users import BrokerUser
from shared.broker.users import provision as provision_users
from shared.db_roles import ServiceRole, provision_all

# Every service of the product, in start order (as make dev); the gateway last.
SERVICES = ("webhooks", "subscriptions", "credits", "retry")
# The endpoint secret the run's gateway is given and the sender signs with.
CLUSTER_ORDER = ("credits", "webhooks", "subscriptions", "retry", "gateway")
WEBHOOK_SECRET = "whsec_chaos_run_secret"  # noqa: S105 - a throwaway stack's test secret
# Short backoff tiers: a database restart must not park messages for ten
# minutes (the production default's last tier) in a run of a few minutes.
RETRY_DELAYS_MS = "[500,2000,5000]"


@dataclass(frozen=True)
class DeadLetter:
    queue: str  # the consumer queue it was dead-lettered from
    message_id: str
    error: str


class Stack:
    def __init__(self, workdir: Path, *, replicas: int, rabbit_nodes: int = 1) -> None:
        self.workdir = workdir
        self.replicas = replicas
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.postgres = Postgres(workdir / "postgres", free_port())
        # One node, or a cluster whose first node the run's tools (and the
        # gateway) talk to; the services spread over the nodes.
        self.rabbits: list[RabbitNode] = [
            new_rabbit(workdir / "rabbitmq" / f"node{n}", f"chaos{os.getpid()}n{n}")
            for n in range(1, rabbit_nodes + 1)
        ]
        self.rabbit = self.rabbits[0]
        self.proxy = BrokerProxy(self.rabbit.amqp_port)
        # The members' emails (the retry service's notifications) land here.
        self.mail = MailSink()
        self.tokens = {name: secrets.token_hex(24) for name in SERVICES}
        # The gateway's: the run signs its members' tokens with it.
        self.jwt_secret = secrets.token_hex(32)
        self.passwords = {name: secrets.token_hex(24) for name in (*SERVICES, "gateway")}
        self.processes: dict[str, list[ServiceProcess]] = {}
        self.gateway: ServiceProcess | None = None
        # Stripe's API, for the calls the subscriptions service makes while a
        # member pays (a customer, a payment intent). Its events are not
        # delivered: the run sends every event itself.
        sandbox_port = free_port()
        self.stripe = ServiceProcess(
            "stripe-sandbox",
            1,
            self.logs,
            {},
            argv=("-m", "stripe_sandbox", "--port", str(sandbox_port)),
            port=sandbox_port,
            ready_path="/_sandbox/health",
        )

    @property
    def gateway_url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    def service_urls(self) -> dict[str, str]:
        return {name: procs[0].url for name, procs in self.processes.items()}

    def database_url(self, service: str) -> str:
        password = self.passwords[service]
        return f"postgresql://billing_{service}:{password}@127.0.0.1:{self.postgres.port}/billing"

    def node_of(self, service: str, replica: int = 1) -> RabbitNode:
        """The node a process connects to, spread over the cluster so that the
        node the run stops (the last) carries a consumer with traffic
        (subscriptions); the gateway is on the first, through the proxy."""
        index = CLUSTER_ORDER.index(service) + replica - 1
        return self.rabbits[index % len(self.rabbits)]

    def amqp_url(self, service: str, port: int | None = None, replica: int = 1) -> str:
        password = self.passwords[service]
        port = port or self.node_of(service, replica).amqp_port
        return f"amqp://billing_{service}:{password}@127.0.0.1:{port}/"

    def _settings(self, service: str, replica: int = 1) -> dict[str, str]:
        values = {
            "AMQP_URL": self.amqp_url(service, replica=replica),
            "AMQP_MANAGEMENT_URL": self.node_of(service, replica).management_url,
            "RETRY_DELAYS_MS": RETRY_DELAYS_MS,
            "LOG_LEVEL": "WARNING",
            "SHUTDOWN_DRAIN_SECONDS": "15",
            # No Stripe in the run: the backfill from its Events API stays off.
            "RECONCILE_INTERVAL_SECONDS": "0",
        }
        if service == "subscriptions":
            values["STRIPE_API_BASE"] = self.stripe.url
        if service == "retry":
            # No Stripe to charge in the run: cases are opened and closed by
            # Stripe's events, the scheduler makes no attempt of its own.
            values["DUNNING_SCHEDULER_ENABLED"] = "false"
            values["SMTP_HOST"] = "127.0.0.1"
            values["SMTP_PORT"] = str(self.mail.port)
        if service != "gateway":
            values["DATABASE_URL"] = self.database_url(service)
            values["SERVICE_TOKEN"] = self.tokens[service]
        return values

    async def start_infrastructure(self) -> None:
        await self.postgres.start()
        for node in self.rabbits:
            await node.start()
        for node in self.rabbits[1:]:
            await node.join(self.rabbit)
        await self.proxy.start()
        self.mail.start()
        await provision_all(
            self.postgres.url, [ServiceRole.from_url(s, self.database_url(s)) for s in SERVICES]
        )
        admin = Management.for_broker(self.rabbit.amqp_url, self.rabbit.management_url)
        await provision_users(
            admin,
            [BrokerUser.from_url(s, self.amqp_url(s)) for s in (*SERVICES, "gateway")],
        )

    async def start_services(self) -> None:
        await self.stripe.start()
        for name in SERVICES:
            self.processes[name] = []
            for replica in range(1, self.replicas + 1):
                env = {
                    **self._settings(name, replica),
                    f"{name.upper()}_PORT": str(free_port()),
                }
                process = ServiceProcess(name, replica, self.logs, env)
                # One after the other: the first applies the migrations.
                await process.start()
                self.processes[name].append(process)
        gateway_env = {
            **self._settings("gateway"),
            "AMQP_URL": self.amqp_url("gateway", self.proxy.port),
            "GATEWAY_PORT": str(free_port()),
            "STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRET,
            "JWT_SECRET": self.jwt_secret,
            "PUBLISH_CONFIRM_TIMEOUT": "5",
            **{f"{name.upper()}_URL": procs[0].url for name, procs in self.processes.items()},
            **{f"{name.upper()}_SERVICE_TOKEN": token for name, token in self.tokens.items()},
        }
        self.gateway = ServiceProcess("gateway", 1, self.logs, gateway_env)
        await self.gateway.start()

    async def stop_consumers(self, names: tuple[str, ...]) -> None:
        for name in names:
            for process in self.processes[name]:
                await process.stop()

    async def start_consumers(self, names: tuple[str, ...]) -> None:
        """Every replica at once (their migrations are applied already)."""
        await asyncio.gather(*(p.start() for name in names for p in self.processes[name]))

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()
        for procs in self.processes.values():
            for process in procs:
                await process.stop()
        await self.stripe.stop()
        await self.proxy.stop()
        self.mail.stop()
        for node in reversed(self.rabbits):
            await node.stop(check=False)
        await self.postgres.stop()

    async def management(self, path: str, body: Any = None) -> Any:
        """RabbitMQ's management API of the run's node (default vhost)."""
        url = f"{self.rabbit.management_url}/api/{path}"
        auth = aiohttp.BasicAuth("guest", "guest")
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(auth=auth, timeout=timeout) as http:
            method = "POST" if body is not None else "GET"
            async with http.request(method, url, json=body) as response:
                response.raise_for_status()
                return await response.json()

    async def queue_depths(self) -> dict[str, int]:
        """Messages per queue (ready + unacknowledged)."""
        return {name: total for name, (total, _) in (await self.queue_stats()).items()}

    async def queue_stats(self) -> dict[str, tuple[int, int]]:
        """(messages, of which unacknowledged) per queue."""
        queues = await self.management("queues/%2F?columns=name,messages,messages_unacknowledged")
        return {
            q["name"]: (int(q.get("messages") or 0), int(q.get("messages_unacknowledged") or 0))
            for q in queues
        }

    async def ready(self, queues: list[str]) -> int:
        """Messages ready in ``queues``, as the queues themselves answer (the
        management API's statistics lag, and are empty for a while after a restart)."""
        total = 0
        connection = await aio_pika.connect(self.rabbit.amqp_url)
        async with connection:
            channel = await connection.channel()
            for name in queues:
                queue = await channel.declare_queue(name, passive=True)
                total += queue.declaration_result.message_count or 0
        return total

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        """Every message in ``queue``'s dead-letter queue, read and left there.

        Over AMQP rather than the management API, whose counts lag: each
        message is taken unacknowledged until the queue answers empty, and
        closing the channel gives them all back.
        """
        letters = []
        connection = await aio_pika.connect(self.rabbit.amqp_url)
        async with connection:
            channel = await connection.channel()
            dlq = await channel.get_queue(f"{queue}.dlq", ensure=False)
            while (message := await dlq.get(no_ack=False, fail=False, timeout=10)) is not None:
                headers = message.headers or {}
                letters.append(
                    DeadLetter(
                        queue=queue,
                        message_id=message.message_id or "",
                        error=str(headers.get("x-last-error", ""))[:200],
                    )
                )
        return letters
