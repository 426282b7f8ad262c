//! `GET /messages/{id}` and `GET /messages`: the state of a member's messages, so that a
//! failure is visible to the sender, not only in the server log. `DELETE /messages/{id}`
//! cancels one that has not gone out (issue 21); `POST /messages/{id}/resend` sends a
//! failed or cancelled one again as a new message that names it (issue 22).
//!
//! [`cancel_message`], [`resend_message`], [`history`] and [`attachments`] are the console's
//! too (`crate::api::console`): one implementation behind both.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{AppState, auth};
use crate::delivery::{Accepted, NewMessage};
use crate::domain::{ChannelName, Format, Route, UserId};
use crate::error::ApiError;
use crate::metrics::TokenRoute;
use crate::store::{AttemptRecord, CancelOutcome, Held, Message, MessageStatus, StoredChannel};
use crate::time::UnixMillis;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/messages/{id}", get(show).delete(cancel))
        .route("/messages/{id}/resend", post(resend))
        .route("/messages/{id}/ack", post(ack))
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
    /// The messages that send it again (`POST /messages/{id}/resend`), oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    resent_as: Vec<String>,
    /// Its acknowledgement, when it asks for one (`ack=true`, `escalate=…`) or is the
    /// escalation of one that does.
    #[serde(skip_serializing_if = "Option::is_none")]
    ack: Option<AckView>,
}

/// A message's acknowledgement and escalation, as `GET /messages/{id}` shows them.
#[derive(Serialize)]
struct AckView {
    required: bool,
    /// The message that asked (for the escalation's own message: the one it escalated).
    message: String,
    acked_at: Option<String>,
    acked_by: Option<String>,
    /// `api`, `chat`, `page` or `card`.
    via: Option<String>,
    /// When it is (or was) escalated if nobody acknowledges; absent without `escalate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    escalate_at: Option<String>,
    /// The escalation step, once taken: when, and the message it sent (none when the member
    /// had no other channel).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    escalations: Vec<EscalationView>,
}

#[derive(Serialize)]
struct EscalationView {
    step: i64,
    at: Option<String>,
    message: Option<String>,
}

