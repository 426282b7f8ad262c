-- Issues 23 and 31: whether an instance is the only one using the database, so that it may
-- hand each message it commits to its lane's worker in memory (as on SQLite) instead of the
-- worker reading every message back (src/store/arrivals.rs). With two instances that would
-- break per-member order: one instance's worker would send its own new message ahead of the
-- other instance's earlier one.
--
-- Every instance adds one to `starts` when it opens the database and remembers the value.
-- Each insert statement of the writer (src/store/writer.rs, `insert_messages_pg`) reads the
-- counter FOR SHARE, so a start waits for the inserts in progress and every later insert
-- sees it. An instance that sees the counter above the value it knows records that value in
-- `instance_alarms`, in the same transaction, and is not alone from then on; an instance
-- that finds an alarm at or above its own start is not alone either. So a message committed
-- by another instance after this one started always comes with an alarm this one sees.
CREATE TABLE instances (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    starts BIGINT  NOT NULL
);
INSERT INTO instances (id, starts) VALUES (1, 0);

CREATE TABLE instance_alarms (
    starts BIGINT PRIMARY KEY
);
