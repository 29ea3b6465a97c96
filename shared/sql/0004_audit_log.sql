-- Staff writes, one row each, written in the same transaction as the write
-- (shared/audit.py). Read newest first, by target or across a service.
CREATE TABLE audit_log (
    id          bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor_id    text        NOT NULL,
    actor_role  text        NOT NULL,
    action      text        NOT NULL,
    target_type text        NOT NULL,
    target_id   text        NOT NULL,
    reason      text        NOT NULL,
    request_id  text,
    details     jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_target_idx ON audit_log (target_id, at DESC, id DESC);
