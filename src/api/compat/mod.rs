//! Drop-in endpoints for the push services scripts already speak: a script switching to
//! pushbot changes the host and puts its pushbot token where the old key went.
//!
//! Every route ends in [`super::send::submit`] — the same checks, per-member rate, channels
//! and durable outbox as `/send` — and answers in the original service's shapes (success
//! and error bodies, HTTP status), so clients that parse the answer keep working.
//!
//! Path routing (static segments always win over captures, so `/send`, `/messages`,
//! `/wecom`, `/healthz`, `/push`, `/ping` are never taken for a token):
//! - `/{token}.send`, `/send/{token}.send`: ServerChan ([`serverchan`]); `GET /push`: its
//!   status query.
//! - `/{token}/{body}`, `/{token}/{title}/{body}`, `/{token}/{title}/{subtitle}/{body}`,
//!   `POST /push`, `/ping`: Bark ([`bark`]).
//! - `POST /message`, `GET /version`: gotify ([`gotify`]).
//! - `PUT|POST /{topic}` (a `{key}` without `.send`), `/{topic}/publish|send|trigger`,
//!   `POST /`: ntfy ([`ntfy`]).
//! - `POST /hooks/alertmanager`, `POST /hooks/grafana`: alert webhooks ([`hooks`]).
//!
//! A first segment that is not shaped like a token is a 404 before anything is looked up.

pub mod bark;
pub mod gotify;
pub mod hooks;
pub mod ntfy;
pub mod serverchan;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};

use super::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/{key}",
            get(serverchan::send_get).post(key_post).put(ntfy::put),
        )
        .route(
            "/send/{key}",
            get(serverchan::send_get).post(serverchan::send_post),
        )
        .route("/", post(ntfy::publish_json))
        .route("/push", get(serverchan::status).post(bark::push_json))
        .route("/ping", get(bark::ping))
        .route("/message", post(gotify::message))
        .route("/version", get(gotify::version))
        .route("/hooks/alertmanager", post(hooks::alertmanager))
        .route("/hooks/grafana", post(hooks::grafana))
        .route("/{token}/{body}", get(pair_get).post(pair_post))
        .route(
            "/{token}/{title}/{body}",
            get(bark::path_get).post(bark::path_post),
        )
        .route(
            "/{token}/{title}/{subtitle}/{body}",
            get(bark::path_get).post(bark::path_post),
        )
}

/// `POST /{key}`: ServerChan's `TOKEN.send`, else an ntfy publish to topic `key`.
async fn key_post(
    state: State<AppState>,
    key: PathOf<String>,
    query: RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let key = match key {
        Ok(Path(key)) => key,
        // Not decodable: ServerChan's error shape, as for any other malformed key.
        Err(_) => return serverchan::send_post(state, key, query, headers, body).await,
    };
    if key.ends_with(".send") {
        serverchan::send_post(state, Ok(Path(key)), query, headers, body).await
    } else {
        ntfy::publish_path(&state, &key, query.0.as_deref(), &headers, body).await
    }
}

/// `GET /{topic}/publish` (`send`, `trigger`) is ntfy's; any other pair is Bark's
/// `/{token}/{body}`.
async fn pair_get(
    state: State<AppState>,
    pair: PathOf<Vec<String>>,
    query: RawQuery,
    headers: HeaderMap,
) -> Response {
    match publish_topic(&pair) {
        Some(topic) => ntfy::publish_get(&state, topic, query.0.as_deref(), &headers).await,
        None => bark::path_get(state, pair, query, headers).await,
    }
}

async fn pair_post(
    state: State<AppState>,
    pair: PathOf<Vec<String>>,
    query: RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match publish_topic(&pair) {
        Some(topic) => ntfy::publish_path(&state, topic, query.0.as_deref(), &headers, body).await,
        None => bark::path_post(state, pair, query, headers, body).await,
    }
}

/// The topic of `/{topic}/publish` (`send`, `trigger`); `None` for a Bark pair (or a path
/// that does not decode, which Bark's handler answers).
fn publish_topic(pair: &PathOf<Vec<String>>) -> Option<&str> {
    match pair {
        Ok(Path(segments)) => match segments.as_slice() {
            [topic, verb] if ntfy::is_publish_verb(verb) => Some(topic),
            _ => None,
        },
        Err(_) => None,
    }
}

/// A path capture that may not decode (`%FF`): handlers answer that in their own shape.
type PathOf<T> = Result<Path<T>, PathRejection>;

fn path_value<T>(path: PathOf<T>) -> Result<T, ApiError> {
    path.map(|Path(value)| value).map_err(|rejection| {
        ApiError::BadRequest(format!(
            "the path does not decode: {}",
            rejection.body_text()
        ))
    })
}

/// First path segments that are routes of their own; any other first segment is a token
/// (or a mistyped one) in one of the compat shapes.
const ROUTE_NAMES: &[&str] = &[
    "", "send", "messages", "m", "wecom", "hooks", "healthz", "metrics", "push", "ping", "message",
    "version",
];

/// Whether `name` is a route of its own (and so can never be a topic or a token).
fn is_route_name(name: &str) -> bool {
    ROUTE_NAMES.contains(&name)
}

/// The request path as it may be logged: a path under a route name keeps its segments
/// except those shaped like a token (`TOKEN` or `TOKEN.send`, also percent-encoded); a
/// path starting with anything else (a token in the compat shapes, or a mistyped one) is
/// logged as `/…` per segment, which also keeps Bark's message text out of the log.
pub fn redact_path(path: &str) -> String {
    let decode = |segment: &str| {
        percent_encoding::percent_decode_str(segment)
            .decode_utf8_lossy()
            .into_owned()
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let first = decode(segments.first().copied().unwrap_or_default());
    if !is_route_name(&first) {
        return segments.iter().map(|_| "/…").collect();
    }
    let kept: Vec<String> = segments
        .iter()
        .map(|segment| {
            let decoded = decode(segment);
            match decoded.strip_suffix(".send") {
                Some(bare) if crate::token::looks_valid(bare) => "….send".to_owned(),
                _ if crate::token::looks_valid(&decoded) => "…".to_owned(),
                _ => (*segment).to_owned(),
            }
        })
        .collect();
    format!("/{}", kept.join("/"))
}

/// Seconds since the epoch, as Bark and ServerChan report times.
fn unix_seconds() -> i64 {
    crate::store::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shaped_segments_are_redacted() {
        let token = "AbCdEfGhIjKlMnOpQrStUvWxYz012345";
        assert_eq!(redact_path(&format!("/{token}.send")), "/…");
        assert_eq!(redact_path(&format!("/send/{token}.send")), "/send/….send");
        assert_eq!(
            redact_path("/send/%41bCdEfGhIjKlMnOpQrStUvWxYz012345.send"),
            "/send/….send"
        );
        assert_eq!(
            redact_path(&format!("/hooks/grafana/{token}")),
            "/hooks/grafana/…"
        );
        assert_eq!(redact_path(&format!("/{token}/Title/body")), "/…/…/…");
        assert_eq!(redact_path("/%41bCdEfGhIjKlMnOpQrStUvWxYz012345/x"), "/…/…");
        // A mistyped token is not logged either.
        assert_eq!(redact_path("/AbCdEf!.send"), "/…");
        assert_eq!(redact_path("/messages/abc"), "/messages/abc");
        assert_eq!(redact_path("/healthz"), "/healthz");
    }
}
