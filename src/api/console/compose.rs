//! Compose (H2): a test message to any of the member's channels, through the acceptance `/send` uses.

use axum::Router;

use crate::api::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
}
