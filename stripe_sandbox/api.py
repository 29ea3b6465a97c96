"""Shared plumbing for /v1 handlers: the call object, route table and list pagination."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import StripeError, invalid, required
from .params import Params, parse_int
from .sandbox import Sandbox
from .store import Obj


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any]
    match: dict[str, str] = field(default_factory=dict)
    status: int = 200
    # Made with a publishable key (stripe.js in the customer's browser): only the
    # client-side endpoints answer, and only with the object's client secret.
    publishable: bool = False

    def p(self, allowed: set[str] | None = None) -> Params:
        return Params(self.params, allowed)


Handler = Callable[[Sandbox, Call], Obj]
Route = tuple[str, str, Handler]

# What stripe.js may call with a publishable key.
PUBLISHABLE_ROUTES = frozenset(
    {
        ("GET", "/v1/payment_intents/{id}"),
        ("POST", "/v1/payment_intents/{id}/confirm"),
        ("GET", "/v1/setup_intents/{id}"),
        ("POST", "/v1/setup_intents/{id}/confirm"),
        ("POST", "/v1/payment_methods"),
    }
)


def require_client_secret(call: Call, obj: Obj) -> None:
    """With a publishable key the intent's ``client_secret`` must come along, and match."""
    if not call.publishable:
        return
    given = call.params.get("client_secret")
    if not given:
        raise required("client_secret")
    if given != obj["client_secret"]:
        label = "PaymentIntent" if obj["object"] == "payment_intent" else "SetupIntent"
        raise StripeError(
            400,
            "invalid_request_error",
            f"The client_secret provided does not match the client_secret associated with "
            f"the {label}.",
            param="client_secret",
            validation=True,
        )


LIST_PARAMS = {"limit", "starting_after", "ending_before", "created"}


def created_filter(value: Any, key: str = "created") -> Callable[[int], bool]:
    """Stripe's range filter: ``created=ts`` or ``created[gte|gt|lte|lt]=ts``."""
    if value is None or value == "":
        return lambda _: True
    if not isinstance(value, dict):
        exact = parse_int(value, key)
        return lambda ts: ts == exact
    bounds = {op: parse_int(value.get(op), f"{key}[{op}]") for op in ("gt", "gte", "lt", "lte")}
    for op in value:
        if op not in bounds:
            raise invalid(f"Received unknown parameter: {key}[{op}]", param=f"{key}[{op}]")

    def check(ts: int) -> bool:
        return not (
            (bounds["gt"] is not None and ts <= bounds["gt"])
            or (bounds["gte"] is not None and ts < bounds["gte"])
            or (bounds["lt"] is not None and ts >= bounds["lt"])
            or (bounds["lte"] is not None and ts > bounds["lte"])
        )

    return check


def paginate(objs: list[Obj], call: Call, url: str) -> Obj:
    """Newest-first cursor pagination exactly as the List API does it."""
    p = call.p()
    limit = p.int("limit", minimum=1)
    limit = 10 if limit is None else limit
    if limit > 100:
        raise invalid("This value must be less than or equal to 100.", param="limit")
    created_ok = created_filter(call.params.get("created"))
    objs = [o for o in objs if created_ok(int(o.get("created", 0)))]
    after, before = p.str("starting_after"), p.str("ending_before")
    ids = [o["id"] for o in objs]
    if after:
        if after not in ids:
            raise invalid(
                f"No such object: '{after}'", param="starting_after", code="resource_missing"
            )
        objs = objs[ids.index(after) + 1 :]
        page, has_more = objs[:limit], len(objs) > limit
    elif before:
        if before not in ids:
            raise invalid(
                f"No such object: '{before}'", param="ending_before", code="resource_missing"
            )
        objs = objs[: ids.index(before)]
        page, has_more = objs[-limit:], len(objs) > limit
    else:
        page, has_more = objs[:limit], len(objs) > limit
    return {"object": "list", "data": page, "has_more": has_more, "url": url}
