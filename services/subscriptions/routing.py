"""The service's routes object and what its handlers reach on the app."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from services.subscriptions import contract
from services.subscriptions.settings import SubscriptionsSettings
from shared import runtime
from shared.api.service import Call, ServiceRoutes
from shared.http.errors import unavailable
from shared.stripe_calls import StripeCalls

routes = ServiceRoutes("subscriptions", contract.ENDPOINTS)
SETTINGS = web.AppKey("subscriptions_settings", SubscriptionsSettings)


def settings(call: Call[Any, Any]) -> SubscriptionsSettings:
    return call.request.app[SETTINGS]


def stripe(call: Call[Any, Any]) -> StripeCalls:
    calls = call.request.app.get(runtime.STRIPE)
    if calls is None:
        raise unavailable("stripe")
    return calls


def now(call: Call[Any, Any]) -> datetime:
    return call.request.app[runtime.CLOCK].now()
