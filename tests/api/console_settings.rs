//! The console's Settings and Compose pages (issue 22), over HTTP as a logged-in browser
//! and as WeCom: every setting changed in the console is what the chat's `status` then
//! shows, and one changed in the chat is what the console shows; an invalid value gets the
//! chat's own answer and changes nothing; a form without its CSRF field changes nothing;
//! an address is bound by a code the real SMTP sink received; a destination is added only
//! once its test message arrived. Compose sends through `/send`'s acceptance: it arrives
//! at the mock WeCom or the SMTP sink in the chosen format and channel, is counted as
//! `/send`'s, and is refused exactly as `/send` refuses, with nothing stored.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::console::{Console, console_login};
use crate::helpers::*;
use crate::mock_destinations::{DestKind, MockDestinations};
use crate::smtp::SmtpSink;

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

/// Text as askama escaped it, back to what the handler gave it.
fn unescape(html: &str) -> String {
    html.replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The page's notice (the bot's answer), unescaped; `None` without one.
fn flash(html: &str) -> Option<String> {
    let start = html.find("<p class=\"flash\"")?;
    let start = start + html[start..].find('>')? + 1;
    let end = start + html[start..].find("</p>")?;
    Some(unescape(&html[start..end]))
}

/// The settings page's section `id` (`addresses`, `fallback`, `format`, …), unescaped.
fn section(html: &str, id: &str) -> String {
    let marker = format!("<section class=\"setting\" id=\"{id}\">");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("the settings page has a section {id:?}:\n{html}"));
    let end = start + html[start..].find("</section>").expect("the section ends");
    unescape(&html[start..end])
}

/// The current value a section shows (its `class="current"` line), tags removed.
fn current(html: &str, id: &str) -> String {
    let section = section(html, id);
    let start = section
        .find("class=\"current\"")
        .unwrap_or_else(|| panic!("section {id} shows its value:\n{section}"));
    let start = start + section[start..].find('>').expect("a tag") + 1;
    let end = start + section[start..].find("</p>").expect("the line ends");
    strip_tags(&section[start..end])
}

/// `html` without its tags, whitespace runs made one space.
fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A form's fields.
type Fields = &'static [(&'static str, &'static str)];

/// Posts a settings form (with the CSRF field) and answers the bot's reply it shows.
async fn change(console: &Console, path: &str, fields: &[(&str, &str)]) -> String {
    let resp = console.post(&format!("/settings/{path}"), fields).await;
    let status = resp.status();
    let html = resp.text().await.expect("a page");
    assert_eq!(
        status,
        StatusCode::OK,
        "POST /settings/{path} {fields:?}: {html}"
    );
    flash(&html).unwrap_or_else(|| panic!("the page shows the bot's answer:\n{html}"))
}

/// `status` in the chat, without the line of today's counts.
async fn status(app: &TestApp, user: &str) -> String {
    say(app, user, "status")
        .await
        .lines()
        .filter(|l| !l.starts_with("today:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A member with a push token, logged in to the console.
async fn member(app: &TestApp, prefix: &str) -> (Console, String) {
    let user = userid(prefix);
    let token = app.get_token(&user).await;
    (console_login(app, &user).await, token)
}

/// The gateway with an `[email]` section pointing at a fresh SMTP sink.
async fn email_app() -> (TestApp, SmtpSink) {
    let sink = SmtpSink::start().await;
    let port = sink.port;
    let app = spawn_app_with(|c| {
        c.email = Some(local_email(port));
        c.server.metrics = true;
    })
    .await;
    (app, sink)
}

/// Binds `address` to the console's member from the console: the code the sink received,
/// typed into the verify form. Answers the reply to `verify`.
async fn bind_by_console(console: &Console, sink: &SmtpSink, address: &str) -> String {
    let before = sink.mails_to(address).len();
    let reply = change(
        console,
        "bind",
        &[("channel", "email"), ("address", address)],
    )
    .await;
    assert_says(&reply, "code sent", "the bind form's answer");
    assert_says(&reply, address, "the answer names the address");
    let mails = sink.wait_for_mails_to(address, before + 1, WAIT).await;
    let code = mails[before]
        .code()
        .unwrap_or_else(|| panic!("a code in the mail:\n{}", mails[before].raw()));
    let reply = change(console, "verify", &[("code", &code)]).await;
    assert_says(&reply, "bound", "verify with the code from the mail");
    reply
}

/// The id of the message compose accepted, from its link to the timeline.
fn sent_id(console: &Console, html: &str) -> String {
    let marker = "<a id=\"sent\" href=\"";
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("the page links the new message:\n{html}"))
        + marker.len();
    let end = start + html[start..].find('"').expect("the link ends");
    let href = &html[start..end];
    let prefix = format!("{}/messages/", console.base);
    href.strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("the link is {prefix}{{id}}: {href}"))
        .to_owned()
}

/// Posts the compose form (with the CSRF field): the status and the page.
async fn compose(console: &Console, fields: &[(&str, &str)]) -> (StatusCode, String) {
    let resp = console.post("/compose", fields).await;
    let status = resp.status();
    (status, resp.text().await.expect("a page"))
}

/// The member's messages as `GET /messages` lists them.
async fn listed(app: &TestApp, token: &str) -> Vec<Value> {
    let resp = app.messages(&[("token", token)]).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("a list of messages: {body}"))
        .clone()
}

