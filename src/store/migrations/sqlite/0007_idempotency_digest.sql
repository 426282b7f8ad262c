-- issue 26 (branch strict): an Idempotency-Key reused for a different message is refused
-- (409) instead of answered with the first message. The digest (SHA-1 hex) of what
-- determined the message (title, content, format, link, channel choice) is kept with it.
-- NULL for messages accepted before this column existed (and for those without a key):
-- a repeat of such a key still answers the first message, as before.
ALTER TABLE messages ADD COLUMN idempotency_digest TEXT;
