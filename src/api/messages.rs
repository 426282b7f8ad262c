//! `GET /messages/{id}` and `GET /messages`: the state of a member's messages, so that a
//! failure is visible to the sender, not only in the server log. `DELETE /messages/{id}`
//! cancels one that has not gone out (issue 21).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{AppState, auth};
use crate::domain::Format;
use crate::error::ApiError;
use crate::metrics::TokenRoute;
use crate::store::{AttemptRecord, CancelOutcome, Held, Message, MessageStatus, StoredChannel};
use crate::time::UnixMillis;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/messages/{id}", get(show).delete(cancel))
        .route("/messages", get(list))
}

/// Most messages one listing returns.
const MAX_LIST: i64 = 100;
const DEFAULT_LIST: i64 = 20;

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

#[derive(Deserialize)]
struct ListQuery {
    token: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    /// Message id from a previous page: only older messages are listed.
    before: Option<String>,
}

#[derive(Serialize)]
struct One {
    ok: bool,
    #[serde(flatten)]
    message: MessageView,
    /// The message's page (the full text, readable in a browser).
    #[serde(skip_serializing_if = "Option::is_none")]
    page: Option<String>,
    /// Every attempt, oldest first; a delivered message ends with its delivery.
    history: Vec<AttemptView>,
    /// Its images and files, in the order they are sent; absent when it has none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attachments: Vec<AttachmentView>,
}

#[derive(Serialize)]
struct AttachmentView {
    filename: Option<String>,
    /// `image` or `file`: how it goes to WeCom (an image message, or a file).
    kind: &'static str,
    size: u64,
    /// Sniffed from its bytes, never the sender's word.
    mime: String,
    /// SHA-256 of its bytes, lower-case hex.
    sha256: String,
}

/// A message's attachments with what is stored of each (a blob that is gone — never, while
/// its message is kept — is left out).
async fn attachments(
    state: &AppState,
    id: &crate::domain::MessageId,
) -> Result<Vec<AttachmentView>, ApiError> {
    let mut views = Vec::new();
    for attachment in state.store.attachments_of(id).await? {
        if let Some(blob) = state.store.blob_info(&attachment.blob_id).await? {
            views.push(AttachmentView {
                filename: attachment.filename,
                kind: attachment.kind.as_str(),
                size: blob.size,
                mime: blob.mime,
                sha256: blob.sha256,
            });
        }
    }
    Ok(views)
}

#[derive(Serialize)]
struct AttemptView {
    channel: StoredChannel,
    at: String,
    /// `retry` (a transient failure), `failed` (the channel gave up), `delivered`.
    outcome: String,
    error: Option<String>,
    /// Which part a `delivered` attempt was, of a message sent part by part
    /// (`part 1 of 3 (text)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// The stored attempts, then the delivery itself, which is stored only in the message row
/// (a message delivered at once costs no history row) — except for `all`, whose every
/// delivery is an attempt row of its own.
fn history(m: &Message, attempts: Vec<AttemptRecord>) -> Vec<AttemptView> {
    let mut views: Vec<AttemptView> = attempts
        .into_iter()
        .map(|a| {
            // A delivered attempt's text is no error: it says which part went out.
            let (error, note) = if a.outcome == "delivered" {
                (None, a.error)
            } else {
                (a.error, None)
            };
            AttemptView {
                channel: a.channel,
                at: rfc3339(a.at),
                outcome: a.outcome,
                error,
                note,
            }
        })
        .collect();
    if m.status == MessageStatus::Delivered
        && !m.deliver_all
        && let (Some(channel), Some(at)) = (&m.channel, m.delivered_at)
    {
        views.push(AttemptView {
            channel: StoredChannel::parse(channel.clone()),
            at: rfc3339(at),
            outcome: "delivered".to_owned(),
            error: None,
            note: None,
        });
    }
    views
}

#[derive(Serialize)]
struct Page {
    ok: bool,
    messages: Vec<MessageView>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    next_before: Option<String>,
}

#[derive(Serialize)]
struct MessageView {
    id: String,
    title: Option<String>,
    /// `text` or `markdown`.
    format: Format,
    status: MessageStatus,
    attempts: i64,
    last_error: Option<String>,
    channel: Option<String>,
    created_at: String,
    updated_at: String,
    delivered_at: Option<String>,
    /// When the next attempt is due (queued messages only).
    next_attempt_at: Option<String>,
    /// When it is (or was) due, for a message scheduled by its sender (`delay`/`at`) or
    /// held by quiet hours; absent for a message due when it was accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    deliver_at: Option<String>,
    /// Why a scheduled message waits, when it is not the sender's schedule (`quiet`).
    #[serde(skip_serializing_if = "Option::is_none")]
    held: Option<Held>,
    /// The sender marked it urgent (present only then).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    urgent: bool,
    /// The digest that carried it, when it was delivered as part of one.
    via: Option<String>,
    /// The channels still to try, the current one first (scheduled and queued messages
    /// only).
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<String>,
}

impl From<Message> for MessageView {
    fn from(m: Message) -> Self {
        Self {
            title: m.title,
            format: m.format,
            status: m.status,
            attempts: m.attempts,
            last_error: m.last_error,
            channel: m.channel,
            created_at: rfc3339(m.created_at),
            updated_at: rfc3339(m.updated_at),
            delivered_at: m.delivered_at.map(rfc3339),
            next_attempt_at: (m.status == MessageStatus::Queued)
                .then(|| rfc3339(m.next_attempt_at)),
            deliver_at: m.deliver_at.map(rfc3339),
            held: m.held.filter(|_| m.status == MessageStatus::Scheduled),
            urgent: m.urgent,
            via: m.via,
            route: (!m.status.is_final()).then(|| m.route.to_stored()),
            id: m.id.to_string(),
        }
    }
}

pub(crate) fn rfc3339(at: UnixMillis) -> String {
    humantime::format_rfc3339_millis(at.to_system_time()).to_string()
}

async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<One>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let query_token = query.token.as_deref();
    let userid = auth::member(
        &state,
        auth::find_token(&headers, &[query_token]),
        TokenRoute::Status,
    )
    .await?;
    // Someone else's message is reported exactly like a missing one.
    show_one(&state, &userid, &id).await
}

