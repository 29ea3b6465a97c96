-- Every refund of a payment's charge as Stripe reported it (charge.refunded's
-- refunds, charge.refund.updated). amount_refunded is the sum of those not
-- failed or canceled, so a refund that fails after looking succeeded gives
-- the amount back. rank only grows (pending 0, succeeded 1, failed or
-- canceled 2): an older view of a refund never undoes a newer one.
CREATE TABLE payment_charge_refunds (
    stripe_refund_id text     PRIMARY KEY,
    payment_id       text     NOT NULL REFERENCES payments (id),
    amount           bigint   NOT NULL CHECK (amount >= 0),
    status           text     NOT NULL,
    rank             smallint NOT NULL
);
CREATE INDEX payment_charge_refunds_payment_idx ON payment_charge_refunds (payment_id);
