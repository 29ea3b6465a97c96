"""One public operation of the ``/v1`` API, declared once.

An :class:`Endpoint` says everything the gateway, the owning service and the
OpenAPI document need: the route, who may call it, the models of its query,
body and response, and the errors it documents. ``access`` defaults to
nothing: a route is public only when its declaration says ``Access.PUBLIC``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel

from shared.api.caller import Role

Method = Literal["GET", "POST", "PATCH", "PUT", "DELETE"]
_PATH_PARAM = re.compile(r"\{([a-z_]+)\}")


class Access(StrEnum):
    PUBLIC = "public"  # no token needed (one is still read when sent)
    MEMBER = "member"  # any authenticated caller; members see their own records
    STAFF = "staff"  # staff or admin
    ADMIN = "admin"

    def allows(self, role: Role) -> bool:
        match self:
            case Access.PUBLIC | Access.MEMBER:
                return True
            case Access.STAFF:
                return role in (Role.STAFF, Role.ADMIN)
            case Access.ADMIN:
                return role is Role.ADMIN
        return False  # pragma: no cover - exhaustive

    @property
    def roles(self) -> tuple[Role, ...]:
        return tuple(r for r in Role if self.allows(r))


@dataclass(frozen=True)
class PathParam:
    """A path segment that is an id: its pattern is checked before anything runs."""

    pattern: str
    description: str = ""
    example: str | None = None

    def matches(self, value: str) -> bool:
        return re.fullmatch(self.pattern, value) is not None


@dataclass(frozen=True)
class Endpoint:
    method: Method
    path: str  # public path, e.g. /v1/subscriptions/{subscription_id}
    operation_id: str
    summary: str
    owner: str  # the service that implements it ("gateway" for the gateway itself)
    access: Access
    tag: str
    response: type[BaseModel] | None = None  # None: an empty 204
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: Mapping[str, PathParam] = field(default_factory=dict)
    # Statuses this operation produces beyond the ones every route can
    # (see shared/api/openapi.py), e.g. 402 for a card, 409 for a conflict.
    errors: tuple[int, ...] = ()
    description: str = ""
    # Anything but JSON is served by the gateway itself (the docs page).
    media_type: str = "application/json"
    # The handler claims a new Idempotency-Key itself, in the statement of its
    # effect (one commit instead of two), through ``Call.new_key``; a key
    # already there goes through the generic claim (shared/api/service.py).
    claims_own_key: bool = False

    def __post_init__(self) -> None:
        named = set(_PATH_PARAM.findall(self.path))
        if named != set(self.path_params):
            raise ValueError(f"{self.operation_id}: path params {named} != {set(self.path_params)}")
        if not self.path.startswith("/v1/"):
            raise ValueError(f"{self.operation_id}: public paths start with /v1/")
        if self.body is not None and self.method == "GET":
            raise ValueError(f"{self.operation_id}: a GET takes no body")

    @property
    def changes_state(self) -> bool:
        """State-changing calls accept an ``Idempotency-Key``."""
        return self.method in ("POST", "PATCH", "PUT", "DELETE")

    @property
    def internal_path(self) -> str:
        """Where the owning service serves it: ``/v1/x`` -> ``/internal/x``."""
        return "/internal/" + self.path.removeprefix("/v1/")
