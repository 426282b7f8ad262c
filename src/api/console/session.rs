//! Logging in and out. `login` in the chat stores a one-time link; opening it (`GET
//! /console/login?t=…`) only shows whom it logs in, with a button, because chat apps and
//! link previews fetch links by themselves; the button's POST uses the link (once, before
//! `console.login_ttl`), starts a session and sets its cookie. Logging out ends the session.

use askama::Template;
use axum::Router;
use axum::extract::{Form, RawQuery, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;

use super::{HasLayout, Layout, Posted, failure, notice, redirect_to, render};
use crate::api::AppState;
use crate::error::ApiError;
use crate::store::{LoginLink, LoginUse};
use crate::time::UnixMillis;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/login", get(confirm).post(log_in))
        .route("/console/logout", post(log_out))
}

#[derive(Debug, Default, Deserialize)]
struct LoginQuery {
    t: Option<String>,
}

#[derive(Template)]
#[template(path = "login.html")]
struct Confirm {
    layout: Layout,
    userid: String,
    token: String,
}

impl HasLayout for Confirm {
    fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// The link's token from `t=`, if it has a token's shape.
fn link_token(t: Option<String>) -> Option<String> {
    t.filter(|t| crate::token::looks_valid(t))
}

/// `GET /console/login?t=…`: whom the link logs in, and a button (the link is not used).
async fn confirm(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let token = crate::api::send::parse_query::<LoginQuery>(query.as_deref())
        .ok()
        .and_then(|q| link_token(q.t));
    let Some(token) = token else {
        return unusable(&state, &LoginUse::Unknown);
    };
    match state.store.console_login(&token, UnixMillis::now()).await {
        Ok(LoginLink::Usable(userid)) => {
            let heading = "登录 · Log in";
            render(
                StatusCode::OK,
                &Confirm {
                    layout: Layout::anonymous(&state, heading),
                    userid: userid.as_str().to_owned(),
                    token,
                },
            )
        }
        Ok(LoginLink::Used) => unusable(&state, &LoginUse::Used),
        Ok(LoginLink::Expired) => unusable(&state, &LoginUse::Expired),
        Ok(LoginLink::Unknown) => unusable(&state, &LoginUse::Unknown),
        Err(err) => failure(&state, &ApiError::from(err)),
    }
}

/// A link that cannot log in: 410 used or expired, 400 unknown.
fn unusable(state: &AppState, why: &LoginUse) -> Response {
    let (status, text) = match why {
        LoginUse::Used => (
            StatusCode::GONE,
            "这个登录链接已经用过了。请在应用里重新发送 login（登录）获取新链接。\
             This login link has been used already: send login to the app for a new one.",
        ),
        LoginUse::Expired => (
            StatusCode::GONE,
            "这个登录链接已过期。请在应用里重新发送 login（登录）获取新链接。\
             This login link has expired: send login to the app for a new one.",
        ),
        LoginUse::Unknown | LoginUse::LoggedIn(_) => (
            StatusCode::BAD_REQUEST,
            "这个登录链接无效或不完整。请在应用里发送 login（登录）获取新链接。\
             This login link is not valid (or not complete): send login to the app for a new one.",
        ),
    };
    notice(state, None, status, "无法登录 · Cannot log in", text)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    t: Option<String>,
}

/// Whether the browser says the request came from another site (`Sec-Fetch-Site`): a page
/// elsewhere must not log a visitor in to someone's console (login CSRF).
fn cross_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"))
}

/// `POST /console/login` (`t=`): uses the link, starts a session, sets the cookie, 303 to
/// the timeline.
async fn log_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if cross_site(&headers) {
        return notice(
            &state,
            None,
            StatusCode::FORBIDDEN,
            "请求被拒绝 · Request refused",
            "登录只能从登录页面提交。Logging in is only possible from the login page.",
        );
    }
    let Some(token) = form.ok().and_then(|Form(f)| link_token(f.t)) else {
        return unusable(&state, &LoginUse::Unknown);
    };
    let now = UnixMillis::now();
    let userid = match state.store.use_console_login(&token, now).await {
        Ok(LoginUse::LoggedIn(userid)) => userid,
        Ok(other) => return unusable(&state, &other),
        Err(err) => return failure(&state, &ApiError::from(err)),
    };
    let session = match state
        .store
        .create_console_session(&userid, now, state.console.session_ttl)
        .await
    {
        Ok(session) => session,
        Err(err) => return failure(&state, &ApiError::from(err)),
    };
    tracing::info!(userid = %userid, "console login");
    let mut response = redirect_to(&state, "");
    if let Ok(cookie) = HeaderValue::from_str(&state.console.session_cookie(&session.id)) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

/// `POST /console/logout` (CSRF): ends this session, clears the cookie.
async fn log_out(State(state): State<AppState>, posted: Posted) -> Response {
    if let Err(err) = state.store.end_console_session(&posted.session.id).await {
        return failure(&state, &ApiError::from(err));
    }
    tracing::info!(userid = %posted.session.userid, "console logout");
    let mut response = notice(
        &state,
        None,
        StatusCode::OK,
        "已退出 · Logged out",
        "已退出控制台。再次登录请在应用里发送 login（登录）。\
         You are logged out. To log in again, send login to the app.",
    );
    if let Ok(cookie) = HeaderValue::from_str(&state.console.cleared_cookie()) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}
