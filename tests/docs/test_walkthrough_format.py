"""The walkthrough convention: how README blocks become steps, and when an answer matches."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.support.walkthrough_shell import StepFailed, WalkthroughShell
from tests.support.walkthroughs import (
    WalkthroughSyntaxError,
    mismatch,
    parse,
    parse_pattern,
    text_mismatch,
    unmarked_commands,
)

README = textwrap.dedent(
    """\
    # A product

    Not a walkthrough:

    ```sh
    rm -rf /
    ```

    <!-- walkthrough: first GRACE_SECONDS=0 -->
    ```sh
    TOKEN=$(make -s token)   # a comment, not an answer
    curl -s -X POST localhost:8080/v1/things \\
      -H "Authorization: Bearer $TOKEN" -d '{"name":
      "ada"}'
    # -> 201 {"id": "thing_...", "name": "ada",
    #         "tags": [...]}   (a note: {not JSON)
    curl -s localhost:8080/v1/things | jq -r .status   # -> "ok"
    curl -s localhost:8080/metrics | grep ready
    # -> service_ready{check="broker"} 1.0
    ```

    Prose in between.

    <!-- walkthrough: first -->

    ```bash
    curl -s localhost:8080/v1/things/nope
    # -> 404
    ```
    """
)


def test_marked_blocks_become_one_walkthrough_of_steps_with_their_answers() -> None:
    (walkthrough,) = parse(README)
    assert walkthrough.name == "first"
    assert walkthrough.settings == {"GRACE_SECONDS": "0"}
    lines = [step.line for step in walkthrough.steps]
    assert lines == [11, 12, 17, 18, 27]
    token, create, status, metrics, missing = walkthrough.steps
    assert token.expect is None and not token.writes
    assert create.command.endswith('"ada"}\'') and create.writes
    assert create.expect is not None and create.expect.status == 201
    assert create.expect.line == 15
    assert mismatch(create.expect.answer, {"id": "thing_1", "name": "ada", "tags": []}) is None
    assert status.expect is not None and status.expect.answer == "ok"
    assert metrics.expect is not None and metrics.expect.text_pattern is not None
    assert missing.expect is not None and missing.expect.status == 404
    assert missing.expect.answer is None


def test_a_marker_without_a_block_or_an_answer_without_a_command_is_refused() -> None:
    with pytest.raises(WalkthroughSyntaxError, match="line 1"):
        parse("<!-- walkthrough: x -->\nsome prose\n")
    with pytest.raises(WalkthroughSyntaxError, match="under no command"):
        parse("<!-- walkthrough: x -->\n```sh\n# -> 200\n```\n")


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        ('{"a": 1, ...}', {"a": 1, "b": 2}),
        ('{"a": 1}', {"a": 1, "b": 2}),
        ('{"id": "evt_...", "at": ...}', {"id": "evt_123", "at": "2026-11-25T10:00:00Z"}),
        ('{"id": "<job id>"}', {"id": 42}),
        ("[...]", [1, 2, 3]),
        ('[..., {"q": "b", "n": 1}, ...]', [{"q": "a"}, {"q": "b", "n": 1}, {"q": "c"}]),
        ("[1, 2]", [1, 2]),
        ('{"has_more": false, "next": null}', {"has_more": False, "next": None}),
    ],
)
def test_answers_that_match(expected: str, actual: object) -> None:
    assert mismatch(parse_pattern(expected), actual) is None


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        ('{"a": 1}', {"a": 2}),
        ('{"a": 1}', {"b": 1}),
        ('{"id": "evt_..."}', {"id": "cus_1"}),
        ("[1, 2]", [1, 2, 3]),
        ('[..., {"q": "b"}, {"q": "a"}, ...]', [{"q": "a"}, {"q": "b"}]),
        ('{"ok": false}', {"ok": 0}),
        ('{"n": 1}', {"n": True}),
        ("[...]", {"not": "a list"}),
    ],
)
def test_answers_that_do_not(expected: str, actual: object) -> None:
    assert mismatch(parse_pattern(expected), actual) is not None


def test_text_answers_allow_any_spacing_and_wildcards() -> None:
    assert text_mismatch('{"openapi": "3.1', '{"openapi":"3.1.0","info":{}}') is None
    assert text_mismatch("ready 1.0", "x\nready 1.0\n") is None
    assert text_mismatch("a ... c", "a b c") is None
    assert text_mismatch("ready 1.0", "ready 0.0") is not None


async def test_a_step_that_answers_otherwise_fails_with_its_readme_line(tmp_path: Path) -> None:
    (walkthrough,) = parse(
        '<!-- walkthrough: t -->\n```sh\nNAME=ada\necho "{\\"name\\": \\"$NAME\\"}"\n'
        '# -> {"name": "ada"}\ntrue -d sent; echo \'{"name": "bob"}\'\n# -> {"name": "ada"}\n```\n'
    )
    shell = WalkthroughShell(tmp_path, {}, {"PATH": "/usr/bin:/bin"})
    await shell.start()
    try:
        await shell.run(walkthrough.steps[0])
        await shell.run(walkthrough.steps[1])  # NAME carried from the step before
        # A step that sends something (-d) is never repeated: it fails at once.
        with pytest.raises(StepFailed, match="README line 7: name: expected 'ada', got 'bob'"):
            await shell.run(walkthrough.steps[2])
    finally:
        await shell.stop()


async def test_make_devs_ports_become_the_test_stacks(tmp_path: Path) -> None:
    shell = WalkthroughShell(tmp_path, {8080: "http://127.0.0.1:40001"}, {})
    assert shell.localise("curl localhost:8080/v1 http://127.0.0.1:8080/x 127.0.0.1:8089") == (
        "curl http://127.0.0.1:40001/v1 http://127.0.0.1:40001/x 127.0.0.1:8089"
    )


def test_commands_against_make_dev_outside_a_walkthrough_are_found() -> None:
    readme = textwrap.dedent(
        """\
        <!-- walkthrough: a -->
        ```sh
        curl -s localhost:8080/v1/x
        ```

        ```sh
        curl -s localhost:8080/v1/y
        ```

            curl -H "$AUTH" "$API/admin/events"

        ```json
        {"curl": "localhost:8080"}
        ```
            curl https://api.stripe.com/v1/customers
        """
    )
    assert unmarked_commands(readme) == [7, 10]
