-- A digest's own page (/m/{digest id}?k=…) lists in full every message the digest carried:
-- a digest may carry more than its text has room for, and its lines are only excerpts.

-- The page's key: 128 random bits, base64url, as `messages.page_key`. NULL for digests
-- sent before pages existed (their page answers as a wrong key does).
ALTER TABLE digests ADD COLUMN page_key TEXT;

-- The page reads the carried messages by `via`; most messages have none.
CREATE INDEX messages_via ON messages (via, seq) WHERE via IS NOT NULL;
