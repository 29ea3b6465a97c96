-- A dead letter the table refused as it came (a NUL in a header or in its
-- event type, an attempt count beyond an integer...) is stored fitted
-- (services/webhooks/dead_letter_store.py, record_fitted): its text fields
-- cleaned, and why it did not fit, with its headers as received, escaped.
ALTER TABLE dead_letters
    ADD COLUMN unfit_reason          text,  -- NULL: stored as it came
    ADD COLUMN raw_headers           text,  -- the headers as received (Python ascii()), capped
    ADD COLUMN raw_headers_truncated boolean NOT NULL DEFAULT false;
