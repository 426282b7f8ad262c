//! Group commit: one thread owns outbox writes and commits whatever has queued up while
//! the previous commit was on its way to disk in a single transaction.
//!
//! With one fsync costing ~0.5–2 ms, committing each message alone caps the service at a
//! few hundred messages a second; batching makes the fsync cost per message shrink as load
//! grows, while each caller still waits for *its* row to be durable.
//!
//! The writer keeps one SQLite connection of its own (rusqlite, called directly on the
//! writer's thread: no statement is a round trip to another thread) and runs
//! `BEGIN IMMEDIATE … COMMIT` on it by hand. After *any* error inside a transaction the
//! connection is closed, not reused: SQLite may or may not have rolled the transaction
//! back by itself (a failed `COMMIT` on a full disk leaves it open; an I/O error may end
//! it), and a connection that still holds a transaction turns every later `BEGIN` into a
//! savepoint whose "commit" is never durable — and holds the write lock against everyone
//! else. Closing the connection ends whatever SQLite still has open; the next batch starts
//! on a fresh one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};

use rusqlite::types::{ToSql as _, ToSqlOutput};
use rusqlite::{Connection, OpenFlags, params, params_from_iter};
use tokio::sync::{mpsc, oneshot};

use super::{Arrivals, FileIdentity, Message, StoreError, now_ms};
use crate::domain::{ChannelName, MessageId, Route, UserId};

/// Upper bound on operations per transaction (keeps latency of one batch bounded).
const MAX_BATCH: usize = 1024;
/// Rows per multi-row INSERT (19 columns each; SQLite allows 32,766 parameters).
const INSERT_CHUNK: usize = 64;
/// IDs per `UPDATE … WHERE id IN (…)`.
const UPDATE_CHUNK: usize = 64;
/// WAL pages after which the writer checkpoints by itself: only when the checkpointer
/// thread has fallen behind (about 64 MiB of WAL).
const WAL_AUTOCHECKPOINT_PAGES: u32 = 16_384;
/// How often the checkpointer copies committed pages from the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(1000);
/// Bytes a health probe writes: more than the largest message `/send` accepts (64 KiB of
/// content plus a title), so a probe that commits means any message could be stored.
const PROBE_BYTES: i64 = 80 * 1024;

/// The outcome of one delivery attempt, to be recorded. Every variant but `Delivered`
/// without `log` also adds the attempt to the message's history (`attempts`): the common
/// case, a message delivered at its first try on its first channel, costs no extra row —
/// its history is its `channel` and `delivered_at`.
#[derive(Debug, Clone)]
pub enum AttemptUpdate {
    /// Delivered: the message is done. `channel`: every channel that delivered it (a
    /// comma list for `deliver_all`). `log`: also add this attempt to the history
    /// (`deliver_all` messages keep one entry per channel). Delivered on its own on WeCom
    /// counts against the member's limits (a trigger, at the time it is recorded).
    Delivered {
        id: MessageId,
        attempts: i64,
        channel: String,
        log: Option<ChannelName>,
    },
    /// Sent as part of a digest, which counts once against the member's limits.
    DigestDelivered {
        digest: Digest,
        channel: &'static str,
        sent_at: i64,
    },
    /// A transient failure on `channel`: tried again at `next_attempt_at`.
    Retry {
        id: MessageId,
        attempts: i64,
        channel: ChannelName,
        error: String,
        next_attempt_at: i64,
    },
    /// `channel` gave up and no channel is left: the message is done — `failed`, unless an
    /// earlier channel of a `deliver_all` route delivered it.
    Failed {
        id: MessageId,
        attempts: i64,
        channel: ChannelName,
        error: String,
    },
    /// `channel` is done with the message (it gave up, or delivered a `deliver_all`
    /// message); the message goes on with `route`, due now, with a retry window of its own
    /// ending at `deadline_at`.
    NextChannel {
        id: MessageId,
        attempts: i64,
        channel: ChannelName,
        delivered: bool,
        error: Option<String>,
        route: Route,
        deadline_at: i64,
    },
}

/// One digest: a WeCom message that carried several waiting messages.
#[derive(Debug, Clone)]
pub struct Digest {
    pub id: String,
    pub userid: UserId,
    pub body: String,
    pub carried: Vec<MessageId>,
}

/// Writes to the lane table, committed in the same group commit as everything else (on
/// SQLite a second writer would only wait for the writer's lock).
#[derive(Debug, Clone)]
pub enum LaneOp {
    /// Claim up to `limit` due lanes whose lease has expired; answers `Claimed`.
    Claim {
        owner: String,
        now: i64,
        lease_until: i64,
        limit: usize,
    },
    /// Extend the owner's claims on these lanes.
    Renew {
        owner: String,
        userids: Vec<UserId>,
        lease_until: i64,
    },
    /// Give a lane up until `due_at`.
    Release {
        owner: String,
        userid: UserId,
        due_at: i64,
    },
    /// Delete the owner's lane if nothing is queued in it any more; answers `Finished`.
    Finish { owner: String, userid: UserId },
    /// Give up every claim of `owner` (start-up, shutdown); answers `Count`.
    ReleaseAll { owner: String },
    /// Queued messages on `channel` past their deadline, in lanes nobody holds: each goes
    /// on to the next channel of its route (a new window of `window_ms`), or is failed
    /// when none is left; answers `Count`.
    Overdue {
        channel: ChannelName,
        now: i64,
        error: String,
        window_ms: i64,
        limit: usize,
    },
    /// Open lanes for queued messages that have none (a safety net); answers `Count`.
    OpenMissing { now: i64 },
    /// Forget send times older than `before`; answers `Count`.
    PruneSends { before: i64 },
}

