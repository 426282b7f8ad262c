//! New messages (and scheduled ones released into their lanes), handed from the writer to
//! whoever waits for them, right after their commit: the scheduler (a member whose lane has no worker) and lane workers (their own
//! member's next messages, in memory, so that a busy lane does not read each message back
//! from the database).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::{HEAD_CONTENT_BYTES, Message};
use crate::domain::UserId;

/// Messages kept for one lane's worker; beyond that (or with larger content) the worker
/// is told to read the database instead. Bounds memory at this many small messages per
/// lane worker.
const INBOX_CAP: usize = 8;

#[derive(Debug, Default)]
pub struct Arrivals {
    any: Notify,
    lanes: Mutex<HashMap<UserId, Arc<Inbox>>>,
    /// PostgreSQL: the value this instance gave the `instances` counter when it opened the
    /// database (see the migration `0011_instances.sql`); `None` on SQLite, where no other
    /// process writes.
    mark: Option<i64>,
    /// PostgreSQL: the highest value of the counter this instance has answered with an
    /// alarm (its own start at first).
    known: AtomicI64,
    /// Other processes commit messages too (PostgreSQL, once the writer has seen another
    /// instance): a worker handed this process's messages would send them ahead of the
    /// other instances' messages that came before them, so workers are only woken, and
    /// read their lane from the database. Never set back.
    shared: AtomicBool,
}

#[derive(Debug, Default)]
struct Inbox {
    notify: Notify,
    state: Mutex<InboxState>,
}

#[derive(Debug, Default)]
struct InboxState {
    /// Committed messages in commit (= `seq`) order.
    messages: VecDeque<Message>,
    /// Some message was not kept: read the database.
    missed: bool,
    /// Scheduled messages were released into the lane: they may go ahead of what the
    /// worker has read (they keep their acceptance numbers), so it reads the lane again
    /// before its next send.
    released: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Arrivals {
    /// Arrivals for a database that other instances may write too (PostgreSQL): this
    /// instance gave the `instances` counter the value `mark` when it opened the database.
    pub(super) fn for_instance(mark: i64) -> Self {
        Self {
            mark: Some(mark),
            known: AtomicI64::new(mark),
            ..Self::default()
        }
    }

    /// PostgreSQL: this instance's start, which the writer's insert looks for alarms about
    /// (see [`Arrivals::observe`]); `None` on SQLite.
    pub(super) fn start_mark(&self) -> Option<i64> {
        self.mark
    }

    /// What the writer's insert found: the counter (`starts`), and whether an alarm at or
    /// above this instance's start was recorded. Answers the alarm to record in the same
    /// transaction when `starts` is above what this instance has answered; once that
    /// transaction commits, call [`Arrivals::answered`].
    pub(super) fn observe(&self, starts: i64, alarmed: bool) -> Option<i64> {
        let newer = starts > self.known.load(Ordering::SeqCst);
        if alarmed || newer {
            self.not_alone();
        }
        newer.then_some(starts)
    }

    /// The alarm for `starts` is committed.
    pub(super) fn answered(&self, starts: i64) {
        self.known.fetch_max(starts, Ordering::SeqCst);
    }

    /// Another instance writes this database. From now on workers read each new message
    /// from the database.
    fn not_alone(&self) {
        if !self.shared.swap(true, Ordering::SeqCst) {
            tracing::info!(
                "another pushbot instance uses this database: lane workers read each new message from it from now on"
            );
        }
    }

    /// Whether another instance writes this database (see [`Arrivals::not_alone`]).
    pub fn is_shared(&self) -> bool {
        self.shared.load(Ordering::SeqCst)
    }

    /// After a commit that inserted `messages` (in commit order): hands them to their
    /// lanes' workers, and wakes the scheduler if a member has no worker.
    pub(super) fn committed(&self, messages: Vec<Message>) {
        let mut unwatched = false;
        let shared = self.is_shared();
        {
            let lanes = lock(&self.lanes);
            for message in messages {
                let Some(inbox) = lanes.get(&message.userid) else {
                    unwatched = true;
                    continue;
                };
                {
                    let mut state = lock(&inbox.state);
                    let small = message.content.as_ref().is_none_or(|c| {
                        c.len() <= usize::try_from(HEAD_CONTENT_BYTES).unwrap_or(0)
                    });
                    if small && !shared && state.messages.len() < INBOX_CAP {
                        state.messages.push_back(message);
                    } else {
                        state.missed = true;
                    }
                }
                inbox.notify.notify_one();
            }
        }
        if unwatched {
            self.any.notify_one();
        }
    }

    /// After a commit that released scheduled messages of `userids` into their lanes: each
    /// lane's worker is told to read its lane again before its next send (the messages are
    /// not handed over: they may belong ahead of what it has read), and the scheduler is
    /// woken if a member has no worker.
    pub(super) fn released(&self, userids: Vec<UserId>) {
        let mut unwatched = false;
        {
            let lanes = lock(&self.lanes);
            for userid in userids {
                let Some(inbox) = lanes.get(&userid) else {
                    unwatched = true;
                    continue;
                };
                {
                    let mut state = lock(&inbox.state);
                    state.missed = true;
                    state.released = true;
                }
                inbox.notify.notify_one();
            }
        }
        if unwatched {
            self.any.notify_one();
        }
    }

    /// Resolves after a commit that inserted messages for a member whose lane has no
    /// worker.
    pub async fn any(&self) {
        self.any.notified().await;
    }

    /// Starts receiving `userid`'s newly committed messages; ends when the returned guard
    /// is dropped. Everything committed after this call reaches the watch (as a message
    /// or as [`Taken::missed`]).
    pub fn watch(self: &Arc<Self>, userid: &UserId) -> LaneWatch {
        let inbox = Arc::new(Inbox::default());
        lock(&self.lanes).insert(userid.clone(), Arc::clone(&inbox));
        LaneWatch {
            arrivals: Arc::clone(self),
            userid: userid.clone(),
            inbox,
        }
    }
}

/// What a watch has received since it was last emptied.
#[derive(Debug, Default)]
pub struct Taken {
    pub messages: Vec<Message>,
    /// Some message was not kept (too many, or too large): read the database.
    pub missed: bool,
}

/// One lane worker's subscription to its member's new messages.
pub struct LaneWatch {
    arrivals: Arc<Arrivals>,
    userid: UserId,
    inbox: Arc<Inbox>,
}

impl LaneWatch {
    /// Resolves when something was committed for the member since the last call.
    pub async fn arrived(&self) {
        self.inbox.notify.notified().await;
    }

    /// Whether scheduled messages were released into the lane since the last call: what was
    /// read ahead may no longer be the lane's front. Call it before reading the lane (a
    /// release committed after the call is reported by the next one); [`LaneWatch::take`]
    /// leaves it alone.
    pub fn released(&self) -> bool {
        std::mem::take(&mut lock(&self.inbox.state).released)
    }

    /// Empties the watch.
    pub fn take(&self) -> Taken {
        let mut state = lock(&self.inbox.state);
        Taken {
            messages: state.messages.drain(..).collect(),
            missed: std::mem::take(&mut state.missed),
        }
    }
}

impl Drop for LaneWatch {
    fn drop(&mut self) {
        let mut lanes = lock(&self.arrivals.lanes);
        if lanes
            .get(&self.userid)
            .is_some_and(|inbox| Arc::ptr_eq(inbox, &self.inbox))
        {
            lanes.remove(&self.userid);
        }
    }
}
