"""Decode Stripe's bracketed form encoding into nested Python values.

stripe-python 16 sends ``items[0][price]=price_x&expand[0]=latest_invoice&metadata[k]=v``;
curl users and older SDKs send ``expand[]=x``.  Both must decode to the same
structure, so the emulator's handlers only ever see plain dicts and lists.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


class FormError(ValueError):
    """A key that cannot be decoded (e.g. unbalanced brackets)."""


def split_key(key: str) -> list[str]:
    match = _KEY.match(key)
    if match is None:
        raise FormError(f"Invalid parameter name: {key}")
    return [match.group(1), *_PART.findall(match.group(2))]


def _insert(root: dict[str, Any], parts: list[str], value: str) -> None:
    node: dict[str, Any] = root
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        # ``[]`` appends: give it the next free numeric slot so it becomes a list later.
        key = str(sum(1 for k in node if k.isdigit())) if part == "" else part
        if last:
            node[key] = value
            return
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child


def _listify(value: Any) -> Any:
    """Dicts whose keys are all integers become lists ordered by index."""
    if not isinstance(value, dict):
        return value
    converted = {k: _listify(v) for k, v in value.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def decode_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for key, value in pairs:
        _insert(root, split_key(key), value)
    result = _listify(root)
    assert isinstance(result, dict)
    return result


def decode(text: str) -> dict[str, Any]:
    """Decode a query string or an ``application/x-www-form-urlencoded`` body."""
    return decode_pairs(parse_qsl(text, keep_blank_values=True))