/// What a write answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Done,
    Claimed(Vec<UserId>),
    Finished(bool),
    Count(u64),
    Overdue(Overdue),
}

/// What [`LaneOp::Overdue`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overdue {
    /// Messages handled: moved on to their next channel, or ended.
    pub handled: u64,
    /// Of those, messages that ended failed (no channel left, none delivered them).
    pub failed: u64,
}

type Done = oneshot::Sender<Result<Reply, StoreError>>;

/// One write as queued for the writer.
enum Write {
    Insert(Box<Message>),
    Update(AttemptUpdate),
    Lane(LaneOp),
    /// A real write (the `health` row, as large as the largest message), to learn whether
    /// the database takes writes now.
    Probe,
}

enum Op {
    Write(Write, Done),
    /// Commit what is queued, close the connection and stop (writes after this fail
    /// with [`StoreError::WriterGone`]).
    Close(oneshot::Sender<()>),
}

/// A failed write keeps `/healthz` at 503 for at least this long, even if a health probe
/// commits meanwhile: a probe rewrites one row in place and can squeeze into a WAL that
/// a growing table cannot (seen on a full tmpfs), so only a message write that succeeds
/// clears a fresh failure.
pub(super) const FAILURE_MEMORY: Duration = Duration::from_secs(30);

/// What the writer last saw: whether writes commit.
#[derive(Debug, Default)]
pub(super) struct WriteHealth {
    state: Mutex<HealthState>,
    /// Transactions committed so far (one per batch while all goes well).
    commits: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct HealthState {
    last_ok: Option<Instant>,
    failure: Option<Failure>,
}

#[derive(Debug, Clone)]
struct Failure {
    since: Instant,
    latest: Instant,
    error: String,
}

/// The health of writes as the last attempts left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WriteStatus {
    /// The most recent write committed, this long ago.
    Ok(Duration),
    /// Writes are failing; the latest failure was this long ago.
    Failing { error: String, age: Duration },
    /// Nothing has been written yet.
    Unknown,
}

impl WriteHealth {
    /// Records one write's result; `probe` marks a health probe, whose success does not
    /// clear a failure younger than [`FAILURE_MEMORY`].
    fn record(&self, error: Option<&StoreError>, probe: bool) {
        if error.is_none() {
            self.commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        match error {
            None => {
                state.last_ok = Some(now);
                let clears = state
                    .failure
                    .as_ref()
                    .is_some_and(|f| !probe || f.latest.elapsed() >= FAILURE_MEMORY);
                if clears && let Some(f) = state.failure.take() {
                    tracing::info!(
                        failing_for = ?f.since.elapsed(),
                        last_error = %f.error,
                        "database writes work again"
                    );
                }
            }
            Some(err) => {
                let error = crate::error::chain(err);
                let since = match &state.failure {
                    Some(f) => f.since,
                    None => {
                        tracing::error!(error = %error, "database writes are failing; /send answers 503 until they work again");
                        now
                    }
                };
                state.failure = Some(Failure {
                    since,
                    latest: now,
                    error,
                });
            }
        }
    }

    /// Transactions committed since start.
    pub(super) fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn status(&self) -> WriteStatus {
        let Ok(state) = self.state.lock() else {
            return WriteStatus::Unknown;
        };
        match (&state.failure, state.last_ok) {
            (Some(f), _) => WriteStatus::Failing {
                error: f.error.clone(),
                age: f.latest.elapsed(),
            },
            (None, Some(at)) => WriteStatus::Ok(at.elapsed()),
            (None, None) => WriteStatus::Unknown,
        }
    }
}

#[derive(Clone)]
pub(super) struct WriterHandle {
    tx: mpsc::UnboundedSender<Op>,
    pub(super) health: Arc<WriteHealth>,
}

impl WriterHandle {
    async fn call(&self, write: Write) -> Result<Reply, StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Op::Write(write, done))
            .map_err(|_| StoreError::WriterGone)?;
        wait.await.map_err(|_| StoreError::WriterGone)?
    }

    pub(super) async fn insert(&self, message: Message) -> Result<(), StoreError> {
        self.call(Write::Insert(Box::new(message))).await.map(drop)
    }

    pub(super) async fn update(&self, update: AttemptUpdate) -> Result<(), StoreError> {
        self.call(Write::Update(update)).await.map(drop)
    }

    pub(super) async fn lane(&self, op: LaneOp) -> Result<Reply, StoreError> {
        self.call(Write::Lane(op)).await
    }

    pub(super) async fn probe(&self) -> Result<(), StoreError> {
        self.call(Write::Probe).await.map(drop)
    }

    /// Commits everything queued before the call, then stops the writer and closes its
    /// connection; later writes fail with [`StoreError::WriterGone`].
    pub(super) async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Op::Close(done)).is_ok() {
            let _ = wait.await;
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

pub(super) fn spawn(
    path: PathBuf,
    file: Option<FileIdentity>,
    arrivals: Arc<Arrivals>,
) -> WriterHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let health = Arc::new(WriteHealth::default());
    let writer = Writer {
        path,
        conn: None,
        file,
        health: Arc::clone(&health),
        next_seq: None,
        arrivals,
    };
    // A thread of its own, calling SQLite directly: a batch is a handful of statements, and
    // through an async driver each was a round trip to the connection's thread, which on a
    // busy machine waited for a free core (measured: ~0.9 ms of a 1.5 ms batch).
    let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
    let checkpoints = writer.path.clone();
    let spawned = std::thread::Builder::new()
        .name("pushbot-writer".into())
        .spawn(move || {
            writer.run(rx);
            drop(stop_checkpoints);
        });
    if let Err(err) = spawned {
        // Writes then fail with WriterGone (503) and /healthz says so.
        tracing::error!(error = %err, "cannot start the storage writer thread");
    }
    let spawned = std::thread::Builder::new()
        .name("pushbot-checkpoint".into())
        .spawn(move || checkpointer(&checkpoints, &stopped));
    if let Err(err) = spawned {
        // The writer then checkpoints by itself (WAL_AUTOCHECKPOINT_PAGES).
        tracing::warn!(error = %err, "cannot start the WAL checkpoint thread");
    }
    WriterHandle { tx, health }
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
        let result = match conn.take() {
            Some(c) => Ok(c),
            None => open(path),
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
    }
}

