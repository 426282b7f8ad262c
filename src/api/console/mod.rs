//! The web console (issue 22): server-rendered pages at `<public_url>/console`, opened with
//! the one-time link the chat's `login` answers.
//!
//! - [`session`]: the login link (a GET that only asks, a POST that uses it), logout.
//! - [`timeline`]: the member's messages, a message's story, resend and cancel.
//! - `settings`, `compose`, `admin`: the member's settings, a test message, the operators'
//!   page.
//!
//! Shared here: [`ConsoleState`] (in [`AppState`]), the [`Session`] extractor (the cookie),
//! [`Posted`] (a POST's form once its CSRF field matched), [`Layout`] (what `base.html`
//! needs), [`render`]/[`respond`] (HTML under a per-response nonce policy) and
//! [`redirect_to`] (303 under the public path prefix).
//!
//! Every link, form action, redirect and the cookie's path starts with
//! [`ConsoleState::base`]: `public_url`'s path (a reverse proxy may serve pushbot under
//! `/push`, stripping it before pushbot sees the request) + `/console`.

mod admin;
mod compose;
mod session;
mod settings;
mod timeline;

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{COOKIE, LOCATION};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq as _;

use super::AppState;
use crate::config::Settings;
use crate::domain::UserId;
use crate::time::UnixMillis;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "pushbot_console";

/// What the console needs of the settings; in [`AppState`].
#[derive(Clone, Debug)]
pub struct ConsoleState {
    /// The console's path as the browser sees it: `public_url`'s path + `/console`
    /// (`/console`, or `/push/console` behind a proxy serving pushbot under `/push`). Every
    /// link, form action, redirect and the cookie's path start with it.
    pub base: Arc<str>,
    /// `public_url` + `/console`, absolute: for links sent in the chat.
    pub public_base: Arc<str>,
    /// `public_url` is https: the cookie is `Secure`.
    pub secure: bool,
    /// `console.session_ttl`.
    pub session_ttl: Duration,
    /// `console.login_ttl`.
    pub login_ttl: Duration,
    /// `console.admins`.
    pub admins: Arc<[String]>,
}

impl ConsoleState {
    pub fn from_settings(settings: &Settings) -> Self {
        let url = settings.server.public_url.url();
        let prefix = url.path().trim_end_matches('/');
        Self {
            base: format!("{prefix}/console").into(),
            public_base: format!("{}/console", settings.public_base()).into(),
            secure: url.scheme() == "https",
            session_ttl: settings.console.session_ttl,
            login_ttl: settings.console.login_ttl,
            admins: settings.console.admins.clone().into(),
        }
    }

    /// Whether `userid` is one of `console.admins`.
    pub fn is_admin(&self, userid: &UserId) -> bool {
        self.admins.iter().any(|a| a == userid.as_str())
    }

