//! The one error type of the HTTP API. Every error a client can cause maps to a status and
//! a JSON body `{"ok":false,"error":"<code>","message":"<what to do>"}`; internal errors
//! are logged with their whole cause chain and answered with a generic message.

use std::error::Error as StdError;
use std::time::Duration;

use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

/// How long a client is asked to wait after a 503 caused by storage.
pub const STORAGE_RETRY_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    /// The token is valid but may not do this (a group's member who is not its owner).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// It existed but is no more (an expired invite code).
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UriTooLong(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request contradicts an earlier one (an idempotency key reused for another
    /// message).
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    HeadersTooLarge(String),
    /// The request took longer than it may (30 seconds; `media.upload_timeout` with files).
    #[error("{0}")]
    RequestTimeout(String),
    /// A server the request named (`image_url`, …) answered with an error or not at all.
    #[error("{0}")]
    BadGateway(String),
    /// A server the request named took too long.
    #[error("{0}")]
    GatewayTimeout(String),
    /// The storage for images and files is full (`media.total_bytes`).
    #[error("{0}")]
    StorageFull(String),
    /// Storage cannot take writes (or reads) right now: full disk, I/O error, busy past
    /// the timeout. Nothing was stored; the client should retry.
    #[error("storage is temporarily unavailable; nothing was stored, retry later")]
    Unavailable(#[source] StoreError),
    /// A bug or an unexpected state; the cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] Box<dyn StdError + Send + Sync>),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Gone(_) => StatusCode::GONE,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::StorageFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Gone(_) => "gone",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UriTooLong(_) => "uri_too_long",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Conflict(_) => "conflict",
            Self::TooManyRequests { .. } => "rate_limited",
            Self::HeadersTooLarge(_) => "headers_too_large",
            Self::RequestTimeout(_) => "request_timeout",
            Self::BadGateway(_) => "bad_gateway",
            Self::GatewayTimeout(_) => "gateway_timeout",
            Self::StorageFull(_) => "storage_full",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// Seconds for a `Retry-After` header, for the answers that carry one.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::TooManyRequests { retry_after, .. } => Some(*retry_after),
            Self::Unavailable(_) => Some(STORAGE_RETRY_AFTER),
            _ => None,
        }
    }

    /// Wraps any unexpected error; it is logged with its causes and answered 500.
    pub fn internal(err: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::Internal(err.into())
    }

    /// Maps axum's body-reading failure (mostly: over the size limit) to our error.
    pub fn from_body(rejection: axum::extract::rejection::BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge("request body is too large".into())
        } else {
            Self::BadRequest(format!("could not read request body: {rejection}"))
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        if matches!(err, StoreError::TokenRevoked) {
            return crate::api::auth::invalid();
        }
        if err.is_unavailable() {
            Self::Unavailable(err)
        } else {
            Self::Internal(Box::new(err))
        }
    }
}

impl From<crate::delivery::AcceptError> for ApiError {
    fn from(err: crate::delivery::AcceptError) -> Self {
        match err {
            crate::delivery::AcceptError::KeyReused { first } => Self::Conflict(format!(
                "this idempotency key was used within the last 24 hours for a different \
                 message (id {first}); a repeat must be the same request, a new message needs \
                 a new key"
            )),
            crate::delivery::AcceptError::Store(err) => err.into(),
        }
    }
}

/// `err` and all its causes on one line, `outer: inner: innermost`, skipping a cause whose
/// text the previous one already contains. For start-up errors and log fields.
pub fn chain(err: &(dyn StdError + 'static)) -> String {
    with_causes(err.to_string(), err.source())
}

/// `text` followed by `source` and its causes, as [`chain`] writes them.
pub fn with_causes(mut text: String, mut source: Option<&(dyn StdError + 'static)>) -> String {
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[derive(Serialize)]
struct ErrorBody {
    ok: bool,
    error: &'static str,
    message: String,
}

impl ApiError {
    /// The text a client may see (an internal error's cause stays in the log).
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal error; see the server log".to_owned(),
            other => other.to_string(),
        }
    }

    /// Answers with `status` and `body` — another service's error shape, for the
    /// compatibility routes — logging server-side causes and adding `Retry-After` exactly as
    /// our own answers do.
    pub fn respond_as(self, status: StatusCode, body: serde_json::Value) -> Response {
        match &self {
            Self::Internal(cause) => {
                tracing::error!(error = %chain(cause.as_ref()), "request failed");
            }
            Self::Unavailable(cause) => {
                tracing::warn!(error = %chain(cause), "request refused: storage unavailable");
            }
            _ => {}
        }
        let mut response = (status, Json(body)).into_response();
        if let Some(wait) = self.retry_after() {
            // Whole seconds, rounded up, at least 1 (RFC 9110 delay-seconds).
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!(ErrorBody {
            ok: false,
            error: self.code(),
            message: self.public_message(),
        });
        let status = self.status();
        self.respond_as(status, body)
    }
}

/// `text` without any of `secrets`: each whole one, and the start of one cut short by a
/// quote (`…` right after it), becomes `***`. For reasons that quote a service's answer,
/// which may echo a key back.
pub fn scrub_secrets(mut text: String, secrets: &[&str]) -> String {
    /// Shorter runs are too common to be taken for a secret.
    const MIN: usize = 4;
    for secret in secrets {
        if secret.len() < MIN {
            continue;
        }
        if text.contains(secret) {
            text = text.replace(secret, "***");
        }
        for end in (MIN..secret.len()).rev() {
            let Some(start) = secret.get(..end) else {
                continue;
            };
            let cut = format!("{start}…");
            if text.contains(&cut) {
                text = text.replace(&cut, "***…");
                break;
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_causes_without_repeating_them() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let err = Outer(std::io::Error::other("disk full"));
        assert_eq!(chain(&err), "outer: disk full");
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let resp = ApiError::TooManyRequests {
            message: "slow down".into(),
            retry_after: Duration::from_millis(1500),
        }
        .into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[RETRY_AFTER], "2");
    }

    #[test]
    fn secrets_are_scrubbed_whole_and_cut_short() {
        let secrets = ["SEC4f1e9d2c7b8a3e6f0d5c1b9a8e7d6c5", "key-0123456789"];
        assert_eq!(
            scrub_secrets(
                "sign of SEC4f1e9d2c7b8a3e6f0d5c1b9a8e7d6c5 wrong".into(),
                &secrets
            ),
            "sign of *** wrong"
        );
        assert_eq!(
            scrub_secrets("padding padding SEC4f1e9d2c7b8a3e…".into(), &secrets),
            "padding padding ***…"
        );
        assert_eq!(
            scrub_secrets("key-0123 and key-0123456789".into(), &secrets),
            "key-0123 and ***",
            "a prefix without the cut mark is just text"
        );
        assert_eq!(
            scrub_secrets("abc…".into(), &["abcd"]),
            "abc…",
            "too short to tell"
        );
    }
}