struct Writer {
    /// The database file. The writer opens it itself (read-write, never creating it): a
    /// connection opened while the files were unwritable could stay read-only for good,
    /// and one that created a fresh file after the real one was deleted would lie.
    path: PathBuf,
    /// The writer's own connection; `None` after an error until the next batch opens one.
    conn: Option<Connection>,
    /// The database file as opened, to notice it being deleted or replaced.
    file: Option<FileIdentity>,
    health: Arc<WriteHealth>,
    /// The next acceptance sequence number (read from the database on first use).
    next_seq: Option<i64>,
    /// Told about new messages after they are committed.
    arrivals: Arc<Arrivals>,
}

/// Sends one result to every waiter; an error is shared when there are several.
fn answer_all(dones: Vec<Done>, err: StoreError) {
    if dones.len() <= 1 {
        if let Some(done) = dones.into_iter().next() {
            let _ = done.send(Err(err));
        }
        return;
    }
    let err = Arc::new(err);
    for done in dones {
        let _ = done.send(Err(StoreError::Shared(Arc::clone(&err))));
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        let mut closed = Vec::new();
        // Everything that queued while the previous batch was committing is the next batch.
        while closed.is_empty()
            && let Some(first) = rx.blocking_recv()
        {
            let mut ops = vec![first];
            while ops.len() < MAX_BATCH
                && let Ok(op) = rx.try_recv()
            {
                ops.push(op);
            }
            let mut writes = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    Op::Write(write, done) => writes.push((write, done)),
                    Op::Close(done) => closed.push(done),
                }
            }
            self.commit_batch(writes);
        }
        drop(rx);
        if let Some(conn) = self.conn.take() {
            let _ = conn.close();
        }
        tracing::debug!(commits = self.health.commits(), "storage writer stopped");
        for done in closed {
            let _ = done.send(());
        }
    }

    /// Commits one batch in one transaction; if that fails, each write on its own, so
    /// that exactly the writes that cannot be stored are refused.
    fn commit_batch(&mut self, mut batch: Vec<(Write, Done)>) {
        if batch.is_empty() {
            return;
        }
        let writes: Vec<&mut Write> = batch.iter_mut().map(|(w, _)| w).collect();
        let res = self.write(writes);
        let mut inserted = Vec::new();
        match res {
            Ok(replies) => {
                for ((write, done), reply) in batch.into_iter().zip(replies) {
                    let _ = done.send(Ok(reply));
                    if let Write::Insert(m) = write {
                        inserted.push(*m);
                    }
                }
            }
            Err(err) if batch.len() == 1 => {
                answer_all(batch.into_iter().map(|(_, d)| d).collect(), err);
            }
            Err(err) => {
                tracing::warn!(error = %crate::error::chain(&err), writes = batch.len(), "batch commit failed; retrying writes one by one");
                // Several probes are one question: ask it once.
                let mut probes = Vec::new();
                for (mut write, done) in batch {
                    if matches!(write, Write::Probe) {
                        probes.push(done);
                        continue;
                    }
                    let result = self
                        .write(vec![&mut write])
                        .map(|mut r| r.pop().unwrap_or(Reply::Done));
                    let ok = result.is_ok();
                    let _ = done.send(result);
                    if let (true, Write::Insert(m)) = (ok, write) {
                        inserted.push(*m);
                    }
                }
                if !probes.is_empty() {
                    match self.write(vec![&mut Write::Probe]) {
                        Ok(_) => {
                            for done in probes {
                                let _ = done.send(Ok(Reply::Done));
                            }
                        }
                        Err(err) => answer_all(probes, err),
                    }
                }
            }
        }
        if !inserted.is_empty() {
            self.arrivals.committed(inserted);
        }
    }

    /// Commits `writes` in one transaction on the writer's connection, or fails having
    /// closed that connection (so nothing of this attempt can linger).
    fn write(&mut self, mut writes: Vec<&mut Write>) -> Result<Vec<Reply>, StoreError> {
        let probe_only = writes.iter().all(|w| matches!(w, Write::Probe));
        let result = self.try_write(&mut writes);
        let result = match result {
            Ok(replies) => self.check_file().map(|()| replies),
            Err(err) => {
                if let Some(conn) = self.conn.take() {
                    // Best effort; closing the connection ends the transaction regardless.
                    let _ = conn.execute_batch("ROLLBACK");
                    let _ = conn.close();
                }
                // Sequence numbers handed out in the failed transaction are not reused
                // (gaps are harmless); re-read the high mark with the next connection.
                self.next_seq = None;
                Err(err)
            }
        };
        match &result {
            Ok(_) => self.health.record(None, probe_only),
            // A refused row (a repeated idempotency key) says nothing about the disk.
            Err(err) if err.is_unavailable() => self.health.record(Some(err), probe_only),
            Err(_) => {}
        }
        result.map_err(duplicate_key)
    }

    fn try_write(&mut self, writes: &mut [&mut Write]) -> Result<Vec<Reply>, StoreError> {
        if self.conn.is_none() {
            self.conn = Some(open(&self.path)?);
        }
        let Some(conn) = self.conn.as_ref() else {
            return Err(StoreError::WriterGone);
        };
        // IMMEDIATE takes the write lock now, so a busy database fails here, before any
        // statement ran, rather than half-way through.
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let mut next_seq = match self.next_seq {
            Some(seq) => seq,
            None => {
                conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM messages", [], |row| {
                    row.get::<_, i64>(0)
                })? + 1
            }
        };
        // Acceptance order is the order in which inserts reached the writer. A message to a
        // fixed address (a verification mail) goes to the front of its lane: negative
        // numbers sort before every sender's message, so a code is not held up behind a
        // backlog waiting for WeCom — the very situation in which a member binds an address.
        let mut messages = Vec::new();
        for write in writes.iter_mut() {
            if let Write::Insert(m) = &mut **write {
                m.seq = if m.email_to.is_some() {
                    -next_seq
                } else {
                    next_seq
                };
                next_seq += 1;
                messages.push(&**m);
            }
        }
        for chunk in pow2_chunks(&messages, INSERT_CHUNK) {
            insert_chunk(conn, chunk)?;
        }
        open_lanes(conn, &messages)?;
        let updates: Vec<&AttemptUpdate> = writes
            .iter()
            .filter_map(|w| match &**w {
                Write::Update(u) => Some(u),
                _ => None,
            })
            .collect();
        apply_updates(conn, &updates)?;
        let mut replies = vec![Reply::Done; writes.len()];
        // Releases and finishes (one per lane worker and message under load) are grouped
        // into one statement each: the writer is the bottleneck, statements are its cost.
        // (A lane has one worker, so no lane is released and finished in one batch.)
        let mut releases = Vec::new();
        let mut finishes = Vec::new();
        for (i, write) in writes.iter().enumerate() {
            match &**write {
                Write::Insert(_) | Write::Update(_) => {}
                Write::Lane(LaneOp::Release {
                    owner,
                    userid,
                    due_at,
                }) => releases.push((owner.as_str(), userid.as_str(), *due_at)),
                Write::Lane(LaneOp::Finish { owner, userid }) => {
                    finishes.push((i, owner.as_str(), userid.as_str()));
                }
                Write::Lane(op) => replies[i] = lane_op(conn, op)?,
                Write::Probe => {
                    conn.prepare_cached(
                        "UPDATE health SET checked_at = ?1, reserve = zeroblob(?2) WHERE id = 1",
                    )?
                    .execute(params![now_ms(), PROBE_BYTES])?;
                }
            }
        }
        release_lanes(conn, &releases)?;
        for (i, finished) in finish_lanes(conn, &finishes)? {
            replies[i] = Reply::Finished(finished);
        }
        conn.prepare_cached("COMMIT")?.execute([])?;
        // A COMMIT that "succeeded" while SQLite still holds a transaction would mean the
        // rows are not durable; refuse to believe it.
        if !conn.is_autocommit() {
            return Err(StoreError::Corrupt(
                "COMMIT returned but a transaction is still open".into(),
            ));
        }
        self.next_seq = Some(next_seq);
        Ok(replies)
    }

    /// A commit into a database file that was deleted (or replaced) while we had it open
    /// is not durable in any useful sense: the next start opens a different file.
    fn check_file(&self) -> Result<(), StoreError> {
        match &self.file {
            Some(file) if !file.still_there() => Err(StoreError::FileReplaced(file.path.clone())),
            _ => Ok(()),
        }
    }
}

