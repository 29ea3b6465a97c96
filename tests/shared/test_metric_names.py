"""Every metric of the product (``shared/metrics.py``) is named the Prometheus
way: snake_case, counters ``_total``, durations ``_seconds``, sizes
``_bytes``, a help text, and no label that could hold an id."""

from __future__ import annotations

import re

from prometheus_client import Counter, Gauge, Histogram

from shared import metrics

_NAME = re.compile(r"[a-z][a-z0-9_]*")
# Labels whose values come from bounded sets (routes are templates).
_BOUNDED_LABELS = {
    "route",
    "method",
    "status",
    "schema",
    "state",
    "reason",
    "scope",
    "service",
    "exchange",
    "queue",
    "outcome",
    "event_type",
    "call",
    "check",  # the readiness checks: database, broker, consumers, policies
    "action",  # a dunning case's end action (a setting's three values)
    "currency",  # the catalog's currencies
    "decline_code",  # Stripe's documented decline codes
    "template",  # the email templates in services/retry/templates
    "trigger",  # what started a backfill: the schedule or a request
}


def _declared() -> list[Counter | Gauge | Histogram]:
    return [
        value for value in vars(metrics).values() if isinstance(value, Counter | Gauge | Histogram)
    ]


def test_every_metric_follows_prometheus_naming() -> None:
    declared = _declared()
    assert len(declared) > 10
    for metric in declared:
        [family] = metric.describe()
        name = family.name
        assert _NAME.fullmatch(name), name
        assert family.documentation, f"{name} has no help text"
        # Counters: prometheus_client exports their samples with ``_total``.
        if isinstance(metric, Histogram):
            assert name.endswith(("_seconds", "_bytes")), f"{name}: a histogram of what unit?"
        elif isinstance(metric, Gauge):
            assert not name.endswith("_total"), f"{name}: a gauge is not a total"
        for label in metric._labelnames:
            assert label in _BOUNDED_LABELS, f"{name}: label {label!r} may not be bounded"
