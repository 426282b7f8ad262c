//! The console's Compose page: the member sends themself a test message — a title,
//! content, a format and one of their channels — through the very acceptance `/send` uses
//! ([`send::submit`]: the same checks, limits, routes, durability and metrics), and gets a
//! link to it in the timeline. A refusal is `/send`'s, with its status, and stores nothing.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;

use super::settings::SettingsView;
use super::{HasLayout, Layout, Posted, Session, failure, render};
use crate::api::AppState;
use crate::api::send::{self, Submission};
use crate::domain::{ChannelName, UserId};
use crate::error::ApiError;
use crate::metrics::Endpoint;

pub fn router() -> Router<AppState> {
    Router::new().route("/console/compose", get(show).post(compose))
}

/// One `<option>` of a `<select>`.
struct Choice {
    value: String,
    label: String,
}

/// The formats `/send` takes (`format=`).
const FORMATS: [(&str, &str); 2] = [("text", "纯文本 text"), ("markdown", "Markdown")];

/// The channels the member can send to: their order, WeCom, each bound address, their
/// own destinations and the shared ones they may use, and all at once.
fn channels(state: &AppState, view: &SettingsView) -> Vec<Choice> {
    let mut out = vec![Choice {
        value: String::new(),
        label: format!("我的顺序 My order: {}", view.order),
    }];
    if state.outbox.has_channel(ChannelName::WeCom) {
        out.push(Choice {
            value: ChannelName::WeCom.as_str().to_owned(),
            label: "企业微信 WeCom".to_owned(),
        });
    }
    for row in view.addresses.iter().filter(|r| r.configured) {
        if let Some(masked) = &row.masked {
            out.push(Choice {
                value: row.channel.to_owned(),
                label: format!("{} {masked}", row.label),
            });
        }
    }
    for dest in &view.destinations {
        out.push(Choice {
            value: dest.name.clone(),
            label: format!("{} ({})", dest.name, dest.kind),
        });
    }
    for name in &view.shared {
        out.push(Choice {
            value: name.clone(),
            label: format!("{name}（共享 shared）"),
        });
    }
    out.push(Choice {
        value: "all".to_owned(),
        label: "全部 All my channels".to_owned(),
    });
    out
}

/// What the member typed, kept when the page comes back with a refusal.
#[derive(Debug, Default, Clone)]
struct Draft {
    title: String,
    content: String,
    format: String,
    channel: String,
    /// The form's own idempotency key (a fresh one on every page): the same form sent
    /// twice — a double click, a reload after sending — is one message.
    key: String,
}

impl Draft {
    /// An empty form with a fresh key.
    fn new() -> Self {
        Self {
            key: crate::token::page_key(),
            ..Self::default()
        }
    }

    fn of(posted: &Posted) -> Self {
        let field = |name: &str| posted.get(name).unwrap_or("").to_owned();
        Self {
            title: field("title"),
            content: field("content"),
            format: field("format"),
            channel: field("channel"),
            key: field("key"),
        }
    }
}

#[derive(Template)]
#[template(path = "compose.html")]
struct ComposePage {
    layout: Layout,
    draft: Draft,
    formats: Vec<Choice>,
    channels: Vec<Choice>,
    /// The message just accepted: its id.
    sent: Option<String>,
    /// Why the message was refused (`/send`'s words).
    refused: Option<String>,
}

impl HasLayout for ComposePage {
    fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// The page with `draft` in the form; `sent` or `refused` said on top.
async fn page(
    state: &AppState,
    session: &Session,
    status: StatusCode,
    draft: Draft,
    sent: Option<String>,
    refused: Option<String>,
) -> Response {
    let view = match SettingsView::read(state, &session.userid).await {
        Ok(view) => view,
        Err(err) => return failure(state, &err),
    };
    let formats = FORMATS
        .iter()
        .map(|(value, label)| Choice {
            value: (*value).to_owned(),
            label: (*label).to_owned(),
        })
        .collect();
    let page = ComposePage {
        layout: Layout::new(state, session, "compose", "发送 Compose"),
        channels: channels(state, &view),
        formats,
        draft,
        sent,
        refused,
    };
    render(status, &page)
}

/// `GET {base}/compose`.
async fn show(State(state): State<AppState>, session: Session) -> Response {
    page(&state, &session, StatusCode::OK, Draft::new(), None, None).await
}

/// `POST {base}/compose` (its CSRF field checked by [`Posted`]).
async fn compose(State(state): State<AppState>, posted: Posted) -> Response {
    let draft = Draft::of(&posted);
    match accept(&state, &posted.session.userid, &draft).await {
        Ok(id) => {
            page(
                &state,
                &posted.session,
                StatusCode::OK,
                Draft::new(),
                Some(id),
                None,
            )
            .await
        }
        Err(err) if err.status().is_server_error() => failure(&state, &err),
        Err(err) => {
            let wait = match &err {
                ApiError::TooManyRequests { retry_after, .. } => Some(*retry_after),
                _ => None,
            };
            let mut response = page(
                &state,
                &posted.session,
                err.status(),
                draft,
                None,
                Some(err.public_message()),
            )
            .await;
            if let Some(wait) = wait {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            response
        }
    }
}

/// The draft as `/send` would take it from the member: the same format check, the same
/// per-member send budget, then [`send::submit`] (counted as `/send`'s). Answers the new
/// message's id (the earlier one's, for a form sent again).
async fn accept(state: &AppState, userid: &UserId, draft: &Draft) -> Result<String, ApiError> {
    let format = send::format(Some(&draft.format))?;
    // The session stands for the token: the member's budget, as `/send` checks it.
    state.send_limiter.check(userid.as_str())?;
    let accepted = send::submit(
        state,
        Submission {
            title: Some(draft.title.clone()),
            content: Some(draft.content.clone()),
            channel: Some(draft.channel.clone()),
            format,
            idempotency_key: Some(format!("console-{}", draft.key))
                .filter(|_| !draft.key.is_empty()),
            endpoint: Endpoint::Native,
            sender: Some(crate::api::auth::Sender::Member(userid.clone(), None, None)),
            ..Submission::default()
        },
    )
    .await?;
    Ok(accepted.message.id.to_string())
}
