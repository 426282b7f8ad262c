//! Generic webhooks, from the config only (`[destinations.NAME] kind = "webhook"`): one
//! `POST` of a JSON body to the configured URL, signed the
//! [Standard Webhooks](https://www.standardwebhooks.com/) way when a secret is set.
//!
//! # The body
//!
//! ```json
//! {
//!   "id": "0190a5b2-7c1e-7000-8000-000000000001",
//!   "title": "Disk almost full",
//!   "content": "**/var** is at 91%",
//!   "format": "markdown",
//!   "url": "https://grafana.example.com/d/disk",
//!   "page": "https://push.example.com/m/0190a5b2-7c1e-7000-8000-000000000001?k=…",
//!   "created_at": "2023-11-14T22:13:20.123Z"
//! }
//! ```
//!
//! - `id`: the message's id (a digest's own id for a digest); the same on every retry, and
//!   the `webhook-id` header — deduplicate on it.
//! - `title`, `content`: as the sender gave them, whole (never cut); either may be `null`.
//! - `format`: `"text"` or `"markdown"` — the syntax of `content`.
//! - `url`: the link the sender attached, or `null`.
//! - `page`: the message's page on this server, readable in a browser, or `null`.
//! - `created_at`: when pushbot accepted the message, RFC 3339 in UTC with milliseconds.
//!
//! # Headers
//!
//! - `content-type: application/json`
//! - `webhook-id`: the `id` above.
//! - `webhook-timestamp`: when this attempt was made, unix seconds.
//! - `webhook-signature: v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>`,
//!   only with a secret: `whsec_` followed by the base64 of the key (the Standard Webhooks
//!   libraries verify it as they are).
//!
//! # Outcome
//!
//! Any 2xx: delivered. 408 and 429 (honouring `Retry-After`), 5xx, timeouts and refused
//! connections: retried. Any other 4xx: refused for good. Redirects are not followed when
//! the client does not follow them: configure the final URL.

use std::time::Duration;

use serde::Serialize;
use url::Url;

use super::http::{Answer, call, status_error};
use super::{Delivered, DestError, Envelope, base64, hmac_sha256};
use crate::time::UnixMillis;

const LABEL: &str = "Webhook";
/// What a digest sent to a webhook holds at most (the body itself has no limit).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// The documented body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Payload<'a> {
    pub id: &'a str,
    pub title: Option<&'a str>,
    pub content: Option<&'a str>,
    pub format: &'static str,
    pub url: Option<&'a str>,
    pub page: Option<&'a str>,
    pub created_at: String,
}

/// The body for `envelope`.
pub fn payload<'a>(envelope: &Envelope<'a>) -> Payload<'a> {
    let message = envelope.message;
    Payload {
        id: message.id.as_str(),
        title: message.title.as_deref(),
        content: message.content.as_deref(),
        format: message.format.as_str(),
        url: message.url.as_deref(),
        page: envelope.page_url,
        created_at: humantime::format_rfc3339_millis(envelope.created_at_ms.to_system_time())
            .to_string(),
    }
}

/// The HMAC key of a secret: `whsec_` (optional) then base64. `None`: not base64, or empty.
pub fn signing_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    let encoded = secret.trim();
    let encoded = encoded.strip_prefix("whsec_").unwrap_or(encoded);
    STANDARD
        .decode(encoded)
        .or_else(|_| STANDARD_NO_PAD.decode(encoded))
        .ok()
        .filter(|key| !key.is_empty())
}

/// `v1,` and the base64 of HMAC-SHA256(`key`, `"{id}.{timestamp_s}.{body}"`).
pub fn signature(key: &[u8], id: &str, timestamp_s: i64, body: &[u8]) -> String {
    let mut signed = format!("{id}.{timestamp_s}.").into_bytes();
    signed.extend_from_slice(body);
    format!("v1,{}", base64(&hmac_sha256(key, &signed)))
}

/// The Standard Webhooks headers for one attempt.
pub fn headers(
    id: &str,
    timestamp_s: i64,
    body: &[u8],
    secret: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp_s.to_string()),
    ];
    if let Some(key) = secret.and_then(signing_key) {
        headers.push(("webhook-signature", signature(&key, id, timestamp_s, body)));
    }
    headers
}

/// The outcome by HTTP status (see the module documentation).
pub(super) fn classify(answer: &Answer) -> Result<(), DestError> {
    if answer.is_success() {
        return Ok(());
    }
    Err(status_error(
        LABEL,
        answer,
        "check the receiving end (its URL, and the secret it verifies)",
    ))
}

