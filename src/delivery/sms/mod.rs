//! SMS providers: Aliyun SMS, Tencent Cloud SMS and Twilio behind one [`Provider`]
//! interface.
//!
//! Each provider module keeps its pure parts (request signing, the request, reading the
//! answer, classifying the provider's error codes) apart from the HTTP call, and tests
//! them against the providers' published vectors and literal answers.
//!
//! SMS sends are not idempotent (Aliyun says so explicitly), so a send has three outcomes
//! besides success ([`SmsFailure`]): refused for good, refused for now, or *unknown* — the
//! request may have reached the provider (a timeout after it was written, a connection
//! cut while waiting for the answer). An unknown send must never be resent blindly:
//! [`Provider::lookup`] asks the provider whether it took the message.
//!
//! [`content`] shapes what is sent: template variables for Aliyun and Tencent Cloud (which
//! only send approved templates), a free-text body cut to a number of segments for Twilio.

pub mod aliyun;
mod channel;
pub mod content;
mod phone;
pub mod tencent;
pub mod twilio;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures_util::future::BoxFuture;

use crate::config::{SmsProviderConfig, SmsSettings};
use crate::time::UnixMillis;
pub use channel::SmsChannel;
pub use phone::{PhoneError, PhoneNumber};

/// What to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmsText {
    /// A verification code (`sms.code_template`).
    Code(String),
    /// A message (`sms.template`): any part may be missing.
    Message {
        title: Option<String>,
        excerpt: Option<String>,
        link: Option<String>,
    },
}

/// Why a send did not succeed. Reasons are sentences for an operator or a sender; they
/// never contain a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmsFailure {
    /// Retrying cannot help until someone changes something: a template or signature not
    /// approved, a number refused or unsubscribed, wrong credentials, no balance.
    Permanent(String),
    /// Retrying later may succeed: throttled, a quota until tomorrow, the provider busy.
    /// `unreachable`: the provider did not answer (refused connection, HTTP 5xx) or every
    /// send would fail the same right now (an account-wide quota or throttling, our clock
    /// off), so the whole SMS queue waits rather than only this message.
    Transient { reason: String, unreachable: bool },
    /// The request may have reached the provider (a timeout after it was sent, the
    /// connection cut while waiting for the answer, a gateway timeout): the text may have
    /// been sent. NEVER resend blindly; ask [`Provider::lookup`].
    Unknown(String),
}

impl SmsFailure {
    /// The same failure with its reason rewritten (e.g. a secret scrubbed from it).
    pub fn map_reason(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            Self::Permanent(r) => Self::Permanent(f(r)),
            Self::Transient {
                reason,
                unreachable,
            } => Self::Transient {
                reason: f(reason),
                unreachable,
            },
            Self::Unknown(r) => Self::Unknown(f(r)),
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::Permanent(reason) | Self::Transient { reason, .. } | Self::Unknown(reason) => {
                reason
            }
        }
    }
}

/// Whether the provider took a send that ended in [`SmsFailure::Unknown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The provider has the message: do not send it again.
    Sent,
    /// The provider's records for that number and day are complete and do not have it:
    /// sending again does not send it twice.
    NotSent,
    /// The provider cannot say (yet): why, as a sentence.
    CannotTell(String),
}

/// The outcome of [`Provider::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Credentials work and the templates are approved: what was checked.
    Ok(String),
    /// Something must be fixed before sending works: what, and where.
    Failed(String),
    /// The check itself could not be done (provider unreachable, the key may not read
    /// templates); sending may still work.
    CannotCheck(String),
}

