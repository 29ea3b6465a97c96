-- The spending order's last tie-break is the oldest grant by when its credits
-- count from (`granted_at`), then by id (services/credits/ledger.py
-- SPENDING_ORDER). By id alone, a rollover grant - counting from the period
-- boundary, the older credits - and the next period's plan grant, which share
-- priority and expiry, were spent in the order this service happened to apply
-- the renewal and run the sweep: when the renewal came first, the plan grant
-- was spent first and the rollover expired unspent, forfeiting what the plan
-- grant would have carried over. spend_credits as in 0002, but for its ORDER BY.
CREATE OR REPLACE FUNCTION spend_credits(
    p_user_id text, p_credit_type text, p_amount bigint, p_reference text,
    p_now timestamptz, p_spend_id text, p_overage_allowed boolean,
    OUT available bigint, OUT grant_ids bigint[], OUT takes bigint[], OUT overage bigint
) LANGUAGE plpgsql AS $$
DECLARE
    lot record;
    still bigint := p_amount;
    take bigint;
BEGIN
    PERFORM 1 FROM balances WHERE user_id = p_user_id AND credit_type = p_credit_type
        FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO balances (user_id, credit_type) VALUES (p_user_id, p_credit_type)
            ON CONFLICT DO NOTHING;
        PERFORM 1 FROM balances WHERE user_id = p_user_id AND credit_type = p_credit_type
            FOR UPDATE;
    END IF;
    available := 0;
    overage := 0;
    grant_ids := '{}';
    takes := '{}';
    FOR lot IN
        SELECT id, remaining FROM grants
        WHERE user_id = p_user_id AND credit_type = p_credit_type AND remaining > 0
          AND closed_at IS NULL AND (expires_at IS NULL OR expires_at > p_now)
        ORDER BY priority, expires_at NULLS LAST, granted_at, id
    LOOP
        available := available + lot.remaining;
        IF still > 0 THEN
            take := LEAST(still, lot.remaining);
            grant_ids := grant_ids || lot.id;
            takes := takes || take;
            still := still - take;
        END IF;
    END LOOP;
    IF still > 0 AND NOT p_overage_allowed THEN
        grant_ids := NULL;
        takes := NULL;
        RETURN;
    END IF;
    overage := still;
    INSERT INTO spends (id, user_id, credit_type, amount, reference, created_at, overage)
        VALUES (p_spend_id, p_user_id, p_credit_type, p_amount, p_reference, p_now, overage);
    UPDATE grants g SET remaining = g.remaining - t.take
        FROM unnest(grant_ids, takes) AS t(id, take) WHERE g.id = t.id;
    INSERT INTO entries (user_id, credit_type, grant_id, kind, amount, at, spend_id)
        SELECT p_user_id, p_credit_type, t.id, 'spend', -t.take, p_now, p_spend_id
        FROM unnest(grant_ids, takes) AS t(id, take);
    UPDATE balances SET balance = balance - (p_amount - overage)
        WHERE user_id = p_user_id AND credit_type = p_credit_type;
END
$$;
