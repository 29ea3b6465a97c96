"""The README's walkthroughs as data: their steps and the answers they promise.

The convention (README, "Walkthroughs are tests"): a fenced ```sh block right
after ``<!-- walkthrough: NAME [SETTING=value ...] -->`` belongs to walkthrough
NAME; blocks with the same name are one walkthrough, in README order. Each
command (a line, with its ``\\``, ``|``, ``&&`` continuations and open quotes)
is a step; a comment ``# -> [STATUS] [ANSWER]`` under it (or at the end of its
line) says what comes back. ANSWER is JSON in which ``...`` stands for what
varies (a value, the rest of an object or a list, part of a string) and
``"<anything>"`` for any value (text after it is a note for the reader); or
plain text, searched for in the output, with ``...`` as a wildcard. Other
comments are prose for the reader.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_MARKER = re.compile(r"^<!--\s*walkthrough:\s*(?P<name>[\w.-]+)(?P<settings>[^>]*?)\s*-->\s*$")
_FENCE_OPEN = re.compile(r"^```(sh|bash|shell)\s*$")
_EXPECT_LINE = re.compile(r"^\s*#\s*->\s?(?P<rest>.*)$")
_EXPECT_INLINE = re.compile(r"\s#\s*->\s?(?P<rest>.*)$")
_STATUS = re.compile(r"^(?P<status>[1-5]\d\d)(?:\s+|$)(?P<rest>.*)$", re.DOTALL)
# curl options that send something: a step with one of them is not repeated.
_WRITES = re.compile(r"(^|\s)(-X\s*(POST|PUT|PATCH|DELETE)|-d|--data[\w-]*|-F|--form|--json|-T)\b")


class Anything:
    """A placeholder in an expected answer: ``...`` or ``"<...>"``."""

    def __repr__(self) -> str:
        return "..."


ANY = Anything()


@dataclass
class Expectation:
    line: int
    text: str
    status: int | None
    answer: Any = None  # a JSON pattern, or None
    text_pattern: str | None = None  # when the answer is not JSON


@dataclass
class Step:
    line: int
    command: str
    expect: Expectation | None = None

    @property
    def writes(self) -> bool:
        """Whether the step sends something (then it is never repeated)."""
        return bool(_WRITES.search(self.command))


@dataclass
class Walkthrough:
    name: str
    line: int
    settings: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)


class WalkthroughSyntaxError(ValueError):
    pass


def parse_readme(path: Path) -> list[Walkthrough]:
    return parse(path.read_text(encoding="utf-8"))


def parse(text: str) -> list[Walkthrough]:
    walkthroughs: dict[str, Walkthrough] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        marker = _MARKER.match(lines[index].strip())
        index += 1
        if marker is None:
            continue
        name = marker["name"]
        walkthrough = walkthroughs.setdefault(name, Walkthrough(name=name, line=index))
        for word in marker["settings"].split():
            key, equals, value = word.partition("=")
            if not equals:
                raise WalkthroughSyntaxError(
                    f"README line {index}: setting {word!r} is not KEY=value"
                )
            walkthrough.settings[key] = value
        while index < len(lines) and not lines[index].strip():
            index += 1
        if index >= len(lines) or not _FENCE_OPEN.match(lines[index].strip()):
            raise WalkthroughSyntaxError(
                f"README line {index}: a walkthrough marker must be followed by a ```sh block"
            )
        start = index + 1
        end = start
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        walkthrough.steps.extend(parse_block(lines[start:end], first_line=start + 1))
        index = end + 1
    return list(walkthroughs.values())


_DEV_URL = re.compile(r"(?:localhost|127\.0\.0\.1):(?:808\d|12111)\b|\$API\b")


def unmarked_commands(text: str) -> list[int]:
    """README lines with a command against `make dev` outside any walkthrough block
    (fenced or indented): a walkthrough the test would not run."""
    lines = text.splitlines()
    found: list[int] = []
    marked = False
    fence: str | None = None  # inside a fence: "walkthrough", "shell" or "other"
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if fence is not None:
            if stripped.startswith("```"):
                fence = None
            elif fence == "shell" and _is_dev_command(stripped):
                found.append(number)
            continue
        if stripped.startswith("```"):
            shell = stripped == "```" or bool(_FENCE_OPEN.match(stripped))
            fence = "walkthrough" if marked and shell else "shell" if shell else "other"
            marked = False
            continue
        if _MARKER.match(stripped):
            marked = True
        elif stripped:
            marked = False
            if line.startswith("    ") and _is_dev_command(stripped):
                found.append(number)
    return found


def _is_dev_command(line: str) -> bool:
    return not line.startswith("#") and "curl" in line and bool(_DEV_URL.search(line))


def _complete(command: str) -> bool:
    stripped = command.rstrip()
    if stripped.endswith(("\\", "|", "&&", "||")):
        return False
    try:
        shlex.split(command, comments=True)
    except ValueError:  # an open quote: the command goes on
        return False
    return True


def parse_block(lines: list[str], first_line: int) -> list[Step]:
    steps: list[Step] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        number = first_line + index
        stripped = line.strip()
        expect = _EXPECT_LINE.match(line)
        if expect is not None:
            if not steps or steps[-1].expect is not None:
                raise WalkthroughSyntaxError(f"README line {number}: `# ->` under no command")
            text, index = _gather(expect["rest"], lines, index + 1)
            steps[-1].expect = expectation(text, number)
            continue
        if not stripped or stripped.startswith("#"):
            index += 1
            continue
        command = line
        while not _complete(command) and index + 1 < len(lines):
            index += 1
            command += "\n" + lines[index]
        index += 1
        step = Step(line=number, command=command)
        inline = _EXPECT_INLINE.search(command.splitlines()[-1])
        if inline is not None:
            text, index = _gather(inline["rest"], lines, index)
            step.expect = expectation(text, number)
        steps.append(step)
    return steps


def _gather(first: str, lines: list[str], index: int) -> tuple[str, int]:
    """An answer spread over several comment lines, until its brackets close."""
    text = first.strip()
    while _open_brackets(text) > 0 and index < len(lines) and lines[index].lstrip().startswith("#"):
        text += " " + lines[index].lstrip()[1:].strip()
        index += 1
    return text, index


def _open_brackets(text: str) -> int:
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
    return depth


def expectation(text: str, line: int) -> Expectation:
    status: int | None = None
    rest = text.strip()
    found = _STATUS.match(rest)
    if found is not None:
        status = int(found["status"])
        rest = found["rest"].strip()
    result = Expectation(line=line, text=text, status=status)
    if not rest:
        return result
    if rest[0] in '{["' or rest in ("true", "false", "null") or _is_number(rest):
        # Not JSON after all (the start of a long answer, say): searched as text.
        # After a whole object or list, the rest of the line is a note for the reader.
        with contextlib.suppress(WalkthroughSyntaxError):
            result.answer = parse_pattern(rest[: _end_of_value(rest)])
            return result
    result.text_pattern = rest
    return result


def _end_of_value(text: str) -> int:
    """Where the object or list ``text`` starts with closes (all of it otherwise)."""
    if text[0] not in "{[":
        return len(text)
    for end in range(1, len(text) + 1):
        if text[end - 1] in "}]" and _open_brackets(text[:end]) == 0:
            return end
    return len(text)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---- expected answers: JSON with `...` ----

_TOKEN = re.compile(
    r"""\s*(?:(?P<punct>[{}\[\]:,])|(?P<dots>\.\.\.)|(?P<string>"(?:[^"\\]|\\.)*")"""
    r"""|(?P<literal>true|false|null|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?))"""
)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None:
            raise WalkthroughSyntaxError(f"cannot read the answer at {text[position:][:30]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match[kind]))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise WalkthroughSyntaxError(f"expected {value or 'more'} in the answer, got {token}")
        self.at += 1
        return token

    def value(self) -> Any:
        kind, text = self.take()
        if kind == "dots":
            return ANY
        if kind == "literal":
            return json.loads(text)
        if kind == "string":
            string = json.loads(text)
            if string.startswith("<") and string.endswith(">"):
                return ANY
            return Pattern(string) if "..." in string else string
        if text == "{":
            return self.object()
        if text == "[":
            return self.array()
        raise WalkthroughSyntaxError(f"unexpected {text!r} in the answer")

    def object(self) -> dict[str, Any]:
        members: dict[str, Any] = {}
        while True:
            token = self.peek()
            if token is None:
                raise WalkthroughSyntaxError("an object in the answer is not closed")
            if token[1] == "}":
                self.take()
                return members
            if token[0] == "dots":  # "and other keys": always allowed
                self.take()
            else:
                kind, key = self.take()
                if kind != "string":
                    raise WalkthroughSyntaxError(f"an object key must be a string, got {key}")
                self.take(":")
                members[json.loads(key)] = self.value()
            if self.peek() is not None and self.peek() == ("punct", ","):
                self.take()

    def array(self) -> ExpectedList:
        items: list[Any] = []
        open_ended = False
        while True:
            token = self.peek()
            if token is None:
                raise WalkthroughSyntaxError("a list in the answer is not closed")
            if token[1] == "]":
                self.take()
                return ExpectedList(items, open_ended)
            if token[0] == "dots":
                self.take()
                open_ended = True
            else:
                items.append(self.value())
            if self.peek() == ("punct", ","):
                self.take()


@dataclass(frozen=True)
class Pattern:
    """A string with ``...`` where anything may stand (ids, times)."""

    text: str

    def matches(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        regex = ".*".join(re.escape(part) for part in self.text.split("..."))
        return re.fullmatch(regex, value, re.DOTALL) is not None


@dataclass(frozen=True)
class ExpectedList:
    """Exactly these items; with ``open_ended`` (a ``...`` in it) these among others, in order."""

    items: list[Any]
    open_ended: bool


def parse_pattern(text: str) -> Any:
    parser = _Parser(text)
    value = parser.value()
    if parser.peek() is not None:
        raise WalkthroughSyntaxError(f"more after the answer: {parser.tokens[parser.at :][:3]}")
    return value


def mismatch(expected: Any, actual: Any, where: str = "") -> str | None:
    """Why ``actual`` is not the answer shown (None when it is)."""
    here = where or "the answer"
    if expected is ANY:
        return None
    if isinstance(expected, Pattern):
        return None if expected.matches(actual) else f"{here}: {actual!r} is not {expected.text!r}"
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{here}: expected an object, got {actual!r}"
        for key, value in expected.items():
            if key not in actual:
                return f"{here}: no {key!r} in {sorted(actual)}"
            problem = mismatch(value, actual[key], f"{where}.{key}" if where else key)
            if problem:
                return problem
        return None
    if isinstance(expected, ExpectedList):
        if not isinstance(actual, list):
            return f"{here}: expected a list, got {actual!r}"
        if not expected.open_ended:
            if len(actual) != len(expected.items):
                return f"{here}: expected {len(expected.items)} items, got {actual!r}"
            for number, (item, value) in enumerate(zip(expected.items, actual, strict=True)):
                problem = mismatch(item, value, f"{where}[{number}]")
                if problem:
                    return problem
            return None
        # With `...`: the items shown appear in this order, among others.
        position = 0
        for item in expected.items:
            while position < len(actual) and mismatch(item, actual[position]) is not None:
                position += 1
            if position == len(actual):
                return f"{here}: nothing matches {item!r} (in order) in {actual!r}"
            position += 1
        return None
    if isinstance(expected, bool) or isinstance(actual, bool) or expected is None:
        return None if expected is actual else f"{here}: expected {expected!r}, got {actual!r}"
    if expected != actual:
        return f"{here}: expected {expected!r}, got {actual!r}"
    return None


def text_mismatch(pattern: str, output: str) -> str | None:
    """``pattern`` found in ``output``: ``...`` is anything, a space any spacing."""
    regex = ".*?".join(
        r"\s*".join(re.escape(word) for word in part.split()) for part in pattern.split("...")
    )
    if re.search(regex, output, re.DOTALL):
        return None
    return f"{pattern!r} not in the output"
