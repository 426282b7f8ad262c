//! The member's messages, newest first (the timeline), and each message's story, with
//! Resend and Cancel.
//!
//! - `GET {base}` (also `{base}/timeline`): `?status=&channel=&q=&before=`; 50 rows a page,
//!   keyset-paged ([`Store::console_timeline`](crate::store::Store::console_timeline));
//!   `&fragment=1` answers only the list, which the page's few lines of script fetch every
//!   5 seconds while the tab is visible (first page only).
//! - `GET {base}/messages/{id}`: its status, content, files, every attempt per channel
//!   (the API's [`history`](crate::api::messages::history)), its page link, the message it
//!   resends and those that resend it.
//! - `POST {base}/messages/{id}/resend`, `POST {base}/messages/{id}/cancel` (CSRF): the
//!   API's own [`resend_message`] and [`cancel_message`].
//!
//! Someone else's message answers exactly as an unknown one: the same 404 page.

use askama::Template;
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};

use super::{HasLayout, Layout, Posted, Session, failure, not_found, notice, redirect_to, render};
use crate::api::AppState;
use crate::api::messages::{cancel_message, resend_message};
use crate::delivery::quiet;
use crate::domain::{MessageId, UserId};
use crate::error::ApiError;
use crate::store::{Message, MessageStatus, TimelineFilter};
use crate::time::UnixMillis;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(timeline))
        .route("/console/", get(to_timeline))
        .route("/console/timeline", get(timeline))
        .route("/console/messages/{id}", get(story))
        .route("/console/messages/{id}/resend", post(resend))
        .route("/console/messages/{id}/cancel", post(cancel))
}

/// Rows on one page of the timeline.
pub const PAGE_ROWS: usize = 50;

/// Longest search text kept (characters); the rest is dropped.
pub const MAX_SEARCH_CHARS: usize = 100;

// ------------------------------------------------------------------------------------------
// the query
// ------------------------------------------------------------------------------------------

/// The timeline's query as given (every field optional; empty is absent).
#[derive(Debug, Default, serde::Deserialize)]
struct RawTimelineQuery {
    before: Option<String>,
    status: Option<String>,
    channel: Option<String>,
    q: Option<String>,
    fragment: Option<String>,
}

/// The timeline's query, read: the filter and whether only the list is wanted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimelineQuery {
    pub filter: TimelineFilter,
    pub fragment: bool,
}

