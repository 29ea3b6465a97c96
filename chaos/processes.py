"""Commands and the product's services as OS processes (``python -m services.<name>``).

A service is started exactly as in production, pointed at the run's own
Postgres and RabbitMQ, so a SIGKILL is the kernel's, not a test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]


class CommandFailed(RuntimeError):
    pass


async def run_command(
    argv: list[str], *, what: str, check: bool = True, ok_if: str | None = None
) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    if process.returncode != 0 and check and not (ok_if and ok_if in text):
        raise CommandFailed(f"{what} failed ({process.returncode}): {text[-2000:]}")
    return text


class ServiceProcess:
    """One replica of one service, logging to its own file."""

    def __init__(
        self,
        service: str,
        replica: int,
        log_dir: Path,
        env: dict[str, str],
        *,
        argv: tuple[str, ...] | None = None,
        port: int | None = None,
        ready_path: str = "/readyz",
    ) -> None:
        self.service = service
        self.replica = replica
        self.name = f"{service}-{replica}"
        self.port = port or int(env[f"{service.upper()}_PORT"])
        # Another program than a service (the Stripe sandbox): its command line.
        self._argv = argv or ("-m", f"services.{service}")
        self._ready_path = ready_path
        self.log_file = log_dir / f"{self.name}.log"
        self._env = env
        self._process: asyncio.subprocess.Process | None = None
        self.kills = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self, *, ready_within: float = 90.0) -> None:
        with self.log_file.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                *self._argv,
                cwd=ROOT,
                env={**os.environ, **self._env},
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        await self.wait_ready(ready_within)

    async def wait_ready(self, within: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                if self._process is None or self._process.returncode is not None:
                    raise RuntimeError(f"{self.name} exited while starting:\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.url}{self._ready_path}") as response:
                        if response.status == 200:
                            return
                if loop.time() > deadline:
                    raise RuntimeError(f"{self.name} not ready in {within:.0f}s:\n{self.tail()}")
                await asyncio.sleep(0.2)

    def freeze(self) -> None:
        """SIGSTOP: the process holds what it has in hand and takes nothing more."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    async def kill(self) -> None:
        """SIGKILL: no drain, no clean-up; what it held unacked goes back to its queue."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        await self._process.wait()
        self.kills += 1

    async def stop(self, grace: float = 30.0) -> None:
        if self._process is None or self._process.returncode is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._process.wait(), grace)
        except TimeoutError:
            self._process.send_signal(signal.SIGKILL)
            await self._process.wait()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
