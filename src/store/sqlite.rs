//! The embedded engine: one SQLite file in WAL mode.
//!
//! Reads go through a small sqlx pool; writes through the group-commit writer's own
//! rusqlite connection ([`SqliteBackend`]), and a thread of its own copies the WAL back
//! into the database file ([`checkpointer`]).

use std::cell::Cell;
use std::ffi::c_int;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, params_from_iter};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, ConnectOptions, Connection as _, Executor};

use super::readers::Readers;
use super::writer::{Backend, Dialect, Value};
use super::{Engine, OPEN_TIMEOUT, Opened, StoreError};

/// SQLite waits this long for a lock held by another connection before failing a statement.
pub(super) const BUSY_TIMEOUT_MS: u32 = 5000;
/// WAL pages after which the writer checkpoints by itself: only when the checkpointer
/// thread has fallen behind (about 64 MiB of WAL).
const WAL_AUTOCHECKPOINT_PAGES: u32 = 16_384;
/// How often the checkpointer copies committed pages from the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(1000);

/// Opens (creating if needed) the database file, applies migrations, and prepares the
/// writer's backend and the checkpointer.
///
/// A database that cannot be opened fails at once with one error naming the path and
/// the real cause (missing or read-only directory, not a database file, …).
pub(super) async fn open(
    url: &str,
    pool_size: u32,
    measure_wal: bool,
) -> Result<Opened, StoreError> {
    let path = sqlite_path(url);
    // The writer opens the file by itself; an in-memory database would be a different,
    // empty one on each connection (and lose every message at exit).
    let Some(db_file) = path.clone() else {
        return Err(StoreError::Open {
            target: url.to_owned(),
            reason:
                "pushbot needs a database file (storage.url = \"sqlite://path/to/pushbot.db\"); \
                     an in-memory database would lose every queued message"
                    .into(),
            source: None,
        });
    };
    preflight(&db_file)?;
    warn_if_exposed(&db_file);
    // The file is created here, private, and never by SQLite (which would make it 0644
    // less the umask; its -wal and -shm copy the database's mode). No connection creates
    // it: after the file was deleted one would silently start an empty database at the
    // same path; failing is the truthful answer.
    create_private(&db_file).map_err(|e| StoreError::Open {
        target: db_file.display().to_string(),
        reason: "cannot create the database file".to_owned(),
        source: Some(Box::new(e)),
    })?;
    let options: AnyConnectOptions = sqlite_url_with_mode(url, "rw")
        .parse::<AnyConnectOptions>()?
        .disable_statement_logging();
    // One connection first, so that an error surfaces at once with its cause (a pool
    // retries failing connects until its timeout, logging each attempt).
    let opened = tokio::time::timeout(OPEN_TIMEOUT, async {
        let mut conn = AnyConnection::connect_with(&options).await?;
        configure(&mut conn).await?;
        conn.close().await
    })
    .await;
    let open_error =
        |reason: &str, source: Option<Box<dyn std::error::Error + Send + Sync>>| StoreError::Open {
            target: db_file.display().to_string(),
            reason: reason.to_owned(),
            source,
        };
    match opened {
        Err(_) => return Err(open_error("timed out opening the database", None)),
        Ok(Err(err)) => {
            let reason = match &err {
                sqlx::Error::Database(db) if db.code().as_deref() == Some("26") => {
                    "the file exists but is not a SQLite database"
                }
                _ => "SQLite could not open it",
            };
            return Err(open_error(reason, Some(Box::new(err))));
        }
        Ok(Ok(())) => {}
    }
    let pool = AnyPoolOptions::new()
        .max_connections(pool_size)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        // A ping before each use is a round trip to SQLite's thread that learns
        // nothing about a local file; a broken connection fails its query anyway.
        .test_before_acquire(false)
        .after_connect(|conn, _meta| Box::pin(configure(conn)))
        // A connection must never go back to the pool inside a transaction: a later
        // `begin()` on it would only open a savepoint that never commits.
        .after_release(|conn, _meta| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
        // Recycle connections now and then: one opened while the files were unwritable
        // (an immutable -wal, a read-only remount) stays read-only until closed.
        .idle_timeout(Duration::from_secs(60))
        .max_lifetime(Duration::from_secs(30 * 60))
        .connect_with(options.clone())
        .await?;
    let readers = Readers::new(options, Engine::Sqlite, pool_size);
    sqlx::migrate!("./src/store/migrations/sqlite")
        .run(&pool)
        .await?;
    let file = FileIdentity::of(&db_file);
    let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
    let checkpoints = db_file.clone();
    let spawned = std::thread::Builder::new()
        .name("pushbot-checkpoint".into())
        .spawn(move || checkpointer(&checkpoints, &stopped));
    if let Err(err) = spawned {
        // The writer then checkpoints by itself (WAL_AUTOCHECKPOINT_PAGES).
        tracing::warn!(error = %err, "cannot start the WAL checkpoint thread");
    }
    let wal = measure_wal.then(Arc::<WalCount>::default);
    let backend = SqliteBackend {
        path: db_file,
        conn: None,
        file: file.clone(),
        next_seq: None,
        pending_seq: None,
        stop_checkpoints: Some(stop_checkpoints),
        wal: wal.clone(),
    };
    Ok(Opened {
        pool,
        readers,
        backend: Box::new(backend),
        file,
        wal,
        mark: None,
    })
}

/// The writer's side of SQLite.
pub(super) struct SqliteBackend {
    /// The database file. The writer opens it itself (read-write, never creating it): a
    /// connection opened while the files were unwritable could stay read-only for good,
    /// and one that created a fresh file after the real one was deleted would lie.
    path: PathBuf,
    /// The writer's own connection; `None` after an error until the next batch opens one.
    conn: Option<Connection>,
    /// The database file as opened, to notice it being deleted or replaced.
    file: Option<FileIdentity>,
    /// The next acceptance number (read from the database with each new connection: this
    /// process is the file's only writer).
    next_seq: Option<i64>,
    /// `next_seq` once the open transaction commits.
    pending_seq: Option<i64>,
    /// Dropped when the writer stops, which stops the checkpointer.
    stop_checkpoints: Option<std::sync::mpsc::Sender<()>>,
    /// Where the writer's WAL frames are counted, when they are ([`WalCount`]).
    wal: Option<Arc<WalCount>>,
}

/// What the writer's commits wrote to the WAL, as SQLite reports it after each commit
/// (its WAL hook): for the benchmark, which asks for it (`Store::connect_measuring_wal`).
/// Off by default: the hook replaces SQLite's own automatic checkpoint, which the
/// counting hook then does itself ([`count_wal_frames`]).
#[derive(Debug, Default)]
pub(super) struct WalCount {
    /// Frames (one page each, plus a 24-byte header) written by committed transactions.
    pub(super) frames: AtomicU64,
    /// The database's page size.
    pub(super) page_size: AtomicU64,
}

thread_local! {
    /// On the writer's thread, where its commits (and so its WAL hook) run: the WAL's
    /// length in frames after the last commit, and the frames counted so far.
    static WAL_FRAMES: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Frames a commit wrote, from the WAL's length before (`last`) and after it (`now`), in
/// frames. A WAL that is not longer than before was restarted from its beginning (after
/// a complete checkpoint) by this commit, which wrote all of it. (A restart whose first
/// commit is longer than the whole WAL before it is counted short by that length: never
/// under load, where the WAL holds a second of commits between checkpoints.)
fn frames_written(last: u64, now: u64) -> u64 {
    if now > last { now - last } else { now }
}

/// The writer connection's WAL hook while its frames are counted (see [`WalCount`]):
/// counts the frames of each commit on this thread, and checkpoints (PASSIVE) once the
/// WAL holds [`WAL_AUTOCHECKPOINT_PAGES`], as SQLite's own hook, which this one replaces,
/// does.
fn count_wal_frames(wal: &rusqlite::hooks::Wal, pages: c_int) -> rusqlite::Result<()> {
    let pages = u64::try_from(pages).unwrap_or(0);
    WAL_FRAMES.with(|count| {
        let (last, total) = count.get();
        count.set((pages, total.saturating_add(frames_written(last, pages))));
    });
    if pages >= u64::from(WAL_AUTOCHECKPOINT_PAGES) {
        // As SQLite's own: a checkpoint that cannot finish now is tried at a later commit.
        let _ = wal.checkpoint();
    }
    Ok(())
}

impl SqliteBackend {
    fn conn(&self) -> Result<&Connection, StoreError> {
        self.conn.as_ref().ok_or(StoreError::WriterGone)
    }
}

impl ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Self::Int(v) => v.to_sql(),
            Self::Text(Some(text)) => Ok(ToSqlOutput::from(text.as_ref())),
            Self::Text(None) => Ok(ToSqlOutput::from(rusqlite::types::Null)),
            // The writer binds arrays only in PostgreSQL's statements.
            Self::Ints(_) | Self::Texts(_) => Err(rusqlite::Error::ToSqlConversionFailure(
                "SQLite has no array parameters".into(),
            )),
        }
    }
}

