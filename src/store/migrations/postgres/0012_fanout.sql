-- Issue 29 (as SQLite's 0016_fanout.sql): a large group message is accepted with its plan (what every copy is, as JSON)
-- and its copies are written afterwards, a chunk at a time (src/store/fanout.rs).
-- `expanded`: how many copies are written; `plan` is cleared with the last chunk.
ALTER TABLE group_sends ADD COLUMN plan TEXT;
ALTER TABLE group_sends ADD COLUMN expanded BIGINT NOT NULL DEFAULT 0;
CREATE INDEX group_sends_planned ON group_sends (created_at) WHERE plan IS NOT NULL;
