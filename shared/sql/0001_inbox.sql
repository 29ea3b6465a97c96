-- Messages this service has applied, per consumer queue: the consumer base
-- (shared/broker/consumer.py) inserts here in the same transaction as the
-- effect, which is what makes a redelivered message a no-op.
CREATE TABLE inbox (
    queue           text        NOT NULL,
    event_id        text        NOT NULL,
    event_type      text        NOT NULL,
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    duplicate_count integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, event_id)
);