/// Opens the writer's connection: read-write but never creating the file, with the same
/// durability settings as every other connection.
fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_millis(u64::from(super::BUSY_TIMEOUT_MS)))?;
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

/// A unique-index violation on an insert is a repeated idempotency key (the message id
/// is a fresh UUID): say so, so that the caller can answer with the first message.
fn duplicate_key(err: StoreError) -> StoreError {
    match &err {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(code, Some(message)))
            if code.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                && message.contains("idempotency_key") =>
        {
            StoreError::DuplicateKey
        }
        _ => err,
    }
}

/// Runs a (cached) statement with positional arguments; answers the rows changed.
fn run(conn: &Connection, sql: &str, args: &[ToSqlOutput<'_>]) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(sql)?
        .execute(params_from_iter(args.iter()))?)
}

/// Runs a (cached) statement that returns one text column per row.
fn run_returning(
    conn: &Connection,
    sql: &str,
    args: &[ToSqlOutput<'_>],
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params_from_iter(args.iter()), |row| row.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn insert_chunk(conn: &Connection, chunk: &[&Message]) -> Result<(), StoreError> {
    const COLS: usize = 23;
    let mut sql = String::from(
        "INSERT INTO messages (id, userid, title, content, status, attempts, last_error, \
         channel, created_at, updated_at, next_attempt_at, deadline_at, delivered_at, seq, via, \
         idempotency_key, route, deliver_all, email_to, format, look, url, page_key) VALUES ",
    );
    push_values(&mut sql, chunk.len(), COLS, 0);
    let mut args = Vec::with_capacity(chunk.len() * COLS);
    for m in chunk {
        args.extend([
            m.id.as_str().to_sql()?,
            m.userid.as_str().to_sql()?,
            m.title.to_sql()?,
            m.content.to_sql()?,
            m.status.as_str().to_sql()?,
            m.attempts.to_sql()?,
            m.last_error.to_sql()?,
            m.channel.to_sql()?,
            m.created_at.to_sql()?,
            m.updated_at.to_sql()?,
            m.next_attempt_at.to_sql()?,
            m.deadline_at.to_sql()?,
            m.delivered_at.to_sql()?,
            m.seq.to_sql()?,
            m.via.to_sql()?,
            m.idempotency_key.to_sql()?,
            ToSqlOutput::from(m.route.to_stored()),
            ToSqlOutput::from(i64::from(m.deliver_all)),
            m.email_to.to_sql()?,
            ToSqlOutput::from(m.format.as_str()),
            ToSqlOutput::from(m.look.as_str()),
            m.url.to_sql()?,
            m.page_key.to_sql()?,
        ]);
    }
    run(conn, &sql, &args)?;
    Ok(())
}

/// The largest power of two not above `n` (1 for 0).
fn pow2_floor(n: usize) -> usize {
    let mut p = 1;
    while p * 2 <= n {
        p *= 2;
    }
    p
}

/// Appends `?first+1, ?first+2, …`: `count` numbered parameters for an `IN (…)` list.
fn push_params(sql: &mut String, count: usize, first: usize) {
    for i in 0..count {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!("?{}", first + i + 1));
    }
}

/// `items` in chunks whose lengths are powers of two (at most `max`): multi-row statements
/// then come in a handful of shapes, all of which stay in the connection's statement
/// cache. With one shape per row count, the writer re-prepared its large statements on
/// nearly every batch (measured: about half of each batch's time).
fn pow2_chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut size = 1;
        while size * 2 <= rest.len().min(max) {
            size *= 2;
        }
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

/// Appends `(… , …), (…)`: `rows` groups of `cols` numbered parameters from `?first+1`.
fn push_values(sql: &mut String, rows: usize, cols: usize, first: usize) {
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..cols {
            if c > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("?{}", first + i * cols + c + 1));
        }
        sql.push(')');
    }
}

