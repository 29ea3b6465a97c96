"""Subscriptions service settings."""

from __future__ import annotations

from shared.settings import ServiceSettings


class SubscriptionsSettings(ServiceSettings):
    subscriptions_port: int = 8082
