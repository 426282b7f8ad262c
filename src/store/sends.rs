//! The send history kept in memory (SQLite, where this process is the database's only
//! writer): what was sent to each member on each channel, and to anyone on each channel,
//! for the rate windows (`delivery::limits`). The `sends` table stays the record a restart
//! loads it from ([`SendLog::load`]); the writer appends to both, the table in the
//! transaction that records the outcome and the log right after that transaction
//! commits, before anyone waiting for it is answered. A lane worker then reads its
//! member's history without a query, and the table needs no per-member index (issue 31:
//! each of those index inserts dirtied a random page per message).
//!
//! PostgreSQL keeps reading the table: other instances send too.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::time::UnixMillis;

/// One recorded send: member, channel (as stored), time (unix ms).
pub(super) type Recorded = (String, String, i64);

#[derive(Debug, Default)]
pub(super) struct SendLog {
    inner: Mutex<Log>,
}

#[derive(Debug, Default)]
struct Log {
    /// How far back reads go at most (the longest rate window, as the last prune said):
    /// older sends are dropped as newer ones come. `None`: keep all until pruned.
    keep: Option<i64>,
    channels: HashMap<String, ChannelLog>,
}

#[derive(Debug, Default)]
struct ChannelLog {
    /// Every send on the channel, oldest first (a shared destination's windows).
    all: VecDeque<i64>,
    /// Each member's sends on the channel, oldest first.
    members: HashMap<String, VecDeque<i64>>,
}

