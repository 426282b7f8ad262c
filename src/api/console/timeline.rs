//! The member's messages, newest first (the timeline), and each message's story.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;

use super::{HasLayout, Layout, Session, failure, render};
use crate::api::AppState;
use crate::error::ApiError;
use crate::store::Message;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(timeline))
        .route("/console/timeline", get(timeline))
}

/// Rows on one page of the timeline.
pub const PAGE_ROWS: usize = 50;

/// A message as a timeline row shows it.
pub struct Row {
    pub id: String,
    pub title: String,
    pub at: String,
    pub status: &'static str,
    pub channel: String,
    pub last_error: Option<String>,
}

impl Row {
    fn of(m: &Message) -> Self {
        Self {
            id: m.id.as_str().to_owned(),
            title: shown_title(m),
            at: crate::api::messages::rfc3339(m.created_at),
            status: m.status.as_str(),
            channel: m.channel.clone().unwrap_or_default(),
            last_error: m.last_error.clone(),
        }
    }
}

/// The title, else the start of the content.
fn shown_title(m: &Message) -> String {
    if let Some(title) = m.title.as_deref().filter(|t| !t.trim().is_empty()) {
        return title.to_owned();
    }
    let content = m.content.as_deref().unwrap_or("");
    let mut shown: String = content.chars().take(80).collect();
    if shown.len() < content.len() {
        shown.push('…');
    }
    if shown.trim().is_empty() {
        "（无标题 untitled）".to_owned()
    } else {
        shown
    }
}

#[derive(Template)]
#[template(path = "timeline.html")]
struct Timeline {
    layout: Layout,
    rows: Vec<Row>,
}

impl HasLayout for Timeline {
    fn layout(&self) -> &Layout {
        &self.layout
    }
}

async fn timeline(State(state): State<AppState>, session: Session) -> Response {
    let rows = match state
        .store
        .messages_of(&session.userid, None, None, PAGE_ROWS as i64)
        .await
    {
        Ok(rows) => rows,
        Err(err) => return failure(&state, &ApiError::from(err)),
    };
    render(
        StatusCode::OK,
        &Timeline {
            layout: Layout::new(&state, &session, "timeline", "时间线 Timeline"),
            rows: rows.iter().map(Row::of).collect(),
        },
    )
}
