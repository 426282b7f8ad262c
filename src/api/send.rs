//! `GET|POST /send`: accept a message for the token's owner.
//!
//! Accepted forms (fields may also come from the query string, body fields win):
//! `GET /send?token=&title=&content=`, a JSON object, or a form-encoded body. `desp` is an
//! alias of `content` (the ServerChan habit). The token may also come as a Bearer header.
//!
//! Text must be UTF-8 in every form: percent-decoded query and form fields are checked
//! before decoding (serde_urlencoded would silently turn bad bytes into U+FFFD), JSON
//! bodies before parsing. `HEAD /send` is refused (405) without touching anything.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::header::{ALLOW, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::rate_limit::authorized_sender;
use super::{AppState, auth};
use crate::delivery::{ChannelChoice, NewMessage, Reach};
use crate::error::ApiError;
use crate::store::MessageStatus;

/// Longest title accepted (bytes).
pub const MAX_TITLE_BYTES: usize = 1024;
/// Longest content accepted (bytes). WeCom text shows 2048 bytes; the rest is kept.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;

/// Content types a body may have (none at all is sniffed: `{` means JSON, else form).
const ACCEPTED_TYPES: &str = "application/json or application/x-www-form-urlencoded";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/send",
            get(send_get).post(send_post).head(only_get_and_post),
        )
        .method_not_allowed_fallback(only_get_and_post)
}

/// HEAD (link checkers, chat-app previews) and every other method but GET and POST.
///
/// HEAD must be safe, and the only faithful answer to `HEAD /send` would be to send the
/// message as GET does; so it is refused like any other method, before the token is even
/// looked at (no side effect, and no way to probe tokens without the send rate limit).
async fn only_get_and_post(method: axum::http::Method) -> Response {
    let mut response = ApiError::MethodNotAllowed(format!(
        "{method} /send does nothing: send a message with GET or POST"
    ))
    .into_response();
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, POST"));
    response
}

#[derive(Debug, Default, Deserialize)]
struct SendFields {
    token: Option<String>,
    title: Option<String>,
    content: Option<String>,
    desp: Option<String>,
    idempotency_key: Option<String>,
    /// `wecom`, `email`, `all` or an ordered list such as `wecom,email`.
    channel: Option<String>,
}

impl SendFields {
    /// Fields present in `self` win over those in `fallback`.
    fn or(self, fallback: SendFields) -> SendFields {
        SendFields {
            token: self.token.or(fallback.token),
            title: self.title.or(fallback.title),
            content: self.content.or(fallback.content),
            desp: self.desp.or(fallback.desp),
            idempotency_key: self.idempotency_key.or(fallback.idempotency_key),
            channel: self.channel.or(fallback.channel),
        }
    }
}

#[derive(Serialize)]
struct Accepted {
    ok: bool,
    id: String,
    status: MessageStatus,
    /// Present (true) when an earlier message with the same idempotency key was found.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// The `Idempotency-Key` header, else the `idempotency_key` field.
fn idempotency_key(headers: &HeaderMap, field: Option<String>) -> Result<Option<String>, ApiError> {
    let header = match headers.get("idempotency-key") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?
                .to_owned(),
        ),
        None => None,
    };
    let key = header
        .or(field)
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty());
    if key.as_ref().is_some_and(|k| k.len() > MAX_IDEMPOTENCY_KEY) {
        return Err(ApiError::BadRequest(format!(
            "idempotency key is longer than {MAX_IDEMPOTENCY_KEY} characters"
        )));
    }
    Ok(key)
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
        Some(q) => {
            require_utf8_form(q.as_bytes(), "query string")?;
            serde_urlencoded::from_str(q)
                .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))
        }
    }
}

/// Every name and value of `application/x-www-form-urlencoded` input must be UTF-8 once
/// percent-decoded. The value itself is never echoed (it may be a token).
fn require_utf8_form(input: &[u8], what: &str) -> Result<(), ApiError> {
    for pair in input.split(|&b| b == b'&') {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        let name = percent_encoding::percent_decode(name).collect::<Vec<u8>>();
        let Ok(name) = String::from_utf8(name) else {
            return Err(ApiError::BadRequest(format!(
                "a field name in the {what} is not valid UTF-8 after percent-decoding; \
                 encode text as UTF-8"
            )));
        };
        let value: Vec<u8> = percent_encoding::percent_decode(value).collect();
        if std::str::from_utf8(&value).is_err() {
            let name: String = name.chars().take(64).collect();
            return Err(ApiError::BadRequest(format!(
                "field {name:?} in the {what} is not valid UTF-8 after percent-decoding; \
                 encode text as UTF-8"
            )));
        }
    }
    Ok(())
}

