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
    def __init__(
        self,
        log_file: Path,
        *,
        webhook_url: str | None = None,
        webhook_secret: str = env.WEBHOOK_SECRET,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_file = log_file
        self._args = ["--port", str(self.port), "--backoff", "0.05,0.1,0.2,0.4,0.8", *extra_args]
        if webhook_url is not None:
            self._args += ["--webhook-url", webhook_url, "--webhook-secret", webhook_secret]
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

    async def deliver_to(self, url: str, secret: str = env.WEBHOOK_SECRET) -> None:
        """Send signed webhooks to ``url`` from now on (e.g. a stack's gateway)."""
        await self.control("POST", "/_sandbox/webhook_endpoints", {"url": url, "secret": secret})

    async def stop_deliveries(self) -> None:
        """Stripe's events stop: every webhook endpoint is removed, so from now
        on only what the product asks Stripe tells it what changed."""
        for endpoint in (await self.control("GET", "/_sandbox/webhook_endpoints"))["data"]:
            await self.control("DELETE", f"/_sandbox/webhook_endpoints/{endpoint['id']}")

    async def requests(self, path_prefix: str = "", method: str | None = None) -> list[Any]:
        """The sandbox's log of /v1 requests: what the product asked Stripe."""
        query = f"?path_prefix={path_prefix}" + (f"&method={method}" if method else "")
        answer = await self.control("GET", f"/_sandbox/requests{query}")
        return list(answer["data"])

    async def flush(self, timeout: float = 20.0) -> None:
        """Wait until every pending webhook was delivered."""
        answer = await self.control("POST", "/_sandbox/delivery/flush", {"timeout": timeout})
        assert answer["drained"], answer

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await asyncio.wait_for(self._process.wait(), 10)
