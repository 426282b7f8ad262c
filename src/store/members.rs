//! Members and their push tokens.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::Row as _;

use super::{Store, StoreError};
use crate::delivery::quiet::{self, QuietSetting};
use crate::domain::{ChannelName, Look, PushToken, Route, UserId};
use crate::time::UnixMillis;

/// Wrong tries a verification code allows.
pub const CODE_ATTEMPTS: i64 = 5;
/// Window of the cap on verification mails.
const CODE_RATE_WINDOW: Duration = Duration::from_secs(3600);

/// What a member's messages may use: verified addresses and their own channel order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberPrefs {
    /// Verified addresses (`member_bindings`), by channel name.
    pub bindings: Vec<(ChannelName, String)>,
    pub channels: Option<Route>,
    /// How the member wants messages to look; `None`: `delivery.format`.
    pub look: Option<Look>,
    /// The names of the destinations the member added in the chat.
    pub destinations: Vec<ChannelName>,
    /// The member's own quiet hours (`quiet …` in the chat; `Off` overrides the server's
    /// default); `None`: `delivery.quiet_hours`.
    pub quiet: Option<QuietSetting>,
    /// The member's own offset from UTC in seconds (`timezone …`); `None`:
    /// `delivery.utc_offset`.
    pub utc_offset: Option<i32>,
}

/// What the lane needs of a member to keep their quiet hours ([`Store::member_quiet`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberQuiet {
    pub quiet: Option<QuietSetting>,
    pub utc_offset: Option<i32>,
}

/// A destination a member added in the chat, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredDestination {
    pub name: ChannelName,
    /// `wecom-robot`, `dingtalk`, `feishu`, `telegram`.
    pub kind: String,
    /// The robot's URL (with its key) or the Telegram chat id: a secret.
    pub address: String,
    pub secret: Option<String>,
}

impl std::fmt::Debug for StoredDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredDestination")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Destinations one member may add.
pub const MAX_MEMBER_DESTINATIONS: i64 = 10;

impl MemberPrefs {
    /// The member's verified address on `channel`.
    pub fn address(&self, channel: ChannelName) -> Option<&str> {
        self.bindings
            .iter()
            .find(|(c, _)| *c == channel)
            .map(|(_, a)| a.as_str())
    }

    /// The channels only this member can be reached on: those with a verified address,
    /// and the destinations the member added.
    pub fn bound(&self) -> Vec<ChannelName> {
        self.bindings
            .iter()
            .map(|(c, _)| *c)
            .chain(self.destinations.iter().copied())
            .collect()
    }
}

/// Members' preferences as read, and when. `changes` counts changes, so that a read that
/// started before a change cannot put the old value back afterwards.
#[derive(Default)]
pub(super) struct PrefsCache {
    members: HashMap<UserId, (MemberPrefs, Instant)>,
    changes: u64,
}

/// On PostgreSQL, how long preferences read are used: another instance may change them
/// (a change made through this instance is seen at once, as on SQLite, where the cache is
/// always right).
pub const SHARED_PREFS_TTL: Duration = Duration::from_secs(2);

impl PrefsCache {
    /// The member's preferences as read, if they may still be used (`ttl`: see
    /// [`SHARED_PREFS_TTL`]).
    fn get(&self, userid: &UserId, ttl: Option<Duration>) -> Option<&MemberPrefs> {
        self.members
            .get(userid)
            .filter(|(_, read)| ttl.is_none_or(|ttl| read.elapsed() < ttl))
            .map(|(prefs, _)| prefs)
    }
}

/// The answer to a request for a verification code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeRequest {
    /// A new code (it replaces any earlier one); mail it.
    Created { code: String },
    /// Too many codes for this member or this address in the last hour.
    TooMany,
}

/// The answer to a code a member typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeCheck {
    /// Right code: the address is bound on the channel now.
    Bound {
        channel: ChannelName,
        address: String,
    },
    /// Wrong code; this many tries are left.
    Wrong {
        attempts_left: i64,
    },
    Expired,
    /// The code has had all its tries.
    Exhausted,
    NoPending,
}

/// Positive token lookups. `rotations` counts rotations so that a lookup that read the
/// database before a rotation committed cannot put the revoked token back afterwards.
#[derive(Default)]
pub(super) struct TokenCache {
    pub(super) owners: HashMap<PushToken, UserId>,
    pub(super) rotations: u64,
}

