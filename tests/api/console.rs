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
    let resp = http.get(app.url("/console/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/console");
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

// ------------------------------------------------------------------------------------------
// the timeline
// ------------------------------------------------------------------------------------------

/// How many timeline rows a page (or fragment) shows.
fn rows(html: &str) -> usize {
    html.matches("class=\"title\"").count()
}

/// `html` without its nonces (which differ in every answer).
fn without_nonces(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(at) = rest.find("nonce=\"") {
        out.push_str(&rest[..at]);
        rest = &rest[at + 7..];
        rest = rest.find('"').map_or("", |end| &rest[end + 1..]);
    }
    out.push_str(rest);
    out
}

/// The href of the first link whose text contains `label`.
fn link_to(html: &str, label: &str) -> Option<String> {
    let at = html.find(label)?;
    let start = html[..at].rfind("href=\"")? + 6;
    let end = html[start..].find('"')? + start;
    Some(html[start..end].replace("&#38;", "&").replace("&amp;", "&"))
}

/// A permanent WeCom error: the message fails at once.
fn refused() -> SendReply {
    SendReply::errcode(60020, "not allow to access from your ip")
}

#[tokio::test]
async fn the_timeline_pages_by_keyset_and_filters_and_searches() {
    let app = spawn_app().await;
    let alice = userid("alice");
    let token = app.get_token(&alice).await;
    app.mock.push_replies_for(&alice, [refused()]);
    let failed = app
        .send_ok(&token, "disk FULL on db-1", "磁盘已满，请处理")
        .await;
    app.wait_for_status(&failed, &token, "failed", WAIT).await;
    let percent = app.send_ok(&token, "100%_done", "x").await;
    let widgets = app.send_ok(&token, "1000 widgets", "y").await;
    let mut ids = vec![failed.clone(), percent.clone(), widgets.clone()];
    for i in 0..52 {
        ids.push(app.send_ok(&token, &format!("m{i}"), "plain").await);
    }
    app.wait_for_status(ids.last().unwrap(), &token, "delivered", WAIT)
        .await;
    let console = console_login(&app, &alice).await;

    let first = console.page("").await;
    assert_eq!(rows(&first), 50);
    assert!(first.contains("m51"), "newest first");
    assert!(
        !first.contains(">disk FULL"),
        "the oldest is on the next page"
    );
    let older = link_to(&first, "更早 Older").expect("a link to older messages");
    let second = console.page(&older).await;
    assert_eq!(rows(&second), 5, "55 in all");
    assert!(second.contains("disk FULL on db-1"));
    assert!(link_to(&second, "更早 Older").is_none(), "the last page");
    assert!(link_to(&second, "最新 Newest").is_some());
    // No message on both pages.
    for id in &ids {
        let on = [&first, &second]
            .iter()
            .filter(|p| p.contains(&format!("/messages/{id}\"")))
            .count();
        assert_eq!(on, 1, "{id} is on exactly one page");
    }

    // Search: a substring, Chinese too, ASCII case ignored, wildcards literal.
    for (q, expected) in [
        ("磁盘", vec![&failed]),
        ("disk full", vec![&failed]),
        ("100%", vec![&percent]),
        ("0%_", vec![&percent]),
        ("1000", vec![&widgets]),
    ] {
        let page = console.page(&format!("?q={}", urlencode(q))).await;
        assert_eq!(rows(&page), expected.len(), "search {q:?}");
        for id in expected {
            assert!(page.contains(id.as_str()), "search {q:?} finds {id}");
        }
    }
    let page = console.page("?q=nothing-like-this").await;
    assert_eq!(rows(&page), 0);
    assert!(page.contains("No message matches"));

    // Filters.
    let page = console.page("?status=failed").await;
    assert_eq!(rows(&page), 1);
    assert!(page.contains(&failed));
    let page = console.page("?status=delivered&q=m5").await;
    assert_eq!(rows(&page), 3, "m5, m50, m51");
    let page = console.page("?channel=wecom&status=failed").await;
    assert_eq!(rows(&page), 1, "failed on wecom (its attempt)");
    let page = console.page("?channel=email").await;
    assert_eq!(rows(&page), 0);
    // Filters stay on the next page's link.
    let page = console.page("?status=delivered").await;
    let older = link_to(&page, "更早 Older").unwrap();
    assert!(older.contains("status=delivered"), "{older}");
    assert_eq!(rows(&console.page(&older).await), 4, "54 delivered in all");

    // A filter that is none is a clear 400.
    for bad in ["?status=lost", "?before=x", "?channel=%3Cb%3E"] {
        let (status, html) = answer(console.get(bad).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {html}");
    }
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn the_live_fragment_is_the_list_alone_and_only_the_first_page_updates() {
    let app = spawn_app().await;
    let alice = userid("alice");
    let token = app.get_token(&alice).await;
    let console = console_login(&app, &alice).await;
    let page = console.page("").await;
    assert!(page.contains("No messages yet"));
    let script = page
        .find("<script nonce=\"")
        .expect("the live update's script");
    assert!(page[script..].contains("fragment=1"));
    let id = app.send_ok(&token, "arrives while watching", "x").await;
    let fragment = console.page("?fragment=1").await;
    assert!(!fragment.contains("<html"), "only the list");
    assert!(fragment.contains(&id));
    assert_eq!(rows(&fragment), 1);
    let older = console.page(&format!("?before={id}")).await;
    assert!(
        !older.contains("<script"),
        "an older page does not move under the reader"
    );
}

// ------------------------------------------------------------------------------------------
// a message's story, isolation
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_message_shows_its_story_and_another_members_is_not_found() {
    let app = spawn_app().await;
    let alice = userid("alice");
    let bob = userid("bob");
    let token = app.get_token(&alice).await;
    let bob_token = app.get_token(&bob).await;
    app.mock.push_replies_for(&alice, [SendReply::http(502)]);
    let id = app
        .send_ok(&token, "<b>story</b>", "line one\n<script>x</script>")
        .await;
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
    let bobs = app.send_ok(&bob_token, "bob's secret", "s3cret").await;
    let console = console_login(&app, &alice).await;

    let page = console.page(&format!("/messages/{id}")).await;
    assert!(!page.contains("<b>story"), "escaped: {page}");
    assert!(
        page.contains("&#60;b&#62;story&#60;/b&#62;"),
        "escaped: {page}"
    );
    assert!(!page.contains("<script>x"), "escaped content");
    assert!(
        page.contains("accepted 接收"),
        "the story starts with its acceptance"
    );
    assert!(page.contains("retry"), "the failed attempt: {page}");
    assert!(page.contains("delivered"));
    assert!(
        page.contains(&format!("{PUBLIC_URL}/m/{id}?k=")),
        "the page link"
    );
    assert!(
        !page.contains("/resend\""),
        "a delivered message has no Resend"
    );
    // On the timeline, the row opens it, and links its page.
    let timeline = console.page("").await;
    assert!(timeline.contains(&format!("/console/messages/{id}\"")));
    assert!(timeline.contains(&format!("href=\"{PUBLIC_URL}/m/{id}?k=")));

    // Bob's message, an unknown id and a non-id answer alike.
    let unknown = uuid::Uuid::now_v7().to_string();
    let (status, theirs) = answer(console.get(&format!("/messages/{bobs}")).await).await;
    let (status_unknown, none) = answer(console.get(&format!("/messages/{unknown}")).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(status_unknown, StatusCode::NOT_FOUND);
    assert_eq!(without_nonces(&theirs), without_nonces(&none));
    assert!(!theirs.contains("secret"));
    let (status, _) = answer(console.get("/messages/%00..%2F").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nor can alice act on it.
    for action in ["resend", "cancel"] {
        let (status, html) = answer(
            console
                .post(&format!("/messages/{bobs}/{action}"), &[])
                .await,
        )
        .await;
        let (_, unknown_html) = answer(
            console
                .post(&format!("/messages/{unknown}/{action}"), &[])
                .await,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{action}");
        assert_eq!(without_nonces(&html), without_nonces(&unknown_html));
    }
    let (_, timeline) = answer(console.get("?q=secret").await).await;
    assert_eq!(
        rows(&timeline),
        0,
        "bob's messages are not in alice's search"
    );
}

// ------------------------------------------------------------------------------------------
// resend and cancel
// ------------------------------------------------------------------------------------------

/// The number of the member's messages, as the API lists them.
async fn message_count(app: &TestApp, token: &str) -> usize {
    let body: serde_json::Value = app
        .messages(&[("token", token), ("limit", "100")])
        .await
        .json()
        .await
        .unwrap();
    body["messages"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_failed_message_is_resent_as_a_new_one_that_names_it() {
    let app = spawn_app().await;
    let alice = userid("alice");
    let token = app.get_token(&alice).await;
    app.mock.push_replies_for(&alice, [refused()]);
    let old = app.send_ok(&token, "try again", "the same text").await;
    app.wait_for_status(&old, &token, "failed", WAIT).await;
    let console = console_login(&app, &alice).await;
    let page = console.page(&format!("/messages/{old}")).await;
    assert!(
        page.contains(&format!("/messages/{old}/resend\"")),
        "a Resend button"
    );

    // Without the CSRF token: refused, nothing sent.
    let (status, _) = answer(
        console
            .post_raw(&format!("/messages/{old}/resend"), &[])
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(message_count(&app, &token).await, 1, "nothing was created");

    let resp = console.post(&format!("/messages/{old}/resend"), &[]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let location = resp.headers()[LOCATION].to_str().unwrap().to_owned();
    let new = location
        .strip_prefix("/console/messages/")
        .and_then(|rest| rest.split('?').next())
        .unwrap()
        .to_owned();
    assert_ne!(new, old);
    let page = console.page(&location).await;
    assert!(
        page.contains("Resent: this is the new message"),
        "the flash"
    );
    assert!(
        page.contains(&format!("/messages/{old}\"")),
        "it names the old one"
    );
    let body = app.wait_for_status(&new, &token, "delivered", WAIT).await;
    assert_eq!(body["resent_from"], old.as_str());
    assert_eq!(body["title"], "try again");
    let sent = app.mock.wait_for_sent(1, WAIT).await;
    assert!(sent[0].content.contains("the same text"), "{:?}", sent[0]);
    // The old one names the new one.
    assert!(
        console
            .page(&format!("/messages/{old}"))
            .await
            .contains(&format!("/messages/{new}\""))
    );
    let old_body = app.message_json(&old, &token).await;
    assert_eq!(old_body["resent_as"][0], new.as_str());
    // Once is enough: a second resend says where the first went.
    let (status, html) = answer(console.post(&format!("/messages/{old}/resend"), &[]).await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(html.contains(&new), "{html}");
    // A delivered message is not resent.
    let (status, _) = answer(console.post(&format!("/messages/{new}/resend"), &[]).await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(message_count(&app, &token).await, 2);
}

/// `POST /messages/{id}/resend` with the push token.
async fn api_resend(
    app: &TestApp,
    id: &str,
    token: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut req = app.http.post(app.url(&format!("/messages/{id}/resend")));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_scheduled_message_is_cancelled_and_the_api_resends_it() {
    let app = spawn_app().await;
    let alice = userid("alice");
    let bob = userid("bob");
    let token = app.get_token(&alice).await;
    let bob_token = app.get_token(&bob).await;
    let resp = app
        .send_get(&[
            ("token", &token),
            ("title", "later"),
            ("content", "c"),
            ("delay", "1h"),
        ])
        .await;
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "scheduled", "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let console = console_login(&app, &alice).await;
    let page = console.page(&format!("/messages/{id}")).await;
    assert!(
        page.contains(&format!("/messages/{id}/cancel\"")),
        "a Cancel button"
    );
    assert!(!page.contains("/resend\""));

    let (status, _) = answer(
        console
            .post_raw(&format!("/messages/{id}/cancel"), &[("csrf", "forged")])
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(app.message_json(&id, &token).await["status"], "scheduled");

    let resp = console.post(&format!("/messages/{id}/cancel"), &[]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let location = resp.headers()[LOCATION].to_str().unwrap().to_owned();
    let page = console.page(&location).await;
    assert!(page.contains("Cancelled"), "{page}");
    assert!(
        page.contains("scheduled by the sender"),
        "its schedule in the story"
    );
    assert!(page.contains("cancelled 已取消"), "and its end");
    assert_eq!(app.message_json(&id, &token).await["status"], "cancelled");
    let (status, html) = answer(console.post(&format!("/messages/{id}/cancel"), &[]).await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(html.contains("cancelled already"), "{html}");

    // The API: someone else's token finds nothing; no token is a 401; the owner resends.
    assert_eq!(
        api_resend(&app, &id, Some(&bob_token)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api_resend(&app, &id, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = api_resend(&app, &id, Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["resent_from"], id.as_str());
    assert_eq!(body["title"], "later");
    let new = body["id"].as_str().unwrap().to_owned();
    app.wait_for_status(&new, &token, "delivered", WAIT).await;
    let (status, body) = api_resend(&app, &id, Some(&token)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // And the console shows both ends.
    let page = console.page(&format!("/messages/{new}")).await;
    assert!(page.contains(&format!("/messages/{id}\"")));
}

// ------------------------------------------------------------------------------------------
// behind a reverse proxy, under a path prefix
// ------------------------------------------------------------------------------------------

/// A reverse proxy that serves `upstream` under `/push`, taking the prefix off before
/// forwarding (as nginx's `location /push/ { proxy_pass http://pushbot/; }` does); anything
/// else is its own 404. Answers its address.
async fn prefix_proxy(upstream: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let client = http_client();
    let router = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move { forward(&client, &upstream, req).await }
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

async fn forward(
    client: &reqwest::Client,
    upstream: &str,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let Some(rest) = target
        .strip_prefix("/push")
        .filter(|rest| rest.starts_with('/'))
    else {
        return (axum::http::StatusCode::NOT_FOUND, "not under /push").into_response();
    };
    let hop = |name: &str| {
        matches!(
            name,
            "host" | "connection" | "transfer-encoding" | "content-length"
        )
    };
    let mut out = client.request(req.method().clone(), format!("{upstream}{rest}"));
    for (name, value) in req.headers() {
        if !hop(name.as_str()) {
            out = out.header(name, value);
        }
    }
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap();
    let resp = out.body(body).send().await.unwrap();
    let mut answer = axum::http::Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        if !hop(name.as_str()) {
            answer = answer.header(name, value);
        }
    }
    answer
        .body(axum::body::Body::from(resp.bytes().await.unwrap()))
        .unwrap()
}

#[tokio::test]
async fn behind_a_proxy_under_a_prefix_login_timeline_and_resend_work() {
    let app =
        spawn_app_with(|c| c.server.public_url = http_url("https://push.example.com/push")).await;
    let alice = userid("alice");
    let token = app.get_token(&alice).await;
    app.mock.push_replies_for(&alice, [refused()]);
    let old = app.send_ok(&token, "through the proxy", "again").await;
    app.wait_for_status(&old, &token, "failed", WAIT).await;
    let proxy = prefix_proxy(app.address.clone()).await;

    // The link in the chat is under the prefix; logging in redirects under it.
    let console = console_login_at(&app, &proxy, &alice).await;
    assert_eq!(console.base, "/push/console");
    assert!(
        console.set_cookie.contains("Path=/push/console"),
        "{}",
        console.set_cookie
    );
    let timeline = console.page("").await;
    for under in [
        format!("href=\"/push/console/messages/{old}\""),
        "action=\"/push/console/logout\"".to_owned(),
        "href=\"/push/console/settings\"".to_owned(),
    ] {
        assert!(timeline.contains(&under), "{under} in {timeline}");
    }
    assert!(
        !timeline.contains("\"/console/"),
        "no link escapes the prefix"
    );
    let page = console.page(&format!("/messages/{old}")).await;
    assert!(page.contains(&format!("action=\"/push/console/messages/{old}/resend\"")));

    let resp = console.post(&format!("/messages/{old}/resend"), &[]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let location = resp.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(
        location.starts_with("/push/console/messages/"),
        "{location}"
    );
    let page = console.page(&location).await;
    assert!(page.contains(&format!("href=\"/push/console/messages/{old}\"")));
    // Logging out clears the cookie on the prefixed path.
    let resp = console.post("/logout", &[]).await;
    let cleared = resp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(cleared.contains("Path=/push/console"), "{cleared}");
}

#[tokio::test]
async fn a_resend_carries_the_same_stored_files() {
    let app = spawn_app().await;
    let alice = userid("alice");
    let token = app.get_token(&alice).await;
    app.mock.push_replies_for(&alice, [refused()]);
    let mut image = b"\x89PNG\r\n\x1a\n".to_vec();
    image.extend((0..2000).map(|i| (i % 251) as u8));
    let form = reqwest::multipart::Form::new()
        .text("title", "chart")
        .text("content", "see the chart")
        .part(
            "file",
            reqwest::multipart::Part::bytes(image.clone()).file_name("chart.png"),
        );
    let resp = app
        .http
        .post(app.url("/send"))
        .query(&[("token", token.as_str())])
        .multipart(form)
        .send()
        .await
        .unwrap();
    let old = accepted_id(resp).await;
    let before = app.wait_for_status(&old, &token, "failed", WAIT).await;
    let console = console_login(&app, &alice).await;
    let page = console.page(&format!("/messages/{old}")).await;
    assert!(page.contains("chart.png"), "the story lists its files");

    let resp = console.post(&format!("/messages/{old}/resend"), &[]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let location = resp.headers()[LOCATION].to_str().unwrap().to_owned();
    let new = location
        .trim_start_matches("/console/messages/")
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let after = app.wait_for_status(&new, &token, "delivered", WAIT).await;
    assert_eq!(
        after["attachments"], before["attachments"],
        "the same files"
    );
    let uploads = app.mock.wait_for_uploads(1, WAIT).await;
    assert_eq!(uploads[0].bytes.as_ref(), image.as_slice(), "byte for byte");
    // Stored once: the new message names the same blob.
    let mut conn = crate::db::connect(app.store_url()).await;
    let blobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM blobs")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(blobs, 1);
}

#[tokio::test]
async fn two_posts_with_one_link_at_once_log_in_once_and_sessions_expire() {
    let app = spawn_app_with(|c| c.console.session_ttl = Duration::from_secs(1)).await;
    let alice = userid("alice");
    let path = login_path(&app, &alice).await;
    let token = path.split("t=").nth(1).unwrap().to_owned();
    let http = http_client();
    let post = || {
        http.post(app.url("/console/login"))
            .form(&[("t", token.as_str())])
            .send()
    };
    let answers = futures_util::future::join_all((0..8).map(|_| post())).await;
    let statuses: Vec<StatusCode> = answers
        .iter()
        .map(|r| r.as_ref().unwrap().status())
        .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::SEE_OTHER)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::SEE_OTHER || *s == StatusCode::GONE)
    );
    // The session lasts session_ttl.
    let console = console_login(&app, &alice).await;
    assert!(console.set_cookie.contains("Max-Age=1"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(console.get("").await.status(), StatusCode::UNAUTHORIZED);
}

/// A queued message's story says what it waits for: its turn behind the messages ahead of
/// it in the lane, or the member's sending limits — the "waiting for the limit" step (read
/// from the lane when shown, never written while it waits).
#[tokio::test]
async fn a_queued_message_says_what_it_waits_for() {
    let app = spawn_app_with(|c| {
        c.wecom.member_limits = member_limits(&[(1, Duration::from_secs(60))]);
    })
    .await;
    let alice = userid("alice");
    let token = app.get_token(&alice).await;
    let first = app.send_ok(&token, "first", "one").await;
    app.wait_for_status(&first, &token, "delivered", WAIT).await;
    let second = app.send_ok(&token, "second", "two").await;
    let third = app.send_ok(&token, "third", "three").await;
    let console = console_login(&app, &alice).await;

    let page = console.page(&format!("/messages/{second}")).await;
    assert!(page.contains("waiting 等待中"), "{page}");
    assert!(page.contains("waiting for the limit"), "{page}");
    let page = console.page(&format!("/messages/{third}")).await;
    assert!(page.contains("1 ahead of it in your lane"), "{page}");
    // A delivered message waits for nothing.
    let page = console.page(&format!("/messages/{first}")).await;
    assert!(!page.contains("waiting 等待中"), "{page}");
}

/// Every console route that reads input, driven with a logged-in session and hostile input —
/// random bytes, huge and invisible text, unknown fields, far-off and malformed ids — never
/// answers a 5xx and changes nothing: the member's messages, their statuses and the session
/// stay as they were (a logout without the CSRF token ends nothing).
#[tokio::test]
async fn hostile_input_from_a_session_is_never_a_5xx_and_changes_nothing() {
    let app = spawn_app().await;
    let alice = userid("alice");
    let token = app.get_token(&alice).await;
    app.mock.push_replies_for(&alice, [refused()]);
    let failed = app.send_ok(&token, "kept", "as it was").await;
    app.wait_for_status(&failed, &token, "failed", WAIT).await;
    let console = console_login(&app, &alice).await;
    let before = app
        .messages(&[("token", &token)])
        .await
        .text()
        .await
        .expect("list");

    // Deterministic "random" bytes (xorshift), percent-encoded.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut noise = |len: usize| -> String {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                format!("%{:02X}", seed as u8)
            })
            .collect()
    };
    let invisible = "%E2%80%8B%E2%80%8D%EF%BB%BF%E2%80%AE".repeat(500);
    // In a URL: as long as a client will send (the server's header limit answers 431);
    // in a body: far beyond a form's limit.
    let long = "x".repeat(16 * 1024);
    let huge = "x".repeat(200 * 1024);
    let far_ids = [
        "ffffffff-ffff-7fff-bfff-ffffffffffff".to_owned(),
        "00000000-0000-7000-8000-000000000000".to_owned(),
        "99999999999999999999999".to_owned(),
        format!("{failed}%00"),
        noise(40),
        invisible.clone(),
    ];
    let mut gets: Vec<String> = vec![
        format!("?q={}&status={}&channel={}", noise(64), noise(8), noise(8)),
        format!("?q={invisible}&fragment=1"),
        format!("?q={long}"),
        "?before=ffffffff-ffff-7fff-bfff-ffffffffffff&status=failed".to_owned(),
        "?before=%00&unknown=1&status=delivered&channel=all&fragment=yes".to_owned(),
        format!("/timeline?{}", noise(200)),
        format!("/login?t={}", noise(32)),
        format!("/login?t={long}"),
    ];
    gets.extend(far_ids.iter().map(|id| format!("/messages/{id}")));
    let mut failures = Vec::new();
    for path in &gets {
        let resp = console.get(path).await;
        if resp.status().is_server_error() {
            failures.push(format!("GET {path:.80}: {}", resp.status()));
        }
    }
    let bodies = [
        noise(300),
        format!("unknown=1&t={}", noise(32)),
        format!("t={huge}&x={invisible}"),
        format!("csrf={}", noise(64)),
        String::new(),
    ];
    let mut posts: Vec<String> = vec!["/login".to_owned(), "/logout".to_owned()];
    for id in far_ids.iter().chain([&failed]) {
        posts.push(format!("/messages/{id}/resend"));
        posts.push(format!("/messages/{id}/cancel"));
    }
    for path in &posts {
        for body in &bodies {
            let resp = console
                .http
                .post(console.url(path))
                .header(COOKIE, &console.cookie)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(body.clone())
                .send()
                .await
                .expect("an answer");
            if resp.status().is_server_error() {
                failures.push(format!("POST {path:.80}: {}", resp.status()));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let after = app
        .messages(&[("token", &token)])
        .await
        .text()
        .await
        .expect("list");
    assert_eq!(before, after, "no message added, resent or cancelled");
    assert_eq!(
        console.get("").await.status(),
        StatusCode::OK,
        "still logged in"
    );
}
