//! Fetching a URL a sender gave (`image_url`, ntfy `X-Attach`, Bark `image`, …) once, at
//! acceptance. A sender's URL is a way into the network pushbot runs in, so:
//!
//! * only `http`/`https`, no user name or password in the URL;
//! * every address is checked against [`is_refused`] before anything connects to it: IP
//!   literals before the request, names after DNS resolution by [`GuardedResolver`]
//!   (which refuses when ANY resolved address is refused, and hands the connector only
//!   the addresses it checked, so a second lookup cannot rebind the name);
//! * redirects (at most [`MAX_REDIRECTS`]) are followed by hand, each hop checked again;
//! * no proxy, no cookies, no `Referer`, no header of the sender's: only our User-Agent;
//! * one deadline for the whole fetch, redirects and body included;
//! * the body is capped while it streams (a `Content-Length` over the cap is refused
//!   before reading).
//!
//! Error messages name the host, never the whole URL: a query string may hold a token.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::http::header::{CONTENT_DISPOSITION, LOCATION};
use futures_util::Stream;
use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::time::Instant;
use url::{Host, Url};

use super::address::{Reason, is_refused};
use super::describe_size;
use super::filename;
use crate::app::{Egress, StartupError};

/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 5;

/// What a fetch may do; `media.max_bytes`, `media.fetch_timeout`, `media.fetch_allow`.
#[derive(Debug, Clone)]
pub struct FetchLimits {
    /// The body's cap in bytes.
    pub max_bytes: u64,
    /// For the whole fetch: every redirect and the whole body.
    pub timeout: Duration,
    /// Networks that [`is_refused`] would refuse but the operator allows (an intranet
    /// image host). Empty by default.
    pub allow: Vec<IpNet>,
}

/// Fetches senders' URLs within [`FetchLimits`]. Cheap to clone (one connection pool).
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    limits: Arc<FetchLimits>,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A response whose headers passed; its body is still to be read.
#[derive(Debug)]
pub struct Fetched {
    /// From `Content-Disposition`, else the last path segment of the final URL;
    /// sanitised (see [`sanitize_filename`](super::sanitize_filename)).
    pub filename: Option<String>,
    /// The announced length, already checked against the cap; the body may still be
    /// cut short by the server.
    pub content_length: Option<u64>,
    /// The bytes, capped at `max_bytes` and within the deadline as they stream.
    pub body: Body,
}

/// A fetched body: `Ok` chunks, then the end, or one `Err` and the end. Yields
/// [`FetchError::TooLarge`] as soon as the bytes read pass the cap.
pub struct Body {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, FetchError>> + Send>>,
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Body")
    }
}

impl Stream for Body {
    type Item = Result<Bytes, FetchError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Why a URL was not fetched. The message is a sentence for the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Not a URL at all (the reason is the parser's, without the URL).
    #[error("the URL is not valid: {0}")]
    InvalidUrl(String),
    #[error("only http and https URLs can be fetched, not {scheme}:")]
    UnsupportedScheme { scheme: String },
    #[error("a URL with a user name or password is not fetched")]
    Credentials,
    /// The host is, or resolves to, an address [`is_refused`] refuses.
    #[error(
        "refused to fetch from {host}: it {}{reason}; only public addresses are fetched unless media.fetch_allow allows the network",
        resolved.map(|ip| format!("resolves to {ip}, ")).unwrap_or_else(|| "is ".into())
    )]
    Refused {
        host: String,
        /// The refused address a name resolved to; `None` for an IP literal.
        resolved: Option<IpAddr>,
        reason: Reason,
    },
    #[error("{host} redirected more than {MAX_REDIRECTS} times")]
    TooManyRedirects { host: String },
    #[error("{host} redirected without a valid Location")]
    BadRedirect { host: String },
    #[error("the file is larger than the limit of {}", describe_size(*limit))]
    TooLarge { limit: u64 },
    #[error("fetching the file took longer than {}", humantime::format_duration(*after))]
    Timeout { after: Duration },
    #[error("{host} answered HTTP {status}")]
    Status { host: String, status: u16 },
    /// DNS, connection, TLS or a broken body; `detail` says which, without the URL.
    #[error("could not fetch from {host}: {detail}")]
    Unreachable { host: String, detail: String },
}

