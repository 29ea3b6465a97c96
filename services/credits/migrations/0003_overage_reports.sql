-- Overage to bill: one Stripe meter event per spend that went beyond the
-- balance (services/credits/overage.py). Written in the spend's transaction,
-- reported after it committed (never inside it), and retried from here until
-- Stripe has it: the spend id is the meter event's identifier, so a retry
-- never bills twice.
CREATE TABLE overage_reports (
    spend_id        text        PRIMARY KEY REFERENCES spends (id),
    user_id         text        NOT NULL,
    customer_id     text        NOT NULL,
    credit_type     text        NOT NULL,
    event_name      text        NOT NULL,  -- the meter's
    quantity        bigint      NOT NULL CHECK (quantity > 0),
    occurred_at     timestamptz NOT NULL,
    reported_at     timestamptz,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error      text
);
CREATE INDEX overage_reports_due_idx ON overage_reports (next_attempt_at)
    WHERE reported_at IS NULL;
CREATE INDEX subscriptions_user_idx ON subscriptions (user_id);