impl From<crate::store::AckRecord> for AckView {
    fn from(r: crate::store::AckRecord) -> Self {
        let escalations = if r.step > 0 {
            vec![EscalationView {
                step: r.step,
                at: r.escalated_at.map(rfc3339),
                message: r.escalated_as.map(|id| id.to_string()),
            }]
        } else {
            Vec::new()
        };
        Self {
            required: true,
            message: r.message_id.to_string(),
            acked_at: r.acked_at.map(rfc3339),
            acked_by: r.acked_by,
            via: r.via,
            escalate_at: r.escalate_at.map(rfc3339),
            escalations,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct AttachmentView {
    pub(crate) filename: Option<String>,
    /// `image` or `file`: how it goes to WeCom (an image message, or a file).
    pub(crate) kind: &'static str,
    pub(crate) size: u64,
    /// Sniffed from its bytes, never the sender's word.
    pub(crate) mime: String,
    /// SHA-256 of its bytes, lower-case hex.
    pub(crate) sha256: String,
}

/// A message's attachments with what is stored of each (a blob that is gone — never, while
/// its message is kept — is left out).
pub(crate) async fn attachments(
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
pub(crate) struct AttemptView {
    pub(crate) channel: StoredChannel,
    pub(crate) at: String,
    /// `retry` (a transient failure), `failed` (the channel gave up), `delivered`.
    pub(crate) outcome: String,
    pub(crate) error: Option<String>,
    /// Which part a `delivered` attempt was, of a message sent part by part
    /// (`part 1 of 3 (text)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
}

/// The stored attempts, then the delivery itself, which is stored only in the message row
/// (a message delivered at once costs no history row) — except for `all`, whose every
/// delivery is an attempt row of its own.
pub(crate) fn history(m: &Message, attempts: Vec<AttemptRecord>) -> Vec<AttemptView> {
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
    /// The message this one sends again (a resend).
    #[serde(skip_serializing_if = "Option::is_none")]
    resent_from: Option<String>,
    /// The group it was sent to, as named then: this is the member's copy of a group
    /// message (issue 29).
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
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
            resent_from: m.resent_from.map(|id| id.to_string()),
            group: None,
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
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    let Query(query) = query.map_err(bad_query)?;
    let token = auth::find_token(&headers, &[query.token.as_deref()]);
    match auth::token_owner(&state, token, TokenRoute::Status).await? {
        // Someone else's message is reported exactly like a missing one.
        auth::Sender::Member(userid, ..) => {
            Ok(show_one(&state, &userid, &id).await?.into_response())
        }
        auth::Sender::Group(group) => Ok(show_group(&state, &group, &id).await?.into_response()),
    }
}

/// A group message as its sender follows it (issue 29).
#[derive(Serialize)]
struct GroupOne {
    ok: bool,
    id: String,
    /// The group's name when it was sent.
    group: String,
    /// `queued` while any copy waits (queued or scheduled); then `delivered` when every
    /// copy meant to go out did, `failed` when none did, `partial` otherwise. Muted
    /// copies and those of members who left are not meant to go out.
    status: &'static str,
    created_at: String,
    title: Option<String>,
    /// One per member it was taken for, in the group's join order.
    recipients: Vec<RecipientView>,
}

#[derive(Serialize)]
struct RecipientView {
    member: String,
    status: MessageStatus,
    /// The channel(s) that delivered it.
    channel: Option<String>,
    delivered_at: Option<String>,
    last_error: Option<String>,
}

/// The overall status of a group message from its copies' (see [`GroupOne::status`]).
pub(super) fn group_status(copies: &[MessageStatus]) -> &'static str {
    if copies.iter().any(|s| !s.is_final()) {
        return "queued";
    }
    let meant: Vec<MessageStatus> = copies
        .iter()
        .copied()
        .filter(|s| !matches!(s, MessageStatus::Muted | MessageStatus::Left))
        .collect();
    let delivered = meant
        .iter()
        .filter(|s| **s == MessageStatus::Delivered)
        .count();
    if delivered == 0 {
        // Nobody got it (also when every member muted the group or left).
        "failed"
    } else if delivered == meant.len() {
        "delivered"
    } else {
        "partial"
    }
}

/// `GET /messages/{id}` with a group's token: the group message and each recipient's copy.
/// Another group's message, or a member's, is the same 404 as an unknown one.
async fn show_group(
    state: &AppState,
    group: &crate::store::GroupRef,
    id: &str,
) -> Result<Json<GroupOne>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no message {id} for this token"));
    let send = match state.store.group_send(id).await? {
        Some(send) if send.group_id == group.id => send,
        _ => return Err(not_found()),
    };
    let copies = state.store.group_copies(&send.id).await?;
    let statuses: Vec<MessageStatus> = copies.iter().map(|m| m.status).collect();
    let title = copies.first().and_then(|m| m.title.clone());
    Ok(Json(GroupOne {
        ok: true,
        id: send.id.to_string(),
        group: send.group_name,
        status: group_status(&statuses),
        created_at: rfc3339(send.created_at),
        title,
        recipients: copies
            .into_iter()
            .map(|m| RecipientView {
                member: m.userid.to_string(),
                status: m.status,
                channel: m.channel,
                delivered_at: m.delivered_at.map(rfc3339),
                last_error: m.last_error,
            })
            .collect(),
    }))
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
    let userid = owner(&state, &headers, query).await?;
    cancel_message(&state, &userid, &id).await?;
    show_one(&state, &userid, &id).await
}

/// Cancels the member's message `id` if it has not gone out: the one implementation behind
/// `DELETE /messages/{id}` and the console's Cancel button. Someone else's message is the
/// same 404 as an unknown one; one that went out, or may be going out, is a 409 saying why.
pub(crate) async fn cancel_message(
    state: &AppState,
    userid: &UserId,
    id: &str,
) -> Result<(), ApiError> {
    let shown: String = id.chars().take(64).collect();
    match state.store.cancel(userid, id, UnixMillis::now()).await? {
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
        CancelOutcome::Final(MessageStatus::Muted | MessageStatus::Left) => {
            return Err(ApiError::Conflict(format!(
                "message {shown} is a group message's copy that is not sent (muted, or its \
                 member left the group): there is nothing to cancel"
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
    Ok(())
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
            let resent_as = state
                .store
                .resends_of(userid, &m.id)
                .await?
                .into_iter()
                .map(|id| id.to_string())
                .collect();
            let page = m
                .page_key
                .as_deref()
                .map(|key| m.id.page_url(&state.public_base, key));
            let group = match &m.group_send {
                Some(send) => state
                    .store
                    .group_send(send.as_str())
                    .await?
                    .map(|s| s.group_name),
                None => None,
            };
            let ack = state.store.ack_of(&m.id).await?.map(AckView::from);
            let history = history(&m, attempts);
            let mut message = MessageView::from(m);
            message.group = group;
            Ok(Json(One {
                ok: true,
                page,
                history,
                attachments,
                resent_as,
                message,
                ack,
            }))
        }
        _ => Err(ApiError::NotFound(format!(
            "no message {id} for this token"
        ))),
    }
}

/// `POST /messages/{id}/ack`: the owner acknowledges a message that asks for it (or the
/// message an escalation sent for one); answers it as `GET /messages/{id}` shows it. A
/// second acknowledgement changes nothing and answers the same way.
async fn ack(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<One>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let userid = member_only(
        &state,
        auth::find_token(&headers, &[query.token.as_deref()]),
        "acknowledge a message",
    )
    .await?;
    acknowledge(&state, &userid, &id, "api").await?;
    show_one(&state, &userid, &id).await
}

/// Acknowledges the member's message `id` `via` a way (`api`, `chat`, `page`): the one
/// implementation behind every way but the card. Someone else's message is the same 404 as
/// an unknown one; one that does not ask for an acknowledgement is a 409 saying so.
/// Answers the message and its acknowledgement.
pub(crate) async fn acknowledge(
    state: &AppState,
    userid: &UserId,
    id: &str,
    via: &'static str,
) -> Result<(crate::store::Message, crate::store::AckRecord), ApiError> {
    let shown: String = id.chars().take(64).collect();
    let message = match state.store.message(id).await? {
        Some(m) if m.userid == *userid => m,
        _ => {
            return Err(ApiError::NotFound(format!(
                "no message {shown} for this token"
            )));
        }
    };
    match state
        .store
        .acknowledge(&message.id, userid, via, UnixMillis::now())
        .await?
    {
        crate::store::AckOutcome::Acked(record) => {
            tracing::info!(userid = %userid, id = %record.message_id, via, "message acknowledged");
            if let Some(at) = record.acked_at {
                state.metrics.acknowledged(via, at.since(record.created_at));
            }
            Ok((message, record))
        }
        crate::store::AckOutcome::Already(record) => Ok((message, record)),
        crate::store::AckOutcome::NotAsked => Err(ApiError::Conflict(format!(
            "message {shown} does not ask for an acknowledgement (send with ack=true or \
             escalate=10m to ask for one)"
        ))),
    }
}

/// `POST /messages/{id}/resend`: the owner sends a failed or cancelled message again, as a
/// new message ([`resend_message`]); answers the new one as `GET /messages/{id}` shows it,
/// with `resent_from` naming the old one.
async fn resend(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<One>, ApiError> {
    let userid = owner(&state, &headers, query).await?;
    let accepted = resend_message(&state, &userid, &id).await?;
    show_one(&state, &userid, accepted.message.id.as_str()).await
}

/// Sends the member's failed or cancelled message `id` again: a new message through
/// [`Outbox::accept`](crate::delivery::Outbox::accept) with the same title, content,
/// format, look, link, route (as it was first: the channels tried, then those left) and
/// images and files (the same stored files: a file is kept while any message names it),
/// naming the old one in `resent_from`. The one implementation behind `POST
/// /messages/{id}/resend` and the console's Resend button.
///
/// Someone else's message is the same 404 as an unknown one. A message that is not failed
/// or cancelled, a verification code, or one resent already is a 409 saying why. A repeat
/// (a double click) within the idempotency window finds the first resend (its key is
/// `resend <id>`).
pub(crate) async fn resend_message(
    state: &AppState,
    userid: &UserId,
    id: &str,
) -> Result<Accepted, ApiError> {
    let shown: String = id.chars().take(64).collect();
    let not_found = || ApiError::NotFound(format!("no message {shown} for this token"));
    let old = match state.store.message(id).await? {
        Some(m) if m.userid == *userid => m,
        _ => return Err(not_found()),
    };
    if !matches!(old.status, MessageStatus::Failed | MessageStatus::Cancelled) {
        return Err(ApiError::Conflict(format!(
            "message {shown} is {}: only a failed or cancelled message can be resent",
            old.status.as_str()
        )));
    }
    if old.address_to.is_some() {
        return Err(ApiError::Conflict(format!(
            "message {shown} is a verification code: ask for a new code instead"
        )));
    }
    if let Some(first) = state.store.resends_of(userid, &old.id).await?.first() {
        return Err(ApiError::Conflict(format!(
            "message {shown} was resent already, as {first}: resend that one if it failed"
        )));
    }
    let attempts = state.store.attempts_of(&old.id).await?;
    let attachments = state.store.attachments_of(&old.id).await?;
    let accepted = state
        .outbox
        .accept(NewMessage::again(
            &old,
            first_route(&old, &attempts),
            format!("resend {}", old.id),
            attachments,
        ))
        .await?;
    if !accepted.duplicate {
        // Counted with the API's own messages: a resend is one whichever button sent it.
        state.metrics.accepted(crate::metrics::Endpoint::Native);
        tracing::info!(userid = %userid, id = %accepted.message.id, resent_from = %old.id, "message resent");
    }
    Ok(accepted)
}

/// The route a message had when it was accepted: the channels its attempts were on, in
/// order, then those still left on its route (a message moving on loses the channels
/// behind it).
fn first_route(m: &Message, attempts: &[AttemptRecord]) -> Route {
    let mut channels: Vec<ChannelName> = Vec::new();
    let tried = attempts.iter().filter_map(|a| match &a.channel {
        StoredChannel::Known(c) => Some(*c),
        StoredChannel::Unknown(_) => None,
    });
    for channel in tried.chain(m.route.channels().iter().copied()) {
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    Route::new(channels).unwrap_or_else(|| m.route.clone())
}

/// The member whose push token the request carries (header or `?token=`), for the routes
/// on one message.
async fn owner(
    state: &AppState,
    headers: &HeaderMap,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<crate::domain::UserId, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    member_only(
        state,
        auth::find_token(headers, &[query.token.as_deref()]),
        "cancel or resend a message",
    )
    .await
}

/// The member whose personal token this is; a group's token is refused saying what it can
/// do instead (it only sends, and follows its own messages).
async fn member_only(
    state: &AppState,
    token: Option<String>,
    what: &str,
) -> Result<crate::domain::UserId, ApiError> {
    match auth::token_owner(state, token, TokenRoute::Status).await? {
        auth::Sender::Member(userid, ..) => Ok(userid),
        auth::Sender::Group(group) => Err(ApiError::BadRequest(format!(
            "this is the send token of group {:?}: it cannot {what}; it sends messages, and \
             GET /messages/{{id}} follows one of them. Each member manages their own copy \
             with their personal token",
            group.name
        ))),
    }
}

fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::BadRequest(format!("invalid query string: {}", e.body_text()))
}

/// The token owner's messages, newest first: `?status=failed&limit=20&before=<id>`
/// (`status`: scheduled, queued, delivered, failed, cancelled, or for a group message's copy
/// muted or left).
async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let userid = member_only(
        &state,
        auth::find_token(&headers, &[query.token.as_deref()]),
        "list messages",
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
    let sends: Vec<&crate::domain::MessageId> =
        rows.iter().filter_map(|m| m.group_send.as_ref()).collect();
    let names = if sends.is_empty() {
        Default::default()
    } else {
        state.store.group_names(&sends).await?
    };
    let messages = rows
        .into_iter()
        .map(|m| {
            let group = m.group_send.as_ref().and_then(|s| names.get(s).cloned());
            let mut view = MessageView::from(m);
            view.group = group;
            view
        })
        .collect();
    Ok(Json(Page {
        ok: true,
        messages,
        next_before,
    }))
}
