-- Local mirror of Stripe subscriptions, written only from Stripe's events.
-- last_event_* is the version of the row: see services/subscriptions/ordering.py.
CREATE TABLE subscriptions (
    stripe_subscription_id text        PRIMARY KEY,
    stripe_customer_id     text        NOT NULL,
    status                 text        NOT NULL,
    price_id               text,
    current_period_start   timestamptz,
    current_period_end     timestamptz,
    cancel_at_period_end   boolean     NOT NULL DEFAULT false,
    canceled_at            timestamptz,
    last_event_id          text        NOT NULL,
    last_event_type        text        NOT NULL,
    last_event_created     timestamptz NOT NULL,
    last_event_rank        smallint    NOT NULL,
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_customer_idx ON subscriptions (stripe_customer_id);