impl FetchError {
    /// The HTTP status to suggest: 400 for what the sender can fix in the URL, 413 for
    /// too large, 502/504 for what the remote server did.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidUrl(_)
            | Self::UnsupportedScheme { .. }
            | Self::Credentials
            | Self::Refused { .. }
            | Self::TooManyRedirects { .. } => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRedirect { .. } | Self::Status { .. } | Self::Unreachable { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

impl Fetcher {
    /// A fetcher resolving names with the system resolver.
    pub fn new(limits: FetchLimits) -> Result<Self, StartupError> {
        Self::with_resolver(limits, Arc::new(SystemResolver))
    }

    /// A fetcher resolving names with `resolver` (tests map names to addresses with a
    /// stub). Whatever it answers still goes through [`GuardedResolver`].
    pub fn with_resolver(
        limits: FetchLimits,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Self, StartupError> {
        let limits = Arc::new(limits);
        let guarded = GuardedResolver {
            inner: resolver,
            allow: Arc::clone(&limits),
        };
        // Egress::Direct: no proxy (a proxy would resolve and connect unchecked). No
        // cookie store is compiled in (reqwest's "cookies" feature is off).
        let client = crate::app::client_builder(limits.timeout, Egress::Direct)?
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .dns_resolver(guarded)
            .build()
            .map_err(StartupError::HttpClient)?;
        Ok(Self { client, limits })
    }

    /// The limits this fetcher enforces.
    pub fn limits(&self) -> &FetchLimits {
        &self.limits
    }

    /// Checks `url` without fetching it: syntax, scheme, no credentials, and an IP-literal
    /// host against [`is_refused`] (names are checked when they resolve). For refusing a
    /// request at once, before any work; [`fetch`](Self::fetch) checks again.
    pub fn check(&self, url: &str) -> Result<Url, FetchError> {
        let url = Url::parse(url).map_err(|e| FetchError::InvalidUrl(e.to_string()))?;
        check_url(&url, &self.limits.allow)?;
        Ok(url)
    }

    /// GETs `url`, following at most [`MAX_REDIRECTS`] redirects (each checked), and
    /// returns once a successful response's headers have arrived: the body streams from
    /// [`Fetched::body`], within the same deadline and cap.
    pub async fn fetch(&self, url: &str) -> Result<Fetched, FetchError> {
        let timeout = self.limits.timeout;
        let deadline = Instant::now() + timeout;
        let mut url = Url::parse(url).map_err(|e| FetchError::InvalidUrl(e.to_string()))?;
        let mut redirects = 0;
        loop {
            let host = check_url(&url, &self.limits.allow)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(FetchError::Timeout { after: timeout });
            }
            // reqwest's per-request timeout runs until the body has been read: the
            // remaining time makes it one deadline for the whole fetch.
            let response = self
                .client
                .get(url.clone())
                .timeout(remaining)
                .send()
                .await
                .map_err(|e| classify(e, &host, timeout))?;
            let status = response.status();
            if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                if redirects == MAX_REDIRECTS {
                    return Err(FetchError::TooManyRedirects { host });
                }
                redirects += 1;
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|location| url.join(location).ok());
                url = location.ok_or(FetchError::BadRedirect { host })?;
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::Status {
                    host,
                    status: status.as_u16(),
                });
            }
            let max_bytes = self.limits.max_bytes;
            let content_length = response.content_length();
            if content_length.is_some_and(|length| length > max_bytes) {
                return Err(FetchError::TooLarge { limit: max_bytes });
            }
            let filename = response
                .headers()
                .get(CONTENT_DISPOSITION)
                .and_then(|value| filename::from_content_disposition(value.as_bytes()))
                .or_else(|| filename::from_url(&url));
            return Ok(Fetched {
                filename,
                content_length,
                body: Body::new(response, max_bytes, host, timeout),
            });
        }
    }
}

