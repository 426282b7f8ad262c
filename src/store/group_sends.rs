//! Group messages (issue 29): one `group_sends` row per message sent with a group's token
//! (the id its sender gets back), and one ordinary message per recipient — a *copy* in
//! that member's own lane, naming the group message in `messages.group_send`.
//!
//! The row and every copy (with their images and files and their lanes) are committed by
//! the group-commit writer in one transaction ([`Store::insert_group_send`]): a group
//! message is stored with all its recipients or not at all, on both engines.

use std::collections::HashMap;

use sqlx::Row as _;

use super::messages::{IDEMPOTENCY_WINDOW, MESSAGE_COLUMNS};
use super::writer::GroupWrite;
use super::{Attachment, Message, Store, StoreError, storable};
use crate::domain::MessageId;
use crate::time::UnixMillis;

/// One group message, as its `group_sends` row keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSend {
    /// What the sender got back (a [`MessageId`], so it sorts by time like messages).
    pub id: MessageId,
    pub group_id: String,
    /// The group's name when it was sent (a rename later does not rewrite history).
    pub group_name: String,
    pub created_at: UnixMillis,
    /// Members it was taken for at acceptance: one copy each (muted ones included).
    pub recipients: i64,
    /// The sender's `Idempotency-Key`, per group token, forgotten after 24 h.
    pub idempotency_key: Option<String>,
    /// As `messages.idempotency_digest`: the same key with another request is refused.
    pub idempotency_digest: Option<String>,
}

const GROUP_SEND_COLUMNS: &str =
    "id, group_id, group_name, created_at, recipients, idempotency_key, idempotency_digest";

fn from_row(row: &sqlx::any::AnyRow) -> Result<GroupSend, StoreError> {
    Ok(GroupSend {
        id: MessageId::from_stored(row.try_get("id")?),
        group_id: row.try_get("group_id")?,
        group_name: row.try_get("group_name")?,
        created_at: row.try_get("created_at")?,
        recipients: row.try_get("recipients")?,
        idempotency_key: row.try_get("idempotency_key")?,
        idempotency_digest: row.try_get("idempotency_digest")?,
    })
}

impl Store {
    /// Stores a group message: its row and every copy (each with its images and files,
    /// rows naming the same stored blobs, and its lane when it is queued), in one
    /// transaction; returns once that is committed. A repeated idempotency key for the
    /// group fails with [`StoreError::DuplicateKey`].
    pub async fn insert_group_send(
        &self,
        send: GroupSend,
        copies: Vec<(Message, Vec<Attachment>)>,
    ) -> Result<(), StoreError> {
        // Encoded here, not on the writer's thread.
        let plan = super::fanout::encode(&copies);
        self.writer
            .insert_group(GroupWrite { send, copies, plan })
            .await
    }

    /// Hands the writer the planned group messages whose copies are not all written (see
    /// [`super::fanout`]): all of them at `start`, else those accepted before `before` —
    /// left by an instance that stopped; a live one finishes its own within a second.
    /// Answers how many there were.
    pub async fn resume_fanouts(&self, before: Option<UnixMillis>) -> Result<usize, StoreError> {
        let rows = sqlx::query(
            "SELECT id, group_id, plan, expanded FROM group_sends \
             WHERE plan IS NOT NULL AND created_at < $1 ORDER BY created_at, id",
        )
        .bind(before.unwrap_or(UnixMillis::from_millis(i64::MAX)))
        .fetch_all(&self.pool)
        .await?;
        let mut fanouts = Vec::with_capacity(rows.len());
        for row in &rows {
            let id = MessageId::from_stored(row.try_get("id")?);
            let plan: String = row.try_get("plan")?;
            let copies = match super::fanout::decode(&id, &plan) {
                Ok(copies) => copies,
                Err(err) => {
                    // Written by this code, so a bug or a hand edit: said, not retried.
                    tracing::error!(id = %id, error = %err, "cannot read a group message's plan: its unwritten copies are not sent");
                    continue;
                }
            };
            let next = usize::try_from(row.try_get::<i64, _>("expanded")?).unwrap_or(0);
            fanouts.push(super::fanout::Fanout::new(
                id,
                row.try_get("group_id")?,
                copies,
                next,
            ));
        }
        let found = fanouts.len();
        self.writer.resume(fanouts)?;
        Ok(found)
    }

