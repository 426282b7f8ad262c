//! The web console's state (issue 22): one-time login links and sessions.
//!
//! Only SHA-256 hashes of the link tokens and session ids are stored, so that the database
//! (a backup, a read-only replica) never holds a usable link or cookie. Every query of a
//! member's data here is scoped by their userid.

use std::time::Duration;

use sha2::Digest as _;
use sqlx::Row as _;

use super::messages::MESSAGE_COLUMNS;
use super::{Engine, Message, MessageStatus, Store, StoreError};
use crate::domain::{MessageId, UserId};
use crate::time::UnixMillis;

/// Which of a member's messages the timeline shows, and from where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimelineFilter {
    /// Only messages older than this one (the previous page's last): keyset paging.
    pub before: Option<MessageId>,
    pub status: Option<MessageStatus>,
    /// Only messages that went, or were tried, on this channel (its stored name).
    pub channel: Option<String>,
    /// Only messages whose title or content contains this text (case-insensitive for
    /// ASCII letters; any script, Chinese included: a substring, not words).
    pub search: Option<String>,
}

/// `text` as a LIKE pattern that matches it anywhere: `\`, `%` and `_` escaped (with
/// `ESCAPE '\'`), so that they match themselves.
pub fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// What the one POST that uses a login link finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginUse {
    /// The link was good: it is used now, and logs this member in.
    LoggedIn(UserId),
    /// The link was used already (or is being used by another request right now).
    Used,
    /// The link is older than `console.login_ttl`.
    Expired,
    /// No such link (mistyped, cut short, or pruned).
    Unknown,
}

/// What a login link is, before it is used (the confirmation page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginLink {
    /// It can be used, by this member.
    Usable(UserId),
    Used,
    Expired,
    Unknown,
}

/// A console session as its cookie finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    pub userid: UserId,
    /// The token every form of the session carries (checked on every POST).
    pub csrf: String,
    pub expires_at: UnixMillis,
}

/// A new session: the cookie's value (a secret, only ever in the `Set-Cookie` header) and
/// the session's CSRF token.
#[derive(Clone)]
pub struct NewSession {
    pub id: String,
    pub csrf: String,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession").finish_non_exhaustive()
    }
}

/// SHA-256 of a link token or a session id, lower-case hex: what is stored.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

impl Store {
    /// A new one-time login link's token for `userid`, usable once within `ttl`.
    pub async fn create_console_login(
        &self,
        userid: &UserId,
        now: UnixMillis,
        ttl: Duration,
    ) -> Result<String, StoreError> {
        let token = crate::token::generate().expose().to_owned();
        sqlx::query(
            "INSERT INTO console_logins (token_hash, userid, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(secret_hash(&token))
        .bind(userid.as_str())
        .bind(now)
        .bind(now + ttl)
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// What the link with this token is, without using it (links are prefetched by chat
    /// apps: only the POST uses one).
    pub async fn console_login(
        &self,
        token: &str,
        now: UnixMillis,
    ) -> Result<LoginLink, StoreError> {
        let row = sqlx::query(
            "SELECT userid, expires_at, used_at FROM console_logins WHERE token_hash = $1",
        )
        .bind(secret_hash(token))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(LoginLink::Unknown);
        };
        if row.try_get::<Option<i64>, _>("used_at")?.is_some() {
            return Ok(LoginLink::Used);
        }
        if row.try_get::<i64, _>("expires_at")? <= now.as_millis() {
            return Ok(LoginLink::Expired);
        }
        Ok(LoginLink::Usable(UserId::new(
            &row.try_get::<String, _>("userid")?,
        )))
    }

    /// Uses the link with this token: one statement marks it used only if it is unused and
    /// not expired, so two requests racing with one link log in at most once.
    pub async fn use_console_login(
        &self,
        token: &str,
        now: UnixMillis,
    ) -> Result<LoginUse, StoreError> {
        let hash = secret_hash(token);
        let row = sqlx::query(
            "UPDATE console_logins SET used_at = $1 \
             WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING userid",
        )
        .bind(now)
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            return Ok(LoginUse::LoggedIn(UserId::new(
                &row.try_get::<String, _>("userid")?,
            )));
        }
        Ok(match self.console_login(token, now).await? {
            LoginLink::Used | LoginLink::Usable(_) => LoginUse::Used,
            LoginLink::Expired => LoginUse::Expired,
            LoginLink::Unknown => LoginUse::Unknown,
        })
    }