impl Store {
    /// The member a push token belongs to, if any.
    pub async fn member_by_token(&self, token: &PushToken) -> Result<Option<UserId>, StoreError> {
        let generation = match self.tokens.read() {
            Ok(cache) => {
                // (On PostgreSQL the tokens kept are for sending only: see
                // `sender_by_token`.)
                if self.sole_writer()
                    && let Some(userid) = cache.owners.get(token)
                {
                    return Ok(Some(userid.clone()));
                }
                cache.rotations
            }
            Err(_) => u64::MAX,
        };
        let mut reader = self.readers.get().await?;
        let row = sqlx::query("SELECT userid FROM members WHERE token = $1")
            .bind(token.expose())
            .fetch_optional(reader.conn())
            .await;
        let Some(row) = reader.done(row)? else {
            return Ok(None);
        };
        let userid = UserId::new(&row.try_get::<String, _>("userid")?);
        self.cache_token(token, &userid, generation);
        Ok(Some(userid))
    }

    /// The member a push token belongs to and their preferences, as `/send` needs both,
    /// from memory where this process keeps them. On SQLite that is all. On PostgreSQL,
    /// where another instance may rotate the token, the token comes back too: what is
    /// sent with it must be stored with [`Store::insert_message_verified`], which stores
    /// it only if the token is still the member's as it commits (so a token rotated
    /// anywhere is refused at once, and one that is not costs no read); preferences are
    /// used for [`SHARED_PREFS_TTL`]. What is not in memory is read in one query.
    #[allow(clippy::type_complexity)]
    pub async fn sender_by_token(
        &self,
        token: &PushToken,
    ) -> Result<Option<(UserId, MemberPrefs, Option<PushToken>)>, StoreError> {
        if self.sole_writer() {
            let Some(userid) = self.member_by_token(token).await? else {
                return Ok(None);
            };
            let prefs = self.member_prefs(&userid).await?;
            return Ok(Some((userid, prefs, None)));
        }
        let (known, generation, changes) = match (self.tokens.read(), self.prefs.read()) {
            (Ok(tokens), Ok(prefs)) => (
                tokens.owners.get(token).cloned(),
                tokens.rotations,
                prefs.changes,
            ),
            _ => (None, u64::MAX, u64::MAX),
        };
        if let Some(userid) = known {
            let prefs = self.member_prefs(&userid).await?;
            return Ok(Some((userid, prefs, Some(token.clone()))));
        }
        let mut reader = self.readers.get().await?;
        let rows = sqlx::query(PREFS_BY_TOKEN)
            .bind(token.expose())
            .fetch_all(reader.conn())
            .await;
        let rows = reader.done(rows)?;
        let (member, prefs) = prefs_from_rows(&rows)?;
        let Some(userid) = member else {
            return Ok(None);
        };
        self.keep_token(token, &userid, generation);
        self.keep_prefs([(&userid, &prefs)], changes);
        Ok(Some((userid, prefs, Some(token.clone()))))
    }

