//! Per-member lanes: which members have queued messages, who is working on each, and the
//! reads the scheduler plans with. Writes go through the group-commit writer
//! ([`LaneOp`]); reads use the pool.

use std::time::Duration;

use sqlx::Row as _;

use super::messages::MESSAGE_COLUMNS;
use super::writer::{LaneOp, MoveOn, Overdue, OverdueMessage, Reply};
use super::{Message, Store, StoreError};
use crate::domain::{ChannelName, MessageId, Route, UserId};
use crate::time::UnixMillis;

/// Characters of a waiting message's content loaded for planning (a digest shows one
/// line of each; its page shows them in full).
const EXCERPT_CHARS: i64 = 300;

/// Lanes looked at by [`Store::oldest_due`].
const OLDEST_DUE_LANES: usize = 256;

/// Content up to this size comes with a lane's head when read ahead; larger content is
/// read at the message's turn.
pub const HEAD_CONTENT_BYTES: i64 = 4096;

/// A message at the front of a lane. `complete` is false when its content was too large
/// to read ahead (then `message.content` is `None` and must be read at its turn).
#[derive(Debug, Clone)]
pub struct Head {
    pub message: Message,
    pub complete: bool,
}

/// A message waiting in a lane, as the scheduler plans with it (content cut short).
#[derive(Debug, Clone)]
pub struct Waiting {
    pub id: MessageId,
    pub created_at: UnixMillis,
    pub title: Option<String>,
    pub excerpt: Option<String>,
    /// `excerpt` is only the start of the content (the digest's page shows the rest).
    pub partial: bool,
    /// The content is markdown (the digest shows it as readable text).
    pub markdown: bool,
}

/// The queued message on a channel whose retry window ends first (see
/// [`Store::next_window`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextWindow {
    pub userid: UserId,
    pub deadline_at: UnixMillis,
    /// When its lane is due, if nobody holds it.
    pub lane_due: Option<UnixMillis>,
}

fn unexpected(reply: Reply) -> StoreError {
    StoreError::Corrupt(format!("unexpected answer from the writer: {reply:?}"))
}

impl Store {
    /// Claims up to `limit` due lanes for `owner` until `lease_until`.
    pub async fn claim_lanes(
        &self,
        owner: &str,
        now: UnixMillis,
        lease_until: UnixMillis,
        limit: usize,
    ) -> Result<Vec<UserId>, StoreError> {
        let op = LaneOp::Claim {
            owner: owner.to_owned(),
            now,
            lease_until,
            limit,
        };
        match self.writer.lane(op).await? {
            Reply::Claimed(userids) => Ok(userids),
            other => Err(unexpected(other)),
        }
    }

    pub async fn renew_lanes(
        &self,
        owner: &str,
        userids: Vec<UserId>,
        lease_until: UnixMillis,
    ) -> Result<(), StoreError> {
        self.writer
            .lane(LaneOp::Renew {
                owner: owner.to_owned(),
                userids,
                lease_until,
            })
            .await
            .map(drop)
    }

    /// Gives the lane up until `due_at` (backoff, member limits, a channel that is down).
    pub async fn release_lane(
        &self,
        owner: &str,
        userid: &UserId,
        due_at: UnixMillis,
    ) -> Result<(), StoreError> {
        self.writer
            .lane(LaneOp::Release {
                owner: owner.to_owned(),
                userid: userid.clone(),
                due_at,
            })
            .await
            .map(drop)
    }

    /// Deletes the lane if nothing is queued in it; `false` when a message arrived since
    /// the caller looked (the lane stays, and its owner goes on).
    pub async fn finish_lane(&self, owner: &str, userid: &UserId) -> Result<bool, StoreError> {
        let op = LaneOp::Finish {
            owner: owner.to_owned(),
            userid: userid.clone(),
        };
        match self.writer.lane(op).await? {
            Reply::Finished(done) => Ok(done),
            other => Err(unexpected(other)),
        }
    }