/// `pushbot_messages_accepted_total{endpoint="…"}` now.
async fn accepted_count(app: &TestApp, endpoint: &str) -> f64 {
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics");
    let series = format!("pushbot_messages_accepted_total{{endpoint=\"{endpoint}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

// ------------------------------------------------------------------------------------------
// settings
// ------------------------------------------------------------------------------------------

/// Each setting changed in the console: the page shows the bot's answer to the same
/// command, the chat's `status` shows the new value as the member's own, and so does the
/// page; `default` gives it back to the server.
#[tokio::test]
async fn a_setting_changed_in_the_console_is_what_status_shows() {
    let app = spawn_app().await;
    let (console, _) = member(&app, "cset").await;
    let user = console.userid.clone();
    let page = console.page("/settings").await;
    for id in ["fallback", "format", "quiet", "timezone"] {
        assert!(
            current(&page, id).contains("默认 default"),
            "{id} is the server's at first: {}",
            current(&page, id)
        );
    }

    let reply = change(&console, "format", &[("value", "card")]).await;
    assert_says(&reply, "Messages now look like: card", "format card");
    assert!(
        status(&app, &user)
            .await
            .contains("format: card（你的设置 yours）")
    );

    let reply = change(
        &console,
        "quiet",
        &[("value", "23:00-07:00"), ("strict", "on")],
    )
    .await;
    assert_says(
        &reply,
        "Quiet hours set: 23:00-07:00 strict",
        "quiet … strict",
    );
    assert!(
        status(&app, &user)
            .await
            .contains("quiet: 23:00-07:00 strict（你的设置 yours）")
    );

    let reply = change(&console, "timezone", &[("value", "+08:00")]).await;
    assert_says(&reply, "Time zone set: UTC+08:00", "timezone +08:00");
    assert!(
        status(&app, &user)
            .await
            .contains("timezone: UTC+08:00（你的设置 yours）")
    );

    let reply = change(&console, "fallback", &[("value", "wecom")]).await;
    assert_says(&reply, "Channel order set", "fallback wecom");
    assert!(
        status(&app, &user)
            .await
            .contains("order: wecom（你的设置 yours）")
    );

    let page = console.page("/settings").await;
    assert_eq!(current(&page, "format"), "card 你的设置 yours");
    assert_eq!(
        current(&page, "quiet"),
        "23:00-07:00 strict（UTC+08:00） 你的设置 yours"
    );
    assert_eq!(current(&page, "timezone"), "UTC+08:00 你的设置 yours");
    assert_eq!(current(&page, "fallback"), "wecom 你的设置 yours");

    let reply = change(&console, "quiet", &[("value", "off")]).await;
    assert_says(&reply, "Quiet hours off", "quiet off");
    assert!(
        status(&app, &user)
            .await
            .contains("quiet: off（无 none）（你的设置 yours）")
    );

    for path in ["format", "quiet", "timezone", "fallback"] {
        change(&console, path, &[("value", "default")]).await;
    }
    let shown = status(&app, &user).await;
    for line in ["order:", "format:", "quiet:", "timezone:"] {
        assert!(
            line_of(&shown, line).contains("（默认 default）"),
            "{line} is the server's again:\n{shown}"
        );
    }
    let page = console.page("/settings").await;
    for id in ["fallback", "format", "quiet", "timezone"] {
        assert!(current(&page, id).contains("默认 default"), "{id}");
    }
}

/// The line of `text` starting with `key`.
fn line_of<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("a line {key:?} in:\n{text}"))
}