impl Backend for SqliteBackend {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        if self.conn.is_none() {
            let conn = open_writer(&self.path)?;
            if let Some(wal) = &self.wal {
                let page_size: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
                wal.page_size
                    .store(u64::try_from(page_size).unwrap_or(0), Ordering::Relaxed);
                conn.wal_hook(Some(count_wal_frames));
            }
            self.conn = Some(conn);
        }
        // IMMEDIATE takes the write lock now, so a busy database fails here, before any
        // statement ran, rather than half-way through.
        self.conn()?
            .prepare_cached("BEGIN IMMEDIATE")?
            .execute([])?;
        Ok(())
    }

    fn commit(&mut self, _more: bool) -> Result<(), StoreError> {
        let conn = self.conn()?;
        conn.prepare_cached("COMMIT")?.execute([])?;
        // A COMMIT that "succeeded" while SQLite still holds a transaction would mean the
        // rows are not durable; refuse to believe it.
        if !conn.is_autocommit() {
            return Err(StoreError::Corrupt(
                "COMMIT returned but a transaction is still open".into(),
            ));
        }
        if let Some(next) = self.pending_seq.take() {
            self.next_seq = Some(next);
        }
        if let Some(wal) = &self.wal {
            let (_, total) = WAL_FRAMES.with(Cell::get);
            wal.frames.store(total, Ordering::Relaxed);
        }
        Ok(())
    }

    fn discard(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Best effort; closing the connection ends the transaction regardless.
            let _ = conn.execute_batch("ROLLBACK");
            let _ = conn.close();
        }
        // Numbers handed out in the failed transaction are not reused (gaps are
        // harmless); the high mark is read again with the next connection.
        self.next_seq = None;
        self.pending_seq = None;
    }

    fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close();
        }
        self.stop_checkpoints = None;
    }

    fn exec(&mut self, sql: &str, args: &[Value<'_>]) -> Result<u64, StoreError> {
        let changed = self
            .conn()?
            .prepare_cached(sql)?
            .execute(params_from_iter(args.iter()))?;
        Ok(u64::try_from(changed).unwrap_or(u64::MAX))
    }

    fn rows(
        &mut self,
        sql: &str,
        args: &[Value<'_>],
    ) -> Result<Vec<Vec<Value<'static>>>, StoreError> {
        let mut stmt = self.conn()?.prepare_cached(sql)?;
        let width = stmt.column_count();
        let rows = stmt.query_map(params_from_iter(args.iter()), |row| {
            (0..width)
                .map(|i| {
                    Ok(match row.get_ref(i)? {
                        ValueRef::Integer(v) => Value::Int(Some(v)),
                        ValueRef::Null => Value::Text(None),
                        other => Value::from(other.as_str()?.to_owned()),
                    })
                })
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn seqs(&mut self, n: usize) -> Result<Vec<i64>, StoreError> {
        // A second call in the same transaction goes on from the first's numbers (none
        // makes one today; one that did would otherwise give two messages one number).
        let first = match self.pending_seq.or(self.next_seq) {
            Some(seq) => seq,
            None => {
                self.conn()?
                    .query_row("SELECT COALESCE(MAX(seq), 0) FROM messages", [], |row| {
                        row.get::<_, i64>(0)
                    })?
                    + 1
            }
        };
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.pending_seq = Some(first.saturating_add(n));
        Ok((first..first.saturating_add(n)).collect())
    }

    /// A commit into a database file that was deleted (or replaced) while we had it open
    /// is not durable in any useful sense: the next start opens a different file.
    fn check_durable(&self) -> Result<(), StoreError> {
        match &self.file {
            Some(file) if !file.still_there() => Err(StoreError::FileReplaced(file.path.clone())),
            _ => Ok(()),
        }
    }

    /// A unique-index violation on an insert is a repeated idempotency key (the message
    /// id is a fresh UUID).
    fn is_duplicate_key(&self, err: &StoreError) -> bool {
        matches!(
            err,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(code, Some(message)))
                if code.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    && message.contains("idempotency_key")
        )
    }
}

/// Copies committed pages from the WAL into the database file every [`CHECKPOINT_EVERY`]
/// until the writer stops. On the writer's thread a checkpoint (thousands of pages and an
/// fsync) held up every `/send` waiting for the next commit: measured, the load
/// benchmark's p99 fell from 11.6 ms to 6–7 ms without them. A PASSIVE checkpoint never
/// waits for the writer or for readers; the writer restarts the WAL from its beginning once
/// everything in it has been copied, so the file stays small.
fn checkpointer(path: &Path, stop: &std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut conn: Option<Connection> = None;
    let mut failing = false;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        // A panic (a bug) costs one pass: the WAL grows a little meanwhile.
        crate::supervise::contain("the WAL checkpointer", || {
            let result = match conn.take() {
                Some(c) => Ok(c),
                None => open_writer(path),
            }
            .and_then(|c| {
                c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
                Ok(c)
            });
            match result {
                Ok(c) => {
                    conn = Some(c);
                    if failing {
                        tracing::info!("WAL checkpoints work again");
                        failing = false;
                    }
                }
                // The writer reports failing writes; this only says why the WAL may grow.
                Err(err) => {
                    if !failing {
                        tracing::warn!(error = %crate::error::chain(&err), "WAL checkpoint failed; retrying (the write-ahead log grows meanwhile)");
                        failing = true;
                    }
                }
            }
        });
    }
}

/// Opens the writer's connection: read-write but never creating the file, with the same
/// durability settings as every other connection.
fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_millis(u64::from(BUSY_TIMEOUT_MS)))?;
    // journal_mode answers with a row (the mode now in force).
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode = %mode, "the database did not switch to WAL mode");
    }
    // temp_store = MEMORY keeps statement journals (a multi-row statement's undo log,
    // discarded at its end) in memory: on disk each one over 64 KiB was a file created
    // and unlinked per statement. Checkpoints are the checkpointer thread's job.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY; \
         PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};"
    ))?;
    // Every statement shape the writer uses stays prepared (a few dozen: the multi-row
    // statements come in power-of-two sizes).
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// The database file as opened (device and inode), to notice it being deleted or replaced
/// while the process runs: SQLite keeps writing to the unlinked file, and everything
/// written is gone at the next start.
#[derive(Debug, Clone)]
pub(crate) struct FileIdentity {
    pub(super) path: PathBuf,
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    pub(super) fn still_there(&self) -> bool {
        Self::of(&self.path).is_some_and(|now| now.dev == self.dev && now.ino == self.ino)
    }
}

