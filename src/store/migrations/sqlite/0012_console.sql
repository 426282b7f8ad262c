-- issue 22: the web console.

-- One-time login links (`login` in the chat). Only the SHA-256 of the link's token is kept
-- (hex): the database never holds a usable link. `used_at` is set by the one POST that
-- consumes it; a link past `expires_at` or used once opens nothing.
CREATE TABLE console_logins (
    token_hash  TEXT PRIMARY KEY,
    userid      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);

-- Console sessions: the SHA-256 (hex) of the cookie's value, never the value itself; the
-- session's CSRF token (sent in every form, not a secret outside the session's pages).
CREATE TABLE console_sessions (
    id_hash     TEXT PRIMARY KEY,
    userid      TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
-- `logout` and `rotate` end all of a member's sessions.
CREATE INDEX console_sessions_by_member ON console_sessions (userid);

-- A message sent again from the console (or `POST /messages/{id}/resend`) names the one it
-- repeats. Its index holds only such messages (a partial index: nothing for the others on
-- the write path), to show a message's resends on its page.
ALTER TABLE messages ADD COLUMN resent_from TEXT;
CREATE INDEX messages_resent ON messages (resent_from) WHERE resent_from IS NOT NULL;