    /// Keeps members' preferences read when the change counter was `changes`, unless a
    /// change has committed since.
    fn keep_prefs<'a>(
        &self,
        read: impl IntoIterator<Item = (&'a UserId, &'a MemberPrefs)>,
        changes: u64,
    ) {
        if let Ok(mut cache) = self.prefs.write()
            && cache.changes == changes
        {
            let now = Instant::now();
            for (userid, prefs) in read {
                cache.members.insert(userid.clone(), (prefs.clone(), now));
            }
        }
    }

    /// How long cached preferences are used: always on SQLite, where this process makes
    /// every change; [`SHARED_PREFS_TTL`] on PostgreSQL.
    fn prefs_ttl(&self) -> Option<Duration> {
        (!self.sole_writer()).then_some(SHARED_PREFS_TTL)
    }

    /// The member's token, created on first request.
    pub async fn token_for(&self, userid: &UserId) -> Result<PushToken, StoreError> {
        let generation = self.tokens.read().map_or(u64::MAX, |c| c.rotations);
        // Asking again is the common case: read first, and write (one fsync) only for a
        // member seen for the first time.
        let token = match self.stored_token(userid).await? {
            Some(token) => token,
            None => {
                sqlx::query(
                    "INSERT INTO members (userid, token, created_at, token_created_at) \
                     VALUES ($1, $2, $3, $3) ON CONFLICT (userid) DO NOTHING",
                )
                .bind(userid.as_str())
                .bind(crate::token::generate().expose())
                .bind(UnixMillis::now())
                .execute(&self.pool)
                .await?;
                // A concurrent first request may have won the insert: read what was kept.
                self.stored_token(userid)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt(format!("member {userid} vanished")))?
            }
        };
        self.cache_token(&token, userid, generation);
        Ok(token)
    }

    /// The member's token if they have one (never creates one).
    pub async fn existing_token(&self, userid: &UserId) -> Result<Option<PushToken>, StoreError> {
        self.stored_token(userid).await
    }

    async fn stored_token(&self, userid: &UserId) -> Result<Option<PushToken>, StoreError> {
        let row = sqlx::query("SELECT token FROM members WHERE userid = $1")
            .bind(userid.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|row| row.try_get::<String, _>("token"))
            .transpose()?
            .map(PushToken::new))
    }

    /// Replaces the member's token; the old one stops working before this returns.
    ///
    /// Writes only, no read-then-write in a transaction: on SQLite a deferred transaction
    /// that reads first cannot wait for the write lock, and the outbox writer holds it
    /// often under load.
    ///
    /// The member's console sessions end in the same transaction: whoever held the old
    /// token may have logged in with it in mind. The transaction writes first (no read to
    /// upgrade from), so on SQLite it waits for the lock like a single statement would.
    pub async fn rotate_token(&self, userid: &UserId) -> Result<PushToken, StoreError> {
        let now = UnixMillis::now();
        let new_token = crate::token::generate();
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM console_sessions WHERE userid = $1")
            .bind(userid.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO members (userid, token, created_at, token_created_at) \
             VALUES ($1, $2, $3, $3) ON CONFLICT (userid) DO UPDATE \
             SET token = excluded.token, token_created_at = excluded.token_created_at",
        )
        .bind(userid.as_str())
        .bind(new_token.expose())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Ok(mut cache) = self.tokens.write() {
            cache.rotations += 1;
            cache.owners.retain(|_, owner| owner != userid);
            if self.sole_writer() {
                cache.owners.insert(new_token.clone(), userid.clone());
            }
        }
        Ok(new_token)
    }

    /// Forgets a token kept in memory (found replaced as a message sent with it was stored).
    pub(super) fn forget_token(&self, token: &PushToken) {
        if let Ok(mut cache) = self.tokens.write() {
            cache.owners.remove(token);
        }
    }

    /// Caches a lookup made when the rotation counter was `generation`, unless a rotation
    /// has committed since (then the value read may already be revoked), or another
    /// instance may rotate tokens (PostgreSQL: only `/send` keeps tokens there, see
    /// [`Store::sender_by_token`]).
    pub(super) fn cache_token(&self, token: &PushToken, userid: &UserId, generation: u64) {
        if self.sole_writer() {
            self.keep_token(token, userid, generation);
        }
    }

    /// Keeps a token read when the rotation counter was `generation`, unless a rotation
    /// has committed since.
    fn keep_token(&self, token: &PushToken, userid: &UserId, generation: u64) {
        if let Ok(mut cache) = self.tokens.write()
            && cache.rotations == generation
        {
            cache.owners.insert(token.clone(), userid.clone());
        }
    }
}

/// `members.quiet`: a value this build cannot read is the server's default (`None`),
/// never an error — a member's setting must not stop their messages.
fn stored_quiet(row: &sqlx::any::AnyRow) -> Result<Option<QuietSetting>, StoreError> {
    Ok(row
        .try_get::<Option<String>, _>("quiet")?
        .as_deref()
        .and_then(QuietSetting::from_stored))
}

/// `members.utc_offset` in seconds; out of range (written by hand): the server's default.
fn stored_offset(row: &sqlx::any::AnyRow) -> Result<Option<i32>, StoreError> {
    Ok(row
        .try_get::<Option<i64>, _>("utc_offset")?
        .and_then(|secs| i32::try_from(secs).ok())
        .filter(|secs| quiet::offset_in_range(*secs)))
}

/// A member's settings, bindings and destinations in one read (one round trip instead of
/// three): one row of `kind` 0, the member's row (`a` the userid, `b` the channel order),
/// one of `kind` 1 per binding (`a` the channel, `b` the address), one of `kind` 2 per
/// destination (`a` its name), in that order. This one finds the member by push token
/// (`$1`): who sends, and their settings.
const PREFS_BY_TOKEN: &str = "\
    SELECT CAST(0 AS BIGINT) AS kind, m.userid AS a, m.channels AS b, m.format, m.quiet, \
    m.utc_offset FROM members m WHERE m.token = $1 \
    UNION ALL SELECT CAST(1 AS BIGINT), b.channel, b.address, NULL, NULL, NULL \
    FROM member_bindings b JOIN members m ON m.userid = b.userid WHERE m.token = $1 \
    UNION ALL SELECT CAST(2 AS BIGINT), d.name, NULL, NULL, NULL, NULL \
    FROM member_destinations d JOIN members m ON m.userid = d.userid WHERE m.token = $1 \
    ORDER BY kind, a";
/// As [`PREFS_BY_TOKEN`], by userid (`$1`); bindings and destinations are read even
/// without a member row.
const PREFS_BY_USERID: &str = "\
    SELECT CAST(0 AS BIGINT) AS kind, m.userid AS a, m.channels AS b, m.format, m.quiet, \
    m.utc_offset FROM members m WHERE m.userid = $1 \
    UNION ALL SELECT CAST(1 AS BIGINT), channel, address, NULL, NULL, NULL \
    FROM member_bindings WHERE userid = $1 \
    UNION ALL SELECT CAST(2 AS BIGINT), name, NULL, NULL, NULL, NULL \
    FROM member_destinations WHERE userid = $1 ORDER BY kind, a";

