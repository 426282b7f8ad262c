//! gotify: `POST /message` with the token as `?token=`, `X-Gotify-Key` or
//! `Authorization: Bearer`; a form or JSON body with `title`, `message`, `priority` and
//! `extras` (`client::notification.click.url` is kept as the last line of the content;
//! `client::notification.bigImageUrl` is fetched and attached as an image;
//! `client::display.contentType = text/markdown` is accepted). Answers the stored-message
//! JSON (`id`, `appid`, `message`, `title`, `priority`, `date`); errors are
//! `{"error","errorCode","errorDescription"}` with that status. `GET /version` too.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::AppState;
use super::super::auth::find_token;
use super::super::send::{FieldRules, Submission, body_and_query, idempotency_key, submit};
use crate::domain::{Format, Urgency};
use crate::error::ApiError;
use crate::metrics::{Endpoint, TokenRoute};
use crate::render::visible::has_visible;

#[derive(Debug, Default, Deserialize)]
pub struct Fields {
    token: Option<String>,
    title: Option<String>,
    message: Option<String>,
    /// An integer; forms send it as text.
    priority: Option<Value>,
    extras: Option<Value>,
    channel: Option<String>,
}

impl Fields {
    fn or(self, fallback: Fields) -> Fields {
        Fields {
            token: self.token.or(fallback.token),
            title: self.title.or(fallback.title),
            message: self.message.or(fallback.message),
            priority: self.priority.or(fallback.priority),
            extras: self.extras.or(fallback.extras),
            channel: self.channel.or(fallback.channel),
        }
    }

    fn priority(&self) -> Result<i64, ApiError> {
        match &self.priority {
            None | Some(Value::Null) => Ok(0),
            Some(Value::Number(n)) => n.as_i64().ok_or_else(bad_priority),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(0),
            Some(Value::String(s)) => s.trim().parse().map_err(|_| bad_priority()),
            Some(_) => Err(bad_priority()),
        }
    }

    /// `extras["client::display"].contentType == "text/markdown"`.
    fn format(&self) -> Format {
        let content_type = self
            .extras
            .as_ref()
            .and_then(|e| e.get("client::display"))
            .and_then(|d| d.get("contentType"))
            .and_then(Value::as_str);
        match content_type {
            Some(t) if t.trim().eq_ignore_ascii_case("text/markdown") => Format::Markdown,
            _ => Format::Text,
        }
    }

    /// `extras["client::notification"].bigImageUrl`: fetched and attached as an image.
    fn big_image_url(&self) -> Option<String> {
        self.extras
            .as_ref()?
            .get("client::notification")?
            .get("bigImageUrl")?
            .as_str()
            .map(str::to_owned)
    }

    fn click_url(&self) -> Option<String> {
        self.extras
            .as_ref()?
            .get("client::notification")?
            .get("click")?
            .get("url")?
            .as_str()
            .map(str::to_owned)
    }
}

fn bad_priority() -> ApiError {
    ApiError::BadRequest("priority must be an integer".into())
}

/// A gotify route's error, answered in gotify's shape:
/// `{"error":…,"errorCode":…,"errorDescription":…}` with our status.
#[derive(Debug)]
pub struct GotifyError(ApiError);