/// Per-connection settings. WAL lets readers run beside the writer; synchronous=FULL makes
/// every commit durable against power loss, not just process death (group commit pays for
/// it once per batch).
pub(super) async fn configure(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute("PRAGMA journal_mode = WAL").await?;
    conn.execute("PRAGMA synchronous = FULL").await?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}"
    )))
    .await?;
    conn.execute("PRAGMA foreign_keys = ON").await?;
    Ok(())
}

/// The file behind a `sqlite:` URL, or `None` for an in-memory database (or another
/// engine). Accepts `sqlite://path`, `sqlite:path` and `sqlite:///abs/path`, with or
/// without `?options`.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path == ":memory:" || url.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

/// Checks what SQLite reports only as "unable to open database file", so that start-up can
/// name the real cause: the directory is missing or not writable (WAL mode creates
/// `-wal` and `-shm` files beside the database), or the file is not a database.
fn preflight(path: &Path) -> Result<(), StoreError> {
    let fail = |reason: String, source: Option<std::io::Error>| StoreError::Open {
        target: path.display().to_string(),
        reason,
        source: source.map(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(fail(format!("{} is not a directory", dir.display()), None)),
        Err(e) => {
            return Err(fail(
                format!("its directory {} is not accessible", dir.display()),
                Some(e),
            ));
        }
    }
    let probe = dir.join(format!(".pushbot-write-test-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
        }
        Err(e) => {
            return Err(fail(
                format!(
                    "cannot create files in {} (SQLite needs the directory writable for its \
                     -wal and -shm files)",
                    dir.display()
                ),
                Some(e),
            ));
        }
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(fail("it is a directory".to_owned(), None));
        }
        Ok(_) => {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| fail("the file cannot be opened for writing".to_owned(), Some(e)))?;
            let mut header = [0u8; 16];
            let n = file
                .read(&mut header)
                .map_err(|e| fail("the file cannot be read".to_owned(), Some(e)))?;
            if n > 0 && header[..n] != b"SQLite format 3\0"[..n] {
                return Err(fail(
                    "the file exists but is not a SQLite database".to_owned(),
                    None,
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("the file is not accessible".to_owned(), Some(e))),
    }
    Ok(())
}

/// Permission bits no database file may have: nobody but the user pushbot runs as may read
/// or write them (they hold every member's push token and every page key).
const NOT_PRIVATE: u32 = 0o077;

/// Creates `path` empty (an empty file is an empty SQLite database) with mode 0600, unless
/// it exists. The mode is set on the open file, so no umask
/// (not even one that takes the owner's write bit) changes it. SQLite creates the `-wal`
/// and `-shm` files with the database file's mode (it copies it, and fixes up what the
/// umask took away), so they are private too, without touching the process umask.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file.set_permissions(std::fs::Permissions::from_mode(0o600)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The database's files (the database, `-wal`, `-shm`, `-journal`) that exist and that
/// other users may read or write, with their permission bits. A file an older pushbot,
/// a restore or a copy made with looser permissions stays so: pushbot does not change
/// modes it did not set (see [`warn_if_exposed`]).
pub fn exposed_files(db: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt as _;
    ["", "-wal", "-shm", "-journal"]
        .into_iter()
        .filter_map(|suffix| {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            let path = PathBuf::from(name);
            let mode = std::fs::metadata(&path).ok()?.permissions().mode() & 0o777;
            (mode & NOT_PRIVATE != 0).then_some((path, mode))
        })
        .collect()
}

/// `chmod 600 FILE…` for [`exposed_files`], paths quoted for a POSIX shell when needed.
pub fn chmod_command(files: &[(PathBuf, u32)]) -> String {
    let mut command = "chmod 600".to_owned();
    for (path, _) in files {
        let text = path.display().to_string();
        command.push(' ');
        if !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@%".contains(&b))
        {
            command.push_str(&text);
        } else {
            command.push('\'');
            command.push_str(&text.replace('\'', r"'\''"));
            command.push('\'');
        }
    }
    command
}

/// Says at start-up (WARN) which database files other users can read, and the command
/// that fixes it. Only says: the mode of a file pushbot did not create is someone's choice
/// (a backup job reading it through its group, say), and changing it behind their back
/// would break that silently; `pushbot doctor` says the same.
fn warn_if_exposed(db: &Path) {
    let exposed = exposed_files(db);
    if exposed.is_empty() {
        return;
    }
    let files: Vec<String> = exposed
        .iter()
        .map(|(path, mode)| format!("{} ({mode:04o})", path.display()))
        .collect();
    tracing::warn!(
        files = %files.join(", "),
        fix = %chmod_command(&exposed),
        "the database files can be read by other users of this machine, and they hold every member's push token and every page key: run the command in `fix`"
    );
}

/// The URL with SQLite's open `mode` (`rwc` creates the file, `rw` does not), unless the
/// URL sets one itself or is an in-memory database.
fn sqlite_url_with_mode(url: &str, mode: &str) -> String {
    if url.starts_with("sqlite:") && !url.contains("mode=") && !url.contains(":memory:") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}mode={mode}")
    } else {
        url.to_owned()
    }
}

