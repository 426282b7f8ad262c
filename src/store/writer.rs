//! Group commit: one task owns outbox writes and commits whatever has queued up while the
//! previous commit was on its way to disk in a single transaction.
//!
//! With one fsync costing ~2 ms, committing each message alone caps the service at a few
//! hundred messages a second; batching makes the fsync cost per message shrink as load
//! grows, while each caller still waits for *its* row to be durable.
//!
//! The writer keeps one connection of its own and runs `BEGIN IMMEDIATE … COMMIT` on it by
//! hand. After *any* error inside a transaction the connection is closed, not reused:
//! SQLite may or may not have rolled the transaction back by itself (a failed `COMMIT` on
//! a full disk leaves it open; an I/O error may end it), and a connection that still holds
//! a transaction turns every later `BEGIN` into a savepoint whose "commit" is never
//! durable — and holds the write lock against everyone else. Closing the connection ends
//! whatever SQLite still has open; the next batch starts on a fresh one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, Connection as _};
use tokio::sync::{mpsc, oneshot};

use super::{FileIdentity, Message, StoreError, now_ms};

/// Upper bound on operations per transaction (keeps latency of one batch bounded).
const MAX_BATCH: usize = 1024;
/// Rows per multi-row INSERT. SQLite resolves `$n` names by a linear search, so very long
/// parameter lists cost quadratic time (64-row chunks made the load benchmark ~40% slower).
const INSERT_CHUNK: usize = 16;
/// IDs per `UPDATE … WHERE id IN (…)`.
const UPDATE_CHUNK: usize = 64;
/// Bytes a health probe writes: more than the largest message `/send` accepts (64 KiB of
/// content plus a title), so a probe that commits means any message could be stored.
const PROBE_BYTES: i64 = 80 * 1024;

/// The outcome of one delivery attempt, to be recorded.
#[derive(Debug, Clone)]
pub enum AttemptUpdate {
    Delivered {
        id: String,
        attempts: i64,
        channel: &'static str,
    },
    Retry {
        id: String,
        attempts: i64,
        error: String,
        next_attempt_at: i64,
    },
    Failed {
        id: String,
        attempts: i64,
        error: String,
    },
}

type Done = oneshot::Sender<Result<(), StoreError>>;

enum Op {
    Insert(Box<Message>, Done),
    Update(AttemptUpdate, Done),
    /// A real write (the `health` row, as large as the largest message), to learn whether
    /// the database takes writes now.
    Probe(Done),
    /// Commit what is queued, give the connection back and stop (writes after this fail
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
    fn record(&self, result: &Result<(), StoreError>, probe: bool) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        match result {
            Ok(()) => {
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
            Err(err) => {
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
    async fn call(&self, op: impl FnOnce(Done) -> Op) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx.send(op(done)).map_err(|_| StoreError::WriterGone)?;
        wait.await.map_err(|_| StoreError::WriterGone)?
    }

    pub(super) async fn insert(&self, message: Message) -> Result<(), StoreError> {
        self.call(|done| Op::Insert(Box::new(message), done)).await
    }

    pub(super) async fn update(&self, update: AttemptUpdate) -> Result<(), StoreError> {
        self.call(|done| Op::Update(update, done)).await
    }

    pub(super) async fn probe(&self) -> Result<(), StoreError> {
        self.call(Op::Probe).await
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

pub(super) fn spawn(options: AnyConnectOptions, file: Option<FileIdentity>) -> WriterHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let health = Arc::new(WriteHealth::default());
    let writer = Writer {
        options,
        conn: None,
        file,
        health: Arc::clone(&health),
    };
    tokio::spawn(writer.run(rx));
    WriterHandle { tx, health }
}

struct Writer {
    /// How to open the writer's connection. It is its own, not one of the pool's: a pooled
    /// connection opened while the files were unwritable can stay read-only for good.
    options: AnyConnectOptions,
    /// The writer's own connection; `None` after an error until the next batch opens one.
    conn: Option<AnyConnection>,
    /// The database file as opened, to notice it being deleted or replaced.
    file: Option<FileIdentity>,
    health: Arc<WriteHealth>,
}

/// One batch's writes, borrowed from the ops that asked for them.
#[derive(Default)]
struct Writes<'a> {
    messages: Vec<&'a Message>,
    updates: Vec<&'a AttemptUpdate>,
    probe: bool,
}

impl Writes<'_> {
    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.updates.is_empty() && !self.probe
    }

    fn is_probe_only(&self) -> bool {
        self.messages.is_empty() && self.updates.is_empty()
    }
}

