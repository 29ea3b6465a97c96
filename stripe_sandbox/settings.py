"""Account settings the Dashboard holds on Stripe, settable at start and at run time.

Revenue recovery (Billing > Revenue recovery > Retries): Smart Retries re-attempt
a failed subscription payment a number of times within a window (Stripe's
recommended default is 8 tries within 2 weeks; its model picks the moments, the
sandbox spreads them evenly so tests can predict them), and once all retries
have failed the subscription is canceled, marked unpaid or left past due.
Smart Retries are on for new Stripe accounts; a product that runs its own
dunning turns them off, and then a failed renewal stays open with
``next_payment_attempt: null`` until someone pays it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .clock import DAY

AFTER_RETRIES = ("canceled", "unpaid", "past_due")
RETRY_WINDOWS_DAYS = (7, 14, 21, 30, 60)  # Stripe offers 1, 2, 3 weeks, 1 or 2 months


class SettingsError(ValueError):
    """A settings value Stripe's Dashboard would not accept."""


@dataclass
class AccountSettings:
    smart_retries: bool = True
    retry_tries: int = 8
    retry_window_days: int = 14
    after_retries: str = "canceled"

    def update(self, values: dict[str, Any]) -> None:
        """Apply a partial update, all or nothing."""
        known = set(asdict(self))
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(f"unknown settings {unknown}; known: {sorted(known)}")
        merged = {**asdict(self), **values}
        if not isinstance(merged["smart_retries"], bool):
            raise SettingsError("smart_retries must be true or false")
        if merged["after_retries"] not in AFTER_RETRIES:
            raise SettingsError(f"after_retries must be one of {list(AFTER_RETRIES)}")
        tries = merged["retry_tries"]
        if not isinstance(tries, int) or isinstance(tries, bool) or not 1 <= tries <= 8:
            raise SettingsError("retry_tries must be an integer from 1 to 8")
        if merged["retry_window_days"] not in RETRY_WINDOWS_DAYS:
            raise SettingsError(f"retry_window_days must be one of {list(RETRY_WINDOWS_DAYS)}")
        for key, value in merged.items():
            setattr(self, key, value)

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    def next_retry_at(self, first_attempt_at: int, attempts_made: int) -> int | None:
        """When Smart Retries make the next attempt after ``attempts_made`` failed ones.

        None once every try is spent (or when Smart Retries are off).
        """
        if not self.smart_retries or attempts_made >= self.retry_tries:
            return None
        step = self.retry_window_days * DAY // max(1, self.retry_tries - 1)
        return first_attempt_at + attempts_made * step
