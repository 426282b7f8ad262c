-- issue 29: groups. One token that reaches a team: made, joined and left in the chat (or
-- over HTTP with a personal token), or backed by a WeCom department or tag.
--
-- A group message is one row per recipient in `messages` (an ordinary copy in that
-- member's lane: their own route, look, quiet hours, limits and fallback) plus one
-- `group_sends` row, whose id is what the sender gets back. Copies name it in
-- `messages.group_send`. Membership is read when the message is accepted.

-- `name`: 1–32 visible characters, unique among each member's groups (checked in code: a
-- member's groups are only known through group_members). `token`: the group's send
-- token, as strong as a personal one. `invite`: the code members join with (NULL for
-- WeCom-backed groups), stored canonical (upper case, no dash).
CREATE TABLE groups (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    token             TEXT NOT NULL UNIQUE,
    token_created_at  BIGINT NOT NULL,
    invite            TEXT UNIQUE,
    invite_expires_at BIGINT,
    source            TEXT NOT NULL DEFAULT 'chat',
    created_at        BIGINT NOT NULL,
    refreshed_at      BIGINT
);
-- `owner`, `muted`: 0 or 1. `joined_at` orders the members: an owner who leaves hands the
-- group to the longest-standing one.
CREATE TABLE group_members (
    group_id   TEXT NOT NULL,
    userid     TEXT NOT NULL,
    owner      BIGINT NOT NULL DEFAULT 0,
    joined_at  BIGINT NOT NULL,
    muted      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, userid)
);
CREATE INDEX group_members_by_member ON group_members (userid);
-- Wrong invite codes, per member, for the rate limit (pruned with the other housekeeping).
CREATE TABLE group_join_failures (userid TEXT NOT NULL, at BIGINT NOT NULL);
CREATE INDEX group_join_failures_by_member ON group_join_failures (userid, at);
CREATE TABLE group_sends (
    id                 TEXT PRIMARY KEY,
    group_id           TEXT NOT NULL,
    group_name         TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    recipients         BIGINT NOT NULL,
    idempotency_key    TEXT,
    idempotency_digest TEXT
);
CREATE UNIQUE INDEX group_sends_idempotency ON group_sends (group_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
ALTER TABLE messages ADD COLUMN group_send TEXT;
CREATE INDEX messages_by_group_send ON messages (group_send) WHERE group_send IS NOT NULL;
