-- Idempotency keys are claimed with a lease before their operation runs and
-- completed in the operation's own transaction (shared/http/idempotency.py):
-- a key whose holder died is taken over once its lease runs out.
ALTER TABLE idempotency_keys
    ADD COLUMN lease_token  uuid,
    ADD COLUMN leased_until timestamptz,
    ADD COLUMN completed_at timestamptz;
-- Expired keys are purged by age.
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
