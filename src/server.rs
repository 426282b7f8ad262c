//! The accept loop: HTTP/1.1 on hyper with a header-read (and keep-alive idle) timeout, a
//! cap on open connections, request-head limits answered in JSON, and a graceful shutdown
//! that lets open requests finish.
//!
//! `axum::serve` has none of the first three: idle or trickling clients could hold
//! connections (and file descriptors, and memory) forever.
//!
//! Only HTTP/1.1 (and 1.0) is served. hyper has no idle timeout for HTTP/2 (its keep-alive
//! pings only detect dead peers; an idle client that answers pings stays forever), this
//! service runs behind reverse proxies that speak HTTP/1.1 to it, and curl speaks HTTP/1.1
//! over plain HTTP. hyper recognises an HTTP/2 prior-knowledge preface and closes such a
//! connection without an answer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};

use crate::error::ApiError;

/// Longest request target (path and query) we answer; longer gets 414 in JSON.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest header section (names, values, separators) we answer; larger gets 431 in JSON.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Most header fields we answer; more gets 431 in JSON.
pub const MAX_HEADERS: usize = 100;

/// hyper's own limit on a request head, above ours so that ours answer first (in JSON).
/// Past it, hyper itself answers 431 with an empty body and closes the connection.
const HYPER_MAX_HEAD_BYTES: usize = 64 * 1024;
/// hyper's own limit on header fields, likewise above ours.
const HYPER_MAX_HEADERS: usize = 2 * MAX_HEADERS;

/// File descriptors kept free for everything but client connections: the database pool
/// and the writer's connection (a few descriptors each on SQLite), the listener, logs and
/// the runtime. Outbound delivery connections (WeCom, SMTP, SMS, destinations: up to
/// `delivery.concurrency`) are added to this.
const FD_RESERVE_BASE: u64 = 64;

/// Pause after an accept error that is not about one connection (e.g. out of descriptors),
/// so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// How the accept loop treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// `server.header_read_timeout`: also the keep-alive idle timeout.
    pub header_read_timeout: Duration,
    /// The effective cap (see [`connection_cap`]).
    pub max_connections: usize,
    /// After the shutdown signal, open connections get this long to finish; the rest are
    /// dropped.
    pub drain_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, closes
/// idle connections, lets requests in progress finish (up to `drain_timeout`) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = axum::middleware::from_fn(check_request_head).layer(router);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_header_size(HYPER_MAX_HEAD_BYTES)
        .max_headers(HYPER_MAX_HEADERS);

    let cap = options.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(cap));
    // Leave the "at the cap" state only once a tenth of the slots are free again, so a
    // server hovering at the cap logs two lines, not two per connection.
    let resume_at = (cap / 10).max(1);
    let mut at_cap = false;
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !at_cap {
                    at_cap = true;
                    tracing::warn!(
                        max_connections = cap,
                        "connection limit reached: new connections wait until open ones close \
                         (idle ones are closed after server.header_read_timeout)"
                    );
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        // The semaphore is never closed.
                        Err(_) => break,
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_error(&err).await;
                    continue;
                }
            },
        };
        if at_cap && slots.available_permits() >= resume_at {
            at_cap = false;
            tracing::info!(
                open = cap - slots.available_permits(),
                "below the connection limit again"
            );
        }
        // Small JSON answers: do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        // Every request knows its TCP peer, as axum's `ConnectInfo` (what
        // `axum::serve(…into_make_service_with_connect_info)` would give).
        let service = TowerToHyperService::new(app.clone().map_request(
            move |req: hyper::Request<Incoming>| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        ));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                // Timeouts, resets, malformed requests: the client's problem, not ours.
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(slot);
        });
    }

    // Stop accepting: close the listening socket, so new clients are refused at once.
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        tracing::info!(open, "waiting for open connections to finish");
    }
    if tokio::time::timeout(options.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_timeout = ?options.drain_timeout,
            "connections still open after the drain timeout; dropping them"
        );
    }
}

/// Errors about one connection (it was reset before we got to it) are routine; anything
/// else (out of file descriptors, out of memory) is logged and the loop pauses briefly.
async fn accept_error(err: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        tracing::debug!(error = %err, "accept: connection gone before it was accepted");
        return;
    }
    tracing::error!(error = %err, "accept error; pausing before accepting again");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

