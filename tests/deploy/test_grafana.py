"""deploy/grafana: the dashboard is well-formed Grafana JSON whose every query
is valid PromQL (promtool parses it), the provisioning wires it and the
Prometheus data source into the compose stack's Grafana, and Prometheus'
own configuration (promtool) scrapes every service and RabbitMQ's plugin."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_metric_names import DASHBOARDS, dashboard_exprs
from tests.support import env

GRAFANA = env.ROOT / "deploy" / "grafana"
PROMETHEUS = env.ROOT / "deploy" / "prometheus"
COMPOSE = yaml.safe_load((env.ROOT / "docker-compose.yml").read_text())
# Grafana's built-in interval variables, replaced by a duration to parse.
_GRAFANA_VARIABLES = re.compile(r"\$(__rate_interval|__interval|__range)\b")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: make test installs it (Debian package prometheus)"
    return subprocess.run(  # noqa: S603 - fixed arguments
        [promtool, *args], capture_output=True, text=True, timeout=120, check=False
    )


def _datasource_uids() -> set[str]:
    uids: set[str] = set()
    for path in (GRAFANA / "provisioning" / "datasources").glob("*.yml"):
        uids.update(ds["uid"] for ds in yaml.safe_load(path.read_text())["datasources"])
    return uids


def _mounts(service: str) -> dict[str, str]:
    """Container path -> host path (relative to the repository) of a compose service."""
    mounts: dict[str, str] = {}
    for volume in COMPOSE["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


def test_there_is_a_dashboard() -> None:
    assert [p.name for p in DASHBOARDS] == ["billing-overview.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_the_dashboard_is_well_formed(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    panels: list[dict[str, Any]] = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in _datasource_uids(), panel["title"]
        targets = panel["targets"]
        assert targets, f"{panel['title']} has no query"
        assert len({t["refId"] for t in targets}) == len(targets)
        for target in targets:
            assert target["datasource"]["uid"] in _datasource_uids()
            assert target["expr"].strip()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_query_is_valid_promql(path: Path, tmp_path: Path) -> None:
    # promtool parses rule expressions: each query becomes a recording rule.
    rules = [
        {"record": f"dashboard:query:{n}", "expr": _GRAFANA_VARIABLES.sub("5m", expr)}
        for n, expr in enumerate(dashboard_exprs(path))
    ]
    rules_file = tmp_path / "queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool("check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_in_compose_is_provisioned_from_the_repository() -> None:
    mounts = _mounts("grafana")
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    provisioning = GRAFANA / "provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "billing.yml").read_text())
    (provider,) = providers["providers"]
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    (datasource,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in COMPOSE["services"]


def test_prometheus_config_is_valid_and_scrapes_every_service(tmp_path: Path) -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    # In compose the rules are mounted at /etc/prometheus; here, the repository's.
    mounts = _mounts("prometheus")
    assert mounts["/etc/prometheus/alerts.yml"] == "./deploy/prometheus/alerts.yml"
    config["rule_files"] = [str(PROMETHEUS / "alerts.yml")]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    result = _promtool("check", "config", str(copy))
    assert result.returncode == 0, result.stdout + result.stderr

    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    services = sorted(p.parent.name for p in (env.ROOT / "services").glob("*/__main__.py"))
    for service in services:
        environment = COMPOSE["services"][service]["environment"]
        port = environment[f"{service.upper()}_PORT"]
        # The job is named after the service: the alerts and the dashboard
        # select by job.
        assert targets[service] == [f"{service}:{port}"]
    plugin = [job for job, t in targets.items() if t == ["rabbitmq:15692"]]
    assert {"rabbitmq", "rabbitmq-queues"} <= set(plugin)
    enabled = (env.ROOT / "deploy" / "rabbitmq" / "enabled_plugins").read_text()
    assert "rabbitmq_prometheus" in enabled
