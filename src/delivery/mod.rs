//! Delivery: the outbox worker, its retry policy, and the channels behind one trait.
//!
//! Flow: `/send` calls [`Outbox::accept`], which commits the message (group commit) and
//! hands it to a task of its own that attempts delivery, waits out backoffs and records
//! every outcome. Insert and hand-over happen in that task, not in the request, so a
//! client that goes away while its message is being committed cannot leave a committed
//! message without a task. The database row is the source of truth: on start-up
//! [`Outbox::start`] re-schedules every message still `queued`.
//!
//! Every live task *owns* its message id (an in-memory set). A periodic sweep
//! (`delivery.sweep_interval`) re-schedules due `queued` rows that no task owns: a safety
//! net for any way a task could get lost. An owner gives a message up only after its
//! outcome is committed (or at shutdown), and the sweep re-reads a row after claiming it,
//! so it never picks up a message that was just delivered.
//!
//! Shutdown ([`Outbox::stop_attempts`], then [`Outbox::shutdown`]): no attempt starts once
//! shutdown has begun; attempts in flight get `delivery.shutdown_grace` to finish and be
//! recorded; then they are cut off and their messages handed back to the queue (a retry
//! saying so), before the store closes.
//!
//! Delivery is at least once: a message whose success was not recorded is sent again
//! (the README lists every such path); it is never sent zero times.
//!
//! Channels are tried in order for each attempt; the first success wins. A further channel
//! (e-mail, SMS) is one more [`Channel`] implementation in the list.

pub mod backoff;
pub mod digest;
pub mod limits;
pub mod wecom;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{Semaphore, SemaphorePermit, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::DeliverySettings;
use crate::store::{AttemptUpdate, Message, MessageStatus, Store, StoreError, now_ms};

/// `last_error` of an attempt cut off at the end of the shutdown grace.
pub const INTERRUPTED: &str = "interrupted by shutdown; will be retried";
/// Longest wait between two tries to record an outcome (the database is failing).
const RECORD_RETRY_MAX: Duration = Duration::from_secs(10);
/// After the grace, how long shutdown waits for cut-off attempts to be handed back.
const HANDBACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Lower bound of `delivery.sweep_interval` (zero would make the sweep spin).
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(10);

/// Why one channel could not deliver one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryError {
    /// Retrying later may succeed (network, 5xx, rate limits). Otherwise an admin or the
    /// sender must change something first.
    pub transient: bool,
    /// Shown to the sender as `last_error`; must not contain secrets.
    pub message: String,
}

/// A way to reach a member. Implementations must be cheap to call concurrently.
pub trait Channel: Send + Sync {
    /// Short stable name, stored with delivered messages.
    fn name(&self) -> &'static str;
    fn deliver<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), DeliveryError>>;
}

/// Handle to the outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    channels: Vec<Arc<dyn Channel>>,
    settings: DeliverySettings,
    /// Bounds attempts in flight so a backlog cannot open thousands of connections.
    permits: Semaphore,
    /// Shutdown has begun: start no new attempt.
    stop: CancellationToken,
    /// The shutdown grace is over: cut attempts in flight off and hand them back.
    abort: CancellationToken,
    tasks: TaskTracker,
    /// Ids of the messages a live task is responsible for (see [`Claim`]).
    owned: Mutex<HashSet<String>>,
}

/// One task's ownership of one message; dropping it gives the message up.
struct Claim {
    inner: Arc<Inner>,
    id: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.inner.owned().remove(&self.id);
    }
}

/// What a sender asked to deliver.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub userid: String,
    pub title: Option<String>,
    pub content: Option<String>,
}

impl Outbox {
    pub fn new(store: Store, channels: Vec<Arc<dyn Channel>>, settings: DeliverySettings) -> Self {
        let permits = Semaphore::new(settings.concurrency);
        Self {
            inner: Arc::new(Inner {
                store,
                channels,
                settings,
                permits,
                stop: CancellationToken::new(),
                abort: CancellationToken::new(),
                tasks: TaskTracker::new(),
                owned: Mutex::default(),
            }),
        }
    }

