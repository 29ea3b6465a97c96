"""schemathesis against the live gateway and every service behind it, with a
valid token for each role (and none): no 5xx, every answer conforms to the
OpenAPI document (status, content type, headers, body schema), and every
error is the one error shape (``schemathesis_hooks.py``).

It runs schemathesis's CLI as its own process against the stack running in
this test's event loop, reading the document from ``/v1/openapi.json``, so
routes a service adds are fuzzed without touching this test. Bounded by the
examples per operation and a hard timeout (about a minute on this machine).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.gateway.helpers import token
from tests.support import env
from tests.support.stack import Stack

EXAMPLES_PER_OPERATION = 15
TIMEOUT_SECONDS = 240
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "error_body_shape",
    ]
)


async def _schemathesis(gateway: str, role: str | None, report: Path) -> tuple[int, str]:
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{gateway}/v1/openapi.json",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--workers",
        "1",
        "--seed",
        "20261125",
        "--request-timeout",
        "20",
        "--suppress-health-check",
        "all",
        "--no-shrink",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]
    if role is not None:
        command += [
            "--header",
            f"Authorization: Bearer {token(role, sub=f'user_fuzz_{role}', expires_in=3600)}",
        ]
    environment = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.contract.schemathesis_hooks",
        "PYTHONPATH": str(env.ROOT),
        "NO_COLOR": "1",
    }
    process = await asyncio.create_subprocess_exec(
        *command,
        # Hypothesis keeps its example database in the working directory.
        cwd=report.parent,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"schemathesis took over {TIMEOUT_SECONDS} s") from None
    return process.returncode or 0, output.decode(errors="replace")


@pytest.mark.parametrize("role", ["admin", "staff", "member", None], ids=str)
async def test_the_api_holds_its_contract_under_fuzzing(
    stripe_stack: Stack, role: str | None, tmp_path: Path
) -> None:
    code, output = await _schemathesis(stripe_stack.gateway, role, tmp_path / "junit.xml")
    assert code == 0, output[-8000:]
    assert "No issues found" in output or " passed" in output, output[-3000:]
