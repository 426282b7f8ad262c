-- As SQLite's 0010_parts.sql (see there for the reasons).
ALTER TABLE messages ADD COLUMN media_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN parts_done BIGINT NOT NULL DEFAULT 0;
