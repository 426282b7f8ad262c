//! Groups (issue 29): who is in which group, the groups' tokens and invite codes.
//!
//! Written through the pool like members' settings (`members.rs`), but for leaving and
//! removing a member: those go through the writer (`ScheduleOp::LeaveGroup`), in one
//! transaction with marking the member's unsent copies `left`, ordered with the group
//! sends the writer commits (the messages a group token sends go through the writer like
//! any message). Each write that must check a limit
//! starts its transaction with a write (so that on SQLite it takes the lock at once instead
//! of failing to upgrade a read, and on PostgreSQL it holds the group's row until it
//! commits): the insert or update first, the checks after it, a rollback when one fails.

use sqlx::Row as _;

use super::writer::{LeaveOutcome, Reply, ScheduleOp};
use super::{Store, StoreError};
use crate::domain::{PushToken, UserId};
use crate::groups::Limits;
use crate::time::UnixMillis;

/// A group as a send needs it: its internal id and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRef {
    pub id: String,
    pub name: String,
}

/// A group as one of its members sees it (`groups`, `GET /groups`).
#[derive(Clone, PartialEq, Eq)]
pub struct GroupView {
    pub group: GroupRef,
    pub owner: bool,
    pub muted: bool,
    pub members: i64,
    /// `chat` or `wecom`.
    pub source: String,
    /// The group's token and invite, for its owners only.
    pub token: Option<PushToken>,
    pub invite: Option<String>,
    pub invite_expires_at: Option<UnixMillis>,
}

impl std::fmt::Debug for GroupView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupView")
            .field("group", &self.group)
            .field("owner", &self.owner)
            .field("muted", &self.muted)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// A group just made: its token and invite go to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGroup {
    pub group: GroupRef,
    pub token: PushToken,
    /// Canonical (`crate::groups::show_invite` shows it).
    pub invite: String,
    pub invite_expires_at: UnixMillis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Created(NewGroup),
    /// The member is in a group of this name already.
    NameTaken,
    /// The member is in `max_groups_per_member` groups already.
    TooManyGroups,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    Joined(GroupRef),
    AlreadyMember(GroupRef),
    /// No group has this code (counted towards the limit on wrong codes).
    NoSuchInvite,
    /// The code was right but has expired: its owner can renew it.
    Expired,
    /// Too many wrong codes lately: nothing was looked up.
    TooManyTries,
    /// The group has `max_members` members.
    Full(GroupRef),
    TooManyGroups,
    /// The member is in another group of this name.
    NameTaken(GroupRef),
}

/// What an owner's action found (rotate, invite, kick, delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owned<T> {
    Done(T),
    /// The member is in no group of this name (or the group is gone).
    NoSuchGroup,
    NotOwner,
    /// WeCom-backed: its membership and lifetime come from the configuration and WeCom.
    FromWecom,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kicked {
    Kicked,
    /// `userid` is not in the group.
    NotMember,
    /// An owner removes themself by leaving.
    Themself,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left {
    /// The member has left `group`; `new_owner` took it over (the longest-standing member,
    /// when the last owner left); `deleted` when they were the last member.
    Left {
        group: GroupRef,
        new_owner: Option<UserId>,
        deleted: bool,
    },
    NoSuchGroup,
    /// WeCom-backed: membership is read from WeCom.
    FromWecom,
}

/// A member's view of one of their groups, found by name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Membership {
    group: GroupRef,
    owner: bool,
    wecom: bool,
}

fn group_id() -> String {
    crate::token::page_key()
}

impl Store {
    /// The group a send token belongs to, if any: one indexed read (no cache, so a rotated
    /// token stops at once on every instance).
    pub async fn group_by_token(&self, token: &PushToken) -> Result<Option<GroupRef>, StoreError> {
        let mut reader = self.readers.get().await?;
        let row = sqlx::query("SELECT id, name FROM groups WHERE token = $1")
            .bind(token.expose())
            .fetch_optional(reader.conn())
            .await;
        let Some(row) = reader.done(row)? else {
            return Ok(None);
        };
        Ok(Some(GroupRef {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
        }))
    }

    /// A group's members, longest-standing first, and whether each has muted it.
    pub async fn group_recipients(
        &self,
        group_id: &str,
    ) -> Result<Vec<(UserId, bool)>, StoreError> {
        let mut reader = self.readers.get().await?;
        let rows = sqlx::query(
            "SELECT userid, muted FROM group_members WHERE group_id = $1 \
             ORDER BY joined_at, userid",
        )
        .bind(group_id)
        .fetch_all(reader.conn())
        .await;
        reader
            .done(rows)?
            .iter()
            .map(|row| {
                Ok((
                    UserId::new(&row.try_get::<String, _>("userid")?),
                    row.try_get::<i64, _>("muted")? != 0,
                ))
            })
            .collect()
    }

