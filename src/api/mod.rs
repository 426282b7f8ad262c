//! HTTP API: one module per route group, merged into one router here.

mod auth;
mod callback;
pub mod chat;
mod compat;
mod health;
mod messages;
pub mod rate_limit;
pub(crate) mod send;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;

use crate::delivery::Outbox;
use crate::store::Store;
use crate::wecom::crypto::WeComCrypto;

/// Largest `/send` request body accepted.
pub const MAX_SEND_BODY: usize = 1024 * 1024;

/// Shared by all handlers; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub outbox: Outbox,
    pub crypto: Arc<WeComCrypto>,
    pub corp_id: Arc<str>,
    /// `server.public_url` without trailing slash, for links in bot replies.
    pub public_base: Arc<str>,
    /// Oldest (or furthest in the future) callback timestamp accepted; zero = any.
    pub callback_max_age: std::time::Duration,
    /// `server.send_rate`, per member; see [`rate_limit::authorized_sender`].
    pub send_limiter: Arc<rate_limit::SendLimiter>,
    /// Verification codes, when `[email]` is configured.
    pub email_policy: Option<chat::EmailPolicy>,
    /// `delivery.utc_offset`, seconds east of UTC: what "today" means in `status`.
    pub utc_offset: i32,
}

/// The request path with anything shaped like a push token replaced, for logs.
pub fn redact_path(path: &str) -> String {
    compat::redact_path(path)
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(send::router().layer(DefaultBodyLimit::max(MAX_SEND_BODY)))
        .merge(messages::router())
        .merge(callback::router())
        .merge(compat::router().layer(DefaultBodyLimit::max(MAX_SEND_BODY)))
        .merge(health::router())
        .fallback(health::not_found)
        // After all routes: applies to every route that has no fallback of its own.
        .method_not_allowed_fallback(health::method_not_allowed)
        .with_state(state)
}
