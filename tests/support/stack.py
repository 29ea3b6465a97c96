"""The product's services running for a test, each on its own real port.

Services run in the test's event loop through the same ``create_app`` as
``python -m services.<name>``, talk to the real Postgres and RabbitMQ, and
are reached over HTTP. ``reset_state`` gives each test empty schemas and
queues.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
import asyncpg
from aiohttp import web

from services.credits.app import create_app as credits_app
from services.credits.settings import CreditsSettings
from services.gateway.app import create_app as gateway_app
from services.gateway.settings import GatewaySettings
from services.retry.app import create_app as retry_app
from services.retry.settings import RetrySettings
from services.subscriptions.app import create_app as subscriptions_app
from services.subscriptions.settings import SubscriptionsSettings
from services.webhooks.app import create_app as webhooks_app
from services.webhooks.settings import MIRROR_SERVICES, WebhooksSettings
from shared import queues
from shared.broker.policies import Management
from shared.broker.topology import EXCHANGES
from shared.clock import Clock
from shared.http.server import AppRunner, ConnectionLimits
from shared.settings import ServiceSettings
from tests.support import env

_DEFAULT_DELAYS = (1_000, 5_000, 30_000, 120_000, 600_000)


def common_settings(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "database_url": env.DATABASE_URL,
        "amqp_url": env.AMQP_URL,
        "service_token": env.SERVICE_TOKEN,
        "retry_delays_ms": env.FAST_RETRY_DELAYS_MS,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return values


@dataclass
class RunningApp:
    app: web.Application
    runner: web.AppRunner
    url: str

    async def stop(self) -> None:
        await self.runner.cleanup()


def reserve_port() -> socket.socket:
    """A port of our own until :func:`serve` listens on it.

    Bound (not yet listening) from the moment it is chosen: a port only
    looked up and released could be taken by another process on the machine
    before the service got to it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
    except OSError:
        sock.close()
        raise
    return sock


async def serve(app: web.Application, sock: socket.socket | None = None) -> RunningApp:
    # The server ``python -m services.<name>`` runs (shared/runtime.py).
    runner = AppRunner(
        app, limits=ConnectionLimits.defaults(), access_log=None, shutdown_timeout=5.0
    )
    await runner.setup()
    try:
        site: web.BaseSite = (
            web.TCPSite(runner, "127.0.0.1", 0) if sock is None else web.SockSite(runner, sock)
        )
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]
    return RunningApp(app=app, runner=runner, url=f"http://{host}:{port}")


@dataclass
class Stack:
    apps: dict[str, RunningApp] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return self.apps["gateway"].url

    def app(self, name: str) -> web.Application:
        return self.apps[name].app

    async def stop(self, name: str | None = None) -> None:
        names = [name] if name else list(reversed(self.apps))
        for n in names:
            running = self.apps.pop(n, None)
            if running is not None:
                await running.stop()


# Every service behind the gateway: its app factory and settings class.
SERVICES: dict[str, tuple[Callable[..., web.Application], type[ServiceSettings]]] = {
    "webhooks": (webhooks_app, WebhooksSettings),
    "subscriptions": (subscriptions_app, SubscriptionsSettings),
    "credits": (credits_app, CreditsSettings),
    "retry": (retry_app, RetrySettings),
}
_NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing answers


