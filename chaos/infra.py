"""A throwaway Postgres cluster and RabbitMQ node, owned by one chaos run.

The run restarts both, so it never uses the machine's shared ones: each gets
its own data directory under the run's work directory and its own ports, and
is stopped (and its directory removed) when the run ends. Run as root, the
servers run as their packages' users (``postgres``, ``rabbitmq``), as the
packaged services do; otherwise as the current user.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from chaos.processes import run_command

PG_BIN = Path(os.environ.get("CHAOS_PG_BIN", "/usr/lib/postgresql/15/bin"))
RABBITMQ_BIN = Path(os.environ.get("CHAOS_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_user(user: str, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """``argv`` run as ``user`` when we are root (initdb refuses root)."""
    assignments = [f"{k}={v}" for k, v in (env or {}).items()]
    if os.geteuid() != 0:
        return ["env", *assignments, *argv]
    return ["runuser", "-u", user, "--", "env", *assignments, *argv]


def _owned_dir(path: Path, user: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


async def _port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


@dataclass
class Postgres:
    """``initdb`` + ``pg_ctl`` in ``root``, listening on 127.0.0.1:``port``."""

    root: Path
    port: int
    user: str = "postgres"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/billing"

    def _pg(self, *args: str) -> list[str]:
        return _as_user(self.user, [str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args])

    async def start(self) -> None:
        _owned_dir(self.root, self.user)
        if not (self.data / "PG_VERSION").exists():
            await run_command(
                _as_user(
                    self.user,
                    [
                        str(PG_BIN / "initdb"),
                        "-D",
                        str(self.data),
                        "-U",
                        "postgres",
                        "-A",
                        "trust",
                        "--no-sync",
                    ],
                ),
                what="initdb",
            )
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
            " -c max_connections=300 -c shared_buffers=64MB"
        )
        await run_command(
            self._pg(
                "-o", options, "-l", str(self.root / "postgres.log"), "-w", "-t", "60", "start"
            ),
            what="pg_ctl start",
        )
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres")
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'billing'"):
                await conn.execute("CREATE DATABASE billing")
        finally:
            await conn.close()

    async def restart(self) -> None:
        """A fast shutdown (every connection dropped) and a start."""
        # -l again: without it the new server would inherit our pipe and
        # pg_ctl's output would never end.
        await run_command(
            self._pg(
                "-m", "fast", "-l", str(self.root / "postgres.log"), "-w", "-t", "60", "restart"
            ),
            what="pg restart",
        )

    async def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            await run_command(
                self._pg("-m", "immediate", "-w", "stop"), what="pg stop", check=False
            )


@dataclass
class RabbitNode:
    """One RabbitMQ node with its own name, ports, database and logs."""

    root: Path
    name: str
    amqp_port: int
    dist_port: int
    management_port: int
    user: str = "rabbitmq"

    @property
    def node(self) -> str:
        return f"{self.name}@localhost"

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def _environment(self) -> dict[str, str]:
        return {
            # The packaged node's cookie, so rabbitmqctl reaches this node too.
            "HOME": pwd.getpwnam(self.user).pw_dir if os.geteuid() == 0 else os.environ["HOME"],
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_PID_FILE": str(self.root / "node.pid"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            # Not the machine's rabbitmq-env.conf: it names the shared node.
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def _ctl(self, *args: str) -> list[str]:
        return _as_user(
            self.user,
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
            {"HOME": self._environment()["HOME"]},
        )

    async def start(self) -> None:
        _owned_dir(self.root, self.user)
        _owned_dir(self.root / "mnesia", self.user)
        _owned_dir(self.root / "log", self.user)
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {self.amqp_port}\n"
            f"management.tcp.port = {self.management_port}\n"
            "management.tcp.ip = 127.0.0.1\n"
            "loopback_users.guest = true\n"
            # The machine is shared: do not let a full disk alarm block us early.
            "disk_free_limit.absolute = 200MB\n"
            # Queue depths fresh enough to tell when the run has settled.
            "collect_statistics_interval = 1000\n"
        )
        (self.root / "advanced.config").write_text("[].\n")
        (self.root / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (self.root / "rabbitmq-env.conf").write_text("")
        for name in ("rabbitmq.conf", "advanced.config", "enabled_plugins", "rabbitmq-env.conf"):
            os.chmod(self.root / name, 0o644)
        await run_command(
            _as_user(
                self.user,
                [str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"],
                self._environment(),
            ),
            what="rabbitmq-server -detached",
        )
        await self.wait_ready()

    async def wait_ready(self, within: float = 120.0) -> None:
        await run_command(
            self._ctl("wait", "--timeout", str(int(within)), str(self.root / "node.pid")),
            what="rabbitmqctl wait",
        )
        await run_command(
            self._ctl("await_startup", "--timeout", str(int(within))), what="await_startup"
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not (await _port_open(self.amqp_port) and await _port_open(self.management_port)):
            if loop.time() > deadline:
                raise RuntimeError(f"RabbitMQ {self.node} did not open its ports")
            await asyncio.sleep(0.5)

    async def stop(self, *, check: bool = True) -> None:
        await run_command(self._ctl("stop"), what="rabbitmqctl stop", check=check)

    async def join(self, first: RabbitNode) -> None:
        """Make this (fresh) node a member of ``first``'s cluster."""
        await run_command(self._ctl("stop_app"), what="rabbitmqctl stop_app")
        await run_command(self._ctl("join_cluster", first.node), what="rabbitmqctl join_cluster")
        await run_command(self._ctl("start_app"), what="rabbitmqctl start_app")
        await self.wait_ready()

    async def restart(self) -> None:
        """The whole node down (the Erlang VM too) and up again."""
        await self.stop()
        await run_command(
            _as_user(
                self.user,
                [str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"],
                self._environment(),
            ),
            what="rabbitmq-server -detached",
        )
        await self.wait_ready()


def new_rabbit(root: Path, name: str) -> RabbitNode:
    return RabbitNode(
        root=root,
        name=name,
        amqp_port=free_port(),
        dist_port=free_port(),
        management_port=free_port(),
    )


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
