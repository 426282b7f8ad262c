//! `GET /metrics`: Prometheus metrics ([`crate::metrics`]), when `server.metrics` is on —
//! else 404 like any unknown path. With `server.metrics_token` set, only for
//! `Authorization: Bearer <token>` (compared in constant time).
//!
//! OpenMetrics text for a scraper that asks for it (Prometheus does, in `Accept`), the
//! classic Prometheus text format for anyone else. The queue depth is counted at scrape
//! time: one `count(*)` over the partial index of queued messages, so its cost grows with
//! the backlog only (about 30 ms per million queued), not with the history kept.

use axum::Router;
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use secrecy::{ExposeSecret as _, SecretString};
use subtle::ConstantTimeEq as _;

use super::{AppState, auth};
use crate::config::ServerSettings;
use crate::error::ApiError;
use crate::metrics::{OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};

/// Who may read `/metrics`.
#[derive(Clone)]
pub enum MetricsAccess {
    /// `server.metrics = false`: the path does not exist.
    Off,
    /// Anyone who can reach the port.
    Open,
    /// Only with `Authorization: Bearer <server.metrics_token>`.
    Bearer(SecretString),
}

impl MetricsAccess {
    pub fn from_settings(server: &ServerSettings) -> Self {
        match (server.metrics, &server.metrics_token) {
            (false, token) => {
                if token.is_some() {
                    tracing::warn!(
                        "server.metrics_token is set but server.metrics is off: /metrics answers 404"
                    );
                }
                Self::Off
            }
            (true, None) => Self::Open,
            (true, Some(token)) => Self::Bearer(token.clone()),
        }
    }
}

/// A static route: it wins over the compat captures (`/{key}`), so `POST /metrics` is a
/// 405, never an ntfy publish to topic "metrics".
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match &state.metrics_access {
        MetricsAccess::Off => return super::health::not_found().await.into_response(),
        MetricsAccess::Open => {}
        MetricsAccess::Bearer(expected) => {
            let given = auth::find_token(&headers, &[]);
            let valid = given.as_deref().is_some_and(|given| {
                bool::from(given.as_bytes().ct_eq(expected.expose_secret().as_bytes()))
            });
            if !valid {
                let what = if given.is_some() { "wrong" } else { "missing" };
                let mut response = ApiError::Unauthorized(format!(
                    "{what} metrics token: send Authorization: Bearer <server.metrics_token>"
                ))
                .into_response();
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"pushbot metrics\""),
                );
                return response;
            }
        }
    }
    match state.store.queued_count().await {
        Ok(queued) => state.metrics.set_queue_depth(queued),
        // The storage trouble is reported by /healthz and the writer; the gauge keeps
        // its last value rather than failing the whole scrape.
        Err(err) => {
            tracing::debug!(error = %crate::error::chain(&err), "could not count queued messages for /metrics")
        }
    }
    match state.store.scheduled_count().await {
        Ok(scheduled) => state.metrics.set_scheduled(scheduled),
        Err(err) => {
            tracing::debug!(error = %crate::error::chain(&err), "could not count scheduled messages for /metrics")
        }
    }
    let delivery = super::health::Delivery::read(&state).await;
    state
        .metrics
        .set_delivery(delivery.pass_age, delivery.oldest_due.as_deref());
    let openmetrics = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match state.metrics.encode(openmetrics) {
        Ok(body) => {
            let content_type = if openmetrics {
                OPENMETRICS_CONTENT_TYPE
            } else {
                TEXT_CONTENT_TYPE
            };
            ([(CONTENT_TYPE, content_type)], body).into_response()
        }
        Err(err) => ApiError::internal(format!("could not encode metrics: {err}")).into_response(),
    }
}
