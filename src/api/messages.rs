//! `GET /messages/{id}`: the state of one message, for the member who sent it.

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{AppState, auth};
use crate::error::ApiError;
use crate::store::{Message, MessageStatus};

pub fn router() -> Router<AppState> {
    Router::new().route("/messages/{id}", get(show))
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

#[derive(Serialize)]
struct MessageView {
    ok: bool,
    id: String,
    status: MessageStatus,
    attempts: i64,
    last_error: Option<String>,
    channel: Option<String>,
    created_at: String,
    updated_at: String,
    delivered_at: Option<String>,
    /// When the next attempt is due (queued messages only).
    next_attempt_at: Option<String>,
}

impl From<Message> for MessageView {
    fn from(m: Message) -> Self {
        Self {
            ok: true,
            status: m.status,
            attempts: m.attempts,
            last_error: m.last_error,
            channel: m.channel,
            created_at: rfc3339(m.created_at),
            updated_at: rfc3339(m.updated_at),
            delivered_at: m.delivered_at.map(rfc3339),
            next_attempt_at: (m.status == MessageStatus::Queued)
                .then(|| rfc3339(m.next_attempt_at)),
            id: m.id,
        }
    }
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<MessageView>, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))?;
    let query_token = query.token.as_deref();
    let userid = auth::member(&state, auth::find_token(&headers, &[query_token])).await?;
    // Someone else's message is reported exactly like a missing one.
    match state.store.message(&id).await? {
        Some(m) if m.userid == userid => Ok(Json(m.into())),
        _ => Err(ApiError::NotFound(format!(
            "no message {id} for this token"
        ))),
    }
}
