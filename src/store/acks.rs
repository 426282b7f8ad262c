//! Acknowledgements (issue 30): a message sent with `ack=true` (or `escalate=…`) has an
//! `acks` row, written by the writer in the transaction that accepts the message. An
//! acknowledgement sets `acked_at`, `acked_by` and `via` once; the escalation step, when
//! its time comes with no acknowledgement, sends the message again on the member's next
//! channels and records the message it sent (`escalated_as`), once — see
//! `delivery::escalate`.

use std::time::Duration;

use sqlx::Row as _;

use super::{Store, StoreError, storable};
use crate::domain::{MessageId, UserId};
use crate::time::UnixMillis;

/// What a sender asked for: an acknowledgement, and (with `escalate_after`) the escalation
/// step this long after acceptance if nobody acknowledges by then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckAsk {
    pub escalate_after: Option<Duration>,
}

/// A message's `acks` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRecord {
    pub message_id: MessageId,
    pub userid: UserId,
    pub created_at: UnixMillis,
    /// When the escalation step is (or was) due; `None`: acknowledgement only.
    pub escalate_at: Option<UnixMillis>,
    /// Escalation steps taken (0 or 1).
    pub step: i64,
    /// The message the escalation step sent (none: there was no other channel to try).
    pub escalated_as: Option<MessageId>,
    pub escalated_at: Option<UnixMillis>,
    pub acked_at: Option<UnixMillis>,
    pub acked_by: Option<String>,
    /// How it was acknowledged: `api`, `chat`, `page` or `card`.
    pub via: Option<String>,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// Acknowledged now.
    Acked(AckRecord),
    /// Acknowledged before (by whoever and however the record says): nothing changed.
    Already(AckRecord),
    /// The message does not ask for an acknowledgement (or is unknown).
    NotAsked,
}

const ACK_COLUMNS: &str = "message_id, userid, created_at, escalate_at, step, escalated_as, \
     escalated_at, acked_at, acked_by, via";

fn from_row(row: &sqlx::any::AnyRow) -> Result<AckRecord, StoreError> {
    Ok(AckRecord {
        message_id: MessageId::from_stored(row.try_get("message_id")?),
        userid: UserId::new(&row.try_get::<String, _>("userid")?),
        created_at: row.try_get("created_at")?,
        escalate_at: row.try_get("escalate_at")?,
        step: row.try_get("step")?,
        escalated_as: row
            .try_get::<Option<String>, _>("escalated_as")?
            .map(MessageId::from_stored),
        escalated_at: row.try_get("escalated_at")?,
        acked_at: row.try_get("acked_at")?,
        acked_by: row.try_get("acked_by")?,
        via: row.try_get("via")?,
    })
}

