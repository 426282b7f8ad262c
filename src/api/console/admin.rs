//! The operators' page: `GET {base}/admin`, for the members listed in `console.admins`
//! only — anyone else gets a 403 page on every path under `{base}/admin`, whatever the
//! method.
//!
//! It shows, read-only: each configured channel's health (this instance's scheduler's
//! view: up or down, since when, the last reason) and that of the members' own robots that
//! are or were down (by member and name: never their address or key), what waits per
//! channel (queued and
//! scheduled counts, the oldest queued message and the next scheduled time), the recent
//! failures (failed messages and failed tries with their reasons, newest first), and the
//! members (when they joined, their token's age — never the token —, messages today and
//! queued). `POST {base}/admin/doctor` (CSRF-checked) runs `pushbot doctor`'s checks
//! against the settings and the database the server runs with and shows their output;
//! the doctor prints no secret.

use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::{FromRequest as _, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{any, get};

use super::{HasLayout, Layout, Posted, Session, failure, notice, redirect_to, render};
use crate::api::AppState;
use crate::delivery::quiet::offset_text;
use crate::error::ApiError;
use crate::store::{ChannelQueue, FailedAttempt, FailedMessage, MemberSummary};
use crate::time::UnixMillis;

/// Members listed (by userid); a note says when there are more.
const MEMBER_ROWS: usize = 200;
/// Failures are looked for among the messages accepted this long ago or later.
const FAILURE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// Failed messages listed, and failed tries listed.
const FAILURE_ROWS: usize = 30;
/// The doctor's checks are cut off after this (what they printed until then is shown),
/// within the server's 30-second request timeout.
const DOCTOR_TIMEOUT: Duration = Duration::from_secs(25);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/admin", get(page).fallback(wrong_method))
        .route(
            "/console/admin/doctor",
            get(doctor_page).post(doctor).fallback(wrong_method),
        )
        // Every other path under it: 403 for members who are not operators, 404 for those
        // who are; any method.
        .route("/console/admin/", any(unknown))
        .route("/console/admin/{*rest}", any(unknown))
}

/// The 403 page for a member who is not one of `console.admins`.
fn operators_only(state: &AppState, session: &Session) -> Response {
    notice(
        state,
        Some(session),
        StatusCode::FORBIDDEN,
        "仅限运维 · Operators only",
        "这个页面只对配置项 console.admins 中的成员开放。This page is only for the members \
         listed in console.admins.",
    )
}

async fn unknown(State(state): State<AppState>, session: Session) -> Response {
    if !session.admin {
        return operators_only(&state, &session);
    }
    notice(
        &state,
        Some(&session),
        StatusCode::NOT_FOUND,
        "找不到 · Not found",
        "没有这个页面。There is no such page.",
    )
}

/// A method the path does not serve: 403 for members who are not operators, 405 for those
/// who are.
async fn wrong_method(State(state): State<AppState>, session: Session) -> Response {
    if !session.admin {
        return operators_only(&state, &session);
    }
    notice(
        &state,
        Some(&session),
        StatusCode::METHOD_NOT_ALLOWED,
        "不支持的请求 · Method not allowed",
        "这个地址不接受这种请求。This address does not take this method.",
    )
}

async fn page(State(state): State<AppState>, session: Session) -> Response {
    if !session.admin {
        return operators_only(&state, &session);
    }
    let layout = Layout::new(&state, &session, "admin", "运维 Operators");
    match AdminPage::read(&state, layout, None).await {
        Ok(page) => render(StatusCode::OK, &page),
        Err(err) => failure(&state, &err),
    }
}

/// A GET of the doctor's address (a reload after a run, a bookmark): the page.
async fn doctor_page(State(state): State<AppState>, session: Session) -> Response {
    if !session.admin {
        return operators_only(&state, &session);
    }
    redirect_to(&state, "/admin#doctor")
}