fn lock(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    // Every change leaves the lists sorted; a panic in between cannot break that.
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Adds `at` in order (nearly always at the end), then drops what is older than `keep`
/// before the newest.
fn insert(list: &mut VecDeque<i64>, at: i64, keep: Option<i64>) {
    if list.back().is_none_or(|last| *last <= at) {
        list.push_back(at);
    } else {
        let i = list.partition_point(|t| *t <= at);
        list.insert(i, at);
    }
    if let (Some(keep), Some(newest)) = (keep, list.back().copied()) {
        let oldest = newest.saturating_sub(keep);
        while list.front().is_some_and(|t| *t < oldest) {
            list.pop_front();
        }
    }
}

/// The times after `since`, oldest first.
fn after(list: &VecDeque<i64>, since: UnixMillis) -> Vec<UnixMillis> {
    let since = since.as_millis();
    let start = list.partition_point(|t| *t <= since);
    list.range(start..)
        .map(|t| UnixMillis::from_millis(*t))
        .collect()
}

impl SendLog {
    /// The history as the `sends` table holds it (which the scheduler prunes to the
    /// longest window every few minutes).
    pub(super) async fn load(pool: &sqlx::AnyPool) -> Result<Self, super::StoreError> {
        use futures_util::TryStreamExt as _;
        use sqlx::Row as _;
        let started = std::time::Instant::now();
        let log = Self::default();
        let mut rows = sqlx::query("SELECT userid, channel, sent_at FROM sends").fetch(pool);
        let mut batch = Vec::new();
        while let Some(row) = rows.try_next().await? {
            batch.push((
                row.try_get::<String, _>("userid")?,
                row.try_get::<String, _>("channel")?,
                row.try_get::<i64, _>("sent_at")?,
            ));
            if batch.len() >= 4096 {
                log.record(batch.drain(..));
            }
        }
        log.record(batch);
        tracing::debug!(sends = log.len(), took = ?started.elapsed(), "send history loaded");
        Ok(log)
    }

    /// Adds committed sends.
    pub(super) fn record(&self, sends: impl IntoIterator<Item = Recorded>) {
        let mut log = lock(&self.inner);
        let keep = log.keep;
        for (userid, channel, at) in sends {
            let ch = log.channels.entry(channel).or_default();
            insert(&mut ch.all, at, keep);
            insert(ch.members.entry(userid).or_default(), at, keep);
        }
    }

    /// When `userid` was sent something on `channel` after `since`, oldest first.
    pub(super) fn member(&self, userid: &str, channel: &str, since: UnixMillis) -> Vec<UnixMillis> {
        let log = lock(&self.inner);
        log.channels
            .get(channel)
            .and_then(|ch| ch.members.get(userid))
            .map_or_else(Vec::new, |list| after(list, since))
    }

    /// When anyone was sent something on `channel` after `since`, oldest first.
    pub(super) fn channel(&self, channel: &str, since: UnixMillis) -> Vec<UnixMillis> {
        let log = lock(&self.inner);
        log.channels
            .get(channel)
            .map_or_else(Vec::new, |ch| after(&ch.all, since))
    }

    /// Forgets sends before `before` (as the table's prune does) and, from now on, sends
    /// older than `keep` before a member's newest one: reads never go further back than
    /// the longest window, which `keep` is.
    pub(super) fn prune(&self, before: UnixMillis, keep: Duration) {
        let before = before.as_millis();
        let mut log = lock(&self.inner);
        log.keep = Some(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        log.channels.retain(|_, ch| {
            let drop_old = |list: &mut VecDeque<i64>| {
                while list.front().is_some_and(|t| *t < before) {
                    list.pop_front();
                }
            };
            drop_old(&mut ch.all);
            ch.members.retain(|_, list| {
                drop_old(list);
                !list.is_empty()
            });
            !ch.all.is_empty()
        });
    }

    /// Sends held, for tests and the log line at start.
    pub(super) fn len(&self) -> usize {
        lock(&self.inner)
            .channels
            .values()
            .map(|ch| ch.all.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[UnixMillis]) -> Vec<i64> {
        v.iter().map(|t| t.as_millis()).collect()
    }

    fn rec(u: &str, c: &str, at: i64) -> Recorded {
        (u.to_owned(), c.to_owned(), at)
    }

    #[test]
    fn reads_each_members_sends_per_channel_in_order_after_a_time() {
        let log = SendLog::default();
        log.record([
            rec("alice", "wecom", 10),
            rec("bob", "wecom", 11),
            rec("alice", "email", 12),
            rec("alice", "wecom", 30),
            // Recorded late (a digest's send time is when it was sent): still in order.
            rec("alice", "wecom", 20),
        ]);
        let at = UnixMillis::from_millis;
        assert_eq!(ms(&log.member("alice", "wecom", at(0))), [10, 20, 30]);
        assert_eq!(
            ms(&log.member("alice", "wecom", at(10))),
            [20, 30],
            "after, not at"
        );
        assert_eq!(ms(&log.member("alice", "email", at(0))), [12]);
        assert_eq!(ms(&log.member("bob", "email", at(0))), Vec::<i64>::new());
        assert_eq!(ms(&log.member("carol", "wecom", at(0))), Vec::<i64>::new());
        assert_eq!(ms(&log.channel("wecom", at(10))), [11, 20, 30]);
        assert_eq!(log.len(), 5);
    }

    #[test]
    fn pruning_forgets_old_sends_and_later_ones_keep_only_the_longest_window() {
        let log = SendLog::default();
        let at = UnixMillis::from_millis;
        log.record([rec("alice", "wecom", 10), rec("bob", "wecom", 50)]);
        log.prune(at(20), Duration::from_millis(100));
        assert_eq!(ms(&log.member("alice", "wecom", at(0))), Vec::<i64>::new());
        assert_eq!(ms(&log.channel("wecom", at(0))), [50]);
        // From now on a member's list holds 100 ms before its newest send, no more.
        log.record([rec("bob", "wecom", 120), rec("bob", "wecom", 151)]);
        assert_eq!(ms(&log.member("bob", "wecom", at(0))), [120, 151]);
        assert_eq!(ms(&log.channel("wecom", at(0))), [120, 151]);
        log.prune(at(1000), Duration::from_millis(100));
        assert_eq!(log.len(), 0);
    }
}
