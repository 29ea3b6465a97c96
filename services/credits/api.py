"""The credits service's API (``services/credits/contract.py``)."""

from __future__ import annotations

import functools
import time
import uuid
from datetime import datetime
from typing import Any

from services.credits import contract, ledger, overage
from services.credits import metrics as m
from shared import audit
from shared import catalog as catalog_module
from shared.api.pagination import Page, PageQuery, decode_cursor, page_of
from shared.api.service import Call, Empty, ServiceRoutes
from shared.db import DbConnection
from shared.http import idempotency
from shared.http.errors import ApiError, ErrorDetail, bad_request, invalid_field, not_found
from shared.runtime import CLOCK, STRIPE

routes = ServiceRoutes("credits", contract.ENDPOINTS)


def _now(call: Call[Any, Any]) -> datetime:
    return call.request.app[CLOCK].now()


def _type_name(credit_type: str) -> str:
    kind = catalog_module.default().credit_types.get(credit_type)
    return kind.name if kind is not None else credit_type


def _known_type(credit_type: str, field: str = "credit_type") -> None:
    if credit_type not in catalog_module.default().credit_types:
        raise invalid_field(field, f"unknown credit type {credit_type!r}")


@routes.implement(contract.SHOW_MY_CREDITS)
async def show_my_credits(call: Call[Empty, Empty]) -> contract.Balances:
    now = _now(call)
    async with call.pool.acquire() as conn:
        held = await ledger.spendable_by_expiry(conn, call.caller.user_id, now)
    types = [
        *catalog_module.default().credit_types,
        *(t for t in held if t not in catalog_module.default().credit_types),
    ]
    return contract.Balances(
        user_id=call.caller.user_id,
        at=now,
        balances=[
            contract.Balance(
                credit_type=t,
                name=_type_name(t),
                balance=sum(a for a, _ in held.get(t, [])),
                expiring=[contract.Expiring(amount=a, expires_at=e) for a, e in held.get(t, [])],
            )
            for t in types
        ],
    )


@routes.implement(contract.LIST_MY_TRANSACTIONS)
async def list_my_transactions(call: Call[Empty, PageQuery]) -> Page[contract.Transaction]:
    query = call.query
    last_id = decode_cursor(query.cursor, int)[0] if query.cursor is not None else None
    if last_id is not None and not 0 < last_id < 2**63:
        raise invalid_field("cursor", "not a cursor this API issued")
    rows = await call.pool.fetch(
        "SELECT id, kind, credit_type, amount, at, grant_id, spend_id, note FROM entries"
        " WHERE user_id = $1 AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $2",
        call.caller.user_id,
        query.limit + 1,
        last_id,
    )
    return page_of(
        rows,
        query.limit,
        lambda r: contract.Transaction.model_validate(dict(r)),
        lambda r: (int(r["id"]),),
    )


def _insufficient(credit_type: str, amount: int, balance: int) -> ApiError:
    return ApiError(
        422,
        "insufficient_credits",
        f"{amount} {credit_type} requested, {balance} available",
        details=[
            ErrorDetail(field="amount", reason=f"exceeds the balance of {balance}"),
            ErrorDetail(field="balance", reason=str(balance)),
        ],
    )


