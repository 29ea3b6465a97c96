"""A member changing, cancelling and resuming their own subscription."""

from __future__ import annotations

from services.subscriptions import actions, contract, views
from services.subscriptions.routing import routes
from shared.api.service import Call, Empty

MEMBER = actions.Actor("member")


@routes.implement(contract.PREVIEW_CHANGE)
async def preview_change(call: Call[contract.PlanChange, Empty]) -> contract.ChangePreview:
    row = await views.owned_subscription(
        call.pool, call.path["subscription_id"], call.caller.user_id
    )
    return await actions.preview(call, row, call.body.plan, call.body.interval)


@routes.implement(contract.CHANGE_SUBSCRIPTION)
async def change_subscription(call: Call[contract.PlanChange, Empty]) -> contract.SubscriptionView:
    row = await views.owned_subscription(
        call.pool, call.path["subscription_id"], call.caller.user_id
    )
    return await actions.change(call, row, call.body.plan, call.body.interval, MEMBER)


@routes.implement(contract.CANCEL_SUBSCRIPTION)
async def cancel_subscription(call: Call[contract.Cancel, Empty]) -> contract.SubscriptionView:
    row = await views.owned_subscription(
        call.pool, call.path["subscription_id"], call.caller.user_id
    )
    return await actions.cancel(call, row, call.body.at_period_end, MEMBER)


@routes.implement(contract.RESUME_SUBSCRIPTION)
async def resume_subscription(call: Call[Empty, Empty]) -> contract.SubscriptionView:
    row = await views.owned_subscription(
        call.pool, call.path["subscription_id"], call.caller.user_id
    )
    return await actions.resume(call, row, MEMBER)