async def start_stack(
    *,
    gateway: dict[str, Any] | None = None,
    with_consumers: bool = True,
    clock: Clock | None = None,
    stripe_api_base: str | None = None,
    **services: dict[str, Any],
) -> Stack:
    """The gateway and every service (``with_consumers=False``: the gateway alone).

    ``stripe_api_base`` points every service at a Stripe (the sandbox);
    ``services`` overrides one service's settings, e.g. ``subscriptions={...}``.
    """
    unknown = set(services) - set(SERVICES)
    if unknown:
        raise ValueError(f"no such services: {unknown}")
    stack = Stack()
    sockets: dict[str, socket.socket] = {}
    try:
        if with_consumers:
            # Ports reserved first: webhooks reaches the services that mirror
            # Stripe objects (the drift report), which start after it.
            for name in SERVICES:
                sockets[name] = reserve_port()
            ports = {name: sock.getsockname()[1] for name, sock in sockets.items()}
            for name, (factory, settings_class) in SERVICES.items():
                stripe = {"stripe_api_base": stripe_api_base} if stripe_api_base else {}
                peers = _mirror_peers(ports) if name == "webhooks" else {}
                settings = settings_class(
                    **common_settings(**stripe, **{**peers, **services.get(name, {})})
                )
                stack.apps[name] = await serve(factory(settings, clock=clock), sockets[name])
                del sockets[name]  # the service's own now, closed when it stops
        stack.apps["gateway"] = await serve(gateway_app(_gateway_settings(stack, gateway)))
    except BaseException:
        # A stack that does not start is stopped whole: a service left running
        # would go on consuming this vhost's queues (with a Stripe that is gone)
        # through every later test, and carry its held messages into them.
        await stack.stop()
        raise
    finally:
        for sock in sockets.values():
            sock.close()
    return stack


def _gateway_settings(stack: Stack, gateway: dict[str, Any] | None) -> GatewaySettings:
    gateway_values = common_settings(
        stripe_webhook_secrets=env.WEBHOOK_SECRET,
        jwt_secret=env.JWT_SECRET,
        publish_confirm_timeout=2.0,
        # Tests send bursts from one address; the rate-limit tests set their own.
        rate_limit_member="100000/minute",
        rate_limit_staff="100000/minute",
        rate_limit_anonymous="100000/minute",
        **{
            f"{name}_url": stack.apps[name].url if name in stack.apps else _NOWHERE
            for name in SERVICES
        },
    )
    gateway_values.update(gateway or {})
    return GatewaySettings(**gateway_values)


def _mirror_peers(ports: dict[str, int]) -> dict[str, Any]:
    """Where webhooks finds the services that mirror Stripe objects, and their tokens."""
    return {
        setting: value
        for name in MIRROR_SERVICES
        for setting, value in (
            (f"{name}_url", f"http://127.0.0.1:{ports[name]}"),
            (f"{name}_service_token", env.SERVICE_TOKEN),
        )
    }


def queue_family(name: str, delays: tuple[int, ...] = ()) -> list[str]:
    """Every queue the topology declares for consumer queue ``name``."""
    tiers = set(delays) | set(env.FAST_RETRY_DELAYS_MS) | set(_DEFAULT_DELAYS)
    return [name, f"{name}.dlq", *(f"{name}.retry.{d}ms" for d in sorted(tiers))]


async def delete_queues(names: list[str]) -> None:
    connection = await aio_pika.connect(env.AMQP_URL, timeout=30)
    async with connection:
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await channel.queue_delete(name)
            with contextlib.suppress(Exception):
                await channel.close()


async def reset_state(extra_queues: tuple[str, ...] = ()) -> None:
    conn = await asyncpg.connect(env.DATABASE_URL)
    try:
        for schema in env.SCHEMAS:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()
    names: list[str] = []
    for queue in (*queues.ALL, *extra_queues):
        names.extend(queue_family(queue))
    # Also whatever an earlier test declared and could not remove (it failed
    # before its clean-up): a queue of its own still bound to billing.events
    # takes domain events a test expects the broker to refuse, and a policy
    # of its own may shadow a product queue's. The services apply their
    # policies again when they start.
    api = Management.for_broker(env.AMQP_URL)
    listed = [q["name"] for q in await api.queues()]
    names.extend(name for name in listed if name not in names)
    await delete_queues(names)
    for policy in await api.policies():
        if policy["name"] not in names:
            await api.delete_policy(policy["name"])
    connection = await aio_pika.connect(env.AMQP_URL, timeout=30)
    async with connection:
        channel = await connection.channel()
        for exchange in EXCHANGES:
            await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
