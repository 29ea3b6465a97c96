"""`make token`: print a JWT the local gateway accepts, for trying the API by hand.

Signed with the dev stack's JWT_SECRET: the environment's, else the one
`make dev` generated into .dev/secrets.env. The claims are the ones the
gateway requires (`sub`, `role`, `exp`), plus `iss`/`aud` when JWT_ISSUER /
JWT_AUDIENCE are set, as the gateway then checks them. For development only:
production tokens come from the identity provider.

    make token                          # an admin token for user dev-admin
    make token ROLE=member USER=u_42    # a member token for user u_42
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jwt

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("member", "staff", "admin")
# The gateway refuses tokens living longer than JWT_MAX_LIFETIME_SECONDS (24 h).
MAX_TTL = 24 * 3600


def _secret(secrets_file: Path) -> str | None:
    if os.environ.get("JWT_SECRET"):
        return os.environ["JWT_SECRET"]
    if secrets_file.exists():
        for line in secrets_file.read_text().splitlines():
            name, _, value = line.partition("=")
            if name.strip() == "JWT_SECRET" and value.strip():
                return value.strip()
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", default="admin", choices=ROLES)
    parser.add_argument("--user", default="", help="the token's sub (default dev-<role>)")
    parser.add_argument("--email", default="", help="an email claim, for routes that use it")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    parser.add_argument("--secrets-file", type=Path, default=ROOT / ".dev" / "secrets.env")
    args = parser.parse_args(argv)
    if not 0 < args.ttl <= MAX_TTL:
        parser.error(f"--ttl must be between 1 and {MAX_TTL} seconds (the gateway's maximum)")
    secret = _secret(args.secrets_file)
    if secret is None:
        print(
            "no JWT_SECRET: set it, or run `make dev` once (it writes .dev/secrets.env)",
            file=sys.stderr,
        )
        return 1
    claims: dict[str, object] = {
        "sub": args.user or f"dev-{args.role}",
        "role": args.role,
        "exp": int(time.time()) + args.ttl,
    }
    if args.email:
        claims["email"] = args.email
    for claim, variable in (("iss", "JWT_ISSUER"), ("aud", "JWT_AUDIENCE")):
        if os.environ.get(variable):
            claims[claim] = os.environ[variable]
    print(jwt.encode(claims, secret, algorithm="HS256"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
