-- Long messages, markdown and the message page.

-- The content's syntax as the sender declared it (text | markdown); how the member wanted
-- messages to look when it was accepted (text | markdown | card); the sender's link (the
-- card opens it); the key of the message's page (/m/{id}?k=…: 128 random bits, base64url).
ALTER TABLE messages ADD COLUMN format TEXT NOT NULL DEFAULT 'text';
ALTER TABLE messages ADD COLUMN look TEXT NOT NULL DEFAULT 'text';
ALTER TABLE messages ADD COLUMN url TEXT;
ALTER TABLE messages ADD COLUMN page_key TEXT;

-- A member's own choice (`format …` in the chat); NULL: delivery.format.
ALTER TABLE members ADD COLUMN format TEXT;

-- (The retention purge walks the primary key: ids are UUIDv7, so their text order is their
-- creation order; an index on created_at would cost every insert for an hourly query.)
