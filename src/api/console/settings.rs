//! The member's settings (H2): bindings, fallback order, format, quiet hours — every change through `crate::api::chat::run`.

use axum::Router;

use crate::api::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
}
