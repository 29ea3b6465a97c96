"""The product against the sandbox with Smart Retries off, a fast dunning
schedule, and a real SMTP server (aiosmtpd) catching the emails."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.retry.helpers import MailSink, free_smtp_port
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack, start_stack

FAST_DUNNING: dict[str, Any] = {
    "dunning_first_delay_seconds": 0.3,
    "dunning_backoff_factor": 2.0,
    "dunning_max_delay_seconds": 1.0,
    "dunning_max_attempts": 3,
    "dunning_pause_max_seconds": 60.0,
    "dunning_poll_seconds": 0.05,
    "dunning_lease_seconds": 5.0,
    "dunning_unavailable_retry_seconds": 0.5,
    "mail_poll_seconds": 0.05,
    "mail_retry_first_seconds": 0.2,
    "mail_retry_max_seconds": 0.5,
    "smtp_timeout_seconds": 2.0,
    "stripe_call_budget_seconds": 5.0,
}


@pytest.fixture
def smtp_port() -> int:
    return free_smtp_port()


@pytest.fixture
def mail(smtp_port: int, tmp_path: Path) -> Iterator[MailSink]:
    sink = MailSink(smtp_port, tmp_path / "mail")
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[SandboxProcess]:
    """The sandbox as the product's account must be: Smart Retries off (the
    ``stripe_client`` fixture talks to this one too)."""
    process = SandboxProcess(tmp_path / "sandbox.log", extra_args=("--smart-retries", "off"))
    await process.start()
    yield process
    await process.stop()


@pytest.fixture
def retry_settings(smtp_port: int) -> dict[str, Any]:
    """The retry service's settings for the test; a test may change them first."""
    return {**FAST_DUNNING, "smtp_port": smtp_port}


@pytest.fixture
async def dunning_stack(
    clean_state: None, sandbox: SandboxProcess, retry_settings: dict[str, Any]
) -> AsyncIterator[Stack]:
    running = await start_stack(stripe_api_base=sandbox.url, retry=retry_settings)
    await sandbox.deliver_to(f"{running.gateway}/webhooks/stripe")
    yield running
    await running.stop()
