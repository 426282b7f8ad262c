//! Delivery: the outbox worker, its retry policy, and the channels behind one trait.
//!
//! Flow: `/send` calls [`Outbox::accept`], which commits the message (group commit) and
//! then hands it to a task of its own that attempts delivery, waits out backoffs and
//! records every outcome. The database row is the source of truth: on start-up
//! [`Outbox::recover`] re-schedules every message still `queued`, so a crash or restart
//! loses nothing (a message whose success was not yet recorded may be sent twice; never
//! zero times).
//!
//! Channels are tried in order for each attempt; the first success wins. A further channel
//! (e-mail, SMS) is one more [`Channel`] implementation in the list.

pub mod backoff;
pub mod digest;
pub mod limits;
pub mod wecom;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::DeliverySettings;
use crate::store::{AttemptUpdate, Message, Store, StoreError, now_ms};

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
    stop: CancellationToken,
    tasks: TaskTracker,
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
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Stores the message durably, schedules its delivery and returns the stored record.
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
        self.inner.store.insert_message(message.clone()).await?;
        self.schedule(message.clone());
        Ok(message)
    }

    /// Schedules every message left `queued` by an earlier run.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let queued = self.inner.store.queued_messages().await?;
        let count = queued.len();
        for message in queued {
            self.schedule(message);
        }
        if count > 0 {
            tracing::info!(count, "resuming delivery of queued messages");
        }
        Ok(count)
    }

    fn schedule(&self, message: Message) {
        let inner = Arc::clone(&self.inner);
        self.inner
            .tasks
            .spawn(async move { inner.drive(message).await });
    }

    /// Stops scheduling; attempts in flight get up to `grace` to finish and be recorded.
    /// Whatever is left stays `queued` in the database for the next start.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("delivery attempts still running at shutdown; they will be retried");
        }
    }
}

impl Inner {
    /// Owns one message until it is delivered, failed, or the outbox stops.
    async fn drive(&self, mut message: Message) {
        let mut wait = millis_until(message.next_attempt_at);
        loop {
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.stop.cancelled() => return,
                }
            }
            let permit = tokio::select! {
                p = self.permits.acquire() => p,
                () = self.stop.cancelled() => return,
            };
            let Ok(_permit) = permit else { return };
            let attempts = message.attempts + 1;
            let outcome = self.attempt(&message).await;
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
                    self.record(AttemptUpdate::Retry {
                        id: message.id.clone(),
                        attempts,
                        error: err.message,
                        next_attempt_at: next,
                    })
                    .await;
                    message.attempts = attempts;
                    message.next_attempt_at = next;
                    wait = delay;
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
        }
    }

    async fn record(&self, update: AttemptUpdate) {
        if let Err(err) = self.store.record_attempt(update).await {
            tracing::error!(error = %crate::error::chain(&err), "could not record delivery outcome");
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

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn millis_until(at_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(at_ms.saturating_sub(now_ms())).unwrap_or(0))
}
