//! The outbox: every accepted message, from acceptance until delivered, failed or
//! cancelled.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::writer::AttemptUpdate;
use super::{Attachment, Store, StoreError};
use crate::domain::{ChannelName, Format, Look, MessageId, PushToken, Route, UserId};
use crate::time::UnixMillis;

/// Idempotency keys are honoured this long.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    /// Waiting for `deliver_at` (the sender's `delay`/`at`, or held by quiet hours): in no
    /// lane, so it holds nothing up; the scheduler releases it to `Queued` when it is due.
    Scheduled,
    /// In its member's lane, to be delivered (or being delivered).
    Queued,
    Delivered,
    Failed,
    /// Cancelled by its sender before it went out (`DELETE /messages/{id}`): final.
    Cancelled,
    /// A group message's copy for a member who muted the group: never queued, in no
    /// lane, never sent — and visibly so (issue 29). Final.
    Muted,
    /// A group message's copy for a member who left the group (or was removed) before it
    /// went out: it will not be sent. Final.
    Left,
}

impl MessageStatus {
    /// Every status, in the order a message can go through them.
    pub const ALL: [MessageStatus; 7] = [
        Self::Scheduled,
        Self::Queued,
        Self::Delivered,
        Self::Failed,
        Self::Cancelled,
        Self::Muted,
        Self::Left,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Muted => "muted",
            Self::Left => "left",
        }
    }

    /// Whether nothing will happen to the message any more.
    pub fn is_final(self) -> bool {
        match self {
            Self::Delivered | Self::Failed | Self::Cancelled | Self::Muted | Self::Left => true,
            Self::Scheduled | Self::Queued => false,
        }
    }
}

impl FromStr for MessageStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown status {s:?}")))
    }
}

/// Why a scheduled message waits, when it is not the sender's `delay`/`at` (stored in
/// `messages.held`; NULL is the sender's schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Held {
    /// The member's quiet hours: due when they end.
    Quiet,
}

impl Held {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quiet => "quiet",
        }
    }

    /// The stored value; `None` for one this version does not know (written by a newer
    /// one), which is then treated as the sender's schedule.
    pub fn from_stored(stored: &str) -> Option<Self> {
        match stored {
            "quiet" => Some(Self::Quiet),
            _ => None,
        }
    }
}

/// One message in the outbox.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: MessageId,
    pub userid: UserId,
    pub title: Option<String>,
    pub content: Option<String>,
    pub status: MessageStatus,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub channel: Option<String>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub next_attempt_at: UnixMillis,
    pub deadline_at: UnixMillis,
    pub delivered_at: Option<UnixMillis>,
    /// Acceptance order (assigned when the row is committed; 0 before).
    pub seq: i64,
    /// The digest that carried it, when it was delivered as part of one.
    pub via: Option<String>,
    /// The sender's Idempotency-Key, if any.
    pub idempotency_key: Option<String>,
    /// The digest of what determined the message (see `Outbox::accept`), kept with a key
    /// so that the key reused for another message is refused; `None` before it was kept.
    pub idempotency_digest: Option<String>,
    /// The channels still to try, the one being tried first.
    pub route: Route,
    /// Try every channel of the route (`channel=all`), not only until one delivers.
    pub deliver_all: bool,
    /// E-mail goes here rather than to the member's bound address (verification mails).
    pub address_to: Option<String>,
    /// The content's syntax.
    pub format: Format,
    /// How the member wanted messages to look when this one was accepted.
    pub look: Look,
    /// The sender's link.
    pub url: Option<String>,
    /// The key of the message's page (`/m/{id}?k=…`).
    pub page_key: Option<String>,
    /// How many images and files it has (`message_media` rows; set when it is stored).
    /// Plain messages (0) never look for any.
    pub media_count: i64,
    /// How many of its parts its current channel (the route's first) has delivered, on a
    /// channel that sends attachments separately: the text, then each attachment. A retry
    /// goes on from there; 0 again when the message moves on to its next channel.
    pub parts_done: i64,
    /// When it is (or was) due, if it was scheduled or held rather than due at acceptance:
    /// a `Scheduled` message waits until then; a released one keeps it, for its history.
    pub deliver_at: Option<UnixMillis>,
    /// The sender marked it urgent (quiet hours let it through, unless `strict`).
    pub urgent: bool,
    /// Why a scheduled message waits, when not for the sender's `delay`/`at`.
    pub held: Option<Held>,
    /// The message this one sends again (resent from the console or the API).
    pub resent_from: Option<MessageId>,
    /// The group message (`group_sends.id`) this is one member's copy of.
    pub group_send: Option<MessageId>,
    /// What the sender asked for an acknowledgement, as accepted: written with the message
    /// (its `acks` row), not read back into it (see [`Store::ack_of`]).
    pub ack: Option<super::acks::AckAsk>,
}

