-- A spend and its Idempotency-Key's answer in one statement
-- (services/credits/ledger.py `spend_answered`). Run on its own, outside any
-- transaction block, the statement is its own transaction: the account's lock
-- is held while the server works and commits, never across a round trip to the
-- client, which is what bounds a hot account's rate. Before, the spend, the
-- answer and the commit were three round trips under the lock.
--
-- The answer is the caller's JSON with what only the spend knows filled in
-- (balance_after, consumed): the same values the caller answers with. A spend
-- the balance does not cover writes nothing (grant_ids NULL) and leaves the key
-- claimed, for the caller's slower path (overage, or the stored refusal). A
-- lease lost to a takeover fails the statement (SQLSTATE CR409), undoing the
-- spend, as idempotency.complete does inside a transaction.
CREATE FUNCTION spend_credits_answered(
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
        response = p_answer || jsonb_build_object(
            'balance_after', GREATEST(available - p_amount, 0),
            'consumed', (
                SELECT COALESCE(
                    jsonb_agg(jsonb_build_object('grant_id', t.id, 'amount', t.take)
                              ORDER BY t.n),
                    '[]'::jsonb)
                FROM unnest(grant_ids, takes) WITH ORDINALITY AS t(id, take, n))),
        completed_at = now(), lease_token = NULL, leased_until = NULL
    WHERE scope = p_scope AND key = p_key AND lease_token = p_lease_token;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the Idempotency-Key''s lease was taken over' USING ERRCODE = 'CR409';
    END IF;
END
$$;
