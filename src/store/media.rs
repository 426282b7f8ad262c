//! Images and files (issue 20): their bytes (blobs), the messages they belong to, WeCom's
//! `media_id` cache, the quota and retention.
//!
//! **In the database, not beside it.** A blob is rows of the database (`blobs`, and its
//! bytes in `blob_chunks`), on both engines: one backup holds everything, and several
//! instances sharing one PostgreSQL serve each other's files without a shared disk.
//!
//! **Memory stays bounded.** A blob is written and read in chunks of [`CHUNK_BYTES`]:
//! [`Store::put_blob`] hashes and counts what it receives and writes each full chunk as
//! one row, holding at most one chunk (plus the driver's copy of it while it is being
//! written); [`Store::blob_stream`] reads one row at a time. Only [`Store::blob_bytes`]
//! (an e-mail attachment) holds a whole blob, by asking for it.
//!
//! **Writes.** Blobs are written through the read pool, a chunk per statement, never in
//! one long transaction: on SQLite a transaction held open while a sender trickles 20 MB
//! would hold the write lock against the group-commit writer (and so against `/send`);
//! on PostgreSQL it would hold a pooled connection for as long. So a blob being received
//! has chunks and no `blobs` row; its row is written last. Whatever stops it half-way
//! removes its chunks: an error at once, a dropped future (the request timed out, the
//! client went away) in a task of its own, a crash at the next
//! [`Store::purge_orphan_blobs`] (the chunks of an id older than an hour without a row:
//! ids are UUIDv7, so they carry their time).
//!
//! **A message's attachments** are written by the group-commit writer in the same
//! transaction as the message ([`Store::insert_message_with`]); a foreign key from
//! `message_media` to `blobs` keeps an attached blob from being purged as an orphan and a
//! message from naming a purged one.
//!
//! **Quota.** `media.total_bytes` bounds the sum of the stored blobs' sizes. `put_blob`
//! refuses at once when the store is full, stops reading as soon as what it received would
//! not fit, and after writing the row counts again and removes the blob if the total is
//! over: insert first, then count, as [`Store::charge`] does, so that of two instances
//! storing at once the later count sees both rows (a count-then-insert in one transaction
//! would let both pass under PostgreSQL's READ COMMITTED). Two racing uploads may both be
//! refused; the total never exceeds the quota.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use sqlx::Row as _;

use super::{Store, StoreError};
use crate::domain::{MessageId, OutboundAttachment};
use crate::time::UnixMillis;

/// Bytes per stored chunk: every chunk of a blob but the last is this long.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// The first bytes of a blob kept for sniffing its type ([`BlobInfo::head`]).
pub const HEAD_BYTES: usize = 8 * 1024;
/// A blob no message names is purged once it is this old: one still being received, or
/// stored for a message not yet committed, must survive.
pub const ORPHAN_AFTER: Duration = Duration::from_secs(3600);
/// How long a WeCom `media_id` is reused. WeCom keeps media for 3 days; a message sent
/// with one must not meet its expiry while it is retried.
pub const MEDIA_ID_REUSE: Duration = Duration::from_secs(60 * 3600);
/// WeCom forgets media after this long; cached ids older than it are pruned.
pub const MEDIA_ID_LIFETIME: Duration = Duration::from_secs(72 * 3600);

/// The longest [`Store::put_blob`] may take. Its chunks are dated by its id, made when it
/// starts, and chunks without a row whose id is [`ORPHAN_AFTER`] old are purged: a blob
/// whose row is written within half that time cannot have lost a chunk to the purge (and
/// once the row is there, its chunks are safe).
pub const PUT_BLOB_TIMEOUT: Duration = Duration::from_secs(ORPHAN_AFTER.as_secs() / 2);

/// Blobs deleted by one [`Store::purge_orphan_blobs`] call at most.
const PURGE_BATCH: usize = 1000;

/// A stored blob's id: a UUIDv7, so that its text sorts by the time it was made.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobId(String);

impl BlobId {
    fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    pub fn from_stored(id: String) -> Self {
        Self(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub use crate::media::MediaKind;

/// A stored kind read back: only `image` and `file` are ever written.
fn kind_from_stored(stored: &str) -> Result<MediaKind, StoreError> {
    MediaKind::parse(stored)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown media kind {stored:?}")))
}

/// What [`Store::put_blob`] may store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLimits {
    /// The largest blob (`media.max_bytes`).
    pub max_bytes: u64,
    /// The most all stored blobs may add up to (`media.total_bytes`).
    pub total_bytes: u64,
}

/// A blob just stored by [`Store::put_blob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub id: BlobId,
    /// SHA-256 of the content, lower-case hex.
    pub sha256: String,
    pub size: u64,
    /// What the sniffer made of `head`.
    pub mime: String,
    /// The first [`HEAD_BYTES`] bytes at most (all of a shorter blob).
    pub head: Vec<u8>,
}

/// A stored blob, as [`Store::blob_info`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    pub id: BlobId,
    pub sha256: String,
    pub size: u64,
    pub mime: String,
    pub created_at: UnixMillis,
}

/// One image or file of a message. A message's attachments are a list: the position of
/// each is its place in the order they are sent (`message_media.idx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub blob_id: BlobId,
    /// The name to show and to send it under (the sender's, or one made up).
    pub filename: Option<String>,
    pub kind: MediaKind,
}

