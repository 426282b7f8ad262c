//! Scheduled messages (issue 21): a message accepted with a `delay`/`at`, or held by its
//! member's quiet hours, is stored `scheduled` with its `deliver_at` and sits in no lane —
//! it holds up nothing — until the scheduler releases it into its lane when it is due.
//! Nothing about it is kept in memory: the partial index `messages_scheduled` is the
//! schedule, and its earliest entry is one index probe ([`Store::next_scheduled_at`]).
//!
//! Writes go through the group-commit writer ([`ScheduleOp`]), in the same transactions as
//! the lanes they open; reads use the pool.

use std::time::Duration;

use sqlx::Row as _;

use super::writer::{CancelOutcome, Reply, ScheduleOp};
use super::{Held, Store, StoreError};
use crate::domain::{MessageId, UserId};
use crate::time::UnixMillis;

fn unexpected(reply: Reply) -> StoreError {
    StoreError::Corrupt(format!("unexpected answer from the writer: {reply:?}"))
}

impl Store {
    /// Releases up to `limit` scheduled messages due by `now` into their lanes (earliest
    /// first; those due together in acceptance order), each with a retry window of
    /// `retry_window` from `now`, opening their lanes (or making them due now) and telling
    /// whoever works on them to read them again, in one transaction. Each keeps its
    /// acceptance number, so it goes ahead of messages accepted after it. Answers how many
    /// were released — `limit` (rounded down to a power of two) means there may be more —
    /// or `None` when another instance is releasing right now (try again shortly). Safe to
    /// call from several instances at once: each message is released once, and one
    /// instance releases at a time.
    pub async fn release_due(
        &self,
        now: UnixMillis,
        limit: usize,
        retry_window: Duration,
    ) -> Result<Option<usize>, StoreError> {
        let op = ScheduleOp::Release {
            now,
            limit,
            deadline_at: now + retry_window,
        };
        match self.writer.schedule(op).await? {
            Reply::Released(userids) => Ok(Some(userids.len())),
            Reply::ReleaseBusy => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    /// When the earliest scheduled message is due (one probe of the `messages_scheduled`
    /// index); `None` when nothing is scheduled.
    pub async fn next_scheduled_at(&self) -> Result<Option<UnixMillis>, StoreError> {
        let row =
            sqlx::query("SELECT MIN(deliver_at) AS due FROM messages WHERE status = 'scheduled'")
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get::<Option<UnixMillis>, _>("due")?)
    }

    /// How many messages are scheduled (for `/metrics`; a count over a partial index).
    pub async fn scheduled_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT count(*) AS n FROM messages WHERE status = 'scheduled'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Holds a queued message until `deliver_at` (it leaves its lane: `scheduled`, held for
    /// `held`). `false` when it was not queued any more (delivered, failed, cancelled or
    /// held already meanwhile): nothing changed.
    pub async fn hold(
        &self,
        id: &MessageId,
        deliver_at: UnixMillis,
        held: Held,
    ) -> Result<bool, StoreError> {
        let op = ScheduleOp::Hold {
            id: id.clone(),
            deliver_at,
            held,
        };
        match self.writer.schedule(op).await? {
            Reply::Count(n) => Ok(n > 0),
            other => Err(unexpected(other)),
        }
    }

    /// Makes the member's messages held for `held` due at `deliver_at` (a quiet window
    /// turned off or changed: due now, or at the new end). Answers how many there were.
    /// Messages the sender scheduled themselves keep their time.
    pub async fn retime_held(
        &self,
        userid: &UserId,
        held: Held,
        deliver_at: UnixMillis,
    ) -> Result<u64, StoreError> {
        let op = ScheduleOp::Retime {
            userid: userid.clone(),
            held,
            deliver_at,
        };
        match self.writer.schedule(op).await? {
            Reply::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// Cancels the member's message `id` unless it went out (or may be going out right
    /// now): see [`CancelOutcome`]. Another member's message is [`CancelOutcome::NotFound`],
    /// as an unknown id is.
    pub async fn cancel(
        &self,
        userid: &UserId,
        id: &str,
        now: UnixMillis,
    ) -> Result<CancelOutcome, StoreError> {
        if !super::storable(id) {
            return Ok(CancelOutcome::NotFound);
        }
        let op = ScheduleOp::Cancel {
            userid: userid.clone(),
            id: MessageId::from_stored(id.to_owned()),
            now,
        };
        match self.writer.schedule(op).await? {
            Reply::Cancelled(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }
}

/// The store's scheduling, as both engines must do it: each `assert_…` runs on a fresh
/// store, from the SQLite tests here and the PostgreSQL tests in `postgres.rs`.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::ChannelName;
    use crate::store::tests::lane_due;
    use crate::store::{AttemptUpdate, Message, MessageStatus};

    const WINDOW: Duration = Duration::from_secs(3600);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn uid(s: &str) -> UserId {
        UserId::new(s)
    }

    fn queued(userid: &str, text: &str) -> Message {
        let now = UnixMillis::now();
        Message::new_queued(
            MessageId::generate(),
            uid(userid),
            None,
            Some(text.to_owned()),
            now,
            now + ms(60_000),
        )
    }

    /// A message as `Outbox::accept` stores one due at `at`.
    pub(crate) fn scheduled(userid: &str, text: &str, at: UnixMillis) -> Message {
        let mut m = queued(userid, text);
        m.status = MessageStatus::Scheduled;
        m.deliver_at = Some(at);
        m.next_attempt_at = at;
        m
    }

    async fn status(store: &Store, m: &Message) -> MessageStatus {
        store.message(m.id.as_str()).await.unwrap().unwrap().status
    }

    async fn has_lane(store: &Store, userid: &str) -> bool {
        sqlx::query("SELECT userid FROM lanes WHERE userid = $1")
            .bind(userid)
            .fetch_optional(&store.pool)
            .await
            .unwrap()
            .is_some()
    }

    fn ids(heads: &[crate::store::Head]) -> Vec<&str> {
        heads.iter().map(|h| h.message.id.as_str()).collect()
    }

    /// Releases as one instance does (never busy here).
    async fn release(store: &Store, now: UnixMillis, limit: usize) -> usize {
        store
            .release_due(now, limit, WINDOW)
            .await
            .unwrap()
            .expect("no other instance is releasing")
    }

    /// A scheduled message is in no lane and holds nothing up; it is released when due and
    /// not before, once, earliest first and in acceptance order among those due together,
    /// into its place in its lane by acceptance order, with a fresh retry window; a lane
    /// that waited is due at once.
    pub(crate) async fn assert_release(store: &Store) {
        let now = UnixMillis::now();
        let later = now + ms(10_000);
        let soon = now + ms(5_000);
        let q0 = queued("alice", "q0");
        let s1 = scheduled("alice", "s1", later);
        let s2 = scheduled("alice", "s2", later);
        let s3 = scheduled("bob", "s3", soon);
        let q = queued("alice", "q");
        for m in [&q0, &s1, &s2, &s3, &q] {
            store.insert_message(m.clone()).await.unwrap();
        }
        assert_eq!(status(store, &s1).await, MessageStatus::Scheduled);
        assert_eq!(
            store
                .message(s1.id.as_str())
                .await
                .unwrap()
                .unwrap()
                .deliver_at,
            Some(later)
        );
        // Alice's lane holds only her immediate messages; Bob has no lane at all.
        let heads = store.lane_heads(&uid("alice"), 16).await.unwrap();
        assert_eq!(ids(&heads), [q0.id.as_str(), q.id.as_str()]);
        assert!(
            !has_lane(store, "bob").await,
            "a scheduled message opens no lane"
        );
        assert_eq!(store.next_scheduled_at().await.unwrap(), Some(soon));
        assert_eq!(store.scheduled_count().await.unwrap(), 3);
        assert_eq!(store.queued_count().await.unwrap(), 2);

        // Never early.
        assert_eq!(release(store, now, 64).await, 0);
        assert_eq!(release(store, soon - ms(1), 64).await, 0);
        assert_eq!(status(store, &s3).await, MessageStatus::Scheduled);
        // Due: released, its lane opened and due now.
        assert_eq!(release(store, soon, 64).await, 1);
        let r3 = store.message(s3.id.as_str()).await.unwrap().unwrap();
        assert_eq!(r3.status, MessageStatus::Queued);
        assert_eq!(r3.next_attempt_at, soon);
        assert_eq!(
            r3.deadline_at,
            soon + WINDOW,
            "a retry window from its release"
        );
        assert_eq!(r3.deliver_at, Some(soon), "it keeps the time it was due");
        assert!(has_lane(store, "bob").await);
        assert!(lane_due(store, "bob").await <= soon);
        // Released once.
        assert_eq!(release(store, soon, 64).await, 0);
        assert_eq!(store.next_scheduled_at().await.unwrap(), Some(later));

        // Alice's lane waits (its head in backoff, say) and nobody holds it.
        sqlx::query("UPDATE lanes SET due_at = $1 WHERE userid = 'alice'")
            .bind(now + ms(3_600_000))
            .execute(&store.pool)
            .await
            .unwrap();
        // Due together: in acceptance order, a batch at a time, each in its place in the
        // lane (ahead of what was accepted after it), the lane due at once.
        assert_eq!(release(store, later, 1).await, 1);
        let heads = store.lane_heads(&uid("alice"), 16).await.unwrap();
        assert_eq!(ids(&heads), [q0.id.as_str(), s1.id.as_str(), q.id.as_str()]);
        assert!(
            lane_due(store, "alice").await <= later,
            "a new head: look now"
        );
        assert_eq!(release(store, later, 64).await, 1);
        let heads = store.lane_heads(&uid("alice"), 16).await.unwrap();
        assert_eq!(
            ids(&heads),
            [
                q0.id.as_str(),
                s1.id.as_str(),
                s2.id.as_str(),
                q.id.as_str()
            ]
        );
        assert_eq!(store.next_scheduled_at().await.unwrap(), None);
        assert_eq!(store.scheduled_count().await.unwrap(), 0);
        assert_eq!(release(store, later, 64).await, 0);
    }

    /// A lane somebody holds keeps its due time (its worker is told instead).
    pub(crate) async fn assert_release_leaves_held_lanes_to_their_worker(store: &Store) {
        let now = UnixMillis::now();
        store.insert_message(queued("ivan", "q")).await.unwrap();
        store
            .insert_message(scheduled("ivan", "s", now))
            .await
            .unwrap();
        let claimed = store
            .claim_lanes("w", UnixMillis::now(), now + ms(60_000), 64)
            .await
            .unwrap();
        assert!(claimed.contains(&uid("ivan")));
        sqlx::query("UPDATE lanes SET due_at = $1 WHERE userid = 'ivan'")
            .bind(now + ms(3_600_000))
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(release(store, now, 64).await, 1);
        assert_eq!(lane_due(store, "ivan").await, now + ms(3_600_000));
    }

    /// A release wakes the worker that holds the lane (it reads the lane again) and, for a
    /// lane without one, the scheduler.
    pub(crate) async fn assert_release_wakes(store: &Store) {
        let now = UnixMillis::now();
        let arrivals = store.arrivals();
        let watch = arrivals.watch(&uid("carol"));
        for m in [scheduled("carol", "c", now), scheduled("dave", "d", now)] {
            store.insert_message(m).await.unwrap();
        }
        // Storing them woke nobody: they are in no lane yet.
        assert!(!watch.take().missed);
        let quiet = tokio::time::timeout(ms(100), arrivals.any()).await;
        assert!(
            quiet.is_err(),
            "a scheduled message wakes nobody when stored"
        );
        assert!(!watch.released());
        assert_eq!(release(store, now, 64).await, 2);
        tokio::time::timeout(ms(2_000), watch.arrived())
            .await
            .expect("the lane's worker is woken");
        assert!(watch.take().missed, "and told to read its lane");
        assert!(watch.released(), "before its next send");
        assert!(!watch.released(), "once");
        tokio::time::timeout(ms(2_000), arrivals.any())
            .await
            .expect("the scheduler is woken for the lane without a worker");
    }

    /// Holding a queued message, re-timing held ones, and cancelling.
    pub(crate) async fn assert_hold_retime_cancel(store: &Store) {
        let now = UnixMillis::now();
        let far = now + ms(3_600_000);
        let q = queued("erin", "q");
        let own = scheduled("erin", "own", far);
        store.insert_message(q.clone()).await.unwrap();
        store.insert_message(own.clone()).await.unwrap();
        assert!(store.hold(&q.id, far, Held::Quiet).await.unwrap());
        assert!(
            !store.hold(&q.id, far, Held::Quiet).await.unwrap(),
            "held once"
        );
        let held = store.message(q.id.as_str()).await.unwrap().unwrap();
        assert_eq!(held.status, MessageStatus::Scheduled);
        assert_eq!(held.held, Some(Held::Quiet));
        assert_eq!(held.deliver_at, Some(far));
        assert!(store.lane_heads(&uid("erin"), 4).await.unwrap().is_empty());
        // Quiet hours turned off: the held message is due now; the sender's own keeps its
        // time; another member's held messages are not touched.
        assert_eq!(
            store
                .retime_held(&uid("frank"), Held::Quiet, now)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            store
                .retime_held(&uid("erin"), Held::Quiet, now)
                .await
                .unwrap(),
            1
        );
        assert_eq!(release(store, now, 64).await, 1);
        assert_eq!(status(store, &q).await, MessageStatus::Queued);
        assert_eq!(status(store, &own).await, MessageStatus::Scheduled);

        // Cancelling: a scheduled message, once; never someone else's.
        let erin = uid("erin");
        assert_eq!(
            store
                .cancel(&uid("frank"), own.id.as_str(), now)
                .await
                .unwrap(),
            CancelOutcome::NotFound
        );
        assert_eq!(
            store.cancel(&erin, "no-such-id", now).await.unwrap(),
            CancelOutcome::NotFound
        );
        assert_eq!(
            store.cancel(&erin, "nul\0id", now).await.unwrap(),
            CancelOutcome::NotFound
        );
        assert_eq!(
            store.cancel(&erin, own.id.as_str(), now).await.unwrap(),
            CancelOutcome::Cancelled {
                was: MessageStatus::Scheduled
            }
        );
        assert_eq!(status(store, &own).await, MessageStatus::Cancelled);
        assert_eq!(
            store.cancel(&erin, own.id.as_str(), now).await.unwrap(),
            CancelOutcome::Final(MessageStatus::Cancelled)
        );
        assert_eq!(release(store, far, 64).await, 0, "never sent");
        // A queued message whose lane is being worked on may be in flight.
        let claimed = store
            .claim_lanes("w", UnixMillis::now(), UnixMillis::now() + ms(60_000), 64)
            .await
            .unwrap();
        assert!(claimed.contains(&erin));
        assert_eq!(
            store
                .cancel(&erin, q.id.as_str(), UnixMillis::now())
                .await
                .unwrap(),
            CancelOutcome::InFlight
        );
        assert_eq!(status(store, &q).await, MessageStatus::Queued);
        store
            .release_lane("w", &erin, UnixMillis::now() + ms(60_000))
            .await
            .unwrap();
        assert_eq!(
            store
                .cancel(&erin, q.id.as_str(), UnixMillis::now())
                .await
                .unwrap(),
            CancelOutcome::Cancelled {
                was: MessageStatus::Queued
            }
        );
        assert!(store.lane_heads(&erin, 4).await.unwrap().is_empty());
        // Delivered, or partly delivered: too late.
        let sent = queued("erin", "sent");
        let part = queued("erin", "part");
        store.insert_message(sent.clone()).await.unwrap();
        store.insert_message(part.clone()).await.unwrap();
        store
            .record_attempt(AttemptUpdate::Delivered {
                id: sent.id.clone(),
                attempts: 1,
                channel: ChannelName::WeCom,
                earlier: None,
                log: None,
            })
            .await
            .unwrap();
        store
            .record_attempt(AttemptUpdate::PartDelivered {
                id: part.id.clone(),
                attempts: 1,
                channel: ChannelName::WeCom,
                parts_before: 0,
                note: "part 1 of 2 (text)".into(),
                deadline_at: now + ms(60_000),
            })
            .await
            .unwrap();
        assert_eq!(
            store
                .cancel(&erin, sent.id.as_str(), UnixMillis::now())
                .await
                .unwrap(),
            CancelOutcome::Final(MessageStatus::Delivered)
        );
        assert_eq!(
            store
                .cancel(&erin, part.id.as_str(), UnixMillis::now())
                .await
                .unwrap(),
            CancelOutcome::PartlyDelivered
        );
        assert_eq!(status(store, &part).await, MessageStatus::Queued);
    }

    /// The retention purge keeps scheduled messages, however old, and purges cancelled
    /// ones as it purges failed ones.
    pub(crate) async fn assert_purge(store: &Store) {
        let now = UnixMillis::now();
        let waiting = scheduled("gina", "waiting", now + ms(3_600_000));
        let gone = scheduled("gina", "gone", now + ms(3_600_000));
        store.insert_message(waiting.clone()).await.unwrap();
        store.insert_message(gone.clone()).await.unwrap();
        assert!(matches!(
            store
                .cancel(&uid("gina"), gone.id.as_str(), now)
                .await
                .unwrap(),
            CancelOutcome::Cancelled { .. }
        ));
        // Everything accepted before a minute from now is old enough.
        let before = now + ms(60_000);
        assert_eq!(store.purge_messages(before, 100).await.unwrap(), 1);
        assert!(store.message(gone.id.as_str()).await.unwrap().is_none());
        assert_eq!(status(store, &waiting).await, MessageStatus::Scheduled);
    }

    async fn temp_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        (Store::connect(&url).await.unwrap(), dir)
    }

    #[tokio::test]
    async fn scheduled_messages_are_released_when_due_once_in_order() {
        let (store, _dir) = temp_store().await;
        assert_release(&store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn a_release_wakes_the_lanes_worker_or_the_scheduler() {
        let (store, _dir) = temp_store().await;
        assert_release_wakes(&store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn held_messages_are_retimed_and_messages_cancelled_only_before_they_go() {
        let (store, _dir) = temp_store().await;
        assert_hold_retime_cancel(&store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn the_purge_keeps_scheduled_messages_and_drops_cancelled_ones() {
        let (store, _dir) = temp_store().await;
        assert_purge(&store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn a_release_leaves_a_held_lane_to_its_worker() {
        let (store, _dir) = temp_store().await;
        assert_release_leaves_held_lanes_to_their_worker(&store).await;
        store.close().await;
    }

    /// Scheduled and queued messages inserted together, releases in the same batches as
    /// inserts: each released once, each with an acceptance number of its own.
    #[tokio::test]
    async fn releases_among_inserts_release_each_message_once() {
        let (store, _dir) = temp_store().await;
        let now = UnixMillis::now();
        let mut tasks = Vec::new();
        for i in 0..100 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let m = if i % 2 == 0 {
                    scheduled("hal", &i.to_string(), now)
                } else {
                    queued("hal", &i.to_string())
                };
                store.insert_message(m).await.unwrap();
                if i % 10 == 0 {
                    release(&store, now, 8).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Bounded: a release that released messages again would never end.
        for _ in 0..8 {
            if release(&store, now, 64).await == 0 {
                break;
            }
        }
        assert_eq!(store.scheduled_count().await.unwrap(), 0);
        assert_eq!(release(&store, now, 64).await, 0, "released once");
        let heads = store.lane_heads(&uid("hal"), 128).await.unwrap();
        assert_eq!(heads.len(), 100);
        let seqs: std::collections::HashSet<i64> = heads.iter().map(|h| h.message.seq).collect();
        assert_eq!(seqs.len(), 100, "every message has a number of its own");
    }

    /// What the schedule migration (SQLite 0011, PostgreSQL 0007) must leave, for both engines'
    /// migration tests: the database held a queued message `m1` for alice and alice's member
    /// row before it; both are kept, with nothing scheduled, held or urgent, and the store
    /// schedules messages afterwards.
    pub(crate) async fn assert_after_schedule_migration(store: &Store) {
        use crate::store::MessageStatus;
        let m1 = store.message("m1").await.unwrap().expect("kept");
        assert_eq!(m1.status, MessageStatus::Queued);
        assert_eq!((m1.deliver_at, m1.urgent, m1.held), (None, false, None));
        let member = sqlx::query("SELECT quiet, utc_offset FROM members WHERE userid = 'alice'")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(member.try_get::<Option<String>, _>("quiet").unwrap(), None);
        assert_eq!(
            member.try_get::<Option<i64>, _>("utc_offset").unwrap(),
            None
        );
        let now = UnixMillis::now();
        let later = scheduled("alice", "later", now + Duration::from_secs(60));
        store.insert_message(later.clone()).await.unwrap();
        assert_eq!(store.next_scheduled_at().await.unwrap(), later.deliver_at);
        assert_eq!(release(store, now, 64).await, 0);
    }
}
