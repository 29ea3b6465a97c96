"""A service's side of the contract: handlers bound to declared endpoints.

For each :class:`Endpoint` a service owns, :class:`ServiceRoutes` serves
``endpoint.internal_path`` and, before the handler runs: reads the caller the
gateway passed on, checks the role again (the service does not rely on the
gateway alone), checks path ids, and validates the query and the JSON body
against the endpoint's models, answering 400 (unreadable) or 422 (invalid,
naming each field) in the one error shape. State-changing calls with an
``Idempotency-Key`` run through ``shared/http/idempotency.py``; the handler
makes its database effect with :meth:`Call.commit`, which stores the answer in
the same transaction. An endpoint declared ``claims_own_key`` gets a new key
as ``Call.new_key`` and claims it in its effect's own statement; a key already
there (:class:`~shared.http.idempotency.KeyExists`) goes through the generic
claim, then the handler runs again holding ``Call.claim``. The answer is the
endpoint's response model, serialised the way the OpenAPI document describes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

import asyncpg
import orjson
import pydantic
import stripe
from aiohttp import web
from pydantic import BaseModel, ConfigDict

from shared import db
from shared.api.caller import CALLER, USER_ID_HEADER, Caller, Role
from shared.api.endpoint import Access, Endpoint
from shared.db import DbConnection
from shared.http import idempotency
from shared.http.errors import (
    ApiError,
    ErrorDetail,
    bad_request,
    from_validation_error,
    json_response,
    refuse_nul,
)
from shared.logging import current_context
from shared.stripe_calls import api_error_for

B = TypeVar("B", bound=BaseModel)
Q = TypeVar("Q", bound=BaseModel)
R = TypeVar("R", bound=BaseModel | None)


class Empty(BaseModel):
    """The body or query of an endpoint that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class IdempotencySettings:
    ttl: timedelta = timedelta(hours=24)
    lease: timedelta = timedelta(seconds=60)


@dataclass
class Call(Generic[B, Q]):
    """One validated request, as a handler receives it."""

    request: web.Request
    endpoint: Endpoint
    caller: Caller
    path: Mapping[str, str]
    body: B
    query: Q
    pool: asyncpg.Pool[Any]
    service: str
    claim: idempotency.Claim | None = None
    # A key to claim in the effect's statement (Endpoint.claims_own_key); the
    # handler sets ``claim`` once its statement claimed it.
    new_key: idempotency.NewKey | None = None
    committed: bool = False
    _stripe_keys: dict[str, str] = field(default_factory=dict)

    @property
    def request_id(self) -> str | None:
        value = current_context().get("request_id")
        return value if isinstance(value, str) else None

    def stripe_key(self, purpose: str) -> str:
        """The idempotency key for one Stripe write made by this request.

        Derived from the client's ``Idempotency-Key`` when there is one, so a
        retried request reuses it and Stripe answers with the first object;
        otherwise random but fixed for this request, so the call policy's own
        retries reuse it.
        """
        if self.claim is not None:
            return self.claim.derived_key(self.service, purpose)
        if self.new_key is not None:
            raise RuntimeError("a Stripe key is derived from a claimed Idempotency-Key")
        if purpose not in self._stripe_keys:
            self._stripe_keys[purpose] = f"{self.service}-{uuid.uuid4().hex}"
        return self._stripe_keys[purpose]

    async def commit(self, effect: Callable[[DbConnection], Awaitable[R]]) -> R:
        """Run the request's database effect in one transaction, which also
        stores the answer under the request's ``Idempotency-Key``."""
        if self.committed:
            raise RuntimeError("a request commits its effect once")
        if self.new_key is not None and self.claim is None:
            raise RuntimeError("an effect commits under a claimed Idempotency-Key")
        async with db.transaction(self.pool) as conn:
            result = await effect(conn)
            if self.claim is not None:
                await idempotency.complete(conn, self.claim, self.endpoint.status, _dump(result))
        self.committed = True
        return result


Handler = Callable[[Call[Any, Any]], Awaitable[BaseModel | None]]


