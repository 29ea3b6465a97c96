"""Retry service settings."""

from __future__ import annotations

from shared.settings import ServiceSettings


class RetrySettings(ServiceSettings):
    retry_port: int = 8084
