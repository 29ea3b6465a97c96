-- Domain events, each written in the same transaction as the state change
-- that made it true and relayed to RabbitMQ afterwards (shared/outbox.py).
CREATE TABLE outbox (
    seq          bigserial   PRIMARY KEY,
    id           uuid        NOT NULL UNIQUE,  -- the message id consumers dedupe by
    exchange     text        NOT NULL,
    routing_key  text        NOT NULL,
    body         jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_pending_idx ON outbox (seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published_idx ON outbox (published_at) WHERE published_at IS NOT NULL;
