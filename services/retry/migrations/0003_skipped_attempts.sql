-- Attempts that charged nothing because the card to be charged had already met
-- a hard decline (outcome 'skipped'). They keep their own number (and so their
-- own Stripe idempotency key), but spend none of DUNNING_MAX_ATTEMPTS: the
-- attempts a case has spent are attempts - skipped_attempts.
ALTER TABLE cases ADD COLUMN skipped_attempts integer NOT NULL DEFAULT 0;
