//! Coalescing copies of one group message into one WeCom call (issue 29).
//!
//! A group message is stored as one copy per member, and each copy goes out through its
//! member's own lane worker (limits, digests, channel order, fallback): by the time a copy
//! reaches [`Coalescer::send`], its member is within their own limits. When several lane
//! workers send copies of the *same* group message with the *same* body at about the same
//! time, they share one `message/send` naming all of them (`touser=a|b|c`).
//!
//! The first copy to arrive opens a batch, keyed by the group message and the body's
//! bytes, and a task of its own that waits [`WINDOW`] (or until [`MAX_RECIPIENTS`] joined)
//! and then sends. Every copy — the first one too — awaits its own outcome on a oneshot
//! channel: WeCom's answer split per member (one named in `invaliduser` fails over alone;
//! a call that failed fails for everyone in it, classified as for one member).
//!
//! A batch never loses a waiter silently: its task holds the waiters in a guard that,
//! however the task ends (a panic in the send, the runtime dropping it), closes the batch
//! and drops every waiter's sender, which each waiter sees as [`Lost`] — a transient
//! failure, retried like any other — never a hang.
//!
//! A copy whose waiter is dropped (its lane worker cut off by shutdown) is still sent with
//! its batch, as a one-member send already on the wire would be.
//!
//! What does not coalesce: personal messages and digests (no group message), images and
//! files (one per member, as before), and copies whose bodies differ — another format
//! or look, or a card linking the copy's own page (each copy has its own id and page key,
//! so such cards never share a call; that is correct, since each member's link is theirs).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use crate::domain::MessageId;
use crate::wecom::client::{AppMessage, MAX_TOUSERS, WeComError};

/// How long the first copy of a group message waits for the others with the same body.
/// Lane workers for a group's members start within a few milliseconds of each other (one
/// scheduler pass claims them); 15 ms gathered all 20 copies of a 20-member group into
/// one or two calls in the integration test, and is nothing next to WeCom's own latency.
pub const WINDOW: Duration = Duration::from_millis(15);

/// The most members one batch names (WeCom's `touser` limit): the one who fills it sends
/// at once.
pub const MAX_RECIPIENTS: usize = MAX_TOUSERS;

/// Each member's outcome of one call, in the order of the members it was given.
pub type SendFuture = Pin<Box<dyn Future<Output = Vec<Result<(), WeComError>>> + Send>>;

/// What sends a batch: one `message/send` (or as many as [`MAX_TOUSERS`] requires) to
/// these members.
pub type SendFn = Arc<dyn Fn(Vec<String>, AppMessage) -> SendFuture + Send + Sync>;

/// The batch a copy was waiting in ended without an outcome for it (its task panicked or
/// was dropped). Nothing is known of whether WeCom got it: retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    group_send: String,
    body: Vec<u8>,
}

/// What joining a batch came to.
enum Joined {
    /// In an open batch: its task answers.
    Waiting,
    /// Opened a batch: its task is to be started.
    Opened(Closer),
    /// The member is in the open batch already (with another copy).
    AlreadyIn,
}

struct Waiter {
    touser: String,
    outcome: oneshot::Sender<Result<(), WeComError>>,
}

/// An open batch, as the map holds it.
struct Open {
    id: u64,
    waiters: Arc<Mutex<Vec<Waiter>>>,
    /// Told when the batch is full: its task sends without waiting out the window.
    full: Arc<Notify>,
}

type OpenBatches = Arc<Mutex<HashMap<Key, Open>>>;

/// Gathers copies of group messages into shared WeCom calls (see the module
/// documentation). Owned by the WeCom channel; holds no task of its own between batches.
pub struct Coalescer {
    open: OpenBatches,
    next_id: AtomicU64,
    send: SendFn,
    window: Duration,
    max: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data stays consistent between statements: a panic elsewhere must not stop
    // delivery.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Coalescer {
    pub fn new(send: SendFn) -> Self {
        Self::with_limits(send, WINDOW, MAX_RECIPIENTS)
    }

    fn with_limits(send: SendFn, window: Duration, max: usize) -> Self {
        Self {
            open: Arc::default(),
            next_id: AtomicU64::new(0),
            send,
            window,
            max: max.clamp(1, MAX_TOUSERS),
        }
    }