/// An SMS provider. Object safe; cheap to call concurrently.
pub trait Provider: Send + Sync {
    /// `aliyun`, `tencent` or `twilio` (as in `sms.provider`).
    fn name(&self) -> &'static str;
    /// `Aliyun SMS`, `Tencent Cloud SMS` or `Twilio`.
    fn label(&self) -> &'static str;
    /// Sends `text` to `to`. `out_id` is our id for this send (Aliyun `OutId`, Tencent
    /// `SessionContext`), what [`Provider::lookup`] looks for: at most 64 ASCII
    /// characters such as a message id.
    fn send<'a>(
        &'a self,
        to: &'a PhoneNumber,
        text: &'a SmsText,
        out_id: &'a str,
    ) -> BoxFuture<'a, Result<(), SmsFailure>>;
    /// After a send that ended in [`SmsFailure::Unknown`]: did the provider take it?
    /// `sent_at_ms`: when that send was made. Records take a moment to
    /// appear: ask no sooner than [`LOOKUP_AFTER`] after the send (before that, the answer
    /// is [`Lookup::CannotTell`]).
    fn lookup<'a>(
        &'a self,
        to: &'a PhoneNumber,
        out_id: &'a str,
        sent_at_ms: UnixMillis,
    ) -> BoxFuture<'a, Lookup>;
    /// A check that sends nothing (credentials, templates), for start-up and
    /// `pushbot doctor`.
    fn check<'a>(&'a self) -> BoxFuture<'a, Check>;
}

/// How long after a send [`Provider::lookup`] can trust an absence: the providers' send
/// records are not instantly searchable. (No provider documents the delay; one minute is
/// a cautious guess.)
pub const LOOKUP_AFTER: Duration = Duration::from_secs(60);

/// The provider `[sms]` configures. `http` is the client to call it with: build it like
/// WeCom's (`app::http_client`, rustls with compiled-in roots, the proxy environment);
/// each call is limited to `sms.timeout` on its own, whatever the client's timeout.
pub fn build(
    settings: &SmsSettings,
    http: reqwest::Client,
) -> Result<Arc<dyn Provider>, crate::config::ConfigError> {
    let config = settings.provider_config()?;
    let timeout = settings.timeout;
    Ok(match config {
        SmsProviderConfig::Aliyun(config) => {
            Arc::new(aliyun::Aliyun::new(config, http, timeout).with_settle(settings.lookup_after))
        }
        SmsProviderConfig::Tencent(config) => {
            Arc::new(tencent::Tencent::new(config, http, timeout))
        }
        SmsProviderConfig::Twilio(config) => Arc::new(twilio::Twilio::new(config, http, timeout)),
    })
}

/// Longest part of a provider's own message quoted in a reason.
const MAX_QUOTED: usize = 200;

/// A provider's message for a reason: one line, at most [`MAX_QUOTED`] characters.
fn quote(message: &str) -> String {
    let line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(MAX_QUOTED) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line,
    }
}

/// `{label} refused: {code} ({message}): {hint}`, the hint left out when empty.
fn refusal(label: &str, verb: &str, code: &str, message: &str, hint: &str) -> String {
    let message = quote(message);
    let mut reason = format!("{label} {verb}: {code}");
    if !message.is_empty() && message != code {
        reason.push_str(&format!(" ({message})"));
    }
    if !hint.is_empty() {
        reason.push_str(": ");
        reason.push_str(hint);
    }
    reason
}

/// What a provider's error code means (each provider's `explain` maps its codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Permanent,
    /// Only this number or this message, for now.
    Transient,
    /// Every send, for now (throttling, quotas, our clock).
    TransientAll,
    /// The provider failed inside: the text may have been sent.
    Unknown,
}

/// The failure for error `code` with the provider's `message`, as its `explain` classed it.
fn class_failure(
    label: &str,
    code: &str,
    message: &str,
    (class, hint): (Class, &str),
) -> SmsFailure {
    match class {
        Class::Permanent => SmsFailure::Permanent(refusal(label, "refused", code, message, hint)),
        Class::Transient | Class::TransientAll => SmsFailure::Transient {
            reason: refusal(label, "refused for now", code, message, hint),
            unreachable: class == Class::TransientAll,
        },
        Class::Unknown => SmsFailure::Unknown(refusal(label, "failed", code, message, hint)),
    }
}

/// What to say when the provider refuses a signature because our clock is off.
const CLOCK_HINT: &str = "this server's clock is off (signed requests must be within minutes of the provider's time): run NTP (chrony, systemd-timesyncd) and check `date -u`";

