"""`make token`: a dev JWT the gateway accepts, with the role and user asked for."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import aiohttp

from services.gateway.auth import Authenticator, TokenRules
from shared.api.caller import Role
from tests.gateway.helpers import api, assert_error, bearer
from tests.support import env
from tests.support.stack import Stack


def _make_token(
    *variables: str, secret: str | None = env.JWT_SECRET
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("JWT_")}
    if secret is not None:
        environment["JWT_SECRET"] = secret
    return subprocess.run(  # noqa: S603
        ["make", "--no-print-directory", "token", *variables],  # noqa: S607
        cwd=env.ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _caller(token: str) -> tuple[str, Role]:
    caller = Authenticator(TokenRules(secret=env.JWT_SECRET)).authenticate(f"Bearer {token}")
    return caller.user_id, caller.role


def test_make_token_prints_a_token_for_the_role_and_user_asked() -> None:
    made = _make_token("ROLE=member", "USER=u_42")
    assert made.returncode == 0, made.stderr
    assert _caller(made.stdout.strip()) == ("u_42", Role.MEMBER)


def test_make_token_defaults_to_an_admin_and_ignores_the_shells_user() -> None:
    made = _make_token()
    assert made.returncode == 0, made.stderr
    assert _caller(made.stdout.strip()) == ("dev-admin", Role.ADMIN)


def test_the_secret_comes_from_make_devs_secrets_file(tmp_path: Path) -> None:
    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text(f"SERVICE_TOKEN=abc\nJWT_SECRET={env.JWT_SECRET}\n")
    made = subprocess.run(  # noqa: S603
        [
            str(env.ROOT / ".venv/bin/python"),
            "scripts/dev_token.py",
            "--role",
            "staff",
            "--secrets-file",
            str(secrets_file),
        ],
        cwd=env.ROOT,
        env={k: v for k, v in os.environ.items() if k != "JWT_SECRET"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    assert _caller(made.stdout.strip()) == ("dev-staff", Role.STAFF)


def test_without_a_secret_it_says_how_to_get_one(tmp_path: Path) -> None:
    made = subprocess.run(  # noqa: S603
        [
            str(env.ROOT / ".venv/bin/python"),
            "scripts/dev_token.py",
            "--secrets-file",
            str(tmp_path / "none.env"),
        ],
        cwd=env.ROOT,
        env={k: v for k, v in os.environ.items() if k != "JWT_SECRET"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 1
    assert "make dev" in made.stderr
    assert made.stdout == ""


async def test_the_gateway_lets_a_made_admin_token_through(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    admin = _make_token("ROLE=admin").stdout.strip()
    status, answer, _ = await api(
        http, "GET", f"{stack.gateway}/v1/admin/events", headers=bearer(admin)
    )
    assert status == 200, answer
    member = _make_token("ROLE=member").stdout.strip()
    status, answer, _ = await api(
        http, "GET", f"{stack.gateway}/v1/admin/events", headers=bearer(member)
    )
    assert_error(status, answer, 403, "forbidden")