/// Sends one result to every waiter; an error is shared when there are several.
fn answer(dones: Vec<Done>, result: Result<(), StoreError>) {
    match result {
        Ok(()) => {
            for done in dones {
                let _ = done.send(Ok(()));
            }
        }
        Err(err) if dones.len() <= 1 => {
            if let Some(done) = dones.into_iter().next() {
                let _ = done.send(Err(err));
            }
        }
        Err(err) => {
            let err = Arc::new(err);
            for done in dones {
                let _ = done.send(Err(StoreError::Shared(Arc::clone(&err))));
            }
        }
    }
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        let mut ops = Vec::with_capacity(MAX_BATCH);
        let mut closed = Vec::new();
        while closed.is_empty() && rx.recv_many(&mut ops, MAX_BATCH).await > 0 {
            let batch = std::mem::take(&mut ops);
            closed = self.commit_batch(batch).await;
        }
        drop(rx);
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
        for done in closed {
            let _ = done.send(());
        }
    }

    /// Commits one batch; returns the waiters of a `Close` in it (empty: keep running).
    async fn commit_batch(&mut self, batch: Vec<Op>) -> Vec<oneshot::Sender<()>> {
        let mut inserts = Vec::new();
        let mut updates = Vec::new();
        let mut probes = Vec::new();
        let mut closes = Vec::new();
        for op in batch {
            match op {
                Op::Insert(m, done) => inserts.push((m, done)),
                Op::Update(u, done) => updates.push((u, done)),
                Op::Probe(done) => probes.push(done),
                Op::Close(done) => closes.push(done),
            }
        }
        let all = Writes {
            messages: inserts.iter().map(|(m, _)| m.as_ref()).collect(),
            updates: updates.iter().map(|(u, _)| u).collect(),
            probe: !probes.is_empty(),
        };
        let result = self.write(&all).await;
        let dones =
            |inserts: Vec<(Box<Message>, Done)>, updates: Vec<(AttemptUpdate, Done)>, probes| {
                inserts
                    .into_iter()
                    .map(|(_, d)| d)
                    .chain(updates.into_iter().map(|(_, d)| d))
                    .chain(probes)
                    .collect::<Vec<Done>>()
            };
        let single = usize::from(all.probe) + all.messages.len() + all.updates.len() <= 1;
        match result {
            Ok(()) => answer(dones(inserts, updates, probes), Ok(())),
            Err(err) if single => answer(dones(inserts, updates, probes), Err(err)),
            Err(err) => {
                // One bad row must not fail its neighbours: retry each write on its own, so
                // exactly the writes that cannot be stored are refused.
                tracing::warn!(error = %crate::error::chain(&err), "batch commit failed; retrying writes one by one");
                for (m, done) in inserts {
                    let one = Writes {
                        messages: vec![m.as_ref()],
                        ..Writes::default()
                    };
                    let _ = done.send(self.write(&one).await);
                }
                for (u, done) in updates {
                    let one = Writes {
                        updates: vec![&u],
                        ..Writes::default()
                    };
                    let _ = done.send(self.write(&one).await);
                }
                if !probes.is_empty() {
                    let one = Writes {
                        probe: true,
                        ..Writes::default()
                    };
                    let result = self.write(&one).await;
                    answer(probes, result);
                }
            }
        }
        closes
    }

    /// Commits `writes` in one transaction on the writer's connection, or fails having
    /// closed that connection (so nothing of this attempt can linger).
    async fn write(&mut self, writes: &Writes<'_>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let result = self.try_write(writes).await;
        let result = match result {
            Ok(()) => self.check_file(),
            Err(err) => {
                if let Some(mut conn) = self.conn.take() {
                    // Best effort; closing the connection ends the transaction regardless.
                    let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                    let _ = conn.close().await;
                }
                Err(err)
            }
        };
        self.health.record(&result, writes.is_probe_only());
        result
    }

    async fn try_write(&mut self, writes: &Writes<'_>) -> Result<(), StoreError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let mut conn = AnyConnection::connect_with(&self.options).await?;
                super::configure(&mut conn).await?;
                self.conn.insert(conn)
            }
        };
        // IMMEDIATE takes the write lock now, so a busy database fails here, before any
        // statement ran, rather than half-way through.
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        for chunk in writes.messages.chunks(INSERT_CHUNK) {
            insert_chunk(conn, chunk).await?;
        }
        apply_updates(conn, &writes.updates).await?;
        if writes.probe {
            sqlx::query("UPDATE health SET checked_at = $1, reserve = zeroblob($2) WHERE id = 1")
                .bind(now_ms())
                .bind(PROBE_BYTES)
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query("COMMIT").execute(&mut *conn).await?;
        Ok(())
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

async fn insert_chunk(conn: &mut AnyConnection, chunk: &[&Message]) -> Result<(), StoreError> {
    const COLS: usize = 13;
    let mut sql = String::from(
        "INSERT INTO messages (id, userid, title, content, status, attempts, last_error, \
         channel, created_at, updated_at, next_attempt_at, deadline_at, delivered_at) VALUES ",
    );
    for i in 0..chunk.len() {
        if i > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..COLS {
            if c > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("${}", i * COLS + c + 1));
        }
        sql.push(')');
    }
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for m in chunk {
        query = query
            .bind(m.id.clone())
            .bind(m.userid.clone())
            .bind(m.title.clone())
            .bind(m.content.clone())
            .bind(m.status.as_str())
            .bind(m.attempts)
            .bind(m.last_error.clone())
            .bind(m.channel.clone())
            .bind(m.created_at)
            .bind(m.updated_at)
            .bind(m.next_attempt_at)
            .bind(m.deadline_at)
            .bind(m.delivered_at);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

/// Applies attempt outcomes in arrival order. Successful deliveries (the bulk under load)
/// are grouped into `IN (…)` updates; the order between two updates of the same message is
/// kept because a message has at most one attempt in flight, so its updates are never in
/// one batch out of order.
async fn apply_updates(
    conn: &mut AnyConnection,
    updates: &[&AttemptUpdate],
) -> Result<(), StoreError> {
    let now = now_ms();
    let mut delivered: Vec<(&str, i64, &'static str)> = Vec::new();
    for u in updates {
        match u {
            AttemptUpdate::Delivered {
                id,
                attempts,
                channel,
            } => delivered.push((id, *attempts, channel)),
            AttemptUpdate::Retry {
                id,
                attempts,
                error,
                next_attempt_at,
            } => {
                sqlx::query(
                    "UPDATE messages SET attempts = $1, last_error = $2, next_attempt_at = $3, \
                     updated_at = $4 WHERE id = $5 AND status = 'queued'",
                )
                .bind(*attempts)
                .bind(error.as_str())
                .bind(*next_attempt_at)
                .bind(now)
                .bind(id.as_str())
                .execute(&mut *conn)
                .await?;
            }
            AttemptUpdate::Failed {
                id,
                attempts,
                error,
            } => {
                sqlx::query(
                    "UPDATE messages SET status = 'failed', attempts = $1, last_error = $2, \
                     updated_at = $3 WHERE id = $4 AND status = 'queued'",
                )
                .bind(*attempts)
                .bind(error.as_str())
                .bind(now)
                .bind(id.as_str())
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    // Group by (attempts, channel) so each statement sets one set of values.
    delivered.sort_by_key(|(_, attempts, channel)| (*attempts, *channel));
    for group in delivered.chunk_by(|a, b| a.1 == b.1 && a.2 == b.2) {
        let Some(&(_, attempts, channel)) = group.first() else {
            continue;
        };
        for chunk in group.chunks(UPDATE_CHUNK) {
            let mut sql = String::from(
                "UPDATE messages SET status = 'delivered', attempts = $1, channel = $2, \
                 last_error = NULL, updated_at = $3, delivered_at = $3 WHERE id IN (",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("${}", i + 4));
            }
            sql.push(')');
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(attempts)
                .bind(channel)
                .bind(now);
            for (id, _, _) in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut *conn).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn many_rows_commit_in_one_multi_row_insert_without_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = Store::connect(&url).await.unwrap();
        let mut writer = Writer {
            options: url.parse().unwrap(),
            conn: None,
            file: None,
            health: Arc::default(),
        };
        let now = now_ms();
        let messages: Vec<Message> = (0..(INSERT_CHUNK * 2 + 3))
            .map(|i| {
                Message::new_queued(
                    format!("m{i:03}"),
                    "alice".into(),
                    Some(format!("t{i}")),
                    Some(format!("c{i}")),
                    now,
                    now + 1000,
                )
            })
            .collect();
        let writes = Writes {
            messages: messages.iter().collect(),
            ..Writes::default()
        };
        // Called directly: no one-by-one retry could hide a broken statement.
        writer.write(&writes).await.unwrap();
        for m in &messages {
            let stored = store.message(&m.id).await.unwrap().unwrap();
            assert_eq!(stored.title, m.title);
            assert_eq!(stored.content, m.content);
        }
        if let Some(conn) = writer.conn.take() {
            conn.close().await.unwrap();
        }
        store.close().await;
    }
}
