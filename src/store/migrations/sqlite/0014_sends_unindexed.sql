-- issue 31: on SQLite the send history is read from memory (src/store/sends.rs), loaded
-- from this table at start and appended to by the writer, this process being the file's
-- only writer. The table is only the record a restart loads (all of it) and the scheduler
-- prunes, by insertion order (rowid, see `prune_sends_sql` in src/store/writer.rs): no
-- index at all, instead of two whose inserts each dirtied a page per commit or per
-- message ((userid, channel, sent_at): a random one). PostgreSQL keeps its indexes: other
-- instances read and write the history there.
DROP INDEX sends_by_member;
DROP INDEX sends_by_channel;
