-- An operator's retry-now: the next attempt charges even a card whose last
-- payment met a hard decline (the member may have had the bank lift a block).
-- Set by retry-now, cleared when that attempt ends.
ALTER TABLE cases ADD COLUMN retry_requested_at timestamptz;
