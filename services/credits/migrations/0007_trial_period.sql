-- The start of the subscription's trial period (subscription.activated with
-- status trialing). subscription.changed carries the new plan's full
-- allotments and no status: a change inside this period tops the trial up
-- to the new plan's trial credits, not to its paid allotment
-- (services/credits/handlers.py `changed`).
ALTER TABLE subscriptions ADD COLUMN trial_period_start timestamptz;
