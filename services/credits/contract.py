"""The credits service's public operations."""

from __future__ import annotations

from shared.api.endpoint import Endpoint

ENDPOINTS: tuple[Endpoint, ...] = ()
