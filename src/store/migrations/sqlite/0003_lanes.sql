-- Per-member lanes: messages to one member are delivered in acceptance order, under the
-- member's send limits, by whichever instance holds the lane's claim.

-- Acceptance order, assigned by the group-commit writer (ids are time-ordered only to
-- the millisecond).
ALTER TABLE messages ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
UPDATE messages SET seq = rowid;
-- The digest that carried a message, when it was delivered as part of one.
ALTER TABLE messages ADD COLUMN via TEXT;
-- A sender's Idempotency-Key: one message per member and key (within 24 h; older keys
-- are cleared by the maintenance task).
ALTER TABLE messages ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX messages_idempotency ON messages (userid, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- WeCom userids are case-insensitive; they are stored lower-cased from now on.
UPDATE members SET userid = lower(trim(userid));
UPDATE messages SET userid = lower(trim(userid));

DROP INDEX messages_queued;
-- A lane's queue, head first.
CREATE INDEX messages_lane ON messages (userid, seq) WHERE status = 'queued';
-- Queued messages by retry deadline (failing them while a channel is down).
CREATE INDEX messages_deadline ON messages (deadline_at) WHERE status = 'queued';

-- One row per member with queued messages. `due_at`: when the head may next be tried
-- (backoff, member limits, a channel that is down). `owner`/`lease_until`: the instance
-- working on the lane and until when its claim holds without renewal.
CREATE TABLE lanes (
    userid      TEXT PRIMARY KEY,
    due_at      BIGINT NOT NULL,
    owner       TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX lanes_due ON lanes (due_at);
INSERT INTO lanes (userid, due_at, owner, lease_until)
    SELECT userid, MIN(next_attempt_at), NULL, 0 FROM messages
    WHERE status = 'queued' GROUP BY userid;


-- What was actually sent to each member, for the sliding-window limits (kept for the
-- longest window, then pruned).
CREATE TABLE sends (
    userid  TEXT NOT NULL,
    sent_at BIGINT NOT NULL
);
CREATE INDEX sends_by_member ON sends (userid, sent_at);
-- A message delivered on its own counts once, at its delivery time (a few milliseconds
-- after the request left: later, so the limits err on the safe side). A digest counts
-- once for all it carried (written by the writer).
CREATE TRIGGER messages_count_send AFTER UPDATE OF status ON messages
    WHEN NEW.status = 'delivered' AND OLD.status = 'queued' AND NEW.via IS NULL
BEGIN
    INSERT INTO sends (userid, sent_at) VALUES (NEW.userid, NEW.delivered_at);
END;

-- Digests: one WeCom message that carried several waiting messages (`messages.via`).
CREATE TABLE digests (
    id         TEXT PRIMARY KEY,
    userid     TEXT NOT NULL,
    body       TEXT NOT NULL,
    carried    BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