    /// Starts a session for `userid` lasting `ttl`.
    pub async fn create_console_session(
        &self,
        userid: &UserId,
        now: UnixMillis,
        ttl: Duration,
    ) -> Result<NewSession, StoreError> {
        let session = NewSession {
            id: crate::token::generate().expose().to_owned(),
            csrf: crate::token::page_key(),
        };
        sqlx::query(
            "INSERT INTO console_sessions (id_hash, userid, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(secret_hash(&session.id))
        .bind(userid.as_str())
        .bind(&session.csrf)
        .bind(now)
        .bind(now + ttl)
        .execute(&self.pool)
        .await?;
        Ok(session)
    }

    /// The session with this id (the cookie's value), unless it has expired or ended.
    pub async fn console_session(
        &self,
        id: &str,
        now: UnixMillis,
    ) -> Result<Option<ConsoleSession>, StoreError> {
        let row = sqlx::query(
            "SELECT userid, csrf, expires_at FROM console_sessions \
             WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(secret_hash(id))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(ConsoleSession {
                userid: UserId::new(&row.try_get::<String, _>("userid")?),
                csrf: row.try_get("csrf")?,
                expires_at: row.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    /// Ends the session with this id (logging out); answers whether there was one.
    pub async fn end_console_session(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
            .bind(secret_hash(id))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Ends every console session of the member (`logout` in the chat); answers how many.
    pub async fn end_console_sessions(&self, userid: &UserId) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM console_sessions WHERE userid = $1")
            .bind(userid.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Removes expired sessions and login links that can no longer be used (the hourly
    /// maintenance); answers how many rows went.
    pub async fn prune_console(&self, now: UnixMillis) -> Result<u64, StoreError> {
        let sessions = sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        let logins = sqlx::query("DELETE FROM console_logins WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(sessions.rows_affected() + logins.rows_affected())
    }
}

impl Store {
    /// The member's messages matching `filter`, newest first, at most `limit`.
    ///
    /// Keyset paging on `messages_by_member (userid, id)`: ids are UUIDv7, so `id <
    /// before ORDER BY id DESC` walks the index from where the last page ended, and the
    /// first page of a member with 100,000 messages costs what it costs with ten. The
    /// filters only skip rows along that walk; no index is added for them (every index is
    /// paid for on the write path).
    pub async fn console_timeline(
        &self,
        userid: &UserId,
        filter: &TimelineFilter,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let mut sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE userid = $1");
        let mut binds: Vec<String> = vec![userid.as_str().to_owned()];
        let next = |binds: &mut Vec<String>, value: String| {
            binds.push(value);
            binds.len()
        };
        if let Some(before) = &filter.before {
            let n = next(&mut binds, before.as_str().to_owned());
            sql.push_str(&format!(" AND id < ${n}"));
        }
        if let Some(status) = filter.status {
            let n = next(&mut binds, status.as_str().to_owned());
            sql.push_str(&format!(" AND status = ${n}"));
        }
        if let Some(channel) = &filter.channel {
            let n = next(&mut binds, channel.clone());
            sql.push_str(&format!(
                " AND (channel = ${n} OR EXISTS (SELECT 1 FROM attempts a \
                 WHERE a.message_id = messages.id AND a.channel = ${n}))"
            ));
        }
        if let Some(search) = &filter.search {
            let n = next(&mut binds, like_pattern(search));
            // SQLite's LIKE ignores the case of ASCII letters; PostgreSQL's ILIKE does
            // the same (and more).
            let like = match self.engine {
                Engine::Sqlite => "LIKE",
                Engine::Postgres => "ILIKE",
            };
            sql.push_str(&format!(
                " AND (title {like} ${n} ESCAPE '\\' OR content {like} ${n} ESCAPE '\\')"
            ));
        }
        // LIMIT as a literal (an integer): a bound LIMIT makes SQLite re-prepare.
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for value in &binds {
            query = query.bind(value.as_str());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(Message::from_row).collect()
    }

    /// The member's messages that resend the message `id`, oldest first.
    pub async fn resends_of(
        &self,
        userid: &UserId,
        id: &MessageId,
    ) -> Result<Vec<MessageId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM messages WHERE resent_from = $1 AND userid = $2 ORDER BY id",
        )
        .bind(id.as_str())
        .bind(userid.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(MessageId::from_stored).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.unwrap();
        (dir, store)
    }

    #[test]
    fn like_patterns_escape_the_wildcards() {
        assert_eq!(like_pattern("磁盘"), "%磁盘%");
        assert_eq!(like_pattern("100%_a\\b"), "%100\\%\\_a\\\\b%");
    }

    #[tokio::test]
    async fn a_login_link_logs_in_once_and_only_before_it_expires() {
        let (_dir, store) = store().await;
        let alice = UserId::new("alice");
        let now = UnixMillis::now();
        let ttl = Duration::from_secs(600);
        let token = store.create_console_login(&alice, now, ttl).await.unwrap();
        assert_eq!(
            store.console_login(&token, now).await.unwrap(),
            LoginLink::Usable(alice.clone())
        );
        // Looking does not use it.
        assert_eq!(
            store.use_console_login(&token, now).await.unwrap(),
            LoginUse::LoggedIn(alice.clone())
        );
        assert_eq!(
            store.use_console_login(&token, now).await.unwrap(),
            LoginUse::Used
        );
        let late = store.create_console_login(&alice, now, ttl).await.unwrap();
        let after = now + ttl;
        assert_eq!(
            store.use_console_login(&late, after).await.unwrap(),
            LoginUse::Expired
        );
        assert_eq!(
            store.use_console_login("nope", now).await.unwrap(),
            LoginUse::Unknown
        );
        // Only the hash is stored.
        let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM console_logins")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        assert!(!stored.contains(&token));
        assert!(stored.contains(&secret_hash(&token)));
        assert_eq!(store.prune_console(after).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn sessions_end_by_id_by_member_and_by_time() {
        let (_dir, store) = store().await;
        let alice = UserId::new("alice");
        let now = UnixMillis::now();
        let ttl = Duration::from_secs(60);
        let one = store
            .create_console_session(&alice, now, ttl)
            .await
            .unwrap();
        let two = store
            .create_console_session(&alice, now, ttl)
            .await
            .unwrap();
        let found = store.console_session(&one.id, now).await.unwrap().unwrap();
        assert_eq!(found.userid, alice);
        assert_eq!(found.csrf, one.csrf);
        assert!(
            store
                .console_session(&one.id, now + ttl)
                .await
                .unwrap()
                .is_none()
        );
        assert!(store.end_console_session(&one.id).await.unwrap());
        assert!(store.console_session(&one.id, now).await.unwrap().is_none());
        assert!(store.console_session(&two.id, now).await.unwrap().is_some());
        assert_eq!(store.end_console_sessions(&alice).await.unwrap(), 1);
        assert!(store.console_session(&two.id, now).await.unwrap().is_none());
    }
}