/// The member (if their row was read) and their preferences, from [`PREFS_BY_TOKEN`] or
/// [`PREFS_BY_USERID`].
/// A channel or destination this build does not know is skipped, not an error.
fn prefs_from_rows(
    rows: &[sqlx::any::AnyRow],
) -> Result<(Option<UserId>, MemberPrefs), StoreError> {
    let mut member = None;
    let mut prefs = MemberPrefs::default();
    for row in rows {
        match row.try_get::<i64, _>("kind")? {
            0 => {
                member = Some(UserId::new(&row.try_get::<String, _>("a")?));
                prefs.channels = row
                    .try_get::<Option<String>, _>("b")?
                    .as_deref()
                    .and_then(|c| Route::parse(c).ok());
                prefs.look = row
                    .try_get::<Option<String>, _>("format")?
                    .as_deref()
                    .and_then(Look::from_stored);
                prefs.quiet = stored_quiet(row)?;
                prefs.utc_offset = stored_offset(row)?;
            }
            1 => {
                let channel = row.try_get::<String, _>("a").ok();
                let address = row.try_get::<String, _>("b").ok();
                if let (Some(channel), Some(address)) = (channel, address)
                    && let Ok(channel) = channel.parse::<ChannelName>()
                {
                    prefs.bindings.push((channel, address));
                }
            }
            _ => {
                if let Some(name) = row
                    .try_get::<String, _>("a")
                    .ok()
                    .and_then(|n| n.parse().ok())
                {
                    prefs.destinations.push(name);
                }
            }
        }
    }
    Ok((member, prefs))
}

impl Store {
    /// The member's bound address and channel order (defaults for an unknown member).
    pub async fn member_prefs(&self, userid: &UserId) -> Result<MemberPrefs, StoreError> {
        let changes = match self.prefs.read() {
            Ok(cache) => {
                if let Some(prefs) = cache.get(userid, self.prefs_ttl()) {
                    return Ok(prefs.clone());
                }
                cache.changes
            }
            Err(_) => u64::MAX,
        };
        let mut reader = self.readers.get().await?;
        let rows = sqlx::query(PREFS_BY_USERID)
            .bind(userid.as_str())
            .fetch_all(reader.conn())
            .await;
        let rows = reader.done(rows)?;
        let prefs = prefs_from_rows(&rows)?.1;
        self.keep_prefs([(userid, &prefs)], changes);
        Ok(prefs)
    }

    /// The preferences of many members at once (a group message's recipients): from the
    /// cache where this process keeps one (SQLite), the rest in one read — never a round
    /// trip per member. A member without a row gets the defaults, as from
    /// [`Store::member_prefs`].
    pub async fn members_prefs(
        &self,
        userids: &[UserId],
    ) -> Result<HashMap<UserId, MemberPrefs>, StoreError> {
        let mut found: HashMap<UserId, MemberPrefs> = HashMap::with_capacity(userids.len());
        let changes = match self.prefs.read() {
            Ok(cache) => {
                for userid in userids {
                    if let Some(prefs) = cache.get(userid, self.prefs_ttl()) {
                        found.insert(userid.clone(), prefs.clone());
                    }
                }
                cache.changes
            }
            Err(_) => u64::MAX,
        };
        let missing: Vec<&str> = userids
            .iter()
            .filter(|u| !found.contains_key(*u))
            .map(UserId::as_str)
            .collect();
        if missing.is_empty() {
            return Ok(found);
        }
        // One shape whatever the number: the userids as one JSON array.
        let list = match self.engine {
            super::Engine::Sqlite => "SELECT value FROM json_each($1)",
            super::Engine::Postgres => "SELECT json_array_elements_text(CAST($1 AS json))",
        };
        let sql = format!(
            "SELECT CAST(0 AS BIGINT) AS kind, m.userid AS u, m.userid AS a, m.channels AS b, \
             m.format, m.quiet, m.utc_offset FROM members m WHERE m.userid IN ({list}) \
             UNION ALL SELECT CAST(1 AS BIGINT), userid, channel, address, NULL, NULL, NULL \
             FROM member_bindings WHERE userid IN ({list}) \
             UNION ALL SELECT CAST(2 AS BIGINT), userid, name, NULL, NULL, NULL, NULL \
             FROM member_destinations WHERE userid IN ({list}) ORDER BY u, kind, a"
        );
        let json = serde_json::to_string(&missing)
            .map_err(|e| StoreError::Corrupt(format!("userids as JSON: {e}")))?;
        let mut reader = self.readers.get().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(json)
            .fetch_all(reader.conn())
            .await;
        let rows = reader.done(rows)?;
        let mut read: HashMap<UserId, MemberPrefs> = HashMap::with_capacity(missing.len());
        let mut start = 0;
        while start < rows.len() {
            let userid: String = rows[start].try_get("u")?;
            let mut end = start + 1;
            while end < rows.len() && rows[end].try_get::<String, _>("u")? == userid {
                end += 1;
            }
            let prefs = prefs_from_rows(&rows[start..end])?.1;
            read.insert(UserId::new(&userid), prefs);
            start = end;
        }
        for userid in missing {
            let userid = UserId::new(userid);
            let prefs = read.remove(&userid).unwrap_or_default();
            found.insert(userid, prefs);
        }
        self.keep_prefs(&found, changes);
        Ok(found)
    }