/// The provider's answer to one call.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// Why a call got no answer.
enum CallError {
    /// Nothing reached the provider: no connection (refused, DNS, TLS handshake).
    NotSent(String),
    /// The request may have reached the provider: a timeout or a failure after it was
    /// written (or while reading the answer).
    MaybeSent(String),
}

impl CallError {
    /// As a send's failure.
    fn into_failure(self, label: &str) -> SmsFailure {
        match self {
            Self::NotSent(why) => SmsFailure::Transient {
                reason: format!("{label} is unreachable, nothing was sent: {why}"),
                unreachable: true,
            },
            Self::MaybeSent(why) => SmsFailure::Unknown(format!(
                "no answer from {label} after the request was sent ({why}): the text may have been sent"
            )),
        }
    }

    fn text(&self) -> &str {
        match self {
            Self::NotSent(why) | Self::MaybeSent(why) => why,
        }
    }
}

/// Sends `request` with its own `timeout` and reads the whole answer. Errors never show
/// the URL (it holds the recipient and the text for Aliyun).
async fn call(request: reqwest::RequestBuilder, timeout: Duration) -> Result<Answer, CallError> {
    let describe = |e: reqwest::Error| crate::wecom::client::describe(e.without_url());
    let response = request.timeout(timeout).send().await.map_err(|e| {
        if e.is_connect() || e.is_builder() {
            CallError::NotSent(describe(e))
        } else {
            CallError::MaybeSent(describe(e))
        }
    })?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| CallError::MaybeSent(format!("reading the answer: {}", describe(e))))?;
    Ok(Answer {
        status,
        body: body.to_vec(),
    })
}

/// The beginning of a body that is not the JSON expected, for a reason.
fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let excerpt = quote(&text);
    if excerpt.is_empty() {
        "an empty body".to_owned()
    } else {
        format!("{excerpt:?}")
    }
}

/// An HTTP error status without a provider error in the body, as a send's failure.
/// 502 and 503 come from a gateway that did not reach the service: nothing was sent. A
/// 504 (or 500) may come after the service took the request: unknown.
fn status_failure(label: &str, status: u16, body: &[u8]) -> SmsFailure {
    let seen = format!("HTTP {status} with {}", body_excerpt(body));
    match status {
        429 => SmsFailure::Transient {
            reason: format!("{label} is throttling ({seen}): will retry"),
            unreachable: true,
        },
        502 | 503 => SmsFailure::Transient {
            reason: format!("{label} is unavailable ({seen}): will retry"),
            unreachable: true,
        },
        500 | 504..=599 => SmsFailure::Unknown(format!(
            "{label} answered {seen}: the text may have been sent"
        )),
        _ => SmsFailure::Permanent(format!("{label} refused the request: {seen}")),
    }
}

/// Now, unix seconds.
fn now_secs() -> i64 {
    UnixMillis::now().as_secs()
}

/// `2023-10-26T10:22:32Z` for unix seconds `secs` (shifted by `offset_secs`: `+08:00`
/// for China's calendar).
fn rfc3339(secs: i64, offset_secs: i64) -> String {
    /// 9999-12-31T23:59:59Z: the format has four digits for the year.
    const LAST: i64 = 253_402_300_799;
    let shifted = u64::try_from(secs.saturating_add(offset_secs).clamp(0, LAST)).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(shifted)).to_string()
}