impl Store {
    /// The acknowledgement record of message `id`: its own, or — for a message an
    /// escalation step sent — the one of the message it escalated.
    pub async fn ack_of(&self, id: &MessageId) -> Result<Option<AckRecord>, StoreError> {
        if !storable(id.as_str()) {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {ACK_COLUMNS} FROM acks WHERE message_id = $1 OR escalated_as = $1 \
             ORDER BY created_at LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Acknowledges message `id` (or the message an escalation sent as `id`) for `by`,
    /// `via` a way (`api`, `chat`, …), once: a second acknowledgement changes nothing. The
    /// pending escalation step, if any, no longer runs (it checks `acked_at`).
    pub async fn acknowledge(
        &self,
        id: &MessageId,
        by: &UserId,
        via: &str,
        now: UnixMillis,
    ) -> Result<AckOutcome, StoreError> {
        let Some(record) = self.ack_of(id).await? else {
            return Ok(AckOutcome::NotAsked);
        };
        if record.acked_at.is_some() {
            return Ok(AckOutcome::Already(record));
        }
        let changed = sqlx::query(
            "UPDATE acks SET acked_at = $2, acked_by = $3, via = $4 \
             WHERE message_id = $1 AND acked_at IS NULL",
        )
        .bind(record.message_id.as_str())
        .bind(now)
        .bind(by.as_str())
        .bind(via)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let now_record = self
            .ack_of(&record.message_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("an acknowledgement record vanished".into()))?;
        Ok(if changed == 1 {
            AckOutcome::Acked(now_record)
        } else {
            AckOutcome::Already(now_record)
        })
    }

    /// The member's most recent message that asks for an acknowledgement and has none.
    pub async fn latest_unacked(&self, userid: &UserId) -> Result<Option<MessageId>, StoreError> {
        let row = sqlx::query(
            "SELECT message_id FROM acks WHERE userid = $1 AND acked_at IS NULL \
             ORDER BY created_at DESC, message_id DESC LIMIT 1",
        )
        .bind(userid.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|r| r.try_get::<String, _>("message_id"))
            .transpose()?
            .map(MessageId::from_stored))
    }

    /// Up to `limit` messages whose escalation step is due by `now` and not taken, with no
    /// acknowledgement, oldest first.
    pub async fn due_escalations(
        &self,
        now: UnixMillis,
        limit: i64,
    ) -> Result<Vec<AckRecord>, StoreError> {
        let sql = format!(
            "SELECT {ACK_COLUMNS} FROM acks WHERE acked_at IS NULL AND step = 0 \
             AND escalate_at IS NOT NULL AND escalate_at <= $1 ORDER BY escalate_at LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// When the next escalation step not taken is due.
    pub async fn next_escalation(&self) -> Result<Option<UnixMillis>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(escalate_at) AS due FROM acks WHERE acked_at IS NULL AND step = 0 \
             AND escalate_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<UnixMillis>, _>("due")?)
    }

    /// Records the escalation step of message `id` as taken (`sent`: the message it sent;
    /// none when there was no channel to send on). `false` when it was taken already (by
    /// another instance): each step is recorded once.
    pub async fn escalated(
        &self,
        id: &MessageId,
        sent: Option<&MessageId>,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE acks SET step = 1, escalated_as = $2, escalated_at = $3 \
             WHERE message_id = $1 AND step = 0",
        )
        .bind(id.as_str())
        .bind(sent.map(MessageId::as_str))
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::tests::message;

    async fn asking(store: &Store, id: &str, user: &str, escalate: Option<u64>) {
        let mut m = message(id, user);
        m.ack = Some(AckAsk {
            escalate_after: escalate.map(Duration::from_millis),
        });
        store.insert_message(m).await.unwrap();
    }

    /// The row comes with the message; an acknowledgement is recorded once; the
    /// escalation step is due only without one, and is recorded once.
    async fn acknowledgements_and_steps_are_recorded_once(store: &Store) {
        let alice = UserId::new("alice");
        asking(store, "a1", "alice", Some(0)).await;
        asking(store, "a2", "alice", None).await;
        store
            .insert_message(message("plain", "alice"))
            .await
            .unwrap();
        let a1 = MessageId::from_stored("a1".into());
        let a2 = MessageId::from_stored("a2".into());
        let plain = MessageId::from_stored("plain".into());
        assert!(store.ack_of(&plain).await.unwrap().is_none());
        assert_eq!(
            store.latest_unacked(&alice).await.unwrap(),
            Some(a2.clone())
        );

        let now = UnixMillis::now() + Duration::from_secs(1);
        let due = store.due_escalations(now, 10).await.unwrap();
        assert_eq!(due.len(), 1, "only a1 escalates");
        assert_eq!(due[0].message_id, a1);
        let sent = MessageId::from_stored("e1".into());
        assert!(store.escalated(&a1, Some(&sent), now).await.unwrap());
        assert!(!store.escalated(&a1, None, now).await.unwrap(), "once");
        assert!(store.due_escalations(now, 10).await.unwrap().is_empty());
        // The escalation's id finds the record of the message it escalated.
        let by_sent = store.ack_of(&sent).await.unwrap().unwrap();
        assert_eq!((by_sent.message_id, by_sent.step), (a1.clone(), 1));

        let bob = UserId::new("bob");
        let AckOutcome::Acked(first) = store.acknowledge(&sent, &bob, "api", now).await.unwrap()
        else {
            panic!("acknowledged");
        };
        assert_eq!(first.acked_by.as_deref(), Some("bob"));
        let later = now + Duration::from_secs(5);
        let AckOutcome::Already(again) =
            store.acknowledge(&a1, &alice, "chat", later).await.unwrap()
        else {
            panic!("already acknowledged");
        };
        assert_eq!(
            (again.acked_at, again.via.as_deref()),
            (Some(now), Some("api"))
        );
        assert_eq!(
            store.acknowledge(&plain, &alice, "api", now).await.unwrap(),
            AckOutcome::NotAsked
        );
        assert_eq!(store.latest_unacked(&alice).await.unwrap(), Some(a2));
    }

    on_both_engines!(acknowledgements_and_steps_are_recorded_once);

    /// Whatever id a request names (the route's path, any bytes, NUL included): an answer —
    /// nothing asked — never an error, and nothing written; on both engines (PostgreSQL
    /// refuses NUL in text, so the id is checked before any query).
    fn any_id_is_answered_not_asked(runtime: &tokio::runtime::Runtime, store: &Store) {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        let alice = UserId::new("alice");
        let mut runner = TestRunner::new(Config::with_cases(256));
        runner
            .run(
                // NUL, which PostgreSQL refuses in text, in half of the cases.
                &(any::<String>(), any::<bool>())
                    .prop_map(|(s, nul)| if nul { format!("{s}\0{s}") } else { s }),
                |id| {
                    let id = MessageId::from_stored(id);
                    let now = UnixMillis::now();
                    let acked = runtime.block_on(store.acknowledge(&id, &alice, "api", now));
                    prop_assert!(matches!(acked, Ok(AckOutcome::NotAsked)), "{acked:?}");
                    let record = runtime.block_on(store.ack_of(&id));
                    prop_assert!(matches!(record, Ok(None)), "{record:?}");
                    Ok(())
                },
            )
            .unwrap();
        runtime.block_on(store.close());
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn any_id_is_answered_not_asked_on_sqlite() {
        let runtime = runtime();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = runtime.block_on(Store::connect(&url)).unwrap();
        any_id_is_answered_not_asked(&runtime, &store);
    }

    #[test]
    fn any_id_is_answered_not_asked_on_postgres() {
        let runtime = runtime();
        let schema = runtime.block_on(crate::store::postgres::TestSchema::new());
        let store = runtime.block_on(Store::connect(&schema.url())).unwrap();
        any_id_is_answered_not_asked(&runtime, &store);
        runtime.block_on(async move { drop(schema) });
    }
}