/// Checks one hop's URL; returns its host for messages.
fn check_url(url: &Url, allow: &[IpNet]) -> Result<String, FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::UnsupportedScheme {
            scheme: url.scheme().to_owned(),
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchError::Credentials);
    }
    let literal = match url.host() {
        None => return Err(FetchError::InvalidUrl("it has no host".into())),
        Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        // The url crate turns every IPv4 spelling (127.1, 0x7f000001, 2130706433) into
        // Host::Ipv4; a name the connector would still read as an address is one too.
        Some(Host::Domain(name)) => name.parse().ok(),
    };
    let host = url.host_str().unwrap_or_default().to_owned();
    if let Some(ip) = literal
        && let Some(reason) = is_refused(ip, allow)
    {
        return Err(FetchError::Refused {
            host,
            resolved: None,
            reason,
        });
    }
    Ok(host)
}

/// A reqwest error as a [`FetchError`]: a refusal by [`GuardedResolver`] anywhere in its
/// causes, a timeout, or the cause chain without the URL.
fn classify(err: reqwest::Error, host: &str, timeout: Duration) -> FetchError {
    let mut source: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(cause) = source {
        if let Some(refusal) = cause.downcast_ref::<Refusal>() {
            return FetchError::Refused {
                host: host.to_owned(),
                resolved: Some(refusal.ip),
                reason: refusal.reason,
            };
        }
        source = cause.source();
    }
    if err.is_timeout() {
        return FetchError::Timeout { after: timeout };
    }
    FetchError::Unreachable {
        host: host.to_owned(),
        detail: crate::wecom::client::describe(err.without_url()),
    }
}

impl Body {
    fn new(response: reqwest::Response, max_bytes: u64, host: String, timeout: Duration) -> Self {
        struct Reading {
            response: reqwest::Response,
            read: u64,
            max_bytes: u64,
            host: String,
            timeout: Duration,
            failed: bool,
        }
        let start = Reading {
            response,
            read: 0,
            max_bytes,
            host,
            timeout,
            failed: false,
        };
        let stream = futures_util::stream::unfold(start, |mut reading| async move {
            if reading.failed {
                return None;
            }
            let item = match reading.response.chunk().await {
                Ok(None) => return None,
                Ok(Some(chunk)) => {
                    reading.read += chunk.len() as u64;
                    if reading.read > reading.max_bytes {
                        Err(FetchError::TooLarge {
                            limit: reading.max_bytes,
                        })
                    } else {
                        Ok(chunk)
                    }
                }
                Err(e) => Err(classify(e, &reading.host, reading.timeout)),
            };
            reading.failed = item.is_err();
            Some((item, reading))
        });
        Self {
            inner: Box::pin(stream),
        }
    }
}

/// The system's resolver (getaddrinfo on tokio's blocking pool).
#[derive(Debug, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Resolves with the inner resolver, then refuses the name if ANY address is refused
/// (an attacker's name may answer one public and one private address); otherwise hands
/// the connector exactly the addresses it checked.
pub struct GuardedResolver {
    inner: Arc<dyn Resolve>,
    allow: Arc<FetchLimits>,
}

/// The error [`GuardedResolver`] fails a lookup with; [`classify`] finds it among the
/// causes of reqwest's error.
#[derive(Debug, thiserror::Error)]
#[error("{name} resolves to {ip}, {reason}")]
struct Refusal {
    name: String,
    ip: IpAddr,
    reason: Reason,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let lookup = self.inner.resolve(name);
        let limits = Arc::clone(&self.allow);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup.await?.collect();
            if let Some((ip, reason)) = addrs
                .iter()
                .find_map(|addr| is_refused(addr.ip(), &limits.allow).map(|r| (addr.ip(), r)))
            {
                return Err(Box::new(Refusal {
                    name: host,
                    ip,
                    reason,
                }) as Box<dyn StdError + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests;