/// A writer backend on `path` without the checkpointer (tests drive the writer directly).
#[cfg(test)]
pub(super) fn backend(path: &Path) -> SqliteBackend {
    SqliteBackend {
        path: path.to_owned(),
        conn: None,
        file: None,
        next_seq: None,
        pending_seq: None,
        stop_checkpoints: None,
        wal: None,
    }
}

/// [`backend`] that also notices its file being deleted or replaced, as `open` sets it up.
#[cfg(test)]
pub(super) fn backend_watching(path: &Path) -> SqliteBackend {
    SqliteBackend {
        file: FileIdentity::of(path),
        ..backend(path)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::domain::{MessageId, UserId};
    use crate::store::{Message, Store};
    use crate::time::UnixMillis;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The channel-binding migration (0008) keeps what members had bound, the codes they
    /// were waiting on and the WeCom send history.
    /// A one-connection pool on a new database file at `path` with the migrations before
    /// `version` applied: the database as an older pushbot left it.
    async fn migrated_before(path: &std::path::Path, version: i64) -> sqlx::SqlitePool {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .unwrap();
        let mut migrator = sqlx::migrate!("./src/store/migrations/sqlite");
        migrator.migrations.to_mut().retain(|m| m.version < version);
        migrator.run(&pool).await.unwrap();
        pool
    }

    #[tokio::test]
    async fn migrating_to_bindings_keeps_addresses_codes_and_history() {
        use sqlx::Row as _;
        let dir = tempfile::tempdir().unwrap();
        let pool = migrated_before(&dir.path().join("m.db"), 8).await;
        for sql in [
            "INSERT INTO members (userid, token, created_at, token_created_at, email) \
             VALUES ('alice', 'ta', 5, 5, 'alice@example.com'), ('bob', 'tb', 6, 6, NULL)",
            "INSERT INTO email_codes (userid, address, code, expires_at, attempts_left) \
             VALUES ('bob', 'bob@example.com', '123456', 99, 4)",
            "INSERT INTO email_requests (userid, address, requested_at) \
             VALUES ('bob', 'bob@example.com', 7)",
            "INSERT INTO sends (userid, sent_at) VALUES ('alice', 8)",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
        }
        sqlx::migrate!("./src/store/migrations/sqlite")
            .run(&pool)
            .await
            .unwrap();
        let rows = |sql: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query(sql)
                    .fetch_all(&pool)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| {
                                r.try_get::<String, _>(i)
                                    .or_else(|_| r.try_get::<i64, _>(i).map(|n| n.to_string()))
                                    .unwrap()
                            })
                            .collect::<Vec<_>>()
                            .join("|")
                    })
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            rows("SELECT userid, channel, address, verified_at FROM member_bindings").await,
            ["alice|email|alice@example.com|5"]
        );
        assert_eq!(
            rows("SELECT userid, channel, address, code, expires_at, attempts_left FROM binding_codes")
                .await,
            ["bob|email|bob@example.com|123456|99|4"]
        );
        assert_eq!(
            rows("SELECT userid, channel, address, requested_at FROM binding_requests").await,
            ["bob|email|bob@example.com|7"]
        );
        assert_eq!(
            rows("SELECT userid, channel, sent_at FROM sends").await,
            ["alice|wecom|8"]
        );
    }

    /// Two calls for acceptance numbers in one transaction never hand out a number twice.
    #[test]
    fn acceptance_numbers_in_one_transaction_never_repeat() {
        use crate::store::writer::Backend as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.db");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            Store::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap()
                .close()
                .await;
        });
        let mut db = backend(&path);
        db.begin().unwrap();
        let first = db.seqs(3).unwrap();
        let second = db.seqs(2).unwrap();
        db.commit(false).unwrap();
        db.begin().unwrap();
        let third = db.seqs(1).unwrap();
        db.commit(false).unwrap();
        db.close();
        assert_eq!([first, second, third].concat(), [1, 2, 3, 4, 5, 6]);
    }

    /// The schedule migration (0011) keeps messages and members as they were, and the
    /// earliest scheduled message is found through its index, not by a scan.
    #[tokio::test]
    async fn migrating_to_schedules_keeps_messages_and_indexes_the_schedule() {
        use sqlx::Row as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let pool = migrated_before(&path, 11).await;
        for sql in [
            "INSERT INTO messages (id, userid, title, status, created_at, updated_at, \
             next_attempt_at, deadline_at, seq) VALUES ('m1', 'alice', 'kept', 'queued', 5, 5, 5, 9, 1)",
            "INSERT INTO members (userid, token, created_at, token_created_at) \
             VALUES ('alice', 'ta', 5, 5)",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
        let store = Store::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        crate::store::schedule::tests::assert_after_schedule_migration(&store).await;
        store.close().await;
        let pool = migrated_before(&path, i64::MAX).await;
        for sql in [
            "EXPLAIN QUERY PLAN SELECT MIN(deliver_at) FROM messages WHERE status = 'scheduled'",
            "EXPLAIN QUERY PLAN SELECT id, userid FROM messages WHERE status = 'scheduled' \
             AND deliver_at <= 5 ORDER BY deliver_at, seq LIMIT 64",
        ] {
            let plan: Vec<String> = sqlx::query(sql)
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>("detail"))
                .collect();
            let plan = plan.join("; ");
            assert!(plan.contains("messages_scheduled"), "{sql}: {plan}");
            assert!(
                !plan.contains("TEMP B-TREE"),
                "{sql}: sorted instead: {plan}"
            );
        }
    }

    /// The console migration (0012) keeps messages (resent from nothing) and adds the
    /// console's tables.
    #[tokio::test]
    async fn migrating_to_the_console_keeps_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let pool = migrated_before(&path, 12).await;
        sqlx::query(
            "INSERT INTO messages (id, userid, title, status, created_at, updated_at, \
             next_attempt_at, deadline_at, seq) VALUES ('m1', 'alice', 'kept', 'failed', 5, 5, 5, 9, 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let store = Store::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let m = store.message("m1").await.unwrap().unwrap();
        assert_eq!(m.title.as_deref(), Some("kept"));
        assert_eq!(m.resent_from, None);
        let alice = UserId::new("alice");
        assert!(store.resends_of(&alice, &m.id).await.unwrap().is_empty());
        let token = store
            .create_console_login(&alice, UnixMillis::now(), ms(60_000))
            .await
            .unwrap();
        assert!(matches!(
            store.use_console_login(&token, UnixMillis::now()).await,
            Ok(crate::store::LoginUse::LoggedIn(_))
        ));
        store.close().await;
    }

    /// The media migration (0009) applies to a database that holds messages, which stay,
    /// and the store then keeps files for them.
    #[tokio::test]
    async fn migrating_to_media_keeps_messages_and_stores_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let pool = migrated_before(&path, 9).await;
        sqlx::query(
            "INSERT INTO messages (id, userid, title, status, created_at, updated_at, \
             next_attempt_at, deadline_at, seq) VALUES ('m1', 'alice', 'kept', 'queued', 5, 5, 5, 9, 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let store = Store::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        crate::store::media::tests::assert_media_after_migration(&store).await;
        store.close().await;
    }

    #[test]
    fn sqlite_url_gets_an_open_mode() {
        assert_eq!(
            sqlite_url_with_mode("sqlite://pushbot.db", "rwc"),
            "sqlite://pushbot.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url_with_mode("sqlite://pushbot.db?cache=shared", "rw"),
            "sqlite://pushbot.db?cache=shared&mode=rw"
        );
        assert_eq!(
            sqlite_url_with_mode("sqlite://x.db?mode=ro", "rw"),
            "sqlite://x.db?mode=ro"
        );
    }

    #[test]
    fn a_commit_wrote_what_the_wal_grew_by_or_all_of_a_restarted_wal() {
        assert_eq!(frames_written(0, 5), 5);
        assert_eq!(frames_written(100, 130), 30);
        // Restarted from its beginning by this commit.
        assert_eq!(frames_written(100, 12), 12);
        assert_eq!(frames_written(100, 100), 100);
    }

    /// The benchmark's count of WAL frames matches the WAL file: with no checkpoint in
    /// between, the file holds a 32-byte header and every frame written.
    #[tokio::test]
    async fn the_writers_wal_frames_are_counted_when_asked() {
        use crate::store::writer::Backend as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let url = format!("sqlite://{}", path.display());
        let store = crate::store::Store::connect(&url).await.unwrap();
        assert_eq!(
            store.write_stats().wal_frames,
            None,
            "not counted unless asked"
        );
        store.close().await;
        let wal_file = dir.path().join("w.db-wal");
        assert!(!wal_file.exists(), "the last connection removed the WAL");
        // The writer's backend without the checkpointer: the WAL only grows.
        let wal = Arc::new(WalCount::default());
        let mut db = SqliteBackend {
            wal: Some(Arc::clone(&wal)),
            ..backend(&path)
        };
        for i in 0..20 {
            db.begin().unwrap();
            db.exec(
                "INSERT INTO sends (userid, channel, sent_at) VALUES (?1, 'wecom', ?2)",
                &[format!("member{i}").into(), i64::from(i).into()],
            )
            .unwrap();
            db.commit(false).unwrap();
        }
        let frames = wal.frames.load(Ordering::Relaxed);
        assert_eq!(wal.page_size.load(Ordering::Relaxed), 4096);
        assert!(frames >= 20, "{frames} frames for 20 commits");
        let size = std::fs::metadata(&wal_file).unwrap().len();
        assert_eq!(size, 32 + frames * (4096 + 24));
        db.close();
    }

    #[test]
    fn the_writers_connection_is_durable_and_keeps_statement_journals_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        // The writer never creates the file (see `Store::connect`).
        assert!(open_writer(&path).is_err());
        Connection::open(&path).unwrap();
        let conn = open_writer(&path).unwrap();
        let pragma = |name: &str| -> String {
            conn.query_row(&format!("PRAGMA {name}"), [], |row| {
                row.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| match v {
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(t) => t,
                other => format!("{other:?}"),
            })
            .unwrap()
        };
        assert_eq!(pragma("journal_mode"), "wal");
        assert_eq!(
            pragma("synchronous"),
            "2",
            "FULL: a commit survives power loss"
        );
        assert_eq!(pragma("foreign_keys"), "1");
        assert_eq!(pragma("temp_store"), "2", "MEMORY");
        assert_eq!(
            pragma("wal_autocheckpoint"),
            WAL_AUTOCHECKPOINT_PAGES.to_string()
        );
        assert_eq!(pragma("busy_timeout"), BUSY_TIMEOUT_MS.to_string());
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn a_new_database_and_its_wal_and_shm_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let store = Store::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        store.token_for(&UserId::new("alice")).await.unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        assert!(exposed_files(&path).is_empty());
        store.close().await;
    }

    #[test]
    fn files_other_users_can_read_are_named_with_the_command_that_fixes_them() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("my data").join("x.db");
        std::fs::create_dir(db.parent().unwrap()).unwrap();
        let set = |suffix: &str, mode: u32| {
            let file = PathBuf::from(format!("{}{suffix}", db.display()));
            std::fs::write(&file, b"").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            file
        };
        assert!(exposed_files(&db).is_empty(), "no files, nothing exposed");
        let main = set("", 0o644);
        set("-wal", 0o600);
        let shm = set("-shm", 0o660);
        assert_eq!(
            exposed_files(&db),
            vec![(main.clone(), 0o644), (shm.clone(), 0o660)]
        );
        assert_eq!(
            chmod_command(&exposed_files(&db)),
            format!("chmod 600 '{}' '{}'", main.display(), shm.display())
        );
        assert_eq!(
            chmod_command(&[(PathBuf::from("/data/pushbot.db"), 0o644)]),
            "chmod 600 /data/pushbot.db"
        );
        assert_eq!(
            chmod_command(&[(PathBuf::from("it's.db"), 0o644)]),
            r"chmod 600 'it'\''s.db'"
        );
        // An existing file keeps its mode (pushbot does not change what it did not set).
        create_private(&main).unwrap();
        assert_eq!(mode(&main), 0o644);
    }

    #[tokio::test]
    async fn the_checkpointer_copies_the_wal_into_the_database_file_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let url = format!("sqlite://{}", path.display());
        let store = Store::connect(&url).await.unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let before = size();
        // About 2 MiB committed: far below the writer's own checkpoint threshold, so only
        // the checkpointer can move it out of the WAL.
        let now = UnixMillis::now();
        for i in 0..64 {
            store
                .insert_message(Message::new_queued(
                    MessageId::from_stored(format!("k{i:03}")),
                    UserId::new("alice"),
                    None,
                    Some("x".repeat(32 * 1024)),
                    now,
                    now + ms(60_000),
                ))
                .await
                .unwrap();
        }
        let deadline = Instant::now() + CHECKPOINT_EVERY * 5;
        while size() < before + 2 * 1024 * 1024 {
            assert!(
                Instant::now() < deadline,
                "the database file is still {} bytes (was {before}): nothing was checkpointed",
                size()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store.close().await;
    }
}
