//! The operators' page (H3), for `console.admins` only.

use axum::Router;

use crate::api::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
}