    async fn lane_count(&self, op: LaneOp) -> Result<u64, StoreError> {
        match self.writer.lane(op).await? {
            Reply::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// Gives up every claim `owner` holds (its previous run's, at start-up).
    pub async fn release_claims_of(&self, owner: &str) -> Result<u64, StoreError> {
        self.lane_count(LaneOp::ReleaseAll {
            owner: owner.to_owned(),
        })
        .await
    }

    /// Up to `limit` queued messages whose route goes on `channel` next and whose retry
    /// window had ended by `tried_at` (when the channel's latest failed try started), in
    /// lanes nobody holds at `now` (a lane being worked on judges its own head); earliest
    /// window end first. What becomes of them is the caller's to decide
    /// ([`Store::move_overdue`]).
    pub async fn overdue(
        &self,
        channel: ChannelName,
        tried_at: UnixMillis,
        now: UnixMillis,
        limit: usize,
    ) -> Result<Vec<OverdueMessage>, StoreError> {
        // LIMIT as a literal: see `lane_heads`.
        let sql = format!(
            "SELECT m.id, m.userid, m.route, m.attempts, m.deadline_at, m.channel \
             FROM messages m \
             WHERE m.status = 'queued' AND m.deadline_at <= $1 \
               AND (m.route = $2 OR m.route LIKE $3) \
               AND NOT EXISTS (\
                 SELECT 1 FROM lanes l WHERE l.userid = m.userid AND l.lease_until > $4) \
             ORDER BY m.deadline_at LIMIT {limit}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tried_at)
            .bind(channel.as_str())
            .bind(format!("{},%", channel.as_str()))
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let stored_route: String = row.try_get("route")?;
                Ok(OverdueMessage {
                    id: MessageId::from_stored(row.try_get("id")?),
                    userid: UserId::new(&row.try_get::<String, _>("userid")?),
                    route: Route::parse(&stored_route)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    attempts: row.try_get("attempts")?,
                    deadline_at: row.try_get("deadline_at")?,
                    delivered_before: row.try_get::<Option<String>, _>("channel")?.is_some(),
                    stored_route,
                })
            })
            .collect()
    }

    /// Moves overdue messages (read by [`Store::overdue`]) as the caller decided, each
    /// with a failed attempt on `channel` saying `error`. A message that changed since it
    /// was read (its worker or another instance moved it) or whose lane is being worked
    /// on is left alone: answers how many moved, and how many of those ended failed.
    pub async fn move_overdue(
        &self,
        channel: ChannelName,
        now: UnixMillis,
        error: &str,
        moves: Vec<(OverdueMessage, MoveOn)>,
    ) -> Result<Overdue, StoreError> {
        if moves.is_empty() {
            return Ok(Overdue::default());
        }
        let op = LaneOp::Overdue {
            channel,
            now,
            error: error.to_owned(),
            moves,
        };
        match self.writer.lane(op).await? {
            Reply::Overdue(done) => Ok(done),
            other => Err(unexpected(other)),
        }
    }

    /// The queued message whose route goes on `channel` next and whose retry window ends
    /// first after `after`, with its lane's due time if nobody holds it.
    pub async fn next_window(
        &self,
        channel: ChannelName,
        after: UnixMillis,
    ) -> Result<Option<NextWindow>, StoreError> {
        let row = sqlx::query(
            "SELECT m.userid, m.deadline_at, l.due_at, l.owner FROM messages m \
             LEFT JOIN lanes l ON l.userid = m.userid \
             WHERE m.status = 'queued' AND m.deadline_at > $1 \
               AND (m.route = $2 OR m.route LIKE $3) \
             ORDER BY m.deadline_at LIMIT 1",
        )
        .bind(after)
        .bind(channel.as_str())
        .bind(format!("{},%", channel.as_str()))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let owner: Option<String> = row.try_get("owner")?;
        let due: Option<UnixMillis> = row.try_get("due_at")?;
        Ok(Some(NextWindow {
            userid: UserId::new(&row.try_get::<String, _>("userid")?),
            deadline_at: row.try_get("deadline_at")?,
            lane_due: due.filter(|_| owner.is_none()),
        }))
    }

    /// The lane becomes due by `due_at` unless someone holds it (a probe for one of its
    /// messages is planned then).
    pub async fn lane_due_by(
        &self,
        userid: &UserId,
        due_at: UnixMillis,
    ) -> Result<u64, StoreError> {
        self.lane_count(LaneOp::DueBy {
            userid: userid.clone(),
            due_at,
        })
        .await
    }

    /// Opens a lane for every member with queued messages but no lane (a safety net: an
    /// insert opens its lane in the same transaction).
    pub async fn open_missing_lanes(&self, now: UnixMillis) -> Result<u64, StoreError> {
        self.lane_count(LaneOp::OpenMissing { now }).await
    }

    /// Forgets send times before `before`: the longest rate window is what reads need.
    pub async fn prune_sends(&self, before: UnixMillis) -> Result<u64, StoreError> {
        let pruned = self.lane_count(LaneOp::PruneSends { before }).await?;
        if let Some(log) = &self.sends {
            log.prune(before, UnixMillis::now().since(before));
        }
        Ok(pruned)
    }

    /// Lanes nobody holds that are due later than `now` become due now (a channel came
    /// back: lanes that gave themselves back until its next probe may go). A lane whose
    /// head is not due yet is simply given back again by its worker. Through the writer,
    /// after every release queued before it: a lane that lost the gate to the probe that
    /// found the channel back, and was given back until the next probe, is brought forward
    /// too, however late its release commits.
    pub async fn lanes_due_by(&self, now: UnixMillis) -> Result<u64, StoreError> {
        self.lane_count(LaneOp::AllDueBy { due_at: now }).await
    }

    /// When the next lane nobody holds becomes due.
    pub async fn next_lane_due(&self) -> Result<Option<UnixMillis>, StoreError> {
        let row = sqlx::query("SELECT MIN(due_at) AS due FROM lanes WHERE owner IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<UnixMillis>, _>("due")?)
    }

    /// The lane's first `limit` queued messages, head first; content only up to
    /// [`HEAD_CONTENT_BYTES`] each (see [`Head::complete`]).
    pub async fn lane_heads(&self, userid: &UserId, limit: usize) -> Result<Vec<Head>, StoreError> {
        let columns = MESSAGE_COLUMNS.replace(
            "content,",
            "CASE WHEN octet_length(content) <= $2 THEN content END AS content, \
             CAST(octet_length(content) AS BIGINT) AS content_bytes,",
        );
        // LIMIT as a literal, not a parameter: SQLite reads a bound LIMIT while planning
        // and then re-prepares the statement every time it is bound (seen in profiles).
        let sql = format!(
            "SELECT {columns} FROM messages WHERE userid = $1 AND status = 'queued' \
             ORDER BY seq LIMIT {limit}"
        );
        let mut reader = self.readers.get().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(userid.as_str())
            .bind(HEAD_CONTENT_BYTES)
            .fetch_all(reader.conn())
            .await;
        let rows = reader.done(rows)?;
        rows.iter()
            .map(|row| {
                let message = Message::from_row(row)?;
                let bytes: Option<i64> = row.try_get("content_bytes")?;
                Ok(Head {
                    complete: message.content.is_some() || bytes.is_none(),
                    message,
                })
            })
            .collect()
    }

    /// For `/healthz` and `/metrics`: per channel, how long the oldest message that
    /// could be sent now has been waiting — a lane's head whose lane is due (not held
    /// back by the member limits, a backoff or a channel that is down) and whose own next
    /// try has come. It waits since the latest of those three times and its acceptance.
    /// Looks at the [`OLDEST_DUE_LANES`] longest-due lanes (the lane index, one index
    /// probe each), so its cost does not grow with the backlog.
    pub async fn oldest_due(
        &self,
        now: UnixMillis,
    ) -> Result<Vec<(ChannelName, Duration)>, StoreError> {
        let sql = format!(
            "SELECT l.due_at, m.next_attempt_at, m.created_at, m.route \
             FROM lanes l JOIN messages m ON m.userid = l.userid AND m.status = 'queued' \
             AND m.seq = (SELECT MIN(h.seq) FROM messages h \
                          WHERE h.userid = l.userid AND h.status = 'queued') \
             WHERE l.due_at <= $1 AND m.next_attempt_at <= $1 \
             ORDER BY l.due_at LIMIT {OLDEST_DUE_LANES}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        let mut oldest: Vec<(ChannelName, Duration)> = Vec::new();
        for row in &rows {
            let since = row
                .try_get::<UnixMillis, _>("due_at")?
                .max(row.try_get("next_attempt_at")?)
                .max(row.try_get("created_at")?);
            let route: String = row.try_get("route")?;
            let Ok(route) = crate::domain::Route::parse(&route) else {
                continue;
            };
            let age = now.since(since);
            match oldest.iter_mut().find(|(c, _)| *c == route.first()) {
                Some((_, a)) => *a = (*a).max(age),
                None => oldest.push((route.first(), age)),
            }
        }
        Ok(oldest)
    }

    /// Up to `limit` queued messages of the lane, head first, with a short excerpt — only
    /// as far as a digest on `channel` may carry them: the list stops at the first message
    /// that is not going to `channel` next (or goes to every channel, or to a fixed
    /// address, or has images or files: a digest line cannot carry those), so a digest
    /// never overtakes it.
    pub async fn lane_waiting(
        &self,
        userid: &UserId,
        channel: ChannelName,
        limit: usize,
    ) -> Result<Vec<Waiting>, StoreError> {
        // LIMIT as a literal: see `lane_heads`.
        let sql = format!(
            "SELECT id, created_at, title, substr(content, 1, CAST($2 AS INTEGER)) AS excerpt, \
             CAST(CASE WHEN length(content) > $2 THEN 1 ELSE 0 END AS BIGINT) AS partial, \
             format, CAST(CASE WHEN (route = $3 OR route LIKE $3 || ',%') \
                       AND deliver_all = 0 AND address_to IS NULL AND media_count = 0 \
                       THEN 1 ELSE 0 END AS BIGINT) \
               AS digestible \
             FROM messages WHERE userid = $1 AND status = 'queued' ORDER BY seq LIMIT {limit}"
        );
        let mut reader = self.readers.get().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(userid.as_str())
            .bind(EXCERPT_CHARS)
            .bind(channel.as_str())
            .fetch_all(reader.conn())
            .await;
        let rows = reader.done(rows)?;
        rows.iter()
            .take_while(|row| row.try_get::<i64, _>("digestible").is_ok_and(|d| d == 1))
            .map(|row| {
                Ok(Waiting {
                    id: MessageId::from_stored(row.try_get("id")?),
                    created_at: row.try_get("created_at")?,
                    title: row.try_get("title")?,
                    excerpt: row.try_get("excerpt")?,
                    partial: row.try_get::<i64, _>("partial")? == 1,
                    markdown: row.try_get::<String, _>("format")? == "markdown",
                })
            })
            .collect()
    }

    /// This instance's turn on a destination whose rate windows every member shares, across
    /// instances: on PostgreSQL a session advisory lock on a connection of its own, held
    /// until [`SharedTurn::release`] (reading the history, sending and recording the send
    /// happen in between). `None` on SQLite: one instance, whose lanes take turns in memory.
    pub async fn shared_turn(
        &self,
        channel: ChannelName,
    ) -> Result<Option<SharedTurn>, StoreError> {
        if self.sole_writer() {
            return Ok(None);
        }
        let key = SharedTurn::key(channel);
        let mut conn = self.pool.acquire().await?;
        // The lock function returns `void`, which the portable driver cannot read.
        sqlx::query("SELECT count(*) AS n FROM (SELECT pg_advisory_lock($1)) AS l")
            .bind(key)
            .execute(&mut *conn)
            .await?;
        Ok(Some(SharedTurn {
            conn: Some(conn),
            key,
        }))
    }

    /// When messages were sent on `channel` since `since`, to anyone, oldest first (a
    /// shared destination's windows).
    pub async fn channel_history(
        &self,
        channel: ChannelName,
        since: UnixMillis,
    ) -> Result<Vec<UnixMillis>, StoreError> {
        if let Some(log) = &self.sends {
            return Ok(log.channel(channel.as_str(), since));
        }
        let mut reader = self.readers.get().await?;
        let rows = sqlx::query(
            "SELECT sent_at FROM sends WHERE channel = $1 AND sent_at > $2 ORDER BY sent_at",
        )
        .bind(channel.as_str())
        .bind(since)
        .fetch_all(reader.conn())
        .await;
        let rows = reader.done(rows)?;
        sent_times(&rows)
    }

    /// When messages were sent to the member on `channel` since `since`, oldest first.
    pub async fn send_history(
        &self,
        userid: &UserId,
        channel: ChannelName,
        since: UnixMillis,
    ) -> Result<Vec<UnixMillis>, StoreError> {
        // SQLite: in memory, without a query (see `sends.rs`); other instances send too on
        // PostgreSQL.
        if let Some(log) = &self.sends {
            return Ok(log.member(userid.as_str(), channel.as_str(), since));
        }
        let mut reader = self.readers.get().await?;
        let rows = sqlx::query(
            "SELECT sent_at FROM sends WHERE userid = $1 AND channel = $3 AND sent_at > $2 \
             ORDER BY sent_at",
        )
        .bind(userid.as_str())
        .bind(since)
        .bind(channel.as_str())
        .fetch_all(reader.conn())
        .await;
        let rows = reader.done(rows)?;
        sent_times(&rows)
    }
}

/// The `sent_at` of each row of a `sends` query.
fn sent_times<R: sqlx::Row>(rows: &[R]) -> Result<Vec<UnixMillis>, StoreError>
where
    for<'r> UnixMillis: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
{
    rows.iter()
        .map(|row| {
            row.try_get::<UnixMillis, _>("sent_at")
                .map_err(StoreError::from)
        })
        .collect()
}

/// See [`Store::shared_turn`]. Dropped without [`SharedTurn::release`] (an error, a panic),
/// its connection is closed rather than returned to the pool, which ends the session and so
/// the lock.
pub struct SharedTurn {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
    key: i64,
}

impl SharedTurn {
    /// The lock's key: the first 8 bytes of SHA-256 of the destination's name.
    fn key(channel: ChannelName) -> i64 {
        use sha2::Digest as _;
        let hash = sha2::Sha256::digest(format!("pushbot shared turn {channel}").as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash[..8]);
        i64::from_be_bytes(first)
    }

    /// Ends the turn: the next instance's lane may go.
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked =
                sqlx::query("SELECT count(*) AS n FROM (SELECT pg_advisory_unlock($1)) AS l")
                    .bind(self.key)
                    .execute(&mut *conn)
                    .await;
            if unlocked.is_err() {
                drop(conn.detach());
            }
        }
    }
}

impl Drop for SharedTurn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}
