//! HTTP API: one module per route group, merged into one router here.

mod attach;
pub(crate) mod auth;
mod callback;
pub mod chat;
mod compat;
pub mod console;
mod group_send;
pub(crate) mod groups;
mod health;
pub(crate) mod messages;
pub mod metrics;
mod page;
pub mod rate_limit;
pub mod refused;
pub(crate) mod send;
mod when;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;

use crate::delivery::Outbox;
use crate::store::Store;
use crate::wecom::crypto::WeComCrypto;

/// Largest `/send` request body accepted: 1 MiB, or room for `server.max_content_bytes`
/// percent-encoded in a form (CJK text triples) when that is larger.
pub fn max_send_body(max_content_bytes: usize) -> usize {
    (1024 * 1024).max(
        max_content_bytes
            .saturating_mul(3)
            .saturating_add(64 * 1024),
    )
}

/// Shared by all handlers; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub outbox: Outbox,
    pub crypto: Arc<WeComCrypto>,
    pub corp_id: Arc<str>,
    /// `wecom.agent_id`: a callback's inner AgentID, when it has one, must be this.
    pub agent_id: i64,
    /// `server.public_url` without trailing slash, for links in bot replies.
    pub public_base: Arc<str>,
    /// Oldest (or furthest in the future) callback timestamp accepted; zero = any.
    pub callback_max_age: std::time::Duration,
    /// `server.send_rate`, per member and per group; see [`rate_limit::authorized_sender`].
    pub send_limiter: Arc<rate_limit::SendLimiter>,
    /// `delivery.utc_offset`, seconds east of UTC: what "today" means in `status`, and
    /// where quiet hours are kept, for members who set no offset of their own.
    pub utc_offset: i32,
    /// `delivery.quiet_hours`: for members who set none of their own.
    pub quiet_hours: Option<crate::delivery::quiet::QuietHours>,
    /// `server.max_content_bytes`.
    pub max_content_bytes: usize,
    /// `[ack]`: the shortest `escalate=`, and which compat and alert messages ask to be
    /// acknowledged.
    pub ack: Arc<crate::config::AckSettings>,
    /// `storage.retention`: a page older than this is gone (410).
    pub retention: Option<std::time::Duration>,
    /// What is counted for `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// `server.metrics`, `server.metrics_token`.
    pub metrics_access: metrics::MetricsAccess,
    /// Refused push tokens, summed up in the log per client address.
    pub refused: Arc<refused::RefusedTokens>,
    /// `[media]`: what images and files a message may carry, and the fetcher for
    /// `image_url` and its kin.
    pub media: MediaState,
    /// `[console]` and where the console is.
    pub console: console::ConsoleState,
    /// `[groups]`: the limits groups and their members live within.
    pub groups: crate::groups::Limits,
    /// The WeCom-backed groups (`[[groups.wecom]]`): the send path calls
    /// `wecom_groups.refresh_if_stale(&group.id)` before it takes a group's membership.
    pub wecom_groups: crate::wecom_groups::WecomGroups,
    /// The escalation loop (issue 30), for `/healthz`.
    pub escalation: crate::delivery::escalate::Escalation,
    /// The settings this server runs with: the operators' page runs the doctor's checks
    /// against them (`crate::doctor::run_loaded`). Never rendered as such.
    pub running_config: Arc<crate::config::Settings>,
}

/// What the API needs of `[media]`.
#[derive(Clone)]
pub struct MediaState {
    /// Fetches senders' URLs (`image_url`, `file_url`, …) within `media.*`.
    pub fetcher: crate::media::Fetcher,
    /// `media.max_bytes`, `media.total_bytes`.
    pub limits: crate::store::BlobLimits,
    /// `media.max_files`.
    pub max_files: u32,
}

impl MediaState {
    /// Largest `/send` body with files: every file at its largest, plus the text fields'
    /// own limit ([`max_send_body`]).
    pub fn max_upload_body(&self, max_content_bytes: usize) -> usize {
        let files = self
            .limits
            .max_bytes
            .saturating_mul(u64::from(self.max_files));
        usize::try_from(files)
            .unwrap_or(usize::MAX)
            .saturating_add(max_send_body(max_content_bytes))
    }
}

/// The request path with anything shaped like a push token replaced, for logs.
pub fn redact_path(path: &str) -> String {
    compat::redact_path(path)
}

pub fn router(state: AppState) -> Router {
    let body_limit = max_send_body(state.max_content_bytes);
    // Multipart bodies with files may be this large; `/send` reads JSON and form bodies
    // with `body_limit` itself, and multipart text fields within it too.
    let upload_limit = state.media.max_upload_body(state.max_content_bytes);
    Router::new()
        .merge(send::router().layer(DefaultBodyLimit::max(upload_limit)))
        .merge(messages::router())
        .merge(groups::router())
        .merge(page::router())
        .merge(callback::router())
        .merge(compat::router().layer(DefaultBodyLimit::max(body_limit)))
        .merge(health::router())
        .merge(metrics::router())
        .merge(console::router())
        .fallback(health::not_found)
        // After all routes: applies to every route that has no fallback of its own.
        .method_not_allowed_fallback(health::method_not_allowed)
        .layer(axum::middleware::from_fn(refused::with_client))
        .with_state(state)
}

/// Whether a request carries files (a multipart body, an ntfy file body): it may take up to
/// `media.upload_timeout` rather than the 30 seconds every other request has.
pub fn carries_files<B>(req: &axum::http::Request<B>) -> bool {
    let multipart = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .get(..19)
                .is_some_and(|e| e.eq_ignore_ascii_case("multipart/form-data"))
        });
    multipart || compat::ntfy::body_is_file(req.headers(), req.uri().query())
}