def _dump(model: BaseModel | None) -> Any:
    return None if model is None else model.model_dump(mode="json")


def _origin(model: type[BaseModel]) -> type[BaseModel]:
    """``Page`` for ``Page[EventSummary]``: a generic page built by shared code
    is parametrised by a type variable, not by the endpoint's item model."""
    return model.__pydantic_generic_metadata__["origin"] or model


def _respond(endpoint: Endpoint, result: BaseModel | None) -> web.Response:
    if endpoint.response is None:
        return web.Response(status=204)
    if not isinstance(result, BaseModel) or not issubclass(
        _origin(type(result)), _origin(endpoint.response)
    ):
        raise TypeError(f"{endpoint.operation_id} answered {type(result).__name__}")
    return json_response(_dump(result), status=endpoint.status)


# A public endpoint called without a token: an id no member has.
ANONYMOUS = Caller(user_id="", role=Role.MEMBER)


def _caller(endpoint: Endpoint, request: web.Request) -> Caller:
    if endpoint.access is Access.PUBLIC and USER_ID_HEADER not in request.headers:
        return ANONYMOUS
    return Caller.from_headers(request.headers)


def _path_params(endpoint: Endpoint, request: web.Request) -> dict[str, str]:
    values = {}
    for name, param in endpoint.path_params.items():
        value = request.match_info[name]
        if not param.matches(value):
            raise ApiError(
                400,
                "invalid_parameter",
                f"{name} is not a valid id",
                details=[ErrorDetail(field=name, reason=f"must match {param.pattern}")],
            )
        values[name] = value
    return values


_NO_QUERY = Empty()


def _query(endpoint: Endpoint, request: web.Request) -> BaseModel:
    if endpoint.query is None and not request.query:
        return _NO_QUERY  # nothing to validate: most calls, every spend
    model = endpoint.query or Empty
    query = dict(request.query)
    refuse_nul(query)
    try:
        return model.model_validate(query)
    except pydantic.ValidationError as exc:
        raise from_validation_error(exc) from exc


