"""deploy/prometheus/alerts.yml, checked by Prometheus' own promtool: the rules
parse, and each alert fires on the series that should raise it and stays
quiet on those that should not (tests/deploy/prometheus/*_test.yml)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import env

RULES = env.ROOT / "deploy" / "prometheus" / "alerts.yml"
UNIT_TESTS = sorted((env.ROOT / "tests" / "deploy" / "prometheus").glob("*_test.yml"))


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: make test installs it (Debian package prometheus)"
    return subprocess.run(  # noqa: S603 - fixed arguments
        [promtool, *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in UNIT_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            cases.extend(group.get("alert_rule_test", []))
    return cases


def test_the_rules_are_valid() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_passes_its_unit_tests() -> None:
    assert UNIT_TESTS
    result = _promtool("test", "rules", *(p.name for p in UNIT_TESTS), cwd=UNIT_TESTS[0].parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS), result.stdout


@pytest.mark.parametrize("alert", [rule["alert"] for rule in _alerts()])
def test_every_alert_is_tested_firing_and_quiet(alert: str) -> None:
    cases = [case for case in _cases() if case["alertname"] == alert]
    assert any(case.get("exp_alerts") for case in cases), f"{alert}: no case where it fires"
    assert any(not case.get("exp_alerts") for case in cases), f"{alert}: no case where it is quiet"


@pytest.mark.parametrize("rule", _alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_says_how_urgent_and_what_happened(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"page", "ticket"}
    assert {"summary", "description"} <= set(rule["annotations"])


def test_the_runbook_explains_every_alert() -> None:
    runbook = (env.ROOT / "docs" / "runbook.md").read_text()
    alerts_part = runbook.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    explained = set(re.findall(r"^### (\w+)$", alerts_part, re.MULTILINE))
    assert explained == {rule["alert"] for rule in _alerts()}
