"""Credits service settings."""

from __future__ import annotations

from shared.settings import ServiceSettings


class CreditsSettings(ServiceSettings):
    credits_port: int = 8083
