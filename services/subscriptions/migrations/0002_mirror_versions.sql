-- The row's version for shared/mirror.py: the event's created plus what the
-- object itself proves (period end, ended or not), and a digest of the state.
ALTER TABLE subscriptions
    ADD COLUMN version_created  timestamptz,
    ADD COLUMN version_progress integer[] NOT NULL DEFAULT '{}',
    ADD COLUMN version_digest   text      NOT NULL DEFAULT '';
UPDATE subscriptions SET version_created = last_event_created;
ALTER TABLE subscriptions ALTER COLUMN version_created SET NOT NULL;
ALTER TABLE subscriptions DROP COLUMN last_event_rank;
