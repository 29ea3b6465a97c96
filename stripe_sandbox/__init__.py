"""A Stripe emulator speaking Stripe's /v1 HTTP API, for the tests and `make dev`.

Run ``python -m stripe_sandbox --port 12111`` and point stripe-python at it
with ``base_addresses={"api": "http://127.0.0.1:12111"}``; or build the app
in-process with :func:`create_app`.
"""

from __future__ import annotations

from .app import create_app
from .sandbox import SANDBOX

__all__ = ["SANDBOX", "create_app"]