/// A fresh nonce: 32 random hexadecimal digits.
fn nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// `host` or `host:port` of `url`, exactly as the HTTP client sends it in `Host` (the
/// port only when it is not the scheme's default).
fn host_header(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::{KeyInit as _, Mac as _};
    // HMAC takes a key of any length.
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Replaces every occurrence of `secret` in `text` (a provider echoing a credential back).
fn redact(text: String, secret: &str) -> String {
    crate::error::scrub_secrets(text, &[secret])
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A request as a mock provider received it.
    #[derive(Debug, Clone)]
    pub(crate) struct Recorded {
        pub method: String,
        pub path: String,
        /// The raw query string, as sent.
        pub query: String,
        /// Names lower-cased.
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Recorded {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// A provider on 127.0.0.1 answering every request with `reply`'s status and body.
    pub(crate) struct Mock {
        pub base: String,
        /// `127.0.0.1:port`, as the client sends it in `Host`.
        pub host: String,
        pub requests: Arc<Mutex<Vec<Recorded>>>,
    }

    impl Mock {
        /// A base URL without a server (or with one the test runs itself).
        pub fn at(base: String) -> Mock {
            let host = base.trim_start_matches("http://").to_owned();
            Mock {
                base,
                host,
                requests: Arc::default(),
            }
        }
    }

    pub(crate) async fn mock(
        reply: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static,
    ) -> Mock {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mock = Mock::at(format!("http://{addr}"));
        let requests = mock.requests.clone();
        let reply = Arc::new(reply);
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (requests, reply) = (requests.clone(), reply.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                let recorded = Recorded {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().unwrap_or_default().to_owned(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_owned(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    body: body.to_vec(),
                };
                let (status, text) = reply(&recorded);
                requests.lock().unwrap().push(recorded);
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    text,
                )
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        mock
    }

    /// The client the gateway uses, without any proxy.
    pub(crate) fn client() -> reqwest::Client {
        crate::app::http_client(Duration::from_secs(5), crate::app::Egress::Direct).unwrap()
    }

    #[test]
    fn time_formats() {
        assert_eq!(rfc3339(1_698_315_752, 0), "2023-10-26T10:22:32Z");
        // 2019-02-25 16:00 UTC is the 26th in China.
        assert_eq!(&rfc3339(1_551_110_400, 8 * 3600)[..10], "2019-02-26");
        assert_eq!(&rfc3339(1_551_110_399, 8 * 3600)[..10], "2019-02-25");
        assert_eq!(rfc3339(i64::MAX, 8 * 3600), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(-5, 0), "1970-01-01T00:00:00Z");
        assert_eq!(nonce().len(), 32);
        assert_ne!(nonce(), nonce());
    }

    #[test]
    fn host_as_sent() {
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(
            host_header(&url("https://dysmsapi.aliyuncs.com")),
            "dysmsapi.aliyuncs.com"
        );
        assert_eq!(host_header(&url("https://a.example:443/")), "a.example");
        assert_eq!(host_header(&url("http://127.0.0.1:8080")), "127.0.0.1:8080");
        assert_eq!(host_header(&url("http://[::1]:9/")), "[::1]:9");
    }

    #[test]
    fn reasons_quote_one_line_and_not_too_much() {
        assert_eq!(
            refusal(
                "Aliyun SMS",
                "refused",
                "isv.X",
                "a\nb",
                "check sms.template"
            ),
            "Aliyun SMS refused: isv.X (a b): check sms.template"
        );
        assert_eq!(refusal("T", "refused", "C", "", ""), "T refused: C");
        let long = "x".repeat(500);
        assert_eq!(quote(&long).chars().count(), MAX_QUOTED + 1);
        assert_eq!(
            redact("key AKIDsecret1 echoed".into(), "AKIDsecret1"),
            "key *** echoed"
        );
    }

    #[test]
    fn http_statuses_without_a_provider_error() {
        assert!(matches!(
            status_failure("X", 503, b""),
            SmsFailure::Transient {
                unreachable: true,
                ..
            }
        ));
        assert!(matches!(
            status_failure("X", 429, b""),
            SmsFailure::Transient {
                unreachable: true,
                ..
            }
        ));
        assert!(matches!(
            status_failure("X", 504, b""),
            SmsFailure::Unknown(_)
        ));
        assert!(matches!(
            status_failure("X", 500, b"oops"),
            SmsFailure::Unknown(_)
        ));
        let failure = status_failure("X", 404, b"<html>not found</html>");
        assert!(matches!(failure, SmsFailure::Permanent(_)));
        assert!(
            failure.reason().contains("HTTP 404"),
            "{}",
            failure.reason()
        );
    }
}
