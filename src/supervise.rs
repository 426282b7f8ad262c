//! Supervision of long-lived work: what happens when a background task (or thread) panics
//! or ends when it should not. A panic is a bug; the rule is that it may cost the work in hand,
//! never the promise that an accepted message is delivered or visibly failed — and never
//! leaves a live process that answers `200` while it delivers nothing.
//!
//! | Task or thread | On a panic or an unexpected end | Why |
//! |------|---------------------------------|-----|
//! | Scheduler loop | restarted after [`RESTART_PAUSE`], one ERROR line; `/healthz` is 503 while its last pass is older than `delivery.stall_after` | its state lives in the database and in leases it renews; a fresh loop picks it up |
//! | Lane worker | the lane leaves the worker set and is released (due at once; a lane that panics again waits 1 s, 2 s, … up to 1 min), its probe (if any) is handed back, one ERROR line | the message stays `queued` in the database: the next claim sends it |
//! | Storage writer thread | the batch in hand is answered `503`, writes are refused from then on, `/healthz` answers 503 and the process ends with exit status 1 (Docker/systemd restart it) | the state of its connection's transaction is unknown; a new process starts from what was committed |
//! | WAL checkpointer thread | that pass is skipped, one ERROR line, the next pass runs a second later | a missed checkpoint only lets the WAL grow |
//! | WeCom-backed groups' refresh loop | restarted after [`RESTART_PAUSE`], one ERROR line; `/healthz` counts its panics and is 503 while its last pass is older than two `groups.refresh` and a minute | its state is in the database; a group not read stays with its last known members |
//! | Maintenance (hourly pruning) | that pass is skipped, one ERROR line, the next runs an hour later | pruning is idempotent |
//! | Rate-limiter evictor | that pass is skipped, one ERROR line | eviction only bounds memory |
//! | A request handler | answered `500` (tower-http's `CatchPanicLayer`) | one request |
//!
//! Logging never takes anything down: see [`crate::telemetry`].
//!
//! [`Faults`] are test hooks: a test arms a fault point and the task or thread passing it
//! panics (or stalls) there once per arming. Nothing but code calling [`Faults::arm`] can trip one: there is
//! no configuration key, variable or route for it.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio_util::sync::CancellationToken;

/// How long a panicked task that is restarted waits first (a panic that repeats at once
/// must not spin a core or flood the log).
pub const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// The text of a panic's payload (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Runs `future`, turning a panic inside it into `Err` with the panic's message.
pub async fn catch<F: Future>(future: F) -> Result<F::Output, Panicked> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| Panicked(panic_message(payload.as_ref())))
}

/// Runs the loop `task` starts, for ever: whenever it ends — a panic, a bug — that is
/// counted in `panics` (for `/healthz`), logged as `task` with `what` stopped, and the loop
/// started again after [`RESTART_PAUSE`].
pub async fn keep_running<F, Fut>(
    task: &'static str,
    what: &str,
    panics: &std::sync::atomic::AtomicU64,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let why = match catch(start()).await {
            Ok(()) => "it ended".to_owned(),
            Err(panic) => {
                panics.fetch_add(1, Ordering::Relaxed);
                format!("it panicked: {panic}")
            }
        };
        tracing::error!(
            task,
            error = %why,
            "the {what} stopped ({why}); restarting it in {}",
            humantime::format_duration(RESTART_PAUSE)
        );
        tokio::time::sleep(RESTART_PAUSE).await;
    }
}

/// A panic [`catch`] caught: its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Panicked(pub String);

/// Runs one pass of a periodic chore; a panic in it costs that pass and one ERROR line.
pub fn contain<T>(task: &str, pass: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(pass)) {
        Ok(value) => Some(value),
        Err(payload) => {
            tracing::error!(
                task,
                panic = %panic_message(payload.as_ref()),
                "{task} panicked; this pass is skipped, the next one runs as planned"
            );
            None
        }
    }
}

/// Runs `pass` on `owner` every `period` (the first one period from now) until `owner`
/// is dropped; a panic in a pass costs that pass and one ERROR line.
pub async fn every<T>(task: &str, period: Duration, owner: std::sync::Weak<T>, pass: fn(&T)) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(owner) = owner.upgrade() else {
            return;
        };
        contain(task, || pass(&owner));
    }
}

/// Where a test can make background work fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// The scheduler loop panics at the start of a pass.
    SchedulerPanic,
    /// The scheduler loop stops making passes (waits until shutdown) without ending.
    SchedulerStall,
    /// A lane worker panics before an attempt.
    LanePanic,
    /// The storage writer thread panics before committing a batch.
    WriterPanic,
    /// The WeCom-backed groups' refresh loop panics at the start of a pass.
    GroupRefreshPanic,
    /// The escalation loop panics at the start of a pass.
    EscalationPanic,
}

