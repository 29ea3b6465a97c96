-- Drift report and repair (services/webhooks/drift.py): a job of kind
-- 'state' in reconcile_jobs, and every difference it found.
ALTER TABLE reconcile_jobs
    ALTER COLUMN since DROP NOT NULL,  -- a state job has no window
    ALTER COLUMN until DROP NOT NULL,
    ADD COLUMN requested_role text,
    ADD COLUMN repair         boolean NOT NULL DEFAULT false,
    ADD COLUMN kinds          text[],  -- null: every mirrored kind
    ADD COLUMN checked        integer NOT NULL DEFAULT 0,  -- objects compared
    ADD COLUMN differing      integer NOT NULL DEFAULT 0,  -- ...that differed
    ADD COLUMN repaired       integer NOT NULL DEFAULT 0;  -- ...applied again from Stripe

-- One field of one object that did not say what Stripe says.
CREATE TABLE reconcile_differences (
    id          bigserial   PRIMARY KEY,
    job_id      uuid        NOT NULL REFERENCES reconcile_jobs (id) ON DELETE CASCADE,
    service     text        NOT NULL,
    kind        text        NOT NULL,
    object_id   text        NOT NULL,
    field       text        NOT NULL,
    ours        jsonb,
    stripe      jsonb,
    -- The owner's answer to the re-read: applied, stale or unchanged; null
    -- without repair.
    repair      text,
    found_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, kind, object_id, field)
);