fn require_utf8_json(body: &[u8]) -> Result<(), ApiError> {
    std::str::from_utf8(body).map(|_| ()).map_err(|e| {
        ApiError::BadRequest(format!(
            "the JSON body is not valid UTF-8 (at byte {}); encode text as UTF-8",
            e.valid_up_to()
        ))
    })
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
    let looks_like_json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let is_json = match essence {
        "application/json" => true,
        "application/x-www-form-urlencoded" => false,
        // Some clients send no type at all (curl -d without -H sends form-encoding).
        "" => looks_like_json,
        // Browsers' no-preflight requests send JSON as text/plain; other text is not ours.
        "text/plain" if looks_like_json => true,
        e if e.ends_with("+json") => true,
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "unsupported Content-Type {other:?}: send {ACCEPTED_TYPES}"
            )));
        }
    };
    if is_json {
        require_utf8_json(body)?;
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    } else {
        require_utf8_form(body, "form body")?;
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
    let key = idempotency_key(headers, fields.idempotency_key)?;
    let choice = ChannelChoice::parse(fields.channel.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("invalid channel: {e} (or all)")))?;
    let token = auth::find_token(headers, &[fields.token.as_deref()]);
    let userid = authorized_sender(state, token).await?;
    if title.is_none() && content.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to send: give a title or content (or desp)".into(),
        ));
    }
    let prefs = state.store.member_prefs(&userid).await?;
    let reach = Reach {
        email_bound: prefs.email.is_some(),
        own_order: prefs.channels,
    };
    let (route, deliver_all) = state
        .outbox
        .route(&choice, &reach)
        .map_err(ApiError::BadRequest)?;
    let accepted = state
        .outbox
        .accept(NewMessage {
            userid,
            title,
            content,
            idempotency_key: key,
            route,
            deliver_all,
            email_to: None,
        })
        .await?;
    Ok(Json(Accepted {
        ok: true,
        id: accepted.message.id.to_string(),
        status: accepted.message.status,
        duplicate: accepted.duplicate,
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
    fn plain_text_is_415_naming_the_accepted_types() {
        let e = parse_body(&headers("text/plain"), b"disk full").unwrap_err();
        assert!(matches!(e, ApiError::UnsupportedMediaType(_)), "{e:?}");
        let message = e.to_string();
        assert!(message.contains("application/json"), "{message}");
        assert!(
            message.contains("application/x-www-form-urlencoded"),
            "{message}"
        );
        // JSON sent as text/plain (a browser's no-preflight request) is still JSON.
        let json = parse_body(&headers("text/plain"), br#"{"title":"t"}"#).unwrap();
        assert_eq!(json.title.as_deref(), Some("t"));
        // No Content-Type: `{` means JSON, anything else is a form.
        let form = parse_body(&HeaderMap::new(), b"title=t").unwrap();
        assert_eq!(form.title.as_deref(), Some("t"));
    }

    #[test]
    fn invalid_utf8_is_400_in_every_form() {
        // %FF is not UTF-8 once decoded; serde_urlencoded alone would make it U+FFFD.
        let e = parse_query(Some("token=x&title=%FF")).unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
        assert!(e.to_string().contains("\"title\""), "{e}");
        assert!(e.to_string().contains("UTF-8"), "{e}");

        let e = parse_body(
            &headers("application/x-www-form-urlencoded"),
            b"content=%C3%28",
        )
        .unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
        assert!(e.to_string().contains("\"content\""), "{e}");

        // Raw (not percent-encoded) bad bytes and bad names count too.
        let e = parse_body(&HeaderMap::new(), b"title=\xff").unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
        let e = parse_query(Some("%FF=1")).unwrap_err();
        assert!(e.to_string().contains("field name"), "{e}");

        let e = parse_body(&headers("application/json"), b"{\"title\":\"\xff\"}").unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
        assert!(e.to_string().contains("UTF-8"), "{e}");

        // Valid multi-byte text passes.
        let ok = parse_query(Some("title=%E4%BD%A0%E5%A5%BD+ok")).unwrap();
        assert_eq!(ok.title.as_deref(), Some("你好 ok"));
    }

    #[test]
    fn the_token_is_not_echoed_in_utf8_errors() {
        let e = parse_query(Some("token=secret%FFtoken")).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
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
