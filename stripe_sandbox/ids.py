"""Stripe-looking identifiers (``cus_...``, ``pi_..._secret_...``)."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
# Each random byte's character, as a translation table: one C call maps them all.
_CHARACTERS = bytes(ord(_ALPHABET[byte % len(_ALPHABET)]) for byte in range(256))


def token(length: int) -> str:
    # One system call for all the randomness (a choice per character cost a
    # call each); the slight modulo bias does not matter for a test id.
    return secrets.token_bytes(length).translate(_CHARACTERS).decode("ascii")


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}_{token(length)}"
