-- The whole schema for PostgreSQL, equal to SQLite's after its migrations 0001–0005 (see
-- ../sqlite for the history and the reasons behind each column). Integers are BIGINT
-- throughout, so that the code reads every one of them as i64 on both engines; times are
-- unix milliseconds.

CREATE TABLE members (
    userid           TEXT PRIMARY KEY,
    token            TEXT NOT NULL UNIQUE,
    created_at       BIGINT NOT NULL,
    token_created_at BIGINT NOT NULL,
    email            TEXT,
    channels         TEXT,
    format           TEXT
);

-- Acceptance order across every instance (the writer takes numbers from it).
CREATE SEQUENCE messages_seq;

CREATE TABLE messages (
    id              TEXT PRIMARY KEY,
    userid          TEXT NOT NULL,
    title           TEXT,
    content         TEXT,
    status          TEXT NOT NULL,          -- queued | delivered | failed
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    channel         TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    deadline_at     BIGINT NOT NULL,
    delivered_at    BIGINT,
    seq             BIGINT NOT NULL DEFAULT 0,
    via             TEXT,
    idempotency_key TEXT,
    route           TEXT NOT NULL DEFAULT 'wecom',
    deliver_all     BIGINT NOT NULL DEFAULT 0,
    email_to        TEXT,
    format          TEXT NOT NULL DEFAULT 'text',
    look            TEXT NOT NULL DEFAULT 'text',
    url             TEXT,
    page_key        TEXT
);
CREATE INDEX messages_by_member ON messages (userid, id);
CREATE UNIQUE INDEX messages_idempotency ON messages (userid, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX messages_lane ON messages (userid, seq) WHERE status = 'queued';
CREATE INDEX messages_deadline ON messages (deadline_at) WHERE status = 'queued';

CREATE TABLE callbacks (
    dedup_key  TEXT PRIMARY KEY,
    reply      TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX callbacks_created ON callbacks (created_at);

CREATE TABLE health (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    checked_at BIGINT NOT NULL,
    reserve    BYTEA
);
INSERT INTO health (id, checked_at) VALUES (1, 0);

CREATE TABLE lanes (
    userid      TEXT PRIMARY KEY,
    due_at      BIGINT NOT NULL,
    owner       TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX lanes_due ON lanes (due_at);

CREATE TABLE sends (
    userid  TEXT NOT NULL,
    sent_at BIGINT NOT NULL
);
CREATE INDEX sends_by_member ON sends (userid, sent_at);

CREATE TABLE digests (
    id         TEXT PRIMARY KEY,
    userid     TEXT NOT NULL,
    body       TEXT NOT NULL,
    carried    BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- `rowid` orders attempts made in the same millisecond, as SQLite's implicit rowid does.
CREATE TABLE attempts (
    rowid      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id TEXT NOT NULL,
    at         BIGINT NOT NULL,
    channel    TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    error      TEXT
);
CREATE INDEX attempts_by_message ON attempts (message_id, at);

CREATE TABLE email_codes (
    userid        TEXT PRIMARY KEY,
    address       TEXT NOT NULL,
    code          TEXT NOT NULL,
    expires_at    BIGINT NOT NULL,
    attempts_left BIGINT NOT NULL
);

CREATE TABLE email_requests (
    userid       TEXT NOT NULL,
    address      TEXT NOT NULL,
    requested_at BIGINT NOT NULL
);
CREATE INDEX email_requests_by_member ON email_requests (userid, requested_at);
CREATE INDEX email_requests_by_address ON email_requests (address, requested_at);

-- A message delivered on its own through WeCom counts once against the member limits, at
-- its delivery time (as SQLite's trigger of the same name).
CREATE FUNCTION messages_count_send() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sends (userid, sent_at) VALUES (NEW.userid, NEW.delivered_at);
    RETURN NULL;
END;
$$;
CREATE TRIGGER messages_count_send AFTER UPDATE OF status ON messages
    FOR EACH ROW
    WHEN (NEW.status = 'delivered' AND OLD.status = 'queued' AND NEW.via IS NULL
          AND NEW.deliver_all = 0 AND NEW.channel = 'wecom')
    EXECUTE FUNCTION messages_count_send();