pub(super) async fn send(
    http: &reqwest::Client,
    url: &Url,
    secret: Option<&str>,
    envelope: &Envelope<'_>,
    timeout: Duration,
) -> Result<Delivered, DestError> {
    let payload = payload(envelope);
    let body = serde_json::to_vec(&payload)
        .map_err(|e| DestError::permanent(format!("the webhook body could not be written: {e}")))?;
    let mut request = http
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers(payload.id, UnixMillis::now().as_secs(), &body, secret) {
        request = request.header(name, value);
    }
    let answer = call(request.body(body), timeout)
        .await
        .map_err(|e| e.into_error(LABEL))?;
    classify(&answer).map(|()| Delivered::Sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::destinations::tests::{PAGE, client, envelope, mock, outbound};
    use crate::delivery::destinations::{Destination, Kind, Settings};
    use crate::domain::Format;

    /// The Standard Webhooks reference libraries' signing vector
    /// (standard-webhooks/standard-webhooks, libraries/go/webhook_test.go, TestWebhookSign).
    #[test]
    fn standard_webhooks_published_vector() {
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        // The prefix is optional, as in the reference libraries.
        assert_eq!(signing_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), Some(key));
        assert_eq!(signing_key("whsec_"), None);
        assert_eq!(signing_key("whsec_***"), None);
        let headers = headers(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
            Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        );
        assert_eq!(
            headers,
            vec![
                ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".to_owned()),
                ("webhook-timestamp", "1614265330".to_owned()),
                (
                    "webhook-signature",
                    "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn the_documented_body() {
        let long = "x".repeat(100_000);
        let mut m = outbound(Some("Disk"), Some(&long));
        m.format = Format::Markdown;
        m.url = Some("https://grafana.example.com/d/disk".into());
        let value = serde_json::to_value(payload(&envelope(&m))).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "id": "0190a5b2-0000-7000-8000-000000000001",
                "title": "Disk",
                "content": long,
                "format": "markdown",
                "url": "https://grafana.example.com/d/disk",
                "page": PAGE,
                "created_at": "2023-11-14T22:13:20.123Z",
            })
        );
        let m = outbound(None, None);
        let mut env = envelope(&m);
        env.page_url = None;
        let value = serde_json::to_value(payload(&env)).unwrap();
        assert!(value["title"].is_null() && value["content"].is_null() && value["page"].is_null());
        assert_eq!(value["format"], "text");
    }

    #[test]
    fn outcome_by_status() {
        let answer = |status| Answer {
            status,
            body: Vec::new(),
            retry_after: Some(Duration::from_secs(30)),
        };
        for status in [200, 201, 202, 204, 299] {
            assert_eq!(classify(&answer(status)), Ok(()), "{status}");
        }
        for status in [400, 401, 403, 404, 410, 422] {
            assert!(
                !classify(&answer(status)).unwrap_err().is_transient(),
                "{status}"
            );
        }
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(
                classify(&answer(status)).unwrap_err().is_transient(),
                "{status}"
            );
        }
        assert_eq!(
            classify(&answer(429)).unwrap_err().retry_after(),
            Some(Duration::from_secs(30))
        );
    }

    #[tokio::test]
    async fn a_round_trip_verified_as_a_receiver_would() {
        const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let mock = mock(|r| {
            let key = signing_key(SECRET).unwrap();
            let id = r.header("webhook-id").unwrap_or_default();
            let t: i64 = r
                .header("webhook-timestamp")
                .unwrap_or("0")
                .parse()
                .unwrap();
            let expected = signature(&key, id, t, &r.body);
            let fresh = (UnixMillis::now().as_secs() - t).abs() <= 300;
            // The header may list several signatures, space-separated.
            let signed = r
                .header("webhook-signature")
                .is_some_and(|s| s.split(' ').any(|one| one == expected));
            if r.path == "/gone" {
                (410, "{}".into())
            } else if signed && fresh {
                (204, String::new())
            } else {
                (401, r#"{"error":"bad signature"}"#.into())
            }
        })
        .await;
        let bases = crate::delivery::destinations::Bases::default();
        let m = outbound(Some("T"), Some("C"));
        let settings = Settings::default();
        let url = format!("{}/hooks/pushbot?token=t0k", mock.base);
        let d = Destination::from_config(Kind::Webhook, Some(&url), None, Some(SECRET), &bases)
            .unwrap();
        assert_eq!(
            d.send(&client(), &settings, &envelope(&m)).await,
            Ok(Delivered::Sent)
        );
        let unsigned =
            Destination::from_config(Kind::Webhook, Some(&url), None, None, &bases).unwrap();
        let e = unsigned
            .send(&client(), &settings, &envelope(&m))
            .await
            .unwrap_err();
        assert!(
            !e.is_transient() && e.reason().contains("HTTP 401"),
            "{e:?}"
        );
        let gone = Destination::from_config(
            Kind::Webhook,
            Some(&format!("{}/gone", mock.base)),
            None,
            None,
            &bases,
        )
        .unwrap();
        assert!(
            !gone
                .send(&client(), &settings, &envelope(&m))
                .await
                .unwrap_err()
                .is_transient()
        );
        let first = &mock.requests()[0];
        assert_eq!(first.query, "token=t0k");
        assert_eq!(first.header("content-type"), Some("application/json"));
        assert_eq!(
            first.header("webhook-id"),
            Some("0190a5b2-0000-7000-8000-000000000001")
        );
        assert_eq!(first.json()["content"], "C");
    }
}
