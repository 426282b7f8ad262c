//! ServerChan (Server酱 Turbo and its legacy form, and Server酱³'s `/send/{key}.send`):
//! `GET|POST /{token}.send` with `title` (legacy: `text`), `desp` (markdown) and `short`,
//! from the query, a form, JSON or multipart. Success is
//! `{"code":0,"message":"","data":{"pushid":…,"readkey":…,"error":"SUCCESS","errno":0}}`;
//! errors are HTTP 400 `{"code":…,"message":…}` like the original (storage trouble stays a
//! 503, to be retried). `GET /push?id=&readkey=` reports a message's status.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sha1::{Digest as _, Sha1};

use super::super::AppState;
use super::super::send::{
    FieldRules, Submission, body_and_query, idempotency_key, parse_query, parse_query_with, submit,
};
use super::{PathOf, path_value};
use crate::domain::{Format, PushToken};
use crate::error::ApiError;
use crate::render::visible::has_visible;
use crate::store::MessageStatus;
use crate::time::UnixMillis;

#[derive(Debug, Default, Deserialize)]
pub struct Fields {
    title: Option<String>,
    /// The legacy API's name for the title.
    text: Option<String>,
    desp: Option<String>,
    /// Server酱's card excerpt: the content when there is no `desp` (WeCom shows the
    /// message itself, so with a `desp` it adds nothing).
    short: Option<String>,
    /// Server酱³'s tags: kept as a line of the content.
    tags: Option<String>,
    channel: Option<String>,
}

impl Fields {
    fn or(self, fallback: Fields) -> Fields {
        Fields {
            title: self.title.or(fallback.title),
            text: self.text.or(fallback.text),
            desp: self.desp.or(fallback.desp),
            short: self.short.or(fallback.short),
            tags: self.tags.or(fallback.tags),
            channel: self.channel.or(fallback.channel),
        }
    }
}

/// ServerChan's fields: `title`, `text`, `desp`, `short`, `tags`, `channel` are read;
/// `noip` (hide the caller's IP) holds anyway, pushbot never shows it; `openid` (copies to
/// other WeChat users) cannot be honoured and is refused; names ServerChan does not know
/// are ignored, as ServerChan ignores them.
pub(crate) const RULES: FieldRules = FieldRules {
    known: &["title", "text", "desp", "short", "tags", "channel", "noip"],
    refused: &[(
        "openid",
        "copies to other WeChat users are not sent; each member sends with their own token",
    )],
    strict: false,
};

/// A ServerChan route's error.
#[derive(Debug)]
pub enum ServerChanError {
    /// Answered as ServerChan reports errors, `{"code":…,"message":…}`: HTTP 400 with a
    /// code for anything the client can fix (the original answers every such error with
    /// 400); server trouble keeps its status (503 with `Retry-After`: nothing was stored,
    /// send again).
    Api(ApiError),
    /// The path is not a ServerChan path at all: pushbot's own 404.
    NoRoute,
}

impl From<ApiError> for ServerChanError {
    fn from(err: ApiError) -> Self {
        Self::Api(err)
    }
}

impl IntoResponse for ServerChanError {
    fn into_response(self) -> Response {
        let err = match self {
            Self::Api(err) => err,
            Self::NoRoute => {
                return ApiError::NotFound(
                    "no route for this path (a ServerChan path is /TOKEN.send)".into(),
                )
                .into_response();
            }
        };
        let (code, status) = match &err {
            ApiError::Unauthorized(_) => (40001, StatusCode::BAD_REQUEST),
            ApiError::PayloadTooLarge(_) => (40003, StatusCode::BAD_REQUEST),
            ApiError::NotFound(_) => (40004, StatusCode::BAD_REQUEST),
            // An idempotency key reused for another message (pushbot's own header).
            ApiError::Conflict(_) => (40009, StatusCode::CONFLICT),
            ApiError::TooManyRequests { .. } => (40029, StatusCode::BAD_REQUEST),
            ApiError::Unavailable(_) => (50003, StatusCode::SERVICE_UNAVAILABLE),
            ApiError::Internal(_) => (50000, StatusCode::INTERNAL_SERVER_ERROR),
            _ => (40002, StatusCode::BAD_REQUEST),
        };
        let message = err.public_message();
        err.respond_as(status, json!({"code": code, "message": message}))
    }
}