/// One attempt in a message's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub at: UnixMillis,
    pub channel: StoredChannel,
    pub outcome: String,
    pub error: Option<String>,
}

/// A channel name read back from a row that only reports it (a message's history,
/// today's counts). Names are written from [`ChannelName`], so they parse; one that does
/// not (written by another version, or a destination's name past
/// [`DestName::MAX_NAMES`](crate::domain::DestName::MAX_NAMES) in this process) keeps
/// its stored text, so that the row is still shown as it was written rather than lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredChannel {
    Known(ChannelName),
    Unknown(String),
}

impl StoredChannel {
    pub fn parse(stored: String) -> Self {
        match stored.parse() {
            Ok(name) => Self::Known(name),
            Err(_) => Self::Unknown(stored),
        }
    }

    /// The name as stored.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Known(name) => name.as_str(),
            Self::Unknown(stored) => stored,
        }
    }
}

impl std::fmt::Display for StoredChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for StoredChannel {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl PartialEq<ChannelName> for StoredChannel {
    fn eq(&self, other: &ChannelName) -> bool {
        *self == Self::Known(*other)
    }
}

/// Today's outcomes on one channel for one member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelCounts {
    pub delivered: i64,
    pub failed: i64,
}

impl Message {
    /// A message just accepted: queued, due now, retried until `deadline_at`.
    pub fn new_queued(
        id: MessageId,
        userid: UserId,
        title: Option<String>,
        content: Option<String>,
        now: UnixMillis,
        deadline_at: UnixMillis,
    ) -> Self {
        Self {
            id,
            userid,
            title,
            content,
            status: MessageStatus::Queued,
            attempts: 0,
            last_error: None,
            channel: None,
            created_at: now,
            updated_at: now,
            next_attempt_at: now,
            deadline_at,
            delivered_at: None,
            seq: 0,
            via: None,
            idempotency_key: None,
            idempotency_digest: None,
            route: Route::new(vec![ChannelName::WeCom])
                .unwrap_or_else(|| unreachable!("one channel is a route")),
            deliver_all: false,
            address_to: None,
            format: Format::Text,
            look: Look::Text,
            url: None,
            page_key: None,
            media_count: 0,
            parts_done: 0,
            deliver_at: None,
            urgent: false,
            held: None,
            resent_from: None,
            group_send: None,
            ack: None,
        }
    }

