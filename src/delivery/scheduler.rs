//! The scheduler: one loop that claims due lanes from the database, and one worker per
//! claimed lane that delivers the lane's messages in order.
//!
//! - **Claims.** A lane is claimed with an owner (`delivery.instance_id`) and a lease;
//!   the loop renews the leases of the lanes it works on. A crashed instance's lanes
//!   become claimable when their lease runs out; a restarted one takes its own back at
//!   once ([`Scheduler::start`]).
//! - **Order.** A lane worker always sends the lane's head (lowest `seq`). A transient
//!   failure puts the head into backoff (until the end of its retry window at the latest)
//!   and releases the lane until then: later messages wait behind it. A permanent failure,
//!   or a transient one of a try made at the end of the window, moves the head on to its
//!   next channel or ends it ([`next_step`]); the worker goes on.
//! - **Limits.** Before each send the worker asks [`limits`] when the member may next
//!   receive; if not now, the lane is released until then (and may become a digest).
//! - **Health.** A channel that does not answer is *down*: no lane is claimed except one,
//!   for a probe, at growing intervals but no later than the end of the earliest retry
//!   window waiting for it; when a probe fails, the messages whose window had ended when
//!   it started move on in bulk, by the same rule. One log line when it goes down, one
//!   when it is back.
//! - **Fairness.** A worker gives its lane up after [`LANE_BUDGET`](decide::LANE_BUDGET)
//!   sends or [`LANE_TIME`](decide::LANE_TIME), so a long lane does not keep others
//!   waiting.
//!
//! A lane worker's rules — whether and how to try the head now, and what each outcome
//! means (the record, the channel's health, the counts, the lane's next move) — are in
//! [`decide`], pure and tested with the clock passed in. The worker here ([`drive_lane`],
//! [`attempt`]) only carries them out: it reads what a decision asks for, sends, records,
//! counts, logs and waits, so that what it does can be checked without the awaits, and the
//! awaits without re-deriving the rules.
//!
//! [`drive_lane`]: Scheduler::drive_lane
//! [`attempt`]: Scheduler::attempt

use crate::delivery::MemberChannels;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::decide::{
    self, Admit, After, Attempt, DigestPage, LaneAction, LaneView, Learnt, PartOf, Settlement,
    SlotView,
};
use super::health::{Change, Health};
use super::limits;
use super::next_step::{self, Failure, NextStep, Tried};
use super::quiet::MemberHours;
use super::{BadAddress, Binding, Channel, ChannelError, backoff};
use crate::config::DeliverySettings;
use crate::domain::{ChannelName, MessageId, OutboundAttachment, UserId};
use crate::metrics::{AttemptOutcome, Metrics};
use crate::store::{
    AttemptUpdate, Head, Held, Message, MoveOn, OverdueMessage, Store, StoreError, Waiting,
};
use crate::supervise::{self, FaultPoint, RESTART_PAUSE};
use crate::time::UnixMillis;

/// How long a worker whose lane ran empty waits for the member's next message before
/// giving the lane up (each give-up and re-claim costs database round trips).
const LANE_LINGER: Duration = Duration::from_millis(1000);
/// Messages of a lane read at once (content only up to `store::HEAD_CONTENT_BYTES` each;
/// larger content is read at its turn), so memory stays small per lane.
const PREFETCH: usize = 4;
/// Lanes claimed per database round trip.
const CLAIM_BATCH: usize = 64;
/// The loop looks at the database at least this often (new lanes of other instances,
/// leases that ran out).
const POLL_MAX: Duration = Duration::from_secs(1);
/// While a channel is down, messages whose retry window ended before its latest failed
/// try move on this often (and the next probe is planned by the earliest waiting window).
const EXPIRE_EVERY: Duration = Duration::from_millis(250);
/// Overdue messages read and moved at once when many windows end together.
const EXPIRE_BATCH: usize = 1_000;
/// Scheduled messages released into their lanes per round trip; with more due, the loop
/// goes on at once.
const RELEASE_BATCH: usize = 1_024;
/// How soon to try again when another instance was releasing scheduled messages (or some
/// due ones were locked by another transaction).
const RELEASE_RETRY: Duration = Duration::from_millis(100);
/// A group message whose copies are not all written this long after its acceptance was
/// left by an instance that stopped (see `Store::resume_fanouts`).
const FANOUT_STALE: Duration = Duration::from_secs(5);

/// Send history and idempotency keys are pruned this often.
const PRUNE_EVERY: Duration = Duration::from_secs(10 * 60);
/// Waiting messages looked at when planning a digest.
const LOOKAHEAD: usize = 512;
/// Longest wait between two tries to record an outcome (the database is failing).
const RECORD_RETRY_MAX: Duration = Duration::from_secs(10);
/// After the grace, how long shutdown waits for cut-off attempts to be handed back.
const HANDBACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Lower bound of `delivery.sweep_interval` (zero would make the sweep spin).
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(10);
/// Longest wait before a lane whose worker keeps panicking is worked again (the first
/// panic releases it due at once, each further one in a row doubles the wait from 1 s).
const LANE_PANIC_PAUSE_MAX: Duration = Duration::from_secs(60);
/// How long charges (texts that cost money) are kept: the daily caps look back a day.
const CHARGE_SPAN: Duration = Duration::from_secs(24 * 3600);

/// A configured channel and what the scheduler knows about its health.
struct Slot {
    channel: Arc<dyn Channel>,
    health: Mutex<Health>,
    /// The lane last made due for a probe by a waiting window, and when (see
    /// [`Scheduler::probe_next_window`]).
    probe_lane: Mutex<Option<(UserId, UnixMillis)>>,
    /// A channel whose rate windows are shared by every member (a group chat): one lane at
    /// a time reads its history, sends and records, so that two members' lanes cannot
    /// both take the last place in a window (within this instance).
    turn: tokio::sync::Mutex<()>,
}

