"""``shared/http/server.py`` overrides aiohttp internals, written for one
version: a different aiohttp fails here first, so the overrides are read
again (and tests/gateway/test_unreadable_requests.py run) before it ships."""

from __future__ import annotations

import tomllib

import aiohttp

from shared.http.server import WRITTEN_FOR
from tests.support import env


def test_the_installed_aiohttp_is_the_one_the_server_was_written_for() -> None:
    assert aiohttp.__version__ == WRITTEN_FOR


def test_the_project_pins_that_aiohttp() -> None:
    project = tomllib.loads((env.ROOT / "pyproject.toml").read_text())
    assert f"aiohttp=={WRITTEN_FOR}" in project["project"]["dependencies"]