    pub(super) fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let status: String = row.try_get("status")?;
        Ok(Self {
            id: MessageId::from_stored(row.try_get("id")?),
            userid: UserId::new(&row.try_get::<String, _>("userid")?),
            title: row.try_get("title")?,
            content: row.try_get("content")?,
            status: status.parse()?,
            attempts: row.try_get("attempts")?,
            last_error: row.try_get("last_error")?,
            channel: row.try_get("channel")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
            deadline_at: row.try_get("deadline_at")?,
            delivered_at: row.try_get("delivered_at")?,
            seq: row.try_get("seq")?,
            via: row.try_get("via")?,
            idempotency_key: row.try_get("idempotency_key")?,
            idempotency_digest: row.try_get("idempotency_digest")?,
            route: Route::parse(&row.try_get::<String, _>("route")?)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            deliver_all: row.try_get::<i64, _>("deliver_all")? != 0,
            address_to: row.try_get("address_to")?,
            format: Format::from_stored(&row.try_get::<String, _>("format")?),
            look: Look::from_stored(&row.try_get::<String, _>("look")?).unwrap_or_default(),
            url: row.try_get("url")?,
            page_key: row.try_get("page_key")?,
            media_count: row.try_get("media_count")?,
            parts_done: row.try_get("parts_done")?,
            deliver_at: row.try_get("deliver_at")?,
            urgent: row.try_get::<i64, _>("urgent")? != 0,
            held: row
                .try_get::<Option<String>, _>("held")?
                .as_deref()
                .and_then(Held::from_stored),
            resent_from: row
                .try_get::<Option<String>, _>("resent_from")?
                .map(MessageId::from_stored),
            group_send: row
                .try_get::<Option<String>, _>("group_send")?
                .map(MessageId::from_stored),
            ack: None,
        })
    }
}

/// A digest: one WeCom message that carried several messages (`Message::via`).
#[derive(Debug, Clone)]
pub struct DigestRecord {
    /// How many messages it carried.
    pub carried: i64,
    /// When it was sent.
    pub created_at: UnixMillis,
    /// The key of its page; `None` for digests sent before digests had pages.
    pub page_key: Option<String>,
}

pub(super) const MESSAGE_COLUMNS: &str = "id, userid, title, content, status, attempts, \
     last_error, channel, created_at, updated_at, next_attempt_at, deadline_at, delivered_at, \
     seq, via, idempotency_key, route, deliver_all, address_to, format, look, url, page_key, \
     idempotency_digest, media_count, parts_done, deliver_at, urgent, held, resent_from, \
     group_send";

impl Store {
    /// Stores a new message durably (and opens its member's lane); returns once it is
    /// committed to disk. A repeated idempotency key fails with
    /// [`StoreError::DuplicateKey`].
    pub async fn insert_message(&self, message: Message) -> Result<(), StoreError> {
        self.writer.insert(message, Vec::new(), None).await
    }

    /// As [`Store::insert_message`], with the message's images and files (their blobs
    /// stored already, see [`Store::put_blob`]) in the same transaction: the message is
    /// never stored without them, nor they without it.
    pub async fn insert_message_with(
        &self,
        message: Message,
        attachments: Vec<Attachment>,
    ) -> Result<(), StoreError> {
        self.writer.insert(message, attachments, None).await
    }

    /// As [`Store::insert_message_with`], for a sender found by `token` in this process's
    /// memory (see [`Store::sender_by_token`]): stored only if `token` is still the
    /// member's when the insert commits, else [`StoreError::TokenRevoked`] and nothing is
    /// stored — another instance may have rotated it since.
    pub async fn insert_message_verified(
        &self,
        message: Message,
        attachments: Vec<Attachment>,
        token: Option<PushToken>,
    ) -> Result<(), StoreError> {
        let kept = token.clone();
        let result = self.writer.insert(message, attachments, token).await;
        if let (Err(StoreError::TokenRevoked), Some(token)) = (&result, kept) {
            // Rotated elsewhere: the next request with it reads the database (and is
            // refused there), not the writer.
            self.forget_token(&token);
        }
        result
    }

    /// Records the outcome of a delivery attempt; returns once it is committed. If it is
    /// never recorded (crash, or the error is not retried) the message stays `queued` and is
    /// delivered again after restart (at least once).
    pub async fn record_attempt(&self, update: AttemptUpdate) -> Result<(), StoreError> {
        self.writer.update(update).await
    }

