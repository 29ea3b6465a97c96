-- A spend's update of `grants.remaining` is a HOT (heap-only tuple) update:
-- the new version goes on the same page and no index gains an entry.
--
-- Before, the partial indexes of the spending order and of the sweep had
-- `WHERE remaining > 0`: a column an index's predicate names counts as
-- indexed, so every change of `remaining` inserted into all five indexes of
-- `grants` (pg_stat_user_tables after a benchmark: 3,918 updates, 0 HOT),
-- and a hot account's scans walked the versions its spends left behind.
-- Those indexes now hold the grants that are not `depleted`: a column
-- Postgres computes from `remaining` in the statement that changes it, so
-- every path (spend, reversal, claw-back, give-back, sweep, rollover, and any
-- later one) keeps it in step, and it changes once when a grant is emptied
-- (and once more if credits come back to it). An update that leaves it as it
-- was is HOT when the page has room: the table keeps 10 % of each page free
-- for the new versions.
--
-- Adding the column rewrites the table (under an exclusive lock), which
-- packs it to the new fillfactor.
ALTER TABLE grants SET (fillfactor = 90);
ALTER TABLE grants ADD COLUMN depleted boolean GENERATED ALWAYS AS (remaining = 0) STORED;

DROP INDEX grants_spendable_idx;
DROP INDEX grants_expiring_idx;
-- The spending order (services/credits/ledger.py SPENDING_ORDER), only over
-- grants that still hold something.
CREATE INDEX grants_spendable_idx
    ON grants (user_id, credit_type, priority, expires_at, granted_at, id)
    WHERE NOT depleted;
-- What the sweep looks for.
CREATE INDEX grants_expiring_idx ON grants (expires_at) WHERE NOT depleted;

-- spend_credits as in 0006, reading the grants through `NOT depleted` (the
-- predicate the index above answers) instead of `remaining > 0`.
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
        WHERE user_id = p_user_id AND credit_type = p_credit_type AND NOT depleted
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
