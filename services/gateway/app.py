"""The gateway: Stripe's webhook door and the client API's front."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from services.gateway.auth import Authenticator, TokenRules
from services.gateway.forward import CLIENT_SESSION, Upstream
from services.gateway.rate_limit import RateLimits
from services.gateway.routes import add_api_routes
from services.gateway.settings import UPSTREAMS, GatewaySettings
from services.gateway.webhook import WebhookEndpoint
from shared.broker.publisher import Publisher
from shared.http.health import add_health_routes
from shared.runtime import base_app


def create_app(settings: GatewaySettings) -> web.Application:
    app = base_app(settings, client_max_size=settings.max_webhook_bytes, internal_api=False)
    publisher = Publisher(
        settings.amqp_url,
        name="gateway",
        confirm_timeout=settings.publish_confirm_timeout,
        ssl_context=settings.amqp_ssl_context(),
    )
    upstreams = {
        name: Upstream(name, settings.upstream_url(name), settings.upstream_token(name))
        for name in UPSTREAMS
    }

    async def resources(app: web.Application) -> AsyncIterator[None]:
        # The gateway starts even with the broker down: it answers 503 to
        # Stripe until the publisher connects, rather than not answering.
        await publisher.start(wait=5.0)
        timeout = aiohttp.ClientTimeout(total=settings.upstream_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            app[CLIENT_SESSION] = session
            yield
        await publisher.close()

    app.cleanup_ctx.append(resources)

    async def broker_ready() -> bool:
        return publisher.ready

    add_health_routes(app, {"broker": broker_ready})
    app.router.add_post("/webhooks/stripe", WebhookEndpoint(settings, publisher).handle)
    authenticator = Authenticator(
        TokenRules(
            secret=settings.jwt_secret.get_secret_value(),
            previous_secrets=settings.jwt_previous(),
            leeway=settings.jwt_leeway_seconds,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            max_lifetime=settings.jwt_max_lifetime_seconds,
        )
    )
    limits = RateLimits(
        member=settings.rate_limit_member,
        staff=settings.rate_limit_staff,
        anonymous=settings.rate_limit_anonymous,
        trusted_proxies=settings.trusted_proxy_list(),
    )
    add_api_routes(
        app,
        authenticator=authenticator,
        limits=limits,
        upstreams=upstreams,
        title="Billing backbone API",
    )
    return app
