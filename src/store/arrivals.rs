//! New messages (and scheduled ones released into their lanes), handed from the writer to
//! whoever waits for them, right after their commit: the scheduler (a member whose lane has no worker) and lane workers (their own
//! member's next messages, in memory, so that a busy lane does not read each message back
//! from the database).

use std::collections::{HashMap, VecDeque};
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
    /// Other processes commit messages too (PostgreSQL): a worker handed this process's
    /// messages would send them ahead of the other instances' messages that came before
    /// them, so workers are only woken, and read their lane from the database.
    shared: bool,
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
    /// Arrivals for a database that other instances write too (see `shared`).
    pub(super) fn shared() -> Self {
        Self {
            shared: true,
            ..Self::default()
        }
    }

    /// After a commit that inserted `messages` (in commit order): hands them to their
    /// lanes' workers, and wakes the scheduler if a member has no worker.
    pub(super) fn committed(&self, messages: Vec<Message>) {
        let mut unwatched = false;
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
                    if small && !self.shared && state.messages.len() < INBOX_CAP {
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
