"""The Stripe sandbox as a separate process, as the product meets Stripe: over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import env
from tests.support.processes import free_port


class SandboxProcess:
    def __init__(self, log_file: Path, *, webhook_url: str, webhook_secret: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_file = log_file
        self._args = [
            "--port",
            str(self.port),
            "--webhook-url",
            webhook_url,
            "--webhook-secret",
            webhook_secret,
            "--backoff",
            "0.05,0.1,0.2,0.4,0.8",
        ]
        self._process: asyncio.subprocess.Process | None = None

    async def start(self, ready_within: float = 20.0) -> None:
        with self._log_file.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "stripe_sandbox",
                *self._args,
                cwd=env.ROOT,
                stdout=log,
                stderr=log,
            )
        deadline = asyncio.get_running_loop().time() + ready_within
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                await self.control("GET", "/_sandbox/health")
                return
            if self._process.returncode is not None:
                raise AssertionError(f"sandbox exited: {self._log_file.read_text()[-2000:]}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("sandbox did not start in time")
            await asyncio.sleep(0.05)

    async def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.request(method, f"{self.url}{path}", json=body) as response,
        ):
            response.raise_for_status()
            return await response.json()

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await asyncio.wait_for(self._process.wait(), 10)