    /// Sends `message` to `touser` as their copy of group message `group_send`, together
    /// with the other copies of it with the same body that arrive within the window; the
    /// answer is this member's own outcome.
    pub async fn send(
        &self,
        group_send: &MessageId,
        touser: &str,
        message: AppMessage,
    ) -> Result<Result<(), WeComError>, Lost> {
        let Ok(body) = serde_json::to_vec(&message) else {
            // Cannot be keyed (never for these types): alone, as before batching.
            return Ok(self.send_alone(touser, message).await);
        };
        let key = Key {
            group_send: group_send.to_string(),
            body,
        };
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            touser: touser.to_owned(),
            outcome: tx,
        };
        let joined = {
            let mut open = lock(&self.open);
            self.join(&mut open, key, waiter)
        };
        match joined {
            Joined::Waiting => {}
            Joined::Opened(closer) => {
                tokio::spawn(run(closer, self.window, self.send.clone(), message));
            }
            // The same member twice in one call would be one message at WeCom for two
            // copies: this one goes alone.
            Joined::AlreadyIn => return Ok(self.send_alone(touser, message).await),
        }
        rx.await.map_err(|_| Lost)
    }

    /// Puts `waiter` in the open batch of `key`, or opens one.
    fn join(&self, open: &mut HashMap<Key, Open>, key: Key, waiter: Waiter) -> Joined {
        if let Some(batch) = open.get(&key) {
            let mut waiters = lock(&batch.waiters);
            if waiters
                .iter()
                .any(|w| w.touser.eq_ignore_ascii_case(&waiter.touser))
            {
                return Joined::AlreadyIn;
            }
            waiters.push(waiter);
            let full = waiters.len() >= self.max;
            drop(waiters);
            if full && let Some(batch) = open.remove(&key) {
                batch.full.notify_one();
            }
            return Joined::Waiting;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let waiters = Arc::new(Mutex::new(vec![waiter]));
        let full = Arc::new(Notify::new());
        if self.max > 1 {
            open.insert(
                key.clone(),
                Open {
                    id,
                    waiters: waiters.clone(),
                    full: full.clone(),
                },
            );
        } else {
            full.notify_one();
        }
        Joined::Opened(Closer {
            open: self.open.clone(),
            key,
            id,
            waiters,
            full,
        })
    }

    async fn send_alone(&self, touser: &str, message: AppMessage) -> Result<(), WeComError> {
        (self.send)(vec![touser.to_owned()], message)
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(WeComError::Decode("no answer for the member".into())))
    }

    /// Batches open now (tests).
    #[cfg(test)]
    fn open_batches(&self) -> usize {
        lock(&self.open).len()
    }
}

/// A batch's task: waits for the window (or a full batch), closes the batch and sends,
/// then hands each waiter its outcome.
async fn run(closer: Closer, window: Duration, send: SendFn, message: AppMessage) {
    tokio::select! {
        () = tokio::time::sleep(window) => {}
        () = closer.full.notified() => {}
    }
    let waiters = closer.close();
    let tousers: Vec<String> = waiters.iter().map(|w| w.touser.clone()).collect();
    // Should this panic, `waiters` is dropped with it: every waiter sees `Lost`.
    let outcomes = send(tousers, message).await;
    let mut outcomes = outcomes.into_iter();
    for waiter in waiters {
        let outcome = outcomes
            .next()
            .unwrap_or_else(|| Err(WeComError::Decode("no answer for the member".into())));
        // A waiter that went away (cut off by shutdown) has nobody to tell.
        let _ = waiter.outcome.send(outcome);
    }
}

/// Owns an open batch on behalf of its task: [`Closer::close`] takes it out of the map
/// (no one joins it after that) with its waiters; dropped without that — the task
/// panicked or was dropped — it does the same and drops the waiters, so that each of them
/// is told the batch was lost.
struct Closer {
    open: OpenBatches,
    key: Key,
    id: u64,
    waiters: Arc<Mutex<Vec<Waiter>>>,
    full: Arc<Notify>,
}

impl Closer {
    fn close(&self) -> Vec<Waiter> {
        let mut open = lock(&self.open);
        // A full batch was taken out by whoever filled it; another batch of the same key
        // may be open by now and is not this one's to close.
        if open.get(&self.key).is_some_and(|b| b.id == self.id) {
            open.remove(&self.key);
        }
        std::mem::take(&mut *lock(&self.waiters))
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        drop(self.close());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wecom::client::Content;

    fn text(content: &str) -> AppMessage {
        AppMessage::Text {
            text: Content {
                content: content.into(),
            },
        }
    }

    /// A sender that records each call's members and fails those in `invalid`.
    fn recording(invalid: &'static [&'static str]) -> (SendFn, Arc<Mutex<Vec<Vec<String>>>>) {
        let calls: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        let seen = calls.clone();
        let send: SendFn = Arc::new(move |tousers: Vec<String>, _message| {
            seen.lock().unwrap().push(tousers.clone());
            Box::pin(async move {
                tousers
                    .iter()
                    .map(|u| {
                        if invalid.contains(&u.as_str()) {
                            Err(WeComError::InvalidUser(u.clone()))
                        } else {
                            Ok(())
                        }
                    })
                    .collect()
            })
        });
        (send, calls)
    }