/// Every member who got a message has a lane; an existing lane keeps its head and due time
/// (the new message waits behind what is already queued).
fn open_lanes(conn: &Connection, messages: &[&Message]) -> Result<(), StoreError> {
    let mut userids: Vec<&str> = messages.iter().map(|m| m.userid.as_str()).collect();
    userids.sort_unstable();
    userids.dedup();
    let now = now_ms();
    for chunk in pow2_chunks(&userids, UPDATE_CHUNK) {
        let mut sql =
            String::from("INSERT INTO lanes (userid, due_at, owner, lease_until) VALUES ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("(?{}, ?1, NULL, 0)", i + 2));
        }
        sql.push_str(" ON CONFLICT (userid) DO NOTHING");
        let mut args = vec![now.to_sql()?];
        for userid in chunk {
            args.push(userid.to_sql()?);
        }
        run(conn, &sql, &args)?;
    }
    Ok(())
}

/// Adds one attempt to a message's history.
fn log_attempt(
    conn: &Connection,
    id: &str,
    at: i64,
    channel: ChannelName,
    outcome: &str,
    error: Option<&str>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO attempts (message_id, at, channel, outcome, error) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![id, at, channel.as_str(), outcome, error])?;
    Ok(())
}

/// A send to WeCom that no trigger counts (a step of a `deliver_all` message).
fn count_send(conn: &Connection, id: &str, at: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO sends (userid, sent_at) SELECT userid, ?2 FROM messages WHERE id = ?1",
    )?
    .execute(params![id, at])?;
    Ok(())
}

/// Ends a message whose last channel gave up: `failed`, or `delivered` when an earlier
/// channel of a `deliver_all` route delivered it.
const END_WITHOUT_DELIVERY: &str = "UPDATE messages SET \
     status = CASE WHEN channel IS NULL THEN 'failed' ELSE 'delivered' END, \
     attempts = ?1, last_error = ?2, updated_at = ?3 WHERE id = ?4 AND status = 'queued'";

/// Moves a message on to the rest of its route.
const NEXT_CHANNEL: &str = "UPDATE messages SET route = ?1, attempts = ?2, last_error = ?3, \
     next_attempt_at = ?4, deadline_at = ?5, updated_at = ?4, \
     channel = CASE WHEN ?6 IS NULL THEN channel WHEN channel IS NULL THEN ?6 \
                    ELSE channel || ',' || ?6 END, \
     delivered_at = CASE WHEN ?6 IS NULL THEN delivered_at ELSE COALESCE(delivered_at, ?4) END \
     WHERE id = ?7 AND status = 'queued'";