    /// Stores the message durably, schedules its delivery and returns the stored record.
    ///
    /// The insert runs in the message's own task, which goes on to deliver it: if the
    /// caller stops waiting (the client reset the connection), a message that gets
    /// committed is still delivered.
    pub async fn accept(&self, new: NewMessage) -> Result<Message, StoreError> {
        let now = now_ms();
        let window =
            i64::try_from(self.inner.settings.retry_window.as_millis()).unwrap_or(i64::MAX);
        let message = Message::new_queued(
            uuid::Uuid::now_v7().to_string(),
            new.userid,
            new.title,
            new.content,
            now,
            now.saturating_add(window),
        );
        // Owned before it is committed, so the sweep can never see it unowned.
        let Some(claim) = self.inner.claim(&message.id) else {
            return Err(StoreError::Corrupt(format!(
                "message id {} is already in use",
                message.id
            )));
        };
        let (committed_tx, committed) = oneshot::channel();
        let queued = message.clone();
        self.inner.tasks.spawn(async move {
            let inner = Arc::clone(&claim.inner);
            match inner.store.insert_message(queued.clone()).await {
                Ok(()) => {
                    let _ = committed_tx.send(Ok(()));
                    inner.drive(queued, claim).await;
                }
                Err(err) => {
                    let _ = committed_tx.send(Err(err));
                }
            }
        });
        // No answer means the task died before the insert finished: report it like a
        // writer that went away (503, retry later).
        committed.await.map_err(|_| StoreError::WriterGone)??;
        Ok(message)
    }

    /// Schedules every message left `queued` by an earlier run and starts the periodic
    /// sweep for queued messages that no task owns. Returns how many were resumed.
    pub async fn start(&self) -> Result<usize, StoreError> {
        let queued = self.inner.store.queued_messages().await?;
        let mut count = 0;
        for message in queued {
            if let Some(claim) = self.inner.claim(&message.id) {
                self.inner.spawn_drive(message, claim);
                count += 1;
            }
        }
        if count > 0 {
            tracing::info!(count, "resuming delivery of queued messages");
        }
        let inner = Arc::clone(&self.inner);
        self.inner
            .tasks
            .spawn(async move { inner.sweep_periodically().await });
        Ok(count)
    }

    /// Shutdown has begun: from now on no delivery attempt starts. Messages accepted from
    /// now on stay queued for the next start. Idempotent.
    pub fn stop_attempts(&self) {
        self.inner.stop.cancel();
    }

    /// Stops attempts (if not done yet) and waits up to `delivery.shutdown_grace` for
    /// those in flight to finish and be recorded. Any still running then are cut off and
    /// handed back to the queue (recorded as a retry saying so) before this returns, so
    /// that the store can be closed right after.
    pub async fn shutdown(&self) {
        self.stop_attempts();
        self.inner.tasks.close();
        let grace = self.inner.settings.shutdown_grace;
        if tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_ok()
        {
            return;
        }
        tracing::warn!(
            tasks = self.inner.tasks.len(),
            "delivery attempts still running at the end of the shutdown grace; \
             cutting them off, they will be retried after restart"
        );
        self.inner.abort.cancel();
        if tokio::time::timeout(HANDBACK_TIMEOUT, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "some delivery outcomes were not recorded before shutdown; those messages \
                 stay queued and are attempted again after restart"
            );
        }
    }
}

impl Inner {
    fn owned(&self) -> MutexGuard<'_, HashSet<String>> {
        // The set stays consistent whatever panicked while holding the lock.
        self.owned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes ownership of message `id`, unless a live task already has it.
    fn claim(self: &Arc<Self>, id: &str) -> Option<Claim> {
        self.owned().insert(id.to_owned()).then(|| Claim {
            inner: Arc::clone(self),
            id: id.to_owned(),
        })
    }

    fn spawn_drive(self: &Arc<Self>, message: Message, claim: Claim) {
        let inner = Arc::clone(self);
        self.tasks
            .spawn(async move { inner.drive(message, claim).await });
    }

