"""Operations the gateway serves itself: the API's document and the merged audit log."""

from __future__ import annotations

from typing import Any

from pydantic import RootModel

from shared.api.endpoint import Access, Endpoint
from shared.api.pagination import Page
from shared.audit import AuditEntry, AuditQuery


class OpenApiDocument(RootModel[dict[str, Any]]):
    """This document."""


OPENAPI = Endpoint(
    "GET",
    "/v1/openapi.json",
    operation_id="openapi",
    summary="The OpenAPI 3.1 document of this API",
    owner="gateway",
    access=Access.PUBLIC,
    tag="meta",
    response=OpenApiDocument,
)
DOCS = Endpoint(
    "GET",
    "/v1/docs",
    operation_id="docs",
    summary="A readable page of this API's document",
    owner="gateway",
    access=Access.PUBLIC,
    tag="meta",
    media_type="text/html",
)
AUDIT = Endpoint(
    "GET",
    "/v1/admin/audit",
    operation_id="list_audit_entries",
    summary="Staff writes across every service, newest first",
    description="Who (id and role) did what to which record, why, in which request, when.",
    owner="gateway",
    access=Access.STAFF,
    tag="admin",
    query=AuditQuery,
    response=Page[AuditEntry],
)

ENDPOINTS = (OPENAPI, DOCS, AUDIT)