async def _body(endpoint: Endpoint, request: web.Request) -> tuple[BaseModel, bytes]:
    """The validated body, and its canonical bytes for the request fingerprint."""
    raw = await request.read()
    if endpoint.body is None:
        if raw.strip():
            raise bad_request("unexpected_body", "this operation takes no body")
        return Empty(), b""
    try:
        data = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise bad_request("invalid_json", f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise bad_request("invalid_json", "body must be a JSON object")
    if b"\\u0000" in raw:  # JSON can carry a NUL only escaped: walked only then
        refuse_nul(data)
    try:
        body = endpoint.body.model_validate(data)
    except pydantic.ValidationError as exc:
        raise from_validation_error(exc) from exc
    return body, orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


class ServiceRoutes:
    """The endpoints one service owns, each bound to its handler."""

    def __init__(
        self,
        service: str,
        endpoints: Sequence[Endpoint],
        *,
        idempotency_settings: IdempotencySettings | None = None,
    ) -> None:
        self.service = service
        self.endpoints = [e for e in endpoints if e.owner == service]
        self._handlers: dict[str, Handler] = {}
        self._idempotency = idempotency_settings or IdempotencySettings()

    def configure(self, settings: IdempotencySettings) -> None:
        self._idempotency = settings

    def implement(self, endpoint: Endpoint) -> Callable[[Any], Any]:
        if endpoint.owner != self.service:
            raise ValueError(f"{endpoint.operation_id} belongs to {endpoint.owner}")

        def register(handler: Any) -> Any:
            self._handlers[endpoint.operation_id] = handler
            return handler

        return register

    def install(self, app: web.Application, pool: Callable[[], asyncpg.Pool[Any]]) -> None:
        """Serve every endpoint; refuse to start if one has no handler."""
        missing = [e.operation_id for e in self.endpoints if e.operation_id not in self._handlers]
        if missing:
            raise RuntimeError(f"{self.service} has no handler for {missing}")
        for endpoint in self.endpoints:
            app.router.add_route(
                endpoint.method,
                endpoint.internal_path,
                self._serve(endpoint, self._handlers[endpoint.operation_id], pool),
            )

    def _serve(
        self, endpoint: Endpoint, handler: Handler, pool: Callable[[], asyncpg.Pool[Any]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            caller = _caller(endpoint, request)
            request[CALLER] = caller
            if not endpoint.access.allows(caller.role):
                raise ApiError(403, "forbidden", f"requires role {endpoint.access.value}")
            path = _path_params(endpoint, request)
            query = _query(endpoint, request)
            body, canonical = await _body(endpoint, request)
            call: Call[Any, Any] = Call(
                request=request,
                endpoint=endpoint,
                caller=caller,
                path=path,
                body=body,
                query=query,
                pool=pool(),
                service=self.service,
            )
            key = idempotency.read_key(request.headers.get(idempotency.HEADER))
            if key is None or not endpoint.changes_state:
                return _respond(endpoint, await _run(handler, call))
            return await self._idempotent(call, handler, key, canonical)

        return serve

    async def _idempotent(
        self, call: Call[Any, Any], handler: Handler, key: str, canonical: bytes
    ) -> web.StreamResponse:
        request_hash = idempotency.fingerprint(call.request.method, call.request.path, canonical)
        refused: ApiError | None = None
        if call.endpoint.claims_own_key:
            call.new_key = idempotency.NewKey(
                call.caller.user_id, key, request_hash, self._idempotency.lease
            )
            try:
                return await _settle(call, handler)
            except idempotency.KeyExists:
                pass  # nothing written: the generic claim below
            except ApiError as exc:
                if call.claim is not None or exc.status not in idempotency.STORED_ERROR_STATUSES:
                    raise
                # Refused before claiming (validation): stored under the key below,
                # as if the key had been claimed first.
                refused = exc
            finally:
                call.new_key = None
        held = await idempotency.claim(
            call.pool,
            scope=call.caller.user_id,
            key=key,
            request_fingerprint=request_hash,
            ttl=self._idempotency.ttl,
            lease=self._idempotency.lease,
        )
        if isinstance(held, idempotency.Replay):
            if held.status >= 400:
                return json_response(
                    held.response, status=held.status, headers={"Idempotent-Replayed": "true"}
                )
            if call.endpoint.response is None:
                return web.Response(status=204, headers={"Idempotent-Replayed": "true"})
            return json_response(
                held.response, status=held.status, headers={"Idempotent-Replayed": "true"}
            )
        call.claim = held
        if refused is not None:
            await _complete_alone(call, held, refused.status, refused.payload())
            raise refused
        return await _settle(call, handler)


async def _settle(call: Call[Any, Any], handler: Handler) -> web.StreamResponse:
    """Run the handler of a call with a key, and store or release the key it holds
    (``call.claim``) by how the handler ended."""
    try:
        result = await _run(handler, call)
    except ApiError as exc:
        if call.claim is not None:
            if exc.status in idempotency.STORED_ERROR_STATUSES and not isinstance(
                exc, idempotency.LeaseLost
            ):
                await _complete_alone(call, call.claim, exc.status, exc.payload())
            else:
                await idempotency.release(call.pool, call.claim)
        raise
    except BaseException:
        if call.claim is not None:
            await idempotency.release(call.pool, call.claim)
        raise
    if call.claim is None:
        # A handler claiming its own key answered without claiming it.
        raise RuntimeError(f"{call.endpoint.operation_id} answered without claiming its key")
    if not call.committed:
        await _complete_alone(call, call.claim, call.endpoint.status, _dump(result))
    return _respond(call.endpoint, result)


async def _run(handler: Handler, call: Call[Any, Any]) -> BaseModel | None:
    try:
        return await handler(call)
    except stripe.StripeError as exc:
        raise api_error_for(exc) from exc


async def _complete_alone(
    call: Call[Any, Any], held: idempotency.Claim, status: int, response: Any
) -> None:
    """Store the answer of a request that made no database effect of its own."""
    async with db.transaction(call.pool) as conn:
        await idempotency.complete(conn, held, status, response)
