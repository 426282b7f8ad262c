//! The web console (issue 22): logging in from the chat, sessions, CSRF, the timeline, a
//! message's story, resend and cancel — over HTTP, as WeCom and a browser would.
//!
//! [`console_login`] is shared with the other console tests (`console_settings.rs`,
//! `console_admin.rs`, `console_browser.rs`): it logs a member in exactly as a person
//! does — `login` typed in the app (a sealed callback), the link in the bot's passive reply
//! opened (GET), its button pressed (POST) — and answers a [`Console`] holding the session
//! cookie and the session's CSRF token.

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Response, StatusCode, Url};

use crate::helpers::*;

/// A logged-in browser: the session cookie and the CSRF token of its forms.
pub struct Console {
    /// Where requests go: the server (or a proxy in front of it), `http://127.0.0.1:PORT`.
    pub address: String,
    /// The console's path as the browser sees it (`/console`, `/push/console` behind a
    /// proxy serving pushbot under `/push`).
    pub base: String,
    pub http: reqwest::Client,
    /// `pushbot_console=…`, as sent in `Cookie`.
    pub cookie: String,
    /// The session's CSRF token (read from a page's hidden `csrf` field).
    pub csrf: String,
    /// The `Set-Cookie` the login answered (to check its attributes).
    pub set_cookie: String,
    pub userid: String,
}

impl Console {
    /// The URL of `path` under the console: `""` is the timeline, `"/settings"`,
    /// `"/messages/ID"`; a path already starting with the console's base is taken as is.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with(&self.base) {
            format!("{}{path}", self.address)
        } else {
            format!("{}{}{path}", self.address, self.base)
        }
    }

    /// GET with the session cookie (redirects not followed).
    pub async fn get(&self, path: &str) -> Response {
        self.http
            .get(self.url(path))
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .expect("GET a console page")
    }

    /// GET, asserting 200: the page's HTML.
    pub async fn page(&self, path: &str) -> String {
        let resp = self.get(path).await;
        let status = resp.status();
        let body = resp.text().await.expect("a console page's body");
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// POST the form `fields` plus the session's `csrf` field, with the session cookie.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Response {
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        form.push(("csrf", &self.csrf));
        self.post_raw(path, &form).await
    }

    /// POST exactly `fields` (no CSRF field added), with the session cookie.
    pub async fn post_raw(&self, path: &str, fields: &[(&str, &str)]) -> Response {
        self.http
            .post(self.url(path))
            .header(COOKIE, &self.cookie)
            .form(fields)
            .send()
            .await
            .expect("POST a console form")
    }
}

/// The value of the first hidden `name` field in `html`.
pub fn hidden_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_owned())
}

/// The console link in the bot's answer to `login`.
pub fn login_link(reply: &str) -> String {
    reply
        .split_whitespace()
        .find(|w| w.contains("/console/login?t="))
        .unwrap_or_else(|| panic!("no login link in the reply: {reply}"))
        .to_owned()
}

/// `userid` types `login` in the app; the link the bot answers, as a path and query on the
/// server (the public URL's origin taken off).
pub async fn login_path(app: &TestApp, userid: &str) -> String {
    let reply = app
        .user_says(userid, "login")
        .await
        .expect("the bot answers `login`");
    let link = Url::parse(&login_link(&reply)).expect("the login link is a URL");
    format!("{}?{}", link.path(), link.query().unwrap_or(""))
}

/// Logs `userid` in as a person does: `login` in the app, the link opened, its button
/// pressed. Panics unless each step answers as it should.
pub async fn console_login(app: &TestApp, userid: &str) -> Console {
    console_login_at(app, &app.address, userid).await
}

