"""Run the whole product locally: every service as its own process.

Started by ``make dev`` (scripts/dev.sh), which has already installed
everything, started Postgres and RabbitMQ, and exported the settings. This
starts the Stripe sandbox when asked (Smart Retries off: the retry service does
the dunning), runs each service's migrations, starts the five services, waits
until each answers ``/readyz``, and only then seeds the plans catalog, so the
sandbox's webhooks for it find a gateway that takes them the first time. Then
it prints where everything listens. Their logs are interleaved on stdout, each
line prefixed with the service's name. Ctrl-C (or SIGTERM) stops them all
gracefully: SIGTERM, then SIGKILL for any still running after a grace period.
If one dies on its own, the rest are stopped too, so a half-running stack
never goes unnoticed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass

from shared.shutdown import TAIL_SECONDS

SERVICES = (
    ("webhooks", "WEBHOOKS_PORT", 8081),
    ("subscriptions", "SUBSCRIPTIONS_PORT", 8082),
    ("credits", "CREDITS_PORT", 8083),
    ("retry", "RETRY_PORT", 8084),
    ("gateway", "GATEWAY_PORT", 8080),
)
# What a service may take to stop on SIGTERM (shared/shutdown.py): the drain,
# then its bounded clean-up.
GRACE_SECONDS = float(os.environ.get("SHUTDOWN_DRAIN_SECONDS", "20")) + TAIL_SECONDS
READY_TIMEOUT = 60


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    ready_url: str | None


def port_of(variable: str, default: int) -> int:
    return int(os.environ.get(variable, default))


async def pipe_output(name: str, stream: asyncio.StreamReader) -> None:
    prefix = f"{name:>13} | ".encode()
    while line := await stream.readline():
        sys.stdout.buffer.write(prefix + line)
        sys.stdout.flush()


async def spawn(name: str, argv: list[str], ready_url: str | None) -> Child:
    # Own session: Ctrl-C reaches only this supervisor, which then stops each
    # child once, in order, instead of every process getting SIGINT at once.
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    asyncio.create_task(pipe_output(name, process.stdout))  # noqa: RUF006 - lives as long as the child
    return Child(name, process, ready_url)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - local URL we built
            return bool(response.status == 200)
    except OSError:
        return False


async def wait_ready(child: Child) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while child.ready_url and not await asyncio.to_thread(answers, child.ready_url):
        if child.process.returncode is not None:
            raise SystemExit(f"{child.name} exited with {child.process.returncode} while starting")
        if time.monotonic() > deadline:
            raise SystemExit(f"{child.name} not ready after {READY_TIMEOUT}s: {child.ready_url}")
        await asyncio.sleep(0.2)


async def stop_all(children: list[Child]) -> None:
    for child in reversed(children):
        if child.process.returncode is None:
            child.process.send_signal(signal.SIGTERM)
    waits = [asyncio.wait_for(c.process.wait(), GRACE_SECONDS) for c in children]
    for child, outcome in zip(
        children, await asyncio.gather(*waits, return_exceptions=True), strict=True
    ):
        if isinstance(outcome, TimeoutError):
            print(f"{child.name} did not stop within {GRACE_SECONDS:.0f}s; killing it", flush=True)
            child.process.kill()
            await child.process.wait()


async def migrate_all() -> None:
    for name, _, _ in SERVICES:
        if name == "gateway":
            continue  # no database
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{name}", "migrate"
        )
        if await process.wait() != 0:
            raise SystemExit(f"migrations of {name} failed")
    print("migrations applied", flush=True)


async def start_sandbox() -> Child:
    sandbox_port = os.environ["SANDBOX_PORT"]
    gateway_port = port_of("GATEWAY_PORT", 8080)
    return await spawn(
        "stripe-sandbox",
        [
            sys.executable,
            "-m",
            "stripe_sandbox",
            "--port",
            sandbox_port,
            "--webhook-url",
            f"http://127.0.0.1:{gateway_port}/webhooks/stripe",
            "--webhook-secret",
            os.environ["STRIPE_WEBHOOK_SECRETS"].split(",")[0].strip(),
            # The retry service runs dunning; Stripe retrying too would charge twice.
            "--smart-retries",
            "off",
        ],
        f"http://127.0.0.1:{sandbox_port}/_sandbox/health",
    )


async def seed_catalog() -> None:
    """Sync the plans into the sandbox once the gateway is ready for their webhooks."""
    seed = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.subscriptions.seed_catalog"
    )
    if await seed.wait() != 0:
        raise SystemExit("seeding the sandbox with the plans catalog failed")


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    children: list[Child] = []
    try:
        sandboxed = os.environ.get("DEV_START_SANDBOX") == "1"
        if sandboxed:
            children.append(await start_sandbox())
            await wait_ready(children[-1])
        await migrate_all()
        for name, variable, default in SERVICES:
            url = f"http://127.0.0.1:{port_of(variable, default)}"
            children.append(
                await spawn(name, [sys.executable, "-m", f"services.{name}"], f"{url}/readyz")
            )
        for child in children:
            await wait_ready(child)
        if sandboxed:
            await seed_catalog()

        print("\nThe stack is up:", flush=True)
        for name, variable, default in SERVICES:
            print(f"  {name:14s} http://127.0.0.1:{port_of(variable, default)}", flush=True)
        if os.environ.get("DEV_START_SANDBOX") == "1":
            print(f"  {'stripe sandbox':14s} {os.environ['STRIPE_API_BASE']}", flush=True)
        print("Ctrl-C stops everything.\n", flush=True)

        exits = [asyncio.create_task(c.process.wait()) for c in children]
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
        if stopping not in done:
            dead = [c.name for c in children if c.process.returncode is not None]
            print(f"{', '.join(dead)} exited; stopping the stack", flush=True)
    finally:
        print("stopping...", flush=True)
        await stop_all(children)
        print("stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
