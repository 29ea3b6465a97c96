"""Helpers shared by the sandbox tests (kept out of conftest.py so they import by a
unique module name even when other test folders have their own conftest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
import stripe

from tests.support.processes import free_port

__all__ = ["API_KEY", "REPO_ROOT", "Sandbox", "free_port"]

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk_test_sandbox"


class Sandbox:
    """Thin helper over the emulator's /_sandbox control endpoints."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = requests.Session()

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.request(method, self.base_url + path, json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def raw(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.http.request(method, self.base_url + path, timeout=30, **kwargs)

    def reset(self) -> None:
        self.control("POST", "/_sandbox/reset")

    def flush(self, timeout: float = 10) -> dict[str, Any]:
        result: dict[str, Any] = self.control(
            "POST", "/_sandbox/delivery/flush", {"timeout": timeout}
        )
        return result

    def requests_log(self, path_prefix: str = "", method: str | None = None) -> list[Any]:
        query = f"?path_prefix={path_prefix}" + (f"&method={method}" if method else "")
        return list(self.control("GET", "/_sandbox/requests" + query)["data"])

    def client(self, **kwargs: Any) -> stripe.StripeClient:
        return stripe.StripeClient(API_KEY, base_addresses={"api": self.base_url}, **kwargs)


def new_customer(
    client: stripe.StripeClient,
    card: str | None = "pm_card_visa",
    clock: str | None = None,
) -> tuple[stripe.Customer, str | None]:
    params: dict[str, Any] = {"email": "member@example.com", "name": "Member"}
    if clock:
        params["test_clock"] = clock
    customer = client.v1.customers.create(params=params)  # type: ignore[arg-type]
    pm_id = None
    if card:
        pm_id = client.v1.payment_methods.attach(card, params={"customer": customer.id}).id
        client.v1.customers.update(
            customer.id, params={"invoice_settings": {"default_payment_method": pm_id}}
        )
    return customer, pm_id


DAY = 86_400
HOUR = 3_600
START = 1_767_225_600  # 2026-01-01T00:00:00Z, a test clock's starting point


def new_clock(client: stripe.StripeClient, at: int = START) -> str:
    return client.v1.test_helpers.test_clocks.create(params={"frozen_time": at}).id


def advance(client: stripe.StripeClient, clock_id: str, to: int) -> None:
    result = client.v1.test_helpers.test_clocks.advance(clock_id, params={"frozen_time": to})
    assert result.status == "advancing"
    assert client.v1.test_helpers.test_clocks.retrieve(clock_id).status == "ready"


def events_of(client: stripe.StripeClient, object_id: str, prefix: str = "") -> list[stripe.Event]:
    """Events about one object, oldest first (the Events API lists newest first)."""
    found = [
        e
        for e in client.v1.events.list(params={"limit": 100}).auto_paging_iter()
        if e.data.object["id"] == object_id and e.type.startswith(prefix)
    ]
    return list(reversed(found))


def types_of(client: stripe.StripeClient, object_id: str, prefix: str = "") -> list[str]:
    return [e.type for e in events_of(client, object_id, prefix)]
