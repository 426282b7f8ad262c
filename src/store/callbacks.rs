//! WeCom callback de-duplication: WeCom retries a callback it got no answer for; each is
//! processed once and the first reply is kept so that a retry gets the same answer.

use sqlx::Row as _;

use super::{Store, StoreError};
use crate::time::UnixMillis;

/// Result of claiming a WeCom callback for processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackClaim {
    /// First time we see it: process it, then call [`Store::complete_callback`].
    New,
    /// Seen before; the stored reply (if the first run finished) should be sent again.
    Seen(Option<String>),
}

impl Store {
    /// Marks a callback as being processed, or reports that it was seen before.
    pub async fn claim_callback(&self, key: &str) -> Result<CallbackClaim, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO callbacks (dedup_key, reply, created_at) VALUES ($1, NULL, $2) \
             ON CONFLICT (dedup_key) DO NOTHING",
        )
        .bind(key)
        .bind(UnixMillis::now())
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(CallbackClaim::New);
        }
        Ok(CallbackClaim::Seen(self.callback_reply(key).await?))
    }

    /// The stored reply of a callback seen before, if its first run has finished.
    pub async fn callback_reply(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query("SELECT reply FROM callbacks WHERE dedup_key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?
                .map(|row| row.try_get::<Option<String>, _>("reply"))
                .transpose()?
                .flatten(),
        )
    }

    /// Stores the reply sent for a callback so that WeCom's retries get the same one.
    pub async fn complete_callback(
        &self,
        key: &str,
        reply: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE callbacks SET reply = $1 WHERE dedup_key = $2")
            .bind(reply)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Drops a claim whose processing failed, so WeCom's retry is processed afresh.
    pub async fn release_callback(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM callbacks WHERE dedup_key = $1 AND reply IS NULL")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets callbacks older than `before_ms` (WeCom retries within seconds).
    pub async fn prune_callbacks(&self, before_ms: UnixMillis) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM callbacks WHERE created_at < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}
