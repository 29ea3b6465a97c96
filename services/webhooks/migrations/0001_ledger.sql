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
