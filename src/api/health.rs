//! Liveness/readiness and the JSON 404.

use axum::extract::State;
use axum::http::header::RETRY_AFTER;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/", get(index))
}

/// 200 when the database (the SQLite file still there, or PostgreSQL reachable) takes
/// reads and writes; 503 otherwise. Both name the engine.
async fn healthz(State(state): State<AppState>) -> Response {
    let engine = state.store.engine().as_str();
    match state.store.check_health().await {
        Ok(()) => Json(json!({ "status": "ok", "storage": engine })).into_response(),
        Err(err) => {
            tracing::error!(error = %crate::error::chain(&err), "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(RETRY_AFTER, "5")],
                Json(json!({
                    "status": "unavailable",
                    "storage": engine,
                    "message": format!("storage is unavailable: {}", crate::error::chain(&err)),
                })),
            )
                .into_response()
        }
    }
}

async fn index() -> Json<serde_json::Value> {
    Json(json!({ "name": "pushbot", "version": env!("CARGO_PKG_VERSION") }))
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// A known path with a method it does not serve; axum adds the `Allow` header.
pub async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{method} is not allowed here; see the Allow header"
    ))
}
