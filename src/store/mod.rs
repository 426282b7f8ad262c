//! All persistent state, and all SQL.
//!
//! The rest of the program sees only [`Store`] and the plain records below, whichever
//! engine holds the data: one SQLite file (the embedded default, `sqlite.rs`) or a
//! PostgreSQL database shared by several instances (`postgres.rs`).
//!
//! Reads and the few writes outside the outbox are written once, against sqlx's `Any`
//! driver, in SQL both engines speak (`$n` placeholders, BIGINT unix-millisecond
//! timestamps — [`UnixMillis`](crate::time::UnixMillis) on this side —, TEXT). Writes to the outbox go through one group-commit writer per process
//! ([`writer`]): concurrent accepts share a transaction and so one fsync, which is what
//! lets `/send` take thousands of messages a second while still answering only after the
//! message is on disk. Its SQL is written once too; each engine supplies a [`writer`]
//! backend (connection, transactions, acceptance numbers) and the few clauses where the
//! engines differ (`FOR UPDATE SKIP LOCKED`, filling a blob).

/// Store tests: each named `async fn(&Store)` of the calling test module runs twice, on a
/// fresh SQLite file and on a fresh PostgreSQL schema. Defined before the modules that use it.
#[cfg(test)]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::store::Store;

            #[tokio::test]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("t.db").display());
                let store = Store::connect(&url).await.unwrap();
                super::$name(&store).await;
                store.close().await;
            }

            #[tokio::test]
            async fn postgres() {
                let schema = crate::store::postgres::TestSchema::new().await;
                let store = Store::connect(&schema.url()).await.unwrap();
                super::$name(&store).await;
                store.close().await;
            }
        }
    )*};
}

mod acks;
mod admin;
mod arrivals;
mod callbacks;
mod console;
mod fanout;
mod group_sends;
mod groups;
mod lanes;
mod media;
mod members;
mod messages;
mod postgres;
mod readers;
mod schedule;
mod sends;
mod sqlite;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::AnyPool;

use crate::supervise::Supervisor;
pub use acks::{AckAsk, AckOutcome, AckRecord};
pub use admin::{
    ChannelQueue, FailedAttempt, FailedMessage, Failures, MemberSummary, Members, OldestWaiting,
};
pub use arrivals::{Arrivals, LaneWatch};
pub use callbacks::CallbackClaim;
pub use console::{
    ConsoleSession, LoginLink, LoginUse, NewSession, TimelineFilter, like_pattern, secret_hash,
};
pub use group_sends::GroupSend;
pub use groups::{
    Created, GroupRef, GroupView, Joined, Kicked, Left, NewGroup, Owned, WecomGroupSpec,
};
pub use lanes::{HEAD_CONTENT_BYTES, Head, NextWindow, SharedTurn, Waiting};
pub use media::{
    Attachment, BlobError, BlobId, BlobInfo, BlobLimits, CHUNK_BYTES, HEAD_BYTES,
    MEDIA_ID_LIFETIME, MEDIA_ID_REUSE, MediaKind, ORPHAN_AFTER, PUT_BLOB_TIMEOUT, StoredBlob,
};
pub use members::{
    ChargeCap, CodeCheck, CodeRequest, MAX_MEMBER_DESTINATIONS, MemberPrefs, MemberQuiet,
    StoredDestination,
};
pub use messages::{
    AttemptRecord, ChannelCounts, DigestRecord, Held, IDEMPOTENCY_WINDOW, Message, MessageStatus,
    StoredChannel, storable,
};
pub use postgres::describe as describe_postgres;
use sqlite::FileIdentity;
pub use sqlite::{chmod_command, exposed_files, sqlite_path};
pub use writer::{AttemptUpdate, CancelOutcome, Digest, MoveOn, Overdue, OverdueMessage};
use writer::{WriteStatus, WriterHandle};

/// `/healthz` trusts a successful write younger than this; otherwise it makes one.
const HEALTH_PROBE_AFTER: Duration = Duration::from_secs(10);
/// How long start-up waits for the first connection before saying why it cannot open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections in the read pool unless `storage.pool_size` says otherwise.
pub const DEFAULT_POOL_SIZE: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Db(#[from] sqlx::Error),
    /// From the writer's own connection.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Start-up could not open the database; `reason` names the real cause.
    #[error("cannot open the database {target}: {reason}")]
    Open {
        /// The SQLite file, or PostgreSQL's host, port and database (no password).
        target: String,
        reason: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("storage writer stopped")]
    WriterGone,
    #[error(
        "the database file {} was deleted or replaced while pushbot was running; \
         restart pushbot so that it opens the file again",
        .0.display()
    )]
    FileReplaced(PathBuf),
    /// Another message of the member already carries this idempotency key.
    #[error("a message with this idempotency key exists already")]
    DuplicateKey,
    /// The push token a message was sent with was replaced before the message could be
    /// stored (see [`Store::insert_message_verified`]).
    #[error("the push token was replaced")]
    TokenRevoked,
    /// The last write failed (reported by `/healthz`).
    #[error("database writes are failing: {0}")]
    WritesFailing(String),
    /// One failure reported to several waiters.
    #[error(transparent)]
    Shared(Arc<StoreError>),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// No stored file has this id (or it is still being received).
    #[error("no stored file {0}")]
    NoSuchBlob(String),
}

/// Why [`Store::reachability`] cannot reach the database: one line, without the password.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("an in-memory database is refused at start-up")]
    InMemory,
    #[error("unknown engine")]
    UnknownEngine,
    /// `target`: what the URL names, as [`describe_postgres`] says it.
    #[error("{target}: not a valid PostgreSQL URL")]
    InvalidUrl { target: String },
    /// No connection to `target`: why, and the driver's error when there is one.
    #[error("{target} is not reachable: {reason}{}", cause(.error.as_ref()))]
    NoConnection {
        target: String,
        reason: String,
        error: Option<sqlx::Error>,
    },
}

/// `: ` and the error's chain, or nothing.
fn cause(error: Option<&sqlx::Error>) -> String {
    error.map_or_else(String::new, |e| format!(": {}", crate::error::chain(e)))
}

impl StoreError {
    /// Whether the database cannot serve right now (disk full, I/O error, locked past the
    /// busy timeout, pool exhausted, file gone) rather than a bug: answered 503, retry later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Db(err) => match err {
                sqlx::Error::Database(db) => {
                    postgres::is_unavailable(db.as_ref()).unwrap_or_else(|| {
                        is_unavailable_code(db.code().and_then(|c| c.parse().ok()).unwrap_or(0))
                    })
                }
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::WorkerCrashed => true,
                _ => false,
            },
            Self::Sqlite(err) => match err {
                rusqlite::Error::SqliteFailure(code, _) => is_unavailable_code(code.extended_code),
                _ => false,
            },
            Self::WriterGone | Self::FileReplaced(_) | Self::WritesFailing(_) => true,
            Self::Shared(inner) => inner.is_unavailable(),
            Self::Migrate(_)
            | Self::Open { .. }
            | Self::Corrupt(_)
            | Self::NoSuchBlob(_)
            | Self::DuplicateKey
            | Self::TokenRevoked => false,
        }
    }
}

/// Whether a SQLite result code (primary or extended) means the database cannot serve
/// now: BUSY 5, LOCKED 6, NOMEM 7, READONLY 8, IOERR 10, FULL 13, CANTOPEN 14, PROTOCOL 15.
fn is_unavailable_code(code: i32) -> bool {
    matches!(code & 0xff, 5 | 6 | 7 | 8 | 10 | 13 | 14 | 15)
}

