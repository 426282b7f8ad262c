-- One row that /healthz rewrites to learn whether the database takes writes right now
-- (a full disk or an I/O error shows up here even when no message is being sent).
-- `reserve` is rewritten with as many bytes as the largest message, so that a probe
-- succeeds only if a message of any accepted size could be stored.
CREATE TABLE health (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at BIGINT NOT NULL,
    reserve    BLOB
);
INSERT INTO health (id, checked_at) VALUES (1, 0);