    /// `Set-Cookie` for a new session (the id is the cookie's value).
    fn session_cookie(&self, id: &str) -> String {
        format!(
            "{COOKIE_NAME}={id}; HttpOnly; SameSite=Strict; Path={}; Max-Age={}{}",
            self.base,
            self.session_ttl.as_secs(),
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// `Set-Cookie` that removes the session cookie.
    fn cleared_cookie(&self) -> String {
        format!(
            "{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path={}; Max-Age=0{}",
            self.base,
            if self.secure { "; Secure" } else { "" }
        )
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(session::router())
        .merge(timeline::router())
        .merge(settings::router())
        .merge(compose::router())
        .merge(admin::router())
}

// ------------------------------------------------------------------------------------------
// sessions and CSRF
// ------------------------------------------------------------------------------------------

/// The logged-in member, from the session cookie. A request without a live session is
/// answered with a page (401) saying how to log in.
#[derive(Clone)]
pub struct Session {
    pub userid: UserId,
    /// The session's CSRF token: every form carries it in a hidden `csrf` field.
    pub csrf: String,
    /// One of `console.admins`.
    pub admin: bool,
    /// The cookie's value (a secret: never logged or shown), to end this session.
    id: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("userid", &self.userid)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// The session cookie's value in the request, if any. Read pair by pair, so that another
/// cookie with bytes that are not ASCII (another app on the same host) hides nothing.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| std::str::from_utf8(pair).ok())
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| crate::token::looks_valid(v))
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(id) = session_id(&parts.headers) else {
            return Err(logged_out(state));
        };
        match state.store.console_session(&id, UnixMillis::now()).await {
            Ok(Some(found)) => Ok(Self {
                admin: state.console.is_admin(&found.userid),
                userid: found.userid,
                csrf: found.csrf,
                id,
            }),
            Ok(None) => Err(logged_out(state)),
            Err(err) => Err(failure(state, &crate::error::ApiError::from(err))),
        }
    }
}

/// A POST's form fields, once its `csrf` field matched the session's (compared in constant
/// time). Without a session: the 401 page; a missing or wrong token: a 403 page and nothing
/// done; a body that is no form: 400.
pub struct Posted {
    pub session: Session,
    pub fields: Vec<(String, String)>,
}

impl Posted {
    /// The first value of the field `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl FromRequest<AppState> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, state).await?;
        // As large as a `/send` body may be (a composed message's content is one).
        let limit = crate::api::max_send_body(state.max_content_bytes);
        let bytes = match axum::body::to_bytes(body, limit).await {
            Ok(bytes) => bytes,
            Err(err) if crate::api::attach::is_length_limit(&err) => {
                return Err(notice(
                    state,
                    Some(&session),
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "内容太长 · Too large",
                    "表单太大，未做任何更改。This form is too large: nothing was changed.",
                ));
            }
            Err(_) => {
                return Err(notice(
                    state,
                    Some(&session),
                    StatusCode::BAD_REQUEST,
                    "请求无效 · Bad request",
                    "这个表单无法读取。This form could not be read.",
                ));
            }
        };
        // Not UTF-8 once percent-decoded: refused as `/send` refuses it, rather than read
        // with U+FFFD in place of the bytes (and acted on).
        let utf8 = crate::api::send::require_utf8_form(&bytes, "form body");
        let decoded = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes);
        let (Ok(()), Ok(fields)) = (utf8, decoded) else {
            return Err(notice(
                state,
                Some(&session),
                StatusCode::BAD_REQUEST,
                "请求无效 · Bad request",
                "这个表单无法读取。This form could not be read.",
            ));
        };
        let posted = Self { session, fields };
        if !csrf_matches(&posted.session.csrf, posted.get("csrf")) {
            return Err(notice(
                state,
                Some(&posted.session),
                StatusCode::FORBIDDEN,
                "请求被拒绝 · Request refused",
                "表单已过期或不是从控制台提交的，未做任何更改。请重新打开页面再试。\
                 This form is stale or was not sent from the console: nothing was changed. \
                 Open the page again and retry.",
            ));
        }
        Ok(posted)
    }
}

/// Whether the form's CSRF token is the session's (constant time; none matches nothing).
pub fn csrf_matches(expected: &str, given: Option<&str>) -> bool {
    given.is_some_and(|given| bool::from(expected.as_bytes().ct_eq(given.as_bytes())))
}

// ------------------------------------------------------------------------------------------
// pages
// ------------------------------------------------------------------------------------------

/// What `base.html` needs: every page template has a `layout` field.
#[derive(Debug, Clone)]
pub struct Layout {
    /// [`ConsoleState::base`].
    pub base: String,
    /// This response's CSP nonce (for the inline style and script).
    pub nonce: String,
    /// The session's CSRF token (empty when logged out).
    pub csrf: String,
    /// The logged-in member (empty when logged out: no navigation is shown).
    pub userid: String,
    pub admin: bool,
    /// A one-line notice at the top of the page.
    pub flash: Option<String>,
    /// Which navigation entry is this page's: `timeline`, `compose`, `settings`, `admin`.
    pub active: &'static str,
    /// The page's `<title>`.
    pub title: String,
}

impl Layout {
    /// A page of the logged-in member's.
    pub fn new(state: &AppState, session: &Session, active: &'static str, title: &str) -> Self {
        Self {
            base: state.console.base.to_string(),
            nonce: crate::token::page_key(),
            csrf: session.csrf.clone(),
            userid: session.userid.as_str().to_owned(),
            admin: session.admin,
            flash: None,
            active,
            title: title.to_owned(),
        }
    }

    /// A page for someone not logged in (the login page, errors).
    pub fn anonymous(state: &AppState, title: &str) -> Self {
        Self {
            base: state.console.base.to_string(),
            nonce: crate::token::page_key(),
            csrf: String::new(),
            userid: String::new(),
            admin: false,
            flash: None,
            active: "",
            title: title.to_owned(),
        }
    }

    /// With a one-line notice.
    pub fn with_flash(mut self, flash: impl Into<String>) -> Self {
        self.flash = Some(flash.into());
        self
    }
}

/// A short page: a heading and a line of text (errors, 401, 403, 404).
#[derive(Template)]
#[template(path = "notice.html")]
struct Notice<'a> {
    layout: Layout,
    heading: &'a str,
    text: &'a str,
    /// Show how to log in (`login` in the chat).
    login_hint: bool,
}

