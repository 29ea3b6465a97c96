"""Every README walkthrough, run as a newcomer would against ``make dev``.

Each ```sh block marked ``<!-- walkthrough: NAME -->`` (README, "Walkthroughs
are tests") is one test case: its commands run in order in one bash, against
the whole product and the Stripe sandbox delivering webhooks to it, as
``make dev`` starts them (plans catalog seeded, Smart Retries off), with
``make token`` signing for that stack. Each answer is checked against what the
README says comes back; a failure names the README line.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.gateway.settings import GatewaySettings
from tests.support import env
from tests.support.processes import free_port
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import SERVICES, Stack, reset_state, start_stack
from tests.support.walkthrough_shell import WalkthroughShell
from tests.support.walkthroughs import Walkthrough, parse_readme, unmarked_commands

README = env.ROOT / "README.md"
# WALKTHROUGHS_AGAINST_DEV=1: run them against the `make dev` already running
# in this checkout instead (its ports, its .dev/secrets.env), to try a new
# walkthrough as a reader will. Its settings must then be the markers' own.
AGAINST_DEV = os.environ.get("WALKTHROUGHS_AGAINST_DEV") == "1"
WALKTHROUGHS = parse_readme(README)
# Where `make dev` listens (scripts/devstack.py, the sandbox on 12111).
DEV_PORTS = {
    "gateway": 8080,
    "webhooks": 8081,
    "subscriptions": 8082,
    "credits": 8083,
    "retry": 8084,
}
DEV_SANDBOX_PORT = 12111
# The sandbox as `make dev` runs it: Smart Retries off, the retry service dunning.
DEV_SANDBOX_ARGS = ("--smart-retries", "off")
# What scripts/dev.sh sets with the sandbox: each new customer on its own test
# clock, and checkout redirects to a local front end on any port.
DEV_SUBSCRIPTIONS: dict[str, Any] = {
    "test_clocks": True,
    "checkout_allowed_origins": ["http://localhost", "http://127.0.0.1"],
}


def overrides(walkthrough: Walkthrough) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The settings a walkthrough asks ``make dev`` to be started with, per service."""
    gateway: dict[str, Any] = {}
    services: dict[str, dict[str, Any]] = {name: {} for name in SERVICES}
    for variable, value in walkthrough.settings.items():
        field = variable.lower()
        used = False
        if field in GatewaySettings.model_fields:
            gateway[field] = value
            used = True
        for name, (_, settings_class) in SERVICES.items():
            if field in settings_class.model_fields:
                services[name][field] = value
                used = True
        if not used:
            raise AssertionError(
                f"README line {walkthrough.line}: no service has a setting {variable}"
            )
    return gateway, services


async def seed_catalog(sandbox: SandboxProcess) -> None:
    """What `make dev` does once the stack is ready: the plans into the sandbox.
    A process of its own, as there; awaited, so the stack in this event loop
    keeps taking the sandbox's webhooks meanwhile."""
    environment = {
        **os.environ,
        "STRIPE_API_BASE": sandbox.url,
        "STRIPE_SECRET_KEY": "sk_test_sandbox",
    }
    seed = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.subscriptions.seed_catalog",
        cwd=env.ROOT,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(seed.communicate(), 120)
    assert seed.returncode == 0, output.decode(errors="replace")[-2000:]


async def dev_start(stack: Stack, sandbox: SandboxProcess) -> None:
    """What `make dev` does once the services are ready: the sandbox delivers
    webhooks to the gateway, and the plans catalog is seeded (its events land)."""
    await sandbox.deliver_to(f"{stack.gateway}/webhooks/stripe")
    await seed_catalog(sandbox)
    await sandbox.flush()


def dev_ports(stack: Stack, sandbox: SandboxProcess) -> dict[int, str]:
    """`make dev`'s ports, each the test stack's URL for the same process."""
    ports = {DEV_PORTS[name]: app.url for name, app in stack.apps.items() if name in DEV_PORTS}
    ports[DEV_SANDBOX_PORT] = sandbox.url
    return ports


