-- A claw-back's cause can go away: a dispute the business wins
-- (payment.dispute_closed) or a refund that fails (payment.refund_failed).
-- What the cause took goes back to the grants it came from, unless they have
-- expired since (services/credits/handlers.py `_give_back`, ledger.py
-- `give_back`).
--
-- withdrawn_at: when the cause went away. A cause withdrawn before its own
-- claw-back arrived (the events crossed) is recorded here first, so that
-- claw-back then takes nothing.
-- amount: a refund's own amount. A partial refund's share is computed from
-- the payment's refunds still standing (the sum of their amounts over what
-- was paid), so a failed refund leaves the member as if it had never been
-- made, whatever order the refunds and the failure arrive in; `refunded` now
-- holds that sum as last computed (ledger.py `reverse` reads it).
ALTER TABLE clawback_causes
    ADD COLUMN amount bigint CHECK (amount >= 0),
    ADD COLUMN withdrawn_at timestamptz;

-- The refunds recorded before: each one's amount from the cumulative sums.
UPDATE clawback_causes c SET amount = c.refunded - COALESCE(prev.refunded, 0)
FROM (
    SELECT cause, lag(refunded) OVER (
        PARTITION BY invoice_id, CASE WHEN invoice_id IS NULL THEN payment_intent_id END
        ORDER BY refunded, at, cause
    ) AS refunded
    FROM clawback_causes WHERE cause LIKE 'refund:%' AND refunded IS NOT NULL
) prev
WHERE prev.cause = c.cause;

-- What of each claw-back was given back (taken - given_back is what it holds).
ALTER TABLE clawbacks
    ADD COLUMN given_back bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT given_back_within_taken CHECK (given_back >= 0 AND given_back <= taken);

-- The entry that gives credits back to a grant: kind `restoration`.
ALTER TABLE entries DROP CONSTRAINT entries_kind_check;
ALTER TABLE entries ADD CONSTRAINT entries_kind_check CHECK (
    kind IN ('grant', 'spend', 'reversal', 'expiry', 'rollover', 'clawback', 'restoration')
);
ALTER TABLE entries DROP CONSTRAINT sign_of_kind;
ALTER TABLE entries ADD CONSTRAINT sign_of_kind CHECK (
    (kind IN ('grant', 'reversal', 'restoration') AND amount > 0)
    OR (kind IN ('spend', 'expiry', 'rollover', 'clawback') AND amount < 0)
);