/// `TOKEN.send` → `TOKEN`; anything else is not a ServerChan path.
fn key_token(key: &str) -> Option<&str> {
    key.strip_suffix(".send")
        .filter(|t| crate::token::looks_valid(t))
}

/// A status link's key: only someone who knows the member's current token (or was given
/// the key with the answer) can make it; `rotate` revokes it with the token.
fn readkey(token: &str, id: &str) -> String {
    let digest = Sha1::digest(format!("pushbot-readkey\0{token}\0{id}").as_bytes());
    hex::encode(&digest[..8])
}

async fn send(
    state: &AppState,
    key: &str,
    headers: &HeaderMap,
    fields: Fields,
) -> Result<Response, ServerChanError> {
    let token = key_token(key).ok_or(ServerChanError::NoRoute)?;
    let title = fields.title.or(fields.text);
    if title.as_deref().is_none_or(|t| !has_visible(t)) {
        return Err(ApiError::BadRequest(
            "title is required (ServerChan: title, or text in the legacy API)".into(),
        )
        .into());
    }
    let idempotency_key = idempotency_key(headers, None)?;
    let desp = fields.desp.filter(|d| has_visible(d)).or(fields.short);
    let content = match (desp, fields.tags) {
        (Some(desp), Some(tags)) if has_visible(&tags) => {
            Some(format!("{desp}\n\n🏷 {}", tags.trim()))
        }
        (desp, _) => desp,
    };
    let accepted = submit(
        state,
        Submission {
            token: Some(token.to_owned()),
            title,
            content,
            channel: fields.channel,
            idempotency_key,
            // ServerChan renders desp as markdown.
            format: Format::Markdown,
            endpoint: crate::metrics::Endpoint::ServerChan,
            ..Submission::default()
        },
    )
    .await?;
    let id = accepted.message.id.to_string();
    Ok(Json(json!({
        "code": 0,
        "message": "",
        "data": {
            "pushid": id,
            "readkey": readkey(token, &id),
            "error": "SUCCESS",
            "errno": 0,
        }
    }))
    .into_response())
}

pub async fn send_get(
    State(state): State<AppState>,
    key: PathOf<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ServerChanError> {
    let key = path_value(key)?;
    let fields = parse_query_with::<Fields>(query.as_deref(), &RULES)?;
    send(&state, &key, &headers, fields).await
}

pub async fn send_post(
    State(state): State<AppState>,
    key: PathOf<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ServerChanError> {
    let key = path_value(key)?;
    let (from_body, from_query) =
        body_and_query::<Fields>(query.as_deref(), &headers, body, &RULES).await?;
    send(&state, &key, &headers, from_body.or(from_query)).await
}

#[derive(Debug, Default, Deserialize)]
pub struct StatusQuery {
    id: Option<String>,
    readkey: Option<String>,
}

/// Whether `key` is message `id`'s read key under `token` (the sender's token now; none when
/// the member or group is gone), compared in constant time. Every miss is the same answer.
fn check_readkey(token: Option<PushToken>, id: &str, key: &str) -> Result<(), ApiError> {
    let not_found = || ApiError::NotFound("no such message, or a wrong readkey".into());
    let token = token.ok_or_else(not_found)?;
    let expected = readkey(token.expose(), id);
    let matches: bool = subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), key.as_bytes()).into();
    if matches { Ok(()) } else { Err(not_found()) }
}

