-- As SQLite's 0011_schedule.sql (see there for the reasons).
ALTER TABLE messages ADD COLUMN deliver_at BIGINT;
ALTER TABLE messages ADD COLUMN urgent BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN held TEXT;
CREATE INDEX messages_scheduled ON messages (deliver_at, seq) WHERE status = 'scheduled';
ALTER TABLE members ADD COLUMN quiet TEXT;
ALTER TABLE members ADD COLUMN utc_offset BIGINT;
