"""deploy/k8s, built with kustomize and checked against the Kubernetes schemas
(kubernetes-validate, strict: unknown fields refused) and KEDA's CRDs; then
against the code it deploys: every service, its probes, secrets, migrations,
shutdown timings and queues."""

from __future__ import annotations

import copy
import importlib
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.gateway.settings import GatewaySettings
from shared import queues
from shared.settings import ServiceSettings
from shared.shutdown import TAIL_SECONDS
from tests.support import env
from tests.support.manifests import (
    K8S,
    build,
    containers,
    keda_problems,
    load,
    of_kind,
    secret_keys,
)

KUSTOMIZATIONS = {"base": K8S / "base", "example overlay": K8S / "overlays" / "example"}
# The oldest Kubernetes the manifests target, and the newest schemas we have.
VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
KEDA_API = "keda.sh/v1alpha1"

# The secrets each process reads; nothing else of billing-secrets reaches it.
# Each service its own database role, broker user and internal token.
SECRETS = {
    "gateway": {
        "GATEWAY_AMQP_URL",
        "JWT_SECRET",
        "JWT_PREVIOUS_SECRETS",
        "STRIPE_WEBHOOK_SECRETS",
        "WEBHOOKS_SERVICE_TOKEN",
        "SUBSCRIPTIONS_SERVICE_TOKEN",
        "CREDITS_SERVICE_TOKEN",
        "RETRY_SERVICE_TOKEN",
    },
    "webhooks": {
        "WEBHOOKS_DATABASE_URL",
        "WEBHOOKS_AMQP_URL",
        "WEBHOOKS_SERVICE_TOKEN",
        # The drift report reads the subscriptions service's mirrored objects.
        "SUBSCRIPTIONS_SERVICE_TOKEN",
        # Backfill and drift read Stripe's Events API and objects.
        "STRIPE_SECRET_KEY",
    },
    "subscriptions": {
        "SUBSCRIPTIONS_DATABASE_URL",
        "SUBSCRIPTIONS_AMQP_URL",
        "SUBSCRIPTIONS_SERVICE_TOKEN",
        "STRIPE_SECRET_KEY",
    },
    "credits": {"CREDITS_DATABASE_URL", "CREDITS_AMQP_URL", "CREDITS_SERVICE_TOKEN"},
    "retry": {"RETRY_DATABASE_URL", "RETRY_AMQP_URL", "RETRY_SERVICE_TOKEN", "STRIPE_SECRET_KEY"},
}
# Tokens a service holds to call another one's internal API.
CALLS = {"webhooks": {"SUBSCRIPTIONS_SERVICE_TOKEN"}}


def _migrate_secrets(service: str) -> set[str]:
    """The migrate init container: schema and queue policies, as the service."""
    return {f"{service.upper()}_{key}" for key in ("DATABASE_URL", "AMQP_URL", "SERVICE_TOKEN")}


def _services() -> list[str]:
    return sorted(p.parent.name for p in (env.ROOT / "services").glob("*/__main__.py"))


def _has_schema(service: str) -> bool:
    return hasattr(importlib.import_module(f"services.{service}.app"), "SCHEMA")


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {name: build(path) for name, path in KUSTOMIZATIONS.items()}