/// `GET /push?id=&readkey=`: the message's status, for whoever holds its read key.
pub async fn status(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ServerChanError> {
    let q: StatusQuery = parse_query(query.as_deref())?;
    let (Some(id), Some(key)) = (q.id, q.readkey) else {
        return Err(ApiError::BadRequest("id and readkey are required".into()).into());
    };
    let Some(message) = state.store.message(&id).await.map_err(ApiError::from)? else {
        return group_status(&state, &id, &key).await;
    };
    let token = state
        .store
        .existing_token(&message.userid)
        .await
        .map_err(ApiError::from)?;
    check_readkey(token, message.id.as_str(), &key)?;
    Ok(Json(json!({
        "code": 0,
        "message": "",
        "data": {
            "id": message.id.to_string(),
            "title": message.title,
            "desp": message.content,
            "readkey": key,
            "status": message.status,
            "wxstatus": match message.status {
                MessageStatus::Delivered => "sent",
                MessageStatus::Failed => "failed",
                MessageStatus::Queued => "queued",
                MessageStatus::Scheduled => "scheduled",
                MessageStatus::Cancelled => "cancelled",
                MessageStatus::Muted => "muted",
                MessageStatus::Left => "left",
            },
            "channel": message.channel,
            "last_error": message.last_error,
            "created_at": message.created_at.as_secs(),
            "delivered_at": message.delivered_at.map(UnixMillis::as_secs),
        }
    }))
    .into_response())
}

/// `GET /push?id=&readkey=` for a message sent with a group's token: its overall status
/// (as `GET /messages/{id}` gives it) and the number of recipients, for whoever holds the
/// read key the send answered with (made with the group's token).
async fn group_status(state: &AppState, id: &str, key: &str) -> Result<Response, ServerChanError> {
    let not_found = || ApiError::NotFound("no such message, or a wrong readkey".into());
    let send = state
        .store
        .group_send(id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(not_found)?;
    let token = state
        .store
        .group_token_of(&send.group_id)
        .await
        .map_err(ApiError::from)?;
    check_readkey(token, send.id.as_str(), key)?;
    let copies = state
        .store
        .group_copies(&send.id)
        .await
        .map_err(ApiError::from)?;
    let statuses: Vec<MessageStatus> = copies.iter().map(|m| m.status).collect();
    let status = super::super::messages::group_status(&statuses);
    let delivered = statuses
        .iter()
        .filter(|s| **s == MessageStatus::Delivered)
        .count();
    let first = copies.first();
    Ok(Json(json!({
        "code": 0,
        "message": "",
        "data": {
            "id": send.id.to_string(),
            "title": first.and_then(|m| m.title.clone()),
            "desp": first.and_then(|m| m.content.clone()),
            "readkey": key,
            "status": status,
            "wxstatus": match status {
                "delivered" => "sent",
                other => other,
            },
            "group": send.group_name,
            "recipients": copies.len(),
            "delivered": delivered,
            "created_at": send.created_at.as_secs(),
        }
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_token_dot_send_is_a_serverchan_key() {
        let token = "AbCdEfGhIjKlMnOpQrStUvWxYz012345";
        assert_eq!(key_token(&format!("{token}.send")), Some(token));
        assert_eq!(key_token(token), None);
        assert_eq!(key_token("favicon.ico"), None);
        assert_eq!(key_token("short.send"), None);
    }

    #[test]
    fn read_keys_depend_on_token_and_id() {
        let a = readkey("token-a-0123456789", "id1");
        assert_eq!(a.len(), 16);
        assert_eq!(a, readkey("token-a-0123456789", "id1"));
        assert_ne!(a, readkey("token-b-0123456789", "id1"));
        assert_ne!(a, readkey("token-a-0123456789", "id2"));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const NAMES: &[&str] = &[
            "title", "text", "desp", "short", "tags", "channel", "noip", "openid",
        ];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any query or form: fields, or a 400; `openid` set is refused by name.
            #[test]
            fn any_query_is_fields_or_a_400(q in crate::api::compat::tricky(NAMES)) {
                match parse_query_with::<Fields>(Some(&q), &RULES) {
                    Ok(_) => {}
                    Err(e) => prop_assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}"),
                }
            }
        }
    }
}
