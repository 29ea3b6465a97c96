-- Dead letters, moved out of each consumer queue's `<queue>.dlq` by the
-- recorder (services/webhooks/dead_letter_recorder.py). One row per message
-- and queue: a message dead-lettered again after a redrive updates its row.
CREATE TABLE dead_letters (
    id                  bigserial   PRIMARY KEY,
    queue               text        NOT NULL,  -- the consumer queue it failed in
    -- The AMQP message id (the event id), or sha256:<body> when it had none.
    letter_key          text        NOT NULL,
    message_id          text,
    event_type          text,
    routing_key         text,
    body                bytea       NOT NULL,
    headers             jsonb       NOT NULL DEFAULT '{}',
    last_error          text,
    attempts            integer     NOT NULL DEFAULT 0,
    -- Which dead-lettering this row last recorded: a redelivery of the same
    -- DLQ message (recorded, then the ack lost) carries the same mark.
    death_mark          text        NOT NULL,
    times_dead_lettered integer     NOT NULL DEFAULT 1,
    first_seen_at       timestamptz NOT NULL,
    last_seen_at        timestamptz NOT NULL,
    -- dead: waiting for an operator; redriving: claimed by a redrive that is
    -- publishing it; redriven: back in its queue; discarded: given up, with a reason.
    state               text        NOT NULL DEFAULT 'dead'
        CHECK (state IN ('dead', 'redriving', 'redriven', 'discarded')),
    redrive_token       text,
    redrive_started_at  timestamptz,
    redrive_count       integer     NOT NULL DEFAULT 0,
    last_redriven_at    timestamptz,
    discarded_at        timestamptz,
    discard_reason      text,
    UNIQUE (queue, letter_key)
);
-- Listing and redrive pick pending letters oldest first, per queue.
CREATE INDEX dead_letters_state_idx ON dead_letters (state, queue, id);
