-- One-time payments: a booking cart paid by card (PaymentIntent or hosted
-- Checkout), and the charges of subscription invoices, whose refunds and
-- disputes are handled the same way (services/subscriptions/payments/).
--
-- A booking payment's row is written before Stripe is called (its id goes
-- into Stripe's metadata, so an event arriving before the create call
-- returned still finds it); its state afterwards comes only from Stripe's
-- events. An invoice charge's row is written from invoice_payment.paid.
CREATE TABLE payments (
    id                       text        PRIMARY KEY,
    kind                     text        NOT NULL CHECK (kind IN ('booking', 'invoice')),
    user_id                  text,
    stripe_customer_id       text,
    flow                     text        NOT NULL CHECK (flow IN ('intent', 'checkout', 'invoice')),
    -- pending, processing, succeeded, failed, canceled, expired,
    -- partially_refunded, refunded, disputed (see payments/states.py).
    status                   text        NOT NULL,
    -- What the payment intent said last (its own state, without refunds).
    intent_status            text        NOT NULL DEFAULT 'pending',
    amount                   bigint      NOT NULL CHECK (amount >= 0),
    currency                 text        NOT NULL,
    lines                    jsonb       NOT NULL DEFAULT '[]',
    fee                      bigint      NOT NULL DEFAULT 0,
    stripe_payment_intent_id text        UNIQUE,
    stripe_checkout_session_id text      UNIQUE,
    stripe_charge_id         text,
    invoice_id               text        UNIQUE,
    subscription_id          text,
    amount_paid              bigint,
    paid_at                  timestamptz,
    failure_code             text,
    decline_code             text,
    amount_refunded          bigint      NOT NULL DEFAULT 0,
    dispute_id               text,
    dispute_status           text,
    dispute_amount           bigint,
    dispute_reason           text,
    -- The payment intent's mirror version (shared/mirror.py).
    version_created          timestamptz,
    version_progress         integer[]   NOT NULL DEFAULT '{}',
    version_digest           text        NOT NULL DEFAULT '',
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_user_idx ON payments (user_id, created_at DESC, id DESC);
CREATE INDEX payments_created_idx ON payments (created_at DESC, id DESC);
CREATE INDEX payments_status_idx ON payments (status, created_at DESC);

-- The bookings a payment pays for. A booking is charged at most once: while
-- its payment is live (not failed, canceled or expired) no other payment can
-- hold it, and the database, not a check before the insert, says so.
CREATE TABLE payment_bookings (
    payment_id  text    NOT NULL REFERENCES payments (id),
    booking_ref text    NOT NULL,
    live        boolean NOT NULL DEFAULT true,
    PRIMARY KEY (payment_id, booking_ref)
);
CREATE UNIQUE INDEX payment_bookings_one_live ON payment_bookings (booking_ref) WHERE live;
CREATE INDEX payment_bookings_ref_idx ON payment_bookings (booking_ref);

-- Hosted Checkout sessions of booking payments, mirrored apart from the
-- payment intent they create (each object has its own version).
CREATE TABLE payment_checkout_sessions (
    stripe_id        text        PRIMARY KEY,
    payment_id       text        NOT NULL REFERENCES payments (id),
    status           text        NOT NULL,
    version_created  timestamptz NOT NULL,
    version_progress integer[]   NOT NULL DEFAULT '{}',
    version_digest   text        NOT NULL DEFAULT ''
);

-- Refunds staff asked for; their effect on the payment comes from
-- charge.refunded, this only answers "what was asked, by whom".
CREATE TABLE payment_refunds (
    stripe_refund_id text        PRIMARY KEY,
    payment_id       text        NOT NULL REFERENCES payments (id),
    amount           bigint      NOT NULL CHECK (amount > 0),
    currency         text        NOT NULL,
    status           text        NOT NULL,
    reason           text        NOT NULL,
    requested_by     text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_refunds_payment_idx ON payment_refunds (payment_id);