/// `DELETE /messages/{id}`: the owner cancels a message that has not gone out — a
/// scheduled one, or a queued one no attempt is working on — and gets it back as `GET`
/// shows it, `"status":"cancelled"`. Someone else's message is the same 404 as an unknown
/// one; one that went out (or may be going out right now) is a 409 saying why.
async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<One>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let userid = auth::member(
        &state,
        auth::find_token(&headers, &[query.token.as_deref()]),
        TokenRoute::Status,
    )
    .await?;
    let shown: String = id.chars().take(64).collect();
    match state.store.cancel(&userid, &id, UnixMillis::now()).await? {
        CancelOutcome::Cancelled { was } => {
            state.metrics.cancelled();
            tracing::info!(userid = %userid, id = %shown, was = was.as_str(), "message cancelled by its sender");
        }
        CancelOutcome::NotFound => {
            return Err(ApiError::NotFound(format!(
                "no message {shown} for this token"
            )));
        }
        CancelOutcome::Final(MessageStatus::Delivered) => {
            return Err(ApiError::Conflict(format!(
                "message {shown} was delivered already: it cannot be cancelled"
            )));
        }
        CancelOutcome::Final(MessageStatus::Cancelled) => {
            return Err(ApiError::Conflict(format!(
                "message {shown} is cancelled already"
            )));
        }
        CancelOutcome::Final(status) => {
            return Err(ApiError::Conflict(format!(
                "message {shown} has {} already: there is nothing left to cancel",
                status.as_str()
            )));
        }
        CancelOutcome::InFlight => {
            return Err(ApiError::Conflict(format!(
                "message {shown} is being delivered right now (it may have gone out \
                 already): it cannot be cancelled now; look again in a few seconds"
            )));
        }
        CancelOutcome::PartlyDelivered => {
            return Err(ApiError::Conflict(format!(
                "part of message {shown} was delivered already (its text before its files, \
                 or one of its channels): it cannot be cancelled"
            )));
        }
    }
    show_one(&state, &userid, &id).await
}

/// The member's message as `GET /messages/{id}` shows it.
async fn show_one(
    state: &AppState,
    userid: &crate::domain::UserId,
    id: &str,
) -> Result<Json<One>, ApiError> {
    match state.store.message(id).await? {
        Some(m) if m.userid == *userid => {
            let attempts = state.store.attempts_of(&m.id).await?;
            let attachments = attachments(state, &m.id).await?;
            let page = m
                .page_key
                .as_deref()
                .map(|key| m.id.page_url(&state.public_base, key));
            Ok(Json(One {
                ok: true,
                page,
                history: history(&m, attempts),
                attachments,
                message: m.into(),
            }))
        }
        _ => Err(ApiError::NotFound(format!(
            "no message {id} for this token"
        ))),
    }
}

fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::BadRequest(format!("invalid query string: {}", e.body_text()))
}

/// The token owner's messages, newest first: `?status=failed&limit=20&before=<id>`
/// (`status`: scheduled, queued, delivered, failed or cancelled).
async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let userid = auth::member(
        &state,
        auth::find_token(&headers, &[query.token.as_deref()]),
        TokenRoute::Status,
    )
    .await?;
    let status = query
        .status
        .as_deref()
        .map(str::parse::<MessageStatus>)
        .transpose()
        .map_err(|_| {
            let names: Vec<&str> = MessageStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::BadRequest(format!("status must be one of {}", names.join(", ")))
        })?;
    let limit = query.limit.unwrap_or(DEFAULT_LIST);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIST}"
        )));
    }
    // One extra row tells whether there is a next page.
    let mut rows = state
        .store
        .messages_of(&userid, status, query.before.as_deref(), limit + 1)
        .await?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_before = more
        .then(|| rows.last().map(|m| m.id.to_string()))
        .flatten();
    Ok(Json(Page {
        ok: true,
        messages: rows.into_iter().map(MessageView::from).collect(),
        next_before,
    }))
}
