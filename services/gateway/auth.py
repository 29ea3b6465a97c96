"""Client authentication: ``Authorization: Bearer <JWT>``, HS256 only.

PyJWT does the verification. The algorithm list is fixed to HS256, so a token
claiming ``alg: none`` (or RS256 signed with our secret as a "public key")
fails; ``exp``, ``sub`` and ``role`` are required. Every failure is a 401
with a reason we count; an authenticated caller without the role is a 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import jwt
from aiohttp import web

from shared import metrics
from shared.http.errors import ApiError


class Role(StrEnum):
    MEMBER = "member"
    STAFF = "staff"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    user_id: str
    role: Role


_REQUEST_PRINCIPAL = web.RequestKey("principal", Principal)


def _unauthorized(reason: str, message: str) -> ApiError:
    metrics.API_AUTH_FAILURES.labels(reason).inc()
    return ApiError(401, "unauthorized", message)


class Authenticator:
    def __init__(self, secret: str, leeway: int = 0) -> None:
        self._secret = secret
        self._leeway = leeway

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise _unauthorized("missing", "missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("malformed", "expected 'Authorization: Bearer <token>'")
        try:
            claims = jwt.decode(
                token.strip(),
                self._secret,
                algorithms=["HS256"],
                leeway=self._leeway,
                options={"require": ["exp", "sub", "role"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _unauthorized("expired", "token expired") from exc
        except jwt.InvalidSignatureError as exc:
            raise _unauthorized("signature", "token signature invalid") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise _unauthorized("algorithm", "token algorithm not allowed") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthorized("claims", f"token lacks the {exc.claim} claim") from exc
        except jwt.InvalidTokenError as exc:
            raise _unauthorized("malformed", "token malformed") from exc
        sub, role = claims.get("sub"), claims.get("role")
        if not isinstance(sub, str) or not sub:
            raise _unauthorized("claims", "token sub must be a non-empty string")
        try:
            return Principal(user_id=sub, role=Role(str(role)))
        except ValueError as exc:
            raise _unauthorized("claims", "token role unknown") from exc


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def require_role(authenticator: Authenticator, *roles: Role) -> Callable[[Handler], Handler]:
    """Decorate a handler: authenticate, then check the caller holds one of ``roles``."""

    def decorate(handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            principal = authenticator.authenticate(request.headers.get("Authorization"))
            if principal.role not in roles:
                metrics.API_AUTH_FAILURES.labels("role").inc()
                raise ApiError(403, "forbidden", f"requires role {' or '.join(roles)}")
            request[_REQUEST_PRINCIPAL] = principal
            return await handler(request)

        return wrapped

    return decorate


def principal_of(request: web.Request) -> Principal:
    return request[_REQUEST_PRINCIPAL]
