"""Typed access to decoded form parameters, with Stripe's validation errors.

Stripe rejects unknown parameters (``parameter_unknown``) and malformed values
(``Invalid integer: abc``); doing the same here catches product bugs that a
lenient fake would hide.  These are validation failures: the endpoint never
started, so an idempotency key used with them is not spent.
"""

from __future__ import annotations

import builtins
from typing import Any

from .errors import malformed, required, unknown_param

# Accepted on every endpoint by Stripe.
COMMON = frozenset({"expand"})


class Params:
    def __init__(self, data: dict[str, Any], allowed: set[str] | frozenset[str] | None = None):
        self.data = data
        if allowed is not None:
            for key in data:
                if key not in allowed and key not in COMMON:
                    raise unknown_param(key)

    def has(self, key: builtins.str) -> bool:
        return key in self.data

    def raw(self, key: builtins.str) -> Any:
        return self.data.get(key)

    def str(self, key: builtins.str, *, req: bool = False) -> builtins.str | None:
        return parse_str(self.data.get(key), key, req=req)

    def req_str(self, key: builtins.str) -> builtins.str:
        value = self.str(key, req=True)
        assert value is not None
        return value

    def int(
        self, key: builtins.str, *, req: bool = False, minimum: builtins.int | None = None
    ) -> builtins.int | None:
        return parse_int(self.data.get(key), key, req=req, minimum=minimum)

    def float(self, key: builtins.str) -> builtins.float | None:
        value = self.data.get(key)
        if value is None or value == "":
            return None
        try:
            return builtins.float(value)
        except (TypeError, ValueError):
            raise malformed(f"Invalid decimal: {value}", param=key) from None

    def bool(self, key: builtins.str, default: builtins.bool = False) -> builtins.bool:
        return parse_bool(self.data.get(key), key, default)

    def dict(self, key: builtins.str) -> builtins.dict[builtins.str, Any]:
        return parse_dict(self.data.get(key), key)

    def list(self, key: builtins.str) -> builtins.list[Any]:
        return parse_list(self.data.get(key))

    def expand(self) -> builtins.list[builtins.str]:
        return [builtins.str(v) for v in self.list("expand")]


def parse_str(value: Any, key: str, *, req: bool = False) -> str | None:
    if value is None or value == "":
        if req:
            raise required(key)
        return None
    if not isinstance(value, str):
        raise malformed(f"Invalid string: {value!r}", param=key)
    return value


def parse_int(value: Any, key: str, *, req: bool = False, minimum: int | None = None) -> int | None:
    if value is None or value == "":
        if req:
            raise required(key)
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise malformed(f"Invalid integer: {value}", param=key) from None
    if minimum is not None and number < minimum:
        raise malformed(f"This value must be greater than or equal to {minimum}.", param=key)
    return number


def parse_bool(value: Any, key: str, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    if value in ("true", True):
        return True
    if value in ("false", False):
        return False
    raise malformed(f"Invalid boolean: {value}", param=key)


def parse_dict(value: Any, key: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if not isinstance(value, dict):
        raise malformed(f"Invalid hash: {key}", param=key)
    return value


def parse_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, dict):
        return [value[k] for k in sorted(value, key=lambda k: int(k) if k.isdigit() else 0)]
    if not isinstance(value, list):
        return [value]
    return value


def merge_metadata(current: dict[str, str], update: Any, param: str = "metadata") -> dict[str, str]:
    """Stripe semantics: ``metadata[k]=`` deletes a key, ``metadata=`` clears all."""
    if update is None:
        return current
    if update == "":
        return {}
    if isinstance(update, list):
        update = {str(i): v for i, v in enumerate(update)}
    if not isinstance(update, dict):
        raise malformed("Invalid hash", param=param)
    merged = dict(current)
    for key, value in update.items():
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = str(value)
    return merged