@routes.implement(contract.SPEND_CREDITS)
async def spend_credits(call: Call[contract.SpendRequest, Empty]) -> contract.Spend:
    started = time.perf_counter()
    body = call.body
    timed = True
    try:
        if call.claim is None and call.new_key is None:
            # A spend is money: a client retry must never spend twice.
            raise bad_request(
                "idempotency_key_required",
                "POST /v1/credits/spend needs an Idempotency-Key header",
                "Idempotency-Key",
            )
        if body.credit_type not in catalog_module.default().credit_types:
            m.SPENDS_REJECTED.labels("unknown_credit_type").inc()
            raise invalid_field("credit_type", f"unknown credit type {body.credit_type!r}")
        now = _now(call)
        if call.claim is None:
            made = await _spend_claiming(call, now)
        else:  # a key that was there already, claimed the generic way
            made = await _spend_answered(call, now)
        if made is not None:
            m.SPENT.labels(body.credit_type).inc(body.amount)
            return made

        # Beyond the balance: overage where the plan bills it, else the refusal.
        async def effect(conn: DbConnection) -> contract.Spend:
            spend = functools.partial(
                ledger.spend,
                conn,
                user_id=call.caller.user_id,
                credit_type=body.credit_type,
                amount=body.amount,
                reference=body.reference,
                now=now,
            )
            try:
                done = await spend()
            except ledger.InsufficientCredits:
                # Looked up only now: the common spend pays nothing for it.
                billed = await overage.billed_to(
                    conn, catalog_module.default(), call.caller.user_id, body.credit_type, now
                )
                if billed is None:
                    raise
                done = await spend(overage_allowed=True)
                customer_id, terms = billed
                await overage.record(
                    conn,
                    spend_id=done.id,
                    user_id=done.user_id,
                    customer_id=customer_id,
                    credit_type=done.credit_type,
                    terms=terms,
                    quantity=done.overage,
                    now=now,
                )
            return _answer(done)

        try:
            made = await call.commit(effect)
        except ledger.InsufficientCredits as exc:
            # The plan bills no overage for this type: beyond the balance is refused.
            m.SPENDS_REJECTED.labels("insufficient").inc()
            raise _insufficient(body.credit_type, body.amount, exc.balance) from exc
        m.SPENT.labels(body.credit_type).inc(body.amount - made.overage)
        if made.overage:
            m.OVERAGE.labels(body.credit_type).inc(made.overage)
            # After the commit, never inside it; a failure is retried on schedule.
            app = call.request.app
            await overage.report_due(
                call.pool, app.get(STRIPE), app[CLOCK], spend_id=made.id, limit=1
            )
        return made
    except idempotency.KeyExists:
        timed = False  # the request runs again, after the generic claim
        raise
    finally:
        if timed:
            m.SPEND_SECONDS.observe(time.perf_counter() - started)


def _answer(done: ledger.SpendResult) -> contract.Spend:
    return contract.Spend(
        id=done.id,
        credit_type=done.credit_type,
        amount=done.amount,
        reference=done.reference,
        created_at=done.created_at,
        balance_after=done.balance_after,
        consumed=[contract.Consumed(grant_id=g, amount=a) for g, a in done.consumed],
        overage=done.overage,
    )


def _template(call: Call[contract.SpendRequest, Empty], spend_id: str, now: datetime) -> Any:
    """The stored answer but for what only the spend knows, which the database
    fills in from the spend it made; the answer returned is built from the
    same values."""
    body = call.body
    return contract.Spend(
        id=spend_id,
        credit_type=body.credit_type,
        amount=body.amount,
        reference=body.reference,
        created_at=now,
        balance_after=0,
        consumed=[],
    ).model_dump(mode="json")


# The token of a key recorded complete: it matches no lease.
_NO_LEASE = uuid.UUID(int=0)


async def _spend_claiming(
    call: Call[contract.SpendRequest, Empty], now: datetime
) -> contract.Spend | None:
    """The common spend, a new key within the balance: the spend made and the
    key recorded with its answer in one statement, one commit
    (``ledger.spend_claimed``). None when the balance does not cover it: the
    key is then held (``call.claim``), nothing spent. Raises
    :class:`~shared.http.idempotency.KeyExists`, having written nothing, when
    the key was already there or another request recorded it meanwhile."""
    new, body = call.new_key, call.body
    assert new is not None  # the handler refused a spend without a key
    spend_id = ledger.new_spend_id()
    async with call.pool.acquire() as conn:
        done = await ledger.spend_claimed(
            conn,
            user_id=call.caller.user_id,
            credit_type=body.credit_type,
            amount=body.amount,
            reference=body.reference,
            now=now,
            spend_id=spend_id,
            key=(new.scope, new.key, new.request_hash),
            lease=new.lease,
            status=call.endpoint.status,
            answer=_template(call, spend_id, now),
        )
    if done is None:
        raise idempotency.KeyExists()
    if done.spend is None:
        assert done.lease_token is not None  # held for the path beyond the balance
        call.claim = new.claimed(done.lease_token, done.since)
        return None
    # The key is complete, with its answer: no lease is left to release, and
    # nothing for the framework to store.
    call.claim = new.claimed(_NO_LEASE, done.since)
    call.committed = True
    return _answer(done.spend)


async def _spend_answered(
    call: Call[contract.SpendRequest, Empty], now: datetime
) -> contract.Spend | None:
    """A spend under a key claimed the generic way (a takeover, an expired
    key): the spend and its stored answer in one statement, committed on its
    own (``ledger.spend_answered``); None, having written nothing, when the
    balance does not cover it."""
    held, body = call.claim, call.body
    assert held is not None
    spend_id = ledger.new_spend_id()
    try:
        async with call.pool.acquire() as conn:
            done = await ledger.spend_answered(
                conn,
                user_id=call.caller.user_id,
                credit_type=body.credit_type,
                amount=body.amount,
                reference=body.reference,
                now=now,
                spend_id=spend_id,
                key=(held.scope, held.key, held.token),
                status=call.endpoint.status,
                answer=_template(call, spend_id, now),
            )
    except ledger.AnswerNotStored as exc:
        raise idempotency.LeaseLost() from exc
    if done is None:
        return None
    # The answer is stored: nothing is left for the framework to complete.
    call.committed = True
    return _answer(done)


