//! Escalation (issue 30): a message sent with `escalate=10m` that nobody acknowledged by
//! then is sent again to the same member on the next channels of their order (e-mail where
//! bound), titled 未确认 · not acknowledged, as an ordinary message of their lane.
//!
//! Durable and once: the step is due while its `acks` row says `step = 0` with no
//! acknowledgement. A pass accepts the escalation's message with the idempotency key
//! `escalate <id> 1` and only then records the step (`Store::escalated`, a compare-and-set
//! on `step`). A process killed in between finds the step still due at its next start and
//! accepts again — which finds the first message by its key instead of making a second; two
//! instances doing the same step at once meet at that key too. An acknowledgement at any
//! time before the pass leaves the step undone for good.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::delivery::{ChannelChoice, NewMessage, Outbox, Reach};
use crate::domain::{ChannelName, Route};
use crate::store::{AckRecord, Store, StoreError};
use crate::supervise;
use crate::time::UnixMillis;

/// How often the due steps are looked for (one index probe when none is due); a step runs
/// at most this late.
const POLL: Duration = Duration::from_secs(1);
/// Steps taken per pass; a full pass is followed by another at once.
const BATCH: i64 = 32;

/// The title prefix of an escalation.
pub const NOT_ACKNOWLEDGED: &str = "未确认 · not acknowledged";

/// `/healthz` answers 503 when the loop has not begun a pass for this long: escalations
/// would not happen.
pub const STALL_AFTER: Duration = Duration::from_secs(60);

/// The escalation loop's state, shared with `/healthz`.
#[derive(Debug, Clone, Default)]
pub struct Escalation {
    inner: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the loop last began a pass (0: not started).
    last_pass: AtomicI64,
    /// Panics so far (each restarted the loop).
    panics: AtomicU64,
}

impl Escalation {
    /// How long ago the loop last began a pass (`None`: it was never started), and how
    /// many times it panicked.
    pub fn health(&self) -> (Option<Duration>, u64) {
        let last = self.inner.last_pass.load(Ordering::Relaxed);
        (
            (last > 0).then(|| UnixMillis::now().since(UnixMillis::from_millis(last))),
            self.inner.panics.load(Ordering::Relaxed),
        )
    }

    /// Runs the escalation loop until aborted; a panic in it is logged, counted and the
    /// loop restarted.
    pub fn spawn(
        &self,
        outbox: Outbox,
        store: Store,
        metrics: crate::metrics::Metrics,
    ) -> tokio::task::JoinHandle<()> {
        let state = Arc::clone(&self.inner);
        // Started now: `/healthz` times the first pass from here.
        state
            .last_pass
            .store(UnixMillis::now().as_millis(), Ordering::Relaxed);
        tokio::spawn(async move {
            supervise::keep_running("escalation", "escalation loop", &state.panics, || {
                run(&state, &outbox, &store, &metrics)
            })
            .await;
        })
    }
}

async fn run(state: &State, outbox: &Outbox, store: &Store, metrics: &crate::metrics::Metrics) {
    let mut failing = false;
    let faults = store.supervisor().faults();
    loop {
        state
            .last_pass
            .store(UnixMillis::now().as_millis(), Ordering::Relaxed);
        faults.panic_at(supervise::FaultPoint::EscalationPanic);
        match pass(outbox, store, metrics, UnixMillis::now()).await {
            Ok(full) => {
                if failing {
                    tracing::info!("escalation can use the database again");
                    failing = false;
                }
                if full {
                    continue;
                }
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(error = %crate::error::chain(&err), "escalation cannot use the database; retrying every second");
                    failing = true;
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Takes the steps due by `now`; `true` when there may be more.
async fn pass(
    outbox: &Outbox,
    store: &Store,
    metrics: &crate::metrics::Metrics,
    now: UnixMillis,
) -> Result<bool, EscalateError> {
    let due = store.due_escalations(now, BATCH).await?;
    let full = i64::try_from(due.len()).unwrap_or(i64::MAX) >= BATCH;
    for record in due {
        if escalate(outbox, store, &record).await? {
            metrics.escalated(1);
        }
    }
    Ok(full)
}

#[derive(Debug, thiserror::Error)]
enum EscalateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Accept(#[from] crate::delivery::AcceptError),
}

/// One step: the message again on the member's other channels, then the step recorded;
/// `true` when this call recorded it.
async fn escalate(
    outbox: &Outbox,
    store: &Store,
    record: &AckRecord,
) -> Result<bool, EscalateError> {
    let now = UnixMillis::now();
    let Some(old) = store.message(record.message_id.as_str()).await? else {
        // Purged meanwhile: nothing to send.
        return Ok(store.escalated(&record.message_id, None, now).await?);
    };
    // Acknowledged (or taken by another instance) since it was read.
    if store
        .ack_of(&old.id)
        .await?
        .is_none_or(|r| r.acked_at.is_some() || r.step > 0)
    {
        return Ok(false);
    }
    let prefs = store.member_prefs(&old.userid).await?;
    let reach = Reach {
        userid: Some(old.userid.clone()),
        bound: prefs.bound(),
        own_order: prefs.channels.clone(),
    };
    // The channel that carried it (or is trying to): the others of the member's order.
    let tried = old
        .channel
        .as_deref()
        .and_then(|c| c.parse::<ChannelName>().ok())
        .unwrap_or_else(|| old.route.first());
    let next: Vec<ChannelName> = outbox
        .route(&ChannelChoice::Default, &reach)
        .map(|(route, _)| route.channels().to_vec())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| *c != tried)
        .collect();
    let Some(route) = Route::new(next) else {
        let recorded = store.escalated(&old.id, None, now).await?;
        tracing::info!(userid = %old.userid, id = %old.id, "not acknowledged, but the member has no other channel to escalate to");
        return Ok(recorded);
    };
    let key = format!("escalate {} 1", old.id);
    let title = match old.title.as_deref() {
        Some(title) => format!("{NOT_ACKNOWLEDGED}: {title}"),
        None => NOT_ACKNOWLEDGED.to_owned(),
    };
    let attachments = store.attachments_of(&old.id).await?;
    // Urgent: quiet hours let it through (an unacknowledged alert is what they are for).
    let accepted = outbox
        .accept(NewMessage {
            title: Some(title),
            deliver_all: false,
            urgent: true,
            ..NewMessage::again(&old, route, key, attachments)
        })
        .await?;
    let recorded = store
        .escalated(&old.id, Some(&accepted.message.id), now)
        .await?;
    if recorded {
        tracing::info!(userid = %old.userid, id = %old.id, escalated_as = %accepted.message.id, channels = %accepted.message.route.to_stored(), "not acknowledged: escalated");
    }
    Ok(recorded)
}