/// Settings changed in the chat are what the console shows, marked as the member's.
#[tokio::test]
async fn a_setting_changed_in_the_chat_is_what_the_console_shows() {
    let app = spawn_app().await;
    let (console, _) = member(&app, "cchat").await;
    let user = console.userid.clone();
    for typed in [
        "format markdown",
        "quiet 22:00-06:00",
        "timezone -05:00",
        "fallback wecom",
    ] {
        say(&app, &user, typed).await;
    }
    let page = console.page("/settings").await;
    assert_eq!(current(&page, "format"), "markdown 你的设置 yours");
    assert_eq!(
        current(&page, "quiet"),
        "22:00-06:00（UTC-05:00） 你的设置 yours"
    );
    assert_eq!(current(&page, "timezone"), "UTC-05:00 你的设置 yours");
    assert_eq!(current(&page, "fallback"), "wecom 你的设置 yours");
    // The forms start from the member's values.
    assert!(section(&page, "quiet").contains("value=\"22:00-06:00\""));
    assert!(section(&page, "format").contains("<option value=\"markdown\" selected>"));
    assert!(section(&page, "timezone").contains("value=\"-05:00\""));
}

/// Values the chat refuses: the console shows the chat's own answer, word for word, and
/// nothing changes (the chat's `status` is as before, and so is the page).
#[tokio::test]
async fn an_invalid_value_gets_the_chats_answer_and_changes_nothing() {
    let (app, _sink) = email_app().await;
    let (console, _) = member(&app, "cbad").await;
    let user = console.userid.clone();
    // Every setting the member's own, so that nothing can fall back unnoticed.
    for typed in [
        "quiet 01:00-02:00",
        "format markdown",
        "timezone +03:00",
        "fallback wecom",
    ] {
        say(&app, &user, typed).await;
    }
    let before = status(&app, &user).await;
    assert!(!before.contains("default"), "{before}");
    let page_before = console.page("/settings").await;
    let cases: &[(&str, Fields, &str)] = &[
        ("format", &[("value", "fancy")], "format fancy"),
        ("format", &[("value", "")], "format"),
        ("quiet", &[("value", "25:00-07:00")], "quiet 25:00-07:00"),
        (
            "quiet",
            &[("value", "23:00-07:00 loud")],
            "quiet 23:00-07:00 loud",
        ),
        ("timezone", &[("value", "+25:00")], "timezone +25:00"),
        (
            "timezone",
            &[("value", "Mars/Olympus")],
            "timezone Mars/Olympus",
        ),
        ("fallback", &[("value", "nosuch")], "fallback nosuch"),
        (
            "fallback",
            &[("value", "wecom,wecom")],
            "fallback wecom,wecom",
        ),
        ("fallback", &[("value", "all")], "fallback all"),
        (
            "bind",
            &[("channel", "email"), ("address", "not-an-address")],
            "email not-an-address",
        ),
        ("verify", &[("code", "12345")], "verify 12345"),
        ("verify", &[("code", "123456")], "verify 123456"),
        (
            "destination",
            &[("kind", "robot"), ("name", "bad#name"), ("address", "x")],
            "robot bad#name x",
        ),
        (
            "destination",
            &[
                ("kind", "robot"),
                ("name", "team"),
                ("address", "https://example.com/cgi-bin/webhook/send?key=k"),
            ],
            "robot team https://example.com/cgi-bin/webhook/send?key=k",
        ),
        (
            "destination/remove",
            &[("name", "nosuch")],
            "robot nosuch off",
        ),
    ];
    for (path, fields, typed) in cases {
        let shown = change(&console, path, fields).await;
        let chat = say(&app, &user, typed).await;
        assert_eq!(shown, chat, "{path} {fields:?} answers as `{typed}` does");
    }
    assert_eq!(status(&app, &user).await, before, "nothing changed");
    let page = console.page("/settings").await;
    for id in [
        "addresses",
        "destinations",
        "fallback",
        "format",
        "quiet",
        "timezone",
    ] {
        assert_eq!(section(&page, id), section(&page_before, id), "{id}");
    }
}