    pub async fn message(&self, id: &str) -> Result<Option<Message>, StoreError> {
        if !storable(id) {
            return Ok(None);
        }
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Message::from_row).transpose()
    }

    /// The digest with this id, as its page needs it.
    pub async fn digest(&self, id: &str) -> Result<Option<DigestRecord>, StoreError> {
        if !storable(id) {
            return Ok(None);
        }
        let row = sqlx::query("SELECT carried, created_at, page_key FROM digests WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(DigestRecord {
                carried: row.try_get("carried")?,
                created_at: row.try_get("created_at")?,
                page_key: row.try_get("page_key")?,
            })
        })
        .transpose()
    }

    /// The messages a digest carried, in acceptance order (those still kept).
    pub async fn carried_by(&self, digest_id: &str) -> Result<Vec<Message>, StoreError> {
        if !storable(digest_id) {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE via = $1 ORDER BY seq");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(digest_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Message::from_row).collect()
    }

    /// Deletes up to `batch` delivered, failed or cancelled messages accepted before
    /// `before_ms`, with their attempt history and attachments (their blobs then go with the
    /// orphans, see [`Store::purge_orphan_blobs`]), and digests older than that; returns how
    /// many messages went. Queued and scheduled messages stay, whatever their age: nothing
    /// accepted is dropped unfinished (a message scheduled further out than the retention
    /// is still delivered). A group message's row goes with its last copy.
    pub async fn purge_messages(
        &self,
        before_ms: UnixMillis,
        batch: usize,
    ) -> Result<u64, StoreError> {
        // Ids are UUIDv7 (lower-case hex): in text order by creation time, so the primary key
        // finds the old ones without an index on created_at.
        let old = format!(
            "SELECT id FROM messages WHERE id < $2 AND created_at < $1 \
             AND status NOT IN ('queued', 'scheduled') \
             ORDER BY id LIMIT {batch}"
        );
        let first_id_at = MessageId::first_at(before_ms);
        let mut tx = self.pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM attempts WHERE message_id IN ({old})"
        )))
        .bind(before_ms)
        .bind(first_id_at.as_str())
        .execute(&mut *tx)
        .await?;
        // Their images and files: the blobs, no longer named, go with the orphans.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM message_media WHERE message_id IN ({old})"
        )))
        .bind(before_ms)
        .bind(first_id_at.as_str())
        .execute(&mut *tx)
        .await?;
        let purged = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM messages WHERE id IN ({old})"
        )))
        .bind(before_ms)
        .bind(first_id_at.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM digests WHERE created_at < $1")
            .bind(before_ms)
            .execute(&mut *tx)
            .await?;
        // Acknowledgements of messages gone.
        sqlx::query(
            "DELETE FROM acks WHERE created_at < $1 AND NOT EXISTS \
             (SELECT 1 FROM messages m WHERE m.id = acks.message_id)",
        )
        .bind(before_ms)
        .execute(&mut *tx)
        .await?;
        // Group messages whose copies are all gone (a copy still queued keeps its row, and
        // so do copies not written yet: see `fanout`).
        sqlx::query(
            "DELETE FROM group_sends WHERE created_at < $1 AND plan IS NULL AND NOT EXISTS \
             (SELECT 1 FROM messages m WHERE m.group_send = group_sends.id)",
        )
        .bind(before_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(purged)
    }

    /// The member's message sent with this idempotency key within the last 24 hours.
    pub async fn message_by_idempotency_key(
        &self,
        userid: &UserId,
        key: &str,
        now: UnixMillis,
    ) -> Result<Option<Message>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE userid = $1 AND idempotency_key = $2 AND created_at > $3"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(userid.as_str())
            .bind(key)
            .bind(now - IDEMPOTENCY_WINDOW)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Message::from_row).transpose()
    }

    /// Forgets idempotency keys older than the window, so that they may be used again.
    pub async fn expire_idempotency_keys(&self, now: UnixMillis) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE messages SET idempotency_key = NULL \
             WHERE idempotency_key IS NOT NULL AND created_at <= $1",
        )
        .bind(now - IDEMPOTENCY_WINDOW)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// A member's messages, newest first, optionally only one status and only older than
    /// the message `before` (ids are UUIDv7, so their text order is their time order).
    pub async fn messages_of(
        &self,
        userid: &UserId,
        status: Option<MessageStatus>,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Message>, StoreError> {
        // Only the filters given become SQL, so no parameter needs a NULL type (PostgreSQL
        // cannot infer one for `$n IS NULL`).
        let mut sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE userid = $1");
        let mut n = 1;
        if status.is_some() {
            n += 1;
            sql.push_str(&format!(" AND status = ${n}"));
        }
        if before.is_some() {
            n += 1;
            sql.push_str(&format!(" AND id < ${n}"));
        }
        // LIMIT as a literal (an integer): a bound LIMIT makes SQLite re-prepare.
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit.max(0)));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(userid.as_str());
        if let Some(status) = status {
            query = query.bind(status.as_str());
        }
        if let Some(before) = before {
            query = query.bind(before);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(Message::from_row).collect()
    }

    /// Every attempt recorded for the message, oldest first.
    pub async fn attempts_of(&self, id: &MessageId) -> Result<Vec<AttemptRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, channel, outcome, error FROM attempts WHERE message_id = $1 \
             ORDER BY at, rowid",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AttemptRecord {
                    at: row.try_get("at")?,
                    channel: StoredChannel::parse(row.try_get("channel")?),
                    outcome: row.try_get("outcome")?,
                    error: row.try_get("error")?,
                })
            })
            .collect()
    }

    /// Per channel, the member's messages accepted since `since` that it delivered, and
    /// the attempts on it that gave up (a channel given up on, then maybe another
    /// delivered). Ids are UUIDv7, so `since` bounds them through the member's index.
    pub async fn channel_counts_since(
        &self,
        userid: &UserId,
        since: UnixMillis,
    ) -> Result<Vec<(StoredChannel, ChannelCounts)>, StoreError> {
        let first_id = uuid_floor(since);
        let delivered = sqlx::query(
            "SELECT channel, count(*) AS n FROM messages \
             WHERE userid = $1 AND id >= $2 AND status = 'delivered' GROUP BY channel",
        )
        .bind(userid.as_str())
        .bind(&first_id)
        .fetch_all(&self.pool)
        .await?;
        let failed = sqlx::query(
            "SELECT a.channel AS channel, count(*) AS n FROM attempts a \
             JOIN messages m ON m.id = a.message_id \
             WHERE m.userid = $1 AND m.id >= $2 AND a.outcome = 'failed' GROUP BY a.channel",
        )
        .bind(userid.as_str())
        .bind(&first_id)
        .fetch_all(&self.pool)
        .await?;
        let mut counts: std::collections::BTreeMap<String, ChannelCounts> = Default::default();
        for row in &delivered {
            let list: Option<String> = row.try_get("channel")?;
            let n: i64 = row.try_get("n")?;
            // A message delivered on several channels (`all`) counts on each.
            for name in list
                .as_deref()
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
            {
                counts.entry(name.to_owned()).or_default().delivered += n;
            }
        }
        for row in &failed {
            let name: String = row.try_get("channel")?;
            let n: i64 = row.try_get("n")?;
            counts.entry(name).or_default().failed += n;
        }
        // In the order of the names as stored.
        Ok(counts
            .into_iter()
            .map(|(name, counts)| (StoredChannel::parse(name), counts))
            .collect())
    }

    /// How many messages wait for delivery (for log lines; a count over an index).
    pub async fn queued_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT count(*) AS n FROM messages WHERE status = 'queued'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }
}

/// Whether text can be in the database at all: PostgreSQL refuses U+0000 in text (an
/// error, not "no row"), so nothing stored holds one and a lookup by such text finds nothing.
pub fn storable(text: &str) -> bool {
    !text.contains('\0')
}

/// The smallest UUIDv7 text of a message accepted at `ms` or later (its first 48 bits are
/// the unix time in milliseconds).
fn uuid_floor(at: UnixMillis) -> String {
    let ms = u64::try_from(at.as_millis()).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xFFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_floor_orders_with_generated_ids() {
        let before = UnixMillis::now();
        let id = MessageId::generate();
        let after = UnixMillis::now() + Duration::from_millis(1);
        assert!(uuid_floor(before).as_str() <= id.as_str());
        assert!(uuid_floor(after).as_str() > id.as_str());
    }
}