def shell_environment() -> dict[str, str]:
    """A newcomer's shell after `make dev`: the dev secrets where `make token` finds them."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "STRIPE_", "TEST_"))
    }
    environment["JWT_SECRET"] = env.JWT_SECRET
    environment["STRIPE_WEBHOOK_SECRETS"] = env.WEBHOOK_SECRET
    return environment


def test_the_readme_has_walkthroughs() -> None:
    names = {w.name for w in WALKTHROUGHS}
    expected = {
        "client-api",
        "reconcile",
        "dead-letters",
        "metrics",
        "dunning",
        "credits",
        "drift",
        "subscriptions",
        "payments",
    }
    assert expected <= names, names
    for walkthrough in WALKTHROUGHS:
        assert walkthrough.steps, f"walkthrough {walkthrough.name} has no command"
        assert any(step.expect for step in walkthrough.steps), (
            f"walkthrough {walkthrough.name} never says what comes back"
        )


def test_every_curl_against_make_dev_is_in_a_walkthrough() -> None:
    """A README command against `make dev` outside a marked block is never run."""
    lines = unmarked_commands(README.read_text(encoding="utf-8"))
    assert not lines, (
        f"README lines {lines}: commands against `make dev` outside a"
        " `<!-- walkthrough: NAME -->` ```sh block (README, 'README walkthroughs are tests')"
    )


@pytest.mark.parametrize("walkthrough", WALKTHROUGHS, ids=lambda w: w.name)
async def test_walkthrough(walkthrough: Walkthrough, tmp_path: Path) -> None:
    if AGAINST_DEV:
        await run_against_dev(walkthrough, tmp_path)
        return
    dev_sandbox = SandboxProcess(tmp_path / "sandbox.log", extra_args=DEV_SANDBOX_ARGS)
    mail_sink = await start_mail_sink(tmp_path / "mail")
    try:
        await dev_sandbox.start()
        await run_on_test_stack(walkthrough, dev_sandbox, mail_sink, tmp_path)
    finally:
        await dev_sandbox.stop()
        await mail_sink.stop()


async def run_against_dev(walkthrough: Walkthrough, tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "TEST_"))}
    shell = WalkthroughShell(tmp_path / "shell", {}, environment)
    await shell.start()
    try:
        for step in walkthrough.steps:
            await shell.run(step)
    finally:
        await shell.stop()


@dataclass
class MailSinkProcess:
    """`make dev`'s SMTP sink (scripts/mail_sink.py): each email a file in ``folder``."""

    process: asyncio.subprocess.Process
    port: int
    folder: Path

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 10)


async def start_mail_sink(folder: Path) -> MailSinkProcess:
    port = free_port()  # the sink makes the folder
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "scripts/mail_sink.py",
        "--port",
        str(port),
        "--dir",
        str(folder),
        cwd=env.ROOT,
        stdout=asyncio.subprocess.DEVNULL,
    )
    sink = MailSinkProcess(process, port, folder)
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if process.returncode is not None or asyncio.get_running_loop().time() > deadline:
                await sink.stop()
                raise AssertionError("the mail sink did not start") from None
            await asyncio.sleep(0.1)
        else:
            writer.close()
            await writer.wait_closed()
            return sink


async def run_on_test_stack(
    walkthrough: Walkthrough, dev_sandbox: SandboxProcess, mail: MailSinkProcess, tmp_path: Path
) -> None:
    await reset_state()
    gateway, services = overrides(walkthrough)
    services["retry"].setdefault("smtp_port", mail.port)
    for setting, value in DEV_SUBSCRIPTIONS.items():
        services["subscriptions"].setdefault(setting, value)
    stack = await start_stack(gateway=gateway, stripe_api_base=dev_sandbox.url, **services)
    environment = {**shell_environment(), "MAIL_DIR": str(mail.folder)}
    shell = WalkthroughShell(tmp_path / "shell", dev_ports(stack, dev_sandbox), environment)
    try:
        await dev_start(stack, dev_sandbox)
        await shell.start()
        for step in walkthrough.steps:
            await shell.run(step)
    finally:
        await shell.stop()
        await stack.stop()
