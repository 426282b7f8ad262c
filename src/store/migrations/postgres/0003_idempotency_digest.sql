-- As SQLite's 0007_idempotency_digest.sql (see there for the reasons).
ALTER TABLE messages ADD COLUMN idempotency_digest TEXT;
