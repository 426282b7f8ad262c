-- A digest's own page, as SQLite's 0006_digest_pages.sql (see there for the reasons).
ALTER TABLE digests ADD COLUMN page_key TEXT;
CREATE INDEX messages_via ON messages (via, seq) WHERE via IS NOT NULL;
