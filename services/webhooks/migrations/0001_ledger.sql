-- Messages this service has applied, per consumer queue: the consumer base
-- inserts here in the same transaction as the effect (exactly-once effect).
CREATE TABLE inbox (
    queue           text        NOT NULL,
    event_id        text        NOT NULL,
    event_type      text        NOT NULL,
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    duplicate_count integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, event_id)
);

-- The ledger: every Stripe event once, as Stripe sent it.
CREATE TABLE events (
    id               text        PRIMARY KEY,
    type             text        NOT NULL,
    api_version      text,
    livemode         boolean     NOT NULL,
    created_at       timestamptz NOT NULL,  -- Stripe's `created`
    received_at      timestamptz NOT NULL DEFAULT now(),
    payload          jsonb       NOT NULL,
    replay_count     integer     NOT NULL DEFAULT 0,
    last_replayed_at timestamptz
);
-- Listing is newest first, optionally by type; (created_at, id) is the keyset.
CREATE INDEX events_created_idx ON events (created_at DESC, id DESC);
CREATE INDEX events_type_created_idx ON events (type, created_at DESC, id DESC);

-- Responses to state-changing API calls, by the caller's Idempotency-Key.
CREATE TABLE idempotency_keys (
    scope        text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    status       integer,
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
