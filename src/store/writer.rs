//! Group commit: one thread owns outbox writes and commits whatever has queued up while
//! the previous commit was on its way to disk in a single transaction.
//!
//! With one fsync costing ~0.5–2 ms, committing each message alone caps the service at a
//! few hundred messages a second; batching makes the fsync cost per message shrink as load
//! grows, while each caller still waits for *its* row to be durable.
//!
//! The writer keeps one connection of its own, through a [`Backend`] per engine
//! (`sqlite.rs`: rusqlite called directly on the writer's thread; `postgres.rs`: a native
//! sqlx connection driven by the thread's own runtime). The SQL is written once here; the
//! few places where the engines differ are [`Dialect`]'s. After *any* error inside a
//! transaction the connection is closed, not reused: SQLite may or may not have rolled the
//! transaction back by itself (a failed `COMMIT` on a full disk leaves it open; an I/O
//! error may end it), and a connection that still holds a transaction turns every later
//! `BEGIN` into a savepoint whose "commit" is never durable — and holds the write lock
//! against everyone else. Closing the connection ends whatever is still open; the next
//! batch starts on a fresh one.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::fanout::{self, Fanout};
use super::group_sends::GroupSend;
use super::sends::{Recorded, SendLog};
use super::{Arrivals, Attachment, Held, Message, MessageStatus, StoreError};
use crate::domain::{ChannelName, MessageId, PushToken, Route, UserId};
use crate::supervise::{FaultPoint, Supervisor};
use crate::time::UnixMillis;

/// Upper bound on operations per transaction (keeps latency of one batch bounded).
const MAX_BATCH: usize = 1024;
/// Rows per multi-row INSERT (31 columns each; SQLite allows 32,766 parameters,
/// PostgreSQL 65,535).
const INSERT_CHUNK: usize = 64;
/// IDs per `UPDATE … WHERE id IN (…)`.
const UPDATE_CHUNK: usize = 64;
/// Bytes a health probe writes: more than the largest message `/send` accepts (64 KiB of
/// content plus a title), so a probe that commits means any message could be stored.
const PROBE_BYTES: i64 = 80 * 1024;
/// After a chunk of planned copies failed to commit, the next try waits this long.
const FANOUT_RETRY: Duration = Duration::from_secs(1);
/// While such a pause runs, the writer looks for other writes this often.
const FANOUT_POLL: Duration = Duration::from_millis(5);

/// The outcome of one delivery attempt, to be recorded. Every variant but `Delivered`
/// without `log` also adds the attempt to the message's history (`attempts`): the common
/// case, a message delivered at its first try on its first channel, costs no extra row —
/// its history is its `channel` and `delivered_at`.
#[derive(Debug, Clone)]
pub enum AttemptUpdate {
    /// Delivered: the message is done. `channel` delivered it; `earlier`: the channels
    /// that delivered it before, as stored (a `deliver_all` message: the message's
    /// `channel` becomes `earlier,channel`). `log`: also add this attempt to the history
    /// (`deliver_all` messages keep one entry per channel). Delivered counts against the
    /// member's limits on `channel`, at the time it is recorded (see `count_delivered`).
    Delivered {
        id: MessageId,
        attempts: i64,
        channel: ChannelName,
        earlier: Option<String>,
        log: Option<ChannelName>,
    },
    /// Sent as part of a digest, which counts once against the member's limits.
    DigestDelivered {
        digest: Digest,
        channel: ChannelName,
        sent_at: UnixMillis,
    },
    /// One part of a message sent part by part (its text, or one of its attachments) was
    /// delivered on `channel`, and more are to come: the message stays queued, due now,
    /// with `parts_done` parts delivered and a retry window of its own for the next part,
    /// ending at `deadline_at`. The history gets a `delivered` attempt saying which part
    /// (`note`, e.g. `part 1 of 3 (text)`), and the send counts against the member's
    /// limits on the channel, like any other.
    PartDelivered {
        id: MessageId,
        attempts: i64,
        channel: ChannelName,
        /// Parts delivered before this one: applied only if the row still says so.
        parts_before: i64,
        note: String,
        deadline_at: UnixMillis,
    },
    /// A transient failure on `channel`: tried again at `next_attempt_at`.
    Retry {
        id: MessageId,
        attempts: i64,
        channel: ChannelName,
        error: String,
        next_attempt_at: UnixMillis,
    },
    /// `channel` gave up and no channel is left: the message is done — `failed`, unless an
    /// earlier channel of a `deliver_all` route delivered it.
    Failed {
        id: MessageId,
        attempts: i64,
        channel: ChannelName,
        error: String,
        /// The channel may have sent it and cannot say ([`ChannelError::Unconfirmed`]):
        /// the history says `unconfirmed`, not `failed`.
        ///
        /// [`ChannelError::Unconfirmed`]: crate::delivery::ChannelError::Unconfirmed
        unconfirmed: bool,
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
        deadline_at: UnixMillis,
        /// As for [`AttemptUpdate::Failed`].
        unconfirmed: bool,
    },
}

/// A queued message whose retry window on a channel that is down had ended when the
/// channel's latest failed try started, as read by [`Store::overdue`](super::Store::overdue).
#[derive(Debug, Clone)]
pub struct OverdueMessage {
    pub id: MessageId,
    pub userid: UserId,
    pub route: Route,
    pub attempts: i64,
    pub deadline_at: UnixMillis,
    /// An earlier channel delivered it (a `deliver_all` message).
    pub delivered_before: bool,
    /// The route as stored when it was read: the move applies only if it still is.
    pub(super) stored_route: String,
}

/// Where an overdue message goes, as the caller decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveOn {
    /// On to `route` (the rest of its route), due now, its new window ending at
    /// `deadline_at`.
    Next {
        route: Route,
        deadline_at: UnixMillis,
    },
    /// No channel is left: it ends — counted `failed` when no earlier channel delivered it.
    End { failed: bool },
}

/// One digest: a WeCom message that carried several waiting messages.
#[derive(Debug, Clone)]
pub struct Digest {
    pub id: String,
    pub userid: UserId,
    pub body: String,
    pub carried: Vec<MessageId>,
    /// The key of the digest's page, which lists every carried message in full.
    pub page_key: String,
}

/// Writes to the lane table, committed in the same group commit as everything else (on
/// SQLite a second writer would only wait for the writer's lock).
#[derive(Debug, Clone)]
pub enum LaneOp {
    /// Claim up to `limit` due lanes whose lease has expired; answers `Claimed`.
    Claim {
        owner: String,
        now: UnixMillis,
        lease_until: UnixMillis,
        limit: usize,
    },
    /// Extend the owner's claims on these lanes.
    Renew {
        owner: String,
        userids: Vec<UserId>,
        lease_until: UnixMillis,
    },
    /// Give a lane up until `due_at`.
    Release {
        owner: String,
        userid: UserId,
        due_at: UnixMillis,
    },
    /// Delete the owner's lane if nothing is queued in it any more; answers `Finished`.
    Finish { owner: String, userid: UserId },
    /// Give up every claim of `owner` (start-up, shutdown); answers `Count`.
    ReleaseAll { owner: String },
    /// Overdue messages on `channel` move as decided, each with an attempt saying `error`
    /// — those still as they were read and in lanes nobody holds at `now` (another
    /// instance, or the lane's worker, may have moved them since); answers `Overdue`.
    Overdue {
        channel: ChannelName,
        now: UnixMillis,
        error: String,
        moves: Vec<(OverdueMessage, MoveOn)>,
    },
    /// The lane becomes due by `due_at` if nobody holds it; answers `Count`.
    DueBy { userid: UserId, due_at: UnixMillis },
    /// Every lane nobody holds becomes due by `due_at`, after the releases of the same
    /// batch; answers `Count`.
    AllDueBy { due_at: UnixMillis },
    /// Open lanes for queued messages that have none (a safety net); answers `Count`.
    OpenMissing { now: UnixMillis },
    /// Forget send times older than `before`; answers `Count`.
    PruneSends { before: UnixMillis },
}

/// Writes of scheduled messages: releasing them when due, holding, re-timing and
/// cancelling (issue 21). Committed by the same writer as the lanes they open.
#[derive(Debug, Clone)]
pub enum ScheduleOp {
    /// Up to `limit` scheduled messages due by `now` (`deliver_at <= now`) become queued,
    /// earliest first and in acceptance order among those due together, keeping their
    /// acceptance numbers (each takes its place in its lane by acceptance order), with a
    /// retry window ending at `deadline_at`; their lanes are opened or made due now.
    /// Answers `Released`, or `ReleaseBusy` when another instance is releasing.
    Release {
        now: UnixMillis,
        limit: usize,
        deadline_at: UnixMillis,
    },
    /// A queued message becomes scheduled until `deliver_at`, held for `held`; answers
    /// `Count` (0: it was not queued any more).
    Hold {
        id: MessageId,
        deliver_at: UnixMillis,
        held: Held,
    },
    /// The member's messages held for `held` become due at `deliver_at`; answers `Count`.
    Retime {
        userid: UserId,
        held: Held,
        deliver_at: UnixMillis,
    },
    /// The member's message `id` is cancelled if it has not gone out and no attempt can be
    /// in flight (scheduled, or queued in a lane nobody holds at `now`); answers
    /// `Cancelled`.
    Cancel {
        userid: UserId,
        id: MessageId,
        now: UnixMillis,
    },
    /// The member leaves group `group_id`, or is removed from it by `by_owner` (who must
    /// still own it), in one transaction: the membership goes; an owner's leaving hands
    /// the group to its longest-standing member when no owner is left, the last member's
    /// deletes it; and the member's copies of the group's messages that nothing of went out
    /// yet (scheduled, or queued with no part delivered) become `left`, never to be sent —
    /// a worker holding the lane reads it again. Answers `Left`.
    ///
    /// Nothing can come between the two: a crash leaves both or neither, and a group send
    /// committed by this writer before it has its copy marked, after it (see
    /// [`Write::Group`]) has none to send. On PostgreSQL the group's row is locked first
    /// (`FOR UPDATE`), which a group send on another instance locks too (`FOR SHARE`)
    /// before it reads the members: one of the two waits for the other's commit.
    LeaveGroup {
        group_id: String,
        userid: UserId,
        by_owner: Option<UserId>,
        now: UnixMillis,
    },
}

/// What [`ScheduleOp::LeaveGroup`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaveOutcome {
    /// The member is out; `new_owner` took the group over, or it was `deleted` (the last
    /// member left); `skipped` of their copies became `left`.
    Left {
        new_owner: Option<UserId>,
        deleted: bool,
        skipped: u64,
    },
    /// The member is not in the group (any more), or the group is gone.
    NotMember,
    /// `by_owner` does not own the group (any more): nothing changed.
    NotOwner,
}

/// What [`ScheduleOp::Cancel`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was `was` (scheduled or queued) and is cancelled now: it will never be sent.
    Cancelled { was: MessageStatus },
    /// The member has no such message.
    NotFound,
    /// It is delivered, failed or cancelled already.
    Final(MessageStatus),
    /// Its lane is being worked on right now: an attempt may be in flight.
    InFlight,
    /// Part of it went out already (its text before its files, or one channel of
    /// `channel=all`): what went out cannot be taken back.
    PartlyDelivered,
}

/// What a write answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Done,
    /// An insert whose sender's token (see [`Write::Insert`]) was replaced before it
    /// could commit: nothing was stored.
    Revoked,
    Claimed(Vec<UserId>),
    Finished(bool),
    Count(u64),
    Overdue(Overdue),
    /// The members whose scheduled messages were released (one entry per message).
    Released(Vec<UserId>),
    /// Another instance is releasing scheduled messages right now: nothing was released.
    ReleaseBusy,
    Cancelled(CancelOutcome),
    /// [`ScheduleOp::LeaveGroup`]: what happened to `userid`'s membership.
    Left {
        userid: UserId,
        outcome: LeaveOutcome,
    },
}

/// What [`LaneOp::Overdue`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overdue {
    /// Messages moved: on to their next channel, or ended.
    pub handled: u64,
    /// Of those, messages that ended failed (no channel left, none delivered them).
    pub failed: u64,
}

type Done = oneshot::Sender<Result<Reply, StoreError>>;

/// What [`Write::Group`] commits.
pub(super) struct GroupWrite {
    pub(super) send: GroupSend,
    /// One per recipient, in the group's join order, with its images and files (the same
    /// blobs for every copy; each copy's kinds as its own route needs them).
    pub(super) copies: Vec<(Message, Vec<Attachment>)>,
    /// The copies as a plan ([`fanout::encode`]): then only the `group_sends` row is
    /// committed with the acceptance, and the copies after it, a chunk at a time.
    pub(super) plan: Option<String>,
}

/// What [`Write::Expand`] commits: copies `start..start + copies.len()` of a planned group
/// message, if `group_sends.expanded` is still `start` (else nothing, and `found` says what
/// the count is: another instance wrote them, or the plan is gone).
#[derive(Debug)]
pub(super) struct Expand {
    send_id: MessageId,
    group_id: String,
    start: usize,
    copies: Vec<Message>,
    /// Copies in the plan in all.
    total: usize,
    /// Set when the chunk was not written: the count found (`None`: no plan any more).
    found: Option<Option<usize>>,
}