impl FaultPoint {
    const ALL: [Self; 6] = [
        Self::SchedulerPanic,
        Self::SchedulerStall,
        Self::LanePanic,
        Self::WriterPanic,
        Self::GroupRefreshPanic,
        Self::EscalationPanic,
    ];

    fn index(self) -> usize {
        Self::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
}

/// Armed fault points (test hooks; see the module documentation).
#[derive(Debug, Default)]
pub struct Faults {
    armed: [AtomicU32; FaultPoint::ALL.len()],
}

impl Faults {
    /// The next `times` passes through `point` fail.
    pub fn arm(&self, point: FaultPoint, times: u32) {
        self.armed[point.index()].fetch_add(times, Ordering::SeqCst);
    }

    /// How many passes through `point` are still set to fail.
    pub fn armed(&self, point: FaultPoint) -> u32 {
        self.armed[point.index()].load(Ordering::SeqCst)
    }

    /// Whether this pass through `point` fails (using up one arming).
    pub fn trip(&self, point: FaultPoint) -> bool {
        let slot = &self.armed[point.index()];
        // The common case, never armed, is one load.
        slot.load(Ordering::Relaxed) > 0
            && slot
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
    }

    /// Panics when `point` is armed.
    pub fn panic_at(&self, point: FaultPoint) {
        if self.trip(point) {
            panic!("injected fault: {point:?}");
        }
    }
}

/// Shared by everything that runs in the background: the test hooks, and the way work
/// that cannot go on (the storage writer thread) ends the process ([`Supervisor::fatal`]).
#[derive(Debug, Clone, Default)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    faults: Faults,
    fatal: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl Supervisor {
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// `task` (what runs in the background, e.g. `the storage writer`) cannot go on: the
    /// process stops (gracefully, then exits with status 1). The first reason is the one
    /// reported.
    pub fn fatal(&self, task: &str, why: &str) {
        let reason = format!("{task} failed: {why}");
        {
            let mut first = self
                .inner
                .reason
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if first.is_none() {
                *first = Some(reason.clone());
            }
        }
        tracing::error!(
            task,
            error = %why,
            "{reason}; stopping the process so that its supervisor (Docker, systemd) restarts it"
        );
        self.inner.fatal.cancel();
    }

    /// Resolves with the reason once background work has failed for good.
    pub async fn failed(&self) -> String {
        self.inner.fatal.cancelled().await;
        self.reason()
            .unwrap_or_else(|| "a background task failed".to_owned())
    }

    /// Why the process is stopping, once background work has failed for good.
    pub fn reason(&self) -> Option<String> {
        self.inner
            .reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_point_trips_exactly_as_often_as_armed() {
        let faults = Faults::default();
        assert!(!faults.trip(FaultPoint::LanePanic));
        faults.arm(FaultPoint::LanePanic, 2);
        assert!(!faults.trip(FaultPoint::WriterPanic), "points are separate");
        assert!(faults.trip(FaultPoint::LanePanic));
        assert!(faults.trip(FaultPoint::LanePanic));
        assert!(!faults.trip(FaultPoint::LanePanic));
    }

    #[tokio::test]
    async fn a_panic_becomes_its_message() {
        let caught = catch(async { panic!("boom {}", 7) }).await;
        assert_eq!(caught, Err(Panicked("boom 7".to_owned())));
        assert_eq!(catch(async { 3 }).await, Ok(3));
        assert_eq!(contain("chore", || panic!("static")), None::<()>);
        assert_eq!(contain("chore", || 5), Some(5));
    }

    #[tokio::test]
    async fn a_periodic_chore_survives_a_panicking_pass_and_ends_with_its_owner() {
        use std::sync::atomic::AtomicUsize;
        let passes = Arc::new(AtomicUsize::new(0));
        let chore = tokio::spawn(every(
            "test chore",
            Duration::from_millis(5),
            Arc::downgrade(&passes),
            |n: &AtomicUsize| {
                if n.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first pass");
                }
            },
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while passes.load(Ordering::SeqCst) < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "passes go on after a panic"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(passes);
        tokio::time::timeout(Duration::from_secs(5), chore)
            .await
            .expect("it ends once its owner is gone")
            .expect("it never panics itself");
    }

    #[tokio::test]
    async fn the_first_fatal_reason_is_kept() {
        let supervisor = Supervisor::default();
        supervisor.fatal("writer", "first");
        supervisor.fatal("loop", "second");
        let reason = tokio::time::timeout(Duration::from_secs(1), supervisor.failed())
            .await
            .expect("resolved");
        assert_eq!(reason, "writer failed: first");
    }
}
