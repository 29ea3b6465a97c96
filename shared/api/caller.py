"""Who is calling: the authenticated end user, as the gateway passes it on.

The gateway verifies the JWT and forwards the caller's identity to the owning
service in ``X-User-*`` headers, next to the service token that proves the
request came through the gateway. Services trust these headers only behind
that token (``shared/http/internal_auth.py``) and decide ownership
themselves: a member sees only their own records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web

from shared.http.errors import ApiError


class Role(StrEnum):
    MEMBER = "member"
    STAFF = "staff"
    ADMIN = "admin"


USER_ID_HEADER = "X-User-Id"
ROLE_HEADER = "X-User-Role"
EMAIL_HEADER = "X-User-Email"
# Pricing eligibility (e.g. "partner"): the catalog maps a tier to its prices.
TIER_HEADER = "X-User-Tier"


@dataclass(frozen=True)
class Caller:
    user_id: str
    role: Role
    email: str | None = None
    tier: str | None = None

    @property
    def is_staff(self) -> bool:
        """Staff and admins act on any member's records."""
        return self.role in (Role.STAFF, Role.ADMIN)

    def owner_filter(self) -> str | None:
        """The user id a query must be limited to, or None for staff (everyone)."""
        return None if self.is_staff else self.user_id

    def may_see(self, owner_user_id: str | None) -> bool:
        return self.is_staff or owner_user_id == self.user_id

    def headers(self) -> dict[str, str]:
        values = {USER_ID_HEADER: self.user_id, ROLE_HEADER: self.role.value}
        if self.email:
            values[EMAIL_HEADER] = self.email
        if self.tier:
            values[TIER_HEADER] = self.tier
        return values

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Caller:
        user_id, role = headers.get(USER_ID_HEADER), headers.get(ROLE_HEADER)
        if not user_id or not role:
            raise ApiError(401, "missing_caller", "no caller identity on an internal call")
        try:
            parsed = Role(role)
        except ValueError as exc:
            raise ApiError(401, "missing_caller", "unknown caller role") from exc
        return cls(
            user_id=user_id,
            role=parsed,
            email=headers.get(EMAIL_HEADER) or None,
            tier=headers.get(TIER_HEADER) or None,
        )


CALLER = web.RequestKey("caller", Caller)
