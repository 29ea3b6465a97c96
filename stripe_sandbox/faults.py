"""Injected faults for the next N API requests (optionally only under a path prefix)."""

from __future__ import annotations

from dataclasses import dataclass

# "slow" holds a request before it runs; "late_answer" runs it (its events go
# out) and holds the answer, as when the network is slow on the way back.
# "permission" is the 403 of a restricted key that lacks the endpoint's
# permission: the account's configuration, not the request, is at fault.
KINDS = ("rate_limit", "server_error", "slow", "late_answer", "permission")


@dataclass
class Fault:
    kind: str
    remaining: int
    delay_ms: int = 0
    path_prefix: str | None = None
    retry_after: int = 1


class Faults:
    def __init__(self) -> None:
        self.queue: list[Fault] = []

    def add(self, fault: Fault) -> None:
        self.queue.append(fault)

    def clear(self) -> None:
        self.queue.clear()

    def take(self, path: str) -> Fault | None:
        """Consume one use of the first fault that applies to ``path``."""
        for fault in self.queue:
            if fault.path_prefix and not path.startswith(fault.path_prefix):
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                self.queue.remove(fault)
            return fault
        return None

    def describe(self) -> list[dict[str, object]]:
        return [vars(f).copy() for f in self.queue]