/// A short page with `status` (logged-in navigation when there is a session).
pub fn notice(
    state: &AppState,
    session: Option<&Session>,
    status: StatusCode,
    heading: &str,
    text: &str,
) -> Response {
    let layout = match session {
        Some(session) => Layout::new(state, session, "", heading),
        None => Layout::anonymous(state, heading),
    };
    render(
        status,
        &Notice {
            layout,
            heading,
            text,
            login_hint: false,
        },
    )
}

/// The page for a request without a live session (401).
fn logged_out(state: &AppState) -> Response {
    let heading = "请先登录 · Please log in";
    render(
        StatusCode::UNAUTHORIZED,
        &Notice {
            layout: Layout::anonymous(state, heading),
            heading,
            text: "没有登录，或会话已过期。You are not logged in, or your session has ended.",
            login_hint: true,
        },
    )
}

/// The same 404 page for a message that does not exist and for someone else's.
pub fn not_found(state: &AppState, session: &Session) -> Response {
    notice(
        state,
        Some(session),
        StatusCode::NOT_FOUND,
        "找不到 · Not found",
        "没有这条消息。There is no such message.",
    )
}

/// An error the member cannot fix (storage unavailable, a bug): its status, a generic
/// page; the cause is logged (by [`crate::error::ApiError`]'s own rules), never shown.
pub fn failure(state: &AppState, err: &crate::error::ApiError) -> Response {
    let status = err.status();
    if status.is_server_error() {
        tracing::error!(error = %crate::error::chain(err), "console request failed");
    }
    let (heading, text) = if status == StatusCode::SERVICE_UNAVAILABLE {
        (
            "暂时不可用 · Temporarily unavailable",
            "存储暂时不可用，请稍后再试。Storage is unavailable right now: try again shortly.",
        )
    } else if status.is_server_error() {
        (
            "出错了 · Something went wrong",
            "服务器出错，已记录。The server failed; it has been logged.",
        )
    } else {
        ("请求无效 · Bad request", "")
    };
    let text = if text.is_empty() {
        err.to_string()
    } else {
        text.to_owned()
    };
    render(
        status,
        &Notice {
            layout: Layout::anonymous(state, heading),
            heading,
            text: &text,
            login_hint: false,
        },
    )
}

/// Something a page template has: its [`Layout`].
pub trait HasLayout {
    fn layout(&self) -> &Layout;
}

impl HasLayout for Notice<'_> {
    fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// A template rendered into an HTML answer under the console's policy with its layout's
/// nonce. A template that fails to render (it cannot: askama checks them when compiling)
/// is a plain 500.
pub fn render<T: Template + HasLayout>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(html) => respond(status, html, &page.layout().nonce),
        Err(err) => {
            tracing::error!(error = %err, "a console template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// An HTML answer under the console's Content-Security-Policy with this `nonce`: the
/// message page's headers, plus forms and fetches to this server only.
pub fn respond(status: StatusCode, html: String, nonce: &str) -> Response {
    super::page::respond_with(
        status,
        html,
        &crate::render::page::console_security_policy(nonce),
    )
}

/// 303 to `path` under the console (`""` is the timeline, `/messages/ID` a message).
pub fn redirect_to(state: &AppState, path: &str) -> Response {
    let location = format!("{}{path}", state.console.base);
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let id = "A".repeat(32);
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE_NAME}={id}; c=d")).unwrap(),
        );
        assert_eq!(session_id(&headers), Some(id));
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("pushbot_console=../../etc"),
        );
        assert_eq!(session_id(&headers), None);
        assert_eq!(session_id(&HeaderMap::new()), None);
    }

    proptest::proptest! {
        /// Any Cookie header is read or ignored, never a panic; the session's cookie is
        /// found among any others.
        #[test]
        fn any_cookie_header_is_read_or_ignored(
            junk in "\\PC{0,200}",
            id in "[A-Za-z0-9_-]{16,64}",
        ) {
            if let Ok(value) = HeaderValue::from_str(&junk) {
                let mut headers = HeaderMap::new();
                headers.insert(COOKIE, value);
                let _ = session_id(&headers);
            }
            let others = junk.replace(COOKIE_NAME, "x");
            if let Ok(value) = HeaderValue::from_str(&format!("{others}; {COOKIE_NAME}={id}")) {
                let mut headers = HeaderMap::new();
                headers.insert(COOKIE, value);
                proptest::prop_assert_eq!(session_id(&headers), Some(id));
            }
        }
    }

    #[test]
    fn csrf_must_match_exactly() {
        assert!(csrf_matches("abc", Some("abc")));
        assert!(!csrf_matches("abc", Some("abd")));
        assert!(!csrf_matches("abc", Some("")));
        assert!(!csrf_matches("abc", None));
    }
}