/// Why [`Store::put_blob`] stored nothing. `E` is the body stream's own error.
#[derive(Debug, thiserror::Error)]
pub enum BlobError<E> {
    /// The body is larger than `media.max_bytes` (reading stopped there).
    #[error("the file is larger than {max_bytes} bytes")]
    TooLarge { max_bytes: u64 },
    /// Storing it would take the stored files over `media.total_bytes`.
    #[error("the storage for files is full ({total_bytes} bytes); try again later")]
    QuotaExceeded { total_bytes: u64 },
    /// Receiving the body took longer than [`PUT_BLOB_TIMEOUT`].
    #[error("receiving the file took too long")]
    TooSlow,
    /// Reading the body failed (the sender went away, a fetch failed).
    #[error("reading the file failed")]
    Body(#[source] E),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Removes a blob's chunks if it is dropped armed: a `put_blob` whose future was dropped
/// half-way (a request timed out, a client went away). In a task of its own, since drop
/// cannot wait; the hourly purge removes what this cannot.
struct Unfinished {
    store: Option<Store>,
    id: BlobId,
}

impl Unfinished {
    /// Removes the chunks now (a `put_blob` that failed).
    async fn remove(mut self) {
        if let Some(store) = self.store.take() {
            remove_chunks_or_log(&store, &self.id).await;
        }
    }

    /// The blob is stored: nothing to remove.
    fn disarm(mut self) {
        self.store = None;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let Some(store) = self.store.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let id = self.id.clone();
            runtime.spawn(async move { remove_chunks_or_log(&store, &id).await });
        }
    }
}

async fn remove_chunks_or_log(store: &Store, id: &BlobId) {
    if let Err(err) = store.delete_chunks(id).await {
        tracing::warn!(blob = %id, error = %crate::error::chain(&err), "could not remove an unfinished file's chunks; the hourly purge will");
    }
}

/// What `put_blob` received: counted, hashed, its head kept.
struct Received {
    size: u64,
    sha256: String,
    head: Vec<u8>,
}

impl Store {
    /// Stores `body` as a new blob, a chunk of [`CHUNK_BYTES`] at a time, computing its
    /// size and SHA-256 on the way, and answers it with its first bytes. `sniff` is given
    /// those first bytes (at most [`HEAD_BYTES`]) and says the content type to store; the
    /// sender's word is never asked for.
    ///
    /// Refused, with nothing left behind: a body over `limits.max_bytes` (reading stops
    /// there), one that would take the stored blobs over `limits.total_bytes` (refused
    /// before reading when the store is full already), a body that fails. A blob stored
    /// for a message that is then not committed (refused, a repeated idempotency key)
    /// should be removed with [`Store::delete_blob`]; it would be purged after
    /// [`ORPHAN_AFTER`] anyway, counting against the quota until then.
    pub async fn put_blob<S, E>(
        &self,
        body: S,
        limits: BlobLimits,
        sniff: impl FnOnce(&[u8]) -> &'static str,
    ) -> Result<BlobInfo, BlobError<E>>
    where
        S: Stream<Item = Result<Bytes, E>>,
    {
        self.put_blob_within(body, limits, sniff, PUT_BLOB_TIMEOUT)
            .await
    }

