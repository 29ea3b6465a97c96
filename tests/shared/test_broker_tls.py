"""amqps:// as managed RabbitMQ offers it: the publisher and the consumers'
aio-pika connection both verify the broker against the configured CA, present
the client certificate, check the host name unless told not to, and refuse a
broker whose certificate the CA did not sign.

The broker is the local one behind a TLS-terminating proxy that presents a
certificate from a CA this test session makes, and requires a client
certificate from that CA.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pydantic
import pytest
import structlog

from shared.broker.publisher import Publisher
from shared.broker.tls import client_context
from shared.runtime import connect_broker
from shared.settings import ServiceSettings
from tests.support import env
from tests.support import stripe_objects as so
from tests.support.gateway_client import post_event
from tests.support.stack import start_stack
from tests.support.tcp_proxy import TcpProxy, proxy_for, via_proxy
from tests.support.tls import Pki, make_pki
from tests.support.waiting import eventually


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def tls_broker(pki: Pki) -> AsyncIterator[TcpProxy]:
    """The test broker behind TLS, client certificate required."""
    async with proxy_for(
        env.AMQP_URL, server_ssl=pki.server_context(require_client_cert=True)
    ) as p:
        yield p


def _amqps(proxy: TcpProxy, host: str = "127.0.0.1") -> str:
    return via_proxy(env.AMQP_URL, proxy, scheme="amqps", host=host)


def _tls_settings(pki: Pki, **overrides: Any) -> dict[str, Any]:
    return {
        "amqp_ca_file": pki.ca,
        "amqp_cert_file": pki.client_cert,
        "amqp_key_file": pki.client_key,
        **overrides,
    }


async def test_services_publish_and_consume_over_amqps(
    clean_state: None,
    pki: Pki,
    tls_broker: TcpProxy,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    # The gateway publishes, the subscriptions service consumes (aio-pika)
    # and publishes its retry copies, all over TLS; webhooks stays plain.
    tls = _tls_settings(pki, amqp_url=_amqps(tls_broker))
    # The proxy carries AMQP only; the management API is the broker's own.
    subscriptions = {**tls, "amqp_management_url": "http://127.0.0.1:15672"}
    stack = await start_stack(gateway=tls, subscriptions=subscriptions)
    try:
        sub = so.subscription(status="active")
        status, _ = await post_event(
            http, stack.gateway, so.event("customer.subscription.created", sub)
        )
        assert status == 200
        await eventually(
            lambda: db.fetchval(
                "SELECT status FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1",
                sub["id"],
            ),
            until=lambda s: s == "active",
            what="the event consumed over TLS",
        )
        # Gateway publisher, subscriptions' consumer connection and publisher.
        assert tls_broker.accepted >= 3
    finally:
        await stack.stop()


async def test_publisher_refuses_a_broker_certificate_from_another_ca(
    pki: Pki, tls_broker: TcpProxy
) -> None:
    context = client_context(
        ca_file=pki.other_ca, cert_file=pki.client_cert, key_file=pki.client_key
    )
    publisher = Publisher(_amqps(tls_broker), name="test-wrong-ca", ssl_context=context)
    try:
        with structlog.testing.capture_logs() as logs:
            await publisher.start()
            failures = await eventually(
                lambda: _events(logs, "broker_connect_failed"),
                until=lambda f: len(f) >= 2,
                what="refused connections logged",
            )
        assert not publisher.ready
        assert all("CERTIFICATE_VERIFY_FAILED" in f["error"] for f in failures), failures
    finally:
        await publisher.close()


async def test_consumer_connection_refuses_a_broker_certificate_from_another_ca(
    pki: Pki, tls_broker: TcpProxy
) -> None:
    settings = ServiceSettings(
        service_token="t" * 32,
        **_tls_settings(pki, amqp_url=_amqps(tls_broker), amqp_ca_file=pki.other_ca),
    )
    with structlog.testing.capture_logs() as logs, pytest.raises(TimeoutError):
        await asyncio.wait_for(
            connect_broker(settings.amqp_url, "test", ssl_context=settings.amqp_ssl_context()),
            timeout=3,
        )
    retries = [entry for entry in logs if entry["event"] == "broker_connect_retry"]
    assert retries
    assert all("CERTIFICATE_VERIFY_FAILED" in r["error"] for r in retries), retries


async def test_without_the_client_certificate_the_broker_turns_us_away(
    pki: Pki, tls_broker: TcpProxy
) -> None:
    publisher = Publisher(
        _amqps(tls_broker), name="test-no-client-cert", ssl_context=client_context(ca_file=pki.ca)
    )
    try:
        await publisher.start()
        assert not await publisher.wait_ready(within=2.0)
    finally:
        await publisher.close()


@pytest.mark.parametrize("verify_hostname", [True, False])
async def test_host_name_check_is_on_unless_switched_off(pki: Pki, verify_hostname: bool) -> None:
    # Signed by the right CA, but issued to a name we do not connect by.
    misnamed = pki.server_context(misnamed=True)
    async with proxy_for(env.AMQP_URL, server_ssl=misnamed) as proxy:
        context = client_context(ca_file=pki.ca, verify_hostname=verify_hostname)
        publisher = Publisher(_amqps(proxy), name="test-hostname", ssl_context=context)
        try:
            await publisher.start()
            assert await publisher.wait_ready(within=2.0) is not verify_hostname
        finally:
            await publisher.close()


async def test_consumer_connection_over_amqps_receives(pki: Pki, tls_broker: TcpProxy) -> None:
    settings = ServiceSettings(
        service_token="t" * 32, **_tls_settings(pki, amqp_url=_amqps(tls_broker))
    )
    connection = await connect_broker(
        settings.amqp_url, "test-tls-consumer", ssl_context=settings.amqp_ssl_context()
    )
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        publisher = Publisher(
            _amqps(tls_broker), name="test-tls-publisher", ssl_context=settings.amqp_ssl_context()
        )
        await publisher.start(wait=5.0)
        try:
            await publisher.publish("", queue.name, b'{"id": "evt_tls"}', message_id="evt_tls")
        finally:
            await publisher.close()
        message = await eventually(lambda: queue.get(fail=False), what="message over TLS")
        assert message.body == b'{"id": "evt_tls"}'
    finally:
        await connection.close()


def test_tls_files_without_amqps_are_refused(pki: Pki) -> None:
    # Certificates configured for a plain connection: someone believes the
    # traffic is encrypted when it is not.
    with pytest.raises(pydantic.ValidationError, match="amqps://"):
        ServiceSettings(service_token="t" * 32, amqp_url=env.AMQP_URL, amqp_ca_file=pki.ca)
    with pytest.raises(pydantic.ValidationError, match="AMQP_KEY_FILE needs AMQP_CERT_FILE"):
        ServiceSettings(
            service_token="t" * 32, amqp_url="amqps://mq.internal/", amqp_key_file=pki.client_key
        )
    with pytest.raises(pydantic.ValidationError):
        ServiceSettings(
            service_token="t" * 32, amqp_url="amqps://mq.internal/", amqp_ca_file=Path("/nope.pem")
        )
    plain = ServiceSettings(service_token="t" * 32, amqp_url=env.AMQP_URL)
    assert plain.amqp_ssl_context() is None
    secure = ServiceSettings(service_token="t" * 32, amqp_url="amqps://mq.internal/")
    context = secure.amqp_ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


async def _events(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]
