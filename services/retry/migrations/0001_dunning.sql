-- Dunning: one case per failed invoice, its attempts, and the invoices known
-- to be settled (so a late invoice.payment_failed never opens a case for an
-- invoice that was already paid, voided or written off).
CREATE TABLE cases (
    invoice_id        text        PRIMARY KEY,
    customer_id       text        NOT NULL,
    subscription_id   text,
    user_id           text,
    email             text,
    amount_due        bigint      NOT NULL CHECK (amount_due >= 0),
    currency          text        NOT NULL,
    hosted_invoice_url text,
    -- open: attempts scheduled; paused: a hard decline, waiting for a new
    -- payment method; recovered / canceled / exhausted: closed for good.
    state             text        NOT NULL DEFAULT 'open'
        CHECK (state IN ('open', 'paused', 'recovered', 'canceled', 'exhausted')),
    -- Attempts this service started (the one in flight included).
    attempts          integer     NOT NULL DEFAULT 0,
    -- The attempt started but not finished: a replica that takes the case over
    -- repeats it with the same number, so the same Stripe idempotency key.
    pending_attempt   integer,
    next_attempt_at   timestamptz,
    lease_owner       text,
    lease_until       timestamptz,
    last_decline_code text,
    closed_at         timestamptz,
    close_reason      text,
    recovered_amount  bigint,
    -- The end action of an exhausted case: chosen at exhaustion, done once.
    end_action        text,
    end_action_done_at timestamptz,
    opened_at         timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    CHECK ((state IN ('open', 'paused')) = (closed_at IS NULL))
);
-- The scheduler's claim: due cases (open ones, and paused ones whose wait for
-- a new payment method is over), oldest first. The predicate is the claim's,
-- so the claim reads the index, not 100,000 rows.
CREATE INDEX cases_due_idx ON cases (next_attempt_at) WHERE state IN ('open', 'paused');
CREATE INDEX cases_subscription_idx ON cases (subscription_id) WHERE state IN ('open', 'paused');
CREATE INDEX cases_customer_idx ON cases (customer_id) WHERE state = 'paused';
-- End actions still to run (a replica died between exhaustion and the action).
CREATE INDEX cases_end_action_idx ON cases (updated_at)
    WHERE state = 'exhausted' AND end_action_done_at IS NULL;
CREATE INDEX cases_listing_idx ON cases (opened_at DESC, invoice_id DESC);

CREATE TABLE attempts (
    invoice_id      text        NOT NULL REFERENCES cases (invoice_id),
    number          integer     NOT NULL CHECK (number >= 1),
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    -- pending, succeeded, failed (a decline), already_settled (found paid or
    -- closed before charging), unavailable (Stripe could not be reached),
    -- error (Stripe refused the request)
    outcome         text        NOT NULL DEFAULT 'pending',
    decline_code    text,
    amount          bigint      NOT NULL,
    currency        text        NOT NULL,
    idempotency_key text        NOT NULL,
    -- The replica that started the attempt (the first one, for a repeat).
    replica         text,
    PRIMARY KEY (invoice_id, number)
);

CREATE TABLE settled_invoices (
    invoice_id  text        PRIMARY KEY,
    status      text        NOT NULL,
    settled_at  timestamptz NOT NULL
);

-- Emails to send (services/retry/notifications): one per domain event, kept
-- until sent, retried with backoff, dead after too many refusals.
CREATE TABLE mail (
    event_id    text        PRIMARY KEY,
    event_type  text        NOT NULL,
    recipient   text        NOT NULL,
    subject     text        NOT NULL,
    body_text   text        NOT NULL,
    body_html   text        NOT NULL,
    state       text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'dead')),
    tries       integer     NOT NULL DEFAULT 0,
    next_try_at timestamptz NOT NULL,
    lease_until timestamptz,
    last_error  text,
    created_at  timestamptz NOT NULL,
    sent_at     timestamptz
);
CREATE INDEX mail_due_idx ON mail (next_try_at) WHERE state = 'pending';