    /// The member's quiet hours and offset, as a lane reads them once per claim: from the
    /// cached preferences when there are some (SQLite), else one indexed read of the
    /// member's row.
    pub async fn member_quiet(&self, userid: &UserId) -> Result<MemberQuiet, StoreError> {
        if let Ok(cache) = self.prefs.read()
            && let Some(prefs) = cache.get(userid, self.prefs_ttl())
        {
            return Ok(MemberQuiet {
                quiet: prefs.quiet,
                utc_offset: prefs.utc_offset,
            });
        }
        let mut reader = self.readers.get().await?;
        let row = sqlx::query("SELECT quiet, utc_offset FROM members WHERE userid = $1")
            .bind(userid.as_str())
            .fetch_optional(reader.conn())
            .await;
        Ok(match reader.done(row)? {
            None => MemberQuiet::default(),
            Some(row) => MemberQuiet {
                quiet: stored_quiet(&row)?,
                utc_offset: stored_offset(&row)?,
            },
        })
    }

    /// Sets (or, with `None`, clears: the server's default) the member's quiet hours.
    pub async fn set_quiet(
        &self,
        userid: &UserId,
        quiet: Option<QuietSetting>,
    ) -> Result<(), StoreError> {
        self.token_for(userid).await?;
        sqlx::query("UPDATE members SET quiet = $2 WHERE userid = $1")
            .bind(userid.as_str())
            .bind(quiet.map(QuietSetting::to_stored))
            .execute(&self.pool)
            .await?;
        self.prefs_changed(userid);
        Ok(())
    }

    /// Sets (or, with `None`, clears: the server's default) the member's offset from UTC,
    /// in seconds.
    pub async fn set_utc_offset(
        &self,
        userid: &UserId,
        utc_offset: Option<i32>,
    ) -> Result<(), StoreError> {
        self.token_for(userid).await?;
        sqlx::query("UPDATE members SET utc_offset = $2 WHERE userid = $1")
            .bind(userid.as_str())
            .bind(utc_offset.map(i64::from))
            .execute(&self.pool)
            .await?;
        self.prefs_changed(userid);
        Ok(())
    }

    /// Forgets the cached preferences of a member whose row just changed.
    pub(super) fn prefs_changed(&self, userid: &UserId) {
        if let Ok(mut cache) = self.prefs.write() {
            cache.changes += 1;
            cache.members.remove(userid);
        }
    }

    /// Sets (or, with `None`, clears) the member's own channel order.
    pub async fn set_channels(
        &self,
        userid: &UserId,
        channels: Option<&Route>,
    ) -> Result<(), StoreError> {
        // The member row is where the order lives: make sure it exists.
        self.token_for(userid).await?;
        sqlx::query("UPDATE members SET channels = $2 WHERE userid = $1")
            .bind(userid.as_str())
            .bind(channels.map(Route::to_stored))
            .execute(&self.pool)
            .await?;
        self.prefs_changed(userid);
        Ok(())
    }

    /// Sets (or, with `None`, clears) how the member wants messages to look.
    pub async fn set_look(&self, userid: &UserId, look: Option<Look>) -> Result<(), StoreError> {
        self.token_for(userid).await?;
        sqlx::query("UPDATE members SET format = $2 WHERE userid = $1")
            .bind(userid.as_str())
            .bind(look.map(Look::as_str))
            .execute(&self.pool)
            .await?;
        self.prefs_changed(userid);
        Ok(())
    }