/// [`console_login`] through `address` (a proxy in front of the server).
pub async fn console_login_at(app: &TestApp, address: &str, userid: &str) -> Console {
    let path = login_path(app, userid).await;
    let http = http_client();
    let confirm = http
        .get(format!("{address}{path}"))
        .send()
        .await
        .expect("GET the login link");
    assert_eq!(confirm.status(), StatusCode::OK, "the login link opens");
    let html = confirm.text().await.unwrap();
    assert!(
        html.contains(userid),
        "the page names whom it logs in: {html}"
    );
    let token = hidden_field(&html, "t").expect("the login form carries the link's token");
    let action = path.split('?').next().unwrap().to_owned();
    let resp = http
        .post(format!("{address}{action}"))
        .form(&[("t", token.as_str())])
        .send()
        .await
        .expect("POST the login form");
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "logging in redirects");
    let base = action.trim_end_matches("/login").to_owned();
    assert_eq!(
        resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()),
        Some(base.as_str()),
        "to the timeline"
    );
    let set_cookie = resp
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("logging in sets the session cookie")
        .to_owned();
    let cookie = set_cookie.split(';').next().unwrap().trim().to_owned();
    let mut console = Console {
        address: address.to_owned(),
        base,
        http,
        cookie,
        csrf: String::new(),
        set_cookie,
        userid: userid.to_owned(),
    };
    let timeline = console.page("").await;
    console.csrf = hidden_field(&timeline, "csrf").expect("the page's forms carry a CSRF token");
    console
}

/// A request's answer: its status and body.
async fn answer(resp: Response) -> (StatusCode, String) {
    let status = resp.status();
    (status, resp.text().await.unwrap_or_default())
}

// ------------------------------------------------------------------------------------------
// logging in and out
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn login_from_the_chat_opens_the_console_with_a_strict_cookie() {
    let app = spawn_app().await;
    let alice = userid("alice");
    let console = console_login(&app, &alice).await;
    let cookie = &console.set_cookie;
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=604800",
        "Secure",
    ] {
        assert!(
            cookie.split("; ").any(|a| a == attribute),
            "{attribute} in {cookie}"
        );
    }
    let page = console.page("").await;
    assert!(page.contains(&console.userid), "the page names the member");
    assert!(page.contains("时间线 Timeline"));
    // No admin link for a member who is not one.
    assert!(!page.contains("/console/admin"), "{page}");
    for link in ["/console/compose", "/console/settings", "/console/logout"] {
        assert!(page.contains(link), "{link} in the navigation");
    }
}

#[tokio::test]
async fn the_cookie_is_not_secure_on_plain_http_and_admins_see_their_page() {
    let alice = userid("alice");
    let admin = alice.clone();
    let app = spawn_app_with(move |c| {
        c.server.public_url = http_url("http://push.example.com");
        c.console.session_ttl = Duration::from_secs(3600);
        c.console.admins = vec![admin];
    })
    .await;
    let console = console_login(&app, &alice).await;
    assert!(
        !console.set_cookie.contains("Secure"),
        "{}",
        console.set_cookie
    );
    assert!(console.set_cookie.contains("Max-Age=3600"));
    let page = console.page("").await;
    assert!(page.contains("/console/admin"), "admins see the Admin link");
}

#[tokio::test]
async fn a_login_link_works_once_and_opening_it_uses_nothing() {
    let app = spawn_app().await;
    let alice = userid("alice");
    let path = login_path(&app, &alice).await;
    let http = http_client();
    // Chat apps and previews fetch links by themselves: GETs use nothing.
    for _ in 0..3 {
        let (status, html) = answer(http.get(app.url(&path)).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains(&format!("Log in as {alice}")) || html.contains(&alice));
    }
    let token = path.split("t=").nth(1).unwrap().to_owned();
    let post = || {
        http.post(app.url("/console/login"))
            .form(&[("t", token.as_str())])
            .send()
    };
    let first = post().await.unwrap();
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    let second = post().await.unwrap();
    assert!(second.headers().get(SET_COOKIE).is_none());
    let (status, html) = answer(second).await;
    assert_eq!(status, StatusCode::GONE, "{html}");
    assert!(html.contains("used already"), "{html}");
    // And the page says so now too.
    let (status, _) = answer(http.get(app.url(&path)).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::GONE);
}

