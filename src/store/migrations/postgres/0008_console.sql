-- As SQLite's 0012_console.sql (see there for the reasons).
CREATE TABLE console_logins (
    token_hash  TEXT PRIMARY KEY,
    userid      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE TABLE console_sessions (
    id_hash     TEXT PRIMARY KEY,
    userid      TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX console_sessions_by_member ON console_sessions (userid);
ALTER TABLE messages ADD COLUMN resent_from TEXT;
CREATE INDEX messages_resent ON messages (resent_from) WHERE resent_from IS NOT NULL;