/// A form no page sends (a channel that takes no address, an unknown kind): 400, nothing
/// changed.
#[tokio::test]
async fn a_form_the_page_does_not_send_is_a_bad_request() {
    let app = spawn_app().await;
    let (console, _) = member(&app, "cform").await;
    let before = status(&app, &console.userid).await;
    for (path, fields) in [
        ("bind", vec![("channel", "wecom"), ("address", "a@x.com")]),
        ("unbind", vec![("channel", "ops")]),
        (
            "destination",
            vec![("kind", "webhook"), ("name", "x"), ("address", "y")],
        ),
    ] {
        let resp = console.post(&format!("/settings/{path}"), &fields).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path} {fields:?}");
    }
    assert_eq!(status(&app, &console.userid).await, before);
}

/// Without the session's CSRF token (none, or another's), no form changes anything: 403.
#[tokio::test]
async fn a_form_without_the_csrf_token_changes_nothing() {
    let app = spawn_app().await;
    let (console, token) = member(&app, "ccsrf").await;
    let (other, _) = member(&app, "ccsrf2").await;
    let user = console.userid.clone();
    let before = status(&app, &user).await;
    let forms: &[(&str, Fields)] = &[
        ("/settings/format", &[("value", "card")]),
        ("/settings/quiet", &[("value", "off")]),
        ("/settings/timezone", &[("value", "+03:00")]),
        ("/settings/fallback", &[("value", "wecom")]),
        (
            "/settings/bind",
            &[("channel", "email"), ("address", "a@x.com")],
        ),
        ("/settings/verify", &[("code", "123456")]),
        ("/settings/unbind", &[("channel", "email")]),
        (
            "/settings/destination",
            &[("kind", "robot"), ("name", "t"), ("address", "https://x/")],
        ),
        ("/settings/destination/remove", &[("name", "t")]),
        ("/compose", &[("title", "csrf"), ("content", "never")]),
    ];
    for (path, fields) in forms {
        let resp = console.post_raw(path, fields).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path} without csrf");
        let mut wrong: Vec<(&str, &str)> = fields.to_vec();
        wrong.push(("csrf", &other.csrf));
        let resp = console.post_raw(path, &wrong).await;
        assert_eq!(
            resp.status(),
            StatusCode::FORBIDDEN,
            "{path} with another's csrf"
        );
    }
    assert_eq!(status(&app, &user).await, before, "nothing changed");
    assert!(listed(&app, &token).await.is_empty(), "nothing was sent");
    assert!(app.mock.calls().is_empty(), "nothing reached WeCom");
}

