-- Every refund and dispute applied, with what it paid for
-- (services/credits/handlers.py `_claw_back`). Events are not ordered: a
-- refund can be applied before the renewal or the credit-pack payment whose
-- credits it takes back (that delivery failed once and waits in its retry
-- queue). A grant made afterwards for the same invoice or payment intent is
-- taken back as it is made, by the causes recorded here.
CREATE TABLE clawback_causes (
    cause             text        PRIMARY KEY,  -- refund:<id> / dispute:<id>
    invoice_id        text,
    payment_intent_id text,
    at                timestamptz NOT NULL
);
CREATE INDEX clawback_causes_invoice_idx ON clawback_causes (invoice_id)
    WHERE invoice_id IS NOT NULL;
CREATE INDEX clawback_causes_payment_intent_idx ON clawback_causes (payment_intent_id)
    WHERE payment_intent_id IS NOT NULL;