impl From<ApiError> for GotifyError {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl IntoResponse for GotifyError {
    fn into_response(self) -> Response {
        let Self(err) = self;
        let status = err.status();
        let description = err.public_message();
        err.respond_as(
            status,
            json!({
                "error": status.canonical_reason().unwrap_or("Error"),
                "errorCode": status.as_u16(),
                "errorDescription": description,
            }),
        )
    }
}

/// gotify's ids are integers: 52 random bits of the message's UUIDv7 (exact in a
/// JavaScript number).
fn numeric_id(id: &str) -> i64 {
    let hex: String = id.chars().filter(char::is_ascii_hexdigit).collect();
    let tail = &hex[hex.len().saturating_sub(13)..];
    i64::from_str_radix(tail, 16).unwrap_or(0)
}

pub async fn message(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GotifyError> {
    let query = query.as_deref();
    // gotify reads title, message, priority and extras and ignores any other name; of the
    // extras, `client::display.contentType`, `client::notification.click.url` and
    // `client::notification.bigImageUrl` are honoured, the others (read by gotify's apps, not its server) answered back as sent.
    let (from_body, from_query) =
        body_and_query::<Fields>(query, &headers, body, &FieldRules::LENIENT).await?;
    let fields = from_body.or(from_query);
    let key = headers
        .get("x-gotify-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let token = key.or_else(|| find_token(&headers, &[fields.token.as_deref()]));
    if token.is_none() {
        // gotify checks the token first.
        super::super::auth::refused(&state, TokenRoute::Send(Endpoint::Gotify));
        return Err(ApiError::Unauthorized(
            "missing token: pass your pushbot token as ?token=, X-Gotify-Key or Authorization: Bearer"
                .into(),
        )
        .into());
    }
    let Some(text) = fields.message.clone().filter(|m| has_visible(m)) else {
        return Err(ApiError::BadRequest("message is required".into()).into());
    };
    let priority = fields.priority()?;
    let idempotency_key = idempotency_key(&headers, None)?;
    let accepted = submit(
        &state,
        Submission {
            token,
            title: fields.title.clone(),
            content: Some(text.clone()),
            channel: fields.channel.clone(),
            idempotency_key,
            url: fields.click_url(),
            urgency: Urgency::from_gotify(priority),
            format: fields.format(),
            endpoint: Endpoint::Gotify,
            image_url: fields.big_image_url(),
            file_url: None,
            file_name: None,
            attachments: Vec::new(),
            sender: None,
            when: None,
            // Acknowledgements from this route: not mapped yet (issue 30).
            ack: None,
        },
    )
    .await?;
    let message = &accepted.message;
    let date = humantime::format_rfc3339_millis(message.created_at.to_system_time()).to_string();
    let mut answer = json!({
        "id": numeric_id(message.id.as_str()),
        "appid": 1,
        "message": text,
        "title": fields.title.unwrap_or_default(),
        "priority": priority,
        "date": date,
    });
    if let (Some(extras), Some(map)) = (fields.extras, answer.as_object_mut()) {
        map.insert("extras".into(), extras);
    }
    Ok((StatusCode::OK, Json(answer)).into_response())
}

pub async fn version() -> Json<Value> {
    Json(json!({
        "version": concat!("2.6.0+pushbot.", env!("CARGO_PKG_VERSION")),
        "commit": "pushbot",
        "buildDate": "",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_integers_from_the_uuid() {
        let id = "019ab5d0-7c1e-7b53-9d0e-4f8f0c2e1a77";
        let n = numeric_id(id);
        assert!(n > 0 && n < (1 << 53));
        assert_eq!(n, numeric_id(id));
        assert_ne!(n, numeric_id("019ab5d0-7c1e-7b53-9d0e-4f8f0c2e1a78"));
    }

    #[test]
    fn priorities_come_as_numbers_or_text() {
        let f = |p: Value| Fields {
            priority: Some(p),
            ..Fields::default()
        };
        assert_eq!(f(json!(8)).priority().unwrap(), 8);
        assert_eq!(f(json!("5")).priority().unwrap(), 5);
        assert!(f(json!("high")).priority().is_err());
        assert_eq!(Fields::default().priority().unwrap(), 0);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any JSON body: fields whose priority is a number or a 400, whose extras never
            /// panic the format or link lookups.
            #[test]
            fn any_json_is_fields_or_a_400(
                text in "[{}\\[\\]\":, a-z0-9]{0,60}",
                priority in any::<String>(),
                content_type in any::<String>(),
            ) {
                if let Ok(fields) = serde_json::from_str::<Fields>(&text) {
                    let _ = fields.priority();
                    let _ = fields.format();
                    let _ = fields.click_url();
                }
                let fields = Fields {
                    priority: Some(Value::String(priority)),
                    extras: Some(json!({
                        "client::display": {"contentType": content_type},
                        "client::notification": {"click": {"url": 7}},
                    })),
                    ..Fields::default()
                };
                let p = fields.priority();
                prop_assert!(matches!(p, Ok(_) | Err(ApiError::BadRequest(_))), "{p:?}");
                let _ = fields.format();
                prop_assert_eq!(fields.click_url(), None);
            }
        }
    }
}
