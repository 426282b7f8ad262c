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
//!
//! A first segment that is not shaped like a token is a 404 before anything is looked up.

pub mod bark;
pub mod serverchan;

use axum::Router;
use axum::routing::get;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/{key}",
            get(serverchan::send_get).post(serverchan::send_post),
        )
        .route(
            "/send/{key}",
            get(serverchan::send3_get).post(serverchan::send3_post),
        )
        .route("/push", get(serverchan::status).post(bark::push_json))
        .route("/ping", get(bark::ping))
        .route("/{token}/{body}", get(bark::path_get).post(bark::path_post))
        .route(
            "/{token}/{title}/{body}",
            get(bark::path_get).post(bark::path_post),
        )
        .route(
            "/{token}/{title}/{subtitle}/{body}",
            get(bark::path_get).post(bark::path_post),
        )
}

/// `"…"` for every path segment that could be a push token (or `TOKEN.send`), so request
/// paths can be logged without them.
pub fn redact_path(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            let bare = segment.strip_suffix(".send").unwrap_or(segment);
            if crate::token::looks_valid(bare) {
                if bare.len() == segment.len() {
                    "…"
                } else {
                    "….send"
                }
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
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
        assert_eq!(redact_path(&format!("/{token}.send")), "/….send");
        assert_eq!(redact_path(&format!("/send/{token}.send")), "/send/….send");
        assert_eq!(
            redact_path(&format!("/{token}/Title/body")),
            "/…/Title/body"
        );
        assert_eq!(redact_path("/messages/abc"), "/messages/abc");
        assert_eq!(redact_path("/healthz"), "/healthz");
    }
}
