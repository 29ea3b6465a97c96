-- An event whose text holds a NUL (U+0000): jsonb cannot store one, so the
-- payload column keeps a copy with U+FFFD in its place and this column keeps
-- the event as Stripe sent it (JSON text, the NUL escaped). NULL otherwise.
ALTER TABLE events ADD COLUMN payload_text text;
