//! Members and their push tokens.

use std::collections::HashMap;

use sqlx::Row as _;

use super::{Store, StoreError, now_ms};
use crate::domain::{PushToken, UserId};

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
                if let Some(userid) = cache.owners.get(token) {
                    return Ok(Some(userid.clone()));
                }
                cache.rotations
            }
            Err(_) => u64::MAX,
        };
        let row = sqlx::query("SELECT userid FROM members WHERE token = $1")
            .bind(token.expose())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let userid = UserId::new(&row.try_get::<String, _>("userid")?);
        self.cache_token(token, &userid, generation);
        Ok(Some(userid))
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
                .bind(now_ms())
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
    /// One upsert statement rather than read-then-write in a transaction: on SQLite a
    /// deferred transaction that reads first cannot wait for the write lock, and the outbox
    /// writer holds it often under load.
    pub async fn rotate_token(&self, userid: &UserId) -> Result<PushToken, StoreError> {
        let now = now_ms();
        let new_token = crate::token::generate();
        sqlx::query(
            "INSERT INTO members (userid, token, created_at, token_created_at) \
             VALUES ($1, $2, $3, $3) ON CONFLICT (userid) DO UPDATE \
             SET token = excluded.token, token_created_at = excluded.token_created_at",
        )
        .bind(userid.as_str())
        .bind(new_token.expose())
        .bind(now)
        .execute(&self.pool)
        .await?;
        if let Ok(mut cache) = self.tokens.write() {
            cache.rotations += 1;
            cache.owners.retain(|_, owner| owner != userid);
            cache.owners.insert(new_token.clone(), userid.clone());
        }
        Ok(new_token)
    }

    /// Caches a lookup made when the rotation counter was `generation`, unless a rotation
    /// has committed since (then the value read may already be revoked).
    pub(super) fn cache_token(&self, token: &PushToken, userid: &UserId, generation: u64) {
        if let Ok(mut cache) = self.tokens.write()
            && cache.rotations == generation
        {
            cache.owners.insert(token.clone(), userid.clone());
        }
    }
}