impl Slot {
    fn new(channel: Arc<dyn Channel>, settings: &DeliverySettings) -> Self {
        Self {
            channel,
            health: Mutex::new(Health::new(settings.backoff_initial, settings.probe_max)),
            probe_lane: Mutex::default(),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    fn name(&self) -> ChannelName {
        self.channel.name()
    }

    fn label(&self) -> &'static str {
        self.channel.name().label()
    }
}

pub(super) struct Scheduler {
    pub(super) store: Store,
    /// The configured channels (WeCom first).
    channels: Vec<Slot>,
    pub(super) settings: DeliverySettings,
    /// This instance's name in claims.
    owner: String,
    /// Bounds attempts in flight so a backlog cannot open thousands of connections.
    permits: Semaphore,
    /// Shutdown has begun: start no new attempt, claim no lane.
    pub(super) stop: CancellationToken,
    /// The shutdown grace is over: cut attempts in flight off and hand them back.
    abort: CancellationToken,
    tasks: TaskTracker,
    /// Lanes this instance is working on.
    active: Mutex<HashSet<UserId>>,
    /// Capacity freed or a channel came back: look for work now.
    wake: Notify,
    /// Fallbacks since the last INFO line about them (one line a minute at most).
    fallbacks: Mutex<FallbackLog>,
    /// Outcomes are counted here once recorded.
    metrics: Metrics,
    /// When the loop last began a pass (unix ms, [`UnixMillis::as_millis`]): `/healthz` and
    /// `/metrics` report its age.
    last_pass: AtomicI64,
    /// Builds the channels of destinations members added in the chat.
    member_channels: Arc<dyn MemberChannels>,
    /// Their slots, by member, name and robot.
    member_slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Lanes whose worker panicked, and how many times in a row.
    lane_panics: Mutex<HashMap<UserId, u32>>,
    /// `server.public_url`, for the link to a digest's page.
    public_base: Arc<str>,
    /// When the loop plans to release scheduled messages next (unix ms), and the earliest
    /// `deliver_at` of a message accepted here since it planned that
    /// ([`Scheduler::scheduled_for`]): the loop releases at the earlier of the two.
    release_planned: AtomicI64,
    release_hint: AtomicI64,
}

/// Per-message fallback lines are debug-level; at INFO a line a minute at most says that
/// messages are falling back, why (the latest reason) and how many.
#[derive(Default)]
struct FallbackLog {
    last_line: Option<Instant>,
    unlogged: u64,
}

/// At most one INFO line about fallbacks this often.
const FALLBACK_LOG_EVERY: Duration = Duration::from_secs(60);

/// How a lane worker ended.
enum LaneEnd {
    /// Nothing is queued any more; the lane is gone.
    Finished,
    /// Give the lane up until then.
    Release(UnixMillis),
}

/// When each periodic chore of the loop is next due.
struct Timers {
    renew: UnixMillis,
    sweep: UnixMillis,
    /// Whether a sweep ran yet (the first one takes on every unfinished group fan-out).
    swept: bool,
    expire: UnixMillis,
    prune: UnixMillis,
    /// Releasing due scheduled messages: at the earliest `deliver_at`, or after
    /// [`POLL_MAX`] at the latest (another instance may have scheduled an earlier one).
    release: UnixMillis,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data stays consistent whatever panicked while holding the lock.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn until(at: UnixMillis) -> Duration {
    at.since(UnixMillis::now())
}

impl Scheduler {
    pub(super) fn new(
        store: Store,
        channels: Vec<Arc<dyn Channel>>,
        member_channels: Arc<dyn MemberChannels>,
        settings: DeliverySettings,
        owner: String,
        metrics: Metrics,
        public_base: Arc<str>,
    ) -> Self {
        let channels = channels
            .into_iter()
            .map(|channel| Slot::new(channel, &settings))
            .collect();
        Self {
            store,
            channels,
            permits: Semaphore::new(settings.concurrency),
            settings,
            owner,
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            tasks: TaskTracker::new(),
            active: Mutex::default(),
            wake: Notify::new(),
            fallbacks: Mutex::default(),
            metrics,
            last_pass: AtomicI64::new(UnixMillis::now().as_millis()),
            lane_panics: Mutex::default(),
            member_channels,
            member_slots: Mutex::default(),
            public_base,
            release_planned: AtomicI64::new(i64::MIN),
            release_hint: AtomicI64::new(i64::MAX),
        }
    }

