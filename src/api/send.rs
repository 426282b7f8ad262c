//! `GET|POST /send`: accept a message for the token's owner.
//!
//! Accepted forms (fields may also come from the query string, body fields win):
//! `GET /send?token=&title=&content=`, a JSON object, or a form-encoded body. `desp` is an
//! alias of `content` (the ServerChan habit). The token may also come as a Bearer header.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::rate_limit::authorized_sender;
use super::{AppState, auth};
use crate::delivery::NewMessage;
use crate::error::ApiError;
use crate::store::MessageStatus;

/// Longest title accepted (bytes).
pub const MAX_TITLE_BYTES: usize = 1024;
/// Longest content accepted (bytes). WeCom text shows 2048 bytes; the rest is kept.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;

pub fn router() -> Router<AppState> {
    Router::new().route("/send", get(send_get).post(send_post))
}

#[derive(Debug, Default, Deserialize)]
struct SendFields {
    token: Option<String>,
    title: Option<String>,
    content: Option<String>,
    desp: Option<String>,
}

impl SendFields {
    /// Fields present in `self` win over those in `fallback`.
    fn or(self, fallback: SendFields) -> SendFields {
        SendFields {
            token: self.token.or(fallback.token),
            title: self.title.or(fallback.title),
            content: self.content.or(fallback.content),
            desp: self.desp.or(fallback.desp),
        }
    }
}

#[derive(Serialize)]
struct Accepted {
    ok: bool,
    id: String,
    status: MessageStatus,
}

async fn send_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Accepted>, ApiError> {
    accept(&state, &headers, parse_query(query.as_deref())?).await
}

async fn send_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Accepted>, ApiError> {
    let body = body.map_err(ApiError::from_body)?;
    let from_query = parse_query(query.as_deref())?;
    let from_body = parse_body(&headers, &body)?;
    accept(&state, &headers, from_body.or(from_query)).await
}

fn parse_query(query: Option<&str>) -> Result<SendFields, ApiError> {
    match query {
        None | Some("") => Ok(SendFields::default()),
        Some(q) => serde_urlencoded::from_str(q)
            .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}"))),
    }
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<SendFields, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(SendFields::default());
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let is_json = match essence {
        "application/json" => true,
        "application/x-www-form-urlencoded" => false,
        // curl -d without -H sends form-encoding; some clients send no type at all.
        "" | "text/plain" => body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
        e if e.ends_with("+json") => true,
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "unsupported Content-Type {other:?}: send application/json or application/x-www-form-urlencoded"
            )));
        }
    };
    if is_json {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    } else {
        serde_urlencoded::from_bytes(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid form body: {e}")))
    }
}

/// Empty or whitespace-only counts as absent.
fn present(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    fields: SendFields,
) -> Result<Json<Accepted>, ApiError> {
    let title = present(fields.title);
    let content = present(fields.content.or(fields.desp));
    if title.as_ref().is_some_and(|t| t.len() > MAX_TITLE_BYTES) {
        return Err(ApiError::PayloadTooLarge(format!(
            "title is longer than {MAX_TITLE_BYTES} bytes"
        )));
    }
    if content
        .as_ref()
        .is_some_and(|c| c.len() > MAX_CONTENT_BYTES)
    {
        return Err(ApiError::PayloadTooLarge(format!(
            "content is longer than {} KiB",
            MAX_CONTENT_BYTES / 1024
        )));
    }
    let token = auth::find_token(headers, &[fields.token.as_deref()]);
    let userid = authorized_sender(state, token).await?;
    if title.is_none() && content.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to send: give a title or content (or desp)".into(),
        ));
    }
    let message = state
        .outbox
        .accept(NewMessage {
            userid,
            title,
            content,
        })
        .await?;
    Ok(Json(Accepted {
        ok: true,
        id: message.id,
        status: message.status,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[test]
    fn body_forms() {
        let json =
            parse_body(&headers("application/json"), br#"{"title":"t","desp":"d"}"#).unwrap();
        assert_eq!(json.title.as_deref(), Some("t"));
        assert_eq!(json.desp.as_deref(), Some("d"));
        let form = parse_body(
            &headers("application/x-www-form-urlencoded"),
            b"token=abc&content=%E4%BD%A0%E5%A5%BD",
        )
        .unwrap();
        assert_eq!(form.content.as_deref(), Some("你好"));
        let sniffed = parse_body(&HeaderMap::new(), br#" {"content":"c"}"#).unwrap();
        assert_eq!(sniffed.content.as_deref(), Some("c"));
    }

    #[test]
    fn bad_bodies_are_client_errors() {
        let e = parse_body(&headers("application/json"), b"{nope").unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)));
        let e = parse_body(&headers("application/json"), b"[1,2]").unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)));
        let e = parse_body(&headers("image/png"), b"\x89PNG").unwrap_err();
        assert!(matches!(e, ApiError::UnsupportedMediaType(_)));
    }

    #[test]
    fn body_fields_win_over_query() {
        let q = parse_query(Some("title=q&token=qt")).unwrap();
        let b = parse_body(&headers("application/json"), br#"{"title":"b"}"#).unwrap();
        let merged = b.or(q);
        assert_eq!(merged.title.as_deref(), Some("b"));
        assert_eq!(merged.token.as_deref(), Some("qt"));
    }
}
