"""Every metric the alert rules and the Grafana dashboards name is one the
services export (shared/metrics.py, services/<svc>/metrics.py) or RabbitMQ's
Prometheus plugin serves: a renamed metric must not leave an alert that can
never fire or a panel that stays empty."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.support import env
from tests.support.metric_names import (
    PROMETHEUS_BUILTIN,
    names_in_all,
    rabbitmq_metric_names,
    service_metric_names,
)

RULES = env.ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((env.ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))

# Metrics the domain services are adding (their names as those branches declare
# them), not exported on main yet. Each entry says who adds it. Once
# every branch is merged this list must be empty: the test below fails for an
# entry that is exported already.
PENDING_METRICS: dict[str, str] = {}


def _rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _walk(node: Any) -> list[dict[str, Any]]:
    """Every object in a dashboard, nested panels and rows included."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found.extend(_walk(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_walk(value))
    return found


def dashboard_exprs(path: Path) -> list[str]:
    dashboard = json.loads(path.read_text())
    exprs = [obj["expr"] for obj in _walk(dashboard.get("panels", [])) if "expr" in obj]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and isinstance(query, str):
            # label_values(metric, label): the metric is the first argument.
            exprs.append(query.removeprefix("label_values(").split(",")[0])
    return exprs


def _used() -> set[str]:
    exprs = _rule_exprs()
    for path in DASHBOARDS:
        exprs.extend(dashboard_exprs(path))
    return names_in_all(exprs)


def test_every_metric_named_is_exported() -> None:
    known = service_metric_names() | rabbitmq_metric_names() | PROMETHEUS_BUILTIN
    unknown = _used() - known - set(PENDING_METRICS)
    assert not unknown, f"no service or RabbitMQ exports {sorted(unknown)}"


def test_the_pending_list_holds_only_what_is_missing_and_used() -> None:
    exported = set(PENDING_METRICS) & service_metric_names()
    assert not exported, f"exported now, remove from PENDING_METRICS: {sorted(exported)}"
    unused = set(PENDING_METRICS) - _used()
    assert not unused, f"used by no rule or dashboard, remove from PENDING_METRICS: {unused}"


def test_the_names_found_are_the_metrics() -> None:
    # The parser finds what the rules select, not label names or functions.
    names = _used()
    assert {"http_request_duration_seconds_bucket", "rabbitmq_detailed_queue_messages"} <= names
    assert not {"le", "route", "queue", "rate", "histogram_quantile", "offset"} & names