@pytest.fixture(scope="module")
def base(built: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return built["base"]


@pytest.fixture(scope="module")
def config(base: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = of_kind(base, "ConfigMap")["billing-config"]["data"]
    return data


# --- Schemas ----------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_every_resource_matches_the_kubernetes_schemas(
    built: dict[str, list[dict[str, Any]]], kustomization: str, version: str
) -> None:
    core = [r for r in built[kustomization] if r["apiVersion"] != KEDA_API]
    assert {r["kind"] for r in core} >= {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for resource in core:
        kubernetes_validate.validate(resource, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_secret_template_matches_the_schema(version: str) -> None:
    for resource in load(K8S / "secret.example.yaml"):
        kubernetes_validate.validate(resource, version, strict=True)


def test_the_schema_check_refuses_an_unknown_field(base: list[dict[str, Any]]) -> None:
    deployment = copy.deepcopy(of_kind(base, "Deployment")["gateway"])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


@pytest.fixture(scope="module")
def keda_report(built: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One run of the KEDA check (it compiles types: seconds) over every
    kustomization's KEDA resources, and two broken on purpose."""
    resources = [r for rs in built.values() for r in rs if r["apiVersion"] == KEDA_API]
    typo = copy.deepcopy(next(r for r in resources if r["kind"] == "ScaledObject"))
    typo["metadata"] = {"name": "with-a-typo"}
    typo["spec"]["minReplicas"] = 2
    wrong_type = copy.deepcopy(typo)
    wrong_type["metadata"] = {"name": "with-a-number"}
    del wrong_type["spec"]["minReplicas"]
    wrong_type["spec"]["triggers"][0]["metadata"]["value"] = 100
    return keda_problems([*resources, typo, wrong_type])


def test_keda_resources_match_kedas_crds(
    built: dict[str, list[dict[str, Any]]], keda_report: list[str]
) -> None:
    for resources in built.values():
        keda = [r for r in resources if r["apiVersion"] == KEDA_API]
        assert {r["kind"] for r in keda} == {"ScaledObject", "TriggerAuthentication"}
    assert [p for p in keda_report if "/with-a-" not in p] == []


def test_the_keda_check_refuses_unknown_fields_and_wrong_types(keda_report: list[str]) -> None:
    assert any("with-a-typo" in p and "minReplicas" in p for p in keda_report)
    assert any("with-a-number" in p and "must be string" in p for p in keda_report)


# --- What runs, and how -----------------------------------------------------


def test_every_service_has_a_deployment_a_service_and_a_disruption_budget(
    base: list[dict[str, Any]],
) -> None:
    deployments = of_kind(base, "Deployment")
    services = of_kind(base, "Service")
    budgets = of_kind(base, "PodDisruptionBudget")
    assert sorted(deployments) == _services()
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert services[name]["spec"]["selector"] == selector
        assert budgets[name]["spec"]["selector"]["matchLabels"] == selector
        # Compatible with any replica count: one pod drained at a time.
        assert budgets[name]["spec"]["maxUnavailable"] == 1
        main = deployment["spec"]["template"]["spec"]["containers"][0]
        assert main["command"] == ["python", "-m", f"services.{name}"]


def test_probes_restart_only_a_stuck_process(base: list[dict[str, Any]]) -> None:
    for name, deployment in of_kind(base, "Deployment").items():
        main = deployment["spec"]["template"]["spec"]["containers"][0]
        assert main["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        # Liveness never looks at Postgres or RabbitMQ (/healthz): their
        # outages take pods out of the Service, they do not restart them.
        for probe in ("livenessProbe", "startupProbe"):
            assert main[probe]["httpGet"]["path"] == "/healthz", (name, probe)
        liveness = main["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60, name


def test_every_container_has_resources_and_runs_unprivileged(
    base: list[dict[str, Any]],
) -> None:
    for name, deployment in of_kind(base, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in containers(deployment):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True


def _pre_stop_seconds(container: dict[str, Any]) -> float:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if not command:
        return 0.0
    assert command[0] == "sleep", command
    return float(command[1])


def _drain(config: dict[str, str]) -> float:
    default = ServiceSettings.model_fields["shutdown_drain_seconds"].default
    return float(config.get("SHUTDOWN_DRAIN_SECONDS", default))


def test_the_grace_period_covers_the_drain_and_every_shutdown_step(
    base: list[dict[str, Any]], config: dict[str, str]
) -> None:
    for name, deployment in of_kind(base, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        main = pod["containers"][0]
        needed = _pre_stop_seconds(main) + _drain(config) + TAIL_SECONDS
        assert pod["terminationGracePeriodSeconds"] >= needed, (name, needed)
        # A short preStop pause lets endpoint removal reach the load
        # balancers (and the gateway's connections) before SIGTERM.
        assert _pre_stop_seconds(main) > 0, name
        env_names = {e["name"] for e in main.get("env", [])}
        assert "SHUTDOWN_DRAIN_SECONDS" not in env_names, "one drain, set in billing-config"


def test_the_gateway_drain_outlasts_its_slowest_request(config: dict[str, str]) -> None:
    defaults = GatewaySettings.model_fields
    slowest = max(
        float(config.get("PUBLISH_CONFIRM_TIMEOUT", defaults["publish_confirm_timeout"].default)),
        float(config.get("UPSTREAM_TIMEOUT", defaults["upstream_timeout"].default)),
    )
    assert _drain(config) > slowest


def test_compose_gives_the_same_grace() -> None:
    compose = yaml.safe_load((env.ROOT / "docker-compose.yml").read_text())
    grace = compose["x-service"]["stop_grace_period"]
    seconds = float(re.fullmatch(r"(\d+)s", grace).group(1))  # type: ignore[union-attr]
    drain = float(
        compose["x-service-env"].get(
            "SHUTDOWN_DRAIN_SECONDS", ServiceSettings.model_fields["shutdown_drain_seconds"].default
        )
    )
    assert seconds >= drain + TAIL_SECONDS


def test_each_container_gets_only_the_secrets_it_uses(base: list[dict[str, Any]]) -> None:
    for name, deployment in of_kind(base, "Deployment").items():
        for container in containers(deployment):
            # Never the whole Secret.
            assert all("secretRef" not in source for source in container.get("envFrom", []))
            wanted = _migrate_secrets(name) if container["name"] == "migrate" else SECRETS[name]
            assert secret_keys(container) == wanted, (name, container["name"])
            # The Secret's keys name whose they are: no service reads another's
            # (a token to call another service's internal API is its caller's).
            for key in secret_keys(container):
                owner = key.split("_")[0].lower()
                caller = name == "gateway" or key in CALLS.get(name, set())
                assert owner == name or owner not in SECRETS or caller, key
    assert not any(key.endswith("_DATABASE_URL") for key in SECRETS["gateway"])
    assert "STRIPE_SECRET_KEY" not in SECRETS["gateway"]


def test_only_the_access_job_sees_the_admin_urls_and_provisions_every_service(
    base: list[dict[str, Any]],
) -> None:
    (job,) = of_kind(base, "Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][-1] == "python -m shared.db_roles && python -m shared.broker.users"
    assert secret_keys(container) == {
        "ADMIN_DATABASE_URL",
        "ADMIN_AMQP_URL",
        *(f"{s.upper()}_DATABASE_URL" for s in SECRETS if s != "gateway"),
        *(f"{s.upper()}_AMQP_URL" for s in SECRETS),
    }
    # Every env name is the key it reads: what shared.db_roles and
    # shared.broker.users look for.
    assert all(e["name"] == e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"])
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for deployment in of_kind(base, "Deployment").values():
        for each in containers(deployment):
            assert not {"ADMIN_DATABASE_URL", "ADMIN_AMQP_URL"} & secret_keys(each)


def test_the_secret_template_names_every_key_in_use(base: list[dict[str, Any]]) -> None:
    (template,) = load(K8S / "secret.example.yaml")
    used = {
        key
        for deployment in of_kind(base, "Deployment").values()
        for container in containers(deployment)
        for key in secret_keys(container)
    }
    for job in of_kind(base, "Job").values():
        used |= {
            key for c in job["spec"]["template"]["spec"]["containers"] for key in secret_keys(c)
        }
    auth = of_kind(base, "TriggerAuthentication")["billing-rabbitmq"]
    used |= {ref["key"] for ref in auth["spec"]["secretTargetRef"]}
    assert set(template["stringData"]) == used


def test_services_with_a_schema_migrate_before_they_start(
    base: list[dict[str, Any]], config: dict[str, str]
) -> None:
    # The init container migrates (schema and queue policies); the service
    # only checks the policies, and several replicas starting at once wait
    # for each other on the migration lock.
    assert config["MIGRATE_ON_START"] == "false"
    for name, deployment in of_kind(base, "Deployment").items():
        init = deployment["spec"]["template"]["spec"].get("initContainers", [])
        if not _has_schema(name):
            assert init == [], name
            continue
        (migrate,) = init
        assert migrate["name"] == "migrate"
        assert migrate["command"] == ["python", "-m", f"services.{name}", "migrate"]
        assert migrate["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        # Same settings as the service (RETRY_DELAYS_MS makes the tier policies).
        assert migrate["envFrom"] == [{"configMapRef": {"name": "billing-config"}}]


def test_ports_and_upstream_urls_agree(base: list[dict[str, Any]], config: dict[str, str]) -> None:
    services = of_kind(base, "Service")
    for name, deployment in of_kind(base, "Deployment").items():
        port = int(config[f"{name.upper()}_PORT"])
        main = deployment["spec"]["template"]["spec"]["containers"][0]
        assert main["ports"] == [{"name": "http", "containerPort": port}]
        assert services[name]["spec"]["ports"][0]["port"] == port
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
    # The services the gateway forwards to: its *_url settings, but for the
    # database's and the broker's.
    not_upstreams = {"database_url", "amqp_url", "amqp_management_url"}
    upstreams = [f for f in GatewaySettings.model_fields if f.endswith("_url")]
    upstreams = [f for f in upstreams if f not in not_upstreams]
    assert upstreams
    for field in upstreams:
        service = field.removesuffix("_url")
        assert config[field.upper()] == f"http://{service}:{config[f'{service.upper()}_PORT']}"


# --- Scaling ----------------------------------------------------------------


def _owner(queue: str) -> str:
    # Queue names start with the service that consumes them (shared/queues.py).
    return queue.split(".", 1)[0]


def test_every_consumer_queue_scales_its_service(base: list[dict[str, Any]]) -> None:
    scaled = of_kind(base, "ScaledObject")
    deployments = of_kind(base, "Deployment")
    by_service: dict[str, set[str]] = {}
    for queue in queues.ALL:
        assert _owner(queue) in _services(), queue
        by_service.setdefault(_owner(queue), set()).add(queue)
    assert set(scaled) == set(by_service)
    for service, wanted in by_service.items():
        spec = scaled[service]["spec"]
        assert spec["scaleTargetRef"] == {"name": service}
        triggers = spec["triggers"]
        assert {t["metadata"]["queueName"] for t in triggers} == wanted
        for trigger in triggers:
            assert trigger["type"] == "rabbitmq"
            assert trigger["metadata"]["mode"] == "QueueLength"
            assert trigger["authenticationRef"] == {"name": "billing-rabbitmq"}
        # Never below two: the disruption budget always has a pod to keep.
        assert spec["minReplicaCount"] >= 2
        # The autoscaler owns the count; a replicas field would fight it.
        assert "replicas" not in deployments[service]["spec"]
    for name, deployment in deployments.items():
        if name not in scaled and name != "gateway":
            assert deployment["spec"]["replicas"] >= 2, name


def test_the_gateway_scales_on_cpu(base: list[dict[str, Any]]) -> None:
    (hpa,) = of_kind(base, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    gateway = of_kind(base, "Deployment")["gateway"]
    assert "replicas" not in gateway["spec"]
    assert gateway["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]


def test_the_example_overlay_mounts_the_broker_ca_wherever_amqp_is_used(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    overlay = built["example overlay"]
    ca = of_kind(overlay, "ConfigMap")["billing-config"]["data"]["AMQP_CA_FILE"]
    workloads = {**of_kind(overlay, "Deployment"), **of_kind(overlay, "Job")}
    assert "access" in workloads
    for name, deployment in workloads.items():
        assert deployment["metadata"]["namespace"] == "billing"
        for container in containers(deployment):
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert Path(ca).parent == Path(mounts["amqp-ca"]), (name, container["name"])
