-- Issue 30 (as SQLite's 0017_acks.sql): messages that ask to be acknowledged (`ack=true`, `escalate=10m`), written in the
-- transaction that accepts the message. `escalate_at`: when, unacknowledged, it is sent again
-- on the member's next channels (step 1); `step`: escalation steps taken; `escalated_as`: the
-- message that step sent. An acknowledgement sets `acked_at`, `acked_by` and `via` (`api`,
-- `chat`, `page`, `card`) once.
CREATE TABLE acks (
    message_id   TEXT PRIMARY KEY,
    userid       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    escalate_at  BIGINT,
    step         BIGINT NOT NULL DEFAULT 0,
    escalated_as TEXT,
    escalated_at BIGINT,
    acked_at     BIGINT,
    acked_by     TEXT,
    via          TEXT
);
CREATE INDEX acks_due ON acks (escalate_at)
    WHERE acked_at IS NULL AND step = 0 AND escalate_at IS NOT NULL;
CREATE INDEX acks_open ON acks (userid, created_at) WHERE acked_at IS NULL;
CREATE INDEX acks_escalated_as ON acks (escalated_as) WHERE escalated_as IS NOT NULL;
