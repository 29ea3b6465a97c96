"""Start the Stripe sandbox as a subprocess (as the product tests will) on a free port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import stripe

from tests.stripe_sandbox.sandbox_helpers import REPO_ROOT, Sandbox, free_port


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("stripe_sandbox") / "sandbox.log"
    log_file = log_path.open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, our own interpreter
        [
            sys.executable,
            "-m",
            "stripe_sandbox",
            "--port",
            str(port),
            "--backoff",
            "0.05,0.1,0.2,0.4",
            "--max-attempts",
            "5",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    helper = Sandbox(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                if helper.raw("GET", "/_sandbox/health").ok:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                output = log_path.read_text()
                raise RuntimeError(f"stripe sandbox did not start:\n{output}")
            time.sleep(0.05)  # waiting for a process to bind; nothing to poll but the port
        yield helper
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()


@pytest.fixture
def client(sandbox: Sandbox) -> stripe.StripeClient:
    return sandbox.client(max_network_retries=2)


@pytest.fixture
def catalog(client: stripe.StripeClient) -> dict[str, Any]:
    """Two monthly plans and a one-time price."""
    product = client.v1.products.create(params={"name": "Hot desk"})
    office = client.v1.products.create(params={"name": "Private office"})
    room = client.v1.products.create(params={"name": "Meeting room hour"})
    return {
        "hot_desk": client.v1.prices.create(
            params={
                "product": product.id,
                "unit_amount": 19900,
                "currency": "usd",
                "recurring": {"interval": "month"},
            }
        ),
        "office": client.v1.prices.create(
            params={
                "product": office.id,
                "unit_amount": 89900,
                "currency": "usd",
                "recurring": {"interval": "month"},
            }
        ),
        "room": client.v1.prices.create(
            params={"product": room.id, "unit_amount": 2500, "currency": "usd"}
        ),
    }


@pytest.fixture
def account(sandbox: Sandbox) -> Iterator[Callable[..., dict[str, Any]]]:
    """Change the sandbox's account settings for one test; the defaults come back after."""
    defaults = sandbox.control("GET", "/_sandbox/settings")

    def change(**values: Any) -> dict[str, Any]:
        result: dict[str, Any] = sandbox.control("POST", "/_sandbox/settings", values)
        return result

    yield change
    sandbox.control("POST", "/_sandbox/settings", defaults)