/// The session is looked at before the body: a member who is not an operator gets the 403
/// page whatever the form holds (or fails to hold); an operator's form must then carry the
/// session's CSRF token ([`Posted`]).
async fn doctor(State(state): State<AppState>, session: Session, request: Request) -> Response {
    if !session.admin {
        return operators_only(&state, &session);
    }
    let posted = match Posted::from_request(request, &state).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let session = &posted.session;
    let mut out = Vec::new();
    let finished = tokio::time::timeout(
        DOCTOR_TIMEOUT,
        crate::doctor::run_loaded(
            &state.running_config,
            "the running server's settings",
            crate::doctor::Database::Running(&state.store),
            &mut out,
        ),
    )
    .await;
    let mut output = String::from_utf8_lossy(&out).into_owned();
    let passed = finished.unwrap_or_else(|_| {
        output.push_str(&format!(
            "\n… 超过 {0} 秒，已停止 · stopped after {0} s: run pushbot doctor where pushbot \
             runs to see the rest\n",
            DOCTOR_TIMEOUT.as_secs()
        ));
        false
    });
    tracing::info!(userid = %session.userid, passed, "the doctor's checks were run from the console");
    let run = DoctorRun { output, passed };
    let flash = if passed {
        "自检完成：没有未通过的项 · Checks done: nothing failed"
    } else {
        "自检完成：有未通过的项 · Checks done: some failed"
    };
    let layout = Layout::new(&state, session, "admin", "运维 Operators").with_flash(flash);
    match AdminPage::read(&state, layout, Some(run)).await {
        Ok(page) => render(StatusCode::OK, &page),
        Err(err) => failure(&state, &err),
    }
}

/// The doctor's output, as `pushbot doctor` prints it.
struct DoctorRun {
    output: String,
    passed: bool,
}

struct HealthRow {
    channel: String,
    /// Whose destination it is (added in the chat); `None`: one of the server's channels.
    member: Option<String>,
    up: bool,
    since: String,
    last_error: Option<String>,
}

struct QueueRow {
    channel: String,
    queued: i64,
    scheduled: i64,
    /// The oldest queued message: how long it waits, whose, its id.
    oldest: Option<OldestRow>,
    next_due: Option<String>,
}

struct OldestRow {
    waiting: String,
    userid: String,
    id: String,
    attempts: i64,
    last_error: Option<String>,
}

struct FailedRow {
    at: String,
    userid: String,
    id: String,
    title: String,
    channel: String,
    reason: String,
}

struct TryRow {
    at: String,
    userid: String,
    id: String,
    channel: String,
    outcome: String,
    reason: String,
}

