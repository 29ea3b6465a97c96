"""Metric names: those the services export, and those PromQL expressions use.

The services declare every metric once, in ``shared/metrics.py`` and each
``services/<svc>/metrics.py`` (or a service package's ``metrics.py``); the
names Prometheus stores are derived from those declarations the way
prometheus_client exposes them (a counter ``x`` becomes ``x_total``, a
histogram ``x_bucket``, ``x_sum``, ``x_count``).
RabbitMQ's names come from its Prometheus plugin itself.
"""

from __future__ import annotations

import importlib
import re
import urllib.request
from collections.abc import Iterable
from types import ModuleType
from urllib.parse import urlsplit

from prometheus_client.metrics import MetricWrapperBase

from tests.support import env

# Series Prometheus makes itself, whatever it scrapes.
PROMETHEUS_BUILTIN = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "untyped": ("",),
    "unknown": ("",),
}


def metric_modules() -> list[ModuleType]:
    """shared/metrics.py and every metrics.py under services/ (a service's, or
    one of its packages', such as services/subscriptions/payments/metrics.py)."""
    services = env.ROOT / "services"
    names = ["shared.metrics"] + [
        ".".join(path.relative_to(env.ROOT).with_suffix("").parts)
        for path in sorted(services.rglob("metrics.py"))
    ]
    return [importlib.import_module(name) for name in names]


def exported_by(module: ModuleType) -> set[str]:
    names: set[str] = set()
    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def service_metric_names() -> set[str]:
    names: set[str] = set()
    for module in metric_modules():
        names |= exported_by(module)
    return names


def rabbitmq_plugin_url() -> str:
    """RabbitMQ's Prometheus plugin on the test broker's host (port 15692)."""
    host = urlsplit(env.AMQP_URL).hostname or "127.0.0.1"
    return f"http://{host}:15692"


# The families Prometheus scrapes (deploy/prometheus/prometheus.yml): the
# aggregated endpoint, and per-queue depth and consumers.
RABBITMQ_ENDPOINTS = (
    "/metrics",
    "/metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count",
)


def rabbitmq_metric_names() -> set[str]:
    """Every name the plugin declares (``# TYPE`` lines) on the scraped endpoints."""
    names: set[str] = set()
    for path in RABBITMQ_ENDPOINTS:
        url = rabbitmq_plugin_url() + path
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - test broker
            text = response.read().decode()
        for match in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
            name, kind = match.groups()
            if kind in ("histogram", "summary"):
                names.update(name + s for s in _SUFFIXES[kind])
            names.add(name)
    return names


# --- PromQL -------------------------------------------------------------------

_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"bool", "offset", "inf", "nan", "atan2"}
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPINGS = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"(?<![\w.$:])([A-Za-z_:][\w:]*)(\s*\()?")


def names_in(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions,
    keywords, label names (inside ``{}`` or a grouping) or durations."""
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    text = _GROUPINGS.sub(" ", text)
    found: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.groups()
        if call or name.lower() in _KEYWORDS:
            continue
        found.add(name)
    return found


def names_in_all(exprs: Iterable[str]) -> set[str]:
    names: set[str] = set()
    for expr in exprs:
        names |= names_in(expr)
    return names
