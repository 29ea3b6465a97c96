"""A service as a real OS process (``python -m services.<name>``), to kill it
the way an orchestrator or the kernel would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from tests.support import env

# Ports handed out below the kernel's ephemeral range (32768-60999 on Linux):
# a port chosen now and bound a moment later is never taken meanwhile by an
# outgoing connection's source port, as one from bind(0) can be.
_PORTS = range(20000, 32768)
_handed_out: set[int] = set()


def free_port() -> int:
    for _ in range(200):
        port = random.choice(_PORTS)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port in 20000-32767")


class ServiceProcess:
    def __init__(self, service: str, log_file: Path, **environment: str) -> None:
        self.service = service
        self.port = free_port()
        self.log_file = log_file
        self._environment = {
            "DATABASE_URL": env.DATABASE_URL,
            "AMQP_URL": env.AMQP_URL,
            "SERVICE_TOKEN": env.SERVICE_TOKEN,
            "RETRY_DELAYS_MS": "[" + ",".join(map(str, env.FAST_RETRY_DELAYS_MS)) + "]",
            "LOG_LEVEL": "INFO",
            f"{service.upper()}_PORT": str(self.port),
            **environment,
        }
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process else None

    async def start(self, ready_within: float = 20.0) -> None:
        with self.log_file.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"services.{self.service}",
                cwd=env.ROOT,
                env={**os.environ, **self._environment},
                stdout=log,
                stderr=log,
            )
        deadline = asyncio.get_running_loop().time() + ready_within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                if self._process.returncode is not None:
                    raise AssertionError(f"{self.service} exited at start:\n{self.logs()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.url}/readyz") as response:
                        if response.status == 200:
                            return
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"{self.service} not ready in time:\n{self.logs()}")
                await asyncio.sleep(0.05)

    async def serving(self) -> bool:
        """Whether the process still accepts HTTP connections."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http,
                http.get(f"{self.url}/healthz") as response,
            ):
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def kill(self) -> int:
        """SIGKILL: no clean-up of any kind."""
        return await self._signal(signal.SIGKILL, within=10.0)

    def terminate(self) -> None:
        """SIGTERM, without waiting: the graceful shutdown an orchestrator asks for."""
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)

    async def wait(self, within: float) -> int:
        assert self._process is not None
        return await asyncio.wait_for(self._process.wait(), within)

    async def stop(self) -> None:
        """Make sure the process is gone (test clean-up)."""
        if self._process is None or self._process.returncode is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._process.wait(), 15)
        except TimeoutError:
            await self._signal(signal.SIGKILL, within=10.0)

    async def _signal(self, signum: int, within: float) -> int:
        assert self._process is not None
        if self._process.returncode is None:
            self._process.send_signal(signum)
        return await asyncio.wait_for(self._process.wait(), within)

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace")[-4_000:]