/// Answers over-long request targets and over-large header sections in JSON before any
/// routing happens; hyper's own (higher) limits catch only what is far beyond ours.
async fn check_request_head(request: Request, next: Next) -> Response {
    match head_within_limits(request.uri(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(err) => {
            tracing::debug!(error = %err, "request head over the limits");
            let mut response = err.into_response();
            // Outside the router, so outside its layers: set here as they set it.
            response.headers_mut().insert(
                axum::http::header::X_CONTENT_TYPE_OPTIONS,
                axum::http::HeaderValue::from_static("nosniff"),
            );
            response
        }
    }
}

fn head_within_limits(uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
    let uri_len = uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return Err(ApiError::UriTooLong(format!(
            "the request URI is {uri_len} bytes; at most {} KiB is accepted \
             (send long content in a POST body)",
            MAX_URI_BYTES / 1024
        )));
    }
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::HeadersTooLarge(format!(
            "{} header fields; at most {MAX_HEADERS} are accepted",
            headers.len()
        )));
    }
    // As on the wire: "name: value\r\n".
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > MAX_HEADER_BYTES {
        return Err(ApiError::HeadersTooLarge(format!(
            "the header section is {size} bytes; at most {} KiB is accepted",
            MAX_HEADER_BYTES / 1024
        )));
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard limit and returns the connection cap that
/// fits under it: `configured`, or less (with one warning) when the limit minus a reserve
/// for storage and `outbound` delivery connections cannot hold that many.
pub fn connection_cap(configured: usize, outbound: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            tracing::warn!(error = %err, "could not raise the open-file limit");
            match rlimit::getrlimit(rlimit::Resource::NOFILE) {
                Ok((soft, _hard)) => soft,
                // Nothing to compare with: trust the configuration.
                Err(_) => return configured,
            }
        }
    };
    let reserve = FD_RESERVE_BASE.saturating_add(u64::try_from(outbound).unwrap_or(u64::MAX));
    let cap = cap_for_fd_limit(configured, limit, reserve);
    if cap < configured {
        tracing::warn!(
            max_connections = configured,
            open_file_limit = limit,
            reserved = reserve,
            effective = cap,
            "server.max_connections does not fit under the open-file limit (ulimit -n); \
             serving at most `effective` connections; raise the hard limit to allow more"
        );
    }
    cap
}

/// The cap under an open-file `limit` with `reserve` descriptors kept for other uses; at
/// least a few connections so the service stays usable on a tiny limit.
fn cap_for_fd_limit(configured: usize, limit: u64, reserve: u64) -> usize {
    const MIN_CAP: usize = 16;
    let room = usize::try_from(limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
    configured.min(room.max(MIN_CAP))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderName, HeaderValue, StatusCode};

    fn uri(path: &str) -> Uri {
        path.parse().unwrap()
    }

    #[test]
    fn cap_is_lowered_to_fit_the_fd_limit() {
        assert_eq!(cap_for_fd_limit(1024, 1_048_576, 128), 1024);
        assert_eq!(cap_for_fd_limit(1024, 1024, 128), 896);
        assert_eq!(cap_for_fd_limit(1024, 1024 + 128, 128), 1024);
        // A tiny limit still leaves a usable service.
        assert_eq!(cap_for_fd_limit(1024, 100, 128), 16);
        assert_eq!(cap_for_fd_limit(4, 100, 128), 4);
    }

    #[test]
    fn long_uri_is_414() {
        let ok = format!("/send?content={}", "a".repeat(MAX_URI_BYTES - 20));
        assert!(head_within_limits(&uri(&ok), &HeaderMap::new()).is_ok());
        let long = format!("/send?content={}", "a".repeat(MAX_URI_BYTES));
        let err = head_within_limits(&uri(&long), &HeaderMap::new()).unwrap_err();
        assert_eq!(err.status(), StatusCode::URI_TOO_LONG);
    }

    #[test]
    fn many_or_large_headers_are_431() {
        let mut many = HeaderMap::new();
        for i in 0..=MAX_HEADERS {
            many.insert(
                HeaderName::try_from(format!("x-h{i}")).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        let err = head_within_limits(&uri("/"), &many).unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

        let mut large = HeaderMap::new();
        let value = HeaderValue::try_from("v".repeat(MAX_HEADER_BYTES)).unwrap();
        large.insert("x-big", value);
        let err = head_within_limits(&uri("/"), &large).unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

        let mut fine = HeaderMap::new();
        fine.insert(
            "x-big",
            HeaderValue::try_from("v".repeat(MAX_HEADER_BYTES - 100)).unwrap(),
        );
        assert!(head_within_limits(&uri("/"), &fine).is_ok());
    }
}