/// One write as queued for the writer.
enum Write {
    /// A new message and its images and files, committed together. With a push token
    /// (PostgreSQL, where the sender was found by a token this process keeps in memory):
    /// stored only if that token is still the member's when the insert runs, else
    /// answered [`Reply::Revoked`] — another instance may have rotated it.
    Insert(Box<Message>, Vec<Attachment>, Option<PushToken>),
    /// A group message (issue 29): its `group_sends` row and every member's copy, each
    /// with the same images and files (rows naming the same blobs) and its lane,
    /// committed together.
    Group(Box<GroupWrite>),
    /// The next chunk of a planned group message's copies (see [`fanout`]): the writer's
    /// own work, queued by nobody.
    Expand(Box<Expand>),
    Update(AttemptUpdate),
    Lane(LaneOp),
    Schedule(ScheduleOp),
    /// A real write (the `health` row, as large as the largest message), to learn whether
    /// the database takes writes now.
    Probe,
}

enum Op {
    Write(Write, Done),
    /// Commit what is queued, close the connection and stop (writes after this fail
    /// with [`StoreError::WriterGone`]).
    Close(oneshot::Sender<()>),
    /// Planned group messages whose copies are not all written (found in the database at
    /// start, or left by an instance that stopped): the writer goes on with those it does
    /// not hold already.
    Resume(Vec<Fanout>),
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

/// A change of [`WriteHealth`] worth a log line.
enum HealthChange {
    Recovered(Failure),
    Failing(String),
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
        // Decided under the lock, logged after it: a log write that blocks or fails must
        // never hold up (or poison) what every write and `/healthz` need.
        let change = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            match error {
                None => {
                    state.last_ok = Some(now);
                    let clears = state
                        .failure
                        .as_ref()
                        .is_some_and(|f| !probe || f.latest.elapsed() >= FAILURE_MEMORY);
                    if clears {
                        state.failure.take().map(HealthChange::Recovered)
                    } else {
                        None
                    }
                }
                Some(err) => {
                    let error = crate::error::chain(err);
                    let (since, change) = match &state.failure {
                        Some(f) => (f.since, None),
                        None => (now, Some(HealthChange::Failing(error.clone()))),
                    };
                    state.failure = Some(Failure {
                        since,
                        latest: now,
                        error,
                    });
                    change
                }
            }
        };
        match change {
            Some(HealthChange::Recovered(f)) => tracing::info!(
                failing_for = ?f.since.elapsed(),
                last_error = %f.error,
                "database writes work again"
            ),
            Some(HealthChange::Failing(error)) => tracing::error!(
                error = %error,
                "database writes are failing; /send answers 503 until they work again"
            ),
            None => {}
        }
    }

    /// Transactions committed since start.
    pub(super) fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn status(&self) -> WriteStatus {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
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

    pub(super) async fn insert(
        &self,
        message: Message,
        attachments: Vec<Attachment>,
        verify: Option<PushToken>,
    ) -> Result<(), StoreError> {
        match self
            .call(Write::Insert(Box::new(message), attachments, verify))
            .await?
        {
            Reply::Revoked => Err(StoreError::TokenRevoked),
            _ => Ok(()),
        }
    }

    pub(super) async fn insert_group(&self, group: GroupWrite) -> Result<(), StoreError> {
        self.call(Write::Group(Box::new(group))).await.map(drop)
    }

    pub(super) async fn update(&self, update: AttemptUpdate) -> Result<(), StoreError> {
        self.call(Write::Update(update)).await.map(drop)
    }

    pub(super) async fn lane(&self, op: LaneOp) -> Result<Reply, StoreError> {
        self.call(Write::Lane(op)).await
    }

    pub(super) async fn schedule(&self, op: ScheduleOp) -> Result<Reply, StoreError> {
        self.call(Write::Schedule(op)).await
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

    /// Hands planned group messages found unfinished to the writer (see [`Op::Resume`]).
    pub(super) fn resume(&self, fanouts: Vec<Fanout>) -> Result<(), StoreError> {
        if fanouts.is_empty() {
            return Ok(());
        }
        self.tx
            .send(Op::Resume(fanouts))
            .map_err(|_| StoreError::WriterGone)
    }
}

pub(super) fn spawn(
    backend: Box<dyn Backend>,
    arrivals: Arc<Arrivals>,
    sends: Option<Arc<SendLog>>,
    supervisor: Supervisor,
) -> WriterHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let health = Arc::new(WriteHealth::default());
    let writer = Writer {
        db: backend,
        health: Arc::clone(&health),
        arrivals,
        sends,
        supervisor,
        queue: None,
        fanout: VecDeque::new(),
    };
    // A thread of its own, calling the database directly: a batch is a handful of
    // statements, and through an async driver on the shared runtime each was a round trip
    // to the connection's thread, which on a busy machine waited for a free core
    // (measured on SQLite: ~0.9 ms of a 1.5 ms batch).
    let spawned = std::thread::Builder::new()
        .name("pushbot-writer".into())
        .spawn(move || writer.run(rx));
    if let Err(err) = spawned {
        // Writes then fail with WriterGone (503) and /healthz says so.
        tracing::error!(error = %err, "cannot start the storage writer thread");
    }
    WriterHandle { tx, health }
}

/// A value bound to (or read from) one of the writer's statements. Typed even when null:
/// PostgreSQL wants to know what a null parameter is. Text borrows from the write it
/// belongs to (a message's content is not copied to be bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value<'a> {
    Int(Option<i64>),
    Text(Option<Cow<'a, str>>),
    /// An array of integers (PostgreSQL only: `$n::int8[]`).
    Ints(Vec<Option<i64>>),
    /// An array of texts (PostgreSQL only: `$n::text[]`).
    Texts(Vec<Option<Cow<'a, str>>>),
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Self::Int(Some(v))
    }
}

/// A time is bound as its column value, unix milliseconds.
impl From<UnixMillis> for Value<'_> {
    fn from(v: UnixMillis) -> Self {
        Self::Int(Some(v.as_millis()))
    }
}

impl From<Option<UnixMillis>> for Value<'_> {
    fn from(v: Option<UnixMillis>) -> Self {
        Self::Int(v.map(UnixMillis::as_millis))
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Self::Text(Some(Cow::Borrowed(v)))
    }
}

impl From<String> for Value<'_> {
    fn from(v: String) -> Self {
        Self::Text(Some(Cow::Owned(v)))
    }
}

impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Self::Text(v.map(Cow::Borrowed))
    }
}

impl<'a> From<&'a Option<String>> for Value<'a> {
    fn from(v: &'a Option<String>) -> Self {
        Self::Text(v.as_deref().map(Cow::Borrowed))
    }
}

/// Where engines differ in the writer's SQL (everything else is written once, with `?N`
/// placeholders that the PostgreSQL backend numbers as `$N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Appended to a `SELECT` of rows this transaction is about to change: on PostgreSQL,
    /// rows another instance is changing right now are skipped instead of waited for (and
    /// then changed twice). SQLite has one writer at a time and needs nothing.
    fn skip_locked(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// Appended to a `SELECT` of rows this transaction decides on and then changes, where
    /// waiting for another instance is right (a cancel must see a claim that is being
    /// committed). SQLite has one writer at a time and needs nothing.
    fn lock_rows(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR UPDATE",
        }
    }

    /// A statement that takes the instances' release lock for the rest of the transaction
    /// and answers `1` if it got it, `0` if another instance holds it: on PostgreSQL, where
    /// several instances release scheduled messages (a key of its own, in the two-integer
    /// key space, apart from the destinations' turns). SQLite has one writer: none.
    fn release_lock(self) -> Option<&'static str> {
        match self {
            Self::Sqlite => None,
            Self::Postgres => Some(
                "SELECT CAST(CASE WHEN pg_try_advisory_xact_lock(21, 1) THEN 1 ELSE 0 END \
                 AS BIGINT)",
            ),
        }
    }

    /// Deletes send times before `?1`. SQLite's `sends` has no index on them (it is
    /// appended to in time order and only loaded whole at start, see `store/sends.rs`):
    /// the rows before the first one at or after `?1`, in insertion order — a send
    /// recorded late (a digest's) may stay until the next prune. PostgreSQL's is indexed.
    fn prune_sends_sql(self) -> &'static str {
        match self {
            Self::Sqlite => {
                "DELETE FROM sends WHERE rowid < COALESCE(\
                 (SELECT rowid FROM sends WHERE sent_at >= ?1 ORDER BY rowid LIMIT 1), \
                 9223372036854775807)"
            }
            Self::Postgres => "DELETE FROM sends WHERE sent_at < ?1",
        }
    }

    /// Rewrites the health row with `?2` bytes.
    fn probe_sql(self) -> &'static str {
        match self {
            Self::Sqlite => {
                "UPDATE health SET checked_at = ?1, reserve = zeroblob(?2) WHERE id = 1"
            }
            Self::Postgres => {
                "UPDATE health SET checked_at = ?1, \
                 reserve = decode(repeat('00', CAST(?2 AS INTEGER)), 'hex') WHERE id = 1"
            }
        }
    }
}