#[tokio::test]
async fn a_login_link_expires() {
    let app = spawn_app_with(|c| c.console.login_ttl = Duration::from_millis(300)).await;
    let alice = userid("alice");
    let path = login_path(&app, &alice).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let http = http_client();
    let (status, html) = answer(http.get(app.url(&path)).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::GONE, "{html}");
    let token = path.split("t=").nth(1).unwrap().to_owned();
    let resp = http
        .post(app.url("/console/login"))
        .form(&[("t", token.as_str())])
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get(SET_COOKIE).is_none());
    let (status, html) = answer(resp).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(html.contains("expired"), "{html}");
}

#[tokio::test]
async fn a_wrong_or_missing_link_and_no_session_are_clear_pages() {
    let app = spawn_app().await;
    let http = http_client();
    for path in [
        "/console/login",
        "/console/login?t=",
        "/console/login?t=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "/console/login?t=%FF%00",
    ] {
        let (status, html) = answer(http.get(app.url(path)).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(html.contains("login"), "{html}");
    }
    for path in ["/console", "/console/timeline"] {
        let (status, html) = answer(http.get(app.url(path)).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(html.contains("登录"), "says how to log in: {html}");
    }
    // A made-up cookie is no session.
    let resp = http
        .get(app.url("/console"))
        .header(COOKIE, "pushbot_console=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn pages_carry_a_nonce_policy_that_allows_only_this_server() {
    let app = spawn_app().await;
    let console = console_login(&app, &userid("alice")).await;
    let resp = console.get("").await;
    let csp = resp
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_owned();
    let html = resp.text().await.unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("form-action 'self'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap();
    assert!(html.contains(&format!("<style nonce=\"{nonce}\">")));
    let again = console.get("").await;
    let other = again.headers().get("content-security-policy").unwrap();
    assert_ne!(other.to_str().unwrap(), csp, "a new nonce per response");
}

#[tokio::test]
async fn logging_out_needs_the_csrf_token_and_ends_the_session() {
    let app = spawn_app().await;
    let console = console_login(&app, &userid("alice")).await;
    // Without the token, or with another: refused, and still logged in.
    for form in [vec![], vec![("csrf", "wrong")]] {
        let (status, html) = answer(console.post_raw("/logout", &form).await).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
        assert_eq!(console.get("").await.status(), StatusCode::OK);
    }
    let resp = console.post("/logout", &[]).await;
    let cleared = resp
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_owned();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(resp.status(), StatusCode::OK);
    // The old cookie opens nothing any more.
    assert_eq!(console.get("").await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn logout_and_rotate_in_the_chat_end_every_session() {
    let app = spawn_app().await;
    let alice = userid("alice");
    let bob = userid("bob");
    let one = console_login(&app, &alice).await;
    let two = console_login(&app, &alice).await;
    let bobs = console_login(&app, &bob).await;
    let reply = app.user_says(&alice, "退出登录").await.unwrap();
    assert!(reply.contains("2"), "{reply}");
    assert_eq!(one.get("").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(two.get("").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(bobs.get("").await.status(), StatusCode::OK, "bob's stays");

    let three = console_login(&app, &alice).await;
    app.rotate(&alice).await;
    assert_eq!(three.get("").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(bobs.get("").await.status(), StatusCode::OK, "bob's stays");
}

#[tokio::test]
async fn help_lists_login_and_the_link_goes_to_the_public_url() {
    let app = spawn_app().await;
    let alice = userid("alice");
    let help = app.user_says(&alice, "help").await.unwrap();
    assert!(help.contains("login（登录）"), "{help}");
    let reply = app.user_says(&alice, "登录").await.unwrap();
    let link = login_link(&reply);
    assert!(
        link.starts_with(&format!("{PUBLIC_URL}/console/login?t=")),
        "{link}"
    );
}