    fn group(id: &str) -> MessageId {
        MessageId::from_stored(id.into())
    }

    #[tokio::test]
    async fn copies_with_the_same_body_share_one_call_and_each_gets_its_own_outcome() {
        let (send, calls) = recording(&["bob"]);
        let batches = Coalescer::new(send);
        let g = group("g1");
        let (a, b, c) = tokio::join!(
            batches.send(&g, "alice", text("hi")),
            batches.send(&g, "bob", text("hi")),
            batches.send(&g, "carol", text("hi")),
        );
        assert_eq!(a, Ok(Ok(())));
        assert_eq!(b, Ok(Err(WeComError::InvalidUser("bob".into()))));
        assert_eq!(c, Ok(Ok(())));
        assert_eq!(*calls.lock().unwrap(), [vec!["alice", "bob", "carol"]]);
        assert_eq!(batches.open_batches(), 0);
    }

    #[tokio::test]
    async fn other_bodies_other_group_messages_and_the_same_member_twice_go_apart() {
        let (send, calls) = recording(&[]);
        let batches = Coalescer::new(send);
        let (g1, g2) = (group("g1"), group("g2"));
        let outcomes = tokio::join!(
            batches.send(&g1, "alice", text("hi")),
            batches.send(&g1, "bob", text("other")),
            batches.send(&g2, "carol", text("hi")),
            batches.send(&g1, "ALICE", text("hi")),
        );
        assert_eq!(outcomes, (Ok(Ok(())), Ok(Ok(())), Ok(Ok(())), Ok(Ok(()))));
        let mut calls = calls.lock().unwrap().clone();
        calls.sort();
        assert_eq!(
            calls,
            [vec!["ALICE"], vec!["alice"], vec!["bob"], vec!["carol"]]
        );
    }

    #[tokio::test]
    async fn a_full_batch_goes_at_once_and_the_next_copy_opens_another() {
        let (send, calls) = recording(&[]);
        // A window no test would wait out: only filling the batch sends it.
        let batches = Coalescer::with_limits(send, Duration::from_secs(600), 2);
        let g = group("g1");
        let both = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(
                batches.send(&g, "a", text("hi")),
                batches.send(&g, "b", text("hi")),
            )
        })
        .await
        .expect("a full batch does not wait for its window");
        assert_eq!(both, (Ok(Ok(())), Ok(Ok(()))));
        assert_eq!(*calls.lock().unwrap(), [vec!["a", "b"]]);
        assert_eq!(batches.open_batches(), 0);
    }

    #[tokio::test]
    async fn a_batch_whose_send_panics_tells_every_waiter_it_was_lost() {
        let send: SendFn = Arc::new(|_tousers, _message| {
            Box::pin(async { panic!("the sender broke (on purpose)") })
        });
        let batches = Coalescer::new(send);
        let g = group("g1");
        let outcomes = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(
                batches.send(&g, "a", text("hi")),
                batches.send(&g, "b", text("hi")),
            )
        })
        .await
        .expect("no waiter hangs");
        assert_eq!(outcomes, (Err(Lost), Err(Lost)));
        assert_eq!(batches.open_batches(), 0, "the lost batch is closed");
    }

    #[test]
    fn a_batch_whose_task_is_dropped_tells_every_waiter_it_was_lost() {
        let (send, calls) = recording(&[]);
        let batches = Arc::new(Coalescer::with_limits(send, Duration::from_secs(600), 10));
        let g = group("g1");
        // A runtime of its own, shut down while the batch waits for its window: its task
        // is dropped, never run to its end.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let waiter = {
            let batches = batches.clone();
            let g = g.clone();
            runtime.spawn(async move { batches.send(&g, "a", text("hi")).await })
        };
        runtime.block_on(async {
            while batches.open_batches() == 0 {
                tokio::task::yield_now().await;
            }
        });
        drop(runtime);
        // The waiter's task went with the runtime, but the batch is closed all the same.
        let after = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(after.block_on(waiter).is_err());
        assert_eq!(batches.open_batches(), 0);
        assert!(calls.lock().unwrap().is_empty());
        // A waiter outside that runtime, in a batch whose task is dropped: told `Lost`.
        let (tx, rx) = oneshot::channel();
        let closer = Closer {
            open: batches.open.clone(),
            key: Key {
                group_send: "g1".into(),
                body: b"x".to_vec(),
            },
            id: 99,
            waiters: Arc::new(Mutex::new(vec![Waiter {
                touser: "b".into(),
                outcome: tx,
            }])),
            full: Arc::new(Notify::new()),
        };
        drop(closer);
        assert!(
            after.block_on(rx).is_err(),
            "the waiter hears its batch is gone"
        );
    }
}
