"""The OpenAPI 3.1 document of the ``/v1`` API, generated from the endpoint declarations.

Schemas come from the same pydantic models that validate requests and shape
responses (request bodies in pydantic's validation mode, responses in its
serialisation mode), so the document describes what the code does. Every
operation lists the errors any route can produce plus its own, all in the
one error shape.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from shared.api.endpoint import Access, Endpoint
from shared.http.errors import ErrorResponse

_REF = "#/components/schemas/{model}"

_ERROR_TEXT = {
    400: "Malformed request: JSON that does not parse, a body where the operation takes "
    "none, a malformed header or id.",
    401: "Missing, malformed, expired or badly signed token.",
    402: "The card was declined; `decline_code` says why.",
    403: "The caller's role may not do this.",
    404: "No such record, or it belongs to another member.",
    409: "Conflicts with the current state, or a request with this Idempotency-Key is "
    "still running.",
    413: "Body too large.",
    422: "A field is invalid or a business rule refuses the request; `details` names the fields.",
    429: "Rate limited; retry after `Retry-After` seconds.",
    500: "Unexpected error; `request_id` identifies it in the logs.",
    503: "A dependency (database, broker, Stripe) is unavailable; retry after "
    "`Retry-After` seconds.",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}


def error_statuses(endpoint: Endpoint) -> list[int]:
    """Every status an operation can answer besides its success."""
    statuses = {401, 422, 429, 500, 503} | set(endpoint.errors)
    if endpoint.access not in (Access.PUBLIC, Access.MEMBER):
        statuses.add(403)
    if endpoint.path_params:
        statuses |= {400, 404}
    if endpoint.body is not None or endpoint.owner != "gateway":
        # An owning service reads every request's body and Idempotency-Key,
        # even a GET's: a body where none is taken or a malformed key is a
        # 400, and the gateway refuses a body over its limit (413) first.
        statuses |= {400, 413}
    if endpoint.changes_state:
        statuses |= {400, 409}
    return sorted(statuses)


def _schemas(endpoints: Sequence[Endpoint]) -> tuple[dict[Any, Any], dict[str, Any]]:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorResponse, "serialization")]
    for e in endpoints:
        if e.body is not None:
            wanted.append((e.body, "validation"))
        if e.query is not None:
            wanted.append((e.query, "validation"))
        if e.response is not None:
            wanted.append((e.response, "serialization"))
    keyed, top = models_json_schema(list(dict.fromkeys(wanted)), ref_template=_REF)
    return keyed, top.get("$defs", {})


def _ref_name(ref: dict[str, Any]) -> str:
    return str(ref["$ref"]).rsplit("/", 1)[-1]


def _query_parameters(
    model: type[BaseModel], keyed: dict[Any, Any], defs: dict[str, Any]
) -> list[dict[str, Any]]:
    schema = defs[_ref_name(keyed[(model, "validation")])]
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "description": prop.get("description", ""),
            "schema": {k: v for k, v in prop.items() if k not in ("description", "title")},
        }
        for name, prop in schema.get("properties", {}).items()
    ]


def _operation(endpoint: Endpoint, keyed: dict[Any, Any], defs: dict[str, Any]) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": param.description,
            "schema": {"type": "string", "pattern": f"^{param.pattern}$"},
            **({"example": param.example} if param.example else {}),
        }
        for name, param in endpoint.path_params.items()
    ]
    if endpoint.query is not None:
        parameters += _query_parameters(endpoint.query, keyed, defs)
    if endpoint.changes_state:
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Retries with the same key get the first answer, never a "
                "second effect (kept 24 h).",
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": "^[\\x21-\\x7e]+$",
                },
            }
        )
    responses: dict[str, Any] = {}
    if endpoint.media_type != "application/json":
        responses[str(endpoint.status)] = {
            "description": endpoint.summary,
            "content": {endpoint.media_type: {"schema": {"type": "string"}}},
        }
    elif endpoint.response is None:
        responses[str(endpoint.status)] = {"description": "Done; no content."}
    else:
        responses[str(endpoint.status)] = {
            "description": endpoint.summary,
            "content": {
                "application/json": {"schema": keyed[(endpoint.response, "serialization")]}
            },
        }
    error_ref = keyed[(ErrorResponse, "serialization")]
    for status in error_statuses(endpoint):
        responses[str(status)] = {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": error_ref}},
            **({"headers": _RETRY_AFTER} if status in (429, 503) else {}),
        }
    operation: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "description": _describe(endpoint),
        "tags": [endpoint.tag],
        "parameters": parameters,
        "responses": responses,
        "security": [] if endpoint.access is Access.PUBLIC else [{"bearer": []}],
    }
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": keyed[(endpoint.body, "validation")]}},
        }
    return operation


def _describe(endpoint: Endpoint) -> str:
    who = {
        Access.PUBLIC: "Public: no token needed.",
        Access.MEMBER: "Any signed-in caller; a member sees only their own records.",
        Access.STAFF: "Staff and admins.",
        Access.ADMIN: "Admins only.",
    }[endpoint.access]
    return f"{endpoint.description}\n\n{who}".strip()


def document(endpoints: Iterable[Endpoint], *, title: str, version: str) -> dict[str, Any]:
    ordered = sorted(endpoints, key=lambda e: (e.tag, e.path, e.method))
    keyed, defs = _schemas(ordered)
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ordered:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(
            endpoint, keyed, defs
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def html_page(doc: dict[str, Any]) -> str:
    """A readable page of the document: operations by tag, with their schemas."""
    esc = html.escape
    sections: dict[str, list[str]] = {}
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            params = ", ".join(f"{p['name']} ({p['in']})" for p in op["parameters"]) or "none"
            statuses = ", ".join(op["responses"])
            sections.setdefault(op["tags"][0], []).append(
                f"<details><summary><code>{esc(method.upper())} {esc(path)}</code> "
                f"{esc(op['summary'])}</summary>"
                f"<p>{esc(op['description'])}</p><p><b>Parameters:</b> {esc(params)}</p>"
                f"<p><b>Body:</b> {esc(_schema_name(body.get('schema')))}</p>"
                f"<p><b>Responses:</b> {esc(statuses)}</p></details>"
            )
    schemas = "".join(
        f"<details><summary><code>{esc(name)}</code></summary><pre>"
        f"{esc(orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode())}</pre></details>"
        for name, schema in sorted(doc["components"]["schemas"].items())
    )
    tags = "".join(f"<h2>{esc(tag)}</h2>{''.join(ops)}" for tag, ops in sorted(sections.items()))
    title = esc(doc["info"]["title"])
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "summary{cursor:pointer;margin:.3em 0}pre{background:#f4f4f4;padding:1em}</style>"
        f"</head><body><h1>{title}</h1><p>Machine-readable: "
        "<a href='/v1/openapi.json'>/v1/openapi.json</a>. Authenticate with "
        "<code>Authorization: Bearer &lt;JWT&gt;</code>.</p>"
        f"{tags}<h2>Schemas</h2>{schemas}</body></html>"
    )


def _schema_name(schema: Any) -> str:
    if isinstance(schema, dict) and "$ref" in schema:
        return _ref_name(schema)
    return "none"