/// Applies attempt outcomes in arrival order. Successful deliveries (the bulk under load)
/// are grouped into `IN (…)` updates; the order between two updates of the same message is
/// kept because a message has at most one attempt in flight, so its updates are never in
/// one batch out of order.
fn apply_updates(conn: &Connection, updates: &[&AttemptUpdate]) -> Result<(), StoreError> {
    let now = now_ms();
    let mut delivered: Vec<(&str, i64, &str)> = Vec::new();
    let mut sends: Vec<(&str, i64)> = Vec::new();
    for u in updates {
        match u {
            AttemptUpdate::Delivered {
                id,
                attempts,
                channel,
                log,
            } => {
                delivered.push((id.as_str(), *attempts, channel.as_str()));
                if let Some(step) = log {
                    log_attempt(conn, id.as_str(), now, *step, "delivered", None)?;
                    if *step == ChannelName::WeCom {
                        count_send(conn, id.as_str(), now)?;
                    }
                }
            }
            AttemptUpdate::DigestDelivered {
                digest,
                channel,
                sent_at,
            } => {
                conn.prepare_cached(
                    "INSERT INTO digests (id, userid, body, carried, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    digest.id.as_str(),
                    digest.userid.as_str(),
                    digest.body.as_str(),
                    i64::try_from(digest.carried.len()).unwrap_or(i64::MAX),
                    *sent_at,
                ])?;
                for chunk in pow2_chunks(&digest.carried, UPDATE_CHUNK) {
                    let mut sql = String::from(
                        "UPDATE messages SET status = 'delivered', attempts = attempts + 1, \
                         channel = ?1, via = ?2, last_error = NULL, updated_at = ?3, \
                         delivered_at = ?3 WHERE status = 'queued' AND id IN (",
                    );
                    push_params(&mut sql, chunk.len(), 3);
                    sql.push(')');
                    let mut args = vec![
                        channel.to_sql()?,
                        digest.id.as_str().to_sql()?,
                        now.to_sql()?,
                    ];
                    for id in chunk {
                        args.push(id.as_str().to_sql()?);
                    }
                    run(conn, &sql, &args)?;
                }
                sends.push((digest.userid.as_str(), *sent_at));
            }
            AttemptUpdate::Retry {
                id,
                attempts,
                channel,
                error,
                next_attempt_at,
            } => {
                conn.prepare_cached(
                    "UPDATE messages SET attempts = ?1, last_error = ?2, next_attempt_at = ?3, \
                     updated_at = ?4 WHERE id = ?5 AND status = 'queued'",
                )?
                .execute(params![
                    *attempts,
                    error.as_str(),
                    *next_attempt_at,
                    now,
                    id.as_str()
                ])?;
                log_attempt(conn, id.as_str(), now, *channel, "retry", Some(error))?;
            }
            AttemptUpdate::Failed {
                id,
                attempts,
                channel,
                error,
            } => {
                conn.prepare_cached(END_WITHOUT_DELIVERY)?.execute(params![
                    *attempts,
                    error.as_str(),
                    now,
                    id.as_str()
                ])?;
                log_attempt(conn, id.as_str(), now, *channel, "failed", Some(error))?;
            }
            AttemptUpdate::NextChannel {
                id,
                attempts,
                channel,
                delivered,
                error,
                route,
                deadline_at,
            } => {
                let delivered_on = delivered.then(|| channel.as_str());
                conn.prepare_cached(NEXT_CHANNEL)?.execute(params![
                    route.to_stored(),
                    *attempts,
                    error.as_deref(),
                    now,
                    *deadline_at,
                    delivered_on,
                    id.as_str()
                ])?;
                let outcome = if *delivered { "delivered" } else { "failed" };
                log_attempt(conn, id.as_str(), now, *channel, outcome, error.as_deref())?;
                if *delivered && *channel == ChannelName::WeCom {
                    count_send(conn, id.as_str(), now)?;
                }
            }
        }
    }
    // Group by (attempts, channel) so each statement sets one set of values.
    delivered.sort_by_key(|(_, attempts, channel)| (*attempts, *channel));
    for group in delivered.chunk_by(|a, b| a.1 == b.1 && a.2 == b.2) {
        let Some(&(_, attempts, channel)) = group.first() else {
            continue;
        };
        for chunk in pow2_chunks(group, UPDATE_CHUNK) {
            let mut sql = String::from(
                "UPDATE messages SET status = 'delivered', attempts = ?1, channel = ?2, \
                 last_error = NULL, updated_at = ?3, delivered_at = COALESCE(delivered_at, ?3) \
                 WHERE id IN (",
            );
            push_params(&mut sql, chunk.len(), 3);
            sql.push(')');
            let mut args = vec![attempts.to_sql()?, channel.to_sql()?, now.to_sql()?];
            for (id, _, _) in chunk {
                args.push(id.to_sql()?);
            }
            run(conn, &sql, &args)?;
        }
    }
    for chunk in pow2_chunks(&sends, UPDATE_CHUNK) {
        let mut sql = String::from("INSERT INTO sends (userid, sent_at) VALUES ");
        push_values(&mut sql, chunk.len(), 2, 0);
        let mut args = Vec::with_capacity(chunk.len() * 2);
        for (userid, sent_at) in chunk {
            args.push(userid.to_sql()?);
            args.push(sent_at.to_sql()?);
        }
        run(conn, &sql, &args)?;
    }
    Ok(())
}

