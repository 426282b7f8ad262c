-- Members who asked the bot for a push token. One live token per member.
CREATE TABLE members (
    userid           TEXT PRIMARY KEY,
    token            TEXT NOT NULL UNIQUE,
    created_at       BIGINT NOT NULL,
    token_created_at BIGINT NOT NULL
);

-- The outbox: every accepted message, from acceptance until delivered or failed.
-- Times are unix milliseconds.
CREATE TABLE messages (
    id              TEXT PRIMARY KEY,
    userid          TEXT NOT NULL,
    title           TEXT,
    content         TEXT,
    status          TEXT NOT NULL,          -- queued | delivered | failed
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    channel         TEXT,                   -- channel that delivered it
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    deadline_at     BIGINT NOT NULL,        -- transient failures are retried until then
    delivered_at    BIGINT
);
CREATE INDEX messages_queued ON messages (next_attempt_at) WHERE status = 'queued';
CREATE INDEX messages_by_member ON messages (userid, id);

-- WeCom retries a callback it got no answer for; each is processed once and the
-- first reply is kept so a retry gets the same answer.
CREATE TABLE callbacks (
    dedup_key  TEXT PRIMARY KEY,
    reply      TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX callbacks_created ON callbacks (created_at);