@routes.implement(contract.REVERSE_SPEND)
async def reverse_spend(call: Call[contract.ReverseRequest, Empty]) -> contract.Reversal:
    now = _now(call)
    caller = call.caller
    spend_id = call.path["spend_id"]

    outcome: list[ledger.ReversalResult] = []

    async def effect(conn: DbConnection) -> contract.Reversal:
        try:
            done = await ledger.reverse(conn, spend_id, now=now, owner=caller.owner_filter())
        except ledger.SpendNotFound as exc:
            raise not_found("spend") from exc
        if caller.is_staff and done.user_id != caller.user_id:
            # Staff acting on a member's spend: a staff write, with its reason.
            if call.body.reason is None:
                raise invalid_field("reason", "required when staff reverse a member's spend")
            if done.first_time:
                await audit.record(
                    conn,
                    caller=caller,
                    action="credits.spend.reverse",
                    target_type="credit_spend",
                    target_id=spend_id,
                    reason=call.body.reason,
                    request_id=call.request_id,
                    details={"user_id": done.user_id, "returned": done.returned},
                )
        outcome.append(done)
        return contract.Reversal(
            spend_id=done.spend_id,
            reversed_at=done.reversed_at,
            returned=done.returned,
            forfeited=done.forfeited,
        )

    answer = await call.commit(effect)
    done = outcome[-1]
    if done.first_time and done.returned:
        m.REVERSED.labels(done.credit_type).inc(done.returned)
    return answer


@routes.implement(contract.CREATE_ADMIN_GRANT)
async def create_admin_grant(call: Call[contract.AdminGrantRequest, Empty]) -> contract.Grant:
    body = call.body
    _known_type(body.credit_type)
    now = _now(call)
    if body.expires_at is not None and body.expires_at <= now:
        raise invalid_field("expires_at", "must be in the future")
    priority = (
        body.priority
        if body.priority is not None
        else catalog_module.default().admin_grant_priority
    )
    # One grant per request: the Idempotency-Key (or this request) names it.
    # A key is forgotten 24 h after it was first claimed and may then name
    # another request: its lifetime (kept by a takeover) is part of the name.
    claimed = call.claim
    if claimed is not None:
        life = claimed.since.isoformat() if claimed.since is not None else ""
        key = f"admin:{call.caller.user_id}:{claimed.key}:{life}"
    else:
        key = f"admin:{call.caller.user_id}:{ledger.new_spend_id()}"

    async def effect(conn: DbConnection) -> contract.Grant:
        await ledger.grant(
            conn,
            ledger.NewGrant(
                key=key,
                user_id=body.user_id,
                credit_type=body.credit_type,
                source="admin",
                amount=body.amount,
                priority=priority,
                expires_at=body.expires_at,
            ),
            now,
        )
        row = await conn.fetchrow("SELECT * FROM grants WHERE grant_key = $1", key)
        if row is None:  # pragma: no cover - granted just above, in this transaction
            raise RuntimeError(f"grant {key} vanished")
        await audit.record(
            conn,
            caller=call.caller,
            action="credits.grant.create",
            target_type="credit_grant",
            target_id=str(row["id"]),
            reason=body.reason,
            request_id=call.request_id,
            details={
                "user_id": body.user_id,
                "credit_type": body.credit_type,
                "amount": body.amount,
                "expires_at": body.expires_at.isoformat() if body.expires_at else None,
                "priority": priority,
            },
        )
        return contract.Grant.model_validate(dict(row))

    made = await call.commit(effect)
    m.GRANTED.labels(body.credit_type, "admin").inc(body.amount)
    return made


@routes.implement(contract.SHOW_BALANCES_AT)
async def show_balances_at(call: Call[Empty, contract.BalancesAtQuery]) -> contract.BalancesAt:
    at = call.query.at or _now(call)
    user_id = call.path["user_id"]
    async with call.pool.acquire() as conn:
        found = await ledger.balances_at(conn, user_id, at)
    return contract.BalancesAt(
        user_id=user_id,
        at=at,
        balances=[contract.BalanceAt(credit_type=t, balance=b) for t, b in found.items()],
    )
