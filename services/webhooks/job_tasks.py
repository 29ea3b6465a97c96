"""The reconcile jobs this process runs in the background (backfills, drift
reports): kept referenced while they run, cancelled on shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class JobTasks:
    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, job_id: str, run: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(run, name=f"{self._kind}:{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, within: float = 5.0) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=within)