    /// A message was stored scheduled for `at`: the loop releases it then, waking for it if
    /// it planned to look later (another instance's messages are found by its poll).
    pub(super) fn scheduled_for(&self, at: UnixMillis) {
        self.release_hint
            .fetch_min(at.as_millis(), Ordering::Relaxed);
        if at.as_millis() < self.release_planned.load(Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    /// How long ago the loop last began a pass.
    pub(super) fn last_pass_age(&self) -> Duration {
        let last_pass = UnixMillis::from_millis(self.last_pass.load(Ordering::Relaxed));
        UnixMillis::now().since(last_pass)
    }

    pub(super) async fn start(self: &Arc<Self>) -> Result<(), StoreError> {
        let released = self.store.release_claims_of(&self.owner).await?;
        if released > 0 {
            tracing::info!(lanes = released, owner = %self.owner, "took back this instance's claims from its previous run");
        }
        let scheduler = Arc::clone(self);
        self.tasks
            .spawn(async move { scheduler.supervise_loop().await });
        Ok(())
    }

    /// Runs the loop until shutdown; a loop that panics or ends early is started again
    /// (see [`crate::supervise`]). Its state is in the database and in `active`, which the
    /// lane workers keep: a fresh loop carries on where the old one stopped.
    async fn supervise_loop(self: Arc<Self>) {
        loop {
            let why = match supervise::catch(Arc::clone(&self).run()).await {
                Ok(()) if self.stop.is_cancelled() => return,
                Ok(()) => "it ended".to_owned(),
                Err(panic) => format!("it panicked: {panic}"),
            };
            tracing::error!(
                task = "scheduler loop",
                error = %why,
                "the delivery scheduler loop stopped ({why}); restarting it in {}",
                humantime::format_duration(RESTART_PAUSE)
            );
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(RESTART_PAUSE) => {}
            }
        }
    }

    pub(super) async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        let grace = self.settings.shutdown_grace;
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                lanes = lock(&self.active).len(),
                "delivery attempts still running at the end of the shutdown grace; \
                 cutting them off, they will be retried after restart"
            );
            self.abort.cancel();
            if tokio::time::timeout(HANDBACK_TIMEOUT, self.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    "some delivery outcomes were not recorded before shutdown; those messages \
                     stay queued and are attempted again after restart"
                );
            }
        }
        // Whatever is still claimed (a worker that could not release) is free at once
        // for the next start or another instance.
        if let Err(err) = self.store.release_claims_of(&self.owner).await {
            tracing::warn!(error = %crate::error::chain(&err), "could not release lane claims at shutdown; they expire with their lease");
        }
    }

    // ---- the loop -------------------------------------------------------------------

    async fn run(self: Arc<Self>) {
        let arrivals = self.store.arrivals();
        let start = UnixMillis::now();
        let mut timers = Timers {
            renew: start + self.settings.lease / 3,
            sweep: start,
            swept: false,
            expire: start,
            prune: start,
            release: start,
        };
        let mut failing = false;
        match self.store.queued_count().await {
            Ok(n) if n > 0 => tracing::info!(queued = n, "resuming delivery of queued messages"),
            _ => {}
        }
        let faults = self.store.supervisor().faults();
        while !self.stop.is_cancelled() {
            let now = UnixMillis::now();
            self.last_pass.store(now.as_millis(), Ordering::Relaxed);
            faults.panic_at(FaultPoint::SchedulerPanic);
            if faults.trip(FaultPoint::SchedulerStall) {
                // A loop stuck in an await that never ends: only `/healthz` can tell.
                self.stop.cancelled().await;
                break;
            }
            let mut wake_at = now + POLL_MAX;
            let claimed_all = match self.housekeeping(now, &mut timers).await {
                Ok(()) => self.claim(now, &mut wake_at).await,
                Err(err) => Err(err),
            };
            match claimed_all {
                Ok(true) => continue,
                Ok(false) => {
                    if failing {
                        tracing::info!("delivery scheduler can read and write the database again");
                        failing = false;
                    }
                }
                Err(err) => {
                    if !failing {
                        tracing::warn!(error = %crate::error::chain(&err), "delivery scheduler cannot use the database; retrying every second");
                        failing = true;
                    }
                }
            }
            wake_at = wake_at
                .min(timers.renew)
                .min(timers.sweep)
                .min(timers.prune)
                .min(timers.release);
            if self.channels.iter().any(|s| !lock(&s.health).is_up()) {
                wake_at = wake_at.min(timers.expire);
            }
            if failing {
                wake_at = wake_at.max(now + POLL_MAX);
            }
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                () = arrivals.any() => {}
                () = self.wake.notified() => {}
                () = tokio::time::sleep(until(wake_at)) => {}
            }
        }
    }

    /// Lease renewal, releasing due scheduled messages, the lane sweep, failing overdue
    /// messages while a channel is down, pruning: each when its time has come.
    async fn housekeeping(&self, now: UnixMillis, due: &mut Timers) -> Result<(), StoreError> {
        let lease = self.settings.lease;
        // A message scheduled here since the last pass may be due before the planned
        // release.
        let hint = self.release_hint.swap(i64::MAX, Ordering::Relaxed);
        due.release = due.release.min(UnixMillis::from_millis(hint));
        if now >= due.release {
            due.release = self.release_due(now).await?;
        }
        self.release_planned
            .store(due.release.as_millis(), Ordering::Relaxed);
        if now >= due.renew {
            let lanes: Vec<UserId> = lock(&self.active).iter().cloned().collect();
            if !lanes.is_empty() {
                self.store
                    .renew_lanes(&self.owner, lanes, now + lease)
                    .await?;
            }
            due.renew = now + lease / 3;
        }
        if now >= due.sweep {
            // Group messages whose copies are not all written: every one at the first
            // sweep (left by the previous run); later, those an instance that stopped left
            // (a live one writes its own within a second).
            let before = due.swept.then(|| now - FANOUT_STALE);
            let resumed = self.store.resume_fanouts(before).await?;
            if resumed > 0 && due.swept {
                tracing::warn!(
                    messages = resumed,
                    "found group messages whose copies another instance did not finish writing; writing them"
                );
            }
            due.swept = true;
            let opened = self.store.open_missing_lanes(now).await?;
            if opened > 0 {
                tracing::warn!(
                    lanes = opened,
                    "found queued messages without a lane; opened lanes for them"
                );
            }
            due.sweep = now + self.settings.sweep_interval.max(MIN_SWEEP_INTERVAL);
        }
        if now >= due.expire {
            let mut more = false;
            for slot in &self.channels {
                let down = {
                    let health = lock(&slot.health);
                    health
                        .down_since()
                        .zip(health.failed_try_at())
                        .map(|((since, why), tried_at)| (since, why.to_owned(), tried_at))
                };
                let Some((since, why, tried_at)) = down else {
                    continue;
                };
                more |= self
                    .move_overdue(slot, (since, &why), tried_at, now)
                    .await?;
                self.probe_next_window(slot, tried_at).await?;
            }
            due.expire = now + if more { Duration::ZERO } else { EXPIRE_EVERY };
        }
        if now >= due.prune {
            let span = self
                .channels
                .iter()
                .map(|s| limits::history_span(s.channel.rate_windows()))
                .max()
                .unwrap_or_default();
            self.store.prune_sends(now - span).await?;
            self.store.prune_charges(now - CHARGE_SPAN).await?;
            self.store.expire_idempotency_keys(now).await?;
            due.prune = now + PRUNE_EVERY;
        }
        Ok(())
    }

    /// Releases scheduled messages due by `now` into their lanes (a batch; they are claimed
    /// in this same pass), and answers when to look again: at once if the batch was full,
    /// shortly if another instance was releasing, else at the earliest `deliver_at` still
    /// waiting, but within [`POLL_MAX`] (other instances schedule messages too). Nothing
    /// scheduled is held in memory: the next time is one index probe.
    async fn release_due(&self, now: UnixMillis) -> Result<UnixMillis, StoreError> {
        let Some(released) = self
            .store
            .release_due(now, RELEASE_BATCH, self.settings.retry_window)
            .await?
        else {
            // Another instance is releasing them.
            return Ok(now + RELEASE_RETRY);
        };
        if released > 0 {
            tracing::debug!(
                messages = released,
                "scheduled messages are due; released into their lanes"
            );
        }
        if released >= RELEASE_BATCH {
            return Ok(now);
        }
        let poll = now + POLL_MAX;
        Ok(match self.store.next_scheduled_at().await? {
            // Due and not released: locked by another transaction (a cancel, another
            // instance's release that began just now).
            Some(at) if at <= now => now + RELEASE_RETRY,
            Some(at) => at.min(poll),
            None => poll,
        })
    }

    /// While `slot` is down (since when, why): the messages waiting for it whose retry
    /// window had ended when its latest failed try started (`tried_at`) take their next
    /// step by the rule a lane worker applies to its head ([`next_step::after_failure`]):
    /// that try was their last. Answers whether a full batch was read (there may be more).
    async fn move_overdue(
        &self,
        slot: &Slot,
        (since, why): (UnixMillis, &str),
        tried_at: UnixMillis,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let overdue = self
            .store
            .overdue(slot.name(), tried_at, now, EXPIRE_BATCH)
            .await?;
        if overdue.is_empty() {
            return Ok(false);
        }
        let full = overdue.len() >= EXPIRE_BATCH;
        let deadline_at = self.fresh_deadline();
        let moves: Vec<(OverdueMessage, MoveOn)> = overdue
            .into_iter()
            .filter_map(|m| {
                let tried = Tried {
                    route: &m.route,
                    delivered_before: m.delivered_before,
                    deadline_at: m.deadline_at,
                };
                // The channel's failed try, not one of this message: never a retry of its
                // own (and none is due: its window had ended when that try started).
                let step = match next_step::after_failure(
                    tried,
                    tried_at,
                    Failure::Transient { retry_at: now },
                ) {
                    NextStep::Retry { .. } => return None,
                    NextStep::Fallback { route } => MoveOn::Next { route, deadline_at },
                    NextStep::End { failed } => MoveOn::End { failed },
                };
                Some((m, step))
            })
            .collect();
        let error = format!(
            "{} unreachable since {} ({why}); gave up when it was still unreachable at the end \
             of the retry window ({})",
            slot.label(),
            humantime::format_rfc3339_seconds(since.to_system_time()),
            humantime::format_duration(self.settings.retry_window)
        );
        let done = self
            .store
            .move_overdue(slot.name(), now, &error, moves)
            .await?;
        self.metrics
            .attempts(slot.name(), AttemptOutcome::Failed, done.handled);
        self.metrics.failed(slot.name(), done.failed);
        if done.handled > 0 {
            tracing::warn!(
                messages = done.handled,
                channel = %slot.name(),
                "{} still unreachable at the end of their retry window: messages go on to \
                 their next channel, or fail if they have none",
                slot.label()
            );
        }
        Ok(full)
    }

    /// While `slot` is down, its next probe starts no later than the end of the earliest
    /// retry window still waiting for it (see [`Health::probe_by`]), and that message's
    /// lane is due then, to make it: a message moves on only if a try at the end of its
    /// window fails, however far apart the regular probes have grown.
    ///
    /// A lane is made due once per planned probe: one whose worker gives it back until
    /// later (its head waits for something else) is not made due again every pass. (One
    /// that was being worked on is made due once it is free.)
    async fn probe_next_window(&self, slot: &Slot, tried_at: UnixMillis) -> Result<(), StoreError> {
        let Some(next) = self.store.next_window(slot.name(), tried_at).await? else {
            return Ok(());
        };
        let Some(at) = lock(&slot.health).probe_by(next.deadline_at) else {
            return Ok(());
        };
        let plan = (next.userid, at);
        let planned = lock(&slot.probe_lane).as_ref() == Some(&plan);
        if !planned
            && next.lane_due.is_some_and(|due| due > at)
            && self.store.lane_due_by(&plan.0, at).await? > 0
        {
            *lock(&slot.probe_lane) = Some(plan);
        }
        Ok(())
    }

    /// Claims due lanes up to the free capacity (one, for a probe, while the channel is
    /// down) and starts a worker for each. Returns `true` when it claimed all it asked for
    /// (there may be more: look again at once); lowers `wake_at` to when work is due.
    async fn claim(
        self: &Arc<Self>,
        now: UnixMillis,
        wake_at: &mut UnixMillis,
    ) -> Result<bool, StoreError> {
        let capacity = self
            .settings
            .max_in_flight
            .saturating_sub(lock(&self.active).len());
        if capacity == 0 {
            return Ok(false);
        }
        let admits = self.admits(now);
        let limit = match admits {
            Err(probe_at) => {
                *wake_at = (*wake_at).min(probe_at);
                return Ok(false);
            }
            Ok(Some(probes)) => probes.min(capacity),
            Ok(None) => CLAIM_BATCH.min(capacity),
        };
        let lease_until = now + self.settings.lease;
        let claimed = self
            .store
            .claim_lanes(&self.owner, now, lease_until, limit)
            .await?;
        let full = claimed.len() == limit;
        for userid in claimed {
            if !lock(&self.active).insert(userid.clone()) {
                // Cannot happen (a worker leaves `active` before giving its lane up);
                // if it did, the lease would run out and the lane be claimed again.
                tracing::warn!(userid = %userid, "claimed a lane that is already being worked on");
                continue;
            }
            let scheduler = Arc::clone(self);
            self.tasks
                .spawn(async move { scheduler.work_lane(userid).await });
        }
        if full && admits == Ok(None) {
            return Ok(true);
        }
        if let Some(due) = self.store.next_lane_due().await? {
            *wake_at = (*wake_at).min(due.max(now + Duration::from_millis(1)));
        }
        Ok(false)
    }

    // ---- one lane ---------------------------------------------------------------------

    async fn work_lane(self: Arc<Self>, userid: UserId) {
        let end = match supervise::catch(self.drive_lane(&userid)).await {
            Ok(Ok(end)) => {
                lock(&self.lane_panics).remove(&userid);
                end
            }
            Ok(Err(err)) => {
                tracing::warn!(userid = %userid, error = %crate::error::chain(&err), "lane interrupted by a database error; retrying it shortly");
                LaneEnd::Release(UnixMillis::now() + Duration::from_secs(1))
            }
            Err(panic) => {
                // A bug. The lane's messages are queued in the database: give the lane
                // back, to be worked again at once — later if it keeps panicking.
                let in_a_row = {
                    let mut panics = lock(&self.lane_panics);
                    let n = panics.entry(userid.clone()).or_insert(0);
                    *n = n.saturating_add(1);
                    *n
                };
                let pause = lane_panic_pause(in_a_row);
                tracing::error!(
                    task = "lane worker",
                    userid = %userid,
                    panic = %panic,
                    in_a_row,
                    "a lane worker panicked; its lane is released and worked again in {}",
                    humantime::format_duration(pause)
                );
                LaneEnd::Release(UnixMillis::now() + pause)
            }
        };
        // Out of `active` before the release commits: from that commit on the loop may
        // claim the lane again, and a claim of a lane still marked active would find no
        // worker to run it (it would sit claimed until its lease ran out).
        lock(&self.active).remove(&userid);
        if let LaneEnd::Release(due) = end
            && let Err(err) = self.store.release_lane(&self.owner, &userid, due).await
        {
            // The lease runs out and the lane is claimed again then.
            tracing::warn!(userid = %userid, error = %crate::error::chain(&err), "could not release a lane; it is retried when its lease expires");
        }
        self.wake.notify_one();
    }

    async fn drive_lane(&self, userid: &UserId) -> Result<LaneEnd, StoreError> {
        // Registered before the first read, so every message committed after any read
        // of this lane wakes the worker: an empty read plus no wake-up means empty.
        let arrivals = self.store.arrivals().watch(userid);
        // What was sent to the member on each channel with rate windows, read when first
        // needed (most lanes only ever use one channel).
        let mut histories: HashMap<ChannelName, Vec<UnixMillis>> = HashMap::new();
        let claimed_at = Instant::now();
        let mut sent = 0;
        // The next few messages of the lane, head first (one read for several sends).
        let mut ahead: VecDeque<Head> = VecDeque::new();
        // Whether the database may hold queued messages not in `ahead`; the highest `seq`
        // read so far (what the watch brings is new only above it).
        let mut maybe_more = true;
        let mut last_seq = 0;
        // The member's quiet hours and offset: read once per claim, before the first head
        // (a change in the chat reaches the lane at its next claim; what the change
        // re-times is in the store already).
        let mut quiet: Option<MemberHours> = None;
        loop {
            if self.stop.is_cancelled() {
                return Ok(LaneEnd::Release(UnixMillis::now()));
            }
            if arrivals.released() {
                // Released scheduled messages may belong ahead of what was read.
                ahead.clear();
                maybe_more = true;
            }
            if ahead.is_empty() && maybe_more {
                // What the watch holds now is in the database too: read it from there.
                drop(arrivals.take());
                ahead = self.store.lane_heads(userid, PREFETCH).await?.into();
                maybe_more = ahead.len() == PREFETCH;
                last_seq = ahead
                    .back()
                    .map_or(last_seq, |h| h.message.seq.max(last_seq));
            }
            let Some(next) = ahead.front() else {
                // Under steady traffic the member's next message is often close: wait a
                // moment for it rather than giving the lane up and claiming it again —
                // unless the slots are needed for other members.
                if decide::lingers(claimed_at.elapsed(), self.may_linger()) {
                    tokio::select! {
                        biased;
                        () = self.stop.cancelled() => return Ok(LaneEnd::Release(UnixMillis::now())),
                        () = arrivals.arrived() => {
                            let taken = arrivals.take();
                            if taken.missed {
                                maybe_more = true;
                            }
                            for message in taken.messages {
                                if message.seq > last_seq {
                                    last_seq = message.seq;
                                    ahead.push_back(Head { message, complete: true });
                                } else if message.seq < 0 {
                                    // A verification mail: it goes first; read the lane.
                                    maybe_more = true;
                                }
                            }
                            continue;
                        }
                        () = tokio::time::sleep(LANE_LINGER) => {}
                    }
                }
                if self.store.finish_lane(&self.owner, userid).await? {
                    return Ok(LaneEnd::Finished);
                }
                // A message arrived after we looked: go on with it.
                maybe_more = true;
                continue;
            };
            let hours = match quiet {
                Some(hours) => hours,
                None => *quiet.insert(self.member_hours(userid).await?),
            };
            let now = UnixMillis::now();
            let view = LaneView {
                due_at: next.message.next_attempt_at,
                channel: next.message.route.first(),
                sent,
                held: claimed_at.elapsed(),
                quiet_until: decide::quiet_hold(&next.message, &hours, now),
            };
            let channel = view.channel;
            // A destination the member added in the chat has a slot of its own, made when
            // first used.
            let member_slot = match (self.slot(channel), channel) {
                (None, ChannelName::Dest(_)) => self.member_slot(userid, channel).await?,
                _ => None,
            };
            let found = self.slot(channel).or(member_slot.as_deref());
            let slot = match decide::admit(&view, found, now) {
                Admit::Go(slot) => slot,
                Admit::Release(at) => return Ok(LaneEnd::Release(at)),
                Admit::Hold(until) => {
                    // Out of the lane until the window ends; the messages behind it go on.
                    let Some(Head { message, .. }) = ahead.pop_front() else {
                        continue;
                    };
                    if self.store.hold(&message.id, until, Held::Quiet).await? {
                        tracing::debug!(id = %message.id, userid = %userid, until = until.as_millis(), "held for the member's quiet hours");
                    } else {
                        // No longer queued (cancelled meanwhile): read the lane again.
                        ahead.clear();
                        maybe_more = true;
                    }
                    continue;
                }
                Admit::GiveUp(reason) => {
                    // The route names a channel this server does not have (any more).
                    let Some(Head { message, .. }) = ahead.pop_front() else {
                        continue;
                    };
                    match self
                        .give_up(&message, channel, message.attempts, reason)
                        .await
                    {
                        After::Release(at) => return Ok(LaneEnd::Release(at)),
                        After::Next | After::Reread => {
                            ahead.clear();
                            maybe_more = true;
                            continue;
                        }
                    }
                }
            };
            // The channel's own rate windows (and digests, where it has them); what the
            // decision needs is read only when it asks (see `decide::next_action`).
            let windows = slot.channel.rate_windows();
            // Shared windows: this lane's turn, and the history as it is now (another
            // member's lane may have sent since it was read).
            // Across instances (PostgreSQL) the turn is an advisory lock held until the send
            // is recorded.
            let shared = slot.channel.shared_windows() && !windows.is_empty();
            let _turn = if shared {
                histories.remove(&channel);
                Some(slot.turn.lock().await)
            } else {
                None
            };
            let mut shared_turn = if shared {
                self.store.shared_turn(channel).await?
            } else {
                None
            };
            let digest_after = decide::digest_after(
                self.settings.digest_after,
                &next.message,
                channel,
                slot.channel.capabilities().digests,
                &hours,
                now,
            );
            // The waiting messages, and when each was accepted.
            let mut waiting: Option<(Vec<Waiting>, Vec<UnixMillis>)> = None;
            let mut gate = None;
            let (probe, digest) = loop {
                let view = SlotView {
                    windows,
                    digest_after,
                    burst: decide::quiet_burst(&next.message, digest_after),
                    history: histories.get(&channel).map(Vec::as_slice),
                    waiting: waiting.as_ref().map(|(_, accepted)| accepted.as_slice()),
                    gate,
                };
                match decide::next_action(&view, now) {
                    LaneAction::Release(at) => {
                        if let Some(turn) = shared_turn.take() {
                            turn.release().await;
                        }
                        return Ok(LaneEnd::Release(at));
                    }
                    LaneAction::ReadHistory => {
                        let since = UnixMillis::now() - limits::history_span(windows);
                        let history = if slot.channel.shared_windows() {
                            self.store.channel_history(channel, since).await?
                        } else {
                            self.store.send_history(userid, channel, since).await?
                        };
                        histories.insert(channel, history);
                    }
                    LaneAction::ReadWaiting => {
                        let read = self.store.lane_waiting(userid, channel, LOOKAHEAD).await?;
                        let accepted = read.iter().map(|w| w.created_at).collect();
                        waiting = Some((read, accepted));
                    }
                    LaneAction::AskGate => gate = Some(lock(&slot.health).gate(now)),
                    LaneAction::Send { probe } => break (probe, false),
                    LaneAction::Digest { probe } => break (probe, true),
                }
            };
            // A probe that ends without an outcome (a panic) is handed back.
            let probe_guard = ProbeGuard {
                slot,
                wake: &self.wake,
                armed: probe,
            };
            let carried = waiting.filter(|_| digest).map(|(waiting, _)| waiting);
            let digest = carried.is_some();
            let head = match ahead.pop_front() {
                Some(Head {
                    message,
                    complete: true,
                }) => message,
                // Large content is read only now, for its turn.
                Some(Head { message, .. }) => {
                    match self.store.message(message.id.as_str()).await? {
                        Some(full) => full,
                        None => continue,
                    }
                }
                None => continue,
            };
            // Its images and files, read only for a message that has some.
            let attachments = if head.media_count > 0 {
                self.store.outbound_attachments(&head.id).await?
            } else {
                Vec::new()
            };
            self.store
                .supervisor()
                .faults()
                .panic_at(FaultPoint::LanePanic);
            let after = self
                .attempt(
                    &head,
                    attachments,
                    slot,
                    carried,
                    probe,
                    histories.get_mut(&channel),
                    hours.utc_offset,
                )
                .await;
            probe_guard.disarm();
            // The send is recorded (or handed back): the next lane may read the history.
            if let Some(turn) = shared_turn.take() {
                turn.release().await;
            }
            match after {
                After::Next => sent += 1,
                After::Reread => {
                    sent += 1;
                    ahead.clear();
                    maybe_more = true;
                    continue;
                }
                After::Release(at) => return Ok(LaneEnd::Release(at)),
            }
            if digest {
                // The digest carried some of what was read ahead: read again.
                ahead.clear();
                maybe_more = true;
            }
        }
    }

    /// One attempt at the head on `slot` (alone, or as the first of a digest, its times
    /// shown at `utc_offset`: the member's), its outcome recorded. What the outcome means
    /// is [`decide::settle_outcome`]'s to say; this does what it says.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        head: &Message,
        attachments: Vec<OutboundAttachment>,
        slot: &Slot,
        carried: Option<Vec<Waiting>>,
        probe: bool,
        history: Option<&mut Vec<UnixMillis>>,
        utc_offset: i32,
    ) -> After {
        let channel = slot.name();
        let permit = tokio::select! {
            biased;
            () = self.stop.cancelled() => None,
            permit = self.permits.acquire() => permit.ok(),
        };
        let Some(_permit) = permit.filter(|_| !self.stop.is_cancelled()) else {
            if probe {
                lock(&slot.health).probe_abandoned();
            }
            return After::Release(UnixMillis::now());
        };
        let address = match self.address_for(head, slot).await {
            Ok(address) => address,
            Err(reason) => {
                // Nothing was sent: the channel's health is unknown, the probe not made.
                if probe {
                    lock(&slot.health).probe_abandoned();
                    self.wake.notify_one();
                }
                return self
                    .give_up(head, channel, head.attempts, reason.to_string())
                    .await;
            }
        };
        let capabilities = slot.channel.capabilities();
        // A message with attachments, on a channel that sends them separately, goes part
        // by part: this try is its next part.
        let labels = decide::parts(capabilities.attachments, &attachments);
        let (outbound, digest) = match carried {
            None => {
                let page = head
                    .page_key
                    .as_deref()
                    .map(|key| head.id.page_url(&self.public_base, key));
                let outbound = decide::with_attachments(
                    decide::outbound(head, address),
                    attachments,
                    capabilities.attachments,
                    head.parts_done,
                    page.as_deref(),
                    capabilities.max_text_bytes,
                );
                (outbound, None)
            }
            Some(waiting) => {
                let id = MessageId::generate();
                let key = crate::token::page_key();
                let url = id.page_url(&self.public_base, &key);
                let composed = decide::compose_digest(
                    head,
                    waiting,
                    address,
                    DigestPage { id, key, url },
                    capabilities.max_text_bytes,
                    utc_offset,
                );
                (
                    composed.outbound,
                    Some((composed.record, composed.carried_at)),
                )
            }
        };
        let attempts = head.attempts + 1;
        let sent_at = UnixMillis::now();
        let outcome = tokio::select! {
            // An attempt that has finished wins over the end of the grace: its outcome is
            // recorded rather than thrown away.
            biased;
            outcome = slot.channel.deliver(&outbound) => outcome,
            () = self.abort.cancelled() => {
                if probe {
                    lock(&slot.health).probe_abandoned();
                    self.wake.notify_one();
                }
                tracing::warn!(id = %head.id, attempts, channel = %channel, "delivery attempt cut off by shutdown");
                return self.apply(channel, decide::cut_off(head, channel, UnixMillis::now())).await;
            }
        };
        let part = labels.as_deref().map(|labels| PartOf {
            index: decide::part_index(outbound.part),
            labels,
        });
        let settlement = decide::settle_outcome(
            Attempt {
                head,
                channel,
                sent_at,
                digest,
                part,
            },
            &outcome,
            UnixMillis::now(),
            rand::random::<f64>(),
            &self.settings,
        );
        match &settlement.learnt {
            Learnt::Reachable => self.reachable(slot),
            Learnt::Unreachable { reason } => self.unreachable(slot, sent_at, reason),
            Learnt::Nothing => {}
        }
        if let (Some(at), Some(history)) = (settlement.sent, history) {
            history.push(at);
        }
        match &outcome {
            Err(ChannelError::Unconfirmed { reason }) => {
                tracing::warn!(id = %head.id, attempts, channel = %channel, error = %reason, "delivery unconfirmed; not resent on this channel");
            }
            Err(ChannelError::Permanent { reason }) => {
                tracing::debug!(id = %head.id, attempts, channel = %channel, error = %reason, "delivery failed permanently on this channel");
            }
            Ok(()) | Err(ChannelError::Transient { .. } | ChannelError::Wait { .. }) => {}
        }
        // The permit is held while the outcome is recorded: if the database cannot take
        // writes, no further messages are sent that could not be recorded either.
        self.settle(head, channel, settlement).await
    }

    /// The member's quiet hours and offset, theirs or the server's (one small read).
    async fn member_hours(&self, userid: &UserId) -> Result<MemberHours, StoreError> {
        let own = self.store.member_quiet(userid).await?;
        Ok(MemberHours::of(
            own.quiet,
            own.utc_offset,
            self.settings.quiet_hours,
            self.settings.utc_offset,
        ))
    }

    /// `channel` cannot deliver the head (a permanent failure, or nothing to try it with):
    /// it goes on to the next channel of its route, or ends when none is left.
    async fn give_up(
        &self,
        head: &Message,
        channel: ChannelName,
        attempts: i64,
        error: String,
    ) -> After {
        let settlement = decide::give_up(
            head,
            channel,
            attempts,
            error,
            UnixMillis::now(),
            &self.settings,
        );
        self.settle(head, channel, settlement).await
    }

    /// Logs the head's step and records it ([`Self::apply`]).
    async fn settle(&self, head: &Message, channel: ChannelName, settlement: Settlement) -> After {
        match &settlement.update {
            AttemptUpdate::DigestDelivered { digest, .. } => {
                tracing::debug!(digest = %digest.id, messages = digest.carried.len(), "delivered a digest");
            }
            AttemptUpdate::PartDelivered { attempts, note, .. } => {
                tracing::debug!(id = %head.id, attempts = *attempts, channel = %channel, part = %note, "delivered a part; the next follows");
            }
            AttemptUpdate::Delivered { attempts, .. }
            | AttemptUpdate::NextChannel {
                attempts,
                delivered: true,
                ..
            } => {
                tracing::debug!(id = %head.id, attempts = *attempts, channel = %channel, "delivered");
            }
            AttemptUpdate::Retry {
                attempts,
                error,
                next_attempt_at,
                ..
            } => {
                tracing::debug!(id = %head.id, attempts = *attempts, channel = %channel, retry_in = ?until(*next_attempt_at), error = %error, "delivery attempt failed; will retry");
            }
            AttemptUpdate::NextChannel { route, error, .. } => {
                let error = error.as_deref().unwrap_or_default();
                tracing::debug!(id = %head.id, from = %channel, to = %route.first(), error = %error, "falling back to the next channel");
                self.log_fallback(channel, route.first(), error);
            }
            AttemptUpdate::Failed {
                attempts, error, ..
            } => {
                tracing::debug!(id = %head.id, attempts = *attempts, channel = %channel, error = %error, "delivery failed");
            }
        }
        self.apply(channel, settlement).await
    }

    /// Records the settlement's update and, once it is committed, counts it; answers what
    /// the lane does next (see [`After::unrecorded`]).
    async fn apply(&self, channel: ChannelName, settlement: Settlement) -> After {
        let Settlement {
            update,
            count,
            after,
            ..
        } = settlement;
        if !self.record(update).await {
            return after.unrecorded(UnixMillis::now());
        }
        self.metrics.attempts(channel, count.outcome, 1);
        for accepted_at in count.delivered {
            self.metrics.delivered(channel, accepted_at);
        }
        if count.failed {
            self.metrics.failed(channel, 1);
        }
        after
    }

    /// One INFO line a minute at most for fallbacks, with how many there were.
    fn log_fallback(&self, from: ChannelName, to: ChannelName, error: &str) {
        let mut log = lock(&self.fallbacks);
        log.unlogged += 1;
        if log
            .last_line
            .is_some_and(|at| at.elapsed() < FALLBACK_LOG_EVERY)
        {
            return;
        }
        let messages = std::mem::take(&mut log.unlogged);
        log.last_line = Some(Instant::now());
        drop(log);
        tracing::info!(
            from = %from,
            to = %to,
            messages,
            error = %error,
            "{} could not deliver {messages} message(s) since the last such line; they go on \
             by {} (latest reason: {error})",
            from.label(),
            to.label()
        );
    }

    /// The retry window of a message that starts on its next channel now.
    fn fresh_deadline(&self) -> UnixMillis {
        UnixMillis::now() + self.settings.retry_window
    }

    /// Where the message goes on a channel that needs an address: the message's own
    /// (a verification code), else the member's bound one. `None` on channels that reach
    /// members by userid; `Err` with the reason when there is no address.
    async fn address_for(&self, head: &Message, slot: &Slot) -> Result<Option<String>, NoAddress> {
        let Some(binding) = slot.channel.binding() else {
            return Ok(None);
        };
        if let Some(fixed) = head.address_to.as_deref() {
            return Ok(Some((binding.parse)(fixed)?));
        }
        match self.store.binding(&head.userid, slot.name()).await {
            Ok(Some(address)) => Ok(Some(address)),
            Ok(None) => Err(NoAddress::Unbound(*binding)),
            Err(error) => Err(NoAddress::Unreadable {
                noun: binding.noun.1,
                error,
            }),
        }
    }

    /// Each configured channel's health now, in route order.
    pub(super) fn channel_health(&self) -> Vec<(ChannelName, super::health::Snapshot)> {
        self.channels
            .iter()
            .map(|slot| (slot.name(), lock(&slot.health).snapshot()))
            .collect()
    }

    /// The health of the destinations members added in the chat that this instance has
    /// used, by member and name, where there is something to say: down now, or down once
    /// since it was first used. Neither the robot's address nor its key is in it.
    pub(super) fn member_channel_health(
        &self,
    ) -> Vec<(UserId, ChannelName, super::health::Snapshot)> {
        let mut found: Vec<(UserId, ChannelName, super::health::Snapshot)> =
            lock(&self.member_slots)
                .iter()
                .filter_map(|(key, slot)| {
                    // `{userid}\0{name}\0{identity}`: see `member_slot`.
                    let userid = key.split('\0').next()?;
                    let health = lock(&slot.health).snapshot();
                    (!health.up || health.last_error.is_some())
                        .then(|| (UserId::new(userid), slot.name(), health))
                })
                .collect();
        found.sort_by(|a, b| (a.0.as_str(), a.1.as_str()).cmp(&(b.0.as_str(), b.1.as_str())));
        found
    }

    fn slot(&self, name: ChannelName) -> Option<&Slot> {
        self.channels.iter().find(|s| s.name() == name)
    }

    /// The slot of the member's own destination `name`, as stored now (`None`: no such
    /// destination, or one that can no longer be used — e.g. a base that changed).
    /// Slots are kept per member, name and robot, so each has its own health.
    async fn member_slot(
        &self,
        userid: &UserId,
        name: ChannelName,
    ) -> Result<Option<Arc<Slot>>, StoreError> {
        let Some(stored) = self.store.member_destination(userid, name).await? else {
            return Ok(None);
        };
        let (identity, channel) = match self.member_channels.build(userid, &stored) {
            Ok(built) => built,
            Err(why) => {
                tracing::warn!(userid = %userid, destination = %name, error = %why, "a member's destination cannot be used");
                return Ok(None);
            }
        };
        let key = format!("{userid}\u{0}{name}\u{0}{identity}");
        let mut slots = lock(&self.member_slots);
        Ok(Some(Arc::clone(slots.entry(key).or_insert_with(|| {
            Arc::new(Slot::new(channel, &self.settings))
        }))))
    }

    /// How many lanes the loop may claim now: all (`None`) while any channel is up — a
    /// lane whose head waits for a channel that is down gives itself back until that
    /// channel's next probe —, else the probes that are due, else none before the
    /// returned time.
    fn admits(&self, now: UnixMillis) -> Result<Option<usize>, UnixMillis> {
        let mut probes = 0;
        let mut earliest = UnixMillis::MAX;
        for slot in &self.channels {
            match lock(&slot.health).admits(now) {
                Ok(None) => return Ok(None),
                Ok(Some(n)) => probes += n,
                Err(at) => earliest = earliest.min(at),
            }
        }
        if probes > 0 {
            Ok(Some(probes))
        } else {
            Err(earliest)
        }
    }

    /// Lingering keeps a slot busy: only while a slot is free for another member's lane.
    fn may_linger(&self) -> bool {
        lock(&self.active).len() < self.settings.max_in_flight
    }

    fn reachable(&self, slot: &Slot) {
        let change = lock(&slot.health).reachable(UnixMillis::now());
        if let Some(Change::CameBack { down_for }) = change {
            tracing::info!(
                channel = %slot.name(),
                down_for = %humantime::format_duration(Duration::from_secs(down_for.as_secs())),
                "{} reachable again after {}; resuming delivery",
                slot.label(),
                humantime::format_duration(Duration::from_secs(down_for.as_secs()))
            );
            // Lanes that gave themselves back until its next probe may go now.
            let store = self.store.clone();
            let scheduler_wake = UnixMillis::now();
            self.tasks.spawn(async move {
                if let Err(err) = store.lanes_due_by(scheduler_wake).await {
                    tracing::debug!(error = %crate::error::chain(&err), "could not bring lanes forward");
                }
            });
            self.wake.notify_one();
        }
    }

    /// A try that started at `started_at` could not reach the channel.
    fn unreachable(&self, slot: &Slot, started_at: UnixMillis, reason: &str) {
        let (change, every) = {
            let mut health = lock(&slot.health);
            let now = UnixMillis::now();
            let change = health.unreachable(now, started_at, reason);
            if let Some(cooldown) = slot.channel.cooldown() {
                // Rounded up: a probe a fraction of a millisecond early would still get the
                // failure already seen.
                health.quiet_until(now + cooldown + Duration::from_millis(1));
            }
            (change, health.probe_interval())
        };
        // The loop plans the next probe.
        self.wake.notify_one();
        if change == Some(Change::WentDown) {
            let store = self.store.clone();
            let label = slot.label();
            let channel = slot.name();
            let reason = reason.to_owned();
            let probe_max = self.settings.probe_max;
            // The count is a query: log from a task of its own.
            self.tasks.spawn(async move {
                let waiting = store.queued_count().await.unwrap_or(-1);
                tracing::warn!(
                    waiting,
                    channel = %channel,
                    error = %reason,
                    "{label} unreachable ({reason}); {waiting} messages waiting; probing with one \
                     message at a time, every {} growing to {}",
                    humantime::format_duration(every.unwrap_or_default()),
                    humantime::format_duration(probe_max),
                );
            });
        }
    }

    /// Records an outcome, trying again (with backoff) until it is committed or the
    /// shutdown grace is over. Giving up leaves the message `queued`: attempted again
    /// after restart (at least once), never lost. Returns whether it was recorded.
    async fn record(&self, update: AttemptUpdate) -> bool {
        let mut failures: u32 = 0;
        loop {
            let err = match self.store.record_attempt(update.clone()).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(failures, "recorded a delivery outcome after retrying");
                    }
                    return true;
                }
                Err(err) => err,
            };
            failures = failures.saturating_add(1);
            if self.abort.is_cancelled() {
                tracing::error!(
                    error = %crate::error::chain(&err),
                    "could not record a delivery outcome before shutdown; the message stays \
                     queued and is attempted again after restart"
                );
                return false;
            }
            let delay = backoff::delay(
                failures,
                self.settings.backoff_initial,
                self.settings.backoff_max.min(RECORD_RETRY_MAX),
                rand::random::<f64>(),
            );
            if failures == 1 {
                tracing::warn!(error = %crate::error::chain(&err), retry_in = ?delay, "could not record a delivery outcome; will retry");
            }
            tokio::select! {
                biased;
                // One last try once the grace is over.
                () = self.abort.cancelled() => {}
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// How long a lane whose worker panicked `in_a_row` times waits before it is worked again:
/// not at all after one panic, then 1 s, 2 s, 4 s … up to [`LANE_PANIC_PAUSE_MAX`].
fn lane_panic_pause(in_a_row: u32) -> Duration {
    match in_a_row {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 2).min(6)).min(LANE_PANIC_PAUSE_MAX),
    }
}

