-- A spend with a new Idempotency-Key: the spend made, its answer stored and
-- the key recorded in one statement, one commit (services/credits/ledger.py
-- `spend_claimed`). Before, the key was claimed by a statement committed on
-- its own (shared/http/idempotency.py `claim`), then spend_credits_answered
-- spent and completed it.
--
-- The key is looked up first, without a lock, and written only after the
-- spend, under the account's lock: a statement waiting for a busy account
-- has written nothing yet. Outcomes, told apart by the OUT columns:
--   claimed_at NULL: the key was already there (a retry, a reuse, a key
--     still running or expired); nothing written - the caller goes through
--     the generic claim, which replays, refuses or takes over.
--   claimed_token set, grant_ids NULL: the balance does not cover the spend;
--     the key is claimed under that lease token (claimed_at its `since`),
--     nothing spent - the caller goes on as after `claim` (overage, or the
--     stored refusal).
--   grant_ids set: spent, and the key recorded with its answer, complete.
-- A request with the same key that recorded it between the look-up and the
-- insert fails the statement (SQLSTATE CR410), undoing the spend: the caller
-- then takes the generic path, which finds that request's answer.

-- The stored answer of a spend: the caller's JSON with what only the spend
-- knows filled in (balance_after, consumed), as the caller answers it.
CREATE FUNCTION spend_answer(
    p_answer jsonb, p_amount bigint, p_available bigint, p_grant_ids bigint[], p_takes bigint[]
) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT p_answer || jsonb_build_object(
        'balance_after', GREATEST(p_available - p_amount, 0),
        'consumed', (
            SELECT COALESCE(
                jsonb_agg(jsonb_build_object('grant_id', t.id, 'amount', t.take) ORDER BY t.n),
                '[]'::jsonb)
            FROM unnest(p_grant_ids, p_takes) WITH ORDINALITY AS t(id, take, n)))
$$;

CREATE FUNCTION spend_credits_claimed(
    p_user_id text, p_credit_type text, p_amount bigint, p_reference text,
    p_now timestamptz, p_spend_id text,
    p_scope text, p_key text, p_request_hash text, p_lease interval,
    p_status integer, p_answer jsonb,
    OUT claimed_token uuid, OUT claimed_at timestamptz,
    OUT available bigint, OUT grant_ids bigint[], OUT takes bigint[]
) LANGUAGE plpgsql AS $$
BEGIN
    -- A key already there: nothing written, no lock taken.
    PERFORM 1 FROM idempotency_keys WHERE scope = p_scope AND key = p_key;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT s.available, s.grant_ids, s.takes INTO available, grant_ids, takes
        FROM spend_credits(p_user_id, p_credit_type, p_amount, p_reference, p_now,
                           p_spend_id, false) AS s;
    IF grant_ids IS NULL THEN
        INSERT INTO idempotency_keys (scope, key, request_hash, lease_token, leased_until)
            VALUES (p_scope, p_key, p_request_hash, gen_random_uuid(), now() + p_lease)
            ON CONFLICT (scope, key) DO NOTHING
            RETURNING lease_token, created_at INTO claimed_token, claimed_at;
        RETURN;
    END IF;
    INSERT INTO idempotency_keys (scope, key, request_hash, status, response, completed_at)
        VALUES (p_scope, p_key, p_request_hash, p_status,
                spend_answer(p_answer, p_amount, available, grant_ids, takes), now())
        ON CONFLICT (scope, key) DO NOTHING
        RETURNING created_at INTO claimed_at;
    IF claimed_at IS NULL THEN
        -- Claimed by a request with the same key since the check above (it
        -- waited on no lock of ours): this spend is undone, the key answers.
        RAISE EXCEPTION 'the Idempotency-Key was claimed meanwhile' USING ERRCODE = 'CR410';
    END IF;
END
$$;

-- spend_credits_answered (0004) builds its answer with the same function.
CREATE OR REPLACE FUNCTION spend_credits_answered(
    p_user_id text, p_credit_type text, p_amount bigint, p_reference text,
    p_now timestamptz, p_spend_id text,
    p_scope text, p_key text, p_lease_token uuid, p_status integer, p_answer jsonb,
    OUT available bigint, OUT grant_ids bigint[], OUT takes bigint[]
) LANGUAGE plpgsql AS $$
BEGIN
    SELECT s.available, s.grant_ids, s.takes INTO available, grant_ids, takes
        FROM spend_credits(p_user_id, p_credit_type, p_amount, p_reference, p_now,
                           p_spend_id, false) AS s;
    IF grant_ids IS NULL THEN
        RETURN;
    END IF;
    UPDATE idempotency_keys SET
        status = p_status,
        response = spend_answer(p_answer, p_amount, available, grant_ids, takes),
        completed_at = now(), lease_token = NULL, leased_until = NULL
    WHERE scope = p_scope AND key = p_key AND lease_token = p_lease_token;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the Idempotency-Key''s lease was taken over' USING ERRCODE = 'CR409';
    END IF;
END
$$;