    /// [`Store::put_blob`], refused when it takes longer than `timeout`.
    async fn put_blob_within<S, E>(
        &self,
        body: S,
        limits: BlobLimits,
        sniff: impl FnOnce(&[u8]) -> &'static str,
        timeout: Duration,
    ) -> Result<BlobInfo, BlobError<E>>
    where
        S: Stream<Item = Result<Bytes, E>>,
    {
        let deadline = std::time::Instant::now() + timeout;
        let used = self.blob_bytes_total().await?;
        let Some(room) = limits.total_bytes.checked_sub(used).filter(|r| *r > 0) else {
            return Err(BlobError::QuotaExceeded {
                total_bytes: limits.total_bytes,
            });
        };
        let id = BlobId::generate();
        let unfinished = Unfinished {
            store: Some(self.clone()),
            id: id.clone(),
        };
        let received = match self.write_chunks(&id, body, limits, room, deadline).await {
            Ok(_) if std::time::Instant::now() > deadline => {
                unfinished.remove().await;
                return Err(BlobError::TooSlow);
            }
            Ok(received) => received,
            Err(err) => {
                unfinished.remove().await;
                return Err(err);
            }
        };
        let mime = sniff(&received.head);
        let stored = sqlx::query(
            "INSERT INTO blobs (id, sha256, size, mime, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.as_str())
        .bind(&received.sha256)
        .bind(i64::try_from(received.size).unwrap_or(i64::MAX))
        .bind(mime)
        .bind(UnixMillis::now())
        .execute(&self.pool)
        .await;
        if let Err(err) = stored {
            unfinished.remove().await;
            return Err(BlobError::Store(err.into()));
        }
        unfinished.disarm();
        // Counted again with the row in: see the module's doc.
        match self.blob_bytes_total().await {
            Ok(total) if total <= limits.total_bytes => {}
            Ok(_) => {
                self.delete_blob(&id).await?;
                return Err(BlobError::QuotaExceeded {
                    total_bytes: limits.total_bytes,
                });
            }
            Err(err) => {
                // Unknown whether it fits: refused (and removed, if the database lets us).
                if let Err(also) = self.delete_blob(&id).await {
                    tracing::warn!(blob = %id, error = %crate::error::chain(&also), "could not remove a refused file; the hourly purge will");
                }
                return Err(err.into());
            }
        }
        Ok(BlobInfo {
            id,
            sha256: received.sha256,
            size: received.size,
            mime: mime.to_owned(),
            head: received.head,
        })
    }

    /// Writes `body` as the chunks of `id`; stops at the first error, at more than
    /// `limits.max_bytes`, at more than `room` (what the quota leaves), or at `deadline`.
    async fn write_chunks<S, E>(
        &self,
        id: &BlobId,
        body: S,
        limits: BlobLimits,
        room: u64,
        deadline: std::time::Instant,
    ) -> Result<Received, BlobError<E>>
    where
        S: Stream<Item = Result<Bytes, E>>,
    {
        let mut body = std::pin::pin!(body);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut head = Vec::new();
        let mut chunk: Vec<u8> = Vec::with_capacity(CHUNK_BYTES);
        let mut idx: i64 = 0;
        loop {
            let next = tokio::time::timeout_at(deadline.into(), body.next()).await;
            let Some(bytes) = next.map_err(|_| BlobError::TooSlow)? else {
                break;
            };
            let bytes = bytes.map_err(BlobError::Body)?;
            size = size.saturating_add(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
            if size > limits.max_bytes {
                return Err(BlobError::TooLarge {
                    max_bytes: limits.max_bytes,
                });
            }
            if size > room {
                return Err(BlobError::QuotaExceeded {
                    total_bytes: limits.total_bytes,
                });
            }
            hasher.update(&bytes);
            let want = HEAD_BYTES.saturating_sub(head.len()).min(bytes.len());
            head.extend_from_slice(&bytes[..want]);
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let take = (CHUNK_BYTES - chunk.len()).min(rest.len());
                let (part, tail) = rest.split_at(take);
                chunk.extend_from_slice(part);
                rest = tail;
                if chunk.len() == CHUNK_BYTES {
                    self.put_chunk(id, idx, &chunk).await?;
                    chunk.clear();
                    idx += 1;
                }
            }
        }
        if !chunk.is_empty() {
            self.put_chunk(id, idx, &chunk).await?;
        }
        Ok(Received {
            size,
            sha256: hex::encode(hasher.finalize()),
            head,
        })
    }

    async fn put_chunk(&self, id: &BlobId, idx: i64, bytes: &[u8]) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO blob_chunks (blob_id, idx, bytes) VALUES ($1, $2, $3)")
            .bind(id.as_str())
            .bind(idx)
            .bind(bytes)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_chunks(&self, id: &BlobId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM blob_chunks WHERE blob_id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes a blob no message names (one stored for a message that was then refused);
    /// answers whether it did. An attached blob stays, and is purged with its messages.
    pub async fn delete_blob(&self, id: &BlobId) -> Result<bool, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM blobs WHERE id = $1 \
             AND NOT EXISTS (SELECT 1 FROM message_media m WHERE m.blob_id = blobs.id)",
        )
        .bind(id.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected();
        if deleted > 0 {
            self.delete_chunks(id).await?;
        }
        Ok(deleted > 0)
    }

    /// A stored blob's size, hash, type and time; `None` when there is no such blob (or it
    /// is still being received).
    pub async fn blob_info(&self, id: &BlobId) -> Result<Option<StoredBlob>, StoreError> {
        if !super::storable(id.as_str()) {
            return Ok(None);
        }
        let row = sqlx::query("SELECT id, sha256, size, mime, created_at FROM blobs WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let size: i64 = row.try_get("size")?;
            Ok(StoredBlob {
                id: BlobId(row.try_get("id")?),
                sha256: row.try_get("sha256")?,
                size: u64::try_from(size)
                    .map_err(|_| StoreError::Corrupt(format!("blob size {size}")))?,
                mime: row.try_get("mime")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .transpose()
    }

    /// A blob's bytes, a chunk at a time (one query per chunk). Fails with
    /// [`StoreError::NoSuchBlob`] for a blob that is not stored, and with
    /// [`StoreError::Corrupt`] when the chunks do not add up to the stored size.
    pub fn blob_stream(
        &self,
        id: &BlobId,
    ) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static {
        struct Reading {
            store: Store,
            id: BlobId,
            next: i64,
            /// Bytes still to come; unknown before the first read.
            left: Option<u64>,
        }
        let start = Reading {
            store: self.clone(),
            id: id.clone(),
            next: 0,
            left: None,
        };
        futures_util::stream::try_unfold(start, |mut r| async move {
            let left = match r.left {
                Some(left) => left,
                None => {
                    r.store
                        .blob_info(&r.id)
                        .await?
                        .ok_or_else(|| StoreError::NoSuchBlob(r.id.0.clone()))?
                        .size
                }
            };
            if left == 0 {
                return Ok(None);
            }
            let bytes: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT bytes FROM blob_chunks WHERE blob_id = $1 AND idx = $2")
                    .bind(r.id.as_str())
                    .bind(r.next)
                    .fetch_optional(&r.store.pool)
                    .await?;
            let bytes = bytes.filter(|b| !b.is_empty()).ok_or_else(|| {
                StoreError::Corrupt(format!("blob {} lacks chunk {}", r.id, r.next))
            })?;
            let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
            let Some(left) = left.checked_sub(len) else {
                return Err(StoreError::Corrupt(format!(
                    "blob {}'s chunks exceed its size",
                    r.id
                )));
            };
            r.left = Some(left);
            r.next += 1;
            Ok(Some((Bytes::from(bytes), r)))
        })
    }

    /// A blob's bytes, whole (an e-mail attachment): see [`Store::blob_stream`].
    pub async fn blob_bytes(&self, id: &BlobId) -> Result<Vec<u8>, StoreError> {
        let mut stream = std::pin::pin!(self.blob_stream(id));
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    /// The sizes of all stored blobs added up (what `media.total_bytes` bounds).
    pub async fn blob_bytes_total(&self) -> Result<u64, StoreError> {
        let total: i64 =
            sqlx::query_scalar("SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blobs")
                .fetch_one(&self.pool)
                .await?;
        Ok(u64::try_from(total).unwrap_or(0))
    }

    /// A message's images and files, in the order they are sent.
    pub async fn attachments_of(&self, id: &MessageId) -> Result<Vec<Attachment>, StoreError> {
        if !super::storable(id.as_str()) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT blob_id, filename, kind FROM message_media WHERE message_id = $1 ORDER BY idx",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Attachment {
                    blob_id: BlobId(row.try_get("blob_id")?),
                    filename: row.try_get("filename")?,
                    kind: kind_from_stored(&row.try_get::<String, _>("kind")?)?,
                })
            })
            .collect()
    }

    /// A message's images and files as the channels send them — with each one's size,
    /// hash and type — in the order they are sent. One query; only for a message whose
    /// `media_count` says it has some. An attachment stored without a name (none should
    /// be) is called `file-{n}`, `n` counting from 1.
    pub async fn outbound_attachments(
        &self,
        id: &MessageId,
    ) -> Result<Vec<OutboundAttachment>, StoreError> {
        if !super::storable(id.as_str()) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT m.idx, m.blob_id, m.filename, m.kind, b.sha256, b.size, b.mime \
             FROM message_media m JOIN blobs b ON b.id = m.blob_id \
             WHERE m.message_id = $1 ORDER BY m.idx",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let idx: i64 = row.try_get("idx")?;
                let size: i64 = row.try_get("size")?;
                Ok(OutboundAttachment {
                    filename: row
                        .try_get::<Option<String>, _>("filename")?
                        .filter(|f| !f.is_empty())
                        .unwrap_or_else(|| format!("file-{}", idx.saturating_add(1))),
                    kind: kind_from_stored(&row.try_get::<String, _>("kind")?)?,
                    mime: row.try_get("mime")?,
                    size: u64::try_from(size)
                        .map_err(|_| StoreError::Corrupt(format!("blob size {size}")))?,
                    sha256: row.try_get("sha256")?,
                    blob_id: BlobId(row.try_get("blob_id")?),
                })
            })
            .collect()
    }