    /// Every `delivery.sweep_interval`, re-schedules due queued messages no task owns.
    async fn sweep_periodically(self: Arc<Self>) {
        let period = self.settings.sweep_interval.max(MIN_SWEEP_INTERVAL);
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            match self.sweep().await {
                Ok(0) => {}
                Ok(count) => tracing::warn!(
                    count,
                    "found queued messages that no delivery task was working on; rescheduled them"
                ),
                Err(err) => tracing::warn!(
                    error = %crate::error::chain(&err),
                    "delivery sweep could not read the outbox; will try again"
                ),
            }
        }
    }

    /// Schedules every due `queued` message that no task owns; returns how many.
    async fn sweep(self: &Arc<Self>) -> Result<usize, StoreError> {
        let due = self.store.queued_ids_due(now_ms()).await?;
        self.sweep_listed(&due).await
    }

    /// Schedules those of the `listed` messages that no task owns and that are still
    /// `queued` once claimed.
    async fn sweep_listed(self: &Arc<Self>, listed: &[String]) -> Result<usize, StoreError> {
        let claims: Vec<Claim> = listed.iter().filter_map(|id| self.claim(id)).collect();
        let mut scheduled = 0;
        for claim in claims {
            // Read again now that we own it: the list may predate an owner that has
            // since recorded the outcome and let go, and an owner lets go only after
            // its outcome is committed, so this read sees it.
            match self.store.message(&claim.id).await? {
                Some(message) if message.status == MessageStatus::Queued => {
                    self.spawn_drive(message, claim);
                    scheduled += 1;
                }
                _ => {}
            }
        }
        Ok(scheduled)
    }

    /// Waits until the message is due and a permit is free; `None` once shutdown began.
    /// Shutdown wins every tie (`biased`), and is checked again once the permit is ours.
    async fn wait_turn(&self, due_at: i64) -> Option<SemaphorePermit<'_>> {
        let wait = millis_until(due_at);
        if !wait.is_zero() {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return None,
                () = tokio::time::sleep(wait) => {}
            }
        }
        let permit = tokio::select! {
            biased;
            () = self.stop.cancelled() => return None,
            permit = self.permits.acquire() => permit.ok()?,
        };
        if self.stop.is_cancelled() {
            return None;
        }
        Some(permit)
    }

    /// Owns one message until it is delivered, failed, or the outbox stops.
    async fn drive(&self, mut message: Message, _claim: Claim) {
        loop {
            let Some(permit) = self.wait_turn(message.next_attempt_at).await else {
                return;
            };
            let attempts = message.attempts + 1;
            let outcome = tokio::select! {
                // An attempt that has finished wins over the end of the grace: its outcome
                // is recorded rather than thrown away.
                biased;
                outcome = self.attempt(&message) => outcome,
                () = self.abort.cancelled() => {
                    // WeCom may or may not have processed it: send it again next time
                    // (at least once), right away.
                    tracing::warn!(id = %message.id, attempts, "delivery attempt cut off by shutdown");
                    self.record(AttemptUpdate::Retry {
                        id: message.id,
                        attempts,
                        error: INTERRUPTED.to_owned(),
                        next_attempt_at: now_ms(),
                    })
                    .await;
                    return;
                }
            };
            // The permit is held while the outcome is recorded: if the database cannot
            // take writes, no further messages are sent that could not be recorded either.
            match outcome {
                Ok(channel) => {
                    tracing::debug!(id = %message.id, attempts, channel, "delivered");
                    self.record(AttemptUpdate::Delivered {
                        id: message.id,
                        attempts,
                        channel,
                    })
                    .await;
                    return;
                }
                Err(err) if err.transient => {
                    let delay = backoff::delay(
                        u32::try_from(attempts).unwrap_or(u32::MAX),
                        self.settings.backoff_initial,
                        self.settings.backoff_max,
                        rand::random::<f64>(),
                    );
                    let next = now_ms().saturating_add(duration_ms(delay));
                    if next > message.deadline_at {
                        let error = format!(
                            "gave up after {attempts} attempt(s) within the retry window ({}): {}",
                            humantime::format_duration(self.settings.retry_window),
                            err.message
                        );
                        tracing::warn!(id = %message.id, attempts, error = %error, "delivery failed");
                        self.record(AttemptUpdate::Failed {
                            id: message.id,
                            attempts,
                            error,
                        })
                        .await;
                        return;
                    }
                    tracing::info!(id = %message.id, attempts, retry_in = ?delay, error = %err.message, "delivery attempt failed; will retry");
                    let recorded = self
                        .record(AttemptUpdate::Retry {
                            id: message.id.clone(),
                            attempts,
                            error: err.message,
                            next_attempt_at: next,
                        })
                        .await;
                    if !recorded {
                        return;
                    }
                    message.attempts = attempts;
                    message.next_attempt_at = next;
                }
                Err(err) => {
                    tracing::warn!(id = %message.id, attempts, error = %err.message, "delivery failed permanently");
                    self.record(AttemptUpdate::Failed {
                        id: message.id,
                        attempts,
                        error: err.message,
                    })
                    .await;
                    return;
                }
            }
            drop(permit);
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
                        tracing::info!(
                            id = update_id(&update),
                            failures,
                            "recorded delivery outcome after retrying"
                        );
                    }
                    return true;
                }
                Err(err) => err,
            };
            failures = failures.saturating_add(1);
            if self.abort.is_cancelled() {
                tracing::error!(
                    id = update_id(&update),
                    error = %crate::error::chain(&err),
                    "could not record delivery outcome before shutdown; the message stays queued \
                     and is attempted again after restart"
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
                tracing::warn!(id = update_id(&update), error = %crate::error::chain(&err), retry_in = ?delay, "could not record delivery outcome; will retry");
            } else {
                tracing::debug!(id = update_id(&update), failures, error = %crate::error::chain(&err), retry_in = ?delay, "could not record delivery outcome; will retry");
            }
            tokio::select! {
                biased;
                // One last try once the grace is over.
                () = self.abort.cancelled() => {}
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One attempt: each channel in order until one succeeds. The attempt is transient
    /// (worth retrying) if any channel failed transiently.
    async fn attempt(&self, message: &Message) -> Result<&'static str, DeliveryError> {
        let mut errors = Vec::new();
        let mut transient = false;
        for channel in &self.channels {
            match channel.deliver(message).await {
                Ok(()) => return Ok(channel.name()),
                Err(err) => {
                    transient |= err.transient;
                    errors.push(if self.channels.len() > 1 {
                        format!("{}: {}", channel.name(), err.message)
                    } else {
                        err.message
                    });
                }
            }
        }
        if errors.is_empty() {
            errors.push("no delivery channel is configured".to_owned());
        }
        Err(DeliveryError {
            transient,
            message: errors.join("; "),
        })
    }
}

