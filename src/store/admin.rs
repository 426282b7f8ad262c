//! Read-only queries for the operators' page (`/console/admin`): members, what waits per
//! channel, recent failures. Nothing here writes, and nothing reads a push token: a
//! member's row says only when their token was issued.
//!
//! Every query is bounded: members by a limit, waiting messages over the partial indexes
//! of queued and of scheduled messages (so its cost grows with the backlog, as the
//! `/metrics` queue depth does), failures over the messages accepted since a given time
//! (ids are UUIDv7: a primary-key range) and by a limit.

use sqlx::Row as _;

use super::{MessageStatus, Store, StoreError, StoredChannel};
use crate::domain::{MessageId, UserId};
use crate::time::UnixMillis;

/// One member, as the operators' page lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSummary {
    pub userid: UserId,
    /// When the member first asked for a token.
    pub since: UnixMillis,
    /// When the member's current token was issued (`rotate` renews it).
    pub token_created_at: UnixMillis,
    /// Messages accepted for the member since the start of the day asked about.
    pub today: i64,
    /// Messages of the member in their lane now (queued, not scheduled).
    pub queued: i64,
}

/// A page of members, by userid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    pub members: Vec<MemberSummary>,
    /// More members exist after the last one listed.
    pub more: bool,
}

/// What waits for one channel: messages whose route's first channel (the one they are
/// being tried on, or will be tried on first) is this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelQueue {
    pub channel: StoredChannel,
    /// In a lane, to be delivered (or being delivered).
    pub queued: i64,
    /// Waiting for their time (the sender's `delay`/`at`, or quiet hours).
    pub scheduled: i64,
    /// The queued message accepted first.
    pub oldest: Option<OldestWaiting>,
    /// When the next scheduled message is due.
    pub next_due: Option<UnixMillis>,
}

/// The oldest queued message of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldestWaiting {
    pub id: MessageId,
    pub userid: UserId,
    pub created_at: UnixMillis,
    pub attempts: i64,
    /// Why its latest try failed, if it was tried.
    pub last_error: Option<String>,
}

/// A message that failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedMessage {
    pub id: MessageId,
    pub userid: UserId,
    pub title: Option<String>,
    /// The channel it was last tried on.
    pub channel: StoredChannel,
    pub attempts: i64,
    pub reason: Option<String>,
    /// When it failed (its last change).
    pub at: UnixMillis,
}

/// A try that did not deliver: retried later, given up on a channel (and maybe delivered
/// by another), or unconfirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAttempt {
    pub message_id: MessageId,
    pub userid: UserId,
    pub at: UnixMillis,
    pub channel: StoredChannel,
    /// `retry`, `failed` or `unconfirmed`.
    pub outcome: String,
    pub reason: Option<String>,
}

/// Recent failures, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failures {
    pub messages: Vec<FailedMessage>,
    pub attempts: Vec<FailedAttempt>,
}

/// The first channel of a stored route (`wecom,email` → `wecom`).
fn first_channel(route: &str) -> StoredChannel {
    let first = route.split(',').next().unwrap_or_default().trim();
    StoredChannel::parse(first.to_owned())
}

