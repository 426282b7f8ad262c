-- issue 21: scheduled delivery, cancelling, quiet hours.

-- When a scheduled or held message becomes due (unix ms): the sender's `delay`/`at`, or
-- the end of the member's quiet hours. NULL for a message that was due at acceptance. It
-- stays set once the message is released, so that its history says when it was due.
ALTER TABLE messages ADD COLUMN deliver_at BIGINT;
-- The sender marked it urgent (ntfy priority 5, Bark `critical`, …): quiet hours let it
-- through unless the member chose `strict`.
ALTER TABLE messages ADD COLUMN urgent BIGINT NOT NULL DEFAULT 0;
-- Why it waits: NULL = the sender's `delay`/`at`; 'quiet' = the member's quiet hours.
ALTER TABLE messages ADD COLUMN held TEXT;

-- Two more status values: 'scheduled' (waiting for `deliver_at`, in no lane: it blocks
-- nothing, and `messages_lane … WHERE status = 'queued'` never sees it) and 'cancelled'
-- (final, like delivered and failed). The scheduler finds the next due ones here: the
-- earliest `deliver_at` is one index probe, and messages due at the same time are released
-- in acceptance order (`seq`) without a sort.
CREATE INDEX messages_scheduled ON messages (deliver_at, seq) WHERE status = 'scheduled';

-- A member's quiet hours: "23:00-07:00", "23:00-07:00 strict", "off" (none, whatever the
-- server's default); NULL = `delivery.quiet_hours`.
ALTER TABLE members ADD COLUMN quiet TEXT;
-- A member's offset from UTC in seconds (`timezone +08:00` in the chat); NULL =
-- `delivery.utc_offset`.
ALTER TABLE members ADD COLUMN utc_offset BIGINT;
