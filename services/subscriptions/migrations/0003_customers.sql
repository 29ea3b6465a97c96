-- One Stripe customer per user of the host application. The row is written
-- only after Stripe answered; the Stripe call itself is made idempotent by a
-- key derived from the user id, so concurrent first requests converge on one
-- customer (services/subscriptions/customers.py).
CREATE TABLE customers (
    user_id            text        PRIMARY KEY,
    stripe_customer_id text        NOT NULL UNIQUE,
    email              text,
    -- The Stripe test clock the customer lives on (test mode only), if any.
    test_clock_id      text,
    created_at         timestamptz NOT NULL DEFAULT now()
);