    /// The group message with this id.
    pub async fn group_send(&self, id: &str) -> Result<Option<GroupSend>, StoreError> {
        if !storable(id) {
            return Ok(None);
        }
        let sql = format!("SELECT {GROUP_SEND_COLUMNS} FROM group_sends WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The group's message sent with this idempotency key within the last 24 hours.
    pub async fn group_send_by_key(
        &self,
        group_id: &str,
        key: &str,
        now: UnixMillis,
    ) -> Result<Option<GroupSend>, StoreError> {
        let sql = format!(
            "SELECT {GROUP_SEND_COLUMNS} FROM group_sends \
             WHERE group_id = $1 AND idempotency_key = $2 AND created_at > $3"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(group_id)
            .bind(key)
            .bind(now - IDEMPOTENCY_WINDOW)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Forgets group idempotency keys older than the window, so that they may be used
    /// again (as [`Store::expire_idempotency_keys`] does for members' keys).
    pub async fn expire_group_idempotency_keys(&self, now: UnixMillis) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE group_sends SET idempotency_key = NULL \
             WHERE idempotency_key IS NOT NULL AND created_at <= $1",
        )
        .bind(now - IDEMPOTENCY_WINDOW)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// The current send token of the group with this id, if the group still exists.
    pub async fn group_token_of(
        &self,
        group_id: &str,
    ) -> Result<Option<crate::domain::PushToken>, StoreError> {
        let row = sqlx::query("SELECT token FROM groups WHERE id = $1")
            .bind(group_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|row| row.try_get::<String, _>("token"))
            .transpose()?
            .map(crate::domain::PushToken::new))
    }

    /// The copies of a group message, in acceptance order (the group's join order) —
    /// those of a planned one not written yet (see [`super::fanout`]) as planned, after
    /// the others.
    pub async fn group_copies(&self, id: &MessageId) -> Result<Vec<Message>, StoreError> {
        // The plan first: a chunk written between the two reads is then among the rows.
        let planned = sqlx::query("SELECT plan FROM group_sends WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let sql =
            format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE group_send = $1 ORDER BY seq");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await?;
        let mut copies = rows
            .iter()
            .map(Message::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(plan) = planned
            .map(|row| row.try_get::<Option<String>, _>("plan"))
            .transpose()?
            .flatten()
        {
            let written: std::collections::HashSet<String> =
                copies.iter().map(|m| m.id.as_str().to_owned()).collect();
            copies.extend(
                super::fanout::decode(id, &plan)?
                    .into_iter()
                    .filter(|m| !written.contains(m.id.as_str())),
            );
        }
        Ok(copies)
    }

    /// The group names (as when sent) of these group messages, by id: what a member's
    /// listing shows beside their copies. One read for a page of messages.
    pub async fn group_names(
        &self,
        ids: &[&MessageId],
    ) -> Result<HashMap<MessageId, String>, StoreError> {
        let mut names = HashMap::new();
        let mut ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(100) {
            let params: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, group_name FROM group_sends WHERE id IN ({})",
                params.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&self.pool).await? {
                names.insert(
                    MessageId::from_stored(row.try_get("id")?),
                    row.try_get("group_name")?,
                );
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::Row as _;

    use super::*;
    use crate::domain::UserId;
    use crate::store::writer::LeaveOutcome;
    use crate::store::{MediaKind, MessageStatus};

    fn copy(send: &MessageId, userid: &str, status: MessageStatus) -> Message {
        let now = UnixMillis::now();
        let mut m = Message::new_queued(
            MessageId::generate(),
            UserId::new(userid),
            Some("to the group".into()),
            None,
            now,
            now + Duration::from_secs(60),
        );
        m.status = status;
        m.group_send = Some(send.clone());
        m
    }

    fn send(group_id: &str, recipients: i64, key: Option<&str>) -> GroupSend {
        GroupSend {
            id: MessageId::generate(),
            group_id: group_id.to_owned(),
            group_name: "ops".to_owned(),
            created_at: UnixMillis::now(),
            recipients,
            idempotency_key: key.map(str::to_owned),
            idempotency_digest: key.map(|_| "d1".to_owned()),
        }
    }

    /// The group `id` with these members (in this join order), as the writer checks a
    /// send's copies against when it commits them.
    async fn seat(store: &Store, id: &str, members: &[&str]) {
        sqlx::query(
            "INSERT INTO groups (id, name, token, token_created_at, source, created_at) \
             VALUES ($1, $1, $2, 0, 'chat', 0) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(format!("token-{id}"))
        .execute(&store.pool)
        .await
        .unwrap();
        for (i, member) in members.iter().enumerate() {
            sqlx::query(
                "INSERT INTO group_members (group_id, userid, owner, joined_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(*member)
            .bind(i64::from(i == 0))
            .bind(i64::try_from(i).unwrap())
            .execute(&store.pool)
            .await
            .unwrap();
        }
    }

    /// Each copy's member and status, in acceptance order.
    fn by_member(copies: &[Message]) -> Vec<(&str, MessageStatus)> {
        copies
            .iter()
            .map(|m| (m.userid.as_str(), m.status))
            .collect()
    }

    async fn count(store: &Store, sql: &str) -> i64 {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&store.pool)
            .await
            .unwrap()
            .try_get::<i64, _>(0)
            .unwrap()
    }

    /// The parent row, every copy (queued ones with their lanes, a muted one without) and
    /// each copy's attachment rows naming the one blob: one commit.
    async fn a_group_message_commits_with_every_copy_and_lane(store: &Store) {
        let blob = store
            .put_blob(
                futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(vec![
                    7u8;
                    1000
                ]))]),
                crate::store::BlobLimits {
                    max_bytes: 1 << 20,
                    total_bytes: 1 << 30,
                },
                |_| "application/octet-stream",
            )
            .await
            .unwrap();
        seat(store, "g1", &["alice", "bob", "carol"]).await;
        let parent = send("g1", 3, None);
        let file = Attachment {
            blob_id: blob.id.clone(),
            filename: Some("log.txt".into()),
            kind: MediaKind::File,
        };
        let copies = vec![
            (
                copy(&parent.id, "alice", MessageStatus::Queued),
                vec![file.clone()],
            ),
            (
                copy(&parent.id, "bob", MessageStatus::Muted),
                vec![file.clone()],
            ),
            (copy(&parent.id, "carol", MessageStatus::Queued), vec![file]),
        ];
        let ids: Vec<MessageId> = copies.iter().map(|(m, _)| m.id.clone()).collect();
        store
            .insert_group_send(parent.clone(), copies)
            .await
            .unwrap();
        assert_eq!(
            store.group_send(parent.id.as_str()).await.unwrap(),
            Some(parent.clone())
        );
        let stored = store.group_copies(&parent.id).await.unwrap();
        let seen = by_member(&stored);
        assert_eq!(
            seen,
            [
                ("alice", MessageStatus::Queued),
                ("bob", MessageStatus::Muted),
                ("carol", MessageStatus::Queued),
            ],
            "every copy, in acceptance order"
        );
        assert!(stored.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(stored.iter().all(|m| m.media_count == 1));
        assert_eq!(
            count(
                store,
                "SELECT count(*) FROM lanes WHERE userid IN ('alice', 'carol')"
            )
            .await,
            2,
            "the queued copies' lanes"
        );
        assert_eq!(
            count(store, "SELECT count(*) FROM lanes WHERE userid = 'bob'").await,
            0,
            "a muted copy opens no lane"
        );
        for id in &ids {
            assert_eq!(store.attachments_of(id).await.unwrap().len(), 1);
        }
        assert_eq!(
            count(store, "SELECT count(DISTINCT blob_id) FROM message_media").await,
            1,
            "one blob for every copy"
        );
        // The blob is not an orphan while any copy names it.
        assert_eq!(
            store
                .purge_orphan_blobs(UnixMillis::now() + Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
        let names = store.group_names(&[&parent.id]).await.unwrap();
        assert_eq!(names.get(&parent.id).map(String::as_str), Some("ops"));
    }

    /// The idempotency index is per group: the same key again for the group is a
    /// duplicate (and nothing of the second message is stored), for another group it is not.
    async fn a_group_idempotency_key_is_the_groups_own(store: &Store) {
        seat(store, "g1", &["alice"]).await;
        seat(store, "g2", &["alice"]).await;
        let first = send("g1", 1, Some("k"));
        store
            .insert_group_send(
                first.clone(),
                vec![(copy(&first.id, "alice", MessageStatus::Queued), vec![])],
            )
            .await
            .unwrap();
        let again = send("g1", 1, Some("k"));
        let err = store
            .insert_group_send(
                again.clone(),
                vec![(copy(&again.id, "alice", MessageStatus::Queued), vec![])],
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::DuplicateKey), "{err:?}");
        assert!(store.group_copies(&again.id).await.unwrap().is_empty());
        let other = send("g2", 1, Some("k"));
        store
            .insert_group_send(
                other,
                vec![(copy(&again.id, "alice", MessageStatus::Queued), vec![])],
            )
            .await
            .unwrap();
        let found = store
            .group_send_by_key("g1", "k", UnixMillis::now())
            .await
            .unwrap();
        assert_eq!(found.map(|s| s.id), Some(first.id));
    }

    /// Leaving skips the member's copies of that group's messages that nothing of went
    /// out; other members', other groups', delivered and partly sent copies stay.
    async fn leaving_skips_only_the_members_unsent_copies_of_that_group(store: &Store) {
        seat(store, "ops", &["alice", "bob"]).await;
        seat(store, "dev", &["alice"]).await;
        let ops = send("ops", 2, None);
        let mut partly = copy(&ops.id, "alice", MessageStatus::Queued);
        partly.parts_done = 1;
        let mut scheduled = copy(&ops.id, "alice", MessageStatus::Scheduled);
        scheduled.deliver_at = Some(UnixMillis::now() + Duration::from_secs(3600));
        let queued = copy(&ops.id, "alice", MessageStatus::Queued);
        let delivered = copy(&ops.id, "alice", MessageStatus::Delivered);
        let bobs = copy(&ops.id, "bob", MessageStatus::Queued);
        let ids = [&partly, &scheduled, &queued, &delivered, &bobs].map(|m| m.id.clone());
        store
            .insert_group_send(
                ops,
                [partly, scheduled, queued, delivered, bobs]
                    .into_iter()
                    .map(|m| (m, vec![]))
                    .collect(),
            )
            .await
            .unwrap();
        let dev = send("dev", 1, None);
        let elsewhere = copy(&dev.id, "alice", MessageStatus::Queued);
        let elsewhere_id = elsewhere.id.clone();
        store
            .insert_group_send(dev, vec![(elsewhere, vec![])])
            .await
            .unwrap();

        let left = store
            .leave_op("ops", &UserId::new("alice"), None)
            .await
            .unwrap();
        assert_eq!(
            left,
            LeaveOutcome::Left {
                new_owner: Some(UserId::new("bob")),
                deleted: false,
                skipped: 2
            },
            "the scheduled and the queued copy"
        );
        let status = |id: &MessageId| {
            let id = id.clone();
            async move { store.message(id.as_str()).await.unwrap().unwrap().status }
        };
        assert_eq!(status(&ids[0]).await, MessageStatus::Queued, "partly sent");
        assert_eq!(status(&ids[1]).await, MessageStatus::Left);
        assert_eq!(status(&ids[2]).await, MessageStatus::Left);
        assert_eq!(status(&ids[3]).await, MessageStatus::Delivered);
        assert_eq!(status(&ids[4]).await, MessageStatus::Queued, "bob's");
        assert_eq!(
            status(&elsewhere_id).await,
            MessageStatus::Queued,
            "another group's"
        );
    }

    /// Many members' preferences in one read, the same as one by one.
    async fn many_members_prefs_read_at_once_match_one_by_one(store: &Store) {
        let users: Vec<UserId> = (0..40).map(|i| UserId::new(&format!("m{i}"))).collect();
        for (i, user) in users.iter().enumerate().take(20) {
            store.token_for(user).await.unwrap();
            if i % 2 == 0 {
                store
                    .set_look(user, Some(crate::domain::Look::Text))
                    .await
                    .unwrap();
            }
        }
        let batch = store.members_prefs(&users).await.unwrap();
        assert_eq!(batch.len(), users.len());
        for user in &users {
            assert_eq!(
                batch[user],
                store.member_prefs(user).await.unwrap(),
                "{user}"
            );
        }
    }

    /// The chat's and the API's `leave` and `kick` (the store's leave_group and
    /// kick_from_group) skip the member's unsent copies; the others' stay queued.
    async fn leaving_and_being_kicked_skip_the_members_copies(store: &Store) {
        use crate::store::{Created, Joined, Kicked, Left, Owned};
        let limits = crate::groups::Limits::default();
        let (alice, bob, carol) = (
            UserId::new("alice"),
            UserId::new("bob"),
            UserId::new("carol"),
        );
        let Created::Created(made) = store.create_group(&alice, "ops", &limits).await.unwrap()
        else {
            panic!("the group is made");
        };
        for member in [&bob, &carol] {
            let joined = store
                .join_group(member, &made.invite, &limits)
                .await
                .unwrap();
            assert!(matches!(joined, Joined::Joined(_)), "{joined:?}");
        }
        let parent = send(&made.group.id, 3, None);
        let copies: Vec<Message> = [&alice, &bob, &carol]
            .map(|u| copy(&parent.id, u.as_str(), MessageStatus::Queued))
            .into();
        let ids: Vec<MessageId> = copies.iter().map(|m| m.id.clone()).collect();
        store
            .insert_group_send(parent, copies.into_iter().map(|m| (m, vec![])).collect())
            .await
            .unwrap();
        let left = store.leave_group(&bob, "ops").await.unwrap();
        assert!(matches!(left, Left::Left { .. }), "{left:?}");
        let kicked = store.kick_from_group(&alice, "ops", &carol).await.unwrap();
        assert!(
            matches!(kicked, Owned::Done((_, Kicked::Kicked))),
            "{kicked:?}"
        );
        let status = |i: usize| {
            let id = ids[i].clone();
            async move { store.message(id.as_str()).await.unwrap().unwrap().status }
        };
        assert_eq!(status(0).await, MessageStatus::Queued, "alice stayed");
        assert_eq!(status(1).await, MessageStatus::Left, "bob left");
        assert_eq!(status(2).await, MessageStatus::Left, "carol was removed");
    }

    /// The retention purge takes a group message's row with its last copy, not before.
    async fn a_group_message_is_purged_with_its_last_copy(store: &Store) {
        seat(store, "g1", &["alice", "bob"]).await;
        let done = send("g1", 1, None);
        let waiting = send("g1", 2, None);
        store
            .insert_group_send(
                done.clone(),
                vec![(copy(&done.id, "alice", MessageStatus::Delivered), vec![])],
            )
            .await
            .unwrap();
        store
            .insert_group_send(
                waiting.clone(),
                vec![
                    (copy(&waiting.id, "alice", MessageStatus::Delivered), vec![]),
                    (copy(&waiting.id, "bob", MessageStatus::Queued), vec![]),
                ],
            )
            .await
            .unwrap();
        let later = UnixMillis::now() + Duration::from_secs(3600);
        assert_eq!(store.purge_messages(later, 100).await.unwrap(), 2);
        assert_eq!(store.group_send(done.id.as_str()).await.unwrap(), None);
        assert_eq!(
            store.group_send(waiting.id.as_str()).await.unwrap(),
            Some(waiting),
            "bob's copy is still queued"
        );
    }

    /// A copy is committed against the members as they are at its commit, not as the send
    /// read them: a member who left in between (the leave reached the writer first) gets
    /// their copy as `left`, with no lane, never queued; a muted one stays muted.
    async fn a_member_out_by_the_commit_gets_the_copy_as_left(store: &Store) {
        seat(store, "g1", &["alice", "bob", "carol"]).await;
        // The send read alice, bob, carol (and dave, muted, who left before) ...
        let parent = send("g1", 4, None);
        let copies: Vec<Message> = vec![
            copy(&parent.id, "alice", MessageStatus::Queued),
            copy(&parent.id, "bob", MessageStatus::Queued),
            copy(&parent.id, "carol", MessageStatus::Scheduled),
            copy(&parent.id, "dave", MessageStatus::Muted),
        ];
        // ... then bob and carol left, before the send reached the writer.
        for who in ["bob", "carol"] {
            let left = store.leave_op("g1", &UserId::new(who), None).await.unwrap();
            assert!(
                matches!(left, LeaveOutcome::Left { skipped: 0, .. }),
                "{left:?}"
            );
        }
        store
            .insert_group_send(
                parent.clone(),
                copies.into_iter().map(|m| (m, vec![])).collect(),
            )
            .await
            .unwrap();
        let stored = store.group_copies(&parent.id).await.unwrap();
        let seen = by_member(&stored);
        assert_eq!(
            seen,
            [
                ("alice", MessageStatus::Queued),
                ("bob", MessageStatus::Left),
                ("carol", MessageStatus::Left),
                ("dave", MessageStatus::Muted),
            ]
        );
        assert_eq!(
            stored[1].last_error.as_deref(),
            Some("left the group before it was sent")
        );
        assert_eq!(
            count(store, "SELECT count(*) FROM lanes WHERE userid = 'bob'").await,
            0,
            "a left copy opens no lane"
        );
    }

    /// Leaving is one transaction: a failure after the membership is removed (injected: a
    /// trigger refuses marking the copies `left`) leaves the member in the group and their
    /// copy queued; once the fault is gone, leaving does both.
    async fn leaving_removes_the_membership_and_marks_copies_left_together(store: &Store) {
        seat(store, "g1", &["alice", "bob"]).await;
        let parent = send("g1", 2, None);
        let alices = copy(&parent.id, "alice", MessageStatus::Queued);
        let bobs = copy(&parent.id, "bob", MessageStatus::Queued);
        let bobs_id = bobs.id.clone();
        store
            .insert_group_send(parent, vec![(alices, vec![]), (bobs, vec![])])
            .await
            .unwrap();
        let (inject, heal): (&[&str], &[&str]) = if store.sole_writer() {
            (
                &[
                    "CREATE TRIGGER fail_left BEFORE UPDATE OF status ON messages \
                   WHEN NEW.status = 'left' BEGIN SELECT RAISE(ABORT, 'injected'); END",
                ],
                &["DROP TRIGGER fail_left"],
            )
        } else {
            (
                &[
                    "CREATE FUNCTION fail_left() RETURNS trigger AS \
                     $$ BEGIN RAISE EXCEPTION 'injected'; END $$ LANGUAGE plpgsql",
                    "CREATE TRIGGER fail_left BEFORE UPDATE ON messages FOR EACH ROW \
                     WHEN (NEW.status = 'left') EXECUTE FUNCTION fail_left()",
                ],
                &["DROP TRIGGER fail_left ON messages"],
            )
        };
        for sql in inject {
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&store.pool)
                .await
                .unwrap();
        }
        let bob = UserId::new("bob");
        let err = store.leave_op("g1", &bob, None).await.unwrap_err();
        assert!(crate::error::chain(&err).contains("injected"), "{err:?}");
        assert_eq!(
            store.group_recipients("g1").await.unwrap(),
            vec![(UserId::new("alice"), false), (bob.clone(), false)],
            "still a member: the removal was undone with the failed marking"
        );
        let status = store
            .message(bobs_id.as_str())
            .await
            .unwrap()
            .unwrap()
            .status;
        assert_eq!(status, MessageStatus::Queued);
        for sql in heal {
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&store.pool)
                .await
                .unwrap();
        }
        let left = store.leave_op("g1", &bob, None).await.unwrap();
        assert!(
            matches!(left, LeaveOutcome::Left { skipped: 1, .. }),
            "{left:?}"
        );
        assert_eq!(
            store.group_recipients("g1").await.unwrap(),
            vec![(UserId::new("alice"), false)]
        );
        let status = store
            .message(bobs_id.as_str())
            .await
            .unwrap()
            .unwrap()
            .status;
        assert_eq!(status, MessageStatus::Left);
    }

    /// Two instances on PostgreSQL, two writers: a group send whose transaction has read
    /// the members (bob among them) and is still open (held there by an injected
    /// `pg_sleep` after its `group_sends` row) while bob leaves through the other. The
    /// leave waits at the group's row for the send to commit and then marks bob's copy
    /// `left`; without the lock it would commit first, find no copy, and bob's would be
    /// committed queued after his leave.
    #[tokio::test]
    async fn on_postgresql_a_leave_on_another_instance_waits_for_a_send_in_progress() {
        let schema = crate::store::postgres::TestSchema::new().await;
        let sending = Store::connect(&schema.url()).await.unwrap();
        let leaving = Store::connect(&schema.url()).await.unwrap();
        seat(&sending, "g1", &["alice", "bob"]).await;
        sqlx::raw_sql(
            "CREATE FUNCTION slow_send() RETURNS trigger AS \
             $$ BEGIN PERFORM pg_sleep(0.6); RETURN NEW; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER slow_send AFTER INSERT ON group_sends \
             FOR EACH ROW EXECUTE FUNCTION slow_send()",
        )
        .execute(&sending.pool)
        .await
        .unwrap();
        let parent = send("g1", 2, None);
        let parent_id = parent.id.clone();
        let copies = ["alice", "bob"]
            .map(|u| (copy(&parent.id, u, MessageStatus::Queued), vec![]))
            .into();
        let send = {
            let sending = sending.clone();
            tokio::spawn(async move { sending.insert_group_send(parent, copies).await })
        };
        // The send's transaction has read the members and sleeps in its trigger.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let left = leaving
            .leave_op("g1", &UserId::new("bob"), None)
            .await
            .unwrap();
        send.await.unwrap().unwrap();
        assert!(
            matches!(left, LeaveOutcome::Left { skipped: 1, .. }),
            "the leave waited for the send and marked its copy: {left:?}"
        );
        let stored = sending.group_copies(&parent_id).await.unwrap();
        let seen = by_member(&stored);
        assert_eq!(
            seen,
            [
                ("alice", MessageStatus::Queued),
                ("bob", MessageStatus::Left)
            ]
        );
        leaving.close().await;
        sending.close().await;
    }

    /// `n` members' copies of one group message, accepted at one instant (as
    /// `Outbox::accept_group` builds them), and their members in join order.
    fn big_send(group_id: &str, n: usize) -> (GroupSend, Vec<(Message, Vec<Attachment>)>) {
        let parent = send(group_id, i64::try_from(n).unwrap(), None);
        let now = parent.created_at;
        let copies = (0..n)
            .map(|i| {
                let mut m = Message::new_queued(
                    MessageId::generate(),
                    UserId::new(&format!("m{i:03}")),
                    Some("to the group".into()),
                    Some("the body".into()),
                    now,
                    now + Duration::from_secs(60),
                );
                m.group_send = Some(parent.id.clone());
                (m, Vec::new())
            })
            .collect();
        (parent, copies)
    }

    async fn seat_big(store: &Store, group_id: &str, n: usize) {
        let members: Vec<String> = (0..n).map(|i| format!("m{i:03}")).collect();
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        seat(store, group_id, &members).await;
    }

    /// Waits until no group message has copies left to write.
    async fn written(store: &Store) {
        for _ in 0..500 {
            if count(
                store,
                "SELECT COUNT(*) FROM group_sends WHERE plan IS NOT NULL",
            )
            .await
                == 0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("planned copies still unwritten after 10 s");
    }

    /// The plan of `copies` stored as a process that stopped after writing `expanded` of
    /// them would leave it (none of the copies themselves).
    async fn left_halfway(
        store: &Store,
        parent: &GroupSend,
        copies: &[(Message, Vec<Attachment>)],
        expanded: i64,
    ) {
        sqlx::query(
            "INSERT INTO group_sends (id, group_id, group_name, created_at, recipients, plan, \
             expanded) VALUES ($1, $2, 'ops', $3, $4, $5, $6)",
        )
        .bind(parent.id.as_str())
        .bind(parent.group_id.as_str())
        .bind(parent.created_at)
        .bind(parent.recipients)
        .bind(super::super::fanout::encode(copies).unwrap())
        .bind(expanded)
        .execute(&store.pool)
        .await
        .unwrap();
    }

    /// More copies than a chunk: the acceptance commits the plan alone, and the writer then
    /// writes every copy — in the plan's order, each queued one with its lane — and clears
    /// the plan.
    async fn a_large_group_message_is_accepted_with_its_plan_and_written_after(store: &Store) {
        seat_big(store, "big", 300).await;
        let (parent, copies) = big_send("big", 300);
        store
            .insert_group_send(parent.clone(), copies.clone())
            .await
            .unwrap();
        written(store).await;
        let stored = store.group_copies(&parent.id).await.unwrap();
        let ids = |c: &[Message]| c.iter().map(|m| m.id.to_string()).collect::<Vec<_>>();
        let planned: Vec<Message> = copies.into_iter().map(|(m, _)| m).collect();
        assert_eq!(
            ids(&stored),
            ids(&planned),
            "every copy once, in the plan's order"
        );
        assert!(stored.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(stored.iter().all(|m| m.status == MessageStatus::Queued));
        assert_eq!(count(store, "SELECT COUNT(*) FROM lanes").await, 300);
        assert_eq!(
            count(store, "SELECT MAX(expanded) FROM group_sends").await,
            300
        );
    }

    /// A plan left halfway (the process stopped): its copies not yet written show as
    /// planned; resuming writes exactly those, from the stored count on, checking each
    /// against the members as they are now; resuming again writes nothing more.
    async fn a_plan_left_halfway_is_finished_from_its_count(store: &Store) {
        seat_big(store, "big", 200).await;
        let (parent, copies) = big_send("big", 200);
        left_halfway(store, &parent, &copies, 64).await;
        let shown = store.group_copies(&parent.id).await.unwrap();
        assert_eq!(shown.len(), 200, "unwritten copies show as planned");
        assert!(shown.iter().all(|m| m.status == MessageStatus::Queued));
        sqlx::query("DELETE FROM group_members WHERE userid = 'm150'")
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(store.resume_fanouts(None).await.unwrap(), 1);
        written(store).await;
        assert_eq!(store.resume_fanouts(None).await.unwrap(), 0);
        let stored = store.group_copies(&parent.id).await.unwrap();
        assert_eq!(stored.len(), 136, "copies 64.. only");
        assert_eq!(stored[0].userid.as_str(), "m064");
        let left: Vec<&str> = stored
            .iter()
            .filter(|m| m.status == MessageStatus::Left)
            .map(|m| m.userid.as_str())
            .collect();
        assert_eq!(
            left,
            ["m150"],
            "out of the group by the time it was written"
        );
        assert_eq!(count(store, "SELECT COUNT(*) FROM messages").await, 136);
    }

    /// Two instances that both go on with the same unfinished plan (each found it in its
    /// sweep) write each copy once between them: a chunk reads the count under a row lock
    /// and is dropped when the other instance got there first.
    #[tokio::test]
    async fn on_postgresql_two_instances_finishing_one_plan_write_each_copy_once() {
        let schema = crate::store::postgres::TestSchema::new().await;
        let a = Store::connect(&schema.url()).await.unwrap();
        let b = Store::connect(&schema.url()).await.unwrap();
        seat_big(&a, "big", 1000).await;
        let (parent, copies) = big_send("big", 1000);
        left_halfway(&a, &parent, &copies, 0).await;
        let (ra, rb) = tokio::join!(a.resume_fanouts(None), b.resume_fanouts(None));
        assert_eq!((ra.unwrap(), rb.unwrap()), (1, 1));
        written(&a).await;
        assert_eq!(count(&a, "SELECT COUNT(*) FROM messages").await, 1000);
        assert_eq!(
            count(&a, "SELECT COUNT(DISTINCT userid) FROM messages").await,
            1000
        );
        a.close().await;
        b.close().await;
    }

    on_both_engines!(
        a_large_group_message_is_accepted_with_its_plan_and_written_after,
        a_plan_left_halfway_is_finished_from_its_count,
        a_member_out_by_the_commit_gets_the_copy_as_left,
        leaving_removes_the_membership_and_marks_copies_left_together,
        a_group_message_is_purged_with_its_last_copy,
        leaving_and_being_kicked_skip_the_members_copies,
        a_group_message_commits_with_every_copy_and_lane,
        a_group_idempotency_key_is_the_groups_own,
        leaving_skips_only_the_members_unsent_copies_of_that_group,
        many_members_prefs_read_at_once_match_one_by_one,
    );
}