fn update_id(update: &AttemptUpdate) -> &str {
    match update {
        AttemptUpdate::Delivered { id, .. }
        | AttemptUpdate::Retry { id, .. }
        | AttemptUpdate::Failed { id, .. } => id,
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn millis_until(at_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(at_ms.saturating_sub(now_ms())).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A channel that counts attempts and always succeeds.
    #[derive(Default)]
    struct Counting {
        calls: AtomicUsize,
    }

    impl Channel for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn deliver<'a>(&'a self, _: &'a Message) -> BoxFuture<'a, Result<(), DeliveryError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
    }

    async fn outbox() -> (Outbox, Arc<Counting>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.unwrap();
        let channel = Arc::new(Counting::default());
        let settings = DeliverySettings {
            concurrency: 64,
            ..DeliverySettings::default()
        };
        let outbox = Outbox::new(store, vec![channel.clone() as Arc<dyn Channel>], settings);
        (outbox, channel, dir)
    }

    fn queued(id: &str) -> Message {
        let now = now_ms();
        Message::new_queued(
            id.into(),
            "alice".into(),
            Some("t".into()),
            None,
            now,
            now + 60_000,
        )
    }

    #[tokio::test]
    async fn no_attempt_starts_once_shutdown_began_even_with_permits_free() {
        let (outbox, channel, _dir) = outbox().await;
        outbox.stop_attempts();
        // Due now, permits free, stop set: every task sees both ready at its first poll.
        for i in 0..64 {
            let message = queued(&format!("m{i}"));
            outbox
                .inner
                .store
                .insert_message(message.clone())
                .await
                .unwrap();
            let claim = outbox.inner.claim(&message.id).unwrap();
            outbox.inner.spawn_drive(message, claim);
        }
        outbox.inner.tasks.close();
        outbox.inner.tasks.wait().await;
        assert_eq!(channel.calls.load(Ordering::SeqCst), 0);
        assert!(outbox.inner.owned().is_empty(), "every task let go");
    }

    #[tokio::test]
    async fn the_sweep_rereads_a_row_before_scheduling_it() {
        let (outbox, channel, _dir) = outbox().await;
        let store = &outbox.inner.store;
        store.insert_message(queued("done")).await.unwrap();
        store.insert_message(queued("lost")).await.unwrap();
        // The sweep listed both as due…
        let listed = store.queued_ids_due(now_ms() + 1).await.unwrap();
        assert_eq!(listed.len(), 2);
        // …then the owner of "done" recorded its delivery and let go.
        store
            .record_attempt(AttemptUpdate::Delivered {
                id: "done".into(),
                attempts: 1,
                channel: "counting",
            })
            .await
            .unwrap();
        assert_eq!(outbox.inner.sweep_listed(&listed).await.unwrap(), 1);
        outbox.inner.tasks.close();
        outbox.inner.tasks.wait().await;
        assert_eq!(
            channel.calls.load(Ordering::SeqCst),
            1,
            "only \"lost\" is sent"
        );
        let done = store.message("done").await.unwrap().unwrap();
        assert_eq!(done.status, MessageStatus::Delivered);
        let lost = store.message("lost").await.unwrap().unwrap();
        assert_eq!(lost.status, MessageStatus::Delivered);
    }

    #[tokio::test]
    async fn the_sweep_skips_messages_a_task_owns() {
        let (outbox, channel, _dir) = outbox().await;
        let store = &outbox.inner.store;
        store.insert_message(queued("owned")).await.unwrap();
        let claim = outbox.inner.claim("owned").unwrap();
        assert!(outbox.inner.claim("owned").is_none(), "one owner at a time");
        assert_eq!(outbox.inner.sweep().await.unwrap(), 0);
        drop(claim);
        assert_eq!(outbox.inner.sweep().await.unwrap(), 1);
        outbox.inner.tasks.close();
        outbox.inner.tasks.wait().await;
        assert_eq!(channel.calls.load(Ordering::SeqCst), 1);
    }
}