/// One engine's side of the writer: a connection of its own, transactions, statements.
/// After any error the writer calls [`Backend::discard`]: the connection is closed rather
/// than reused, since it may still hold a transaction whose fate is unknown.
pub(super) trait Backend: Send + 'static {
    fn dialect(&self) -> Dialect;
    /// Starts a transaction, opening a connection first when there is none.
    fn begin(&mut self) -> Result<(), StoreError>;
    /// Commits; `Ok` only when the transaction is durably committed. `more`: writes are
    /// waiting already (a backend may open the next transaction in the same round trip).
    fn commit(&mut self, more: bool) -> Result<(), StoreError>;
    /// Ends whatever is open and drops the connection (after an error).
    fn discard(&mut self);
    /// Closes the connection for good (the writer stops).
    fn close(&mut self);
    /// Runs a statement; answers the rows it changed.
    fn exec(&mut self, sql: &str, args: &[Value<'_>]) -> Result<u64, StoreError>;
    /// Runs a statement that returns rows.
    fn rows(
        &mut self,
        sql: &str,
        args: &[Value<'_>],
    ) -> Result<Vec<Vec<Value<'static>>>, StoreError>;
    /// `n` acceptance numbers, increasing, unique among everything ever committed to this
    /// database (inside the current transaction).
    fn seqs(&mut self, n: usize) -> Result<Vec<i64>, StoreError>;
    /// After a commit: whether what was committed is where the next start will look.
    fn check_durable(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether `err` is the idempotency index refusing a second message with a key.
    fn is_duplicate_key(&self, err: &StoreError) -> bool;
}

struct Writer {
    db: Box<dyn Backend>,
    health: Arc<WriteHealth>,
    /// Told about new messages after they are committed.
    arrivals: Arc<Arrivals>,
    /// The send history in memory (SQLite): told about sends once they are committed,
    /// before anyone waiting for the commit is answered.
    sends: Option<Arc<SendLog>>,
    /// Told when the writer fails for good (and holds its test hook).
    supervisor: Supervisor,
    /// What is queued for it (while it serves): a commit with more waiting may open the
    /// next transaction in the same round trip (see [`Backend::commit`]).
    queue: Option<mpsc::UnboundedReceiver<Op>>,
    /// Planned group messages whose copies are still to be written, oldest first.
    fanout: VecDeque<Fanout>,
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
    /// Serves writes until closed. A panic (a bug) ends the thread: the writes queued and
    /// in hand are answered with [`StoreError::WriterGone`] (503, nothing promised), the
    /// connection is dropped, and the process is told to stop (see [`crate::supervise`]).
    fn run(mut self, rx: mpsc::UnboundedReceiver<Op>) {
        let supervisor = self.supervisor.clone();
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve(rx)));
        if let Err(payload) = served {
            supervisor.fatal(
                "the storage writer",
                &format!(
                    "it panicked ({}); writes are refused from now on",
                    crate::supervise::panic_message(payload.as_ref())
                ),
            );
        }
    }

    fn serve(&mut self, rx: mpsc::UnboundedReceiver<Op>) {
        let mut closed = Vec::new();
        self.queue = Some(rx);
        // Everything that queued while the previous batch was committing is the next batch
        // (with the next chunk of planned copies, when there are some).
        while closed.is_empty() {
            let wait = self.fanout_wait();
            let Some(rx) = self.queue.as_mut() else {
                break;
            };
            let first = match wait {
                None => rx.blocking_recv(),
                Some(wait) => match rx.try_recv() {
                    Ok(op) => Some(op),
                    Err(mpsc::error::TryRecvError::Empty) if wait.is_zero() => {
                        // Nothing else to do: a chunk alone.
                        self.commit_batch(Vec::new());
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {
                        std::thread::sleep(wait.min(FANOUT_POLL));
                        continue;
                    }
                    // Every handle is gone: what is planned is resumed at the next start.
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                },
            };
            let Some(first) = first else {
                break;
            };
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
                    Op::Resume(fanouts) => self.resume(fanouts),
                }
            }
            self.supervisor.faults().panic_at(FaultPoint::WriterPanic);
            self.commit_batch(writes);
        }
        drop(self.queue.take());
        self.db.close();
        tracing::debug!(commits = self.health.commits(), "storage writer stopped");
        for done in closed {
            let _ = done.send(());
        }
    }

    /// `None` when no planned copies wait; else how long until the next chunk may be
    /// written (zero: now; more after a chunk failed).
    fn fanout_wait(&self) -> Option<Duration> {
        let next = self.fanout.front()?;
        Some(next.retry_at.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(Instant::now())
        }))
    }

    /// Takes on planned group messages this writer does not hold yet.
    fn resume(&mut self, fanouts: Vec<Fanout>) {
        for fanout in fanouts {
            if fanout.is_done() || self.fanout.iter().any(|f| f.send_id == fanout.send_id) {
                continue;
            }
            tracing::info!(id = %fanout.send_id, written = fanout.next, copies = fanout.copies.len(), "writing the rest of a group message's copies");
            self.fanout.push_back(fanout);
        }
    }

    /// The next chunk of planned copies to write, if one is due.
    fn next_chunk(&self) -> Option<Write> {
        let next = self.fanout.front()?;
        if next.retry_at.is_some_and(|at| at > Instant::now()) {
            return None;
        }
        let end = next.copies.len().min(next.next + fanout::CHUNK);
        Some(Write::Expand(Box::new(Expand {
            send_id: next.send_id.clone(),
            group_id: next.group_id.clone(),
            start: next.next,
            copies: next.copies.get(next.next..end)?.to_vec(),
            total: next.copies.len(),
            found: None,
        })))
    }

    /// A chunk committed (or found written by someone else): on to the next one.
    fn chunk_committed(&mut self, chunk: &Expand) {
        let Some(i) = self.fanout.iter().position(|f| f.send_id == chunk.send_id) else {
            return;
        };
        let next = match chunk.found {
            None => Some(chunk.start + chunk.copies.len()),
            Some(found) => found,
        };
        match next {
            Some(next) if next < chunk.total => {
                if let Some(f) = self.fanout.get_mut(i) {
                    f.next = next;
                    f.retry_at = None;
                }
            }
            _ => {
                self.fanout.remove(i);
            }
        }
    }

    /// A group message committed: its copies go to their lanes, or, when it was planned,
    /// are the writer's to write next.
    fn group_committed(&mut self, group: GroupWrite, inserted: &mut Vec<Message>) {
        let copies = group.copies.into_iter().map(|(m, _)| m);
        if group.plan.is_some() {
            let send = group.send;
            self.fanout
                .push_back(Fanout::new(send.id, send.group_id, copies.collect(), 0));
        } else {
            inserted.extend(copies);
        }
    }

    /// The outcome of a chunk: its copies go to their lanes when it was written.
    fn chunk_done(&mut self, chunk: Expand, committed: bool, inserted: &mut Vec<Message>) {
        if !committed {
            self.chunk_failed(&chunk);
            return;
        }
        self.chunk_committed(&chunk);
        if chunk.found.is_none() {
            inserted.extend(chunk.copies);
        }
    }

    /// A chunk could not be committed: tried again after a pause (the database is failing;
    /// the plan is durable, so nothing is lost meanwhile).
    fn chunk_failed(&mut self, chunk: &Expand) {
        if let Some(f) = self.fanout.iter_mut().find(|f| f.send_id == chunk.send_id) {
            f.retry_at = Some(Instant::now() + FANOUT_RETRY);
        }
    }

    /// Commits one batch in one transaction; if that fails, each write on its own, so
    /// that exactly the writes that cannot be stored are refused.
    fn commit_batch(&mut self, mut batch: Vec<(Write, Done)>) {
        // Nobody waits for a chunk: its outcome is the writer's own (see `chunk_committed`).
        if let Some(chunk) = self.next_chunk() {
            batch.push((chunk, oneshot::channel().0));
        }
        if batch.is_empty() {
            return;
        }
        let writes: Vec<&mut Write> = batch.iter_mut().map(|(w, _)| w).collect();
        let res = self.write(writes);
        let mut inserted = Vec::new();
        let mut released = Vec::new();
        match res {
            Ok(replies) => {
                for ((write, done), reply) in batch.into_iter().zip(replies) {
                    if let Reply::Released(userids) = &reply {
                        released.extend(userids.iter().cloned());
                    }
                    if let Some(userid) = skipped_lane(&reply) {
                        released.push(userid.clone());
                    }
                    let stored = reply != Reply::Revoked;
                    let _ = done.send(Ok(reply));
                    match write {
                        Write::Insert(m, ..) if stored => inserted.push(*m),
                        Write::Group(g) => self.group_committed(*g, &mut inserted),
                        Write::Expand(e) => self.chunk_done(*e, true, &mut inserted),
                        _ => {}
                    }
                }
            }
            // One write, or a file that is gone (no row can be made durable by a retry: it
            // would only meet the rows just committed into the deleted file).
            Err(err) if batch.len() == 1 || matches!(err, StoreError::FileReplaced(_)) => {
                for (write, _) in &batch {
                    if let Write::Expand(e) = write {
                        self.chunk_failed(e);
                    }
                }
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
                    match &result {
                        Ok(Reply::Released(userids)) => released.extend(userids.iter().cloned()),
                        Ok(reply) => released.extend(skipped_lane(reply).cloned()),
                        Err(_) => {}
                    }
                    let ok = result.as_ref().is_ok_and(|r| *r != Reply::Revoked);
                    let _ = done.send(result);
                    match (ok, write) {
                        (true, Write::Insert(m, ..)) => inserted.push(*m),
                        (true, Write::Group(g)) => self.group_committed(*g, &mut inserted),
                        (ok, Write::Expand(e)) => self.chunk_done(*e, ok, &mut inserted),
                        _ => {}
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
        // A scheduled message is in no lane: nobody is told about it until it is released.
        inserted.retain(|m| m.status == MessageStatus::Queued);
        if !inserted.is_empty() {
            self.arrivals.committed(inserted);
        }
        if !released.is_empty() {
            self.arrivals.released(released);
        }
    }

    /// Commits `writes` in one transaction on the writer's connection, or fails having
    /// closed that connection (so nothing of this attempt can linger).
    fn write(&mut self, mut writes: Vec<&mut Write>) -> Result<Vec<Reply>, StoreError> {
        let probe_only = writes.iter().all(|w| matches!(w, Write::Probe));
        let result = match self
            .try_write(&mut writes)
            .and_then(|done| self.db.check_durable().map(|()| done))
        {
            Ok((replies, recorded)) => {
                if let Some(log) = &self.sends {
                    log.record(recorded);
                }
                Ok(replies)
            }
            // After a commit into a file that is gone, too: the connection still writes
            // into the deleted file, and a retry on it would "commit" the rows again there.
            Err(err) => {
                self.db.discard();
                Err(err)
            }
        };
        match &result {
            Ok(_) => self.health.record(None, probe_only),
            // A refused row (a repeated idempotency key) says nothing about the disk.
            Err(err) if err.is_unavailable() => self.health.record(Some(err), probe_only),
            Err(_) => {}
        }
        result.map_err(|err| {
            if self.db.is_duplicate_key(&err) {
                StoreError::DuplicateKey
            } else {
                err
            }
        })
    }

    /// Answers each write's reply and the sends the transaction recorded.
    fn try_write(
        &mut self,
        writes: &mut [&mut Write],
    ) -> Result<(Vec<Reply>, Vec<Recorded>), StoreError> {
        let db = &mut *self.db;
        db.begin()?;
        lock_group_rows(db, writes)?;
        let inserts: usize = writes
            .iter()
            .map(|w| match &**w {
                Write::Insert(..) => 1,
                Write::Group(g) if g.plan.is_none() => g.copies.len(),
                Write::Expand(e) if e.found.is_none() => e.copies.len(),
                _ => 0,
            })
            .sum();
        // PostgreSQL takes the numbers in the insert itself (see `insert_messages_pg`).
        let postgres = db.dialect() == Dialect::Postgres;
        // An alarm about another instance recorded in this transaction (PostgreSQL).
        let mut answered = None;
        // Inserts not stored: their sender's token was replaced (PostgreSQL).
        let mut revoked = Vec::new();
        let mut seqs = db.seqs(if postgres { 0 } else { inserts })?.into_iter();
        // Acceptance order is the order in which inserts reached the writer. A message to a
        // fixed address (a verification mail) goes to the front of its lane: negative
        // numbers sort before every sender's message, so a code is not held up behind a
        // backlog waiting for WeCom — the very situation in which a member binds an address.
        let mut number = |m: &mut Message, files: usize| -> Result<(), StoreError> {
            if !postgres {
                let seq = seqs
                    .next()
                    .ok_or_else(|| StoreError::Corrupt("too few sequence numbers".into()))?;
                m.seq = if m.address_to.is_some() { -seq } else { seq };
            }
            // What the lane worker reads to know whether to look for attachments.
            m.media_count = i64::try_from(files).unwrap_or(i64::MAX);
            Ok(())
        };
        for write in writes.iter_mut() {
            match &mut **write {
                Write::Insert(m, files, _) => number(m, files.len())?,
                Write::Group(g) if g.plan.is_none() => {
                    for (m, files) in &mut g.copies {
                        number(m, files.len())?;
                    }
                }
                Write::Expand(e) if e.found.is_none() => {
                    for m in &mut e.copies {
                        number(m, 0)?;
                    }
                }
                _ => {}
            }
        }
        if postgres && inserts > 0 {
            let given = {
                let mut messages: Vec<(&Message, Option<&PushToken>)> = Vec::with_capacity(inserts);
                for write in writes.iter() {
                    match &**write {
                        Write::Insert(m, _, verify) => messages.push((&**m, verify.as_ref())),
                        Write::Group(g) if g.plan.is_none() => {
                            messages.extend(g.copies.iter().map(|(m, _)| (m, None)));
                        }
                        Write::Expand(e) if e.found.is_none() => {
                            messages.extend(e.copies.iter().map(|m| (m, None)));
                        }
                        _ => {}
                    }
                }
                let (given, seen) = insert_messages_pg(db, &messages, self.arrivals.start_mark())?;
                if let Some((starts, alarmed)) = seen
                    && let Some(alarm) = self.arrivals.observe(starts, alarmed)
                {
                    db.exec(
                        "INSERT INTO instance_alarms (starts) VALUES (?1) ON CONFLICT DO NOTHING",
                        &[alarm.into()],
                    )?;
                    answered = Some(alarm);
                }
                given
            };
            let numbered = |m: &mut Message| -> Result<(), StoreError> {
                m.seq = *given.get(m.id.as_str()).ok_or_else(|| {
                    StoreError::Corrupt(format!("no acceptance number for {}", m.id))
                })?;
                Ok(())
            };
            for (i, write) in writes.iter_mut().enumerate() {
                match &mut **write {
                    // Not stored: its sender's token is no longer theirs.
                    Write::Insert(m, _, Some(_)) if !given.contains_key(m.id.as_str()) => {
                        revoked.push(i);
                    }
                    Write::Insert(m, ..) => numbered(m)?,
                    Write::Group(g) if g.plan.is_none() => {
                        g.copies.iter_mut().try_for_each(|(m, _)| numbered(m))?;
                    }
                    Write::Expand(e) if e.found.is_none() => {
                        e.copies.iter_mut().try_for_each(numbered)?;
                    }
                    _ => {}
                }
            }
        }
        let mut messages = Vec::new();
        let mut attachments = Vec::new();
        for (i, write) in writes.iter().enumerate() {
            match &**write {
                Write::Insert(..) if revoked.contains(&i) => {}
                Write::Insert(m, files, _) => {
                    messages.push(&**m);
                    attachments
                        .extend(files.iter().enumerate().map(|(i, a)| (m.id.as_str(), i, a)));
                }
                Write::Group(g) => {
                    insert_group_send(db, &g.send, g.plan.as_deref())?;
                    if g.plan.is_none() {
                        for (m, files) in &g.copies {
                            messages.push(m);
                            attachments.extend(
                                files.iter().enumerate().map(|(i, a)| (m.id.as_str(), i, a)),
                            );
                        }
                    }
                }
                Write::Expand(e) if e.found.is_none() => {
                    let written = e.start + e.copies.len();
                    db.exec(
                        "UPDATE group_sends SET expanded = ?2, \
                         plan = CASE WHEN ?2 >= ?3 THEN NULL ELSE plan END WHERE id = ?1",
                        &[
                            e.send_id.as_str().into(),
                            i64::try_from(written).unwrap_or(i64::MAX).into(),
                            i64::try_from(e.total).unwrap_or(i64::MAX).into(),
                        ],
                    )?;
                    messages.extend(e.copies.iter());
                }
                _ => {}
            }
        }
        if !postgres {
            for chunk in pow2_chunks(&messages, INSERT_CHUNK) {
                insert_chunk(db, chunk)?;
            }
        }
        for chunk in pow2_chunks(&attachments, INSERT_CHUNK) {
            insert_attachments(db, chunk)?;
        }
        // Messages that ask to be acknowledged (few): their `acks` rows, with them.
        for m in messages.iter().filter(|m| m.ack.is_some()) {
            insert_ack(db, m)?;
        }
        if !postgres {
            // A scheduled message opens no lane: it holds nothing up until it is released.
            let queued: Vec<&str> = messages
                .iter()
                .filter(|m| m.status == MessageStatus::Queued)
                .map(|m| m.userid.as_str())
                .collect();
            open_lanes(db, queued)?;
        }
        let updates: Vec<&AttemptUpdate> = writes
            .iter()
            .filter_map(|w| match &**w {
                Write::Update(u) => Some(u),
                _ => None,
            })
            .collect();
        let recorded = apply_updates(db, &updates)?;
        let mut replies = vec![Reply::Done; writes.len()];
        for i in revoked {
            replies[i] = Reply::Revoked;
        }
        // Releases and finishes (one per lane worker and message under load) are grouped
        // into one statement each: the writer is the bottleneck, statements are its cost.
        // (A lane has one worker, so no lane is released and finished in one batch.)
        let mut releases = Vec::new();
        let mut finishes = Vec::new();
        // Applied after the releases, which are queued earlier (see `Store::lanes_due_by`).
        let mut all_due_by = Vec::new();
        for (i, write) in writes.iter().enumerate() {
            match &**write {
                Write::Insert(..) | Write::Group(_) | Write::Expand(_) | Write::Update(_) => {}
                Write::Schedule(op) => replies[i] = schedule_op(db, op)?,
                Write::Lane(LaneOp::Release {
                    owner,
                    userid,
                    due_at,
                }) => releases.push((owner.as_str(), userid.as_str(), *due_at)),
                Write::Lane(LaneOp::Finish { owner, userid }) => {
                    finishes.push((i, owner.as_str(), userid.as_str()));
                }
                Write::Lane(LaneOp::AllDueBy { due_at }) => all_due_by.push((i, *due_at)),
                Write::Lane(op) => replies[i] = lane_op(db, op)?,
                Write::Probe => {
                    let sql = db.dialect().probe_sql();
                    db.exec(sql, &[UnixMillis::now().into(), PROBE_BYTES.into()])?;
                }
            }
        }
        release_lanes(db, &releases)?;
        for (i, finished) in finish_lanes(db, &finishes)? {
            replies[i] = Reply::Finished(finished);
        }
        for (i, due_at) in all_due_by {
            replies[i] = Reply::Count(db.exec(
                "UPDATE lanes SET due_at = ?1 WHERE owner IS NULL AND due_at > ?1",
                &[due_at.into()],
            )?);
        }
        let more = self.queue.as_ref().is_some_and(|rx| !rx.is_empty());
        db.commit(more)?;
        if let Some(starts) = answered {
            self.arrivals.answered(starts);
        }
        Ok((replies, recorded))
    }
}

/// Group sends and leaves of one batch, before anything else: on PostgreSQL each group's
/// row is locked — `FOR UPDATE` when a member leaves it in this batch, else `FOR SHARE` —
/// in the order of the groups' ids, so that two instances' writers never wait for each
/// other in a circle. Then each group send's copies are checked against the members as
/// committed now: a copy of a member who is out of the group by now (they left between
/// the send's read of the members and this transaction) is stored `left`, never queued.
///
/// With the lock, a leave committed by another instance is either seen here (the member
/// is out: their copy is `left`) or waits for this commit and then marks the copy `left`
/// itself; on SQLite the one writer orders the two the same way.
fn lock_group_rows(db: &mut dyn Backend, writes: &mut [&mut Write]) -> Result<(), StoreError> {
    let mut groups: Vec<(&str, bool)> = writes
        .iter()
        .filter_map(|w| match &**w {
            Write::Group(g) => Some((g.send.group_id.as_str(), false)),
            Write::Expand(e) => Some((e.group_id.as_str(), false)),
            Write::Schedule(ScheduleOp::LeaveGroup { group_id, .. }) => {
                Some((group_id.as_str(), true))
            }
            _ => None,
        })
        .collect();
    if groups.is_empty() {
        return Ok(());
    }
    if db.dialect() == Dialect::Postgres {
        // Exclusive first among equal ids: the dedup keeps the first.
        groups.sort_unstable_by(|a, b| a.0.cmp(b.0).then(b.1.cmp(&a.1)));
        groups.dedup_by(|a, b| a.0 == b.0);
        let groups: Vec<(String, bool)> = groups
            .into_iter()
            .map(|(id, x)| (id.to_owned(), x))
            .collect();
        for (id, exclusive) in &groups {
            let mode = if *exclusive { "UPDATE" } else { "SHARE" };
            db.rows(
                &format!("SELECT id FROM groups WHERE id = ?1 FOR {mode}"),
                &[id.as_str().into()],
            )?;
        }
    }
    for write in writes.iter_mut() {
        let (group_id, copies): (&str, Vec<&mut Message>) = match &mut **write {
            // A planned one: its copies are checked as each chunk is written.
            Write::Group(g) if g.plan.is_none() => (
                g.send.group_id.as_str(),
                g.copies.iter_mut().map(|(m, _)| m).collect(),
            ),
            Write::Expand(e) => {
                e.found = chunk_found(db, e)?;
                if e.found.is_some() {
                    continue;
                }
                (e.group_id.as_str(), e.copies.iter_mut().collect())
            }
            _ => continue,
        };
        let members = group_members_among(db, group_id, &copies)?;
        for m in copies {
            if matches!(m.status, MessageStatus::Queued | MessageStatus::Scheduled)
                && !members.contains(m.userid.as_str())
            {
                m.status = MessageStatus::Left;
                m.last_error = Some(LEFT_BEFORE_SENT.to_owned());
            }
        }
    }
    Ok(())
}

/// Which of the copies' members are in the group now: for a chunk of a large group, only
/// its own members are looked up (not the whole group for each chunk).
fn group_members_among(
    db: &mut dyn Backend,
    group_id: &str,
    copies: &[&mut Message],
) -> Result<std::collections::HashSet<String>, StoreError> {
    let members = if let Some(last) = copies.last()
        && copies.len() <= fanout::CHUNK
    {
        // A power of two of parameters (the last repeated): a few statement shapes, all
        // kept prepared (see `pow2_chunks`).
        let params = copies.len().next_power_of_two();
        let mut sql =
            String::from("SELECT userid FROM group_members WHERE group_id = ?1 AND userid IN (");
        push_params(&mut sql, params, 1);
        sql.push(')');
        let mut args = vec![Value::from(group_id)];
        args.extend(copies.iter().map(|m| Value::from(m.userid.as_str())));
        args.resize(params + 1, Value::from(last.userid.as_str()));
        texts(db.rows(&sql, &args)?)?
    } else {
        texts(db.rows(
            "SELECT userid FROM group_members WHERE group_id = ?1",
            &[group_id.into()],
        )?)?
    };
    Ok(members.into_iter().collect())
}

/// Whether a chunk of planned copies is still to be written: `None` when the group
/// message's count of written copies is where the chunk starts; else the count found
/// (`Some(None)`: no plan any more — all written, or the group message is gone). The row
/// is locked on PostgreSQL, so two instances going on with the same plan (one of them
/// after the other stopped) never both write a chunk.
fn chunk_found(db: &mut dyn Backend, chunk: &Expand) -> Result<Option<Option<usize>>, StoreError> {
    let lock = match db.dialect() {
        Dialect::Postgres => " FOR UPDATE",
        Dialect::Sqlite => "",
    };
    let rows = db.rows(
        &format!(
            "SELECT expanded, CAST(CASE WHEN plan IS NULL THEN 0 ELSE 1 END AS BIGINT) \
             FROM group_sends WHERE id = ?1{lock}"
        ),
        &[chunk.send_id.as_str().into()],
    )?;
    let row = rows.into_iter().next();
    let int = |v: Option<&Value<'_>>| match v {
        Some(Value::Int(Some(n))) => usize::try_from(*n).ok(),
        _ => None,
    };
    Ok(match row {
        Some(row) if int(row.get(1)) == Some(1) => match int(row.first()) {
            Some(n) if n == chunk.start => None,
            found => Some(found),
        },
        _ => Some(None),
    })
}

fn insert_chunk(db: &mut dyn Backend, chunk: &[&Message]) -> Result<(), StoreError> {
    const COLS: usize = 31;
    let mut sql = String::from(
        "INSERT INTO messages (id, userid, title, content, status, attempts, last_error, \
         channel, created_at, updated_at, next_attempt_at, deadline_at, delivered_at, seq, via, \
         idempotency_key, route, deliver_all, address_to, format, look, url, page_key, \
         idempotency_digest, media_count, parts_done, deliver_at, urgent, held, resent_from, \
         group_send) VALUES ",
    );
    push_values(&mut sql, chunk.len(), COLS, 0);
    let mut args: Vec<Value> = Vec::with_capacity(chunk.len() * COLS);
    for m in chunk {
        args.extend([
            m.id.as_str().into(),
            m.userid.as_str().into(),
            (&m.title).into(),
            (&m.content).into(),
            m.status.as_str().into(),
            m.attempts.into(),
            (&m.last_error).into(),
            (&m.channel).into(),
            m.created_at.into(),
            m.updated_at.into(),
            m.next_attempt_at.into(),
            m.deadline_at.into(),
            m.delivered_at.into(),
            m.seq.into(),
            (&m.via).into(),
            (&m.idempotency_key).into(),
            m.route.to_stored().into(),
            i64::from(m.deliver_all).into(),
            (&m.address_to).into(),
            m.format.as_str().into(),
            m.look.as_str().into(),
            (&m.url).into(),
            (&m.page_key).into(),
            (&m.idempotency_digest).into(),
            m.media_count.into(),
            m.parts_done.into(),
            m.deliver_at.into(),
            i64::from(m.urgent).into(),
            m.held.map(Held::as_str).into(),
            m.resent_from.as_ref().map(MessageId::as_str).into(),
            m.group_send.as_ref().map(MessageId::as_str).into(),
        ]);
    }
    db.exec(&sql, &args)?;
    Ok(())
}

/// PostgreSQL: the batch's messages in one statement, whatever their number (one shape,
/// so the connection prepares it once): the columns as arrays, the acceptance numbers
/// taken from the sequence inside the statement and given in the order of the arrays
/// (negative for a message to a fixed address, as on SQLite), and the lanes of the queued
/// ones opened, as [`open_lanes`] does. Answers each message's number, by id. Measured
/// against a round trip for the numbers, one multi-row INSERT per power-of-two chunk and
/// one for the lanes.
/// Inserts `messages` and opens their lanes in one statement, numbering them from the
/// sequence. With `start` (this instance's value of the `instances` counter: see the
/// migration 0011_instances.sql), the same statement reads the counter FOR SHARE and
/// whether an alarm at or above `start` exists. Answers each message's number, and what it
/// read of the instances.
#[allow(clippy::type_complexity)]
fn insert_messages_pg(
    db: &mut dyn Backend,
    messages: &[(&Message, Option<&PushToken>)],
    start: Option<i64>,
) -> Result<(std::collections::HashMap<String, i64>, Option<(i64, bool)>), StoreError> {
    const SQL: &str = "\
        WITH t0 AS (SELECT * FROM unnest(?1::text[], ?2::text[], ?3::text[], ?4::text[], \
          ?5::text[], ?6::int8[], ?7::text[], ?8::text[], ?9::int8[], ?10::int8[], \
          ?11::int8[], ?12::int8[], ?13::int8[], ?14::text[], ?15::text[], ?16::text[], \
          ?17::int8[], ?18::text[], ?19::text[], ?20::text[], ?21::text[], ?22::text[], \
          ?23::text[], ?24::int8[], ?25::int8[], ?26::int8[], ?27::int8[], ?28::text[], \
          ?29::text[], ?30::text[], ?33::text[]) WITH ORDINALITY AS t0(id, userid, title, content, status, \
          attempts, last_error, channel, created_at, updated_at, next_attempt_at, deadline_at, \
          delivered_at, via, idempotency_key, route, deliver_all, address_to, format, look, \
          url, page_key, idempotency_digest, media_count, parts_done, deliver_at, urgent, \
          held, resent_from, group_send, verify, ord0)), \
        t AS (SELECT t0.*, row_number() OVER (ORDER BY ord0) AS ord FROM t0 \
          WHERE verify IS NULL OR EXISTS (SELECT 1 FROM members mb \
            WHERE mb.userid = t0.userid AND mb.token = t0.verify)), \
        n AS MATERIALIZED (SELECT nextval('messages_seq') AS s FROM t), \
        o AS (SELECT s, row_number() OVER (ORDER BY s) AS ord FROM n), \
        ins AS (INSERT INTO messages (id, userid, title, content, status, attempts, \
          last_error, channel, created_at, updated_at, next_attempt_at, deadline_at, \
          delivered_at, seq, via, idempotency_key, route, deliver_all, address_to, format, \
          look, url, page_key, idempotency_digest, media_count, parts_done, deliver_at, \
          urgent, held, resent_from, group_send) \
          SELECT t.id, t.userid, t.title, t.content, t.status, t.attempts, t.last_error, \
          t.channel, t.created_at, t.updated_at, t.next_attempt_at, t.deadline_at, \
          t.delivered_at, CASE WHEN t.address_to IS NULL THEN o.s ELSE -o.s END, t.via, \
          t.idempotency_key, t.route, t.deliver_all, t.address_to, t.format, t.look, t.url, \
          t.page_key, t.idempotency_digest, t.media_count, t.parts_done, t.deliver_at, \
          t.urgent, t.held, t.resent_from, t.group_send FROM t JOIN o ON o.ord = t.ord \
          RETURNING id, seq, userid, status), \
        l AS (INSERT INTO lanes (userid, due_at, owner, lease_until) \
          SELECT q.userid, ?31::int8, NULL, 0 FROM \
          (SELECT DISTINCT userid FROM ins WHERE status = 'queued') AS q ORDER BY q.userid \
          ON CONFLICT (userid) DO NOTHING), \
        c AS (SELECT starts FROM instances WHERE id = 1 FOR SHARE) \
        SELECT id, seq, (SELECT starts FROM c) AS starts, \
          EXISTS (SELECT 1 FROM instance_alarms WHERE starts >= ?32::int8) AS alarmed FROM ins";
    let verify = Value::Texts(
        messages
            .iter()
            .map(|(_, token)| token.map(|t| Cow::Borrowed(t.expose())))
            .collect(),
    );
    let messages: Vec<&Message> = messages.iter().map(|(m, _)| *m).collect();
    let messages = messages.as_slice();
    fn texts<'a>(
        messages: &[&'a Message],
        f: impl Fn(&'a Message) -> Option<Cow<'a, str>>,
    ) -> Value<'a> {
        Value::Texts(messages.iter().map(|m| f(m)).collect())
    }
    fn ints<'a>(messages: &[&'a Message], f: impl Fn(&'a Message) -> Option<i64>) -> Value<'a> {
        Value::Ints(messages.iter().map(|m| f(m)).collect())
    }
    fn b(s: &str) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(s))
    }
    let args = [
        texts(messages, |m| b(m.id.as_str())),
        texts(messages, |m| b(m.userid.as_str())),
        texts(messages, |m| m.title.as_deref().map(Cow::Borrowed)),
        texts(messages, |m| m.content.as_deref().map(Cow::Borrowed)),
        texts(messages, |m| b(m.status.as_str())),
        ints(messages, |m| Some(m.attempts)),
        texts(messages, |m| m.last_error.as_deref().map(Cow::Borrowed)),
        texts(messages, |m| m.channel.as_deref().map(Cow::Borrowed)),
        ints(messages, |m| Some(m.created_at.as_millis())),
        ints(messages, |m| Some(m.updated_at.as_millis())),
        ints(messages, |m| Some(m.next_attempt_at.as_millis())),
        ints(messages, |m| Some(m.deadline_at.as_millis())),
        ints(messages, |m| m.delivered_at.map(UnixMillis::as_millis)),
        texts(messages, |m| m.via.as_deref().map(Cow::Borrowed)),
        texts(messages, |m| {
            m.idempotency_key.as_deref().map(Cow::Borrowed)
        }),
        texts(messages, |m| Some(Cow::Owned(m.route.to_stored()))),
        ints(messages, |m| Some(i64::from(m.deliver_all))),
        texts(messages, |m| m.address_to.as_deref().map(Cow::Borrowed)),
        texts(messages, |m| b(m.format.as_str())),
        texts(messages, |m| b(m.look.as_str())),
        texts(messages, |m| m.url.as_deref().map(Cow::Borrowed)),
        texts(messages, |m| m.page_key.as_deref().map(Cow::Borrowed)),
        texts(messages, |m| {
            m.idempotency_digest.as_deref().map(Cow::Borrowed)
        }),
        ints(messages, |m| Some(m.media_count)),
        ints(messages, |m| Some(m.parts_done)),
        ints(messages, |m| m.deliver_at.map(UnixMillis::as_millis)),
        ints(messages, |m| Some(i64::from(m.urgent))),
        texts(messages, |m| m.held.map(|h| Cow::Borrowed(h.as_str()))),
        texts(messages, |m| {
            m.resent_from.as_ref().map(|r| Cow::Borrowed(r.as_str()))
        }),
        texts(messages, |m| {
            m.group_send.as_ref().map(|g| Cow::Borrowed(g.as_str()))
        }),
        UnixMillis::now().into(),
        Value::Int(Some(start.unwrap_or(i64::MAX))),
        verify,
    ];
    let rows = db.rows(SQL, &args)?;
    let mut given = std::collections::HashMap::with_capacity(rows.len());
    let mut seen = None;
    for row in rows {
        match row.as_slice() {
            [
                Value::Text(Some(id)),
                Value::Int(Some(seq)),
                Value::Int(Some(starts)),
                Value::Int(Some(alarmed)),
            ] => {
                given.insert(id.clone().into_owned(), *seq);
                seen = start.map(|_| (*starts, *alarmed != 0));
            }
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unexpected row from the insert: {other:?}"
                )));
            }
        }
    }
    Ok((given, seen))
}