    /// The member's verified address on `channel`.
    pub async fn binding(
        &self,
        userid: &UserId,
        channel: ChannelName,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .member_prefs(userid)
            .await?
            .address(channel)
            .map(str::to_owned))
    }

    /// The member's destination of that name.
    pub async fn member_destination(
        &self,
        userid: &UserId,
        name: ChannelName,
    ) -> Result<Option<StoredDestination>, StoreError> {
        Ok(self
            .member_destinations(userid)
            .await?
            .into_iter()
            .find(|d| d.name == name))
    }

    /// The destinations the member added, by name.
    pub async fn member_destinations(
        &self,
        userid: &UserId,
    ) -> Result<Vec<StoredDestination>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, kind, address, secret FROM member_destinations \
             WHERE userid = $1 ORDER BY name",
        )
        .bind(userid.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.try_get("name")?;
            let Ok(name) = name.parse::<ChannelName>() else {
                continue;
            };
            found.push(StoredDestination {
                name,
                kind: row.try_get("kind")?,
                address: row.try_get("address")?,
                secret: row.try_get("secret")?,
            });
        }
        Ok(found)
    }

    /// Adds (or replaces) the member's destination; `false` when the member already has
    /// [`MAX_MEMBER_DESTINATIONS`] others.
    pub async fn add_member_destination(
        &self,
        userid: &UserId,
        destination: &StoredDestination,
    ) -> Result<bool, StoreError> {
        let others = sqlx::query(
            "SELECT count(*) AS n FROM member_destinations WHERE userid = $1 AND name <> $2",
        )
        .bind(userid.as_str())
        .bind(destination.name.as_str())
        .fetch_one(&self.pool)
        .await?
        .try_get::<i64, _>("n")?;
        if others >= MAX_MEMBER_DESTINATIONS {
            return Ok(false);
        }
        self.token_for(userid).await?;
        sqlx::query(
            "INSERT INTO member_destinations (userid, name, kind, address, secret, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (userid, name) DO UPDATE SET \
             kind = excluded.kind, address = excluded.address, secret = excluded.secret, \
             created_at = excluded.created_at",
        )
        .bind(userid.as_str())
        .bind(destination.name.as_str())
        .bind(&destination.kind)
        .bind(&destination.address)
        .bind(destination.secret.as_deref())
        .bind(UnixMillis::now())
        .execute(&self.pool)
        .await?;
        self.prefs_changed(userid);
        Ok(true)
    }

    /// The member's destination has a new address (a Telegram group that became a
    /// supergroup).
    pub async fn move_member_destination(
        &self,
        userid: &UserId,
        name: ChannelName,
        address: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE member_destinations SET address = $3 WHERE userid = $1 AND name = $2")
            .bind(userid.as_str())
            .bind(name.as_str())
            .bind(address)
            .execute(&self.pool)
            .await?;
        self.prefs_changed(userid);
        Ok(())
    }

    /// Removes the member's destination; `false` when there was none of that name.
    pub async fn remove_member_destination(
        &self,
        userid: &UserId,
        name: ChannelName,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM member_destinations WHERE userid = $1 AND name = $2")
            .bind(userid.as_str())
            .bind(name.as_str())
            .execute(&self.pool)
            .await?
            .rows_affected();
        self.prefs_changed(userid);
        Ok(done > 0)
    }

    /// Unbinds the member's address on `channel`; `false` when none was bound.
    pub async fn unbind(&self, userid: &UserId, channel: ChannelName) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM member_bindings WHERE userid = $1 AND channel = $2")
            .bind(userid.as_str())
            .bind(channel.as_str())
            .execute(&self.pool)
            .await?
            .rows_affected();
        self.prefs_changed(userid);
        Ok(done > 0)
    }

    /// A new verification code for `address` on `channel`, unless the member or the
    /// address had `per_hour` codes for that channel in the last hour. The code replaces
    /// any earlier one (on any channel).
    pub async fn request_code(
        &self,
        userid: &UserId,
        channel: ChannelName,
        address: &str,
        now: UnixMillis,
        ttl: Duration,
        per_hour: u32,
    ) -> Result<CodeRequest, StoreError> {
        let since = now - CODE_RATE_WINDOW;
        // Addresses are compared case-blind (e-mail domains; phone numbers have no case).
        let folded = address.to_lowercase();
        let row = sqlx::query(
            "SELECT \
               (SELECT count(*) FROM binding_requests WHERE userid = $1 AND channel = $4 AND requested_at > $3) AS by_member, \
               (SELECT count(*) FROM binding_requests WHERE address = $2 AND channel = $4 AND requested_at > $3) AS by_address",
        )
        .bind(userid.as_str())
        .bind(&folded)
        .bind(since)
        .bind(channel.as_str())
        .fetch_one(&self.pool)
        .await?;
        let (by_member, by_address): (i64, i64) =
            (row.try_get("by_member")?, row.try_get("by_address")?);
        if by_member >= i64::from(per_hour) || by_address >= i64::from(per_hour) {
            return Ok(CodeRequest::TooMany);
        }
        // The member row is where the order and look live: make sure it exists.
        self.token_for(userid).await?;
        sqlx::query("DELETE FROM binding_requests WHERE requested_at <= $1")
            .bind(since)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO binding_requests (userid, channel, address, requested_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(userid.as_str())
        .bind(channel.as_str())
        .bind(&folded)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let code = format!("{:06}", rand::random_range(0..1_000_000u32));
        sqlx::query(
            "INSERT INTO binding_codes (userid, channel, address, code, expires_at, attempts_left) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (userid) DO UPDATE SET \
             channel = excluded.channel, address = excluded.address, code = excluded.code, \
             expires_at = excluded.expires_at, attempts_left = excluded.attempts_left",
        )
        .bind(userid.as_str())
        .bind(channel.as_str())
        .bind(address)
        .bind(&code)
        .bind(now + ttl)
        .bind(CODE_ATTEMPTS)
        .execute(&self.pool)
        .await?;
        Ok(CodeRequest::Created { code })
    }

    /// Checks a code the member typed; the right one, in time and within its tries, binds
    /// its address on its channel. Every check uses up one try (one statement, so
    /// concurrent guesses cannot share a try).
    pub async fn check_code(
        &self,
        userid: &UserId,
        typed: &str,
        now: UnixMillis,
    ) -> Result<CodeCheck, StoreError> {
        let row = sqlx::query(
            "UPDATE binding_codes SET attempts_left = attempts_left - 1 \
             WHERE userid = $1 AND attempts_left > 0 \
             RETURNING channel, address, code, expires_at, attempts_left",
        )
        .bind(userid.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            let spent = sqlx::query("SELECT 1 AS one FROM binding_codes WHERE userid = $1")
                .bind(userid.as_str())
                .fetch_optional(&self.pool)
                .await?;
            return Ok(if spent.is_some() {
                CodeCheck::Exhausted
            } else {
                CodeCheck::NoPending
            });
        };
        let channel: String = row.try_get("channel")?;
        let address: String = row.try_get("address")?;
        let code: String = row.try_get("code")?;
        let expires_at: UnixMillis = row.try_get("expires_at")?;
        let attempts_left: i64 = row.try_get("attempts_left")?;
        if expires_at <= now {
            self.delete_code(userid).await?;
            return Ok(CodeCheck::Expired);
        }
        let right: bool =
            subtle::ConstantTimeEq::ct_eq(code.as_bytes(), typed.trim().as_bytes()).into();
        if !right {
            return Ok(CodeCheck::Wrong { attempts_left });
        }
        let Ok(channel) = channel.parse::<ChannelName>() else {
            self.delete_code(userid).await?;
            return Err(StoreError::Corrupt(format!(
                "stored verification code for an unknown channel {channel:?}"
            )));
        };
        sqlx::query(
            "INSERT INTO member_bindings (userid, channel, address, verified_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (userid, channel) DO UPDATE SET \
             address = excluded.address, verified_at = excluded.verified_at",
        )
        .bind(userid.as_str())
        .bind(channel.as_str())
        .bind(&address)
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.prefs_changed(userid);
        self.delete_code(userid).await?;
        Ok(CodeCheck::Bound { channel, address })
    }

    async fn delete_code(&self, userid: &UserId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM binding_codes WHERE userid = $1")
            .bind(userid.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a charge (a text that costs money, about to be sent for message
    /// `out_id`) on `channel` for the member, unless the member had `per_member`, or
    /// everyone together `total`, in the last `span`: then nothing is kept and `Err`
    /// names the cap. Inserted first and counted after, so that concurrent charges (other
    /// lanes, other instances) can only both be refused, never both pass a cap with one
    /// place left.
    #[allow(clippy::too_many_arguments)]
    pub async fn charge(
        &self,
        channel: ChannelName,
        userid: &UserId,
        out_id: &str,
        now: UnixMillis,
        span: Duration,
        per_member: u32,
        total: u32,
    ) -> Result<Result<(), ChargeCap>, StoreError> {
        sqlx::query(
            "INSERT INTO charges (channel, userid, charged_at, out_id) VALUES ($1, $2, $3, $4)",
        )
        .bind(channel.as_str())
        .bind(userid.as_str())
        .bind(now)
        .bind(out_id)
        .execute(&self.pool)
        .await?;
        let since = now - span;
        let row = sqlx::query(
            "SELECT \
               (SELECT count(*) FROM charges WHERE channel = $1 AND userid = $2 AND charged_at > $3) AS by_member, \
               (SELECT count(*) FROM charges WHERE channel = $1 AND charged_at > $3) AS by_all",
        )
        .bind(channel.as_str())
        .bind(userid.as_str())
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        let (by_member, by_all): (i64, i64) = (row.try_get("by_member")?, row.try_get("by_all")?);
        let cap = if by_member > i64::from(per_member) {
            Some(ChargeCap::Member)
        } else if by_all > i64::from(total) {
            Some(ChargeCap::Server)
        } else {
            None
        };
        let Some(cap) = cap else { return Ok(Ok(())) };
        self.refund(channel, out_id).await?;
        Ok(Err(cap))
    }

    /// When the unsettled charge for `out_id` was made: a text that may have been sent
    /// (its send timed out, or the process died before its outcome was known).
    pub async fn unsettled_charge(
        &self,
        channel: ChannelName,
        out_id: &str,
    ) -> Result<Option<UnixMillis>, StoreError> {
        let row = sqlx::query(
            "SELECT max(charged_at) AS at FROM charges \
             WHERE channel = $1 AND out_id = $2 AND settled = 0",
        )
        .bind(channel.as_str())
        .bind(out_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<UnixMillis>, _>("at")?)
    }

    /// The text for `out_id` was surely sent: its charge stays, settled.
    pub async fn settle_charge(
        &self,
        channel: ChannelName,
        out_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE charges SET settled = 1 WHERE channel = $1 AND out_id = $2")
            .bind(channel.as_str())
            .bind(out_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The text for `out_id` surely was not sent: its unsettled charge is taken back.
    pub async fn refund(&self, channel: ChannelName, out_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM charges WHERE channel = $1 AND out_id = $2 AND settled = 0")
            .bind(channel.as_str())
            .bind(out_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets charges older than `before`.
    pub async fn prune_charges(&self, before: UnixMillis) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM charges WHERE charged_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

/// Which daily cap a charge met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeCap {
    /// `daily_limit_per_member`.
    Member,
    /// `daily_limit` (the whole server).
    Server,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/send`'s one read gives the same member and preferences as the separate reads, on
    /// each engine: channel order, look, quiet hours, offset, bindings (a channel this build
    /// does not know skipped) and destinations in order; an unknown token is nobody.
    async fn the_sender_and_their_preferences_read_together(store: &Store) {
        let alice = UserId::new("alice");
        let token = store.token_for(&alice).await.unwrap();
        let bob = UserId::new("bob");
        let bobs = store.token_for(&bob).await.unwrap();
        let order = Route::parse("email,wecom").unwrap();
        store.set_channels(&alice, Some(&order)).await.unwrap();
        store.set_look(&alice, Some(Look::Card)).await.unwrap();
        store
            .set_quiet(&alice, Some("22:00-07:00".parse().unwrap()))
            .await
            .unwrap();
        store.set_utc_offset(&alice, Some(3600)).await.unwrap();
        for (user, channel, address) in [
            ("alice", "sms", "+8613800138000"),
            ("alice", "email", "a@example.com"),
            ("alice", "no such channel!", "loft 3"),
            ("bob", "email", "b@example.com"),
        ] {
            sqlx::query(
                "INSERT INTO member_bindings (userid, channel, address, verified_at) \
                 VALUES ($1, $2, $3, 0)",
            )
            .bind(user)
            .bind(channel)
            .bind(address)
            .execute(&store.pool)
            .await
            .unwrap();
        }
        for name in ["zeta", "alpha"] {
            let destination = StoredDestination {
                name: name.parse().unwrap(),
                kind: "telegram".into(),
                address: "12345".into(),
                secret: None,
            };
            assert!(
                store
                    .add_member_destination(&alice, &destination)
                    .await
                    .unwrap()
            );
        }
        store.prefs_changed(&alice);
        store.prefs_changed(&bob);
        let prefs = store.member_prefs(&alice).await.unwrap();
        assert_eq!(prefs.channels, Some(order));
        assert_eq!(prefs.look, Some(Look::Card));
        assert!(prefs.quiet.is_some());
        assert_eq!(prefs.utc_offset, Some(3600));
        assert_eq!(
            prefs.bindings,
            [
                (ChannelName::Email, "a@example.com".to_owned()),
                (ChannelName::Sms, "+8613800138000".to_owned()),
            ]
        );
        let names: Vec<String> = prefs.destinations.iter().map(|d| d.to_string()).collect();
        assert_eq!(names, ["alpha", "zeta"]);
        // On PostgreSQL the token comes back to be checked again as the message is stored.
        let verify = (store.engine() == crate::store::Engine::Postgres).then(|| token.clone());
        assert_eq!(
            store.sender_by_token(&token).await.unwrap(),
            Some((alice.clone(), prefs, verify))
        );
        let (who, bob_prefs, _) = store.sender_by_token(&bobs).await.unwrap().unwrap();
        assert_eq!(who, bob);
        assert_eq!(bob_prefs, store.member_prefs(&bob).await.unwrap());
        assert_eq!(bob_prefs.bindings.len(), 1);
        assert!(bob_prefs.destinations.is_empty());
        let nobody = PushToken::new("x".repeat(token.expose().len()));
        assert_eq!(store.sender_by_token(&nobody).await.unwrap(), None);
        // A member without a row of their own still has the bindings stored for them.
        sqlx::query("DELETE FROM members WHERE userid = 'bob'")
            .execute(&store.pool)
            .await
            .unwrap();
        store.prefs_changed(&bob);
        assert_eq!(store.member_prefs(&bob).await.unwrap().bindings.len(), 1);
    }

    on_both_engines!(the_sender_and_their_preferences_read_together);
}
