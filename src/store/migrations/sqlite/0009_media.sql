-- issue 20: images and files. Their bytes live in the database, not in files beside it:
-- one backup holds everything, and several instances sharing one PostgreSQL see the same
-- files without a shared disk. A file is stored in chunks of 256 KiB (`blob_chunks`), so
-- that a 20 MB file is written and read a chunk at a time, never whole in memory.

-- One stored file. Its row is written after its last chunk (with the size and SHA-256
-- computed while streaming), so a file still being received has chunks and no row;
-- `mime` is what its first bytes sniffed as, never what the sender said.
CREATE TABLE blobs (
    id         TEXT PRIMARY KEY,     -- UUIDv7: chunks without a row are dated by it
    sha256     TEXT NOT NULL,        -- lower-case hex
    size       BIGINT NOT NULL,
    mime       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX blobs_by_sha256 ON blobs (sha256);

-- A file's bytes, `idx` from 0; every chunk but the last is 256 KiB. No foreign key to
-- `blobs`: the chunks come first.
CREATE TABLE blob_chunks (
    blob_id TEXT NOT NULL,
    idx     BIGINT NOT NULL,
    bytes   BLOB NOT NULL,
    PRIMARY KEY (blob_id, idx)
);

-- A message's images and files, in the order they are sent (`idx` from 0), written in the
-- same transaction as the message. The foreign key keeps a file from being purged as an
-- orphan while a message naming it commits (and a message from naming a purged file).
CREATE TABLE message_media (
    message_id TEXT NOT NULL,
    idx        BIGINT NOT NULL,
    blob_id    TEXT NOT NULL REFERENCES blobs (id),
    filename   TEXT,
    kind       TEXT NOT NULL,        -- image | file: how WeCom gets it
    PRIMARY KEY (message_id, idx)
);
CREATE INDEX message_media_by_blob ON message_media (blob_id);

-- WeCom's media_id for content already uploaded, by content hash and upload type: valid
-- for 3 days at WeCom, reused for 60 hours, forgotten when WeCom answers 40007.
CREATE TABLE wecom_media (
    sha256      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    media_id    TEXT NOT NULL,
    uploaded_at BIGINT NOT NULL,
    PRIMARY KEY (sha256, kind)
);
CREATE INDEX wecom_media_by_time ON wecom_media (uploaded_at);
