-- As SQLite's 0009_media.sql (see there for the reasons).
CREATE TABLE blobs (
    id         TEXT PRIMARY KEY,
    sha256     TEXT NOT NULL,
    size       BIGINT NOT NULL,
    mime       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX blobs_by_sha256 ON blobs (sha256);

CREATE TABLE blob_chunks (
    blob_id TEXT NOT NULL,
    idx     BIGINT NOT NULL,
    bytes   BYTEA NOT NULL,
    PRIMARY KEY (blob_id, idx)
);

CREATE TABLE message_media (
    message_id TEXT NOT NULL,
    idx        BIGINT NOT NULL,
    blob_id    TEXT NOT NULL REFERENCES blobs (id),
    filename   TEXT,
    kind       TEXT NOT NULL,
    PRIMARY KEY (message_id, idx)
);
CREATE INDEX message_media_by_blob ON message_media (blob_id);

CREATE TABLE wecom_media (
    sha256      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    media_id    TEXT NOT NULL,
    uploaded_at BIGINT NOT NULL,
    PRIMARY KEY (sha256, kind)
);
CREATE INDEX wecom_media_by_time ON wecom_media (uploaded_at);
