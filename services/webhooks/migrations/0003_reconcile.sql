-- Backfill from Stripe's Events API (services/webhooks/backfill.py).

-- One job: a scheduled run or an operator's request, with its counts.
CREATE TABLE reconcile_jobs (
    id            uuid        PRIMARY KEY,
    kind          text        NOT NULL DEFAULT 'events',
    trigger       text        NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    state         text        NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    since         timestamptz NOT NULL,  -- Stripe's `created`, from (inclusive)
    until         timestamptz NOT NULL,  -- ...to (inclusive)
    requested_by  text,
    reason        text,
    seen          integer     NOT NULL DEFAULT 0,
    already_had   integer     NOT NULL DEFAULT 0,
    recovered     integer     NOT NULL DEFAULT 0,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    -- Touched after every page: a running job whose heartbeat stopped died
    -- with its replica.
    heartbeat_at  timestamptz
);
CREATE INDEX reconcile_jobs_state_idx ON reconcile_jobs (state, created_at);

-- Where the next scheduled backfill starts: every event created before
-- `checked_until` was checked by a finished job.
CREATE TABLE reconcile_cursor (
    name              text        PRIMARY KEY,
    checked_until     timestamptz NOT NULL,
    last_scheduled_at timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Events a backfill published: claimed before the publish, confirmed after,
-- so two backfills at once publish each missing event once.
CREATE TABLE backfilled_events (
    event_id     text        PRIMARY KEY,
    job_id       uuid        NOT NULL,
    state        text        NOT NULL CHECK (state IN ('publishing', 'published')),
    claimed_at   timestamptz NOT NULL,
    published_at timestamptz
);
