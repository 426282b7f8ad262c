//! Bark: `GET|POST /{token}/{body}`, `/{token}/{title}/{body}`,
//! `/{token}/{title}/{subtitle}/{body}` (path segments percent-decoded; `url`, `level`,
//! `group`, `sound`, … in the query or a form/JSON body), and `POST /push` with a JSON
//! body naming `device_key` (or several `device_keys`), and the bare `GET|POST /{token}`
//! when it carries Bark's parameters ([`super::key_api`]). Answers
//! `{"code":200,"message":"success","timestamp":…}`; errors carry their HTTP status as
//! `code` in the same shape, as Bark's server does.
//!
//! Bark's options that only an iPhone can act on (sound, icon, badge, copy, group,
//! isArchive, call…) are accepted and ignored; `level` maps onto pushbot's urgency
//! (`critical` → urgent, `timeSensitive` → high, `passive` → low). `image` is fetched once
//! and attached to the message (it must be an image).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::super::AppState;
use super::super::send::{
    FieldRules, Submission, body_and_query, idempotency_key, parse_body_with, parse_query_with,
    submit,
};
use super::{PathOf, path_value, unix_seconds};
use crate::domain::{Format, Urgency};
use crate::error::ApiError;
use crate::metrics::{Endpoint, TokenRoute};
use crate::render::visible::has_visible;

/// Bark's parameters: `title`, `subtitle`, `body`, `markdown`, `url`, `level`, `image`,
/// `device_key(s)` are read; what only an iPhone acts on (`sound`, `volume`, `badge`,
/// `call`, `autoCopy`, `copy`, `icon`, `group`, `isArchive`, `action`, and `id`: each push
/// arrives as a new WeCom message) is ignored, as are names Bark itself does not know.
/// An encrypted push (`ciphertext`) and a removal (`delete`) cannot be honoured: refused.
pub(crate) const RULES: FieldRules = FieldRules {
    known: &[],
    refused: &[
        (
            "ciphertext",
            "encrypted pushes cannot be decrypted here; send the text as body",
        ),
        (
            "delete",
            "a delivered WeCom message cannot be removed; nothing was sent",
        ),
    ],
    strict: false,
};

/// Parameters from the query, a form or a JSON body (see [`RULES`]).
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    title: Option<String>,
    subtitle: Option<String>,
    body: Option<String>,
    /// Bark renders it; WeCom text shows it as it is.
    markdown: Option<String>,
    url: Option<String>,
    level: Option<String>,
    /// A picture's link: fetched and attached as an image.
    image: Option<String>,
    channel: Option<String>,
    /// `POST /push`: one key, or several.
    device_key: Option<String>,
    device_keys: Option<Vec<String>>,
}

impl Params {
    fn or(self, fallback: Params) -> Params {
        Params {
            title: self.title.or(fallback.title),
            subtitle: self.subtitle.or(fallback.subtitle),
            body: self.body.or(fallback.body),
            markdown: self.markdown.or(fallback.markdown),
            url: self.url.or(fallback.url),
            level: self.level.or(fallback.level),
            image: self.image.or(fallback.image),
            channel: self.channel.or(fallback.channel),
            device_key: self.device_key.or(fallback.device_key),
            device_keys: self.device_keys.or(fallback.device_keys),
        }
    }
}

/// A success in Bark's shape.
fn answer(message: &str) -> Response {
    let status = StatusCode::OK;
    (
        status,
        Json(json!({"code": status.as_u16(), "message": message, "timestamp": unix_seconds()})),
    )
        .into_response()
}