/// A group message's own row (its copies are messages, inserted with the others).
fn insert_group_send(
    db: &mut dyn Backend,
    send: &GroupSend,
    plan: Option<&str>,
) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO group_sends (id, group_id, group_name, created_at, recipients, \
         idempotency_key, idempotency_digest, plan) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        &[
            send.id.as_str().into(),
            send.group_id.as_str().into(),
            send.group_name.as_str().into(),
            send.created_at.into(),
            send.recipients.into(),
            (&send.idempotency_key).into(),
            (&send.idempotency_digest).into(),
            plan.into(),
        ],
    )?;
    Ok(())
}

/// The `acks` row of a message that asks to be acknowledged (see `store::acks`).
fn insert_ack(db: &mut dyn Backend, m: &Message) -> Result<(), StoreError> {
    let escalate_at = m
        .ack
        .and_then(|a| a.escalate_after)
        .map(|after| m.created_at + after);
    db.exec(
        "INSERT INTO acks (message_id, userid, created_at, escalate_at) VALUES (?1, ?2, ?3, ?4)",
        &[
            m.id.as_str().into(),
            m.userid.as_str().into(),
            m.created_at.into(),
            escalate_at.into(),
        ],
    )?;
    Ok(())
}

/// A message's images and files: `(message id, place, attachment)`. Their blobs must be
/// stored (a foreign key): a message never names a file that is not there.
fn insert_attachments(
    db: &mut dyn Backend,
    chunk: &[(&str, usize, &Attachment)],
) -> Result<(), StoreError> {
    const COLS: usize = 5;
    let mut sql = String::from(
        "INSERT INTO message_media (message_id, idx, blob_id, filename, kind) VALUES ",
    );
    push_values(&mut sql, chunk.len(), COLS, 0);
    let mut args: Vec<Value> = Vec::with_capacity(chunk.len() * COLS);
    for (message_id, idx, a) in chunk {
        args.extend([
            (*message_id).into(),
            i64::try_from(*idx).unwrap_or(i64::MAX).into(),
            a.blob_id.as_str().into(),
            (&a.filename).into(),
            a.kind.as_str().into(),
        ]);
    }
    db.exec(&sql, &args)?;
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

/// Every member who got a queued message has a lane; an existing lane keeps its head and
/// due time (the new message waits behind what is already queued).
fn open_lanes(db: &mut dyn Backend, mut userids: Vec<&str>) -> Result<(), StoreError> {
    userids.sort_unstable();
    userids.dedup();
    let now = UnixMillis::now();
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
        let mut args = vec![Value::from(now)];
        args.extend(chunk.iter().map(|u| Value::from(*u)));
        db.exec(&sql, &args)?;
    }
    Ok(())
}

