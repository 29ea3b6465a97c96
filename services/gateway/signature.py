"""Stripe-Signature verification against one or more endpoint secrets.

The check itself is stripe-python's (``WebhookSignature.verify_header``); this
module adds what an endpoint needs around it: several secrets during a
rotation (any may match), and a reason we can count and return.

Like the library, a timestamp in the future is accepted: only Stripe can sign,
and a clock skew between Stripe and us must not bounce deliveries.
"""

from __future__ import annotations

from dataclasses import dataclass

import stripe


@dataclass(frozen=True)
class SignatureRejected(Exception):
    reason: str  # "signature", "stale" or "payload"
    message: str


def verify(payload: bytes, header: str | None, secrets: list[str], tolerance: int) -> None:
    """Return if any secret verifies ``payload``; raise :class:`SignatureRejected` otherwise."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SignatureRejected("payload", "body is not valid UTF-8") from exc
    if not header:
        raise SignatureRejected("signature", "missing Stripe-Signature header")
    first_error: str | None = None
    stale = False
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, header, secret, tolerance)
        except stripe.SignatureVerificationError as exc:
            message = str(exc.user_message or exc)
            # The library checks the timestamp only after a signature matched:
            # "stale" means this secret signed it, just too long ago.
            stale = stale or message.startswith("Timestamp outside the tolerance zone")
            first_error = first_error or message
            continue
        return
    if stale:
        raise SignatureRejected("stale", "timestamp outside the tolerance zone")
    raise SignatureRejected("signature", first_error or "signature verification failed")
