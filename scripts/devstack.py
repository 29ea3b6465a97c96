"""Run the whole product locally: every service as its own process.

Started by ``make dev`` (scripts/dev.sh), which has already installed
everything, started Postgres and RabbitMQ, and exported the settings. This
gives each service its own Postgres role and RabbitMQ user (provisioned with
the admin rights of ``DATABASE_URL`` and ``AMQP_URL``) and each process only
its own secrets, starts the Stripe sandbox when asked (Smart Retries off: the retry service does
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
from urllib.parse import quote, urlsplit, urlunsplit

from shared.broker.policies import Management
from shared.broker.users import BrokerUser
from shared.broker.users import provision as provision_users
from shared.db_roles import ServiceRole, provision_all
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


# What no process inherits: each gets its own from least_privilege_env().
_SECRETS = {"DATABASE_URL", "AMQP_URL", "SERVICE_TOKEN", "STRIPE_SECRET_KEY", "JWT_SECRET"} | {
    f"{name.upper()}_{what}"
    for name, _, _ in SERVICES
    for what in ("SERVICE_TOKEN", "DB_PASSWORD", "AMQP_PASSWORD", "DATABASE_URL", "AMQP_URL")
}
# The services that call Stripe with the secret key.
_STRIPE_CALLERS = {"subscriptions", "retry"}


def _with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def own_urls(name: str) -> tuple[str | None, str]:
    """The service's DATABASE_URL (None for the gateway) and AMQP_URL."""
    upper = name.upper()
    amqp = os.environ.get(f"{upper}_AMQP_URL") or _with_user(
        os.environ["AMQP_URL"], f"billing_{name}", os.environ[f"{upper}_AMQP_PASSWORD"]
    )
    if name == "gateway":
        return None, amqp
    database = os.environ.get(f"{upper}_DATABASE_URL") or _with_user(
        os.environ["DATABASE_URL"], f"billing_{name}", os.environ[f"{upper}_DB_PASSWORD"]
    )
    return database, amqp


async def provision_access() -> None:
    """Each service's Postgres role and RabbitMQ user, from the admin URLs."""
    roles, users = [], []
    for name, _, _ in SERVICES:
        database, amqp = own_urls(name)
        if database is not None:
            roles.append(ServiceRole.from_url(name, database))
        users.append(BrokerUser.from_url(name, amqp))
    await provision_all(os.environ["DATABASE_URL"], roles)
    await provision_users(Management.for_broker(os.environ["AMQP_URL"]), users)
    print("database roles and broker users provisioned", flush=True)


def least_privilege_env(name: str) -> dict[str, str]:
    """``name``'s environment: the settings, and of the secrets only its own."""
    environment = {k: v for k, v in os.environ.items() if k not in _SECRETS}
    database, amqp = own_urls(name)
    environment["AMQP_URL"] = amqp
    if name == "gateway":
        environment["JWT_SECRET"] = os.environ["JWT_SECRET"]
        for other, _, _ in SERVICES:
            if other != "gateway":
                token = os.environ[f"{other.upper()}_SERVICE_TOKEN"]
                environment[f"{other.upper()}_SERVICE_TOKEN"] = token
        return environment
    assert database is not None
    environment["DATABASE_URL"] = database
    environment["SERVICE_TOKEN"] = os.environ[f"{name.upper()}_SERVICE_TOKEN"]
    if name == "webhooks":
        # The drift report reads the subscriptions service's mirrored objects.
        token = os.environ["SUBSCRIPTIONS_SERVICE_TOKEN"]
        environment["SUBSCRIPTIONS_SERVICE_TOKEN"] = token
    if name in _STRIPE_CALLERS and "STRIPE_SECRET_KEY" in os.environ:
        environment["STRIPE_SECRET_KEY"] = os.environ["STRIPE_SECRET_KEY"]
    return environment


async def spawn(
    name: str, argv: list[str], ready_url: str | None, env: dict[str, str] | None = None
) -> Child:
    # Own session: Ctrl-C reaches only this supervisor, which then stops each
    # child once, in order, instead of every process getting SIGINT at once.
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        env=env,
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
            sys.executable, "-m", f"services.{name}", "migrate", env=least_privilege_env(name)
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
        # The retry service's emails land as files in MAIL_DIR (.dev/mail/).
        children.append(
            await spawn(
                "mail-sink",
                [
                    sys.executable,
                    "scripts/mail_sink.py",
                    "--port",
                    str(port_of("SMTP_PORT", 8025)),
                    "--dir",
                    os.environ.get("MAIL_DIR", ".dev/mail"),
                ],
                None,
            )
        )
        if sandboxed:
            children.append(await start_sandbox())
            await wait_ready(children[-1])
        await provision_access()
        await migrate_all()
        for name, variable, default in SERVICES:
            url = f"http://127.0.0.1:{port_of(variable, default)}"
            children.append(
                await spawn(
                    name,
                    [sys.executable, "-m", f"services.{name}"],
                    f"{url}/readyz",
                    least_privilege_env(name),
                )
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
        mail_dir = os.environ.get("MAIL_DIR", ".dev/mail")
        print(f"  {'mail sink':14s} smtp://127.0.0.1:{port_of('SMTP_PORT', 8025)} -> {mail_dir}/")
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