/// Hands a probe back when it ends without an outcome (the worker panicked or was
/// dropped): otherwise the channel would wait for it for ever and never be probed again.
struct ProbeGuard<'a> {
    slot: &'a Slot,
    wake: &'a Notify,
    armed: bool,
}

impl ProbeGuard<'_> {
    /// The attempt recorded the probe's outcome itself.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.slot.health).probe_abandoned();
            self.wake.notify_one();
        }
    }
}

/// Why a message has no address on a channel that needs one: its `last_error`.
#[derive(Debug, thiserror::Error)]
enum NoAddress {
    /// The message's own address (a verification code's) is not one the channel takes.
    #[error(transparent)]
    Invalid(#[from] BadAddress),
    /// The member has bound none.
    #[error("{}", .0.missing())]
    Unbound(Binding),
    /// The member's binding could not be read; `noun`: what the address is called.
    #[error("could not read the member's {noun}: {}", crate::error::chain(.error))]
    Unreadable {
        noun: &'static str,
        error: StoreError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_that_keeps_panicking_waits_longer_each_time_up_to_a_minute() {
        assert_eq!(lane_panic_pause(1), Duration::ZERO);
        assert_eq!(lane_panic_pause(2), Duration::from_secs(1));
        assert_eq!(lane_panic_pause(3), Duration::from_secs(2));
        assert_eq!(lane_panic_pause(7), Duration::from_secs(32));
        assert_eq!(lane_panic_pause(8), LANE_PANIC_PAUSE_MAX);
        assert_eq!(lane_panic_pause(u32::MAX), LANE_PANIC_PAUSE_MAX);
    }
}