/// A Bark route's error.
#[derive(Debug)]
pub enum BarkError {
    /// Answered in Bark's shape, `{"code":…,"message":…,"timestamp":…}` with the status as
    /// `code`. Bark's server answers an unknown device key with 400, so an unknown token
    /// does too.
    Api(ApiError),
    /// The path is not a Bark path at all: pushbot's own 404, saying this.
    NoRoute(&'static str),
}

impl From<ApiError> for BarkError {
    fn from(err: ApiError) -> Self {
        Self::Api(err)
    }
}

impl IntoResponse for BarkError {
    fn into_response(self) -> Response {
        let err = match self {
            Self::Api(err) => err,
            Self::NoRoute(message) => return ApiError::NotFound(message.into()).into_response(),
        };
        let status = match &err {
            ApiError::Unauthorized(_) => StatusCode::BAD_REQUEST,
            other => other.status(),
        };
        let message = err.public_message();
        err.respond_as(
            status,
            json!({"code": status.as_u16(), "message": message, "timestamp": unix_seconds()}),
        )
    }
}

fn unknown_key() -> ApiError {
    ApiError::Unauthorized("unknown device key: use your pushbot token as the Bark key".into())
}

/// Whether `key` is a member's push token (a refused one is counted like any other).
async fn known_key(state: &AppState, key: &str) -> Result<(), ApiError> {
    let route = TokenRoute::Send(Endpoint::Bark);
    match super::super::auth::member(state, Some(key.to_owned()), route).await {
        Ok(_) => Ok(()),
        Err(ApiError::Unauthorized(_)) => Err(unknown_key()),
        Err(other) => Err(other),
    }
}

/// One message for `token` from `params`.
async fn push(
    state: &AppState,
    token: String,
    params: &Params,
    idempotency_key: Option<String>,
) -> Result<(), ApiError> {
    if !crate::token::looks_valid(&token) {
        super::super::auth::refused(state, TokenRoute::Send(Endpoint::Bark));
        return Err(unknown_key());
    }
    // Bark shows `markdown` instead of `body` when both are given.
    let markdown = params.markdown.clone().filter(|m| has_visible(m));
    let format = if markdown.is_some() {
        Format::Markdown
    } else {
        Format::Text
    };
    let body = markdown.or_else(|| params.body.clone().filter(|b| has_visible(b)));
    let Some(body) = body else {
        return Err(ApiError::BadRequest(
            "body is required (nothing to send: it shows nothing)".into(),
        ));
    };
    let content = match params.subtitle.as_deref().map(str::trim) {
        Some(subtitle) if has_visible(subtitle) => format!("{subtitle}\n{body}"),
        _ => body,
    };
    submit(
        state,
        Submission {
            token: Some(token),
            title: params.title.clone(),
            content: Some(content),
            channel: params.channel.clone(),
            idempotency_key,
            url: params.url.clone(),
            urgency: params
                .level
                .as_deref()
                .map_or(Urgency::Normal, Urgency::from_bark),
            format,
            endpoint: Endpoint::Bark,
            // Fetched once and attached (an image, or a 415); a fetch that fails is the
            // push's error, never a silently missing picture.
            image_url: params.image.clone(),
            file_url: None,
            file_name: None,
            attachments: Vec::new(),
            sender: None,
            when: None,
            // Acknowledgements from this route: not mapped yet (issue 30).
            ack: None,
        },
    )
    .await
    .map(drop)
}

/// The path's segments after the token: body; title, body; title, subtitle, body.
fn from_path(mut segments: Vec<String>) -> Option<(String, Params)> {
    if segments.is_empty() {
        return None;
    }
    let token = segments.remove(0);
    let mut params = Params::default();
    match segments.len() {
        1 => params.body = segments.pop(),
        2 => {
            params.body = segments.pop();
            params.title = segments.pop();
        }
        3 => {
            params.body = segments.pop();
            params.subtitle = segments.pop();
            params.title = segments.pop();
        }
        _ => return None,
    }
    Some((token, params))
}

async fn path_push(
    state: &AppState,
    segments: Vec<String>,
    headers: &HeaderMap,
    extra: Params,
) -> Result<Response, BarkError> {
    let (token, from_path) = from_path(segments).ok_or(BarkError::NoRoute("no such route"))?;
    // The path's parts win over the same names in the query or body.
    key_push(state, token, headers, &from_path.or(extra)).await
}

/// One push for the key `token` (the path's first segment) with `params`.
async fn key_push(
    state: &AppState,
    token: String,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Response, BarkError> {
    if !crate::token::looks_valid(&token) {
        // Not shaped like a token: not a Bark path at all.
        return Err(BarkError::NoRoute(
            "no route for this path (a Bark path starts with your pushbot token)",
        ));
    }
    let key = idempotency_key(headers, None)?;
    push(state, token, params, key).await?;
    Ok(answer("success"))
}

/// Bark's bare `GET|POST /:device_key`: every parameter from the query, a form or a JSON
/// body (the body's win). [`super::key_api`] sends only requests with Bark's parameters
/// here.
pub async fn bare_key(
    state: &AppState,
    token: String,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, BarkError> {
    let (from_body, from_query) = body_and_query::<Params>(query, headers, body, &RULES).await?;
    key_push(state, token, headers, &from_body.or(from_query)).await
}

pub async fn path_get(
    State(state): State<AppState>,
    segments: PathOf<Vec<String>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, BarkError> {
    let segments = path_value(segments)?;
    let extra = parse_query_with::<Params>(query.as_deref(), &RULES)?;
    path_push(&state, segments, &headers, extra).await
}

pub async fn path_post(
    State(state): State<AppState>,
    segments: PathOf<Vec<String>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, BarkError> {
    let segments = path_value(segments)?;
    let (from_body, from_query) =
        body_and_query::<Params>(query.as_deref(), &headers, body, &RULES).await?;
    path_push(&state, segments, &headers, from_body.or(from_query)).await
}

/// `POST /push` with `{"device_key": …}` or `{"device_keys": [...]}`: one message per key
/// (a key given twice counts once). All or nothing as far as the keys go: every key is
/// checked before any message is stored, so an unknown one is a 400 that sent nothing, and
/// a client that retries it does not deliver twice.
pub async fn push_json(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, BarkError> {
    let body = body.map_err(ApiError::from_body)?;
    let params = parse_body_with::<Params>(&headers, body, &RULES).await?;
    let mut keys: Vec<String> = Vec::new();
    let given = params
        .device_keys
        .iter()
        .flatten()
        .chain(&params.device_key);
    for key in given.map(|k| k.trim()).filter(|k| !k.is_empty()) {
        if !keys.iter().any(|k| k == key) {
            keys.push(key.to_owned());
        }
    }
    if keys.is_empty() {
        return Err(ApiError::BadRequest("device_key is required".into()).into());
    }
    let idempotency_key = idempotency_key(&headers, None)?;
    for key in &keys {
        known_key(&state, key).await?;
    }
    for key in keys {
        push(&state, key, &params, idempotency_key.clone()).await?;
    }
    Ok(answer("success"))
}

pub async fn ping() -> Response {
    answer("pong")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn path_segments_map_to_title_subtitle_body() {
        let (t, p) = from_path(segs(&["tok", "b"])).unwrap();
        assert_eq!(
            (t.as_str(), p.title, p.body.as_deref()),
            ("tok", None, Some("b"))
        );
        let (_, p) = from_path(segs(&["tok", "t", "b"])).unwrap();
        assert_eq!(
            (p.title.as_deref(), p.body.as_deref()),
            (Some("t"), Some("b"))
        );
        let (_, p) = from_path(segs(&["tok", "t", "s", "b"])).unwrap();
        assert_eq!(
            (p.title.as_deref(), p.subtitle.as_deref(), p.body.as_deref()),
            (Some("t"), Some("s"), Some("b"))
        );
        assert!(from_path(segs(&["tok"])).is_none());
        assert!(from_path(segs(&["tok", "a", "b", "c", "d"])).is_none());
    }

    mod props {
        use super::*;
        use crate::api::send::parse_query_with;
        use proptest::prelude::*;

        /// Every name Bark knows (as the route rule reads them).
        const NAMES: &[&str] = crate::api::compat::BARK_NAMES;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any query or form: parameters, or a 400 (a refused name set is one).
            #[test]
            fn any_query_is_params_or_a_400(q in crate::api::compat::tricky(NAMES)) {
                let got = parse_query_with::<Params>(Some(&q), &RULES);
                if let Err(e) = got {
                    prop_assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
                }
            }

            /// Any path segments: the message's parts, or no Bark path.
            #[test]
            fn any_path_is_parts_or_none(segments in prop::collection::vec(crate::api::compat::tricky(NAMES), 0..6)) {
                let n = segments.len();
                let got = from_path(segments);
                prop_assert_eq!(got.is_some(), (2..=4).contains(&n));
            }
        }
    }
}