    /// Makes a group named `name` (already normalised: `crate::groups::normalize_name`)
    /// with `owner` as its owner and only member, a fresh token and invite code.
    pub async fn create_group(
        &self,
        owner: &UserId,
        name: &str,
        limits: &Limits,
    ) -> Result<Created, StoreError> {
        let now = UnixMillis::now();
        let group = GroupRef {
            id: group_id(),
            name: name.to_owned(),
        };
        let token = crate::token::generate();
        let invite = crate::groups::generate_invite();
        let invite_expires_at = now + limits.invite_ttl;
        let mut tx = self.pool.begin().await?;
        hold_member(self, &mut tx, owner).await?;
        sqlx::query(
            "INSERT INTO groups (id, name, token, token_created_at, invite, invite_expires_at, \
             source, created_at) VALUES ($1, $2, $3, $4, $5, $6, 'chat', $4)",
        )
        .bind(&group.id)
        .bind(&group.name)
        .bind(token.expose())
        .bind(now)
        .bind(&invite)
        .bind(invite_expires_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO group_members (group_id, userid, owner, joined_at) VALUES ($1, $2, 1, $3)",
        )
        .bind(&group.id)
        .bind(owner.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let (groups, same_name) = member_groups(&mut tx, owner, name).await?;
        if same_name > 1 {
            tx.rollback().await?;
            return Ok(Created::NameTaken);
        }
        if groups > i64::from(limits.max_groups_per_member) {
            tx.rollback().await?;
            return Ok(Created::TooManyGroups);
        }
        tx.commit().await?;
        Ok(Created::Created(NewGroup {
            group,
            token,
            invite,
            invite_expires_at,
        }))
    }

    /// Joins the group whose invite is `invite` (canonical: `crate::groups::parse_invite`).
    /// A wrong code counts towards the member's limit; past it, nothing is looked up.
    pub async fn join_group(
        &self,
        userid: &UserId,
        invite: &str,
        limits: &Limits,
    ) -> Result<Joined, StoreError> {
        let now = UnixMillis::now();
        let since = now - limits.join_window;
        let failures: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM group_join_failures WHERE userid = $1 AND at > $2",
        )
        .bind(userid.as_str())
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        if failures >= i64::from(limits.join_failures) {
            return Ok(Joined::TooManyTries);
        }
        let row = sqlx::query("SELECT id, name, invite_expires_at FROM groups WHERE invite = $1")
            .bind(invite)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            sqlx::query("INSERT INTO group_join_failures (userid, at) VALUES ($1, $2)")
                .bind(userid.as_str())
                .bind(now)
                .execute(&self.pool)
                .await?;
            return Ok(Joined::NoSuchInvite);
        };
        let group = GroupRef {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
        };
        let expires: Option<i64> = row.try_get("invite_expires_at")?;
        if expires.is_none_or(|at| at <= now.as_millis()) {
            return Ok(Joined::Expired);
        }
        let mut tx = self.pool.begin().await?;
        hold_member(self, &mut tx, userid).await?;
        // Holds the group (and checks the code once more: it may have been renewed since).
        let held = sqlx::query(
            "UPDATE groups SET invite = invite WHERE id = $1 AND invite = $2 \
             AND invite_expires_at > $3",
        )
        .bind(&group.id)
        .bind(invite)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if held.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(Joined::Expired);
        }
        let added = sqlx::query(
            "INSERT INTO group_members (group_id, userid, owner, joined_at) \
             VALUES ($1, $2, 0, $3) ON CONFLICT (group_id, userid) DO NOTHING",
        )
        .bind(&group.id)
        .bind(userid.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if added.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(Joined::AlreadyMember(group));
        }
        let members: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM group_members WHERE group_id = $1")
                .bind(&group.id)
                .fetch_one(&mut *tx)
                .await?;
        let (groups, same_name) = member_groups(&mut tx, userid, &group.name).await?;
        let refused = if members > i64::from(limits.max_members) {
            Some(Joined::Full(group.clone()))
        } else if same_name > 1 {
            Some(Joined::NameTaken(group.clone()))
        } else if groups > i64::from(limits.max_groups_per_member) {
            Some(Joined::TooManyGroups)
        } else {
            None
        };
        if let Some(refused) = refused {
            tx.rollback().await?;
            return Ok(refused);
        }
        tx.commit().await?;
        Ok(Joined::Joined(group))
    }
}