/// What an engine's `open` gives the store: the read pool, the writer's backend, and
/// the SQLite file (to notice it being replaced).
struct Opened {
    pool: AnyPool,
    /// Connections for the hot reads (see [`readers`]).
    readers: readers::Readers,
    backend: Box<dyn writer::Backend>,
    file: Option<FileIdentity>,
    /// The writer's WAL frames, when counted (SQLite, for the benchmark).
    wal: Option<Arc<sqlite::WalCount>>,
    /// PostgreSQL: this instance's value of the `instances` counter (see
    /// [`Arrivals::for_instance`]).
    mark: Option<i64>,
}

/// What the writer has committed since the store was opened, for the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Transactions committed.
    pub commits: u64,
    /// SQLite, when counted ([`Store::connect_measuring_wal`]): WAL frames those
    /// transactions wrote, as SQLite reported them after each commit.
    pub wal_frames: Option<u64>,
    /// The size of one WAL frame in bytes (a page and its 24-byte header), with
    /// `wal_frames`.
    pub wal_frame_bytes: Option<u64>,
}

/// Which engine holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// One SQLite file, one pushbot process.
    Sqlite,
    /// A PostgreSQL database, possibly shared by several pushbot processes.
    Postgres,
}

impl Engine {
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// The hot reads' connections: no ping per query (see [`readers`]).
    readers: Arc<readers::Readers>,
    engine: Engine,
    writer: WriterHandle,
    /// The SQLite file (none for PostgreSQL).
    file: Option<FileIdentity>,
    /// token → userid. Every authenticated request looks a token up, so on SQLite, where
    /// this process is the only writer of tokens, positive answers are kept in memory and
    /// rotation evicts the old entry before it returns. On PostgreSQL another instance
    /// may rotate a token at any time: only `/send` uses what is kept, and its insert
    /// checks the token again as it commits (see `Store::sender_by_token`).
    tokens: Arc<RwLock<members::TokenCache>>,
    /// Members' bound addresses and channel orders, as read (changed through this store,
    /// which updates it; on PostgreSQL, where another instance may change them, used for
    /// `members::SHARED_PREFS_TTL`).
    prefs: Arc<RwLock<members::PrefsCache>>,
    /// Who waits for new messages: the scheduler, and lane workers lingering on a lane.
    arrivals: Arc<Arrivals>,
    /// The writer's WAL frames, when counted.
    wal: Option<Arc<sqlite::WalCount>>,
    /// The send history in memory, where this process is the only writer (SQLite): loaded
    /// from `sends` at start, appended to by the writer after each commit.
    sends: Option<Arc<sends::SendLog>>,
    /// Shared with the writer thread and the scheduler: how background work that cannot go
    /// on (the writer thread) stops the process, and the test hooks.
    supervisor: Supervisor,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the database with a pool of [`DEFAULT_POOL_SIZE`] connections.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, DEFAULT_POOL_SIZE).await
    }

    /// Opens (creating if needed) the database, applies migrations and starts the writer.
    ///
    /// A database that cannot be opened fails at once with one error naming it (the
    /// SQLite file, or PostgreSQL's host, port and database: never the password) and the
    /// real cause.
    pub async fn connect_with(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        Self::open(url, pool_size, false).await
    }

    /// As [`Store::connect_with`], and on SQLite the WAL frames of the writer's commits
    /// are counted ([`Store::write_stats`]): for the benchmark. (The counting replaces
    /// SQLite's automatic checkpoint by one that does the same.)
    pub async fn connect_measuring_wal(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        Self::open(url, pool_size, true).await
    }

    async fn open(url: &str, pool_size: u32, measure_wal: bool) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let pool_size = pool_size.max(1);
        let engine = Engine::of_url(url).ok_or_else(|| StoreError::Open {
            target: "the database".into(),
            reason: "storage.url must start with sqlite: or postgres://".into(),
            source: None,
        })?;
        let Opened {
            pool,
            readers,
            backend,
            file,
            wal,
            mark,
        } = match engine {
            Engine::Sqlite => sqlite::open(url, pool_size, measure_wal).await?,
            Engine::Postgres => postgres::open(url, pool_size).await?,
        };
        let arrivals = Arc::new(mark.map_or_else(Arrivals::default, Arrivals::for_instance));
        let sends = match engine {
            Engine::Sqlite => Some(Arc::new(sends::SendLog::load(&pool).await?)),
            Engine::Postgres => None,
        };
        let supervisor = Supervisor::default();
        let writer = writer::spawn(
            backend,
            Arc::clone(&arrivals),
            sends.clone(),
            supervisor.clone(),
        );
        Ok(Self {
            pool,
            readers: Arc::new(readers),
            engine,
            writer,
            file,
            tokens: Arc::default(),
            prefs: Arc::default(),
            arrivals,
            wal,
            sends,
            supervisor,
        })
    }

    /// What the writer has committed so far (see [`WriteStats`]).
    pub fn write_stats(&self) -> WriteStats {
        use std::sync::atomic::Ordering::Relaxed;
        let wal = self.wal.as_deref();
        WriteStats {
            commits: self.writer.health.commits(),
            wal_frames: wal.map(|w| w.frames.load(Relaxed)),
            wal_frame_bytes: wal.map(|w| w.page_size.load(Relaxed) + 24),
        }
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// How background work that cannot go on stops the process, and the test hooks.
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// For `pushbot check-config`: whether the database can be reached, without creating
    /// or migrating anything. One line either way.
    pub async fn reachability(url: &str) -> Result<String, Unreachable> {
        match Engine::of_url(url) {
            Some(Engine::Sqlite) => match sqlite_path(url) {
                Some(path) if path.exists() => Ok(format!("file {} exists", path.display())),
                Some(path) => Ok(format!(
                    "file {} does not exist yet (created at the first start)",
                    path.display()
                )),
                None => Err(Unreachable::InMemory),
            },
            Some(Engine::Postgres) => postgres::reachability(url).await,
            None => Err(Unreachable::UnknownEngine),
        }
    }

    /// Whether this process is the only one writing the database, so that what it wrote
    /// may be remembered in memory.
    fn sole_writer(&self) -> bool {
        self.engine == Engine::Sqlite
    }

    /// For `/healthz`: the database file is still the one opened, reads work, and writes
    /// work — judged by the last write when it is recent (a success within
    /// [`HEALTH_PROBE_AFTER`], a failure within [`writer::FAILURE_MEMORY`]), else by making
    /// a probe write.
    pub async fn check_health(&self) -> Result<(), StoreError> {
        if let Some(file) = &self.file
            && !file.still_there()
        {
            return Err(StoreError::FileReplaced(file.path.clone()));
        }
        if self.writer.is_closed() {
            return Err(StoreError::WriterGone);
        }
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        match self.writer.health.status() {
            WriteStatus::Ok(age) if age < HEALTH_PROBE_AFTER => Ok(()),
            WriteStatus::Failing { error, age } if age < writer::FAILURE_MEMORY => {
                Err(StoreError::WritesFailing(error))
            }
            WriteStatus::Ok(_) | WriteStatus::Failing { .. } | WriteStatus::Unknown => {
                self.writer.probe().await
            }
        }
    }

    /// Wake-ups for newly committed messages.
    pub fn arrivals(&self) -> Arc<Arrivals> {
        Arc::clone(&self.arrivals)
    }

    /// Commits queued writes, stops the writer, then closes the pool. Writes after this
    /// fail with [`StoreError::WriterGone`].
    pub async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ChannelName, MessageId, Route, UserId};
    use crate::time::UnixMillis;
    use sqlx::Row as _;
    use sqlx::{AnyConnection, Connection as _, Executor as _};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn uid(s: &str) -> UserId {
        UserId::new(s)
    }

    fn mid(s: &str) -> MessageId {
        MessageId::from_stored(s.to_owned())
    }

    async fn temp_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        (Store::connect(&url).await.unwrap(), dir)
    }

    pub(super) fn message(id: &str, userid: &str) -> Message {
        let now = UnixMillis::now();
        Message::new_queued(
            mid(id),
            uid(userid),
            Some("t".into()),
            None,
            now,
            now + ms(1000),
        )
    }

    #[test]
    fn only_codes_that_say_the_database_cannot_serve_now_are_unavailable() {
        // BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL, and extended
        // codes of those (IOERR_READ, IOERR_WRITE, BUSY_SNAPSHOT).
        for code in [5, 6, 7, 8, 10, 13, 14, 15, 266, 778, 517] {
            assert!(is_unavailable_code(code), "{code} means: retry later (503)");
        }
        // OK, ERROR, CORRUPT, CONSTRAINT (UNIQUE, FOREIGNKEY), NOTADB: not the disk's fault.
        for code in [0, 1, 11, 19, 2067, 787, 26] {
            assert!(!is_unavailable_code(code), "{code} is not unavailability");
        }
        assert!(!StoreError::DuplicateKey.is_unavailable());
        assert!(!StoreError::Corrupt("x".into()).is_unavailable());
        assert!(StoreError::WriterGone.is_unavailable());
        assert!(StoreError::Shared(Arc::new(StoreError::WriterGone)).is_unavailable());
    }

    #[tokio::test]
    async fn a_read_only_database_is_unavailable_and_a_constraint_is_not() {
        let (store, dir) = temp_store().await;
        let path = dir.path().join("t.db");
        // Through sqlx (the pool's driver)…
        let url = format!("sqlite://{}?mode=ro", path.display());
        let mut ro = AnyConnection::connect(&url).await.unwrap();
        let err = sqlx::query("INSERT INTO callbacks (dedup_key, created_at) VALUES ('k', 0)")
            .execute(&mut ro)
            .await
            .unwrap_err();
        assert!(StoreError::Db(err).is_unavailable());
        let err = sqlx::query("INSERT INTO health (id, checked_at) VALUES (1, 0)")
            .execute(&store.pool)
            .await
            .unwrap_err();
        assert!(
            !StoreError::Db(err).is_unavailable(),
            "a constraint is a bug, not a full disk"
        );
        // …and through rusqlite (the writer's).
        let ro = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let err = ro
            .execute(
                "INSERT INTO callbacks (dedup_key, created_at) VALUES ('k', 0)",
                [],
            )
            .unwrap_err();
        assert!(StoreError::Sqlite(err).is_unavailable());
        let rw = rusqlite::Connection::open(&path).unwrap();
        let err = rw
            .execute("INSERT INTO health (id, checked_at) VALUES (1, 0)", [])
            .unwrap_err();
        assert!(!StoreError::Sqlite(err).is_unavailable());
    }

    #[tokio::test]
    async fn token_is_stable_until_rotated() {
        let (store, _dir) = temp_store().await;
        let t1 = store.token_for(&uid("alice")).await.unwrap();
        assert_eq!(store.token_for(&uid("alice")).await.unwrap(), t1);
        assert_ne!(store.token_for(&uid("bob")).await.unwrap(), t1);
        let t2 = store.rotate_token(&uid("alice")).await.unwrap();
        assert_ne!(t1, t2);
        assert_eq!(store.member_by_token(&t1).await.unwrap(), None);
        assert_eq!(
            store.member_by_token(&t2).await.unwrap(),
            Some(uid("alice"))
        );
    }

    #[tokio::test]
    async fn a_lookup_racing_a_rotation_cannot_revive_the_old_token() {
        let (store, _dir) = temp_store().await;
        let old = store.token_for(&uid("alice")).await.unwrap();
        // A lookup read the database (and the rotation counter) just before…
        let generation = store.tokens.read().unwrap().rotations;
        // …a rotation committed…
        store.rotate_token(&uid("alice")).await.unwrap();
        // …and only now tries to cache what it read.
        store.cache_token(&old, &uid("alice"), generation);
        assert_eq!(store.member_by_token(&old).await.unwrap(), None);
    }

    #[tokio::test]
    async fn concurrent_inserts_are_all_stored() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect_with(&url, 3).await.unwrap();
        assert_group_commit(&store, 3).await;
    }

    /// On either engine: 200 concurrent inserts are all stored in far fewer transactions
    /// (what queued during one commit shares the next), a lone insert is one transaction,
    /// and the read pool has the configured size.
    pub(super) async fn assert_group_commit(store: &Store, pool_size: u32) {
        assert_eq!(store.pool.options().get_max_connections(), pool_size);
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .insert_message(message(&format!("m{i}"), "alice"))
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(store.queued_count().await.unwrap(), 200);
        let commits = store.writer.health.commits();
        assert!(
            (1..100).contains(&commits),
            "200 concurrent inserts took {commits} transactions"
        );
        store.insert_message(message("alone", "bob")).await.unwrap();
        assert_eq!(store.writer.health.commits(), commits + 1);
    }

    #[tokio::test]
    async fn attempt_updates_are_applied_in_order() {
        let (store, _dir) = temp_store().await;
        store.insert_message(message("a", "alice")).await.unwrap();
        store.insert_message(message("b", "alice")).await.unwrap();
        store
            .record_attempt(AttemptUpdate::Retry {
                id: mid("a"),
                attempts: 1,
                channel: ChannelName::WeCom,
                error: "busy".into(),
                next_attempt_at: UnixMillis::from_millis(5),
            })
            .await
            .unwrap();
        store
            .record_attempt(AttemptUpdate::Delivered {
                id: mid("a"),
                attempts: 2,
                channel: ChannelName::WeCom,
                earlier: None,
                log: None,
            })
            .await
            .unwrap();
        store
            .record_attempt(AttemptUpdate::Failed {
                id: mid("b"),
                attempts: 1,
                channel: ChannelName::WeCom,
                error: "no".into(),
                unconfirmed: false,
            })
            .await
            .unwrap();
        let a = store.message("a").await.unwrap().unwrap();
        assert_eq!(a.status, MessageStatus::Delivered);
        assert_eq!(a.attempts, 2);
        assert_eq!(a.last_error, None);
        assert!(a.delivered_at.is_some());
        let b = store.message("b").await.unwrap().unwrap();
        assert_eq!(b.status, MessageStatus::Failed);
        assert_eq!(b.last_error.as_deref(), Some("no"));
        assert_eq!(store.queued_count().await.unwrap(), 0);
    }

    /// An independent connection to the same file, as another process would open it.
    async fn independent(dir: &tempfile::TempDir) -> AnyConnection {
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let mut conn = AnyConnection::connect(&url).await.unwrap();
        conn.execute("PRAGMA busy_timeout = 5000").await.unwrap();
        conn
    }

    async fn ids_seen_by(conn: &mut AnyConnection) -> Vec<String> {
        sqlx::query("SELECT id FROM messages ORDER BY id")
            .fetch_all(&mut *conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("id"))
            .collect()
    }

    #[tokio::test]
    async fn every_connection_commits_with_synchronous_full() {
        let (store, _dir) = temp_store().await;
        // Several connections of the pool, held at once so they are distinct.
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut conn = store.pool.acquire().await.unwrap();
            let row = sqlx::query("PRAGMA synchronous")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(
                row.get::<i64, _>(0),
                2,
                "2 = FULL: a commit survives power loss"
            );
            let row = sqlx::query("PRAGMA journal_mode")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(row.get::<String, _>(0), "wal");
            held.push(conn);
        }
    }

    #[tokio::test]
    async fn close_commits_what_was_queued_before_it() {
        let (store, dir) = temp_store().await;
        let mut pending = Vec::new();
        for i in 0..50 {
            let store = store.clone();
            pending.push(tokio::spawn(async move {
                store
                    .insert_message(message(&format!("c{i:02}"), "alice"))
                    .await
            }));
        }
        // Let every insert reach the writer's queue, then close at once.
        tokio::task::yield_now().await;
        store.close().await;
        let mut ok = 0;
        for p in pending {
            if p.await.unwrap().is_ok() {
                ok += 1;
            }
        }
        let seen = ids_seen_by(&mut independent(&dir).await).await;
        assert_eq!(
            seen.len(),
            ok,
            "every insert that was answered Ok is on disk"
        );
        assert!(matches!(
            store.insert_message(message("late", "alice")).await,
            Err(StoreError::WriterGone)
        ));
    }

    #[tokio::test]
    async fn one_batch_keeps_each_rows_own_attempt_count() {
        let (store, _dir) = temp_store().await;
        for id in ["a", "b", "c"] {
            store.insert_message(message(id, "alice")).await.unwrap();
        }
        // Concurrent outcomes land in one group commit.
        let (a, b, c) = tokio::join!(
            store.record_attempt(AttemptUpdate::Delivered {
                id: mid("a"),
                attempts: 1,
                channel: ChannelName::WeCom,
                earlier: None,
                log: None,
            }),
            store.record_attempt(AttemptUpdate::Delivered {
                id: mid("b"),
                attempts: 3,
                channel: ChannelName::WeCom,
                earlier: None,
                log: None,
            }),
            store.record_attempt(AttemptUpdate::Delivered {
                id: mid("c"),
                attempts: 3,
                channel: ChannelName::Email,
                earlier: None,
                log: None,
            }),
        );
        a.unwrap();
        b.unwrap();
        c.unwrap();
        let got = |id: &'static str| {
            let store = store.clone();
            async move { store.message(id).await.unwrap().unwrap() }
        };
        assert_eq!(got("a").await.attempts, 1);
        assert_eq!(got("b").await.attempts, 3);
        assert_eq!(got("b").await.channel.as_deref(), Some("wecom"));
        assert_eq!(got("c").await.attempts, 3);
        assert_eq!(got("c").await.channel.as_deref(), Some("email"));
        assert!(
            [got("a").await, got("b").await, got("c").await]
                .iter()
                .all(|m| m.status == MessageStatus::Delivered)
        );
    }

    #[tokio::test]
    async fn a_commit_failure_refuses_exactly_its_rows_and_the_store_recovers() {
        let (store, dir) = temp_store().await;
        let mut other = independent(&dir).await;
        // A deferred foreign-key violation makes COMMIT itself fail and leaves the
        // transaction open on the writer's connection, as a full disk does.
        for sql in [
            "CREATE TABLE fault_parent (id INTEGER PRIMARY KEY)",
            "CREATE TABLE fault_child (pid INTEGER REFERENCES fault_parent (id) \
             DEFERRABLE INITIALLY DEFERRED)",
            "CREATE TRIGGER fault AFTER INSERT ON messages WHEN NEW.title = 'poison' \
             BEGIN INSERT INTO fault_child VALUES (42); END",
        ] {
            other.execute(sql).await.unwrap();
        }
        let mut poison = message("p1", "alice");
        poison.title = Some("poison".into());
        let (p, g1, g2) = tokio::join!(
            store.insert_message(poison.clone()),
            store.insert_message(message("g1", "alice")),
            store.insert_message(message("g2", "alice")),
        );
        assert!(p.is_err(), "the row whose commit failed is refused");
        g1.unwrap();
        g2.unwrap();
        // Alone, too: the failed COMMIT must not leave a transaction behind.
        poison.id = mid("p2");
        assert!(store.insert_message(poison).await.is_err());
        for i in 0..5 {
            store
                .insert_message(message(&format!("h{i}"), "alice"))
                .await
                .unwrap();
        }
        assert_eq!(
            ids_seen_by(&mut other).await,
            ["g1", "g2", "h0", "h1", "h2", "h3", "h4"],
            "every Ok is visible to another connection at once"
        );
        store.check_health().await.unwrap();
        store.close().await;
    }

    /// A small tmpfs, so that the disk really fills up. Needs root (CAP_SYS_ADMIN); `None`
    /// (and the test is skipped, saying so) where mounting is not allowed.
    struct Tmpfs {
        mnt: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Tmpfs {
        fn mount(size: &str) -> Option<Self> {
            let dir = tempfile::tempdir().unwrap();
            let mnt = dir.path().join("mnt");
            std::fs::create_dir(&mnt).unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&mnt)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
                return None;
            }
            Some(Self { mnt, _dir: dir })
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.mnt)
                .status();
        }
    }

    #[tokio::test]
    async fn full_disk_refuses_writes_and_recovers_when_space_returns() {
        let Some(disk) = Tmpfs::mount("2m") else {
            return;
        };
        let url = format!("sqlite://{}", disk.mnt.join("t.db").display());
        let store = Store::connect(&url).await.unwrap();
        // What the schema leaves free, less a little: the disk fills within a few messages.
        std::fs::write(disk.mnt.join("filler"), vec![0u8; 1_300_000]).unwrap();
        let big = "x".repeat(30_000);
        let big_message = |id: String| {
            let mut m = message(&id, "alice");
            m.content = Some(big.clone());
            m
        };
        let mut filled = None;
        for i in 0..100 {
            if let Err(err) = store.insert_message(big_message(format!("b{i:03}"))).await {
                filled = Some(err);
                break;
            }
        }
        let err = filled.expect("the disk fills up");
        assert!(err.is_unavailable(), "a full disk is 'unavailable': {err}");
        // Still full: every write fails — none is reported stored (the old code answered
        // Ok here, into a transaction that never committed).
        for i in 0..3 {
            let result = store.insert_message(big_message(format!("f{i}"))).await;
            assert!(result.is_err(), "f{i} cannot be stored on a full disk");
        }
        assert!(
            store.check_health().await.is_err(),
            "health says writes fail"
        );

        std::fs::remove_file(disk.mnt.join("filler")).unwrap();
        let mut other = AnyConnection::connect(&url).await.unwrap();
        for i in 0..5 {
            store
                .insert_message(message(&format!("s{i}"), "alice"))
                .await
                .expect("writes work again once there is room");
        }
        let seen: Vec<String> = ids_seen_by(&mut other)
            .await
            .into_iter()
            .filter(|id| id.starts_with('s') || id.starts_with('f'))
            .collect();
        assert_eq!(seen, ["s0", "s1", "s2", "s3", "s4"], "each Ok is committed");
        store.check_health().await.unwrap();
        // No pooled connection is left inside a transaction.
        let mut held = Vec::new();
        for _ in 0..8 {
            let mut conn = store.pool.acquire().await.unwrap();
            assert!(!conn.is_in_transaction());
            sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
            sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
            held.push(conn);
        }
        drop(held);
        store.close().await;
    }

    #[tokio::test]
    async fn a_deleted_database_file_fails_health_and_writes() {
        let (store, dir) = temp_store().await;
        store.insert_message(message("a", "alice")).await.unwrap();
        store.check_health().await.unwrap();
        std::fs::remove_file(dir.path().join("t.db")).unwrap();
        let err = store.check_health().await.unwrap_err();
        assert!(matches!(err, StoreError::FileReplaced(_)), "{err}");
        let err = store
            .insert_message(message("b", "alice"))
            .await
            .unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        // A new pool connection fails rather than starting an empty database in its place.
        let options = store.pool.connect_options();
        assert!(AnyConnection::connect_with(&options).await.is_err());
        assert!(
            !dir.path().join("t.db").exists(),
            "no empty database was created"
        );
    }

    #[tokio::test]
    async fn start_up_names_the_real_cause() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope").join("x.db");
        let err = Store::connect(&format!("sqlite://{}", missing.display()))
            .await
            .unwrap_err();
        let text = crate::error::chain(&err);
        assert!(
            text.contains("nope") && text.contains("not accessible"),
            "{text}"
        );

        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, b"this is a text file, not a database").unwrap();
        let started = std::time::Instant::now();
        let err = Store::connect(&format!("sqlite://{}", junk.display()))
            .await
            .unwrap_err();
        let text = crate::error::chain(&err);
        assert!(
            text.contains("junk.db") && text.contains("not a SQLite database"),
            "{text}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "fails at once");
    }

    #[tokio::test]
    async fn a_rotation_evicts_lookups_made_while_it_waited_for_the_lock() {
        let (store, dir) = temp_store().await;
        let old = store.token_for(&uid("alice")).await.unwrap();
        // Another writer holds the database, so the rotation's UPDATE has to wait…
        let mut other = independent(&dir).await;
        other.execute("BEGIN IMMEDIATE").await.unwrap();
        let rotating = tokio::spawn({
            let store = store.clone();
            async move { store.rotate_token(&uid("alice")).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // …meanwhile a request looks the old token up (still valid in the database).
        assert_eq!(
            store.member_by_token(&old).await.unwrap(),
            Some(uid("alice"))
        );
        other.execute("COMMIT").await.unwrap();
        let new = rotating.await.unwrap().unwrap();
        assert_ne!(new, old);
        assert_eq!(
            store.member_by_token(&old).await.unwrap(),
            None,
            "the old token stops working when rotate returns"
        );
    }

    #[tokio::test]
    async fn callbacks_are_claimed_once_and_replay_the_reply() {
        let (store, _dir) = temp_store().await;
        assert_eq!(store.claim_callback("k").await.unwrap(), CallbackClaim::New);
        assert_eq!(
            store.claim_callback("k").await.unwrap(),
            CallbackClaim::Seen(None)
        );
        store.complete_callback("k", Some("hi")).await.unwrap();
        assert_eq!(
            store.claim_callback("k").await.unwrap(),
            CallbackClaim::Seen(Some("hi".into()))
        );
        assert_eq!(
            store
                .prune_callbacks(UnixMillis::now() + ms(1))
                .await
                .unwrap(),
            1
        );
        assert_eq!(store.claim_callback("k").await.unwrap(), CallbackClaim::New);
    }

    fn routed(
        id: &str,
        userid: &str,
        route: &str,
        deliver_all: bool,
        deadline: UnixMillis,
    ) -> Message {
        let mut m = message(id, userid);
        m.route = Route::parse(route).unwrap();
        m.deliver_all = deliver_all;
        m.deadline_at = deadline;
        m
    }

    async fn count(store: &Store, sql: &str) -> i64 {
        let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&store.pool)
            .await
            .unwrap();
        sqlx::Row::try_get(&row, 0).unwrap()
    }

    /// What counts against the member's limits, as the writer records it (issue 31; a
    /// trigger did it before): a message delivered on its own counts once, on the channel
    /// that delivered it, at its delivery time — however often its outcome is recorded; a
    /// digest counts once for all it carried; a `deliver_all` message once per channel.
    async fn each_delivery_counts_once_on_its_channel(store: &Store) {
        for id in ["a", "b", "c1", "c2"] {
            store.insert_message(message(id, "alice")).await.unwrap();
        }
        store
            .insert_message(routed(
                "d",
                "bob",
                "wecom,email",
                true,
                UnixMillis::now() + ms(1000),
            ))
            .await
            .unwrap();
        let delivered = |id: &str, attempts, channel| AttemptUpdate::Delivered {
            id: mid(id),
            attempts,
            channel,
            earlier: None,
            log: None,
        };
        store
            .record_attempt(delivered("a", 1, ChannelName::WeCom))
            .await
            .unwrap();
        // Recorded twice (in one batch or two): counted once, by the first.
        let (first, second) = tokio::join!(
            store.record_attempt(delivered("b", 1, ChannelName::Email)),
            store.record_attempt(delivered("b", 2, ChannelName::WeCom)),
        );
        first.unwrap();
        second.unwrap();
        store
            .record_attempt(delivered("a", 1, ChannelName::WeCom))
            .await
            .unwrap();
        // A digest carrying c1 and c2: one send; c1's own outcome afterwards counts nothing.
        store
            .record_attempt(AttemptUpdate::DigestDelivered {
                digest: Digest {
                    id: "g".into(),
                    userid: uid("alice"),
                    body: "two".into(),
                    carried: vec![mid("c1"), mid("c2")],
                    page_key: "k".into(),
                },
                channel: ChannelName::WeCom,
                sent_at: UnixMillis::from_millis(7),
            })
            .await
            .unwrap();
        store
            .record_attempt(delivered("c1", 1, ChannelName::WeCom))
            .await
            .unwrap();
        // deliver_all: WeCom, then e-mail delivers it last (its step counts, not its end).
        store
            .record_attempt(AttemptUpdate::NextChannel {
                id: mid("d"),
                attempts: 1,
                channel: ChannelName::WeCom,
                delivered: true,
                error: None,
                route: Route::parse("email").unwrap(),
                deadline_at: UnixMillis::now() + ms(1000),
                unconfirmed: false,
            })
            .await
            .unwrap();
        store
            .record_attempt(AttemptUpdate::Delivered {
                id: mid("d"),
                attempts: 2,
                channel: ChannelName::Email,
                earlier: Some("wecom".into()),
                log: Some(ChannelName::Email),
            })
            .await
            .unwrap();
        let rows = sqlx::query(
            "SELECT userid, channel, sent_at FROM sends ORDER BY userid, channel, sent_at",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        let sends: Vec<(String, String, i64)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let at = |id: &'static str| {
            let store = store.clone();
            async move {
                let m = store.message(id).await.unwrap().unwrap();
                m.delivered_at.unwrap().as_millis()
            }
        };
        let (bob, alice): (Vec<_>, Vec<_>) = sends.into_iter().partition(|s| s.0 == "bob");
        let bob: Vec<&str> = bob.iter().map(|s| s.1.as_str()).collect();
        assert_eq!(bob, ["email", "wecom"]);
        // b's send is on the channel of whichever outcome came first.
        let mut times: Vec<i64> = alice.iter().map(|s| s.2).collect();
        times.sort_unstable();
        let mut want = vec![at("a").await, at("b").await, 7];
        want.sort_unstable();
        assert_eq!(times, want, "{alice:?}");
        let wecom = alice.iter().filter(|s| s.1 == "wecom").count();
        assert!((2..=3).contains(&wecom), "{alice:?}");
    }

    on_both_engines!(each_delivery_counts_once_on_its_channel);

    /// The history a lane worker reads (from memory on SQLite) has a send as soon as its
    /// outcome is recorded, and holds the same after a restart, which loads it from the
    /// `sends` table: limits hold across restarts. Pruning forgets it in both.
    #[tokio::test]
    async fn the_send_history_is_there_at_once_and_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.unwrap();
        let since = UnixMillis::now() - ms(60_000);
        for (id, userid) in [("a", "alice"), ("b", "alice"), ("c", "bob")] {
            store.insert_message(message(id, userid)).await.unwrap();
            store
                .record_attempt(AttemptUpdate::Delivered {
                    id: mid(id),
                    attempts: 1,
                    channel: ChannelName::WeCom,
                    earlier: None,
                    log: None,
                })
                .await
                .unwrap();
            // Read right after the outcome is recorded: there already.
            let history = store
                .send_history(&uid(userid), ChannelName::WeCom, since)
                .await
                .unwrap();
            let delivered = store.message(id).await.unwrap().unwrap().delivered_at;
            assert_eq!(history.last().copied(), delivered);
        }
        let read = |store: Store| async move {
            (
                store
                    .send_history(&uid("alice"), ChannelName::WeCom, since)
                    .await
                    .unwrap(),
                store
                    .send_history(&uid("bob"), ChannelName::WeCom, since)
                    .await
                    .unwrap(),
                store
                    .send_history(&uid("alice"), ChannelName::Email, since)
                    .await
                    .unwrap(),
                store
                    .channel_history(ChannelName::WeCom, since)
                    .await
                    .unwrap(),
            )
        };
        let before = read(store.clone()).await;
        assert_eq!((before.0.len(), before.1.len(), before.2.len()), (2, 1, 0));
        assert_eq!(before.3.len(), 3);
        store.close().await;
        let store = Store::connect(&url).await.unwrap();
        assert_eq!(
            read(store.clone()).await,
            before,
            "the same after a restart"
        );
        store.prune_sends(UnixMillis::now() + ms(1)).await.unwrap();
        assert_eq!(count(&store, "SELECT count(*) FROM sends").await, 0);
        let pruned = read(store.clone()).await;
        assert!(pruned.0.is_empty() && pruned.1.is_empty() && pruned.3.is_empty());
        store.close().await;
    }

    /// Pruning forgets the sends before a time, on both engines (on SQLite, without an
    /// index, those recorded before the first one at or after it), and keeps the rest.
    async fn pruning_forgets_sends_before_a_time(store: &Store) {
        for at in [1, 2, 3, 50, 60] {
            sqlx::query("INSERT INTO sends (userid, channel, sent_at) VALUES ('a', 'wecom', $1)")
                .bind(at)
                .execute(&store.pool)
                .await
                .unwrap();
        }
        assert_eq!(
            store.prune_sends(UnixMillis::from_millis(3)).await.unwrap(),
            2
        );
        assert_eq!(
            store.prune_sends(UnixMillis::from_millis(3)).await.unwrap(),
            0
        );
        assert_eq!(
            store
                .prune_sends(UnixMillis::from_millis(55))
                .await
                .unwrap(),
            2
        );
        let left = sqlx::query("SELECT sent_at FROM sends")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        assert_eq!(
            left.iter().map(|r| r.get::<i64, _>(0)).collect::<Vec<_>>(),
            [60]
        );
        assert_eq!(
            store
                .prune_sends(UnixMillis::from_millis(99))
                .await
                .unwrap(),
            1
        );
    }

    on_both_engines!(pruning_forgets_sends_before_a_time);

    #[tokio::test]
    async fn a_message_moves_on_to_its_next_channel_with_its_history() {
        let (store, _dir) = temp_store().await;
        store
            .insert_message(routed(
                "f",
                "alice",
                "wecom,email",
                false,
                UnixMillis::now() + ms(1000),
            ))
            .await
            .unwrap();
        let deadline = UnixMillis::now() + ms(60_000);
        store
            .record_attempt(AttemptUpdate::NextChannel {
                id: mid("f"),
                attempts: 2,
                channel: ChannelName::WeCom,
                delivered: false,
                error: Some("60020".into()),
                route: Route::parse("email").unwrap(),
                deadline_at: deadline,
                unconfirmed: false,
            })
            .await
            .unwrap();
        let m = store.message("f").await.unwrap().unwrap();
        assert_eq!(m.status, MessageStatus::Queued);
        assert_eq!(m.route.to_stored(), "email");
        assert_eq!(m.deadline_at, deadline);
        assert_eq!(m.channel, None, "nothing delivered it yet");
        assert!(m.next_attempt_at <= UnixMillis::now());
        store
            .record_attempt(AttemptUpdate::Delivered {
                id: mid("f"),
                attempts: 3,
                channel: ChannelName::Email,
                earlier: None,
                log: None,
            })
            .await
            .unwrap();
        let m = store.message("f").await.unwrap().unwrap();
        assert_eq!(m.status, MessageStatus::Delivered);
        assert_eq!(m.channel.as_deref(), Some("email"));
        let history = store.attempts_of(&mid("f")).await.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(
            (history[0].channel.as_str(), history[0].outcome.as_str()),
            ("wecom", "failed")
        );
        assert_eq!(history[0].error.as_deref(), Some("60020"));
        // Each channel's sends count on their own: e-mail's do not count against WeCom's
        // member limits.
        assert_eq!(
            count(&store, "SELECT count(*) FROM sends WHERE channel = 'wecom'").await,
            0
        );
        assert_eq!(
            count(&store, "SELECT count(*) FROM sends WHERE channel = 'email'").await,
            1
        );
    }

    /// A `deliver_all` message "a" to WeCom then e-mail, which WeCom has just delivered
    /// (e-mail is next).
    async fn delivered_by_wecom_email_next(store: &Store) {
        store
            .insert_message(routed(
                "a",
                "alice",
                "wecom,email",
                true,
                UnixMillis::now() + ms(1000),
            ))
            .await
            .unwrap();
        store
            .record_attempt(AttemptUpdate::NextChannel {
                id: mid("a"),
                attempts: 1,
                channel: ChannelName::WeCom,
                delivered: true,
                error: None,
                route: Route::parse("email").unwrap(),
                deadline_at: UnixMillis::now() + ms(1000),
                unconfirmed: false,
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn deliver_all_keeps_every_channels_outcome() {
        let (store, _dir) = temp_store().await;
        delivered_by_wecom_email_next(&store).await;
        assert_eq!(
            count(&store, "SELECT count(*) FROM sends").await,
            1,
            "WeCom got it: counted"
        );
        let m = store.message("a").await.unwrap().unwrap();
        assert_eq!(m.channel.as_deref(), Some("wecom"));
        assert!(m.delivered_at.is_some());
        // The last channel fails: the message is still delivered (WeCom delivered it).
        store
            .record_attempt(AttemptUpdate::Failed {
                id: mid("a"),
                attempts: 2,
                channel: ChannelName::Email,
                error: "550".into(),
                unconfirmed: false,
            })
            .await
            .unwrap();
        let m = store.message("a").await.unwrap().unwrap();
        assert_eq!(m.status, MessageStatus::Delivered);
        let outcomes: Vec<(StoredChannel, String)> = store
            .attempts_of(&mid("a"))
            .await
            .unwrap()
            .into_iter()
            .map(|a| (a.channel, a.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                (StoredChannel::Known(ChannelName::WeCom), "delivered".into()),
                (StoredChannel::Known(ChannelName::Email), "failed".into())
            ]
        );
        assert_eq!(
            count(&store, "SELECT count(*) FROM sends").await,
            1,
            "counted once"
        );
    }

    #[tokio::test]
    async fn deliver_all_delivered_on_its_last_channel_lists_every_channel() {
        let (store, _dir) = temp_store().await;
        delivered_by_wecom_email_next(&store).await;
        let m = store.message("a").await.unwrap().unwrap();
        store
            .record_attempt(AttemptUpdate::Delivered {
                id: mid("a"),
                attempts: 2,
                channel: ChannelName::Email,
                earlier: m.channel,
                log: Some(ChannelName::Email),
            })
            .await
            .unwrap();
        let m = store.message("a").await.unwrap().unwrap();
        assert_eq!(m.status, MessageStatus::Delivered);
        assert_eq!(m.channel.as_deref(), Some("wecom,email"));
        let history = store.attempts_of(&mid("a")).await.unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].channel, ChannelName::Email);
        assert_eq!(history[1].outcome, "delivered");
    }

    #[tokio::test]
    async fn a_stored_channel_name_that_no_longer_parses_is_still_shown() {
        let (store, _dir) = temp_store().await;
        store
            .insert_message(routed(
                "a",
                "alice",
                "wecom",
                false,
                UnixMillis::now() + Duration::from_secs(1),
            ))
            .await
            .unwrap();
        for (at, channel) in [(1_i64, "wecom"), (2, "Not a name!")] {
            sqlx::query(
                "INSERT INTO attempts (message_id, at, channel, outcome, error) \
                 VALUES ($1, $2, $3, 'retry', 'x')",
            )
            .bind("a")
            .bind(at)
            .bind(channel)
            .execute(&store.pool)
            .await
            .unwrap();
        }
        let channels: Vec<StoredChannel> = store
            .attempts_of(&mid("a"))
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.channel)
            .collect();
        assert_eq!(
            channels,
            [
                StoredChannel::Known(ChannelName::WeCom),
                StoredChannel::Unknown("Not a name!".to_owned())
            ]
        );
        assert_eq!(channels[1].to_string(), "Not a name!");
    }

    pub(super) async fn lane_due(store: &Store, userid: &str) -> UnixMillis {
        sqlx::query("SELECT due_at FROM lanes WHERE userid = $1")
            .bind(userid)
            .fetch_one(&store.pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap()
    }

    async fn hold_lane(store: &Store, userid: &str) {
        sqlx::query("UPDATE lanes SET owner = 'w', lease_until = $1 WHERE userid = $2")
            .bind(UnixMillis::now() + ms(60_000))
            .bind(userid)
            .execute(&store.pool)
            .await
            .unwrap();
    }

    /// The caller's decision for the tests: on to the rest of the route, else failed.
    fn moves(
        overdue: Vec<OverdueMessage>,
        deadline_at: UnixMillis,
    ) -> Vec<(OverdueMessage, MoveOn)> {
        overdue
            .into_iter()
            .map(|m| {
                let step = match m.route.rest() {
                    Some(route) => MoveOn::Next { route, deadline_at },
                    None => MoveOn::End { failed: true },
                };
                (m, step)
            })
            .collect()
    }

    #[tokio::test]
    async fn overdue_messages_on_a_down_channel_move_as_decided_once() {
        let (store, _dir) = temp_store().await;
        let now = UnixMillis::now();
        let tried_at = now - ms(10);
        for (id, user, route, deadline) in [
            ("only", "a", "wecom", tried_at - ms(5)),
            ("more", "b", "wecom,email", tried_at),
            ("mail", "c", "email", tried_at - ms(5)),
            // Its window ended after the latest failed try started: it waits for a try.
            ("after", "d", "wecom,email", tried_at + ms(1)),
            ("later", "e", "wecom,email", now + ms(60_000)),
            ("held", "f", "wecom", tried_at - ms(5)),
        ] {
            store
                .insert_message(routed(id, user, route, false, deadline))
                .await
                .unwrap();
        }
        // Lane b is due later (it gave itself back until the next probe); f is worked on.
        sqlx::query("UPDATE lanes SET due_at = $1 WHERE userid = 'b'")
            .bind(now + ms(30_000))
            .execute(&store.pool)
            .await
            .unwrap();
        hold_lane(&store, "f").await;
        let overdue = store
            .overdue(ChannelName::WeCom, tried_at, now, 1000)
            .await
            .unwrap();
        let ids: Vec<&str> = overdue.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["only", "more"], "earliest window end first");
        assert!(overdue.iter().all(|m| !m.delivered_before));
        let moves = moves(overdue, now + ms(60_000));
        let done = store
            .move_overdue(ChannelName::WeCom, now, "WeCom unreachable", moves.clone())
            .await
            .unwrap();
        assert_eq!(done.handled, 2);
        assert_eq!(done.failed, 1, "\"only\" failed, \"more\" moved on");
        let only = store.message("only").await.unwrap().unwrap();
        assert_eq!(only.status, MessageStatus::Failed);
        assert_eq!(only.last_error.as_deref(), Some("WeCom unreachable"));
        let more = store.message("more").await.unwrap().unwrap();
        assert_eq!(more.status, MessageStatus::Queued);
        assert_eq!(more.route.to_stored(), "email");
        assert_eq!(more.deadline_at, now + ms(60_000));
        assert!(
            lane_due(&store, "b").await <= now,
            "its lane goes now, on e-mail"
        );
        for (id, route) in [
            ("mail", "email"),
            ("after", "wecom,email"),
            ("later", "wecom,email"),
            ("held", "wecom"),
        ] {
            let m = store.message(id).await.unwrap().unwrap();
            assert_eq!(m.status, MessageStatus::Queued, "{id}");
            assert_eq!(m.route.to_stored(), route, "{id}");
        }
        assert_eq!(store.attempts_of(&mid("more")).await.unwrap().len(), 1);
        // Another pass that read the same messages (another instance) moves nothing again.
        let again = store
            .move_overdue(ChannelName::WeCom, now, "WeCom unreachable", moves)
            .await
            .unwrap();
        assert_eq!(again, Overdue::default());
        assert_eq!(store.attempts_of(&mid("more")).await.unwrap().len(), 1);
        let more = store.message("more").await.unwrap().unwrap();
        assert_eq!(more.route.to_stored(), "email", "moved once, not twice");
    }

    #[tokio::test]
    async fn an_overdue_message_whose_lane_is_taken_after_the_read_is_left_to_its_worker() {
        let (store, _dir) = temp_store().await;
        let now = UnixMillis::now();
        store
            .insert_message(routed("t", "g", "wecom,email", false, now - ms(5)))
            .await
            .unwrap();
        let overdue = store
            .overdue(ChannelName::WeCom, now, now, 1000)
            .await
            .unwrap();
        assert_eq!(overdue.len(), 1);
        hold_lane(&store, "g").await;
        let done = store
            .move_overdue(ChannelName::WeCom, now, "x", moves(overdue, now + ms(1000)))
            .await
            .unwrap();
        assert_eq!(done.handled, 0);
        let t = store.message("t").await.unwrap().unwrap();
        assert_eq!(t.route.to_stored(), "wecom,email");
        assert!(store.attempts_of(&mid("t")).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_next_window_to_end_on_a_channel_comes_with_its_free_lane() {
        let (store, _dir) = temp_store().await;
        let now = UnixMillis::now();
        for (id, user, route, deadline) in [
            ("mail", "m", "email", now + ms(10)),
            ("w1", "a", "wecom,email", now + ms(500)),
            ("w2", "b", "wecom", now + ms(100)),
            ("old", "c", "wecom", now - ms(100)),
        ] {
            store
                .insert_message(routed(id, user, route, false, deadline))
                .await
                .unwrap();
        }
        let due_b = lane_due(&store, "b").await;
        let next = store.next_window(ChannelName::WeCom, now).await.unwrap();
        assert_eq!(
            next,
            Some(NextWindow {
                userid: uid("b"),
                deadline_at: now + ms(100),
                lane_due: Some(due_b),
            })
        );
        hold_lane(&store, "b").await;
        let next = store.next_window(ChannelName::WeCom, now).await.unwrap();
        assert_eq!(next.and_then(|n| n.lane_due), None, "held");
        let next = store
            .next_window(ChannelName::WeCom, now + ms(100))
            .await
            .unwrap();
        assert_eq!(next.map(|n| n.userid), Some(uid("a")));
        assert_eq!(
            store
                .next_window(ChannelName::WeCom, now + ms(500))
                .await
                .unwrap(),
            None
        );
        let mail = store.next_window(ChannelName::Email, now).await.unwrap();
        assert_eq!(mail.map(|n| n.userid), Some(uid("m")));

        // A lane due later is brought forward, once; a held one is not.
        sqlx::query("UPDATE lanes SET due_at = $1 WHERE userid = 'a'")
            .bind(now + ms(30_000))
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(
            store.lane_due_by(&uid("a"), now + ms(500)).await.unwrap(),
            1
        );
        assert_eq!(lane_due(&store, "a").await, now + ms(500));
        assert_eq!(
            store.lane_due_by(&uid("a"), now + ms(600)).await.unwrap(),
            0
        );
        assert_eq!(store.lane_due_by(&uid("b"), now).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn verification_codes_bind_only_when_right_in_time_and_within_their_tries() {
        let (store, _dir) = temp_store().await;
        let alice = uid("alice");
        let address = "alice@example.com".to_owned();
        let email = ChannelName::Email;
        let now = UnixMillis::now();
        let CodeRequest::Created { code } = store
            .request_code(&alice, email, &address, now, ms(600_000), 3)
            .await
            .unwrap()
        else {
            panic!("a first request gets a code");
        };
        assert_eq!(code.len(), 6);
        let wrong = if code == "000000" { "111111" } else { "000000" };
        // Another member cannot use alice's code.
        assert_eq!(
            store.check_code(&uid("mallory"), &code, now).await.unwrap(),
            CodeCheck::NoPending
        );
        for left in (0..5).rev() {
            assert_eq!(
                store.check_code(&alice, wrong, now).await.unwrap(),
                CodeCheck::Wrong {
                    attempts_left: left
                }
            );
        }
        assert_eq!(
            store.check_code(&alice, &code, now).await.unwrap(),
            CodeCheck::Exhausted,
            "five wrong tries kill the code, even for the right one"
        );
        assert_eq!(
            store.member_prefs(&alice).await.unwrap().address(email),
            None
        );
        // A new code, too late.
        let CodeRequest::Created { code } = store
            .request_code(&alice, email, &address, now, ms(600_000), 3)
            .await
            .unwrap()
        else {
            panic!("a second request gets a code");
        };
        assert_eq!(
            store
                .check_code(&alice, &code, now + ms(600_000))
                .await
                .unwrap(),
            CodeCheck::Expired
        );
        assert_eq!(
            store.member_prefs(&alice).await.unwrap().address(email),
            None
        );
        // A third, in time.
        let CodeRequest::Created { code } = store
            .request_code(&alice, email, &address, now, ms(600_000), 3)
            .await
            .unwrap()
        else {
            panic!("a third request gets a code");
        };
        assert_eq!(
            store
                .check_code(&alice, &format!(" {code} "), now)
                .await
                .unwrap(),
            CodeCheck::Bound {
                channel: email,
                address: address.clone()
            }
        );
        assert_eq!(
            store.member_prefs(&alice).await.unwrap().address(email),
            Some(address.as_str())
        );
        assert_eq!(
            store.check_code(&alice, &code, now).await.unwrap(),
            CodeCheck::NoPending,
            "a code binds once"
        );
        // A fourth within the hour is refused, for the member and for the address.
        assert_eq!(
            store
                .request_code(&alice, email, &address, now, ms(600_000), 3)
                .await
                .unwrap(),
            CodeRequest::TooMany
        );
        assert_eq!(
            store
                .request_code(&uid("bob"), email, &address, now, ms(600_000), 3)
                .await
                .unwrap(),
            CodeRequest::TooMany
        );
        assert!(matches!(
            store
                .request_code(&alice, email, &address, now + ms(3_600_001), ms(600_000), 3)
                .await
                .unwrap(),
            CodeRequest::Created { .. }
        ));
        // Codes for another channel have caps of their own.
        assert!(matches!(
            store
                .request_code(
                    &alice,
                    ChannelName::Sms,
                    "+8613800138000",
                    now,
                    ms(600_000),
                    3
                )
                .await
                .unwrap(),
            CodeRequest::Created { .. }
        ));
        assert!(store.unbind(&alice, email).await.unwrap());
        assert_eq!(
            store.member_prefs(&alice).await.unwrap().address(email),
            None
        );
        let order = Route::parse("email,wecom").unwrap();
        store.set_channels(&alice, Some(&order)).await.unwrap();
        assert_eq!(
            store.member_prefs(&alice).await.unwrap().channels,
            Some(order)
        );
    }

    /// Quiet hours and the offset are kept as set, read with the other preferences and
    /// by the lane's own read, and cleared back to the server's default.
    #[tokio::test]
    async fn quiet_hours_and_the_offset_are_kept_per_member() {
        use crate::delivery::quiet::QuietSetting;
        let (store, _dir) = temp_store().await;
        let alice = UserId::new("alice");
        let nobody = UserId::new("nobody");
        assert_eq!(
            store.member_quiet(&nobody).await.unwrap(),
            MemberQuiet::default()
        );
        let strict: QuietSetting = "23:00-07:00 strict".parse().unwrap();
        store.set_quiet(&alice, Some(strict)).await.unwrap();
        store
            .set_utc_offset(&alice, Some(-5 * 3600 - 1800))
            .await
            .unwrap();
        let prefs = store.member_prefs(&alice).await.unwrap();
        assert_eq!(
            (prefs.quiet, prefs.utc_offset),
            (Some(strict), Some(-19_800))
        );
        let want = MemberQuiet {
            quiet: Some(strict),
            utc_offset: Some(-19_800),
        };
        assert_eq!(store.member_quiet(&alice).await.unwrap(), want);
        // Not from the cache alone: what is stored reads the same.
        store.prefs_changed(&alice);
        assert_eq!(store.member_quiet(&alice).await.unwrap(), want);
        store
            .set_quiet(&alice, Some(QuietSetting::Off))
            .await
            .unwrap();
        assert_eq!(
            store.member_quiet(&alice).await.unwrap().quiet,
            Some(QuietSetting::Off)
        );
        store.set_quiet(&alice, None).await.unwrap();
        store.set_utc_offset(&alice, None).await.unwrap();
        assert_eq!(
            store.member_quiet(&alice).await.unwrap(),
            MemberQuiet::default()
        );
        let prefs = store.member_prefs(&alice).await.unwrap();
        assert_eq!((prefs.quiet, prefs.utc_offset), (None, None));
        // A value written by hand that cannot be read is the server's default, not an
        // error that would stop the member's messages.
        sqlx::query("UPDATE members SET quiet = 'later', utc_offset = 99999999 WHERE userid = $1")
            .bind("alice")
            .execute(&store.pool)
            .await
            .unwrap();
        store.prefs_changed(&alice);
        assert_eq!(
            store.member_quiet(&alice).await.unwrap(),
            MemberQuiet::default()
        );
    }

    #[tokio::test]
    async fn charges_hold_the_daily_caps_and_remember_texts_that_may_have_gone() {
        let (store, _dir) = temp_store().await;
        let sms = ChannelName::Sms;
        let day = Duration::from_secs(24 * 3600);
        let now = UnixMillis::now();
        let charge = |who: &'static str, out: &'static str, at: UnixMillis| {
            let store = store.clone();
            async move {
                store
                    .charge(sms, &uid(who), out, at, day, 2, 3)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(charge("alice", "m1", now).await, Ok(()));
        assert_eq!(charge("alice", "m2", now).await, Ok(()));
        assert_eq!(charge("alice", "m3", now).await, Err(ChargeCap::Member));
        assert_eq!(
            store.unsettled_charge(sms, "m3").await.unwrap(),
            None,
            "a refused charge is not kept"
        );
        assert_eq!(charge("bob", "m4", now).await, Ok(()));
        assert_eq!(charge("carol", "m5", now).await, Err(ChargeCap::Server));
        // A text that may have gone stays unsettled until it is known.
        assert_eq!(store.unsettled_charge(sms, "m1").await.unwrap(), Some(now));
        store.settle_charge(sms, "m1").await.unwrap();
        assert_eq!(store.unsettled_charge(sms, "m1").await.unwrap(), None);
        store.refund(sms, "m1").await.unwrap();
        assert_eq!(
            charge("alice", "m7", now).await,
            Err(ChargeCap::Member),
            "a settled charge is not refunded: it was billed"
        );
        store.refund(sms, "m2").await.unwrap();
        assert_eq!(charge("alice", "m8", now).await, Ok(()), "m2 was refunded");
        assert_eq!(charge("carol", "m9", now).await, Err(ChargeCap::Server));
        // A day later the caps are free again, and the old charges can go.
        assert_eq!(charge("carol", "m6", now + day + ms(1)).await, Ok(()));
        assert_eq!(
            store.prune_charges(now + day + ms(1)).await.unwrap(),
            3,
            "m1, m4 and m8"
        );
    }
}