/// Queued messages on `channel` past their deadline, in lanes nobody holds, go on to their
/// next channel (their lane due now) or end; answers how many were handled and failed.
fn overdue(
    conn: &Connection,
    channel: ChannelName,
    now: i64,
    error: &str,
    window_ms: i64,
    limit: usize,
) -> Result<Overdue, StoreError> {
    let limit = pow2_floor(limit);
    let sql = format!(
        "SELECT m.id, m.userid, m.route, m.attempts, m.channel IS NULL FROM messages m \
         WHERE m.status = 'queued' AND m.deadline_at <= ?1 \
           AND (m.route = ?2 OR m.route LIKE ?2 || ',%') \
           AND NOT EXISTS (SELECT 1 FROM lanes l WHERE l.userid = m.userid AND l.lease_until > ?1) \
         LIMIT {limit}"
    );
    let rows: Vec<(String, String, String, i64, bool)> = {
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![now, channel.as_str()], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut failed: u64 = 0;
    for (id, userid, route, attempts, undelivered) in &rows {
        let route = Route::parse(route).map_err(StoreError::Corrupt)?;
        log_attempt(conn, id, now, channel, "failed", Some(error))?;
        match route.rest() {
            Some(rest) => {
                conn.prepare_cached(NEXT_CHANNEL)?.execute(params![
                    rest.to_stored(),
                    *attempts,
                    error,
                    now,
                    now.saturating_add(window_ms),
                    Option::<&str>::None,
                    id.as_str()
                ])?;
                conn.prepare_cached(
                    "UPDATE lanes SET due_at = MIN(due_at, ?2) WHERE userid = ?1 AND owner IS NULL",
                )?
                .execute(params![userid.as_str(), now])?;
            }
            None => {
                conn.prepare_cached(END_WITHOUT_DELIVERY)?.execute(params![
                    *attempts,
                    error,
                    now,
                    id.as_str()
                ])?;
                failed += u64::from(*undelivered);
            }
        }
    }
    Ok(Overdue {
        handled: u64::try_from(rows.len()).unwrap_or(u64::MAX),
        failed,
    })
}

/// Gives lanes up until their due times: `(owner, userid, due_at)`, grouped by owner.
fn release_lanes(conn: &Connection, releases: &[(&str, &str, i64)]) -> Result<(), StoreError> {
    let mut releases = releases.to_vec();
    releases.sort_unstable_by_key(|(owner, _, _)| *owner);
    for group in releases.chunk_by(|a, b| a.0 == b.0) {
        let Some(&(owner, _, _)) = group.first() else {
            continue;
        };
        for chunk in pow2_chunks(group, UPDATE_CHUNK) {
            let mut sql = String::from("WITH v (userid, due_at) AS (VALUES ");
            push_values(&mut sql, chunk.len(), 2, 1);
            sql.push_str(
                ") UPDATE lanes SET owner = NULL, lease_until = 0, \
                 due_at = (SELECT v.due_at FROM v WHERE v.userid = lanes.userid) \
                 WHERE owner = ?1 AND userid IN (SELECT userid FROM v)",
            );
            let mut args = vec![owner.to_sql()?];
            for (_, userid, due_at) in chunk {
                args.push(userid.to_sql()?);
                args.push(due_at.to_sql()?);
            }
            run(conn, &sql, &args)?;
        }
    }
    Ok(())
}

/// Deletes the lanes of `(reply index, owner, userid)` that have nothing queued; answers
/// for each index whether its lane was deleted.
fn finish_lanes(
    conn: &Connection,
    finishes: &[(usize, &str, &str)],
) -> Result<Vec<(usize, bool)>, StoreError> {
    let mut answers = Vec::with_capacity(finishes.len());
    let mut finishes = finishes.to_vec();
    finishes.sort_unstable_by_key(|(_, owner, _)| *owner);
    for group in finishes.chunk_by(|a, b| a.1 == b.1) {
        let Some(&(_, owner, _)) = group.first() else {
            continue;
        };
        for chunk in pow2_chunks(group, UPDATE_CHUNK) {
            let mut sql = String::from("DELETE FROM lanes WHERE owner = ?1 AND userid IN (");
            push_params(&mut sql, chunk.len(), 1);
            sql.push_str(
                ") AND NOT EXISTS (SELECT 1 FROM messages m \
                 WHERE m.userid = lanes.userid AND m.status = 'queued') RETURNING userid",
            );
            let mut args = vec![owner.to_sql()?];
            for (_, _, userid) in chunk {
                args.push(userid.to_sql()?);
            }
            let deleted = run_returning(conn, &sql, &args)?;
            for (i, _, userid) in chunk {
                answers.push((*i, deleted.iter().any(|d| d == userid)));
            }
        }
    }
    Ok(answers)
}

/// One write to the lanes.
fn lane_op(conn: &Connection, op: &LaneOp) -> Result<Reply, StoreError> {
    let count = |n: usize| Reply::Count(u64::try_from(n).unwrap_or(u64::MAX));
    Ok(match op {
        LaneOp::Claim {
            owner,
            now,
            lease_until,
            limit,
        } => {
            // The outer `lease_until <= ?3` is checked again against the row as updated:
            // with several writers (PostgreSQL), a lane claimed meanwhile is skipped.
            // LIMIT is a literal rounded down to a power of two: a bound LIMIT makes SQLite
            // re-prepare the statement on every use, and few shapes stay cached.
            let limit = pow2_floor(*limit);
            let sql = format!(
                "UPDATE lanes SET owner = ?1, lease_until = ?2 \
                 WHERE lease_until <= ?3 AND userid IN (\
                   SELECT userid FROM lanes WHERE due_at <= ?3 AND lease_until <= ?3 \
                   ORDER BY due_at LIMIT {limit}) \
                 RETURNING userid"
            );
            let args = [
                owner.as_str().to_sql()?,
                lease_until.to_sql()?,
                now.to_sql()?,
            ];
            let claimed = run_returning(conn, &sql, &args)?;
            Reply::Claimed(claimed.iter().map(|u| UserId::new(u)).collect())
        }
        LaneOp::Renew {
            owner,
            userids,
            lease_until,
        } => {
            for chunk in pow2_chunks(userids, UPDATE_CHUNK) {
                let mut sql = String::from(
                    "UPDATE lanes SET lease_until = ?1 WHERE owner = ?2 AND userid IN (",
                );
                push_params(&mut sql, chunk.len(), 2);
                sql.push(')');
                let mut args = vec![lease_until.to_sql()?, owner.as_str().to_sql()?];
                for userid in chunk {
                    args.push(userid.as_str().to_sql()?);
                }
                run(conn, &sql, &args)?;
            }
            Reply::Done
        }
        // Grouped by the caller (see `release_lanes`, `finish_lanes`).
        LaneOp::Release { .. } | LaneOp::Finish { .. } => Reply::Done,
        LaneOp::ReleaseAll { owner } => count(run(
            conn,
            "UPDATE lanes SET owner = NULL, lease_until = 0 WHERE owner = ?1",
            &[owner.as_str().to_sql()?],
        )?),
        LaneOp::Overdue {
            channel,
            now,
            error,
            window_ms,
            limit,
        } => Reply::Overdue(overdue(conn, *channel, *now, error, *window_ms, *limit)?),
        LaneOp::OpenMissing { now } => count(run(
            conn,
            "INSERT INTO lanes (userid, due_at, owner, lease_until) \
             SELECT DISTINCT userid, ?1, NULL, 0 FROM messages m \
             WHERE m.status = 'queued' AND NOT EXISTS (\
               SELECT 1 FROM lanes l WHERE l.userid = m.userid)",
            &[now.to_sql()?],
        )?),
        LaneOp::PruneSends { before } => count(run(
            conn,
            "DELETE FROM sends WHERE sent_at < ?1",
            &[before.to_sql()?],
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn chunks_come_in_powers_of_two() {
        let items: Vec<u32> = (0..93).collect();
        let sizes: Vec<usize> = pow2_chunks(&items, 16).map(<[u32]>::len).collect();
        assert_eq!(sizes, [16, 16, 16, 16, 16, 8, 4, 1]);
        let flat: Vec<u32> = pow2_chunks(&items, 16).flatten().copied().collect();
        assert_eq!(flat, items);
        assert_eq!(pow2_chunks::<u32>(&[], 16).count(), 0);
    }

    #[test]
    fn the_writers_connection_is_durable_and_keeps_statement_journals_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        // The writer never creates the file (see `Store::connect`).
        assert!(open(&path).is_err());
        Connection::open(&path).unwrap();
        let conn = open(&path).unwrap();
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
        assert_eq!(
            pragma("busy_timeout"),
            super::super::BUSY_TIMEOUT_MS.to_string()
        );
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
        let now = now_ms();
        for i in 0..64 {
            store
                .insert_message(Message::new_queued(
                    MessageId::from_stored(format!("k{i:03}")),
                    UserId::new("alice"),
                    None,
                    Some("x".repeat(32 * 1024)),
                    now,
                    now + 60_000,
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

    #[tokio::test]
    async fn many_rows_commit_in_one_multi_row_insert_without_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = Store::connect(&url).await.unwrap();
        let mut writer = Writer {
            path: dir.path().join("w.db"),
            conn: None,
            file: None,
            health: Arc::default(),
            next_seq: None,
            arrivals: Arc::default(),
        };
        let now = now_ms();
        let mut writes: Vec<Write> = (0..(INSERT_CHUNK * 2 + 3))
            .map(|i| {
                Write::Insert(Box::new(Message::new_queued(
                    MessageId::from_stored(format!("m{i:03}")),
                    UserId::new(if i % 2 == 0 { "alice" } else { "bob" }),
                    Some(format!("t{i}")),
                    Some(format!("c{i}")),
                    now,
                    now + 1000,
                )))
            })
            .collect();
        // Called directly: no one-by-one retry could hide a broken statement.
        writer.write(writes.iter_mut().collect()).unwrap();
        let mut last_seq = 0;
        for write in &writes {
            let Write::Insert(m) = write else {
                unreachable!()
            };
            let stored = store.message(m.id.as_str()).await.unwrap().unwrap();
            assert_eq!(stored.title, m.title);
            assert_eq!(stored.content, m.content);
            assert!(stored.seq > last_seq, "acceptance order is kept");
            last_seq = stored.seq;
        }
        // Both members got a lane, due now.
        assert!(
            store
                .next_lane_due()
                .await
                .unwrap()
                .is_some_and(|due| due <= now_ms())
        );
        if let Some(conn) = writer.conn.take() {
            conn.close().unwrap();
        }
        store.close().await;
    }
}
