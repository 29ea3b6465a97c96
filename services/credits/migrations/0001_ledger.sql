-- The credit ledger (services/credits/ledger.py).
--
-- A grant is a lot of credits of one type for one member, spent in the order
-- (priority, expires_at, id). Every change of a grant's `remaining` is one
-- immutable row of `entries` in the same transaction; `balances` holds the
-- running sum per member and type and is the row every writer locks first,
-- so spends on one account serialise and never interleave. The database
-- refuses a negative balance or a negative `remaining` whatever the code does.

-- Where a member's plan stands: the latest period seen, and when it ended.
CREATE TABLE subscriptions (
    subscription_id text        PRIMARY KEY,
    user_id         text        NOT NULL,
    customer_id     text,  -- the Stripe customer overage is billed to
    plan            text,
    period_start    timestamptz,
    period_end      timestamptz,
    ended_at        timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE balances (
    user_id     text   NOT NULL,
    credit_type text   NOT NULL,
    balance     bigint NOT NULL DEFAULT 0 CONSTRAINT balance_never_negative CHECK (balance >= 0),
    PRIMARY KEY (user_id, credit_type)
);

CREATE TABLE grants (
    id                bigserial   PRIMARY KEY,
    -- The fact that made it, stable across replays: plan:<subscription>:<period
    -- start>:<type>, pack:<payment>:<product>:<type>, admin:<request>, ...
    grant_key         text        NOT NULL UNIQUE,
    user_id           text        NOT NULL,
    credit_type       text        NOT NULL,
    source            text        NOT NULL
        CHECK (source IN ('plan', 'trial', 'upgrade', 'rollover', 'pack', 'admin')),
    amount            bigint      NOT NULL CHECK (amount > 0),
    remaining         bigint      NOT NULL,
    priority          integer     NOT NULL,
    granted_at        timestamptz NOT NULL,
    expires_at        timestamptz,  -- NULL: never
    subscription_id   text,
    period_start      timestamptz,
    period_end        timestamptz,
    invoice_id        text,
    payment_intent_id text,
    -- Set once the sweep expired what was left, or a claw-back took it: credits
    -- never return to a closed grant.
    closed_at         timestamptz,
    CONSTRAINT remaining_within_amount CHECK (remaining >= 0 AND remaining <= amount),
    FOREIGN KEY (user_id, credit_type) REFERENCES balances (user_id, credit_type)
);
-- The spending order, only over grants that still hold something.
CREATE INDEX grants_spendable_idx ON grants (user_id, credit_type, priority, expires_at, id)
    WHERE remaining > 0;
-- What the sweep looks for.
CREATE INDEX grants_expiring_idx ON grants (expires_at) WHERE remaining > 0;
CREATE INDEX grants_invoice_idx ON grants (invoice_id) WHERE invoice_id IS NOT NULL;
CREATE INDEX grants_payment_intent_idx ON grants (payment_intent_id)
    WHERE payment_intent_id IS NOT NULL;
CREATE INDEX grants_subscription_idx ON grants (subscription_id, period_start)
    WHERE subscription_id IS NOT NULL;

CREATE TABLE spends (
    id          text        PRIMARY KEY,
    user_id     text        NOT NULL,
    credit_type text        NOT NULL,
    amount      bigint      NOT NULL CHECK (amount > 0),
    reference   text        NOT NULL,
    created_at  timestamptz NOT NULL,
    reversed_at timestamptz,
    returned    bigint,
    forfeited   bigint,
    -- What went beyond the balance, billed as overage (plans that allow it).
    overage     bigint      NOT NULL DEFAULT 0 CHECK (overage >= 0 AND overage <= amount)
);
CREATE INDEX spends_user_idx ON spends (user_id, created_at);

CREATE TABLE entries (
    id          bigserial   PRIMARY KEY,
    user_id     text        NOT NULL,
    credit_type text        NOT NULL,
    grant_id    bigint      NOT NULL REFERENCES grants (id),
    kind        text        NOT NULL
        CHECK (kind IN ('grant', 'spend', 'reversal', 'expiry', 'rollover', 'clawback')),
    -- Signed: what this entry added to (or took from) the grant and the balance.
    amount      bigint      NOT NULL,
    -- When it took effect: an expiry counts from the grant's expiry, not from
    -- the sweep that wrote it (the credits were unspendable from then on).
    at          timestamptz NOT NULL,
    spend_id    text        REFERENCES spends (id),
    note        text,
    CONSTRAINT sign_of_kind CHECK (
        (kind IN ('grant', 'reversal') AND amount > 0)
        OR (kind IN ('spend', 'expiry', 'rollover', 'clawback') AND amount < 0)
    ),
    CONSTRAINT spend_entries_name_their_spend CHECK (
        (kind IN ('spend', 'reversal')) = (spend_id IS NOT NULL)
    )
);
CREATE INDEX entries_user_idx ON entries (user_id, id);
CREATE INDEX entries_user_at_idx ON entries (user_id, at);
CREATE INDEX entries_spend_idx ON entries (spend_id) WHERE spend_id IS NOT NULL;

-- What each claw-back took and what it found already spent (reported, never
-- driven negative). One row per grant and cause.
CREATE TABLE clawbacks (
    grant_id      bigint      NOT NULL REFERENCES grants (id),
    cause         text        NOT NULL,  -- refund:<id> / dispute:<id>
    taken         bigint      NOT NULL CHECK (taken >= 0),
    already_spent bigint      NOT NULL CHECK (already_spent >= 0),
    at            timestamptz NOT NULL,
    PRIMARY KEY (grant_id, cause)
);