struct MemberRow {
    userid: String,
    since: String,
    token_age: String,
    today: i64,
    queued: i64,
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage {
    layout: Layout,
    /// When the page was read, in the server's zone.
    now: String,
    /// The server's zone (`delivery.utc_offset`), e.g. `+08:00`.
    zone: String,
    /// How long ago the scheduler last began a pass, and whether that counts as stalled.
    scheduler: String,
    stalled: bool,
    health: Vec<HealthRow>,
    queues: Vec<QueueRow>,
    failed: Vec<FailedRow>,
    tries: Vec<TryRow>,
    window_days: u64,
    members: Vec<MemberRow>,
    more_members: bool,
    doctor: Option<DoctorRun>,
}

impl HasLayout for AdminPage {
    fn layout(&self) -> &Layout {
        &self.layout
    }
}

impl AdminPage {
    async fn read(
        state: &AppState,
        layout: Layout,
        doctor: Option<DoctorRun>,
    ) -> Result<Self, ApiError> {
        let now = UnixMillis::now();
        let offset = state.utc_offset;
        let at = |t: UnixMillis| local_time(t, offset);
        let (pass_age, stall_after) = state.outbox.scheduler_pass();
        let since = |s: Option<UnixMillis>| {
            s.map_or_else(
                || "本次启动以来 since this server started".to_owned(),
                |s| format!("{} ({} ago)", at(s), ago(now.since(s))),
            )
        };
        let members = state
            .outbox
            .member_channel_health()
            .into_iter()
            .map(|(userid, channel, h)| (Some(userid.as_str().to_owned()), channel, h));
        let health = state
            .outbox
            .channel_health()
            .into_iter()
            .map(|(channel, h)| (None, channel, h))
            .chain(members)
            .map(|(member, channel, h)| HealthRow {
                channel: channel.as_str().to_owned(),
                member,
                up: h.up,
                since: since(h.since),
                last_error: h.last_error,
            })
            .collect();
        let queues = state
            .store
            .admin_queues()
            .await?
            .into_iter()
            .map(|q: ChannelQueue| QueueRow {
                channel: q.channel.as_str().to_owned(),
                queued: q.queued,
                scheduled: q.scheduled,
                oldest: q.oldest.map(|o| OldestRow {
                    waiting: ago(now.since(o.created_at)),
                    userid: o.userid.as_str().to_owned(),
                    id: o.id.as_str().to_owned(),
                    attempts: o.attempts,
                    last_error: o.last_error,
                }),
                next_due: q.next_due.map(at),
            })
            .collect();
        let failures = state
            .store
            .admin_failures(now - FAILURE_WINDOW, FAILURE_ROWS)
            .await?;
        let failed = failures
            .messages
            .into_iter()
            .map(|m: FailedMessage| FailedRow {
                at: at(m.at),
                userid: m.userid.as_str().to_owned(),
                id: m.id.as_str().to_owned(),
                title: m.title.unwrap_or_default(),
                channel: m.channel.as_str().to_owned(),
                reason: m.reason.unwrap_or_default(),
            })
            .collect();
        let tries = failures
            .attempts
            .into_iter()
            .map(|a: FailedAttempt| TryRow {
                at: at(a.at),
                userid: a.userid.as_str().to_owned(),
                id: a.message_id.as_str().to_owned(),
                channel: a.channel.as_str().to_owned(),
                outcome: a.outcome,
                reason: a.reason.unwrap_or_default(),
            })
            .collect();
        let page = state
            .store
            .admin_members(now.start_of_day(offset), MEMBER_ROWS)
            .await?;
        let members = page
            .members
            .into_iter()
            .map(|m: MemberSummary| MemberRow {
                userid: m.userid.as_str().to_owned(),
                since: at(m.since),
                token_age: ago(now.since(m.token_created_at)),
                today: m.today,
                queued: m.queued,
            })
            .collect();
        Ok(Self {
            layout,
            now: at(now),
            zone: offset_text(offset),
            scheduler: ago(pass_age),
            stalled: pass_age > stall_after,
            health,
            queues,
            failed,
            tries,
            window_days: FAILURE_WINDOW.as_secs() / 86_400,
            members,
            more_members: page.more,
            doctor,
        })
    }
}

/// `2026-12-07 17:03:21` in the zone `utc_offset` seconds east of UTC.
fn local_time(at: UnixMillis, utc_offset: i32) -> String {
    // Within what RFC 3339 can write: year 1970 to 9999.
    const LAST: i64 = 253_402_300_799_000;
    let shifted = at.as_millis().saturating_add(i64::from(utc_offset) * 1000);
    let shifted = UnixMillis::from_millis(shifted.clamp(0, LAST));
    let text = humantime::format_rfc3339_seconds(shifted.to_system_time()).to_string();
    text.trim_end_matches('Z').replacen('T', " ", 1)
}

/// A duration as people read an age: `42 s`, `5 min`, `3 h`, `12 d`.
fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_the_servers_zone() {
        // 2026-12-07 09:03:21 UTC.
        let at = UnixMillis::from_millis(1_796_634_201_000);
        assert_eq!(local_time(at, 0), "2026-12-07 09:03:21");
        assert_eq!(local_time(at, 8 * 3600), "2026-12-07 17:03:21");
        assert_eq!(local_time(at, -10 * 3600), "2026-12-06 23:03:21");
        // Never a panic at the edges.
        local_time(UnixMillis::from_millis(0), -3600);
        local_time(UnixMillis::MAX, 14 * 3600);
    }

    #[test]
    fn ages_are_rounded_down_to_their_unit() {
        let s = Duration::from_secs;
        assert_eq!(ago(s(0)), "0 s");
        assert_eq!(ago(s(59)), "59 s");
        assert_eq!(ago(s(60)), "1 min");
        assert_eq!(ago(s(3599)), "59 min");
        assert_eq!(ago(s(3600)), "1 h");
        assert_eq!(ago(s(86_399)), "23 h");
        assert_eq!(ago(s(86_400 * 40)), "40 d");
    }
}
