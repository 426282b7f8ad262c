-- issue 31: on SQLite the send history is read from memory (src/store/sends.rs), loaded
-- from this table at start and appended to by the writer, this process being the file's
-- only writer. The table is only the record a restart loads (all of it) and the scheduler
-- prunes by time: one index on sent_at, appended to at its end, instead of two whose
-- inserts each dirtied a page per message ((userid, channel, sent_at) a random one).
-- PostgreSQL keeps its indexes: other instances read and write the history there.
DROP INDEX sends_by_member;
DROP INDEX sends_by_channel;
CREATE INDEX sends_by_time ON sends (sent_at);
