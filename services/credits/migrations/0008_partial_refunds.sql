-- A partial refund takes back its share of what the payment granted, not all
-- of it (services/credits/ledger.py `clawback`): the share is kept with the
-- cause, so a grant made after the refund was applied takes the same share.
-- refunded: all the payment's refunds up to and including this one; paid: what
-- was paid. Both NULL: the whole payment (a full refund, a dispute).
ALTER TABLE clawback_causes ADD COLUMN refunded bigint, ADD COLUMN paid bigint;