/// Without a session the pages and forms are the 401 page, and nothing changes.
#[tokio::test]
async fn without_a_session_nothing_is_shown_or_changed() {
    let app = spawn_app().await;
    for path in ["/console/settings", "/console/compose"] {
        let resp = app.http.get(app.url(path)).send().await.expect("GET");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let resp = app
        .http
        .post(app.url("/console/settings/format"))
        .form(&[("value", "card"), ("csrf", "x")])
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

/// An address bound from the console through the real SMTP sink: the code mail arrives,
/// the verify form binds it, the page and `status` show it masked the same way, a wrong
/// code gets the chat's answer, and remove unbinds it.
#[tokio::test]
async fn an_address_is_bound_and_verified_in_the_console() {
    let (app, sink) = email_app().await;
    let (console, _) = member(&app, "cmail").await;
    let user = console.userid.clone();
    let address = format!("{user}@example.com");

    let reply = change(
        &console,
        "bind",
        &[("channel", "email"), ("address", &address)],
    )
    .await;
    let mails = sink.wait_for_mails_to(&address, 1, WAIT).await;
    let code = mails[0].code().expect("a code in the mail");
    assert_says(&reply, "code sent", "bind");
    let wrong = format!(
        "{:06}",
        (code.parse::<u32>().expect("digits") + 1) % 1_000_000
    );
    let reply = change(&console, "verify", &[("code", &wrong)]).await;
    assert_says(&reply, "Wrong code; 4 attempts left", "a wrong code");
    let page = console.page("/settings").await;
    assert!(
        current(&page, "addresses").contains("未绑定 none"),
        "not yet bound"
    );

    let reply = change(&console, "verify", &[("code", &code)]).await;
    assert_says(&reply, "bound", "the right code");
    let shown = status(&app, &user).await;
    let masked = line_of(&shown, "email:")
        .trim_start_matches("email:")
        .trim()
        .to_owned();
    assert!(
        !masked.contains("none") && masked != address,
        "masked: {shown}"
    );
    let page = console.page("/settings").await;
    let addresses = section(&page, "addresses");
    assert!(
        addresses.contains(&masked),
        "the page shows {masked}:\n{addresses}"
    );
    assert!(!page.contains(&address), "never the whole address");

    let reply = change(&console, "unbind", &[("channel", "email")]).await;
    assert_says(&reply, "unbound", "remove");
    assert!(line_of(&status(&app, &user).await, "email:").contains("none"));
    let page = console.page("/settings").await;
    assert!(!section(&page, "addresses").contains(&masked));

    // Bound in the chat: the console shows it as `status` does.
    let other = format!("{user}.chat@example.com");
    say(&app, &user, &format!("email {other}")).await;
    let mails = sink.wait_for_mails_to(&other, 1, WAIT).await;
    let code = mails[0].code().expect("a code in the mail");
    assert_says(
        &say(&app, &user, &format!("verify {code}")).await,
        "bound",
        "verify",
    );
    let shown = status(&app, &user).await;
    let masked = line_of(&shown, "email:")
        .trim_start_matches("email:")
        .trim();
    let page = console.page("/settings").await;
    assert!(
        section(&page, "addresses").contains(&format!("<span class=\"bound\">{masked}</span>")),
        "{masked}: {page}"
    );
}

/// A group robot added from the console: the test message arrives first, then the
/// destination is listed masked (the key never shown), `robots` in the chat lists it, and
/// remove deletes it. One whose test message is refused is not kept.
#[tokio::test]
async fn a_destination_is_added_and_removed_in_the_console() {
    let mock = MockDestinations::start().await;
    let section_config = destinations_at(&mock);
    let app = spawn_app_with(|c| c.destinations = section_config).await;
    let key = "console-robot-key-0123456789";
    mock.add_wecom_robot(key);
    let (console, _) = member(&app, "cdest").await;
    let user = console.userid.clone();

    let reply = change(
        &console,
        "destination",
        &[
            ("kind", "robot"),
            ("name", "team"),
            ("address", &mock.wecom_url(key)),
            ("secret", ""),
        ],
    )
    .await;
    assert_says(&reply, "added", "add a robot");
    let test = mock.messages_to(DestKind::WeComRobot, key);
    assert_eq!(test.len(), 1, "its test message arrived before the answer");
    let page = console.page("/settings").await;
    let dests = section(&page, "destinations");
    assert!(dests.contains("<b>team</b>"), "{dests}");
    assert!(!page.contains(key), "the key is never shown");
    assert!(say(&app, &user, "robots").await.contains("team"));

    let bad = "no-such-key-9876543210";
    let reply = change(
        &console,
        "destination",
        &[
            ("kind", "robot"),
            ("name", "other"),
            ("address", &mock.wecom_url(bad)),
        ],
    )
    .await;
    assert_says(&reply, "Not added", "a refused test message");
    assert!(!say(&app, &user, "robots").await.contains("other"));

    // Added in the chat: listed in the console, masked.
    let chat_key = "chat-robot-key-9876543210";
    mock.add_wecom_robot(chat_key);
    let reply = say(
        &app,
        &user,
        &format!("robot fromchat {}", mock.wecom_url(chat_key)),
    )
    .await;
    assert_says(&reply, "added", "robot in the chat");
    let page = console.page("/settings").await;
    assert!(section(&page, "destinations").contains("<b>fromchat</b>"));
    assert!(!page.contains(chat_key), "the key is never shown");

    let reply = change(&console, "destination/remove", &[("name", "team")]).await;
    assert_says(&reply, "removed", "remove");
    assert!(!say(&app, &user, "robots").await.contains("team"));
    let page = console.page("/settings").await;
    assert!(!section(&page, "destinations").contains("<b>team</b>"));
}

// ------------------------------------------------------------------------------------------
// compose
// ------------------------------------------------------------------------------------------

/// Compose to WeCom: accepted, linked in the timeline, delivered to the member by the mock
/// WeCom — markdown read as markdown (turned into readable text), text kept as typed.
#[tokio::test]
async fn compose_reaches_wecom_in_the_chosen_format() {
    let app = spawn_app_with(|c| c.server.metrics = true).await;
    let (console, token) = member(&app, "ccomp").await;
    let user = console.userid.clone();
    let page = console.page("/compose").await;
    for value in ["", "wecom", "all"] {
        assert!(
            page.contains(&format!("<option value=\"{value}\"")),
            "channel {value:?} offered"
        );
    }
    for value in ["text", "markdown"] {
        assert!(page.contains(&format!("<option value=\"{value}\"")));
    }
    let native = accepted_count(&app, "native").await;

    let (status, html) = compose(
        &console,
        &[
            ("title", "md-title"),
            ("content", "**加粗** bold"),
            ("format", "markdown"),
            ("channel", "wecom"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let md = sent_id(&console, &html);
    let (status, html) = compose(
        &console,
        &[
            ("title", "txt-title"),
            ("content", "**加粗** bold"),
            ("format", "text"),
            ("channel", "wecom"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let txt = sent_id(&console, &html);

    for id in [&md, &txt] {
        let state = wait_settled(&app, id, &token, WAIT).await;
        assert_eq!(state["status"], "delivered", "{state}");
        assert_eq!(state["channel"], "wecom", "{state}");
    }
    assert_eq!(
        accepted_count(&app, "native").await,
        native + 2.0,
        "counted as /send"
    );
    let calls = app.mock.calls();
    let text_of = |title: &str| {
        calls
            .iter()
            .find(|c| c.touser() == user && c.text().contains(title))
            .unwrap_or_else(|| panic!("{title} reached WeCom: {calls:?}"))
            .text()
            .to_owned()
    };
    let md_text = text_of("md-title");
    assert!(
        md_text.contains("加粗 bold") && !md_text.contains("**"),
        "markdown read as markdown: {md_text}"
    );
    assert!(
        text_of("txt-title").contains("**加粗** bold"),
        "text kept as typed"
    );
    // The link opens the message in the console.
    let story = console.page(&format!("/messages/{md}")).await;
    assert!(story.contains("md-title"), "{story}");
}

/// Compose by e-mail to the address bound in the console: the sink receives it, markdown
/// rendered, and WeCom gets nothing of it.
#[tokio::test]
async fn compose_reaches_a_bound_address_by_mail() {
    let (app, sink) = email_app().await;
    let (console, token) = member(&app, "ccmail").await;
    let user = console.userid.clone();
    let address = format!("{user}@example.com");
    bind_by_console(&console, &sink, &address).await;
    let page = console.page("/compose").await;
    assert!(
        page.contains("<option value=\"email\""),
        "a bound address is offered"
    );

    let (status, html) = compose(
        &console,
        &[
            ("title", "by-mail"),
            ("content", "**strong** words"),
            ("format", "markdown"),
            ("channel", "email"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let id = sent_id(&console, &html);
    let mail = sink.wait_for_mail_for(&id, WAIT).await;
    assert_eq!(mail.to, vec![address.clone()]);
    let body = mail.html().expect("an HTML part");
    assert!(body.contains("<strong>strong</strong>"), "{body}");
    let state = wait_settled(&app, &id, &token, WAIT).await;
    assert_eq!(state["channel"], "email", "{state}");
    assert!(
        !app.mock
            .calls()
            .iter()
            .any(|c| c.text().contains("by-mail")),
        "WeCom got none of it"
    );
}

/// What `/send` refuses, compose refuses with the same status and words, keeps what was
/// typed in the form, and stores and sends nothing.
#[tokio::test]
async fn compose_refuses_as_send_does_and_stores_nothing() {
    let app = spawn_app_with(|c| c.server.metrics = true).await;
    let (console, token) = member(&app, "ccref").await;
    let long = "t".repeat(1025);
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("title", "x"), ("format", "fancy")],
        vec![("title", "x"), ("channel", "nosuch")],
        vec![("title", "x"), ("channel", "email")],
        vec![("title", "x"), ("channel", "wecom,wecom")],
        vec![("title", "\u{200b}"), ("content", " ")],
        vec![("title", &long)],
    ];
    let native = accepted_count(&app, "native").await;
    for fields in &cases {
        let (status, html) = compose(&console, fields).await;
        let mut with_token = fields.clone();
        with_token.push(("token", &token));
        let resp = app.send_form(&with_token).await;
        let send_status = resp.status();
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(status, send_status, "{fields:?}: {body}");
        assert!(status.is_client_error(), "{fields:?}");
        let message = body["message"].as_str().expect("a message");
        assert!(
            unescape(&html).contains(message),
            "{fields:?}: the page says {message:?}:\n{html}"
        );
        assert!(!html.contains("id=\"sent\""), "{fields:?}");
        // What was typed stays in the form (within reason: the title).
        if let Some((_, title)) = fields.iter().find(|(k, _)| *k == "title")
            && title.len() < 100
        {
            assert!(html.contains(&format!("value=\"{title}\"")), "{fields:?}");
        }
    }
    assert!(listed(&app, &token).await.is_empty(), "nothing stored");
    assert_eq!(
        accepted_count(&app, "native").await,
        native,
        "nothing counted"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.mock.calls().is_empty(), "nothing sent");
}

// ------------------------------------------------------------------------------------------
// hostile forms
// ------------------------------------------------------------------------------------------

/// Hostile form bodies from a logged-in browser with the right CSRF token, to every
/// settings form and compose: never a 5xx, and a body that is not a UTF-8 form changes
/// nothing and sends nothing (no code mail to a mangled address either).
#[tokio::test]
async fn hostile_forms_from_a_session_change_nothing() {
    let (app, sink) = email_app().await;
    let (console, token) = member(&app, "chost").await;
    let user = console.userid.clone();
    let before = status(&app, &user).await;
    let csrf = console.csrf.clone();
    let big = "x".repeat(300 * 1024);
    let bodies: Vec<Vec<u8>> = vec![
        format!("csrf={csrf}&channel=email&address=a%FF%FE@example.com").into_bytes(),
        format!("csrf={csrf}&channel=email%FF&address=b@example.com").into_bytes(),
        format!("csrf={csrf}&value=%FF%FE&name=%C0%AF&code=%FF%FF%FF%FF%FF%FF").into_bytes(),
        format!("csrf={csrf}&value=+08:00%00&name=a%00b&address=c%00@example.com").into_bytes(),
        format!("csrf={csrf}&title=t%FF&content=%FF&format=markdown%FF&channel=wecom").into_bytes(),
        format!("csrf={csrf}&title=t%FF%FE&content=ok&format=text&channel=wecom&value=card")
            .into_bytes(),
        format!("csrf={csrf}&value={big}&name={big}&address={big}&title={big}").into_bytes(),
        format!("{{\"csrf\":\"{csrf}\",\"value\":\"card\"}}").into_bytes(),
        vec![0xff, 0xfe, 0x00],
        Vec::new(),
    ];
    let paths: Vec<String> = [
        "bind",
        "verify",
        "unbind",
        "destination",
        "destination/remove",
        "fallback",
        "format",
        "quiet",
        "timezone",
    ]
    .iter()
    .map(|p| format!("/settings/{p}"))
    .chain(["/compose".to_owned()])
    .collect();
    let mut failures = Vec::new();
    for path in &paths {
        for (i, body) in bodies.iter().enumerate() {
            let resp = console
                .http
                .post(console.url(path))
                .header(reqwest::header::COOKIE, &console.cookie)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(body.clone())
                .send()
                .await
                .expect("an answer");
            if resp.status().is_server_error() {
                failures.push(format!("{path} body#{i}: {}", resp.status()));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(status(&app, &user).await, before, "nothing changed");
    assert!(listed(&app, &token).await.is_empty(), "nothing sent");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.mail_count(), 0, "no code mail: {:?}", sink.mails());
    assert!(app.mock.calls().is_empty());
}

/// The compose form sent twice (a double click, a reload after sending) is one message:
/// the page's own key makes the second an idempotent repeat of the first.
#[tokio::test]
async fn the_same_compose_form_sent_twice_is_one_message() {
    let app = spawn_app().await;
    let (console, token) = member(&app, "ctwice").await;
    let page = console.page("/compose").await;
    let key = crate::console::hidden_field(&page, "key").expect("the form has its key");
    let fields = [
        ("title", "only-once"),
        ("content", "one"),
        ("format", "text"),
        ("channel", ""),
        ("key", key.as_str()),
    ];
    let (first, html) = compose(&console, &fields).await;
    assert_eq!(first, StatusCode::OK, "{html}");
    let id = sent_id(&console, &html);
    let next_key = crate::console::hidden_field(&html, "key").expect("a key");
    assert_ne!(next_key, key, "the next form has a key of its own");
    let (again, html) = compose(&console, &fields).await;
    assert_eq!(again, StatusCode::OK, "{html}");
    assert_eq!(sent_id(&console, &html), id, "the same message");
    wait_settled(&app, &id, &token, WAIT).await;
    assert_eq!(listed(&app, &token).await.len(), 1);
    let calls = app.mock.calls();
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.text().contains("only-once"))
            .count(),
        1,
        "{calls:?}"
    );
}

/// A Telegram chat added from the console (through the server's bot, its test message
/// first), offered by compose, and a message composed to it arrives there.
#[tokio::test]
async fn a_telegram_chat_added_in_the_console_takes_a_composed_message() {
    const TG_TOKEN: &str = "7012345678:AAHk3xQ9vR2mP8sT4uW6yZ1bC5dE7fG9hJ0";
    const TG_CHAT: i64 = -1_001_234_567_890;
    let mock = MockDestinations::start().await;
    mock.add_telegram_bot(TG_TOKEN);
    mock.add_telegram_chat(TG_CHAT);
    let mut section_config = destinations_at(&mock);
    section_config.telegram_bot_token = Some(secret(TG_TOKEN));
    let app = spawn_app_with(|c| c.destinations = section_config).await;
    let (console, token) = member(&app, "ctg").await;
    let chat = TG_CHAT.to_string();

    let reply = change(
        &console,
        "destination",
        &[("kind", "telegram"), ("name", "tg"), ("address", &chat)],
    )
    .await;
    assert_says(&reply, "added", "a Telegram chat");
    assert!(!reply.contains(TG_TOKEN), "{reply}");
    assert_eq!(mock.messages_to(DestKind::Telegram, &chat).len(), 1);

    let page = console.page("/compose").await;
    assert!(
        page.contains("<option value=\"tg\""),
        "its own destination offered"
    );
    let (status, html) = compose(
        &console,
        &[
            ("title", "to-telegram"),
            ("content", "hello"),
            ("channel", "tg"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let id = sent_id(&console, &html);
    let state = wait_settled(&app, &id, &token, WAIT).await;
    assert_eq!(state["status"], "delivered", "{state}");
    assert_eq!(state["channel"], "tg", "{state}");
    let got = mock.messages_to(DestKind::Telegram, &chat);
    assert_eq!(got.len(), 2);
    assert!(got[1].text.contains("to-telegram"), "{:?}", got[1].text);
    assert!(app.mock.calls().is_empty(), "WeCom got none of it");
}

/// Compose spends the member's `/send` budget: the same limit, one budget for both, and
/// over it the page says how long to wait (429, `Retry-After`), with nothing stored.
#[tokio::test]
async fn compose_and_send_share_the_members_budget() {
    let app = spawn_app_with(|c| {
        c.server.send_rate = SendRate {
            count: 2,
            per: Duration::from_secs(3600),
        };
    })
    .await;
    let (console, token) = member(&app, "cbudget").await;
    let (status, html) = compose(&console, &[("title", "one")]).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    app.send_ok(&token, "two", "").await;
    let resp = console.post("/compose", &[("title", "three")]).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        resp.headers().get("retry-after").is_some(),
        "{:?}",
        resp.headers()
    );
    let html = resp.text().await.expect("a page");
    assert!(html.contains("class=\"refused\""), "{html}");
    let resp = app.send_get(&[("token", &token), ("title", "four")]).await;
    assert_eq!(resp.status(), 429, "the same budget for /send");
    assert_eq!(listed(&app, &token).await.len(), 2);
}

/// A form larger than a `/send` body may be is refused as too large (413, said in words),
/// not as unreadable, and nothing is stored; one within it is read (here: refused by
/// `/send`'s own content limit, as `/send` would refuse it).
#[tokio::test]
async fn a_form_over_the_body_limit_is_too_large_and_stores_nothing() {
    let app = spawn_app_with(|c| c.server.max_content_bytes = 4096).await;
    let alice = userid("alice");
    let token = app.get_token(&alice).await;
    let console = console_login(&app, &alice).await;
    let huge = "a".repeat(pushbot::api::max_send_body(4096) + 1);
    let (status, page) = compose(
        &console,
        &[("title", "t"), ("content", &huge), ("format", "text")],
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{page}");
    assert!(page.contains("too large"), "{page}");
    let long = "a".repeat(5000);
    let (status, page) = compose(
        &console,
        &[("title", "t"), ("content", &long), ("format", "text")],
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{page}");
    assert!(listed(&app, &token).await.is_empty(), "nothing stored");
}
