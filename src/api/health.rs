//! Liveness/readiness and the JSON 404.

use axum::extract::State;
use axum::http::header::RETRY_AFTER;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use std::time::Duration;

use super::AppState;
use crate::domain::ChannelName;
use crate::error::ApiError;
use crate::time::UnixMillis;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/", get(index))
}

/// What `/healthz` and `/metrics` say about delivery.
pub struct Delivery {
    /// Since the scheduler loop last began a pass.
    pub pass_age: Duration,
    /// `delivery.stall_after`: beyond it, delivery counts as stopped.
    pub stall_after: Duration,
    /// Per configured channel, how long the oldest message that could be sent now has
    /// waited (seconds; 0 when none); `None` when the database could not say.
    pub oldest_due: Option<Vec<(ChannelName, f64)>>,
}

impl Delivery {
    pub async fn read(state: &AppState) -> Self {
        let (pass_age, stall_after) = state.outbox.scheduler_pass();
        let oldest_due = match state.store.oldest_due(UnixMillis::now()).await {
            Ok(found) => Some(
                state
                    .outbox
                    .channels()
                    .iter()
                    .map(|c| {
                        let age = found
                            .iter()
                            .find(|(f, _)| f == c)
                            .map_or(Duration::ZERO, |(_, a)| *a);
                        (*c, age.as_secs_f64())
                    })
                    .collect(),
            ),
            Err(err) => {
                tracing::debug!(error = %crate::error::chain(&err), "could not read the oldest due message");
                None
            }
        };
        Self {
            pass_age,
            stall_after,
            oldest_due,
        }
    }

    pub fn stalled(&self) -> bool {
        self.pass_age > self.stall_after
    }
}

/// 200 when the database (the SQLite file still there, or PostgreSQL reachable) takes
/// reads and writes and the delivery scheduler runs; 503 otherwise. Both name the engine
/// and give the scheduler's last pass age and, per channel, the oldest due message's wait;
/// a 503 says which of the two failed, not the storage error itself (that is logged).
async fn healthz(State(state): State<AppState>) -> Response {
    let engine = state.store.engine().as_str();
    let storage = state.store.check_health().await;
    let delivery = Delivery::read(&state).await;
    let mut body = json!({
        "status": "ok",
        "storage": engine,
        "scheduler": {
            "last_pass_seconds_ago": round_ms(delivery.pass_age.as_secs_f64()),
            "stall_after_seconds": delivery.stall_after.as_secs_f64(),
        },
        "oldest_due_seconds": delivery.oldest_due.as_ref().map(|oldest| {
            oldest
                .iter()
                .map(|(c, age)| (c.as_str().to_owned(), json!(round_ms(*age))))
                .collect::<serde_json::Map<_, _>>()
        }),
    });
    // The WeCom-backed groups' refresh loop (`[[groups.wecom]]`): its last pass, its
    // panics (each restarted it), and the groups WeCom last refused.
    let group_refresh = state.wecom_groups.health();
    if let Some(health) = &group_refresh {
        body["groups_refresh"] = json!({
            "groups": health.groups,
            "last_pass_seconds_ago": round_ms(health.last_pass_age.as_secs_f64()),
            "refresh_seconds": health.refresh.as_secs_f64(),
            "panics": health.panics,
            // Names only: anyone who can reach the port reads this; what to grant is in
            // the log and `pushbot doctor`.
            "refused": health.refused.keys().collect::<Vec<_>>(),
        });
    }
    // The escalation loop (issue 30): its last pass and its panics (each restarted it).
    let (escalation_age, escalation_panics) = state.escalation.health();
    body["escalation"] = json!({
        "last_pass_seconds_ago": escalation_age.map(|age| round_ms(age.as_secs_f64())),
        "panics": escalation_panics,
    });
    let escalation_stalled =
        escalation_age.is_some_and(|age| age > crate::delivery::escalate::STALL_AFTER);
    let problem = match storage {
        // The cause names the database file or server (a path, a host, a user): the log and
        // `pushbot doctor` say it, the wire only that storage is down — anyone who can reach
        // the port can read this answer.
        Err(err) => {
            tracing::error!(error = %crate::error::chain(&err), "health check failed");
            Some(STORAGE_UNAVAILABLE.to_owned())
        }
        Ok(()) if delivery.stalled() => {
            let message = format!(
                "delivery has stopped: the scheduler has not run for {} s (delivery.stall_after is {}); \
                 accepted messages are not being sent",
                delivery.pass_age.as_secs(),
                humantime::format_duration(delivery.stall_after)
            );
            tracing::error!("{message}");
            Some(message)
        }
        Ok(()) if escalation_stalled => {
            let message = format!(
                "escalation has stopped: its loop has not run for {} s; messages that ask to be \
                 acknowledged are not escalated",
                escalation_age.unwrap_or_default().as_secs()
            );
            tracing::error!("{message}");
            Some(message)
        }
        Ok(()) => group_refresh.filter(|h| h.stalled()).map(|h| {
            let message = format!(
                "the WeCom-backed groups' refresh loop has not run for {} s (groups.refresh is {}); \
                 their members are not being read from WeCom",
                h.last_pass_age.as_secs(),
                humantime::format_duration(h.refresh)
            );
            tracing::error!("{message}");
            message
        }),
    };
    match problem {
        None => Json(body).into_response(),
        Some(message) => {
            body["status"] = json!("unavailable");
            body["message"] = json!(message);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(RETRY_AFTER, "5")],
                Json(body),
            )
                .into_response()
        }
    }
}

/// `/healthz`'s whole message when storage fails; the cause is in the log.
const STORAGE_UNAVAILABLE: &str =
    "storage unavailable; the server log (or pushbot doctor) says why";

/// Seconds to the millisecond (a stable, readable figure).
fn round_ms(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

async fn index() -> Json<serde_json::Value> {
    Json(json!({ "name": "pushbot", "version": env!("CARGO_PKG_VERSION") }))
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// A known path with a method it does not serve; axum adds the `Allow` header.
pub async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{method} is not allowed here; see the Allow header"
    ))
}
