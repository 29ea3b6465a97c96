-- The billing state of a member, mirrored from Stripe's events
-- (services/subscriptions/state/): what they subscribe to, what they were
-- invoiced, how they checked out, and every change in between.

-- What the catalog says the subscription is, and what access depends on.
ALTER TABLE subscriptions
    ADD COLUMN user_id            text,
    ADD COLUMN plan               text,
    ADD COLUMN interval           text,
    ADD COLUMN tier               text,
    ADD COLUMN price_lookup_key   text,
    ADD COLUMN unit_amount        bigint,
    ADD COLUMN currency           text,
    ADD COLUMN quantity           integer     NOT NULL DEFAULT 1,
    ADD COLUMN trial_start        timestamptz,
    ADD COLUMN trial_end          timestamptz,
    ADD COLUMN cancel_at          timestamptz,
    ADD COLUMN ended_at           timestamptz,
    ADD COLUMN cancellation_reason text,
    -- {coupon, percent_off, amount_off, currency, duration, end}; null: none.
    ADD COLUMN discount           jsonb,
    ADD COLUMN latest_invoice_id  text,
    ADD COLUMN schedule_id        text,
    -- A downgrade waiting for the period end: {plan, interval, effective_at}.
    ADD COLUMN pending_change     jsonb,
    -- When access first began (the activated event went out then).
    ADD COLUMN activated_at       timestamptz,
    -- The first failed payment of the current dunning: the grace period runs from it.
    ADD COLUMN past_due_since     timestamptz,
    ADD COLUMN stripe_created     timestamptz,
    ADD COLUMN first_seen_at      timestamptz NOT NULL DEFAULT now(),
    -- A row written by the API before Stripe's first event: any event replaces it.
    ALTER COLUMN last_event_id DROP NOT NULL,
    ALTER COLUMN last_event_type DROP NOT NULL,
    ALTER COLUMN last_event_created DROP NOT NULL;

CREATE INDEX subscriptions_user_idx ON subscriptions (user_id, first_seen_at DESC);
CREATE INDEX subscriptions_status_idx ON subscriptions (status, first_seen_at DESC, stripe_subscription_id);

CREATE TABLE invoices (
    stripe_invoice_id      text        PRIMARY KEY,
    stripe_customer_id     text        NOT NULL,
    stripe_subscription_id text,
    user_id                text,
    number                 text,
    status                 text        NOT NULL,
    billing_reason         text,
    currency               text        NOT NULL,
    amount_due             bigint      NOT NULL,
    amount_paid            bigint      NOT NULL,
    amount_remaining       bigint      NOT NULL,
    total                  bigint      NOT NULL,
    attempt_count          integer     NOT NULL DEFAULT 0,
    next_payment_attempt   timestamptz,
    -- The period the invoice bills (its subscription line's), not Stripe's
    -- invoice-level period, which for a renewal is the period just ended.
    period_start           timestamptz,
    period_end             timestamptz,
    hosted_invoice_url     text,
    invoice_pdf            text,
    stripe_created         timestamptz NOT NULL,
    paid_at                timestamptz,
    last_event_id          text        NOT NULL,
    last_event_type        text        NOT NULL,
    version_created        timestamptz NOT NULL,
    version_progress       integer[]   NOT NULL DEFAULT '{}',
    version_digest         text        NOT NULL DEFAULT '',
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoices_user_idx ON invoices (user_id, stripe_created DESC, stripe_invoice_id DESC);
CREATE INDEX invoices_subscription_idx ON invoices (stripe_subscription_id);

-- Subscription checkouts (mode=subscription); booking payments keep their own.
CREATE TABLE checkout_sessions (
    stripe_session_id      text        PRIMARY KEY,
    user_id                text        NOT NULL,
    stripe_customer_id     text,
    status                 text        NOT NULL,
    payment_status         text,
    plan                   text,
    interval               text,
    url                    text,
    expires_at             timestamptz,
    stripe_subscription_id text,
    last_event_id          text,
    version_created        timestamptz NOT NULL,
    version_progress       integer[]   NOT NULL DEFAULT '{}',
    version_digest         text        NOT NULL DEFAULT '',
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX checkout_sessions_user_idx ON checkout_sessions (user_id);

-- Every change of a subscription: which event or who, from what, to what.
CREATE TABLE subscription_history (
    id                     bigserial   PRIMARY KEY,
    stripe_subscription_id text        NOT NULL,
    at                     timestamptz NOT NULL DEFAULT now(),
    -- 'stripe' (an event), 'member' or 'staff' (a request through the API).
    actor_type             text        NOT NULL,
    actor                  text        NOT NULL,
    action                 text        NOT NULL,
    -- field -> [from, to]
    changes                jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX subscription_history_sub_idx ON subscription_history (stripe_subscription_id, id);

-- A first subscribe in flight for a user: concurrent first requests make one.
CREATE TABLE subscription_starts (
    user_id    text        PRIMARY KEY,
    claimed_at timestamptz NOT NULL DEFAULT now()
);

-- Discounts on subscriptions and the coupons behind them: what revenue
-- figures take off. Stripe's subscription events name discounts by id only.
CREATE TABLE coupons (
    stripe_coupon_id   text        PRIMARY KEY,
    percent_off        numeric,
    amount_off         bigint,
    currency           text,
    duration           text        NOT NULL,
    duration_in_months integer,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE discounts (
    stripe_discount_id     text        PRIMARY KEY,
    stripe_subscription_id text,
    stripe_coupon_id       text        NOT NULL,
    promotion_code         text,
    starts_at              timestamptz,
    ends_at                timestamptz,
    deleted                boolean     NOT NULL DEFAULT false,
    last_event_created     timestamptz NOT NULL
);
CREATE INDEX discounts_subscription_idx ON discounts (stripe_subscription_id);
