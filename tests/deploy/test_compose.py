"""docker-compose.yml gives each process only its own secrets: every service
its own database role, broker user and internal token, provisioned by the
one-shot "access" service before any service starts; the gateway no database
URL and no Stripe key."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import yaml

from tests.support import env

COMPOSE: dict[str, Any] = yaml.safe_load((env.ROOT / "docker-compose.yml").read_text())
SERVICES = ("webhooks", "subscriptions", "credits", "retry")
# Every secret any process of the stack reads.
SECRETS = {
    "DATABASE_URL",
    "AMQP_URL",
    "SERVICE_TOKEN",
    "STRIPE_SECRET_KEY",
    "JWT_SECRET",
    "JWT_PREVIOUS_SECRETS",
    "STRIPE_WEBHOOK_SECRETS",
    *(f"{s.upper()}_SERVICE_TOKEN" for s in SERVICES),
}
EXPECTED = {
    "gateway": {
        "AMQP_URL",
        "JWT_SECRET",
        "JWT_PREVIOUS_SECRETS",
        "STRIPE_WEBHOOK_SECRETS",
        *(f"{s.upper()}_SERVICE_TOKEN" for s in SERVICES),
    },
    "webhooks": {
        "DATABASE_URL",
        "AMQP_URL",
        "SERVICE_TOKEN",
        "SUBSCRIPTIONS_SERVICE_TOKEN",
        "STRIPE_SECRET_KEY",
    },
    "subscriptions": {"DATABASE_URL", "AMQP_URL", "SERVICE_TOKEN", "STRIPE_SECRET_KEY"},
    "credits": {"DATABASE_URL", "AMQP_URL", "SERVICE_TOKEN"},
    "retry": {"DATABASE_URL", "AMQP_URL", "SERVICE_TOKEN", "STRIPE_SECRET_KEY"},
}


def _environment(service: str) -> dict[str, str]:
    environment: dict[str, str] = COMPOSE["services"][service]["environment"]
    return environment


def test_each_process_gets_only_the_secrets_it_uses() -> None:
    for service, wanted in EXPECTED.items():
        assert set(_environment(service)) & SECRETS == wanted, service
    assert not set(COMPOSE["x-service-env"]) & SECRETS


def test_each_service_connects_as_itself_with_its_own_token() -> None:
    gateway = _environment("gateway")
    assert urlsplit(gateway["AMQP_URL"]).username == "billing_gateway"
    tokens = set()
    for service in SERVICES:
        environment = _environment(service)
        assert urlsplit(environment["DATABASE_URL"]).username == f"billing_{service}"
        assert urlsplit(environment["AMQP_URL"]).username == f"billing_{service}"
        # The gateway presents this service the token it accepts.
        assert environment["SERVICE_TOKEN"] == gateway[f"{service.upper()}_SERVICE_TOKEN"]
        tokens.add(environment["SERVICE_TOKEN"])
    assert len(tokens) == len(SERVICES)


def test_the_access_service_provisions_every_url_in_use_before_they_start() -> None:
    access = _environment("access")
    for service in SERVICES:
        environment = _environment(service)
        assert access[f"{service.upper()}_DATABASE_URL"] == environment["DATABASE_URL"]
        assert access[f"{service.upper()}_AMQP_URL"] == environment["AMQP_URL"]
    assert access["GATEWAY_AMQP_URL"] == _environment("gateway")["AMQP_URL"]
    for service in ("gateway", *SERVICES):
        depends = COMPOSE["services"][service]["depends_on"]
        assert depends["access"] == {"condition": "service_completed_successfully"}
    # Only the one-shot provisioning sees the admin accounts.
    for name, service in COMPOSE["services"].items():
        if name != "access":
            assert not {"ADMIN_DATABASE_URL", "ADMIN_AMQP_URL"} & set(
                service.get("environment", {})
            )
