"""Runs a README walkthrough's steps in one bash, as a reader would type them.

One shell for the whole walkthrough, so variables set by a step (``TOKEN=...``,
an id taken with jq) are there for the next. The ports ``make dev`` listens on
are replaced with the test stack's own in each command. ``curl`` is found
first in a folder of the test's, where a wrapper runs the real curl and keeps
each answer's status line and body, so a step is checked against its HTTP
status even when its output went into a variable or through jq.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import env
from tests.support.walkthroughs import Step, mismatch, text_mismatch

_DONE = "__walkthrough_step_done__"
# A read-only step whose answer does not match yet is asked again for this
# long: a reader typing the next command gives the stack that much time too.
SETTLE_SECONDS = 30.0
STEP_TIMEOUT = 90.0
_STATUS_LINE = re.compile(r"^HTTP/[\d.]+ (\d{3})", re.MULTILINE)

_CURL_WRAPPER = """#!/usr/bin/env bash
# The walkthrough test's curl: the real one, keeping the status line and body.
set -o pipefail
rm -f "$WALKTHROUGH_DIR/headers" "$WALKTHROUGH_DIR/body"
{real} -D "$WALKTHROUGH_DIR/headers" "$@" | tee "$WALKTHROUGH_DIR/body"
"""


class StepFailed(AssertionError):
    pass


@dataclass
class Outcome:
    exit_code: int
    output: str
    errors: str
    status: int | None
    body: str


def _strip_headers(text: str) -> str:
    """What ``curl -i`` printed, without its header blocks."""
    while text.startswith("HTTP/"):
        _, separator, rest = text.partition("\r\n\r\n")
        if not separator:
            _, separator, rest = text.partition("\n\n")
        text = rest
    return text


def _json_values(text: str) -> list[Any]:
    decoder = json.JSONDecoder()
    values: list[Any] = []
    position = 0
    text = text.strip()
    while position < len(text):
        value, end = decoder.raw_decode(text, position)
        values.append(value)
        position = end
        while position < len(text) and text[position].isspace():
            position += 1
    return values


class WalkthroughShell:
    def __init__(self, workdir: Path, ports: dict[int, str], environment: dict[str, str]) -> None:
        self.workdir = workdir
        self.ports = ports
        self.environment = environment
        self._bash: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        bin_dir = self.workdir / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        real = shutil.which("curl")
        assert real is not None, "the walkthroughs need curl"
        wrapper = bin_dir / "curl"
        wrapper.write_text(_CURL_WRAPPER.format(real=real))
        wrapper.chmod(0o755)
        environment = {**self.environment, "WALKTHROUGH_DIR": str(self.workdir)}
        environment["PATH"] = f"{bin_dir}{os.pathsep}{environment.get('PATH', '')}"
        self._bash = await asyncio.create_subprocess_exec(
            "bash",
            "--noprofile",
            "--norc",
            cwd=env.ROOT,
            env=environment,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )

    async def stop(self) -> None:
        if self._bash is not None and self._bash.returncode is None:
            assert self._bash.stdin is not None
            self._bash.stdin.close()
            try:
                await asyncio.wait_for(self._bash.wait(), 10)
            except TimeoutError:
                self._bash.kill()
                await self._bash.wait()

    def localise(self, command: str) -> str:
        """The command with ``make dev``'s ports replaced by the test stack's."""

        def replace(match: re.Match[str]) -> str:
            port = int(match["port"])
            return self.ports[port] if port in self.ports else match[0]

        return re.sub(r"(?:https?://)?(?:localhost|127\.0\.0\.1):(?P<port>\d+)\b", replace, command)

    async def execute(self, command: str) -> Outcome:
        bash = self._bash
        assert bash is not None and bash.stdin is not None and bash.stdout is not None
        out, err = self.workdir / "out", self.workdir / "err"
        for leftover in ("headers", "body"):
            (self.workdir / leftover).unlink(missing_ok=True)
        # The command's own lines, then the brace on a line of its own, so a
        # trailing comment cannot swallow it.
        bash.stdin.write(
            f'{{ {command}\n}} </dev/null >"{out}" 2>"{err}"; echo "{_DONE} $?"\n'.encode()
        )
        await bash.stdin.drain()
        exit_code = await asyncio.wait_for(self._until_done(), STEP_TIMEOUT)
        headers = self._read("headers")
        statuses = _STATUS_LINE.findall(headers)
        return Outcome(
            exit_code=exit_code,
            output=out.read_text(errors="replace") if out.exists() else "",
            errors=err.read_text(errors="replace") if err.exists() else "",
            status=int(statuses[-1]) if statuses else None,
            body=self._read("body"),
        )

    def _read(self, name: str) -> str:
        path = self.workdir / name
        return path.read_text(errors="replace") if path.exists() else ""

    async def _until_done(self) -> int:
        assert self._bash is not None and self._bash.stdout is not None
        while True:
            line = await self._bash.stdout.readline()
            if not line:
                raise StepFailed("the shell exited (a step ran `exit`?)")
            text = line.decode(errors="replace").strip()
            if text.startswith(_DONE):
                return int(text.split()[-1])

    async def run(self, step: Step) -> Outcome:
        """Run the step; a read-only one is repeated until it answers as shown."""
        command = self.localise(step.command)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_SECONDS
        while True:
            outcome = await self.execute(command)
            problem = check(step, outcome)
            if problem is None:
                return outcome
            if step.writes or loop.time() > deadline:
                raise StepFailed(describe(step, outcome, problem))
            await asyncio.sleep(0.5)


def check(step: Step, outcome: Outcome) -> str | None:
    """Why the step's outcome is not what the README says (None when it is)."""
    if outcome.exit_code != 0:
        return f"exit code {outcome.exit_code}"
    expect = step.expect
    if expect is None or expect.status is None:
        if outcome.status is not None and outcome.status >= 400 and expect is None:
            return f"HTTP {outcome.status}, and the README shows no error here"
    elif outcome.status != expect.status:
        return f"HTTP {outcome.status}, the README says {expect.status}"
    if expect is None or (expect.answer is None and expect.text_pattern is None):
        return None
    shown = _strip_headers(outcome.output) if outcome.output.strip() else ""
    answer = shown or _strip_headers(outcome.body)
    if expect.text_pattern is not None:
        return text_mismatch(expect.text_pattern, answer)
    try:
        values = _json_values(answer)
    except ValueError:
        return f"not JSON: {answer[:300]!r}"
    if not values:
        return "no answer"
    return mismatch(expect.answer, values[0])


def describe(step: Step, outcome: Outcome, problem: str) -> str:
    where = step.expect.line if step.expect is not None else step.line
    return (
        f"README line {where}: {problem}\n"
        f"step (line {step.line}):\n{step.command}\n"
        f"printed: {outcome.output[-1500:]!r}\n"
        f"stderr: {outcome.errors[-1500:]!r}\n"
        f"last answer: {outcome.status} {outcome.body[-1500:]!r}"
    )