/// A channel's stored name: lower-case letters, digits, `-` and `_`, 1 to 32 of them.
fn channel_name(text: &str) -> bool {
    (1..=32).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Reads the timeline's query string. Empty fields are absent; search text is trimmed, its
/// NULs dropped (no stored text has one) and cut at [`MAX_SEARCH_CHARS`]. A status that is
/// none, a `before` that is no message id or a channel that is no channel's name is an
/// error saying so.
pub fn parse_timeline_query(query: Option<&str>) -> Result<TimelineQuery, String> {
    let raw: RawTimelineQuery = crate::api::send::parse_query(query).map_err(|e| e.to_string())?;
    let present = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    let status = present(raw.status)
        .map(|s| {
            s.trim().parse::<MessageStatus>().map_err(|_| {
                let names: Vec<&str> = MessageStatus::ALL.iter().map(|s| s.as_str()).collect();
                format!("status must be one of {}", names.join(", "))
            })
        })
        .transpose()?;
    let before = present(raw.before)
        .map(|b| {
            let b = b.trim();
            uuid::Uuid::parse_str(b)
                .map(|u| MessageId::from_stored(u.hyphenated().to_string()))
                .map_err(|_| format!("before must be a message id, not {:?}", short(b)))
        })
        .transpose()?;
    let channel = present(raw.channel)
        .map(|c| {
            let c = c.trim().to_ascii_lowercase();
            if channel_name(&c) {
                Ok(c)
            } else {
                Err(format!(
                    "channel must be a channel's name, not {:?}",
                    short(&c)
                ))
            }
        })
        .transpose()?;
    let search = raw
        .q
        .map(|q| {
            q.chars()
                .filter(|c| *c != '\0')
                .collect::<String>()
                .trim()
                .chars()
                .take(MAX_SEARCH_CHARS)
                .collect::<String>()
        })
        .filter(|q| !q.is_empty());
    Ok(TimelineQuery {
        filter: TimelineFilter {
            before,
            status,
            channel,
            search,
        },
        fragment: raw.fragment.is_some_and(|f| f == "1"),
    })
}

/// At most 40 characters of what was given, for an error message.
fn short(text: &str) -> String {
    text.chars().take(40).collect()
}

/// The query string that asks for `filter` (and `fragment=1` when `fragment`), `""` for
/// none; what [`parse_timeline_query`] reads back as the same.
pub fn timeline_query_string(filter: &TimelineFilter, fragment: bool) -> String {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if let Some(status) = filter.status {
        pairs.push(("status", status.as_str()));
    }
    if let Some(channel) = &filter.channel {
        pairs.push(("channel", channel));
    }
    if let Some(q) = &filter.search {
        pairs.push(("q", q));
    }
    if let Some(before) = &filter.before {
        pairs.push(("before", before.as_str()));
    }
    if fragment {
        pairs.push(("fragment", "1"));
    }
    serde_urlencoded::to_string(&pairs).unwrap_or_default()
}

// ------------------------------------------------------------------------------------------
// the timeline
// ------------------------------------------------------------------------------------------

/// A message as a timeline row shows it.
pub struct Row {
    pub id: String,
    pub title: String,
    /// In the member's time zone, `2026-12-07 09:30`.
    pub at: String,
    /// RFC 3339, UTC (`<time datetime>`).
    pub at_utc: String,
    pub status: &'static str,
    pub channel: String,
    pub last_error: Option<String>,
    pub resent: bool,
    /// The message's own page (`/m/{id}?k=…`).
    pub page: Option<String>,
}

impl Row {
    fn of(m: &Message, utc_offset: i32, public_base: &str) -> Self {
        Self {
            id: m.id.as_str().to_owned(),
            title: shown_title(m),
            at: local_time(m.created_at, utc_offset),
            at_utc: crate::api::messages::rfc3339(m.created_at),
            status: m.status.as_str(),
            channel: m.channel.clone().unwrap_or_default(),
            last_error: m.last_error.clone(),
            resent: m.resent_from.is_some(),
            page: m
                .page_key
                .as_deref()
                .map(|key| m.id.page_url(public_base, key)),
        }
    }
}

/// `2026-12-07 09:30:05` at `utc_offset` seconds east of UTC.
fn local_time(at: UnixMillis, utc_offset: i32) -> String {
    let by = std::time::Duration::from_secs(u64::from(utc_offset.unsigned_abs()));
    let shifted = if utc_offset >= 0 { at + by } else { at - by };
    let text = humantime::format_rfc3339_seconds(shifted.to_system_time()).to_string();
    text.trim_end_matches('Z').replacen('T', " ", 1)
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

/// An option of a `<select>`.
pub struct Choice {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "timeline.html")]
struct Timeline {
    layout: Layout,
    rows: Vec<Row>,
    /// The next (older) page's query string, when there is one.
    older: Option<String>,
    /// The first page's query string (the filters without `before`), when this is not it.
    newest: Option<String>,
    /// The filters' query string, for the live update (first page only: `None` otherwise).
    live: Option<String>,
    search: String,
    statuses: Vec<Choice>,
    channels: Vec<Choice>,
    filtered: bool,
    offset: String,
}

impl HasLayout for Timeline {
    fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// Only the list (`fragment=1`), for the live update.
#[derive(Template)]
#[template(path = "timeline_list.html")]
struct TimelineList {
    layout: Layout,
    rows: Vec<Row>,
    older: Option<String>,
    newest: Option<String>,
    filtered: bool,
}

impl HasLayout for TimelineList {
    fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// The member's offset from UTC: their own, else the server's.
async fn member_offset(state: &AppState, userid: &UserId) -> Result<i32, ApiError> {
    Ok(state
        .store
        .member_prefs(userid)
        .await?
        .utc_offset
        .unwrap_or(state.utc_offset))
}

/// `GET {base}/`: the timeline's address is `{base}` (relative links are written from it).
async fn to_timeline(State(state): State<AppState>) -> Response {
    redirect_to(&state, "")
}

async fn timeline(
    State(state): State<AppState>,
    session: Session,
    RawQuery(query): RawQuery,
) -> Response {
    let query = match parse_timeline_query(query.as_deref()) {
        Ok(query) => query,
        Err(problem) => {
            return notice(
                &state,
                Some(&session),
                StatusCode::BAD_REQUEST,
                "请求无效 · Bad request",
                &problem,
            );
        }
    };
    match timeline_page(&state, &session, query).await {
        Ok(response) => response,
        Err(err) => failure(&state, &err),
    }
}

async fn timeline_page(
    state: &AppState,
    session: &Session,
    query: TimelineQuery,
) -> Result<Response, ApiError> {
    let filter = query.filter;
    // One row more than a page tells whether there is an older page.
    let mut messages = state
        .store
        .console_timeline(&session.userid, &filter, PAGE_ROWS + 1)
        .await?;
    let more = messages.len() > PAGE_ROWS;
    messages.truncate(PAGE_ROWS);
    let older = more.then(|| messages.last()).flatten().map(|last| {
        timeline_query_string(
            &TimelineFilter {
                before: Some(last.id.clone()),
                ..filter.clone()
            },
            false,
        )
    });
    let first_page = TimelineFilter {
        before: None,
        ..filter.clone()
    };
    let newest = filter
        .before
        .is_some()
        .then(|| timeline_query_string(&first_page, false));
    let filtered = filter.status.is_some() || filter.channel.is_some() || filter.search.is_some();
    let offset = member_offset(state, &session.userid).await?;
    let rows: Vec<Row> = messages
        .iter()
        .map(|m| Row::of(m, offset, &state.public_base))
        .collect();
    let layout = Layout::new(state, session, "timeline", "时间线 Timeline");
    if query.fragment {
        return Ok(render(
            StatusCode::OK,
            &TimelineList {
                layout,
                rows,
                older,
                newest,
                filtered,
            },
        ));
    }
    let statuses = MessageStatus::ALL
        .iter()
        .map(|s| Choice {
            value: s.as_str().to_owned(),
            label: status_label(*s).to_owned(),
            selected: filter.status == Some(*s),
        })
        .collect();
    let mut names: Vec<String> = state
        .outbox
        .channels()
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    for own in state
        .store
        .member_prefs(&session.userid)
        .await?
        .destinations
    {
        if !names.iter().any(|n| n == own.as_str()) {
            names.push(own.as_str().to_owned());
        }
    }
    if let Some(channel) = &filter.channel
        && !names.contains(channel)
    {
        names.push(channel.clone());
    }
    let channels = names
        .into_iter()
        .map(|name| Choice {
            selected: filter.channel.as_deref() == Some(name.as_str()),
            label: name.clone(),
            value: name,
        })
        .collect();
    Ok(render(
        StatusCode::OK,
        &Timeline {
            layout,
            rows,
            older,
            live: filter
                .before
                .is_none()
                .then(|| timeline_query_string(&filter, true)),
            newest,
            search: filter.search.clone().unwrap_or_default(),
            statuses,
            channels,
            filtered,
            offset: quiet::offset_text(offset),
        },
    ))
}

/// A status as the console names it.
pub fn status_label(status: MessageStatus) -> &'static str {
    match status {
        MessageStatus::Scheduled => "定时 scheduled",
        MessageStatus::Queued => "排队 queued",
        MessageStatus::Delivered => "已送达 delivered",
        MessageStatus::Failed => "失败 failed",
        MessageStatus::Cancelled => "已取消 cancelled",
        MessageStatus::Muted => "已静音 muted",
        MessageStatus::Left => "已退群 left",
    }
}

// ------------------------------------------------------------------------------------------
// a message's story
// ------------------------------------------------------------------------------------------

/// What a queued message is waiting for, and until when: a retry after a failure, its turn
/// behind the messages ahead of it in the member's lane, or the member's sending limits
/// (the lane is not due before then). Not recorded while it happens (a wait costs no write):
/// read from the message and its lane when the story is shown.
async fn waiting_step(
    state: &AppState,
    m: &crate::store::Message,
    retrying: bool,
    offset: i32,
) -> Result<Step, ApiError> {
    let now = UnixMillis::now();
    let (ahead, lane_due) = state.store.lane_place(&m.userid, m.seq).await?;
    let next = m.next_attempt_at.max(lane_due.unwrap_or(m.next_attempt_at));
    let note = if retrying {
        "retry after a failure 失败后重试".to_owned()
    } else if ahead > 0 {
        format!("{ahead} ahead of it in your lane 前面还有 {ahead} 条")
    } else if lane_due.is_some_and(|due| due > now) {
        "waiting for the limit (per-member sending limits) 等待发送限额".to_owned()
    } else {
        "next in line 即将发送".to_owned()
    };
    Ok(Step {
        at: if next > now {
            local_time(next, offset)
        } else {
            local_time(now, offset)
        },
        channel: m.route.first().as_str().to_owned(),
        outcome: "waiting 等待中".to_owned(),
        error: None,
        note: Some(note),
    })
}

/// One line of a message's history.
pub struct Step {
    pub at: String,
    pub channel: String,
    pub outcome: String,
    pub error: Option<String>,
    pub note: Option<String>,
}

/// One of its files.
pub struct File {
    pub name: String,
    pub kind: &'static str,
    pub size: u64,
    pub mime: String,
}

#[derive(Template)]
#[template(path = "message.html")]
struct Story {
    layout: Layout,
    id: String,
    title: String,
    status: &'static str,
    status_label: &'static str,
    at: String,
    at_utc: String,
    format: &'static str,
    content: String,
    channel: Option<String>,
    last_error: Option<String>,
    /// The channels still to try (not for a final status).
    route: Option<String>,
    deliver_at: Option<String>,
    urgent: bool,
    url: Option<String>,
    page: Option<String>,
    resent_from: Option<String>,
    resent_as: Vec<String>,
    steps: Vec<Step>,
    files: Vec<File>,
    can_resend: bool,
    can_cancel: bool,
}

impl HasLayout for Story {
    fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// The flash a redirect after an action asks for (`?done=…`): fixed texts only, so a link
/// cannot put words on the page.
fn done_flash(query: Option<&str>) -> Option<&'static str> {
    #[derive(Default, serde::Deserialize)]
    struct Done {
        done: Option<String>,
    }
    let done: Done = crate::api::send::parse_query(query).ok()?;
    match done.done.as_deref()? {
        "resent" => Some("已重发：这是新消息。Resent: this is the new message."),
        "cancelled" => Some("已取消。Cancelled: it will not be sent."),
        _ => None,
    }
}

async fn story(
    State(state): State<AppState>,
    session: Session,
    id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let Ok(Path(id)) = id else {
        return not_found(&state, &session);
    };
    match story_page(&state, &session, &id, done_flash(query.as_deref())).await {
        Ok(Some(response)) => response,
        Ok(None) => not_found(&state, &session),
        Err(err) => failure(&state, &err),
    }
}

async fn story_page(
    state: &AppState,
    session: &Session,
    id: &str,
    flash: Option<&str>,
) -> Result<Option<Response>, ApiError> {
    // Someone else's message is not found, exactly as an unknown one.
    let Some(m) = state
        .store
        .message(id)
        .await?
        .filter(|m| m.userid == session.userid)
    else {
        return Ok(None);
    };
    let attempts = state.store.attempts_of(&m.id).await?;
    let files = crate::api::messages::attachments(state, &m.id)
        .await?
        .into_iter()
        .enumerate()
        .map(|(idx, f)| File {
            name: f.filename.unwrap_or_else(|| format!("file {}", idx + 1)),
            kind: f.kind,
            size: f.size,
            mime: f.mime,
        })
        .collect();
    let resent_as = state
        .store
        .resends_of(&session.userid, &m.id)
        .await?
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    let offset = member_offset(state, &session.userid).await?;
    let mut steps = vec![Step {
        at: local_time(m.created_at, offset),
        channel: String::new(),
        outcome: "accepted 接收".to_owned(),
        error: None,
        note: m
            .resent_from
            .as_ref()
            .map(|from| format!("resend of 重发自 {from}")),
    }];
    if let Some(due) = m.deliver_at {
        steps.push(Step {
            at: local_time(due, offset),
            channel: String::new(),
            outcome: if m.status == MessageStatus::Scheduled {
                "waiting 等待中".to_owned()
            } else {
                "due 到期".to_owned()
            },
            error: None,
            note: Some(match m.held {
                Some(crate::store::Held::Quiet) => "quiet hours 免打扰".to_owned(),
                None => "scheduled by the sender 定时".to_owned(),
            }),
        });
    }
    // Whether the last try failed: a queued message then waits for its retry, not its turn.
    let retrying = attempts
        .last()
        .is_some_and(|a| a.outcome != "delivered" && a.channel == m.route.first());
    let tried = crate::api::messages::history(&m, attempts)
        .into_iter()
        .map(|a| Step {
            at: humantime::parse_rfc3339(&a.at)
                .ok()
                .map(|t| {
                    let ms = t
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
                    local_time(UnixMillis::from_millis(ms), offset)
                })
                .unwrap_or(a.at),
            channel: match a.channel {
                crate::store::StoredChannel::Known(c) => c.as_str().to_owned(),
                crate::store::StoredChannel::Unknown(name) => name,
            },
            outcome: a.outcome,
            error: a.error,
            note: a.note,
        });
    steps.extend(tried);
    if m.status == MessageStatus::Queued {
        steps.push(waiting_step(state, &m, retrying, offset).await?);
    }
    if let Some(via) = &m.via {
        steps.push(Step {
            at: m
                .delivered_at
                .map_or_else(String::new, |at| local_time(at, offset)),
            channel: "wecom".to_owned(),
            outcome: "digested 合并发送".to_owned(),
            error: None,
            note: Some(format!("in digest 摘要 {via}")),
        });
    }
    if m.status == MessageStatus::Cancelled {
        steps.push(Step {
            at: local_time(m.updated_at, offset),
            channel: String::new(),
            outcome: "cancelled 已取消".to_owned(),
            error: None,
            note: None,
        });
    }
    let mut layout = Layout::new(state, session, "timeline", &shown_title(&m));
    if let Some(flash) = flash {
        layout = layout.with_flash(flash);
    }
    let page = Story {
        layout,
        id: m.id.as_str().to_owned(),
        title: shown_title(&m),
        status: m.status.as_str(),
        status_label: status_label(m.status),
        at: local_time(m.created_at, offset),
        at_utc: crate::api::messages::rfc3339(m.created_at),
        format: m.format.as_str(),
        content: m.content.clone().unwrap_or_default(),
        channel: m.channel.clone(),
        last_error: m.last_error.clone(),
        route: (!m.status.is_final()).then(|| m.route.to_display()),
        deliver_at: m.deliver_at.map(|at| local_time(at, offset)),
        urgent: m.urgent,
        url: m.url.clone(),
        page: m
            .page_key
            .as_deref()
            .map(|key| m.id.page_url(&state.public_base, key)),
        resent_from: m.resent_from.as_ref().map(|id| id.to_string()),
        resent_as,
        steps,
        files,
        can_resend: matches!(m.status, MessageStatus::Failed | MessageStatus::Cancelled)
            && m.address_to.is_none(),
        can_cancel: matches!(m.status, MessageStatus::Scheduled | MessageStatus::Queued),
    };
    Ok(Some(render(StatusCode::OK, &page)))
}

/// What an action's refusal looks like: the same 404 page for someone else's message, the
/// reason (409) for one that cannot be resent or cancelled now.
fn refused(state: &AppState, session: &Session, err: &ApiError) -> Response {
    match err {
        ApiError::NotFound(_) => not_found(state, session),
        ApiError::Conflict(reason) => notice(
            state,
            Some(session),
            StatusCode::CONFLICT,
            "无法完成 · Not possible",
            reason,
        ),
        other => failure(state, other),
    }
}

/// `POST {base}/messages/{id}/resend`: the new message's page.
async fn resend(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    posted: Posted,
) -> Response {
    let Ok(Path(id)) = id else {
        return not_found(&state, &posted.session);
    };
    match resend_message(&state, &posted.session.userid, &id).await {
        Ok(accepted) => redirect_to(
            &state,
            &format!("/messages/{}?done=resent", accepted.message.id),
        ),
        Err(err) => refused(&state, &posted.session, &err),
    }
}

/// `POST {base}/messages/{id}/cancel`: the message's page, cancelled.
async fn cancel(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    posted: Posted,
) -> Response {
    let Ok(Path(id)) = id else {
        return not_found(&state, &posted.session);
    };
    match cancel_message(&state, &posted.session.userid, &id).await {
        Ok(()) => match uuid::Uuid::parse_str(&id) {
            Ok(uuid) => redirect_to(
                &state,
                &format!("/messages/{}?done=cancelled", uuid.hyphenated()),
            ),
            Err(_) => not_found(&state, &posted.session),
        },
        Err(err) => refused(&state, &posted.session, &err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_query_is_read_with_its_filters() {
        let id = MessageId::generate();
        let q = parse_timeline_query(Some(&format!(
            "status=failed&channel=email&q=%E7%A3%81%E7%9B%98+&before={id}&fragment=1"
        )))
        .unwrap();
        assert_eq!(q.filter.status, Some(MessageStatus::Failed));
        assert_eq!(q.filter.channel.as_deref(), Some("email"));
        assert_eq!(q.filter.search.as_deref(), Some("磁盘"));
        assert_eq!(q.filter.before, Some(id));
        assert!(q.fragment);
        assert_eq!(
            parse_timeline_query(Some("status=&channel=&q=&before=")).unwrap(),
            TimelineQuery::default()
        );
        assert_eq!(
            parse_timeline_query(None).unwrap(),
            TimelineQuery::default()
        );
        for bad in ["status=lost", "before=x", "channel=a%20b", "before=%00"] {
            assert!(parse_timeline_query(Some(bad)).is_err(), "{bad}");
        }
        let q = parse_timeline_query(Some(&format!("q={}", "长".repeat(500)))).unwrap();
        assert_eq!(q.filter.search.unwrap().chars().count(), MAX_SEARCH_CHARS);
    }

    #[test]
    fn local_times_are_in_the_members_zone() {
        let at = UnixMillis::from_millis(1_700_000_000_000);
        assert_eq!(local_time(at, 0), "2023-11-14 22:13:20");
        assert_eq!(local_time(at, 8 * 3600), "2023-11-15 06:13:20");
        assert_eq!(local_time(at, -5 * 3600 - 1800), "2023-11-14 16:43:20");
    }

    #[test]
    fn only_known_actions_have_a_flash() {
        assert!(done_flash(Some("done=resent")).is_some());
        assert!(done_flash(Some("done=%3Cscript%3E")).is_none());
        assert!(done_flash(None).is_none());
    }

    fn filters() -> impl Strategy<Value = TimelineFilter> {
        (
            proptest::option::of(proptest::sample::select(MessageStatus::ALL.to_vec())),
            proptest::option::of("[a-z0-9_-]{1,32}"),
            proptest::option::of("\\PC{1,40}"),
            proptest::option::of(any::<u128>()),
        )
            .prop_map(|(status, channel, search, before)| TimelineFilter {
                status,
                channel,
                search: search
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty() && !s.contains('\0')),
                before: before.map(|b| {
                    MessageId::from_stored(uuid::Uuid::from_u128(b).hyphenated().to_string())
                }),
            })
    }

    proptest! {
        /// Any query string is a filter or an error, never a panic.
        #[test]
        fn any_query_is_read_or_refused(query in "\\PC{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_timeline_query(Some(&query));
            let encoded: String = bytes.iter().map(|b| format!("q=%{b:02X}&")).collect();
            let _ = parse_timeline_query(Some(&encoded));
        }

        /// The links the timeline writes (older page, filters) read back as the same filter.
        #[test]
        fn written_queries_read_back(filter in filters(), fragment in any::<bool>()) {
            let text = timeline_query_string(&filter, fragment);
            let read = parse_timeline_query(Some(&text)).unwrap();
            prop_assert_eq!(read.filter, filter);
            prop_assert_eq!(read.fragment, fragment);
        }
    }
}
