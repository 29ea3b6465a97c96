"""Client authentication: ``Authorization: Bearer <JWT>``, HS256 only.

PyJWT does the verification. The algorithm list is fixed to HS256, so a token
claiming ``alg: none`` (or RS256 signed with our secret as a "public key")
fails; ``exp``, ``sub`` and ``role`` are required; ``iss`` and ``aud`` are
checked when configured; a token whose ``exp`` lies further ahead than the
maximum lifetime is refused. Each refusal is a 401 whose code says which
(missing, malformed, expired, badly signed, unacceptable claims), counted by
reason.

Rotation: a token whose signature the current secret refuses is tried with
the previous secrets (``JWT_PREVIOUS_SECRETS``), so tokens issued before the
issuer switched keep working until they expire; each such acceptance is
counted, and when the count stays at zero the old secret can go.

Verified tokens are remembered (:class:`VerifiedTokens`), keyed by the token's
exact text, until their ``exp`` (plus the leeway) passes: a client sends the
same token with every call, and checking its signature and claims again each
time was a large share of a forwarded request's CPU. Only accepted tokens are
kept, a bounded number of them; a refusal is always decided afresh.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.types import Options

from shared import metrics
from shared.api.caller import Caller, Role
from shared.http.errors import ApiError

# Metric reason -> the error code a client sees.
_CODES = {
    "missing": "token_missing",
    "malformed": "token_malformed",
    "algorithm": "token_malformed",
    "expired": "token_expired",
    "signature": "token_signature_invalid",
    "claims": "token_claims_invalid",
}


def _unauthorized(reason: str, message: str) -> ApiError:
    metrics.API_AUTH_FAILURES.labels(reason).inc()
    return ApiError(401, _CODES[reason], message, headers={"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class _Verified:
    caller: Caller
    # Accepted until then (exp plus the leeway), as PyJWT would accept it.
    until: float
    # Signed with a previous secret: counted at every use, as when verified.
    previous_secret: bool


class VerifiedTokens:
    """Tokens already verified, by their text, at most ``size`` of them.

    When full, the oldest entry goes (insertion order): a token in steady use
    comes back at its next call, verified once more.
    """

    def __init__(self, size: int = 16_384) -> None:
        self._size = size
        self._entries: dict[str, _Verified] = {}

    def get(self, token: str, now: float) -> _Verified | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if now >= entry.until:
            del self._entries[token]
            return None
        return entry

    def put(self, token: str, entry: _Verified) -> None:
        if len(self._entries) >= self._size:
            del self._entries[next(iter(self._entries))]
        self._entries[token] = entry

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class TokenRules:
    secret: str
    previous_secrets: tuple[str, ...] = ()
    leeway: int = 0
    issuer: str | None = None
    audience: str | None = None
    max_lifetime: int = 24 * 3600


class Authenticator:
    def __init__(self, rules: TokenRules) -> None:
        self._rules = rules
        required = ["exp", "sub", "role"]
        if rules.issuer is not None:
            required.append("iss")
        if rules.audience is not None:
            required.append("aud")
        self._options: Options = {"require": required}
        self._verified = VerifiedTokens()

    def authenticate(self, authorization: str | None) -> Caller:
        if not authorization:
            raise _unauthorized("missing", "missing bearer token")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("malformed", "expected 'Authorization: Bearer <token>'")
        now = time.time()
        known = self._verified.get(token, now)
        if known is not None:
            if known.previous_secret:
                metrics.API_PREVIOUS_SECRET_TOKENS.inc()
            return known.caller
        previous_secret = False
        try:
            claims, previous_secret = self._decode(token)
        except jwt.ExpiredSignatureError as exc:
            raise _unauthorized("expired", "token expired") from exc
        except jwt.InvalidSignatureError as exc:
            raise _unauthorized("signature", "token signature invalid") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise _unauthorized("algorithm", "token algorithm not allowed") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthorized("claims", f"token lacks the {exc.claim} claim") from exc
        except (jwt.InvalidIssuerError, jwt.InvalidAudienceError) as exc:
            raise _unauthorized("claims", f"token not accepted here: {exc}") from exc
        except jwt.InvalidTokenError as exc:
            raise _unauthorized("malformed", "token malformed") from exc
        caller = self._caller(claims)
        if previous_secret:
            metrics.API_PREVIOUS_SECRET_TOKENS.inc()
        # _caller checked that exp is a number.
        until = float(claims["exp"]) + self._rules.leeway
        self._verified.put(token, _Verified(caller, until, previous_secret))
        return caller

    def _decode(self, token: str) -> tuple[dict[str, Any], bool]:
        """The claims, and whether a previous secret signed them."""
        try:
            return self._decode_with(token, self._rules.secret), False
        except jwt.InvalidSignatureError:
            # Only a wrong key is worth another try: every other refusal
            # (expired, claims) would be the same with any key.
            for secret in self._rules.previous_secrets:
                with contextlib.suppress(jwt.InvalidSignatureError):
                    return self._decode_with(token, secret), True
            raise

    def _decode_with(self, token: str, secret: str) -> dict[str, Any]:
        rules = self._rules
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            leeway=rules.leeway,
            issuer=rules.issuer,
            audience=rules.audience,
            options=self._options,
        )
        return claims

    def _caller(self, claims: dict[str, Any]) -> Caller:
        exp = claims["exp"]
        if not isinstance(exp, int | float) or exp - time.time() > self._rules.max_lifetime:
            raise _unauthorized("claims", "token lifetime exceeds the maximum allowed")
        sub, role = claims.get("sub"), claims.get("role")
        if not isinstance(sub, str) or not _SUB.fullmatch(sub):
            raise _unauthorized("claims", "token sub must be 1-255 printable characters")
        try:
            parsed = Role(str(role))
        except ValueError as exc:
            raise _unauthorized("claims", "token role unknown") from exc
        return Caller(
            user_id=sub,
            role=parsed,
            email=_optional(claims.get("email"), _EMAIL),
            tier=_optional(claims.get("discount_tier"), _TIER),
        )


# The user id is a path of records and a header value: printable, bounded.
_SUB = re.compile(r"[\x21-\x7e]{1,255}")
# Optional claims travel on to the services in headers: only plain values.
_EMAIL = re.compile(r"[^@\s]{1,128}@[^@\s]{1,128}")
_TIER = re.compile(r"[a-z0-9_-]{1,64}")


def _optional(value: Any, pattern: re.Pattern[str]) -> str | None:
    return value if isinstance(value, str) and pattern.fullmatch(value) else None