impl Store {
    /// Up to `limit` members by userid, with how many messages they were sent since
    /// `day_start` and how many wait in their lane. Two index probes per member listed
    /// (`messages_by_member`, `messages_lane`).
    pub async fn admin_members(
        &self,
        day_start: UnixMillis,
        limit: usize,
    ) -> Result<Members, StoreError> {
        let first_id = MessageId::first_at(day_start);
        // LIMIT as a literal (an integer): see `messages_of`.
        let sql = format!(
            "SELECT m.userid, m.created_at, m.token_created_at, \
             (SELECT count(*) FROM messages t WHERE t.userid = m.userid AND t.id >= $1) \
               AS today, \
             (SELECT count(*) FROM messages q WHERE q.userid = m.userid \
               AND q.status = 'queued') AS queued \
             FROM members m ORDER BY m.userid LIMIT {}",
            limit.saturating_add(1)
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(first_id.as_str())
            .fetch_all(&self.pool)
            .await?;
        let more = rows.len() > limit;
        let members = rows
            .iter()
            .take(limit)
            .map(|row| {
                Ok(MemberSummary {
                    userid: UserId::new(&row.try_get::<String, _>("userid")?),
                    since: row.try_get("created_at")?,
                    token_created_at: row.try_get("token_created_at")?,
                    today: row.try_get("today")?,
                    queued: row.try_get("queued")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Members { members, more })
    }

    /// Per channel (the first of each waiting message's route), queued and scheduled
    /// counts, the oldest queued message and the next scheduled time; channels with
    /// nothing waiting are not listed. Ordered by channel name.
    pub async fn admin_queues(&self) -> Result<Vec<ChannelQueue>, StoreError> {
        let mut queues: Vec<ChannelQueue> = Vec::new();
        // Two queries, each matching a partial index's predicate exactly.
        for status in [MessageStatus::Queued, MessageStatus::Scheduled] {
            let rows = sqlx::query(
                "SELECT route, count(*) AS n, MIN(id) AS oldest, MIN(deliver_at) AS due \
                 FROM messages WHERE status = $1 GROUP BY route",
            )
            .bind(status.as_str())
            .fetch_all(&self.pool)
            .await?;
            for row in &rows {
                let channel = first_channel(&row.try_get::<String, _>("route")?);
                let n: i64 = row.try_get("n")?;
                let oldest: Option<String> = row.try_get("oldest")?;
                let due: Option<UnixMillis> = row.try_get("due")?;
                let at = match queues.iter().position(|q| q.channel == channel) {
                    Some(at) => at,
                    None => {
                        queues.push(ChannelQueue {
                            channel,
                            queued: 0,
                            scheduled: 0,
                            oldest: None,
                            next_due: None,
                        });
                        queues.len() - 1
                    }
                };
                let queue = &mut queues[at];
                if status == MessageStatus::Queued {
                    queue.queued += n;
                    // The smallest id: a placeholder until the row is read below.
                    if let Some(id) = oldest
                        && queue
                            .oldest
                            .as_ref()
                            .is_none_or(|o| id.as_str() < o.id.as_str())
                    {
                        queue.oldest = Some(OldestWaiting {
                            id: MessageId::from_stored(id),
                            userid: UserId::new(""),
                            created_at: UnixMillis::from_millis(0),
                            attempts: 0,
                            last_error: None,
                        });
                    }
                } else {
                    queue.scheduled += n;
                    queue.next_due = match (queue.next_due, due) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
            }
        }
        for queue in &mut queues {
            let Some(oldest) = queue.oldest.take() else {
                continue;
            };
            // It may have been delivered since the count: then there is no oldest to show
            // (the page is a snapshot, not a transaction).
            queue.oldest = self
                .message(oldest.id.as_str())
                .await?
                .filter(|m| m.status == MessageStatus::Queued)
                .map(|m| OldestWaiting {
                    id: m.id,
                    userid: m.userid,
                    created_at: m.created_at,
                    attempts: m.attempts,
                    last_error: m.last_error,
                });
        }
        queues.sort_by(|a, b| a.channel.as_str().cmp(b.channel.as_str()));
        Ok(queues)
    }

    /// The latest `limit` failed messages and `limit` failed tries among the messages
    /// accepted since `since`, the latest failure first (a sort within the window).
    pub async fn admin_failures(
        &self,
        since: UnixMillis,
        limit: usize,
    ) -> Result<Failures, StoreError> {
        let first_id = MessageId::first_at(since);
        let sql = format!(
            "SELECT id, userid, title, route, attempts, last_error, updated_at FROM messages \
             WHERE id >= $1 AND status = 'failed' ORDER BY updated_at DESC, id DESC LIMIT {limit}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(first_id.as_str())
            .fetch_all(&self.pool)
            .await?;
        let messages = rows
            .iter()
            .map(|row| {
                Ok(FailedMessage {
                    id: MessageId::from_stored(row.try_get("id")?),
                    userid: UserId::new(&row.try_get::<String, _>("userid")?),
                    title: row.try_get("title")?,
                    channel: first_channel(&row.try_get::<String, _>("route")?),
                    attempts: row.try_get("attempts")?,
                    reason: row.try_get("last_error")?,
                    at: row.try_get("updated_at")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        let sql = format!(
            "SELECT a.message_id, m.userid, a.at, a.channel, a.outcome, a.error \
             FROM attempts a JOIN messages m ON m.id = a.message_id \
             WHERE m.id >= $1 AND a.outcome <> 'delivered' \
             ORDER BY a.at DESC, a.message_id DESC LIMIT {limit}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(first_id.as_str())
            .fetch_all(&self.pool)
            .await?;
        let attempts = rows
            .iter()
            .map(|row| {
                Ok(FailedAttempt {
                    message_id: MessageId::from_stored(row.try_get("message_id")?),
                    userid: UserId::new(&row.try_get::<String, _>("userid")?),
                    at: row.try_get("at")?,
                    channel: StoredChannel::parse(row.try_get("channel")?),
                    outcome: row.try_get("outcome")?,
                    reason: row.try_get("error")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Failures { messages, attempts })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{ChannelName, Route};
    use crate::store::{AttemptUpdate, Message};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn queued(userid: &str, route: &str) -> Message {
        let now = UnixMillis::now();
        let mut m = Message::new_queued(
            MessageId::generate(),
            UserId::new(userid),
            Some(format!("to {userid}")),
            Some("body".into()),
            now,
            now + ms(60_000),
        );
        m.route = Route::parse(route).unwrap();
        m
    }

    fn scheduled(userid: &str, due: UnixMillis) -> Message {
        let mut m = queued(userid, "wecom");
        m.status = MessageStatus::Scheduled;
        m.deliver_at = Some(due);
        m
    }

    /// Ids are UUIDv7 to the millisecond: a message generated a millisecond later sorts
    /// after.
    async fn tick() {
        tokio::time::sleep(ms(2)).await;
    }

    async fn members_count_today_and_queued_but_never_read_a_token(store: &Store) {
        let alice = UserId::new("alice");
        let bob = UserId::new("bob");
        let carol = UserId::new("carol");
        for u in [&carol, &alice, &bob] {
            store.token_for(u).await.unwrap();
        }
        let day_start = UnixMillis::now();
        tick().await;
        for _ in 0..3 {
            store
                .insert_message(queued("alice", "wecom"))
                .await
                .unwrap();
        }
        let done = queued("alice", "wecom");
        let done_id = done.id.clone();
        store.insert_message(done).await.unwrap();
        store
            .record_attempt(AttemptUpdate::Delivered {
                id: done_id,
                attempts: 1,
                channel: ChannelName::WeCom,
                earlier: None,
                log: None,
            })
            .await
            .unwrap();
        store
            .insert_message(scheduled("bob", UnixMillis::now() + ms(3_600_000)))
            .await
            .unwrap();

        let page = store.admin_members(day_start, 10).await.unwrap();
        assert!(!page.more);
        let rows: Vec<(&str, i64, i64)> = page
            .members
            .iter()
            .map(|m| (m.userid.as_str(), m.today, m.queued))
            .collect();
        assert_eq!(rows, [("alice", 4, 3), ("bob", 1, 0), ("carol", 0, 0)]);
        assert!(page.members.iter().all(|m| m.token_created_at >= m.since));

        // A day that starts later counts nothing of today's.
        let later = store
            .admin_members(UnixMillis::now() + ms(10), 10)
            .await
            .unwrap();
        assert!(later.members.iter().all(|m| m.today == 0), "{later:?}");

        // A limit says there are more.
        let two = store.admin_members(day_start, 2).await.unwrap();
        assert!(two.more);
        assert_eq!(two.members.len(), 2);
        assert_eq!(two.members[1].userid.as_str(), "bob");

        // Rotation renews the token's time, not the member's.
        let before = page.members[0].clone();
        tick().await;
        store.rotate_token(&alice).await.unwrap();
        let after = store.admin_members(day_start, 10).await.unwrap();
        assert_eq!(after.members[0].since, before.since);
        assert!(after.members[0].token_created_at > before.token_created_at);
    }

    async fn queues_are_counted_by_the_channel_each_message_is_on(store: &Store) {
        let first = queued("alice", "email,wecom");
        let first_id = first.id.clone();
        store.insert_message(first).await.unwrap();
        tick().await;
        let on_wecom = queued("bob", "wecom,email");
        let on_wecom_id = on_wecom.id.clone();
        store.insert_message(on_wecom).await.unwrap();
        tick().await;
        store
            .insert_message(queued("alice", "wecom"))
            .await
            .unwrap();
        store
            .insert_message(queued("carol", "email"))
            .await
            .unwrap();
        let soon = UnixMillis::now() + ms(60_000);
        store
            .insert_message(scheduled("bob", soon + ms(1000)))
            .await
            .unwrap();
        store.insert_message(scheduled("bob", soon)).await.unwrap();
        // The one on WeCom failed a try: its reason is shown.
        store
            .record_attempt(AttemptUpdate::Retry {
                id: on_wecom_id.clone(),
                attempts: 1,
                channel: ChannelName::WeCom,
                error: "WeCom busy (errcode -1)".into(),
                next_attempt_at: UnixMillis::now() + ms(1000),
            })
            .await
            .unwrap();

        let queues = store.admin_queues().await.unwrap();
        let summary: Vec<(&str, i64, i64)> = queues
            .iter()
            .map(|q| (q.channel.as_str(), q.queued, q.scheduled))
            .collect();
        assert_eq!(summary, [("email", 2, 0), ("wecom", 2, 2)]);
        let email = &queues[0];
        let oldest = email.oldest.as_ref().unwrap();
        assert_eq!(oldest.id, first_id);
        assert_eq!(oldest.userid.as_str(), "alice");
        assert!(oldest.created_at > UnixMillis::from_millis(0));
        assert_eq!(email.next_due, None);
        let wecom = &queues[1];
        let oldest = wecom.oldest.as_ref().unwrap();
        assert_eq!(oldest.id, on_wecom_id);
        assert_eq!(oldest.attempts, 1);
        assert_eq!(
            oldest.last_error.as_deref(),
            Some("WeCom busy (errcode -1)")
        );
        assert_eq!(wecom.next_due, Some(soon));
    }

    async fn nothing_waiting_lists_no_channel(store: &Store) {
        assert_eq!(store.admin_queues().await.unwrap(), []);
        let f = store
            .admin_failures(UnixMillis::from_millis(0), 10)
            .await
            .unwrap();
        assert!(f.messages.is_empty() && f.attempts.is_empty());
        let m = store
            .admin_members(UnixMillis::from_millis(0), 10)
            .await
            .unwrap();
        assert!(m.members.is_empty() && !m.more);
    }

    async fn failures_are_newest_first_within_the_window_and_the_limit(store: &Store) {
        let old = queued("alice", "wecom");
        let old_id = old.id.clone();
        store.insert_message(old).await.unwrap();
        tick().await;
        let since = UnixMillis::now();
        tick().await;
        let mut ids = Vec::new();
        for i in 0..3 {
            let m = queued("bob", "wecom,email");
            ids.push(m.id.clone());
            store.insert_message(m).await.unwrap();
            store
                .record_attempt(AttemptUpdate::Retry {
                    id: ids[i].clone(),
                    attempts: 1,
                    channel: ChannelName::WeCom,
                    error: format!("timed out {i}"),
                    next_attempt_at: UnixMillis::now(),
                })
                .await
                .unwrap();
            tick().await;
        }
        for (i, id) in ids.iter().enumerate().take(2) {
            store
                .record_attempt(AttemptUpdate::Failed {
                    id: id.clone(),
                    attempts: 2,
                    channel: ChannelName::WeCom,
                    error: format!("refused {i}"),
                    unconfirmed: false,
                })
                .await
                .unwrap();
            tick().await;
        }
        // Before the window: not listed.
        for id in [&old_id] {
            store
                .record_attempt(AttemptUpdate::Failed {
                    id: id.clone(),
                    attempts: 1,
                    channel: ChannelName::WeCom,
                    error: "old".into(),
                    unconfirmed: false,
                })
                .await
                .unwrap();
        }

        let f = store.admin_failures(since, 10).await.unwrap();
        let failed: Vec<(&MessageId, Option<&str>)> = f
            .messages
            .iter()
            .map(|m| (&m.id, m.reason.as_deref()))
            .collect();
        assert_eq!(
            failed,
            [(&ids[1], Some("refused 1")), (&ids[0], Some("refused 0"))]
        );
        assert_eq!(f.messages[0].userid.as_str(), "bob");
        assert_eq!(f.messages[0].title.as_deref(), Some("to bob"));
        assert_eq!(f.messages[0].channel, ChannelName::WeCom);
        assert_eq!(f.messages[0].attempts, 2);
        // Every try that did not deliver, the latest first: the final failures are in the
        // history too.
        let tries: Vec<(&MessageId, &str, Option<&str>)> = f
            .attempts
            .iter()
            .map(|a| (&a.message_id, a.outcome.as_str(), a.reason.as_deref()))
            .collect();
        assert_eq!(
            tries,
            [
                (&ids[1], "failed", Some("refused 1")),
                (&ids[0], "failed", Some("refused 0")),
                (&ids[2], "retry", Some("timed out 2")),
                (&ids[1], "retry", Some("timed out 1")),
                (&ids[0], "retry", Some("timed out 0")),
            ]
        );
        assert!(f.attempts.iter().all(|a| a.userid.as_str() == "bob"));
        let two = store.admin_failures(since, 2).await.unwrap();
        assert_eq!(two.messages.len(), 2);
        assert_eq!(two.attempts.len(), 2);
        assert_eq!(two.attempts[0].message_id, ids[1]);
        // From the start of time the old one is there too.
        let all = store
            .admin_failures(UnixMillis::from_millis(0), 10)
            .await
            .unwrap();
        assert_eq!(all.messages.len(), 3);
        assert_eq!(all.messages[0].id, old_id, "{all:?}");
    }

    #[test]
    fn the_first_channel_of_a_stored_route() {
        assert_eq!(first_channel("email,wecom"), ChannelName::Email);
        assert_eq!(first_channel("wecom"), ChannelName::WeCom);
        assert_eq!(
            first_channel("gone-robot-of-another-version!,wecom").as_str(),
            "gone-robot-of-another-version!"
        );
    }

    /// What the operators' page costs on a database with 100,000 messages of 1,000 members
    /// from the last days (1 % failed with a try each, 0.1 % queued): each query's median of
    /// five, printed. A measurement, not a check.
    #[tokio::test]
    #[ignore = "a measurement: cargo test --lib admin_queries_at_scale -- --ignored --nocapture"]
    async fn admin_queries_at_scale() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("scale.db").display());
        let store = Store::connect(&url).await.unwrap();
        let (members, messages) = (1_000, 100_000);
        let now = UnixMillis::now();
        let mut tx = store.pool.begin().await.unwrap();
        for m in 0..members {
            sqlx::query(
                "INSERT INTO members (userid, token, created_at, token_created_at) \
                 VALUES ($1, $2, $3, $3)",
            )
            .bind(format!("member{m:04}"))
            .bind(format!("token{m:04}"))
            .bind(now)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        for i in 0..messages {
            let id = MessageId::generate();
            let status = match i % 1000 {
                1 => "queued",
                n if n % 100 == 0 => "failed",
                _ => "delivered",
            };
            sqlx::query(
                "INSERT INTO messages (id, userid, title, content, status, created_at, \
                 updated_at, next_attempt_at, deadline_at, seq, last_error) \
                 VALUES ($1, $2, 't', 'c', $3, $4, $4, $4, $4, $5, $6)",
            )
            .bind(id.as_str())
            .bind(format!("member{:04}", i % members))
            .bind(status)
            .bind(now)
            .bind(i64::from(i))
            .bind((status == "failed").then_some("refused"))
            .execute(&mut *tx)
            .await
            .unwrap();
            if status == "failed" {
                sqlx::query(
                    "INSERT INTO attempts (message_id, at, channel, outcome, error) \
                     VALUES ($1, $2, 'wecom', 'failed', 'refused')",
                )
                .bind(id.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await
                .unwrap();
            }
        }
        tx.commit().await.unwrap();
        let since = now - Duration::from_secs(7 * 24 * 3600);
        let day = now.start_of_day(0);
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let (mut m, mut q, mut f) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let page = store.admin_members(day, 200).await.unwrap();
            m.push(t.elapsed());
            assert_eq!(page.members.len(), 200);
            let t = std::time::Instant::now();
            let queues = store.admin_queues().await.unwrap();
            q.push(t.elapsed());
            assert_eq!(queues[0].queued, 100);
            let t = std::time::Instant::now();
            let failures = store.admin_failures(since, 30).await.unwrap();
            f.push(t.elapsed());
            assert_eq!(failures.messages.len(), 30);
        }
        println!(
            "{messages} messages, {members} members: members (200 listed) {:?}, queues {:?}, \
             failures {:?}",
            median(m),
            median(q),
            median(f)
        );
        store.close().await;
    }

    on_both_engines!(
        members_count_today_and_queued_but_never_read_a_token,
        queues_are_counted_by_the_channel_each_message_is_on,
        nothing_waiting_lists_no_channel,
        failures_are_newest_first_within_the_window_and_the_limit,
    );
}