impl Store {
    /// The member's groups by name, with their member counts; the token and invite of
    /// those they own.
    pub async fn groups_of(&self, userid: &UserId) -> Result<Vec<GroupView>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.id, g.name, g.token, g.invite, g.invite_expires_at, g.source, m.owner, \
             m.muted, (SELECT COUNT(*) FROM group_members c WHERE c.group_id = g.id) AS members \
             FROM group_members m JOIN groups g ON g.id = m.group_id WHERE m.userid = $1 \
             ORDER BY g.name, g.id",
        )
        .bind(userid.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let owner = row.try_get::<i64, _>("owner")? != 0;
                Ok(GroupView {
                    group: GroupRef {
                        id: row.try_get("id")?,
                        name: row.try_get("name")?,
                    },
                    owner,
                    muted: row.try_get::<i64, _>("muted")? != 0,
                    members: row.try_get("members")?,
                    source: row.try_get("source")?,
                    token: owner
                        .then(|| row.try_get::<String, _>("token"))
                        .transpose()?
                        .map(PushToken::new),
                    invite: if owner { row.try_get("invite")? } else { None },
                    invite_expires_at: if owner {
                        row.try_get::<Option<i64>, _>("invite_expires_at")?
                            .map(UnixMillis::from_millis)
                    } else {
                        None
                    },
                })
            })
            .collect()
    }

    /// The member's group named `name` (normalised), if they are in one.
    async fn membership(
        &self,
        userid: &UserId,
        name: &str,
    ) -> Result<Option<Membership>, StoreError> {
        let row = sqlx::query(
            "SELECT g.id, g.name, g.source, m.owner FROM group_members m \
             JOIN groups g ON g.id = m.group_id WHERE m.userid = $1 AND g.name = $2",
        )
        .bind(userid.as_str())
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(Membership {
                group: GroupRef {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                },
                owner: row.try_get::<i64, _>("owner")? != 0,
                wecom: row.try_get::<String, _>("source")? == "wecom",
            })
        })
        .transpose()
    }

    /// The member's group named `name` if they own it.
    async fn owned(&self, userid: &UserId, name: &str) -> Result<Owned<GroupRef>, StoreError> {
        Ok(match self.membership(userid, name).await? {
            None => Owned::NoSuchGroup,
            Some(m) if !m.owner => Owned::NotOwner,
            Some(m) => Owned::Done(m.group),
        })
    }

    /// A new token for the owner's group `name`; the old one stops working before this
    /// returns (group tokens are not cached anywhere).
    pub async fn rotate_group_token(
        &self,
        owner: &UserId,
        name: &str,
    ) -> Result<Owned<(GroupRef, PushToken)>, StoreError> {
        let group = match self.owned(owner, name).await? {
            Owned::Done(group) => group,
            Owned::NoSuchGroup => return Ok(Owned::NoSuchGroup),
            Owned::NotOwner => return Ok(Owned::NotOwner),
            Owned::FromWecom => return Ok(Owned::FromWecom),
        };
        let token = crate::token::generate();
        let done = sqlx::query(
            "UPDATE groups SET token = $1, token_created_at = $2 WHERE id = $3 AND EXISTS \
             (SELECT 1 FROM group_members WHERE group_id = $3 AND userid = $4 AND owner = 1)",
        )
        .bind(token.expose())
        .bind(UnixMillis::now())
        .bind(&group.id)
        .bind(owner.as_str())
        .execute(&self.pool)
        .await?;
        // Lost the ownership (or the group) in between.
        if done.rows_affected() == 0 {
            return Ok(Owned::NotOwner);
        }
        Ok(Owned::Done((group, token)))
    }

    /// A new invite code for the owner's group `name`, valid for `limits.invite_ttl`; the
    /// old code stops working.
    pub async fn renew_invite(
        &self,
        owner: &UserId,
        name: &str,
        limits: &Limits,
    ) -> Result<Owned<(GroupRef, String, UnixMillis)>, StoreError> {
        match self.membership(owner, name).await? {
            None => Ok(Owned::NoSuchGroup),
            Some(m) if !m.owner => Ok(Owned::NotOwner),
            Some(m) if m.wecom => Ok(Owned::FromWecom),
            Some(m) => {
                let invite = crate::groups::generate_invite();
                let expires = UnixMillis::now() + limits.invite_ttl;
                let done = sqlx::query(
                    "UPDATE groups SET invite = $1, invite_expires_at = $2 WHERE id = $3 AND \
                     EXISTS (SELECT 1 FROM group_members WHERE group_id = $3 AND userid = $4 \
                     AND owner = 1)",
                )
                .bind(&invite)
                .bind(expires)
                .bind(&m.group.id)
                .bind(owner.as_str())
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Ok(Owned::NotOwner);
                }
                Ok(Owned::Done((m.group, invite, expires)))
            }
        }
    }

    /// Removes `member` from the owner's group `name`, and marks their copies of its
    /// messages not sent yet `left`, in one transaction (`ScheduleOp::LeaveGroup`).
    pub async fn kick_from_group(
        &self,
        owner: &UserId,
        name: &str,
        member: &UserId,
    ) -> Result<Owned<(GroupRef, Kicked)>, StoreError> {
        let group = match self.membership(owner, name).await? {
            None => return Ok(Owned::NoSuchGroup),
            Some(m) if !m.owner => return Ok(Owned::NotOwner),
            Some(m) if m.wecom => return Ok(Owned::FromWecom),
            Some(m) => m.group,
        };
        if member == owner {
            return Ok(Owned::Done((group, Kicked::Themself)));
        }
        Ok(match self.leave_op(&group.id, member, Some(owner)).await? {
            LeaveOutcome::Left { .. } => Owned::Done((group, Kicked::Kicked)),
            LeaveOutcome::NotMember => Owned::Done((group, Kicked::NotMember)),
            // Lost the ownership in between.
            LeaveOutcome::NotOwner => Owned::NotOwner,
        })
    }

    /// The writer's [`ScheduleOp::LeaveGroup`].
    pub(super) async fn leave_op(
        &self,
        group_id: &str,
        userid: &UserId,
        by_owner: Option<&UserId>,
    ) -> Result<LeaveOutcome, StoreError> {
        let op = ScheduleOp::LeaveGroup {
            group_id: group_id.to_owned(),
            userid: userid.clone(),
            by_owner: by_owner.cloned(),
            now: UnixMillis::now(),
        };
        match self.writer.schedule(op).await? {
            Reply::Left { outcome, .. } => Ok(outcome),
            other => Err(StoreError::Corrupt(format!(
                "unexpected reply to leaving a group: {other:?}"
            ))),
        }
    }

    /// Deletes the owner's group `name`: its token stops working, its members are out.
    /// Messages it sent before stay as they are.
    pub async fn delete_group(
        &self,
        owner: &UserId,
        name: &str,
    ) -> Result<Owned<GroupRef>, StoreError> {
        let group = match self.membership(owner, name).await? {
            None => return Ok(Owned::NoSuchGroup),
            Some(m) if !m.owner => return Ok(Owned::NotOwner),
            Some(m) if m.wecom => return Ok(Owned::FromWecom),
            Some(m) => m.group,
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM groups WHERE id = $1")
            .bind(&group.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM group_members WHERE group_id = $1")
            .bind(&group.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Owned::Done(group))
    }

    /// The member leaves their group `name`. An owner who was the last owner hands the
    /// group to the longest-standing member; the last member out deletes it. Their copies
    /// of its messages not sent yet become `left` in the same transaction
    /// (`ScheduleOp::LeaveGroup`), even of a group their leaving deleted.
    pub async fn leave_group(&self, userid: &UserId, name: &str) -> Result<Left, StoreError> {
        let group = match self.membership(userid, name).await? {
            None => return Ok(Left::NoSuchGroup),
            Some(m) if m.wecom => return Ok(Left::FromWecom),
            Some(m) => m.group,
        };
        Ok(match self.leave_op(&group.id, userid, None).await? {
            LeaveOutcome::Left {
                new_owner, deleted, ..
            } => Left::Left {
                group,
                new_owner,
                deleted,
            },
            LeaveOutcome::NotMember | LeaveOutcome::NotOwner => Left::NoSuchGroup,
        })
    }

    /// Mutes (or unmutes) the member's group `name` for them: its messages skip them,
    /// visibly. `None`: no such group.
    pub async fn set_group_muted(
        &self,
        userid: &UserId,
        name: &str,
        muted: bool,
    ) -> Result<Option<GroupRef>, StoreError> {
        let Some(m) = self.membership(userid, name).await? else {
            return Ok(None);
        };
        sqlx::query("UPDATE group_members SET muted = $1 WHERE group_id = $2 AND userid = $3")
            .bind(i64::from(muted))
            .bind(&m.group.id)
            .bind(userid.as_str())
            .execute(&self.pool)
            .await?;
        Ok(Some(m.group))
    }

    /// Forgets wrong invite codes typed before `before` (housekeeping).
    pub async fn prune_join_failures(&self, before: UnixMillis) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM group_join_failures WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// A `[[groups.wecom]]` table as [`Store::sync_wecom_groups`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WecomGroupSpec {
    /// Normalised (`crate::groups::normalize_name`).
    pub name: String,
    pub owners: Vec<UserId>,
}

impl Store {
    /// Start-up: makes every configured WeCom-backed group a `groups` row (the same row,
    /// and token, across restarts: found by name among `source = 'wecom'`), makes its
    /// configured owners its owners (and nobody else), and deletes the WeCom-backed groups
    /// no longer configured, so that their tokens stop working. Returns the configured
    /// groups in order, and the names of the deleted ones.
    pub async fn sync_wecom_groups(
        &self,
        specs: &[WecomGroupSpec],
    ) -> Result<(Vec<GroupRef>, Vec<String>), StoreError> {
        let now = UnixMillis::now();
        let mut tx = self.pool.begin().await?;
        // Two instances starting at once must not make the same group twice.
        hold_key(self, &mut tx, "wecom:groups").await?;
        // SQLite: a write first takes the lock now (a read could not be upgraded later).
        sqlx::query("UPDATE groups SET source = source WHERE source = 'wecom'")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query("SELECT id, name FROM groups WHERE source = 'wecom'")
            .fetch_all(&mut *tx)
            .await?;
        let mut existing = Vec::with_capacity(rows.len());
        for row in &rows {
            existing.push(GroupRef {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
            });
        }
        let mut configured = Vec::with_capacity(specs.len());
        for spec in specs {
            let group = match existing.iter().find(|g| g.name == spec.name) {
                Some(group) => group.clone(),
                None => {
                    let group = GroupRef {
                        id: group_id(),
                        name: spec.name.clone(),
                    };
                    sqlx::query(
                        "INSERT INTO groups (id, name, token, token_created_at, source, \
                         created_at) VALUES ($1, $2, $3, $4, 'wecom', $4)",
                    )
                    .bind(&group.id)
                    .bind(&group.name)
                    .bind(crate::token::generate().expose())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    group
                }
            };
            sqlx::query("UPDATE group_members SET owner = 0 WHERE group_id = $1 AND owner = 1")
                .bind(&group.id)
                .execute(&mut *tx)
                .await?;
            for owner in &spec.owners {
                sqlx::query(
                    "INSERT INTO group_members (group_id, userid, owner, joined_at) \
                     VALUES ($1, $2, 1, $3) ON CONFLICT (group_id, userid) DO UPDATE SET owner = 1",
                )
                .bind(&group.id)
                .bind(owner.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            configured.push(group);
        }
        let mut removed = Vec::new();
        for group in existing {
            if configured.iter().any(|g| g.id == group.id) {
                continue;
            }
            sqlx::query("DELETE FROM group_members WHERE group_id = $1")
                .bind(&group.id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM groups WHERE id = $1")
                .bind(&group.id)
                .execute(&mut *tx)
                .await?;
            removed.push(group.name);
        }
        tx.commit().await?;
        Ok((configured, removed))
    }

    /// When a WeCom-backed group's members were last read from WeCom; `Err`-free `None`
    /// when the group is gone or was never read.
    pub async fn wecom_group_refreshed_at(
        &self,
        group_id: &str,
    ) -> Result<Option<UnixMillis>, StoreError> {
        let at: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT refreshed_at FROM groups WHERE id = $1 AND source = 'wecom'",
        )
        .bind(group_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(at.flatten().map(UnixMillis::from_millis))
    }

    /// Replaces a WeCom-backed group's members with `owners` (as owners) and `members`, in
    /// one transaction: who stays keeps their `muted` flag and join time, who is new joins
    /// now, who is gone is out — and their copies of its messages not sent yet are `left`. `false` when the group is gone.
    pub async fn replace_wecom_members(
        &self,
        group_id: &str,
        owners: &[UserId],
        members: &[UserId],
    ) -> Result<bool, StoreError> {
        let now = UnixMillis::now();
        let mut want: std::collections::BTreeMap<&str, bool> = std::collections::BTreeMap::new();
        for member in members {
            want.insert(member.as_str(), false);
        }
        for owner in owners {
            want.insert(owner.as_str(), true);
        }
        let mut tx = self.pool.begin().await?;
        // The write first: it holds the group's row (PostgreSQL) or the lock (SQLite).
        let held =
            sqlx::query("UPDATE groups SET refreshed_at = $1 WHERE id = $2 AND source = 'wecom'")
                .bind(now)
                .bind(group_id)
                .execute(&mut *tx)
                .await?;
        if held.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let rows = sqlx::query("SELECT userid, owner FROM group_members WHERE group_id = $1")
            .bind(group_id)
            .fetch_all(&mut *tx)
            .await?;
        let mut have = std::collections::BTreeMap::new();
        for row in &rows {
            have.insert(
                row.try_get::<String, _>("userid")?,
                row.try_get::<i64, _>("owner")? != 0,
            );
        }
        for (userid, owner) in &have {
            match want.get(userid.as_str()) {
                None => {
                    sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND userid = $2")
                        .bind(group_id)
                        .bind(userid)
                        .execute(&mut *tx)
                        .await?;
                    // Out of the group: their copies not sent yet are not sent, as when a
                    // member leaves (the writer's `LeaveGroup`), in the same transaction.
                    sqlx::query(
                        "UPDATE messages SET status = 'left', updated_at = $3, last_error = $4 \
                         WHERE userid = $2 AND status IN ('queued', 'scheduled') \
                         AND parts_done = 0 AND channel IS NULL AND group_send IS NOT NULL \
                         AND EXISTS (SELECT 1 FROM group_sends g \
                         WHERE g.id = messages.group_send AND g.group_id = $1)",
                    )
                    .bind(group_id)
                    .bind(userid)
                    .bind(now)
                    .bind(super::writer::LEFT_BEFORE_SENT)
                    .execute(&mut *tx)
                    .await?;
                }
                Some(wanted) if wanted != owner => {
                    sqlx::query(
                        "UPDATE group_members SET owner = $1 WHERE group_id = $2 AND userid = $3",
                    )
                    .bind(i64::from(*wanted))
                    .bind(group_id)
                    .bind(userid)
                    .execute(&mut *tx)
                    .await?;
                }
                Some(_) => {}
            }
        }
        for (userid, owner) in &want {
            if have.contains_key(*userid) {
                continue;
            }
            sqlx::query(
                "INSERT INTO group_members (group_id, userid, owner, joined_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(group_id)
            .bind(*userid)
            .bind(i64::from(*owner))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

/// PostgreSQL: holds `userid`'s groups until the transaction ends, so that two of their
/// requests on other instances cannot both pass the name and count checks. (SQLite: the
/// transaction's first write takes the one write lock, which serialises them already.)
async fn hold_member(
    store: &Store,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    userid: &UserId,
) -> Result<(), StoreError> {
    hold_key(store, tx, userid.as_str()).await
}

/// PostgreSQL: holds `key` (a userid, or `wecom:` and a group's name or id) until the
/// transaction ends. SQLite: nothing (its one write lock serialises writes already).
async fn hold_key(
    store: &Store,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    key: &str,
) -> Result<(), StoreError> {
    if store.sole_writer() {
        return Ok(());
    }
    // The lock function returns `void`, which the portable driver cannot read. 29: this
    // feature's class of keys (issue 29); the writer's are 21.
    sqlx::query("SELECT count(*) AS n FROM (SELECT pg_advisory_xact_lock(29, hashtext($1))) AS l")
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// How many groups `userid` is in, and how many of them are named `name`.
async fn member_groups(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    userid: &UserId,
    name: &str,
) -> Result<(i64, i64), StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS groups, \
         COALESCE(SUM(CASE WHEN g.name = $2 THEN 1 ELSE 0 END), 0) AS same_name \
         FROM group_members m JOIN groups g ON g.id = m.group_id WHERE m.userid = $1",
    )
    .bind(userid.as_str())
    .bind(name)
    .fetch_one(&mut **tx)
    .await?;
    Ok((row.try_get("groups")?, row.try_get("same_name")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_members: 3,
            max_groups_per_member: 2,
            join_failures: 3,
            ..Limits::default()
        }
    }

    fn made(created: Created) -> NewGroup {
        match created {
            Created::Created(new) => new,
            other => panic!("not created: {other:?}"),
        }
    }

    /// What the send side reads: the group by its token, its members in the order they
    /// joined; the limits and the wrong-code count as the chat and `/groups` see them.
    async fn groups_are_made_joined_and_read(store: &Store) {
        let limits = limits();
        let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(UserId::new);
        let ops = made(store.create_group(&alice, "ops", &limits).await.unwrap());
        assert_eq!(ops.group.name, "ops");
        assert_eq!(
            store.group_by_token(&ops.token).await.unwrap(),
            Some(ops.group.clone())
        );
        assert_eq!(
            store
                .group_by_token(&crate::token::generate())
                .await
                .unwrap(),
            None
        );
        // A personal token is not a group's.
        let personal = store.token_for(&alice).await.unwrap();
        assert_eq!(store.group_by_token(&personal).await.unwrap(), None);
        assert_eq!(
            store.create_group(&alice, "ops", &limits).await.unwrap(),
            Created::NameTaken
        );

        for who in [&bob, &carol] {
            assert_eq!(
                store.join_group(who, &ops.invite, &limits).await.unwrap(),
                Joined::Joined(ops.group.clone())
            );
        }
        assert_eq!(
            store.join_group(&bob, &ops.invite, &limits).await.unwrap(),
            Joined::AlreadyMember(ops.group.clone())
        );
        assert_eq!(
            store.join_group(&dave, &ops.invite, &limits).await.unwrap(),
            Joined::Full(ops.group.clone())
        );
        let recipients = store.group_recipients(&ops.group.id).await.unwrap();
        assert_eq!(
            recipients,
            vec![(alice.clone(), false), (bob.clone(), false), (carol, false)]
        );

        // A second group of the same name elsewhere: bob cannot be in both.
        let other = made(store.create_group(&dave, "ops", &limits).await.unwrap());
        assert_eq!(
            store
                .join_group(&bob, &other.invite, &limits)
                .await
                .unwrap(),
            Joined::NameTaken(other.group.clone())
        );
        made(store.create_group(&bob, "dev", &limits).await.unwrap());
        assert_eq!(
            store.create_group(&bob, "qa", &limits).await.unwrap(),
            Created::TooManyGroups
        );

        // Wrong codes: three allowed per window, then not even a right one is looked up.
        for _ in 0..3 {
            assert_eq!(
                store.join_group(&dave, "00000000", &limits).await.unwrap(),
                Joined::NoSuchInvite
            );
        }
        let fresh = made(store.create_group(&alice, "fresh", &limits).await.unwrap());
        assert_eq!(
            store
                .join_group(&dave, &fresh.invite, &limits)
                .await
                .unwrap(),
            Joined::TooManyTries
        );
        // Others are not affected.
        assert_eq!(
            store
                .join_group(&bob, &fresh.invite, &limits)
                .await
                .unwrap(),
            Joined::TooManyGroups
        );

        // An expired code is told apart from a wrong one.
        sqlx::query("UPDATE groups SET invite_expires_at = 0 WHERE id = $1")
            .bind(&fresh.group.id)
            .execute(&store.pool)
            .await
            .unwrap();
        let erin = UserId::new("erin");
        assert_eq!(
            store
                .join_group(&erin, &fresh.invite, &limits)
                .await
                .unwrap(),
            Joined::Expired
        );
    }

    /// Owners manage, members see only what is theirs to see; leaving hands the group on
    /// and the last one out deletes it.
    async fn owners_manage_and_members_leave(store: &Store) {
        let limits = Limits::default();
        let [alice, bob, carol] = ["alice", "bob", "carol"].map(UserId::new);
        let ops = made(store.create_group(&alice, "ops", &limits).await.unwrap());
        for who in [&bob, &carol] {
            store.join_group(who, &ops.invite, &limits).await.unwrap();
        }
        let seen = store.groups_of(&alice).await.unwrap();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].owner);
        assert_eq!(seen[0].members, 3);
        assert_eq!(seen[0].token.as_ref(), Some(&ops.token));
        assert_eq!(seen[0].invite.as_deref(), Some(ops.invite.as_str()));
        let bobs = store.groups_of(&bob).await.unwrap();
        assert!(!bobs[0].owner);
        assert_eq!(
            (bobs[0].token.as_ref(), bobs[0].invite.as_ref()),
            (None, None)
        );

        // Only the owner rotates, renews, kicks, deletes; someone outside sees nothing.
        let dave = UserId::new("dave");
        assert_eq!(
            store.rotate_group_token(&bob, "ops").await.unwrap(),
            Owned::NotOwner
        );
        assert_eq!(
            store.rotate_group_token(&dave, "ops").await.unwrap(),
            Owned::NoSuchGroup
        );
        assert_eq!(
            store.kick_from_group(&bob, "ops", &carol).await.unwrap(),
            Owned::NotOwner
        );
        assert_eq!(
            store.delete_group(&bob, "ops").await.unwrap(),
            Owned::NotOwner
        );
        let Owned::Done((_, token)) = store.rotate_group_token(&alice, "ops").await.unwrap() else {
            panic!("not rotated");
        };
        assert_eq!(store.group_by_token(&ops.token).await.unwrap(), None);
        assert_eq!(
            store.group_by_token(&token).await.unwrap(),
            Some(ops.group.clone())
        );
        let Owned::Done((_, invite, _)) = store.renew_invite(&alice, "ops", &limits).await.unwrap()
        else {
            panic!("not renewed");
        };
        assert_ne!(invite, ops.invite);
        assert_eq!(
            store.join_group(&dave, &ops.invite, &limits).await.unwrap(),
            Joined::NoSuchInvite
        );

        // Mute is per member.
        assert_eq!(
            store.set_group_muted(&bob, "ops", true).await.unwrap(),
            Some(ops.group.clone())
        );
        assert_eq!(
            store.set_group_muted(&dave, "ops", true).await.unwrap(),
            None
        );
        assert_eq!(
            store.group_recipients(&ops.group.id).await.unwrap(),
            vec![
                (alice.clone(), false),
                (bob.clone(), true),
                (carol.clone(), false)
            ]
        );

        assert_eq!(
            store.kick_from_group(&alice, "ops", &carol).await.unwrap(),
            Owned::Done((ops.group.clone(), Kicked::Kicked))
        );
        assert_eq!(
            store.kick_from_group(&alice, "ops", &carol).await.unwrap(),
            Owned::Done((ops.group.clone(), Kicked::NotMember))
        );
        assert_eq!(
            store.kick_from_group(&alice, "ops", &alice).await.unwrap(),
            Owned::Done((ops.group.clone(), Kicked::Themself))
        );

        // The owner leaves: bob, the longest-standing, owns it; then bob leaves: gone.
        assert_eq!(
            store.leave_group(&alice, "ops").await.unwrap(),
            Left::Left {
                group: ops.group.clone(),
                new_owner: Some(bob.clone()),
                deleted: false
            }
        );
        assert!(store.groups_of(&bob).await.unwrap()[0].owner);
        assert_eq!(
            store.leave_group(&alice, "ops").await.unwrap(),
            Left::NoSuchGroup
        );
        assert_eq!(
            store.leave_group(&bob, "ops").await.unwrap(),
            Left::Left {
                group: ops.group.clone(),
                new_owner: None,
                deleted: true
            }
        );
        assert_eq!(store.group_by_token(&token).await.unwrap(), None);

        // Deleting: the token is dead and the name free again.
        let dev = made(store.create_group(&alice, "dev", &limits).await.unwrap());
        store.join_group(&bob, &dev.invite, &limits).await.unwrap();
        assert_eq!(
            store.delete_group(&alice, "dev").await.unwrap(),
            Owned::Done(dev.group.clone())
        );
        assert_eq!(store.group_by_token(&dev.token).await.unwrap(), None);
        assert!(store.groups_of(&bob).await.unwrap().is_empty());
        made(store.create_group(&bob, "dev", &limits).await.unwrap());

        // Wrong codes (dave's old invite and this one) are forgotten by the housekeeping.
        store.join_group(&dave, "00000000", &limits).await.unwrap();
        let later = UnixMillis::now() + std::time::Duration::from_secs(1);
        assert_eq!(store.prune_join_failures(later).await.unwrap(), 2);
    }

    /// Concurrent requests cannot overshoot a limit or make two groups of one name for a
    /// member: on SQLite the write lock serialises them, on PostgreSQL the group's row and
    /// the member's advisory lock do.
    async fn concurrent_joins_and_makes_keep_the_limits(store: &Store) {
        let limits = Limits {
            max_members: 4,
            ..Limits::default()
        };
        let owner = UserId::new("owner");
        let ops = made(store.create_group(&owner, "ops", &limits).await.unwrap());
        let joins: Vec<_> = (0..8)
            .map(|i| {
                let (store, invite, limits) = (store.clone(), ops.invite.clone(), limits.clone());
                tokio::spawn(async move {
                    store
                        .join_group(&UserId::new(&format!("m{i}")), &invite, &limits)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut joined = 0;
        for join in joins {
            match join.await.unwrap() {
                Joined::Joined(_) => joined += 1,
                Joined::Full(_) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(joined, 3);
        assert_eq!(
            store.group_recipients(&ops.group.id).await.unwrap().len(),
            4
        );

        let makes: Vec<_> = (0..5)
            .map(|_| {
                let (store, limits) = (store.clone(), limits.clone());
                tokio::spawn(async move {
                    store
                        .create_group(&UserId::new("maker"), "dup", &limits)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut created = 0;
        for make in makes {
            match make.await.unwrap() {
                Created::Created(_) => created += 1,
                Created::NameTaken => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(created, 1);
    }

    on_both_engines!(
        groups_are_made_joined_and_read,
        owners_manage_and_members_leave,
        concurrent_joins_and_makes_keep_the_limits
    );
}