/// Adds one attempt to a message's history.
fn log_attempt(
    db: &mut dyn Backend,
    id: &str,
    at: UnixMillis,
    channel: ChannelName,
    outcome: &str,
    error: Option<&str>,
) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO attempts (message_id, at, channel, outcome, error) VALUES (?1, ?2, ?3, ?4, ?5)",
        &[
            id.into(),
            at.into(),
            channel.as_str().into(),
            outcome.into(),
            error.into(),
        ],
    )?;
    Ok(())
}

/// A send on `channel` that [`count_delivered`] does not count (a step of a `deliver_all`
/// message, a part of a message sent part by part).
fn count_send(
    db: &mut dyn Backend,
    id: &str,
    channel: ChannelName,
    at: UnixMillis,
    recorded: &mut Vec<Recorded>,
) -> Result<(), StoreError> {
    let rows = db.rows(
        "INSERT INTO sends (userid, channel, sent_at) \
         SELECT userid, ?3, ?2 FROM messages WHERE id = ?1 RETURNING userid, channel, sent_at",
        &[id.into(), at.into(), channel.as_str().into()],
    )?;
    recorded.extend(sends_of(rows)?);
    Ok(())
}

/// `(userid, channel, sent_at)` rows, as a `RETURNING` of `sends` gives them.
fn sends_of(rows: Vec<Vec<Value<'_>>>) -> Result<Vec<Recorded>, StoreError> {
    rows.into_iter()
        .map(|row| match row.as_slice() {
            [
                Value::Text(Some(userid)),
                Value::Text(Some(channel)),
                Value::Int(Some(at)),
            ] => Ok((userid.to_string(), channel.to_string(), *at)),
            other => Err(StoreError::Corrupt(format!(
                "expected a send, got {other:?}"
            ))),
        })
        .collect()
}

/// Each message of `delivered` once, as its first update names it: `(id, channel)`. A
/// message updated twice in one batch (never expected) counts by its first update only, as
/// the trigger did: the second found it delivered already.
fn first_deliveries<'a>(
    delivered: &'a [(&'a str, i64, Cow<'static, str>)],
) -> Vec<(&'a str, &'a str)> {
    let mut seen = std::collections::HashSet::with_capacity(delivered.len());
    delivered
        .iter()
        .filter(|(id, _, _)| seen.insert(*id))
        .map(|(id, _, channel)| (*id, channel.as_ref()))
        .collect()
}