    /// Deletes blobs no message names that were stored before `before` (give it
    /// [`ORPHAN_AFTER`] ago), and the chunks of blobs never finished (a crash mid-upload)
    /// whose ids are that old; answers how many blobs (finished or not) went. One blob per
    /// statement, so that the writer never waits long for SQLite's lock.
    pub async fn purge_orphan_blobs(&self, before: UnixMillis) -> Result<u64, StoreError> {
        let orphans: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM blobs WHERE created_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM message_media m WHERE m.blob_id = blobs.id) \
             ORDER BY id LIMIT {PURGE_BATCH}"
        )))
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        let mut purged = 0;
        for id in orphans {
            // A message naming it may have committed since (its foreign key then refuses
            // the delete on PostgreSQL, where it raced; the recheck sees it otherwise).
            match self.delete_blob(&BlobId(id)).await {
                Ok(true) => purged += 1,
                Ok(false) => {}
                Err(StoreError::Db(sqlx::Error::Database(db))) if db.is_foreign_key_violation() => {
                }
                Err(err) => return Err(err),
            }
        }
        let first_id = MessageId::first_at(before);
        let unfinished: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT blob_id FROM blob_chunks WHERE blob_id < $1 \
             AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.id = blob_chunks.blob_id) \
             LIMIT {PURGE_BATCH}"
        )))
        .bind(first_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        for id in unfinished {
            sqlx::query(
                "DELETE FROM blob_chunks WHERE blob_id = $1 \
                 AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.id = blob_chunks.blob_id)",
            )
            .bind(&id)
            .execute(&self.pool)
            .await?;
            purged += 1;
        }
        Ok(purged)
    }

    /// The `media_id` WeCom gave for this content and type, if it was uploaded within
    /// [`MEDIA_ID_REUSE`] before `now`.
    pub async fn cached_wecom_media(
        &self,
        sha256: &str,
        kind: MediaKind,
        now: UnixMillis,
    ) -> Result<Option<String>, StoreError> {
        if !super::storable(sha256) {
            return Ok(None);
        }
        Ok(sqlx::query_scalar(
            "SELECT media_id FROM wecom_media WHERE sha256 = $1 AND kind = $2 AND uploaded_at > $3",
        )
        .bind(sha256)
        .bind(kind.as_str())
        .bind(now - MEDIA_ID_REUSE)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Keeps the `media_id` WeCom gave for this content and type at `now` (replacing an
    /// older one).
    pub async fn remember_wecom_media(
        &self,
        sha256: &str,
        kind: MediaKind,
        media_id: &str,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO wecom_media (sha256, kind, media_id, uploaded_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (sha256, kind) DO UPDATE \
             SET media_id = excluded.media_id, uploaded_at = excluded.uploaded_at \
             WHERE wecom_media.uploaded_at <= excluded.uploaded_at",
        )
        .bind(sha256)
        .bind(kind.as_str())
        .bind(media_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets `media_id` (WeCom answered 40007, invalid media_id) — only that one: another
    /// instance may have uploaded the content again meanwhile, and its id is good.
    pub async fn forget_wecom_media(
        &self,
        sha256: &str,
        kind: MediaKind,
        media_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM wecom_media WHERE sha256 = $1 AND kind = $2 AND media_id = $3")
            .bind(sha256)
            .bind(kind.as_str())
            .bind(media_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes cached `media_id`s WeCom has forgotten ([`MEDIA_ID_LIFETIME`] before `now`);
    /// answers how many.
    pub async fn prune_wecom_media(&self, now: UnixMillis) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM wecom_media WHERE uploaded_at < $1")
                .bind(now - MEDIA_ID_LIFETIME)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::domain::{ChannelName, UserId};
    use crate::store::{AttemptUpdate, Message};

    const MIB: u64 = 1024 * 1024;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn roomy() -> BlobLimits {
        BlobLimits {
            max_bytes: 20 * MIB,
            total_bytes: 64 * MIB,
        }
    }

    fn octets(_: &[u8]) -> &'static str {
        "application/octet-stream"
    }

    /// Byte `i` of a test file: not all alike, so a misplaced chunk changes the hash.
    fn byte_at(i: u64) -> u8 {
        (i.wrapping_mul(2_654_435_761) >> 13) as u8
    }

    /// `len` bytes of the test pattern, in pieces of `piece` bytes (not aligned with the
    /// chunks), counting in `sent` what was handed out.
    fn body(
        len: u64,
        piece: u64,
        sent: Arc<AtomicU64>,
    ) -> impl Stream<Item = Result<Bytes, Infallible>> {
        futures_util::stream::unfold(0u64, move |at| {
            let sent = Arc::clone(&sent);
            async move {
                if at >= len {
                    return None;
                }
                let end = (at + piece).min(len);
                let bytes: Vec<u8> = (at..end).map(byte_at).collect();
                sent.fetch_add(end - at, Ordering::SeqCst);
                Some((Ok(Bytes::from(bytes)), end))
            }
        })
    }

    fn sha256_of_pattern(len: u64) -> String {
        let mut hasher = Sha256::new();
        let mut buf = Vec::with_capacity(CHUNK_BYTES);
        for i in 0..len {
            buf.push(byte_at(i));
            if buf.len() == CHUNK_BYTES {
                hasher.update(&buf);
                buf.clear();
            }
        }
        hasher.update(&buf);
        hex::encode(hasher.finalize())
    }

    async fn put(
        store: &Store,
        len: u64,
        limits: BlobLimits,
    ) -> Result<BlobInfo, BlobError<Infallible>> {
        store
            .put_blob(body(len, 100_000, Arc::default()), limits, octets)
            .await
    }

    /// (blobs rows, blob_chunks rows).
    async fn rows(store: &Store) -> (i64, i64) {
        let count = |table: &'static str| {
            let pool = store.pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM {table}"
                )))
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        };
        (count("blobs").await, count("blob_chunks").await)
    }

    async fn backdate(store: &Store, id: &BlobId, at: UnixMillis) {
        sqlx::query("UPDATE blobs SET created_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id.as_str())
            .execute(&store.pool)
            .await
            .unwrap();
    }

    fn message(id: &MessageId, created_at: UnixMillis) -> Message {
        Message::new_queued(
            id.clone(),
            UserId::new("alice"),
            Some("t".into()),
            None,
            created_at,
            created_at + ms(60_000),
        )
    }

    fn attachment(blob: &BlobInfo, name: &str, kind: MediaKind) -> Attachment {
        Attachment {
            blob_id: blob.id.clone(),
            filename: Some(name.to_owned()),
            kind,
        }
    }

    /// 20 MB in, in pieces that do not line up with the chunks, written as it arrives, and
    /// read back the same (compared by hash: no second copy is kept).
    async fn twenty_megabytes_go_in_a_chunk_at_a_time_and_come_back_the_same(store: &Store) {
        const LEN: u64 = 20_000_000;
        // The body checks, half-way, that chunks are in the database already: put_blob
        // writes as it reads rather than collecting the file first.
        let sent = Arc::new(AtomicU64::new(0));
        let watcher = store.clone();
        let written_half_way = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&written_half_way);
        let checked = body(LEN, 100_000, Arc::clone(&sent)).then(move |piece| {
            let (store, seen) = (watcher.clone(), Arc::clone(&seen));
            async move {
                if seen.load(Ordering::SeqCst) == 0 {
                    let (_, chunks) = rows(&store).await;
                    if chunks >= 38 {
                        seen.store(u64::try_from(chunks).unwrap(), Ordering::SeqCst);
                    }
                }
                piece
            }
        });
        let info = store
            .put_blob(checked, roomy(), |head| {
                assert_eq!(head.len(), HEAD_BYTES);
                "image/png"
            })
            .await
            .unwrap();
        assert!(
            written_half_way.load(Ordering::SeqCst) >= 38,
            "chunks were written while the body was still arriving"
        );
        assert_eq!(sent.load(Ordering::SeqCst), LEN);
        let expected = sha256_of_pattern(LEN);
        assert_eq!(info.sha256, expected);
        assert_eq!(info.size, LEN);
        assert_eq!(info.mime, "image/png");
        let head: Vec<u8> = (0..HEAD_BYTES as u64).map(byte_at).collect();
        assert_eq!(info.head, head);
        let stored = store.blob_info(&info.id).await.unwrap().unwrap();
        assert_eq!(
            (stored.size, stored.sha256.as_str(), stored.mime.as_str()),
            (LEN, expected.as_str(), "image/png")
        );
        assert_eq!(store.blob_bytes_total().await.unwrap(), LEN);
        // 76 full chunks and one of 75,136 bytes.
        assert_eq!(rows(store).await, (1, 77));
        let mut hasher = Sha256::new();
        let mut sizes = Vec::new();
        let mut chunks = std::pin::pin!(store.blob_stream(&info.id));
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.unwrap();
            sizes.push(chunk.len());
            hasher.update(&chunk);
        }
        assert_eq!(hex::encode(hasher.finalize()), expected);
        assert_eq!(sizes.len(), 77);
        assert!(sizes[..76].iter().all(|s| *s == CHUNK_BYTES));
        assert_eq!(sizes[76], 20_000_000 - 76 * CHUNK_BYTES);

        // A small one, whole; an empty one; one that is not there.
        let small = put(store, 300_000, roomy()).await.unwrap();
        let bytes = store.blob_bytes(&small.id).await.unwrap();
        assert_eq!(bytes, (0..300_000).map(byte_at).collect::<Vec<_>>());
        let empty = put(store, 0, roomy()).await.unwrap();
        assert_eq!((empty.size, empty.head.len()), (0, 0));
        assert!(store.blob_bytes(&empty.id).await.unwrap().is_empty());
        let missing = BlobId::generate();
        assert!(store.blob_info(&missing).await.unwrap().is_none());
        let err = store.blob_bytes(&missing).await.unwrap_err();
        assert!(matches!(err, StoreError::NoSuchBlob(_)), "{err:?}");
    }

    /// Over `max_bytes`: reading stops at once, and nothing is left.
    async fn a_file_over_max_bytes_is_refused_and_leaves_nothing(store: &Store) {
        let limits = BlobLimits {
            max_bytes: MIB,
            total_bytes: 64 * MIB,
        };
        let sent = Arc::new(AtomicU64::new(0));
        let err = store
            .put_blob(body(3 * MIB, 64 * 1024, Arc::clone(&sent)), limits, octets)
            .await
            .unwrap_err();
        assert!(
            matches!(err, BlobError::TooLarge { max_bytes } if max_bytes == MIB),
            "{err:?}"
        );
        assert_eq!(
            sent.load(Ordering::SeqCst),
            MIB + 64 * 1024,
            "not a piece more than the one that went over"
        );
        assert_eq!(rows(store).await, (0, 0), "its chunks are removed");
        // Exactly the limit is fine.
        put(store, MIB, limits).await.unwrap();
        // A body that fails half-way leaves nothing either.
        let failing = futures_util::stream::iter([
            Ok(Bytes::from(vec![7u8; CHUNK_BYTES + 10])),
            Err(std::io::Error::other("the sender went away")),
        ]);
        let err = store.put_blob(failing, limits, octets).await.unwrap_err();
        assert!(matches!(err, BlobError::Body(_)), "{err:?}");
        assert_eq!(rows(store).await, (1, 4));
    }

    /// The quota: refused before reading when full, while streaming when it would not fit,
    /// and at the end when another blob took the room meanwhile.
    async fn the_quota_refuses_what_does_not_fit(store: &Store) {
        let limits = BlobLimits {
            max_bytes: 2 * MIB,
            total_bytes: 2 * MIB,
        };
        put(store, 1200 * 1024, limits).await.unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let err = store
            .put_blob(body(MIB, 100_000, Arc::clone(&sent)), limits, octets)
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::QuotaExceeded { .. }), "{err:?}");
        assert!(sent.load(Ordering::SeqCst) < MIB, "refused while streaming");
        assert_eq!(rows(store).await, (1, 5));
        // What fits still goes in, up to the byte.
        put(store, 2 * MIB - 1200 * 1024, limits).await.unwrap();
        assert_eq!(store.blob_bytes_total().await.unwrap(), 2 * MIB);
        // Full: refused before a byte is read.
        let sent = Arc::new(AtomicU64::new(0));
        let err = store
            .put_blob(body(10, 10, Arc::clone(&sent)), limits, octets)
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::QuotaExceeded { total_bytes } if total_bytes == 2 * MIB));
        assert_eq!(sent.load(Ordering::SeqCst), 0);

        // Room for each alone, not for both: one is stored while the other streams, and
        // the other's count at the end refuses it (and removes it).
        let limits = BlobLimits {
            max_bytes: MIB,
            total_bytes: 3 * MIB,
        };
        let other = store.clone();
        let racing = body(600 * 1024, 100_000, Arc::default()).then(move |piece| {
            let other = other.clone();
            async move {
                if other.blob_bytes_total().await.unwrap() == 2 * MIB {
                    put(&other, 600 * 1024, limits).await.unwrap();
                }
                piece
            }
        });
        let err = store.put_blob(racing, limits, octets).await.unwrap_err();
        assert!(matches!(err, BlobError::QuotaExceeded { .. }), "{err:?}");
        assert_eq!(
            store.blob_bytes_total().await.unwrap(),
            2 * MIB + 600 * 1024
        );
        assert_eq!(rows(store).await.0, 3);
    }

    /// A message and its attachments commit together, in the writer's batch; a message
    /// naming a file that is not stored is refused whole, and the others of its batch
    /// still commit.
    async fn a_message_and_its_attachments_commit_together(store: &Store) {
        let png = put(store, 5000, roomy()).await.unwrap();
        let pdf = put(store, 7000, roomy()).await.unwrap();
        let now = UnixMillis::now();
        let id = MessageId::generate();
        store
            .insert_message_with(
                message(&id, now),
                vec![
                    attachment(&png, "chart.png", MediaKind::Image),
                    attachment(&pdf, "report.pdf", MediaKind::File),
                ],
            )
            .await
            .unwrap();
        assert!(store.message(id.as_str()).await.unwrap().is_some());
        assert_eq!(
            store.attachments_of(&id).await.unwrap(),
            [
                attachment(&png, "chart.png", MediaKind::Image),
                attachment(&pdf, "report.pdf", MediaKind::File),
            ]
        );
        // Concurrent inserts share a batch; the one naming a missing blob fails alone.
        let missing = BlobInfo {
            id: BlobId::generate(),
            ..png.clone()
        };
        let ids: Vec<MessageId> = (0..6).map(|_| MessageId::generate()).collect();
        let inserts = ids.iter().enumerate().map(|(i, id)| {
            let files = if i == 3 {
                vec![
                    attachment(&png, "a.png", MediaKind::Image),
                    attachment(&missing, "gone.png", MediaKind::Image),
                ]
            } else {
                vec![attachment(&pdf, &format!("{i}.pdf"), MediaKind::File)]
            };
            store.insert_message_with(message(id, now), files)
        });
        let results = futures_util::future::join_all(inserts).await;
        for (i, (id, result)) in ids.iter().zip(results).enumerate() {
            if i == 3 {
                assert!(
                    result.is_err(),
                    "a message naming a missing file is refused"
                );
                assert!(store.message(id.as_str()).await.unwrap().is_none());
                assert!(store.attachments_of(id).await.unwrap().is_empty());
            } else {
                result.unwrap();
                let files = store.attachments_of(id).await.unwrap();
                assert_eq!(files.len(), 1);
                assert_eq!(
                    files[0].filename.as_deref(),
                    Some(format!("{i}.pdf").as_str())
                );
            }
        }
        // An attached blob is not deleted by delete_blob; an unattached one is.
        assert!(!store.delete_blob(&pdf.id).await.unwrap());
        let spare = put(store, 10, roomy()).await.unwrap();
        assert!(store.delete_blob(&spare.id).await.unwrap());
        assert!(store.blob_info(&spare.id).await.unwrap().is_none());
    }

    /// A blob id made at `at` (chunks of an upload that never finished are dated by it).
    fn blob_id_at(at: UnixMillis, n: u64) -> BlobId {
        let first = MessageId::first_at(at);
        BlobId(format!("{}-7000-8000-{n:012x}", &first.as_str()[..13]))
    }

    /// Orphans older than an hour go, chunks of unfinished old uploads too; fresh ones and
    /// attached ones stay.
    async fn the_orphan_purge_keeps_fresh_and_attached_blobs(store: &Store) {
        let now = UnixMillis::now();
        let old = now - ms(2 * 3600 * 1000);
        let fresh = put(store, 1000, roomy()).await.unwrap();
        let orphan = put(store, 300_000, roomy()).await.unwrap();
        backdate(store, &orphan.id, old).await;
        let attached = put(store, 1000, roomy()).await.unwrap();
        backdate(store, &attached.id, old).await;
        let id = MessageId::generate();
        store
            .insert_message_with(
                message(&id, now),
                vec![attachment(&attached, "kept.png", MediaKind::Image)],
            )
            .await
            .unwrap();
        // Chunks without a row: an upload that died an hour ago, and one in progress.
        let dead = blob_id_at(old, 1);
        let receiving = BlobId::generate();
        for (id, idx) in [(&dead, 0), (&dead, 1), (&receiving, 0)] {
            store.put_chunk(id, idx, b"partial").await.unwrap();
        }
        assert_eq!(rows(store).await, (3, 7));
        let purged = store.purge_orphan_blobs(now - ORPHAN_AFTER).await.unwrap();
        assert_eq!(purged, 2, "the old orphan and the dead upload");
        assert!(store.blob_info(&orphan.id).await.unwrap().is_none());
        assert!(store.blob_info(&fresh.id).await.unwrap().is_some());
        assert_eq!(store.blob_bytes(&attached.id).await.unwrap().len(), 1000);
        // fresh 1, attached 1, receiving 1.
        assert_eq!(rows(store).await, (2, 3));
        assert_eq!(
            store.purge_orphan_blobs(now - ORPHAN_AFTER).await.unwrap(),
            0
        );
    }

    /// Purging a message purges its attachments; its blob is then an orphan.
    async fn purged_messages_take_their_attachments(store: &Store) {
        let now = UnixMillis::now();
        let old = now - ms(3 * 86_400 * 1000);
        let blob = put(store, 1000, roomy()).await.unwrap();
        backdate(store, &blob.id, old).await;
        let id = MessageId::first_at(old);
        store
            .insert_message_with(
                message(&id, old),
                vec![attachment(&blob, "old.png", MediaKind::Image)],
            )
            .await
            .unwrap();
        store
            .record_attempt(AttemptUpdate::Delivered {
                id: id.clone(),
                attempts: 1,
                channel: ChannelName::WeCom,
                earlier: None,
                log: None,
            })
            .await
            .unwrap();
        assert_eq!(
            store.purge_orphan_blobs(now - ORPHAN_AFTER).await.unwrap(),
            0,
            "attached"
        );
        assert_eq!(
            store
                .purge_messages(now - ms(86_400_000), 100)
                .await
                .unwrap(),
            1
        );
        assert!(store.attachments_of(&id).await.unwrap().is_empty());
        assert_eq!(
            store.purge_orphan_blobs(now - ORPHAN_AFTER).await.unwrap(),
            1
        );
        assert_eq!(rows(store).await, (0, 0));
    }

    /// An upload whose future is dropped half-way (a request timed out) removes its chunks.
    async fn a_dropped_upload_removes_its_chunks(store: &Store) {
        let first = futures_util::stream::iter([Ok::<_, Infallible>(Bytes::from(vec![
            1u8;
            CHUNK_BYTES
                * 2
        ]))]);
        let stalled = first.chain(futures_util::stream::pending());
        let upload = store.put_blob(stalled, roomy(), octets);
        let timed_out = tokio::time::timeout(Duration::from_millis(500), upload).await;
        assert!(timed_out.is_err(), "the body never ends");
        for _ in 0..100 {
            if rows(store).await == (0, 0) {
                return;
            }
            tokio::time::sleep(ms(20)).await;
        }
        panic!("chunks left behind: {:?}", rows(store).await);
    }

    /// A body that trickles past the time limit is refused, and leaves nothing.
    async fn a_slow_upload_is_refused_and_leaves_nothing(store: &Store) {
        let first = futures_util::stream::iter([Ok::<_, Infallible>(Bytes::from(vec![
            1u8;
            CHUNK_BYTES
                + 1
        ]))]);
        let stalled = first.chain(futures_util::stream::pending());
        let err = store
            .put_blob_within(stalled, roomy(), octets, ms(300))
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::TooSlow), "{err:?}");
        assert_eq!(rows(store).await, (0, 0));
    }

    /// WeCom's media ids: reused for 60 hours, forgotten (only that id) on 40007,
    /// pruned after 3 days.
    async fn wecom_media_ids_are_cached_forgotten_and_pruned(store: &Store) {
        let now = UnixMillis::now();
        let hours = |h: u64| ms(h * 3600 * 1000);
        let (img, file) = (MediaKind::Image, MediaKind::File);
        assert_eq!(
            store.cached_wecom_media("abc", img, now).await.unwrap(),
            None
        );
        store
            .remember_wecom_media("abc", img, "m1", now)
            .await
            .unwrap();
        store
            .remember_wecom_media("abc", file, "f1", now)
            .await
            .unwrap();
        assert_eq!(
            store
                .cached_wecom_media("abc", img, now + hours(59))
                .await
                .unwrap()
                .as_deref(),
            Some("m1")
        );
        assert_eq!(
            store
                .cached_wecom_media("abc", img, now + hours(61))
                .await
                .unwrap(),
            None
        );
        // Another instance uploaded again: an older answer does not replace it.
        store
            .remember_wecom_media("abc", img, "m2", now + hours(1))
            .await
            .unwrap();
        store
            .remember_wecom_media("abc", img, "m1-late", now)
            .await
            .unwrap();
        assert_eq!(
            store
                .cached_wecom_media("abc", img, now + hours(2))
                .await
                .unwrap()
                .as_deref(),
            Some("m2")
        );
        // 40007 for m1 (stale) does not forget m2.
        store.forget_wecom_media("abc", img, "m1").await.unwrap();
        assert!(
            store
                .cached_wecom_media("abc", img, now)
                .await
                .unwrap()
                .is_some()
        );
        store.forget_wecom_media("abc", img, "m2").await.unwrap();
        assert_eq!(
            store.cached_wecom_media("abc", img, now).await.unwrap(),
            None
        );
        assert_eq!(store.prune_wecom_media(now + hours(71)).await.unwrap(), 0);
        assert_eq!(
            store.prune_wecom_media(now + hours(73)).await.unwrap(),
            1,
            "f1"
        );
        assert_eq!(
            store.cached_wecom_media("abc", file, now).await.unwrap(),
            None
        );
    }

    /// What the lane worker of a message with attachments reads and records: the count
    /// with the message, the attachments as channels send them, and each part delivered —
    /// recorded once, counted as a send, the message still queued; moving on to the next
    /// channel starts its parts afresh.
    async fn a_message_sent_part_by_part_records_each_part(store: &Store) {
        use crate::domain::Route;
        let png = put(store, 5000, roomy()).await.unwrap();
        let pdf = put(store, 7000, roomy()).await.unwrap();
        let now = UnixMillis::now();
        let id = MessageId::generate();
        let mut m = message(&id, now);
        m.route = Route::parse("wecom,email").unwrap();
        store
            .insert_message_with(
                m,
                vec![
                    attachment(&png, "chart.png", MediaKind::Image),
                    attachment(&pdf, "report.pdf", MediaKind::File),
                ],
            )
            .await
            .unwrap();
        let alice = UserId::new("alice");
        let heads = store.lane_heads(&alice, 4).await.unwrap();
        assert_eq!(heads.len(), 1);
        assert_eq!(
            (heads[0].message.media_count, heads[0].message.parts_done),
            (2, 0)
        );
        let files = store.outbound_attachments(&id).await.unwrap();
        let seen: Vec<(&str, MediaKind, u64, &str)> = files
            .iter()
            .map(|f| (f.filename.as_str(), f.kind, f.size, f.sha256.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("chart.png", MediaKind::Image, 5000, png.sha256.as_str()),
                ("report.pdf", MediaKind::File, 7000, pdf.sha256.as_str()),
            ]
        );
        assert_eq!(files[0].blob_id, png.id);
        assert_eq!(files[1].mime, "application/octet-stream");
        // A plain message has none (and is never asked: its count is 0).
        let plain = MessageId::generate();
        store.insert_message(message(&plain, now)).await.unwrap();
        assert_eq!(
            store
                .message(plain.as_str())
                .await
                .unwrap()
                .unwrap()
                .media_count,
            0
        );
        assert!(store.outbound_attachments(&plain).await.unwrap().is_empty());

        let sends = || store.send_history(&alice, ChannelName::WeCom, UnixMillis::from_millis(0));
        let part = |parts_before: i64, attempts: i64| AttemptUpdate::PartDelivered {
            id: id.clone(),
            attempts,
            channel: ChannelName::WeCom,
            parts_before,
            note: format!("part {} of 3", parts_before + 1),
            deadline_at: now + ms(90_000),
        };
        store
            .record_attempt(AttemptUpdate::Retry {
                id: id.clone(),
                attempts: 1,
                channel: ChannelName::WeCom,
                error: "busy".into(),
                next_attempt_at: now + ms(60_000),
            })
            .await
            .unwrap();
        store.record_attempt(part(0, 2)).await.unwrap();
        let after = store.message(id.as_str()).await.unwrap().unwrap();
        assert_eq!(after.status, crate::store::MessageStatus::Queued);
        assert_eq!((after.parts_done, after.attempts), (1, 2));
        assert_eq!(after.last_error, None, "the part went out: no error stands");
        assert!(
            after.next_attempt_at <= UnixMillis::now(),
            "due now, for its next part"
        );
        assert_eq!(after.deadline_at, now + ms(90_000));
        assert_eq!(after.channel, None, "not delivered yet");
        assert_eq!(sends().await.unwrap().len(), 1, "the part counts as a send");
        // The same update again (never expected) changes nothing.
        store.record_attempt(part(0, 2)).await.unwrap();
        assert_eq!(
            store
                .message(id.as_str())
                .await
                .unwrap()
                .unwrap()
                .parts_done,
            1
        );
        assert_eq!(sends().await.unwrap().len(), 1);
        store.record_attempt(part(1, 3)).await.unwrap();
        let history = store.attempts_of(&id).await.unwrap();
        let rows: Vec<(&str, Option<&str>)> = history
            .iter()
            .map(|a| (a.outcome.as_str(), a.error.as_deref()))
            .collect();
        assert_eq!(
            rows,
            [
                ("retry", Some("busy")),
                ("delivered", Some("part 1 of 3")),
                ("delivered", Some("part 2 of 3")),
            ]
        );
        assert_eq!(sends().await.unwrap().len(), 2);
        // On to e-mail: none of its parts is delivered there.
        store
            .record_attempt(AttemptUpdate::NextChannel {
                id: id.clone(),
                attempts: 4,
                channel: ChannelName::WeCom,
                delivered: false,
                error: Some("text, image chart.png delivered; file report.pdf: refused".into()),
                route: Route::parse("email").unwrap(),
                deadline_at: now + ms(90_000),
                unconfirmed: false,
            })
            .await
            .unwrap();
        let moved = store.message(id.as_str()).await.unwrap().unwrap();
        assert_eq!(
            (moved.parts_done, moved.route.to_stored().as_str()),
            (0, "email")
        );
        store
            .record_attempt(AttemptUpdate::Delivered {
                id: id.clone(),
                attempts: 5,
                channel: ChannelName::Email,
                earlier: None,
                log: None,
            })
            .await
            .unwrap();
        let done = store.message(id.as_str()).await.unwrap().unwrap();
        assert_eq!(done.status, crate::store::MessageStatus::Delivered);
        assert_eq!(sends().await.unwrap().len(), 2, "e-mail's send is e-mail's");
    }

    /// A digest carries waiting messages only up to the first with attachments: it goes
    /// alone, and nothing behind it overtakes it.
    async fn a_digest_stops_before_a_message_with_attachments(store: &Store) {
        let png = put(store, 5000, roomy()).await.unwrap();
        let now = UnixMillis::now();
        let ids: Vec<MessageId> = (0..4).map(|_| MessageId::generate()).collect();
        for (i, id) in ids.iter().enumerate() {
            let files = if i == 2 {
                vec![attachment(&png, "chart.png", MediaKind::Image)]
            } else {
                Vec::new()
            };
            store
                .insert_message_with(message(id, now), files)
                .await
                .unwrap();
        }
        let waiting = store
            .lane_waiting(&UserId::new("alice"), ChannelName::WeCom, 16)
            .await
            .unwrap();
        let carried: Vec<&MessageId> = waiting.iter().map(|w| &w.id).collect();
        assert_eq!(carried, [&ids[0], &ids[1]]);
    }

    /// After the media migration on a database holding message `m1` (queued, titled
    /// "kept"): the message is there and can be given a file.
    pub(crate) async fn assert_media_after_migration(store: &Store) {
        let kept = store.message("m1").await.unwrap().unwrap();
        assert_eq!(kept.title.as_deref(), Some("kept"));
        // The parts migration too: a message from before has no attachments, no parts done.
        assert_eq!((kept.media_count, kept.parts_done), (0, 0));
        let id = MessageId::from_stored("m1".to_owned());
        assert!(store.attachments_of(&id).await.unwrap().is_empty());
        let blob = put(store, 1000, roomy()).await.unwrap();
        sqlx::query(
            "INSERT INTO message_media (message_id, idx, blob_id, filename, kind) \
             VALUES ('m1', 0, $1, 'late.png', 'image')",
        )
        .bind(blob.id.as_str())
        .execute(&store.pool)
        .await
        .unwrap();
        assert_eq!(
            store.attachments_of(&id).await.unwrap(),
            [attachment(&blob, "late.png", MediaKind::Image)]
        );
        assert_eq!(store.blob_bytes(&blob.id).await.unwrap().len(), 1000);
    }

    on_both_engines!(
        twenty_megabytes_go_in_a_chunk_at_a_time_and_come_back_the_same,
        a_file_over_max_bytes_is_refused_and_leaves_nothing,
        the_quota_refuses_what_does_not_fit,
        a_message_and_its_attachments_commit_together,
        the_orphan_purge_keeps_fresh_and_attached_blobs,
        purged_messages_take_their_attachments,
        a_dropped_upload_removes_its_chunks,
        a_slow_upload_is_refused_and_leaves_nothing,
        wecom_media_ids_are_cached_forgotten_and_pruned,
        a_message_sent_part_by_part_records_each_part,
        a_digest_stops_before_a_message_with_attachments,
    );
}
