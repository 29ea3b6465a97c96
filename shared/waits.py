"""Waiting on an event with a time limit, without losing a cancellation.

On Python 3.11 ``asyncio.wait_for`` returns the inner result when the inner
wait completes in the same loop iteration as the task is cancelled: the
cancellation is swallowed. A background loop that waits that way (a relay
woken by NOTIFY, a scheduler polled on a stop event) then never ends, and the
process hangs at shutdown. ``asyncio.timeout`` does not have that race.
"""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True when it is set."""
    if seconds is not None and seconds <= 0:
        return event.is_set()
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