/// Counts the sends of `delivered` (`(id, attempts, channel)`, in the order their updates
/// run) against the members' limits, just before those updates: a message going from
/// queued to delivered, not carried by a digest (`via`) and not a `deliver_all` message
/// (whose steps count one by one, see [`count_send`]), counts once on the channel that
/// delivered it, at its delivery time (the time the update sets). This is the rule the
/// trigger `messages_count_send` applied to each updated row until issue 31; read before
/// the update, the row's status is the trigger's `OLD.status`, so an outcome recorded
/// twice counts once. One statement per [`UPDATE_CHUNK`] messages, not one per row.
///
/// A group's copy marked `left` while a lane worker was sending it (its member left at
/// that moment: [`ScheduleOp::LeaveGroup`]) did reach them: it counts like a queued one,
/// and its update makes it `delivered`, what it was. (A part of one, likewise, is counted
/// and kept in its history; the copy stays `left` and its other parts are not sent.)
fn count_delivered(
    db: &mut dyn Backend,
    delivered: &[(&str, i64, Cow<'static, str>)],
    now: UnixMillis,
    recorded: &mut Vec<Recorded>,
) -> Result<(), StoreError> {
    let firsts = first_deliveries(delivered);
    for chunk in pow2_chunks(&firsts, UPDATE_CHUNK) {
        let mut sql = String::from("WITH v (id, channel) AS (VALUES ");
        push_values(&mut sql, chunk.len(), 2, 1);
        sql.push_str(
            ") INSERT INTO sends (userid, channel, sent_at) \
             SELECT m.userid, v.channel, COALESCE(m.delivered_at, ?1) \
             FROM v JOIN messages m ON m.id = v.id \
             WHERE m.status IN ('queued', 'left') AND m.via IS NULL AND m.deliver_all = 0 \
             RETURNING userid, channel, sent_at",
        );
        let mut args = Vec::with_capacity(1 + chunk.len() * 2);
        args.push(Value::from(now));
        for (id, channel) in chunk {
            args.push((*id).into());
            args.push((*channel).into());
        }
        recorded.extend(sends_of(db.rows(&sql, &args)?)?);
    }
    Ok(())
}

/// PostgreSQL: the batch's deliveries and their sends in one statement, whatever their
/// number (one shape, prepared once; see [`insert_messages_pg`]). The sends are counted as
/// [`count_delivered`] does — the `INSERT` in the statement reads the rows as they were
/// before the `UPDATE` of the same statement (one snapshot), which is the trigger's
/// `OLD.status` — and each message is updated as the last of its updates in
/// `delivered`'s order would have left it (a message updated twice in one batch is never
/// expected).
fn deliver_pg(
    db: &mut dyn Backend,
    delivered: &[(&str, i64, Cow<'static, str>)],
    now: UnixMillis,
) -> Result<(), StoreError> {
    const SQL: &str = "\
        WITH s AS (INSERT INTO sends (userid, channel, sent_at) \
          SELECT m.userid, f.channel, COALESCE(m.delivered_at, ?1) \
          FROM unnest(?5::text[], ?6::text[]) AS f(id, channel) JOIN messages m ON m.id = f.id \
          WHERE m.status IN ('queued', 'left') AND m.via IS NULL AND m.deliver_all = 0) \
        UPDATE messages m SET status = 'delivered', attempts = t.attempts, \
          channel = t.channel, last_error = NULL, updated_at = ?1, \
          delivered_at = COALESCE(m.delivered_at, ?1) \
        FROM unnest(?2::text[], ?3::int8[], ?4::text[]) AS t(id, attempts, channel) \
        WHERE m.id = t.id";
    if delivered.is_empty() {
        return Ok(());
    }
    let firsts = first_deliveries(delivered);
    let mut seen = std::collections::HashSet::with_capacity(delivered.len());
    let lasts: Vec<&(&str, i64, Cow<'static, str>)> = delivered
        .iter()
        .rev()
        .filter(|(id, _, _)| seen.insert(*id))
        .collect();
    let args = [
        Value::from(now),
        Value::Texts(
            lasts
                .iter()
                .map(|(id, _, _)| Some(Cow::Borrowed(*id)))
                .collect(),
        ),
        Value::Ints(
            lasts
                .iter()
                .map(|(_, attempts, _)| Some(*attempts))
                .collect(),
        ),
        Value::Texts(
            lasts
                .iter()
                .map(|(_, _, channel)| Some(Cow::Borrowed(channel.as_ref())))
                .collect(),
        ),
        Value::Texts(
            firsts
                .iter()
                .map(|(id, _)| Some(Cow::Borrowed(*id)))
                .collect(),
        ),
        Value::Texts(
            firsts
                .iter()
                .map(|(_, channel)| Some(Cow::Borrowed(*channel)))
                .collect(),
        ),
    ];
    db.exec(SQL, &args)?;
    Ok(())
}

/// Ends a message whose last channel gave up: `failed`, or `delivered` when an earlier
/// channel of a `deliver_all` route delivered it.
const END_WITHOUT_DELIVERY: &str = "UPDATE messages SET \
     status = CASE WHEN channel IS NULL THEN 'failed' ELSE 'delivered' END, \
     attempts = ?1, last_error = ?2, updated_at = ?3 WHERE id = ?4 AND status = 'queued'";

/// Moves a message on to the rest of its route (where none of its parts is delivered yet).
const NEXT_CHANNEL: &str = "UPDATE messages SET route = ?1, attempts = ?2, last_error = ?3, \
     next_attempt_at = ?4, deadline_at = ?5, updated_at = ?4, parts_done = 0, \
     channel = CASE WHEN ?6 IS NULL THEN channel WHEN channel IS NULL THEN ?6 \
                    ELSE channel || ',' || ?6 END, \
     delivered_at = CASE WHEN ?6 IS NULL THEN delivered_at ELSE COALESCE(delivered_at, ?4) END \
     WHERE id = ?7 AND status = 'queued'";

/// Applies attempt outcomes in arrival order. Successful deliveries (the bulk under load)
/// are grouped into `IN (…)` updates; the order between two updates of the same message is
/// kept because a message has at most one attempt in flight, so its updates are never in
/// one batch out of order.
/// Answers the sends it recorded.
fn apply_updates(
    db: &mut dyn Backend,
    updates: &[&AttemptUpdate],
) -> Result<Vec<Recorded>, StoreError> {
    let now = UnixMillis::now();
    let mut recorded = Vec::new();
    let mut delivered: Vec<(&str, i64, Cow<'static, str>)> = Vec::new();
    let mut sends: Vec<(&str, ChannelName, UnixMillis)> = Vec::new();
    for u in updates {
        match u {
            AttemptUpdate::Delivered {
                id,
                attempts,
                channel,
                earlier,
                log,
            } => {
                let delivered_on = match earlier {
                    Some(earlier) => Cow::Owned(format!("{earlier},{channel}")),
                    None => Cow::Borrowed(channel.as_str()),
                };
                delivered.push((id.as_str(), *attempts, delivered_on));
                if let Some(step) = log {
                    log_attempt(db, id.as_str(), now, *step, "delivered", None)?;
                    count_send(db, id.as_str(), *step, now, &mut recorded)?;
                }
            }
            AttemptUpdate::DigestDelivered {
                digest,
                channel,
                sent_at,
            } => {
                db.exec(
                    "INSERT INTO digests (id, userid, body, carried, created_at, page_key) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    &[
                        digest.id.as_str().into(),
                        digest.userid.as_str().into(),
                        digest.body.as_str().into(),
                        i64::try_from(digest.carried.len())
                            .unwrap_or(i64::MAX)
                            .into(),
                        (*sent_at).into(),
                        digest.page_key.as_str().into(),
                    ],
                )?;
                for chunk in pow2_chunks(&digest.carried, UPDATE_CHUNK) {
                    let mut sql = String::from(
                        "UPDATE messages SET status = 'delivered', attempts = attempts + 1, \
                         channel = ?1, via = ?2, last_error = NULL, updated_at = ?3, \
                         delivered_at = ?3 WHERE status = 'queued' AND id IN (",
                    );
                    push_params(&mut sql, chunk.len(), 3);
                    sql.push(')');
                    let mut args: Vec<Value> = vec![
                        channel.as_str().into(),
                        digest.id.as_str().into(),
                        now.into(),
                    ];
                    args.extend(chunk.iter().map(|id| Value::from(id.as_str())));
                    db.exec(&sql, &args)?;
                }
                sends.push((digest.userid.as_str(), *channel, *sent_at));
            }
            AttemptUpdate::PartDelivered {
                id,
                attempts,
                channel,
                parts_before,
                note,
                deadline_at,
            } => {
                let moved = db.exec(
                    "UPDATE messages SET parts_done = ?1 + 1, attempts = ?2, last_error = NULL, \
                     next_attempt_at = ?3, updated_at = ?3, deadline_at = ?4 \
                     WHERE id = ?5 AND status IN ('queued', 'left') AND parts_done = ?1",
                    &[
                        (*parts_before).into(),
                        (*attempts).into(),
                        now.into(),
                        (*deadline_at).into(),
                        id.as_str().into(),
                    ],
                )?;
                // Recorded once: a repeated update (never expected) changes nothing.
                if moved > 0 {
                    log_attempt(db, id.as_str(), now, *channel, "delivered", Some(note))?;
                    count_send(db, id.as_str(), *channel, now, &mut recorded)?;
                }
            }
            AttemptUpdate::Retry {
                id,
                attempts,
                channel,
                error,
                next_attempt_at,
            } => {
                db.exec(
                    "UPDATE messages SET attempts = ?1, last_error = ?2, next_attempt_at = ?3, \
                     updated_at = ?4 WHERE id = ?5 AND status = 'queued'",
                    &[
                        (*attempts).into(),
                        error.as_str().into(),
                        (*next_attempt_at).into(),
                        now.into(),
                        id.as_str().into(),
                    ],
                )?;
                log_attempt(db, id.as_str(), now, *channel, "retry", Some(error))?;
            }
            AttemptUpdate::Failed {
                id,
                attempts,
                channel,
                error,
                unconfirmed,
            } => {
                db.exec(
                    END_WITHOUT_DELIVERY,
                    &[
                        (*attempts).into(),
                        error.as_str().into(),
                        now.into(),
                        id.as_str().into(),
                    ],
                )?;
                let outcome = if *unconfirmed {
                    "unconfirmed"
                } else {
                    "failed"
                };
                log_attempt(db, id.as_str(), now, *channel, outcome, Some(error))?;
            }
            AttemptUpdate::NextChannel {
                id,
                attempts,
                channel,
                delivered,
                error,
                route,
                deadline_at,
                unconfirmed,
            } => {
                let delivered_on = delivered.then(|| channel.as_str());
                db.exec(
                    NEXT_CHANNEL,
                    &[
                        route.to_stored().into(),
                        (*attempts).into(),
                        error.as_deref().into(),
                        now.into(),
                        (*deadline_at).into(),
                        delivered_on.into(),
                        id.as_str().into(),
                    ],
                )?;
                let outcome = match (*delivered, *unconfirmed) {
                    (true, _) => "delivered",
                    (false, true) => "unconfirmed",
                    (false, false) => "failed",
                };
                log_attempt(db, id.as_str(), now, *channel, outcome, error.as_deref())?;
                if *delivered {
                    count_send(db, id.as_str(), *channel, now, &mut recorded)?;
                }
            }
        }
    }
    // Group by (attempts, channel) so each statement sets one set of values.
    delivered.sort_by(|a, b| (a.1, &a.2).cmp(&(b.1, &b.2)));
    if db.dialect() == Dialect::Postgres {
        deliver_pg(db, &delivered, now)?;
    } else {
        count_delivered(db, &delivered, now, &mut recorded)?;
        for group in delivered.chunk_by(|a, b| a.1 == b.1 && a.2 == b.2) {
            let Some((_, attempts, channel)) = group.first() else {
                continue;
            };
            let (attempts, channel) = (*attempts, channel.as_ref());
            for chunk in pow2_chunks(group, UPDATE_CHUNK) {
                let mut sql = String::from(
                    "UPDATE messages SET status = 'delivered', attempts = ?1, channel = ?2, \
                     last_error = NULL, updated_at = ?3, \
                     delivered_at = COALESCE(delivered_at, ?3) WHERE id IN (",
                );
                push_params(&mut sql, chunk.len(), 3);
                sql.push(')');
                let mut args: Vec<Value> = vec![attempts.into(), channel.into(), now.into()];
                args.extend(chunk.iter().map(|(id, _, _)| Value::from(*id)));
                db.exec(&sql, &args)?;
            }
        }
    }
    for chunk in pow2_chunks(&sends, UPDATE_CHUNK) {
        let mut sql = String::from("INSERT INTO sends (userid, channel, sent_at) VALUES ");
        push_values(&mut sql, chunk.len(), 3, 0);
        let mut args: Vec<Value> = Vec::with_capacity(chunk.len() * 3);
        for (userid, channel, sent_at) in chunk {
            args.push((*userid).into());
            args.push(channel.as_str().into());
            args.push((*sent_at).into());
        }
        db.exec(&sql, &args)?;
    }
    recorded.extend(sends.iter().map(|(userid, channel, at)| {
        (
            (*userid).to_owned(),
            channel.as_str().to_owned(),
            at.as_millis(),
        )
    }));
    Ok(recorded)
}

/// The condition under which an overdue move applies: the message is as it was read
/// (route `?r`, window end `?d`, attempts `?a`) and no lane worker holds it at `?n`.
fn as_read(r: usize, d: usize, a: usize, n: usize) -> String {
    format!(
        " AND route = ?{r} AND deadline_at = ?{d} AND attempts = ?{a} AND NOT EXISTS (\
         SELECT 1 FROM lanes l WHERE l.userid = messages.userid AND l.lease_until > ?{n})"
    )
}

/// Moves overdue messages as decided (their lane due now when they go on), each with an
/// attempt saying `error`; a message no longer as it was read, or in a lane being worked
/// on, is left alone. Answers how many moved and how many of those ended failed.
fn move_overdue(
    db: &mut dyn Backend,
    channel: ChannelName,
    now: UnixMillis,
    error: &str,
    moves: &[(OverdueMessage, MoveOn)],
) -> Result<Overdue, StoreError> {
    let next_sql = format!("{NEXT_CHANNEL}{}", as_read(8, 9, 2, 4));
    let end_sql = format!("{END_WITHOUT_DELIVERY}{}", as_read(5, 6, 1, 3));
    // In the order of their ids: two instances moving some of the same messages lock them
    // in the same order (no deadlock on PostgreSQL); the second finds them moved.
    let mut moves: Vec<&(OverdueMessage, MoveOn)> = moves.iter().collect();
    moves.sort_unstable_by(|a, b| a.0.id.as_str().cmp(b.0.id.as_str()));
    let mut done = Overdue::default();
    for (m, step) in moves {
        let id = m.id.as_str();
        let moved = match step {
            MoveOn::Next { route, deadline_at } => {
                let moved = db.exec(
                    &next_sql,
                    &[
                        route.to_stored().into(),
                        m.attempts.into(),
                        error.into(),
                        now.into(),
                        (*deadline_at).into(),
                        Option::<&str>::None.into(),
                        id.into(),
                        m.stored_route.as_str().into(),
                        m.deadline_at.into(),
                    ],
                )?;
                if moved > 0 {
                    db.exec(
                        "UPDATE lanes SET due_at = CASE WHEN due_at < ?2 THEN due_at ELSE ?2 END \
                         WHERE userid = ?1 AND owner IS NULL",
                        &[m.userid.as_str().into(), now.into()],
                    )?;
                }
                moved
            }
            MoveOn::End { failed } => {
                let moved = db.exec(
                    &end_sql,
                    &[
                        m.attempts.into(),
                        error.into(),
                        now.into(),
                        id.into(),
                        m.stored_route.as_str().into(),
                        m.deadline_at.into(),
                    ],
                )?;
                if moved > 0 && *failed {
                    done.failed += 1;
                }
                moved
            }
        };
        if moved > 0 {
            log_attempt(db, id, now, channel, "failed", Some(error))?;
            done.handled += 1;
        }
    }
    Ok(done)
}

/// Gives lanes up until their due times: `(owner, userid, due_at)`, grouped by owner.
fn release_lanes(
    db: &mut dyn Backend,
    releases: &[(&str, &str, UnixMillis)],
) -> Result<(), StoreError> {
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
            let mut args = vec![Value::from(owner)];
            for (_, userid, due_at) in chunk {
                args.push((*userid).into());
                args.push((*due_at).into());
            }
            db.exec(&sql, &args)?;
        }
    }
    Ok(())
}

/// Deletes the lanes of `(reply index, owner, userid)` that have nothing queued; answers
/// for each index whether its lane was deleted.
fn finish_lanes(
    db: &mut dyn Backend,
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
            let mut args = vec![Value::from(owner)];
            args.extend(chunk.iter().map(|(_, _, userid)| Value::from(*userid)));
            let deleted = texts(db.rows(&sql, &args)?)?;
            for (i, _, userid) in chunk {
                answers.push((*i, deleted.iter().any(|d| d == userid)));
            }
        }
    }
    Ok(answers)
}

/// The first column of each row, as text.
fn texts(rows: Vec<Vec<Value<'_>>>) -> Result<Vec<String>, StoreError> {
    rows.into_iter()
        .map(|row| match row.into_iter().next() {
            Some(Value::Text(Some(t))) => Ok(t.into_owned()),
            other => Err(StoreError::Corrupt(format!("expected text, got {other:?}"))),
        })
        .collect()
}

/// The first column of the first row, as an integer (`None`: no row, or NULL).
fn first_int(rows: &[Vec<Value<'_>>]) -> Option<i64> {
    match rows.first().and_then(|row| row.first()) {
        Some(Value::Int(v)) => *v,
        _ => None,
    }
}

/// One write of scheduled messages.
fn schedule_op(db: &mut dyn Backend, op: &ScheduleOp) -> Result<Reply, StoreError> {
    Ok(match op {
        ScheduleOp::LeaveGroup {
            group_id,
            userid,
            by_owner,
            now,
        } => Reply::Left {
            userid: userid.clone(),
            outcome: leave_group(db, group_id, userid, by_owner.as_ref(), *now)?,
        },
        ScheduleOp::Release {
            now,
            limit,
            deadline_at,
        } => match release_due(db, *now, *limit, *deadline_at)? {
            Some(userids) => Reply::Released(userids),
            None => Reply::ReleaseBusy,
        },
        ScheduleOp::Hold {
            id,
            deliver_at,
            held,
        } => Reply::Count(db.exec(
            "UPDATE messages SET status = 'scheduled', deliver_at = ?2, held = ?3, \
             updated_at = ?4 WHERE id = ?1 AND status = 'queued'",
            &[
                id.as_str().into(),
                (*deliver_at).into(),
                held.as_str().into(),
                UnixMillis::now().into(),
            ],
        )?),
        ScheduleOp::Retime {
            userid,
            held,
            deliver_at,
        } => Reply::Count(db.exec(
            "UPDATE messages SET deliver_at = ?3, updated_at = ?4 \
             WHERE userid = ?1 AND status = 'scheduled' AND held = ?2",
            &[
                userid.as_str().into(),
                held.as_str().into(),
                (*deliver_at).into(),
                UnixMillis::now().into(),
            ],
        )?),
        ScheduleOp::Cancel { userid, id, now } => {
            Reply::Cancelled(cancel(db, userid.as_str(), id.as_str(), *now)?)
        }
    })
}

/// The member whose lane a worker must read again after this reply: one whose copies
/// were just marked `left`.
fn skipped_lane(reply: &Reply) -> Option<&UserId> {
    match reply {
        Reply::Left {
            userid,
            outcome: LeaveOutcome::Left { skipped, .. },
        } if *skipped > 0 => Some(userid),
        _ => None,
    }
}

/// Marks `left` the member's copies of the group's messages that nothing of went out yet.
const SKIP_GROUP_COPIES: &str = "UPDATE messages SET status = 'left', updated_at = ?3, \
     last_error = ?4 \
     WHERE userid = ?2 AND status IN ('queued', 'scheduled') \
     AND parts_done = 0 AND channel IS NULL AND group_send IS NOT NULL \
     AND EXISTS (SELECT 1 FROM group_sends g \
     WHERE g.id = messages.group_send AND g.group_id = ?1)";

/// What a group's copy says when its member was out of the group by the time it was
/// committed (see [`lock_group_rows`]).
pub(super) const LEFT_BEFORE_SENT: &str = "left the group before it was sent";

/// [`ScheduleOp::LeaveGroup`], inside the writer's transaction.
fn leave_group(
    db: &mut dyn Backend,
    group_id: &str,
    userid: &UserId,
    by_owner: Option<&UserId>,
    now: UnixMillis,
) -> Result<LeaveOutcome, StoreError> {
    let lock = db.dialect().lock_rows();
    let found = db.rows(
        &format!("SELECT id FROM groups WHERE id = ?1{lock}"),
        &[group_id.into()],
    )?;
    if found.is_empty() {
        return Ok(LeaveOutcome::NotMember);
    }
    if let Some(owner) = by_owner {
        let owns = db.rows(
            "SELECT owner FROM group_members WHERE group_id = ?1 AND userid = ?2 AND owner = 1",
            &[group_id.into(), owner.as_str().into()],
        )?;
        if owns.is_empty() {
            return Ok(LeaveOutcome::NotOwner);
        }
    }
    let gone = db.exec(
        "DELETE FROM group_members WHERE group_id = ?1 AND userid = ?2",
        &[group_id.into(), userid.as_str().into()],
    )?;
    if gone == 0 {
        return Ok(LeaveOutcome::NotMember);
    }
    let rest = db.rows(
        "SELECT userid, owner FROM group_members WHERE group_id = ?1 ORDER BY joined_at, userid",
        &[group_id.into()],
    )?;
    let mut members = Vec::with_capacity(rest.len());
    for row in rest {
        let mut cols = row.into_iter();
        match (cols.next(), cols.next()) {
            (Some(Value::Text(Some(member))), Some(Value::Int(owner))) => {
                members.push((member.into_owned(), owner.unwrap_or(0) != 0));
            }
            other => {
                return Err(StoreError::Corrupt(format!(
                    "expected a group member, got {other:?}"
                )));
            }
        }
    }
    let deleted = members.is_empty();
    let mut new_owner = None;
    if deleted {
        db.exec("DELETE FROM groups WHERE id = ?1", &[group_id.into()])?;
    } else if !members.iter().any(|(_, owner)| *owner)
        && let Some((heir, _)) = members.first()
    {
        db.exec(
            "UPDATE group_members SET owner = 1 WHERE group_id = ?1 AND userid = ?2",
            &[group_id.into(), heir.as_str().into()],
        )?;
        new_owner = Some(UserId::new(heir));
    }
    // Their copies not sent yet are not sent, even of a group their leaving deleted.
    let skipped = db.exec(
        SKIP_GROUP_COPIES,
        &[
            group_id.into(),
            userid.as_str().into(),
            now.into(),
            LEFT_BEFORE_SENT.into(),
        ],
    )?;
    Ok(LeaveOutcome::Left {
        new_owner,
        deleted,
        skipped,
    })
}

/// Releases up to `limit` scheduled messages due by `now` (see [`ScheduleOp::Release`]);
/// answers their members, one entry per message, or `None` when another instance is
/// releasing right now.
///
/// A released message keeps its acceptance number: it takes its place in its lane by the
/// order in which messages were accepted (ahead of those accepted after it), which is what
/// keeps messages due together — and messages held by quiet hours and those behind them —
/// in acceptance order. Its lane is opened, or made due now if nobody holds it; a worker
/// that holds it is told to read it again (by the caller, after the commit).
///
/// On PostgreSQL one instance releases at a time (a transaction-level advisory lock, tried
/// and not waited for, so that no writer batch ever waits on another): two instances
/// releasing side by side would each commit part of the due messages, and a lane worker
/// could send a later one before an earlier one's commit. The rows are also read
/// `FOR UPDATE SKIP LOCKED` and changed only while still `scheduled`: each is released once.
fn release_due(
    db: &mut dyn Backend,
    now: UnixMillis,
    limit: usize,
    deadline_at: UnixMillis,
) -> Result<Option<Vec<UserId>>, StoreError> {
    if let Some(lock) = db.dialect().release_lock() {
        let got = db.rows(lock, &[])?;
        if first_int(&got) != Some(1) {
            return Ok(None);
        }
    }
    // LIMIT as a literal rounded down to a power of two (see `LaneOp::Claim`).
    let limit = pow2_floor(limit);
    let sql = format!(
        "SELECT id FROM messages WHERE status = 'scheduled' AND deliver_at <= ?1 \
         ORDER BY deliver_at, seq LIMIT {limit}{}",
        db.dialect().skip_locked()
    );
    let due = texts(db.rows(&sql, &[now.into()])?)?;
    let mut released = Vec::with_capacity(due.len());
    for chunk in pow2_chunks(&due, UPDATE_CHUNK) {
        let mut sql = String::from(
            "UPDATE messages SET status = 'queued', next_attempt_at = deliver_at, \
             deadline_at = ?1, updated_at = ?2 WHERE status = 'scheduled' AND id IN (",
        );
        push_params(&mut sql, chunk.len(), 2);
        sql.push_str(") RETURNING userid");
        let mut args = vec![Value::from(deadline_at), Value::from(now)];
        args.extend(chunk.iter().map(|id| Value::from(id.as_str())));
        released.extend(texts(db.rows(&sql, &args)?)?);
    }
    let mut lanes: Vec<&str> = released.iter().map(String::as_str).collect();
    lanes.sort_unstable();
    lanes.dedup();
    open_lanes(db, lanes.clone())?;
    // A lane that waits (its head in backoff, say) may have a new head now: due at once,
    // so that its worker looks (one that finds it must wait gives it back again).
    for chunk in pow2_chunks(&lanes, UPDATE_CHUNK) {
        let mut sql = String::from(
            "UPDATE lanes SET due_at = ?1 WHERE due_at > ?1 \
             AND (owner IS NULL OR lease_until <= ?1) AND userid IN (",
        );
        push_params(&mut sql, chunk.len(), 1);
        sql.push(')');
        let mut args = vec![Value::from(now)];
        args.extend(chunk.iter().map(|u| Value::from(*u)));
        db.exec(&sql, &args)?;
    }
    Ok(Some(released.iter().map(|u| UserId::new(u)).collect()))
}

/// Cancels the member's message `id` if nothing of it went out and no attempt can be in
/// flight (see [`ScheduleOp::Cancel`]).
///
/// The lane is read (on PostgreSQL: locked) before the message: a claim committed by
/// another instance is then either seen here (its lease: the message may be in flight,
/// refused) or comes after this transaction and reads the message as cancelled. A claim
/// locks the lane too, so it cannot slip in between.
fn cancel(
    db: &mut dyn Backend,
    userid: &str,
    id: &str,
    now: UnixMillis,
) -> Result<CancelOutcome, StoreError> {
    let lock = db.dialect().lock_rows();
    let lane = db.rows(
        &format!("SELECT lease_until FROM lanes WHERE userid = ?1{lock}"),
        &[userid.into()],
    )?;
    let leased = first_int(&lane).is_some_and(|until| until > now.as_millis());
    let found = db.rows(
        &format!(
            "SELECT status, parts_done, channel FROM messages \
             WHERE id = ?1 AND userid = ?2{lock}"
        ),
        &[id.into(), userid.into()],
    )?;
    let Some(row) = found.into_iter().next() else {
        return Ok(CancelOutcome::NotFound);
    };
    let mut cols = row.into_iter();
    let (status, parts_done, channel) = match (cols.next(), cols.next(), cols.next()) {
        (Some(Value::Text(Some(status))), Some(Value::Int(parts)), Some(channel)) => {
            let status: MessageStatus = status.parse()?;
            (status, parts.unwrap_or(0), channel)
        }
        other => {
            return Err(StoreError::Corrupt(format!(
                "expected a message's status, got {other:?}"
            )));
        }
    };
    let sent_some = parts_done > 0 || matches!(channel, Value::Text(Some(_)));
    let outcome = match status {
        MessageStatus::Delivered
        | MessageStatus::Failed
        | MessageStatus::Cancelled
        | MessageStatus::Muted
        | MessageStatus::Left => {
            return Ok(CancelOutcome::Final(status));
        }
        MessageStatus::Queued if leased => return Ok(CancelOutcome::InFlight),
        _ if sent_some => return Ok(CancelOutcome::PartlyDelivered),
        MessageStatus::Scheduled | MessageStatus::Queued => {
            CancelOutcome::Cancelled { was: status }
        }
    };
    let changed = db.exec(
        "UPDATE messages SET status = 'cancelled', updated_at = ?3 \
         WHERE id = ?1 AND status = ?2",
        &[id.into(), status.as_str().into(), now.into()],
    )?;
    if changed == 0 {
        return Err(StoreError::Corrupt(format!(
            "message {id} changed while it was being cancelled"
        )));
    }
    Ok(outcome)
}

/// One write to the lanes.
fn lane_op(db: &mut dyn Backend, op: &LaneOp) -> Result<Reply, StoreError> {
    let count = Reply::Count;
    Ok(match op {
        LaneOp::Claim {
            owner,
            now,
            lease_until,
            limit,
        } => {
            // The outer `lease_until <= ?3` is checked again against the row as updated,
            // and on PostgreSQL lanes another instance is claiming right now are skipped,
            // not waited for: a lane is claimed by one instance at a time.
            // LIMIT is a literal rounded down to a power of two: a bound LIMIT makes SQLite
            // re-prepare the statement on every use, and few shapes stay cached.
            let limit = pow2_floor(*limit);
            let sql = format!(
                "UPDATE lanes SET owner = ?1, lease_until = ?2 \
                 WHERE lease_until <= ?3 AND userid IN (\
                   SELECT userid FROM lanes WHERE due_at <= ?3 AND lease_until <= ?3 \
                   ORDER BY due_at LIMIT {limit}{}) \
                 RETURNING userid",
                db.dialect().skip_locked()
            );
            let args = [owner.as_str().into(), (*lease_until).into(), (*now).into()];
            let claimed = texts(db.rows(&sql, &args)?)?;
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
                let mut args = vec![Value::from(*lease_until), owner.as_str().into()];
                args.extend(chunk.iter().map(|u| Value::from(u.as_str())));
                db.exec(&sql, &args)?;
            }
            Reply::Done
        }
        // Grouped by the caller (see `release_lanes`, `finish_lanes`, `Writer::try_write`).
        LaneOp::Release { .. } | LaneOp::Finish { .. } | LaneOp::AllDueBy { .. } => Reply::Done,
        LaneOp::ReleaseAll { owner } => count(db.exec(
            "UPDATE lanes SET owner = NULL, lease_until = 0 WHERE owner = ?1",
            &[owner.as_str().into()],
        )?),
        LaneOp::Overdue {
            channel,
            now,
            error,
            moves,
        } => Reply::Overdue(move_overdue(db, *channel, *now, error, moves)?),
        LaneOp::DueBy { userid, due_at } => count(db.exec(
            "UPDATE lanes SET due_at = ?2 WHERE userid = ?1 AND owner IS NULL AND due_at > ?2",
            &[userid.as_str().into(), (*due_at).into()],
        )?),
        LaneOp::OpenMissing { now } => count(db.exec(
            "INSERT INTO lanes (userid, due_at, owner, lease_until) \
             SELECT DISTINCT userid, ?1, NULL, 0 FROM messages m \
             WHERE m.status = 'queued' AND NOT EXISTS (\
               SELECT 1 FROM lanes l WHERE l.userid = m.userid) \
             ON CONFLICT (userid) DO NOTHING",
            &[(*now).into()],
        )?),
        LaneOp::PruneSends { before } => {
            count(db.exec(db.dialect().prune_sends_sql(), &[(*before).into()])?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A writer on `db`, called directly by the test (no thread, no queue).
    fn writer_on(db: Box<dyn Backend>) -> Writer {
        Writer {
            db,
            health: Arc::default(),
            arrivals: Arc::default(),
            sends: None,
            supervisor: Supervisor::default(),
            queue: None,
            fanout: VecDeque::new(),
        }
    }

    fn sqlite_writer(path: &std::path::Path) -> Writer {
        writer_on(Box::new(super::super::sqlite::backend(path)))
    }

    /// A writer with a connection of its own to the PostgreSQL at `url`.
    async fn postgres_writer(url: &str) -> Writer {
        let super::super::Opened { backend, .. } =
            super::super::postgres::open(url, 1).await.unwrap();
        writer_on(backend)
    }

    #[test]
    fn chunks_come_in_powers_of_two() {
        let items: Vec<u32> = (0..93).collect();
        let sizes: Vec<usize> = pow2_chunks(&items, 16).map(<[u32]>::len).collect();
        assert_eq!(sizes, [16, 16, 16, 16, 16, 8, 4, 1]);
        let flat: Vec<u32> = pow2_chunks(&items, 16).flatten().copied().collect();
        assert_eq!(flat, items);
        assert_eq!(pow2_chunks::<u32>(&[], 16).count(), 0);
    }

    /// A channel came back while a lane that lost the gate to the probe was being given
    /// back until the next probe: in one batch, the release does not undo the
    /// bring-forward, whichever came first.
    #[tokio::test]
    async fn lanes_are_brought_forward_after_the_releases_of_their_batch() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = Store::connect(&url).await.unwrap();
        let now = UnixMillis::now();
        store
            .insert_message(Message::new_queued(
                MessageId::from_stored("m".to_owned()),
                UserId::new("alice"),
                None,
                Some("c".into()),
                now,
                now + ms(1000),
            ))
            .await
            .unwrap();
        let claimed = store
            .claim_lanes("me", UnixMillis::now(), now + ms(60_000), 1)
            .await
            .unwrap();
        assert_eq!(claimed, [UserId::new("alice")]);
        let mut writer = sqlite_writer(&dir.path().join("w.db"));
        let mut all_due_by = Write::Lane(LaneOp::AllDueBy { due_at: now });
        let mut release = Write::Lane(LaneOp::Release {
            owner: "me".into(),
            userid: UserId::new("alice"),
            due_at: now + ms(30_000),
        });
        let replies = writer.write(vec![&mut all_due_by, &mut release]).unwrap();
        assert_eq!(replies[0], Reply::Count(1));
        assert_eq!(store.next_lane_due().await.unwrap(), Some(now));
        writer.db.close();
        store.close().await;
    }

    /// Found under load: a batch committed into a database file deleted meanwhile was
    /// retried row by row on the same connection, which met the rows it had just written
    /// into the deleted file ("UNIQUE constraint failed: messages.id") and answered 500.
    #[tokio::test]
    async fn a_batch_committed_into_a_deleted_file_is_refused_whole_as_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let url = format!("sqlite://{}", path.display());
        let store = Store::connect(&url).await.unwrap();
        let mut writer = writer_on(Box::new(super::super::sqlite::backend_watching(&path)));
        let insert = |i: usize| {
            let now = UnixMillis::now();
            Write::Insert(
                Box::new(Message::new_queued(
                    MessageId::from_stored(format!("d{i}")),
                    UserId::new("alice"),
                    Some(format!("t{i}")),
                    None,
                    now,
                    now + ms(1000),
                )),
                Vec::new(),
                None,
            )
        };
        let batch = |range: std::ops::Range<usize>| {
            let mut waits = Vec::new();
            let writes = range
                .map(|i| {
                    let (done, wait) = oneshot::channel();
                    waits.push(wait);
                    (insert(i), done)
                })
                .collect::<Vec<_>>();
            (writes, waits)
        };
        // The connection is open on the file...
        let (writes, waits) = batch(0..1);
        writer.commit_batch(writes);
        for wait in waits {
            assert!(wait.await.unwrap().is_ok());
        }
        // ...which is deleted; the next batch commits into the deleted file.
        std::fs::remove_file(&path).unwrap();
        let (writes, waits) = batch(1..3);
        writer.commit_batch(writes);
        for wait in waits {
            let err = wait.await.unwrap().expect_err("refused");
            assert!(err.is_unavailable(), "503, not 500: {err}");
        }
        writer.db.close();
        store.close().await;
    }

    /// PostgreSQL's one-statement insert: every column as given, the numbers from the
    /// sequence in the order of the batch (negative for a fixed address) and the same in
    /// memory as stored, lanes for the queued messages only, whatever the batch's size.
    /// PostgreSQL: in one batch, the rows whose sender's token was replaced are left out
    /// (answered [`Reply::Revoked`], no lane opened for them) and the others are stored
    /// and numbered in order as usual.
    #[tokio::test]
    async fn postgresql_leaves_out_of_a_batch_the_rows_whose_token_was_replaced() {
        let schema = crate::store::postgres::TestSchema::new().await;
        let store = Store::connect(&schema.url()).await.unwrap();
        let alice = store.token_for(&UserId::new("alice")).await.unwrap();
        let bob = UserId::new("bob");
        let old = store.token_for(&bob).await.unwrap();
        store.rotate_token(&bob).await.unwrap();
        let mut writer = postgres_writer(&schema.url()).await;
        let now = UnixMillis::now();
        let sent = [
            ("alice", Some(alice)),
            ("bob", Some(old.clone())),
            ("carol", None),
            ("bob", Some(old)),
        ];
        let writes: Vec<Write> = sent
            .into_iter()
            .enumerate()
            .map(|(i, (userid, token))| {
                let m = Message::new_queued(
                    MessageId::from_stored(format!("v{i}")),
                    UserId::new(userid),
                    Some(format!("t{i}")),
                    None,
                    now,
                    now + ms(1000),
                );
                Write::Insert(Box::new(m), Vec::new(), token)
            })
            .collect();
        let (replies, writes) = std::thread::spawn(move || {
            let mut writes = writes;
            let replies = writer.write(writes.iter_mut().collect()).unwrap();
            writer.db.close();
            (replies, writes)
        })
        .join()
        .unwrap();
        assert_eq!(
            replies,
            [Reply::Done, Reply::Revoked, Reply::Done, Reply::Revoked]
        );
        let mut last = 0;
        for (write, reply) in writes.iter().zip(&replies) {
            let Write::Insert(m, ..) = write else {
                unreachable!()
            };
            let stored = store.message(m.id.as_str()).await.unwrap();
            if *reply == Reply::Revoked {
                assert!(stored.is_none(), "{} was stored", m.id);
                continue;
            }
            let stored = stored.unwrap();
            assert_eq!(stored.seq, m.seq);
            assert!(m.seq > last, "acceptance order is kept");
            last = m.seq;
        }
        let bob_lanes: i64 = sqlx::query_scalar("SELECT count(*) FROM lanes WHERE userid = 'bob'")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(bob_lanes, 0, "no lane for rows not stored");
        store.close().await;
    }

    #[tokio::test]
    async fn postgresql_inserts_a_batch_in_one_statement_in_order() {
        let schema = crate::store::postgres::TestSchema::new().await;
        let store = Store::connect(&schema.url()).await.unwrap();
        for size in [1, 3, 130] {
            let mut writer = postgres_writer(&schema.url()).await;
            let now = UnixMillis::now();
            let writes: Vec<Write> = (0..size)
                .map(|i| {
                    let mut m = Message::new_queued(
                        MessageId::from_stored(format!("s{size}m{i:03}")),
                        UserId::new(&format!("s{size}u{}", i % 3)),
                        Some(format!("t{i}")),
                        (i % 4 != 1).then(|| format!("c{i}")),
                        now,
                        now + ms(1000),
                    );
                    if i % 5 == 4 {
                        m.address_to = Some(format!("a{i}@example.com"));
                    }
                    if i % 3 == 2 {
                        m.status = MessageStatus::Scheduled;
                        m.deliver_at = Some(now + ms(60_000));
                    }
                    Write::Insert(Box::new(m), Vec::new(), None)
                })
                .collect();
            // Called directly (no one-by-one retry could hide a broken statement), on a
            // thread of its own: the backend drives its connection with its own runtime.
            let writes = std::thread::spawn(move || {
                let mut writes = writes;
                writer.write(writes.iter_mut().collect()).unwrap();
                writer.db.close();
                writes
            })
            .join()
            .unwrap();
            let mut last = 0;
            for write in &writes {
                let Write::Insert(m, ..) = write else {
                    unreachable!()
                };
                let stored = store.message(m.id.as_str()).await.unwrap().unwrap();
                assert_eq!(stored.seq, m.seq, "the number in memory is the one stored");
                assert_eq!(m.seq < 0, m.address_to.is_some());
                assert!(m.seq.abs() > last, "acceptance order is kept");
                last = m.seq.abs();
                assert_eq!(
                    (
                        &stored.userid,
                        &stored.title,
                        &stored.content,
                        stored.status
                    ),
                    (&m.userid, &m.title, &m.content, m.status)
                );
                assert_eq!(
                    (&stored.address_to, stored.deliver_at, stored.created_at),
                    (&m.address_to, m.deliver_at, m.created_at)
                );
            }
            // u0 and u1 have queued messages, u2 only scheduled ones.
            for (user, lane) in [("u0", true), ("u1", size > 1), ("u2", false)] {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM lanes WHERE userid = $1")
                    .bind(format!("s{size}{user}"))
                    .fetch_one(&store.pool)
                    .await
                    .unwrap();
                assert_eq!(n, i64::from(lane), "s{size}{user}");
            }
        }
        store.close().await;
    }

    #[tokio::test]
    async fn many_rows_commit_in_one_multi_row_insert_without_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = Store::connect(&url).await.unwrap();
        let mut writer = sqlite_writer(&dir.path().join("w.db"));
        let now = UnixMillis::now();
        let mut writes: Vec<Write> = (0..(INSERT_CHUNK * 2 + 3))
            .map(|i| {
                Write::Insert(
                    Box::new(Message::new_queued(
                        MessageId::from_stored(format!("m{i:03}")),
                        UserId::new(if i % 2 == 0 { "alice" } else { "bob" }),
                        Some(format!("t{i}")),
                        Some(format!("c{i}")),
                        now,
                        now + ms(1000),
                    )),
                    Vec::new(),
                    None,
                )
            })
            .collect();
        // Called directly: no one-by-one retry could hide a broken statement.
        writer.write(writes.iter_mut().collect()).unwrap();
        let mut last_seq = 0;
        for write in &writes {
            let Write::Insert(m, ..) = write else {
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
                .is_some_and(|due| due <= UnixMillis::now())
        );
        writer.db.close();
        store.close().await;
    }
}
