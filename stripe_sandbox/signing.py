"""Stripe's webhook signature: ``t=<unix>,v1=hex(HMAC-SHA256(secret, f"{t}.{body}"))``."""

from __future__ import annotations

import hashlib
import hmac
import time


def sign(body: str, secret: str, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode("utf-8"), f"{ts}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"
