//! Drop-in gotify (`POST /message`, `GET /version`), ntfy (`PUT|POST /{topic}`,
//! `/{topic}/publish|send|trigger`, `POST /`) and alert webhooks (`POST /hooks/alertmanager`,
//! `POST /hooks/grafana`), driven over HTTP against a real server and the mock WeCom: the
//! answer each client parses (status and JSON shape) and the text the member gets (title,
//! urgency marker, content, CJK intact). Ends with the real Apprise CLI talking to pushbot
//! as gotify, ntfy and Bark.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::compat::{
    DebugBinary, app_and_member, assert_not_logged, assert_nothing_sent, bark_ok, debug_binary,
    enc, get, json_of, messages_of, now_secs, the_only_card, the_only_message,
};
use crate::helpers::*;

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

/// The `n`-th message (1-based) WeCom accepted, checked to be a text for `user`.
async fn nth_message(app: &TestApp, user: &str, n: usize) -> String {
    let sent = app.mock.wait_for_sent(n, WAIT).await;
    let s = &sent[n - 1];
    assert_eq!(s.touser, user, "{sent:#?}");
    assert_eq!(s.msgtype, "text", "{sent:#?}");
    s.content.clone()
}

/// The `n`th message WeCom received (1-based), a card.
async fn nth_card(app: &TestApp, user: &str, n: usize) -> SentCard {
    let sent = app.mock.wait_for_sent(n, WAIT).await;
    let s = &sent[n - 1];
    assert_eq!(s.touser, user, "{sent:#?}");
    s.card
        .clone()
        .unwrap_or_else(|| panic!("message {n} is a card: {sent:#?}"))
}

/// A WeCom text as (title, content): they are separated by the first blank line.
fn title_and_content(text: &str) -> (&str, &str) {
    text.split_once("\n\n")
        .unwrap_or_else(|| panic!("title and content are separated by a blank line: {text:?}"))
}

fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or_default()
}

fn header_map(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        // from_bytes: raw UTF-8 is sent as it is, like curl -H does.
        headers.insert(
            *name,
            HeaderValue::from_bytes(value.as_bytes()).expect("header value"),
        );
    }
    headers
}

// ---- gotify shapes ----

/// HTTP 200 with gotify's stored-message JSON; returns it.
async fn gotify_ok(resp: reqwest::Response) -> Value {
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 200, "gotify success is HTTP 200: {body}");
    let id = body["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("id is an integer: {body}"));
    assert!(
        id > 0 && id < 1 << 53,
        "id fits a JavaScript number: {body}"
    );
    assert!(body["appid"].is_i64(), "appid is an integer: {body}");
    assert!(body["message"].is_string(), "{body}");
    assert!(body["title"].is_string(), "{body}");
    assert!(body["priority"].is_i64(), "priority is an integer: {body}");
    let date = body["date"]
        .as_str()
        .unwrap_or_else(|| panic!("date is a string: {body}"));
    let at =
        humantime::parse_rfc3339(date).unwrap_or_else(|e| panic!("date is RFC 3339 ({e}): {body}"));
    let age = SystemTime::now()
        .duration_since(at)
        .unwrap_or_else(|e| e.duration());
    assert!(age < Duration::from_secs(120), "date is now: {body}");
    body
}

/// gotify's error: HTTP `status`, `{"error":<reason>,"errorCode":status,"errorDescription"}`.
async fn gotify_err(resp: reqwest::Response, status: u16) -> Value {
    let (got, body) = json_of(resp).await;
    assert_eq!(got, status, "{body}");
    let reason = reqwest::StatusCode::from_u16(status)
        .unwrap()
        .canonical_reason()
        .unwrap();
    assert_eq!(body["error"], reason, "{body}");
    assert_eq!(
        body["errorCode"].as_u64(),
        Some(u64::from(status)),
        "{body}"
    );
    assert!(
        body["errorDescription"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(3),
        "only error, errorCode, errorDescription: {body}"
    );
    body
}

// ---- ntfy shapes ----

/// HTTP 200 with ntfy's message JSON for `topic` and `message`; returns it.
async fn ntfy_ok(resp: reqwest::Response, topic: &str, message: &str) -> Value {
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 200, "ntfy success is HTTP 200: {body}");
    assert!(
        body["id"].as_str().is_some_and(|id| !id.is_empty()),
        "id is a string: {body}"
    );
    let time = body["time"]
        .as_i64()
        .unwrap_or_else(|| panic!("time is unix seconds: {body}"));
    assert!((time - now_secs()).abs() <= 120, "time is now: {body}");
    assert_eq!(body["event"], "message", "{body}");
    assert_eq!(body["topic"], topic, "{body}");
    assert_eq!(body["message"], message, "{body}");
    body
}

/// ntfy's error: HTTP `http`, `{"code":http*100+1,"http":http,"error","link"}`.
async fn ntfy_err(resp: reqwest::Response, http: u16) -> Value {
    let (status, body) = json_of(resp).await;
    assert_eq!(status, http, "{body}");
    assert_eq!(
        body["code"].as_u64(),
        Some(u64::from(http) * 100 + 1),
        "{body}"
    );
    assert_eq!(body["http"].as_u64(), Some(u64::from(http)), "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert!(
        body["link"]
            .as_str()
            .is_some_and(|l| l.starts_with("https://")),
        "{body}"
    );
    body
}

/// `POST|PUT /{path}` with a raw body as `curl -d` sends it (form content type).
async fn ntfy_send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    headers: &[(&'static str, &str)],
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.http
        .request(method, app.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .headers(header_map(headers))
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn ntfy_post(
    app: &TestApp,
    path: &str,
    headers: &[(&'static str, &str)],
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    ntfy_send(app, reqwest::Method::POST, path, headers, body).await
}

// ==========================================================================================
// gotify
// ==========================================================================================

#[tokio::test]
async fn gotify_token_in_query_with_json_body() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .post(app.url("/message"))
        .query(&[("token", token.as_str())])
        .json(&json!({"title": "磁盘告警", "message": "/dev/sda1 使用率 93%", "priority": 5}))
        .send()
        .await
        .unwrap();
    let body = gotify_ok(resp).await;
    assert_eq!(body["message"], "/dev/sda1 使用率 93%", "{body}");
    assert_eq!(body["title"], "磁盘告警", "{body}");
    assert_eq!(body["priority"].as_i64(), Some(5), "{body}");
    assert_eq!(body["appid"].as_i64(), Some(1), "{body}");
    assert_eq!(
        the_only_message(&app, &user, &token).await,
        "磁盘告警\n\n/dev/sda1 使用率 93%"
    );
}

#[tokio::test]
async fn gotify_key_header_with_form_body_and_string_priority() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .post(app.url("/message"))
        .header("X-Gotify-Key", &token)
        .form(&[
            ("title", "表单 form"),
            ("message", "a & b = c 中文"),
            ("priority", "9"),
        ])
        .send()
        .await
        .unwrap();
    let body = gotify_ok(resp).await;
    assert_eq!(
        body["priority"].as_i64(),
        Some(9),
        "a number even from a form: {body}"
    );
    assert_eq!(
        body["title"], "表单 form",
        "the answer has the title as sent: {body}"
    );
    assert_eq!(
        the_only_message(&app, &user, &token).await,
        "🚨 表单 form\n\na & b = c 中文"
    );
}

#[tokio::test]
async fn gotify_bearer_and_priorities_mark_the_title() {
    let (app, user, token) = app_and_member().await;
    let cases = [
        // gotify 8 and above is urgent: what its own app pops up (and what comes through
        // quiet hours); there is no step between.
        (json!(8), "🚨 P8"),
        (json!("9"), "🚨 P9"),
        (json!(10), "🚨 P10"),
        (json!("10"), "🚨 P10"),
        (json!(7), "P7"),
        (json!(0), "P0"),
    ];
    for (i, (priority, title)) in cases.iter().enumerate() {
        let plain = title.trim_start_matches(['❗', '🚨', ' ']);
        let resp = app
            .http
            .post(app.url("/message"))
            .bearer_auth(&token)
            .json(&json!({"title": plain, "message": format!("正文 {i}"), "priority": priority}))
            .send()
            .await
            .unwrap();
        let body = gotify_ok(resp).await;
        let expected: i64 = priority
            .as_i64()
            .unwrap_or_else(|| priority.as_str().unwrap().parse().unwrap());
        assert_eq!(body["priority"].as_i64(), Some(expected), "{body}");
        let text = nth_message(&app, &user, i + 1).await;
        assert_eq!(text, format!("{title}\n\n正文 {i}"), "priority {priority}");
    }
    // Without a title, an urgent message still shows its marker.
    let resp = app
        .http
        .post(app.url("/message"))
        .bearer_auth(&token)
        .json(&json!({"message": "只有正文", "priority": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(gotify_ok(resp).await["title"], "");
    let text = nth_message(&app, &user, cases.len() + 1).await;
    assert_eq!(text, "🚨\n\n只有正文");
}

#[tokio::test]
async fn gotify_click_url_makes_a_card_and_markdown_is_read_as_markdown() {
    let (app, user, token) = app_and_member().await;
    let link = "https://ci.example.com/job/42?tab=log&x=1";
    let extras = json!({
        "client::display": {"contentType": "text/markdown"},
        "client::notification": {"click": {"url": link}},
    });
    let resp = app
        .http
        .post(app.url("/message"))
        .query(&[("token", token.as_str())])
        .json(&json!({
            "title": "构建失败",
            "message": "**deploy** 失败\n第二行",
            "priority": 6,
            "extras": extras,
        }))
        .send()
        .await
        .unwrap();
    let body = gotify_ok(resp).await;
    assert_eq!(body["extras"], extras, "extras are echoed: {body}");
    // The click URL makes a card that opens it; the markdown shows as readable text.
    let card = the_only_card(&app, &user, &token).await;
    assert_eq!(card.title, "构建失败");
    assert_eq!(card.description, "deploy 失败\n第二行");
    assert_eq!(card.url, link);
}

#[tokio::test]
async fn gotify_errors_have_gotify_shape_and_never_echo_the_token() {
    let (app, _user, token) = app_and_member().await;
    let unknown = "A".repeat(32);
    let post = |query: Option<&str>| {
        let mut req = app.http.post(app.url("/message"));
        if let Some(t) = query {
            req = req.query(&[("token", t)]);
        }
        req
    };

    // No message: 400, in JSON and form alike (a valid token, which is not echoed).
    for resp in [
        post(Some(&token)).json(&json!({"title": "t"})).send(),
        post(Some(&token))
            .json(&json!({"title": "t", "message": "  "}))
            .send(),
        post(Some(&token)).form(&[("title", "t")]).send(),
    ] {
        let body = gotify_err(resp.await.unwrap(), 400).await;
        assert!(!body.to_string().contains(&token), "{body}");
    }
    // A priority that is not a number.
    let resp = post(Some(&token))
        .json(&json!({"message": "m", "priority": "high"}))
        .send()
        .await
        .unwrap();
    gotify_err(resp, 400).await;

    // No token, or an unknown one however it comes: 401, the token not echoed.
    let resp = post(None)
        .json(&json!({"message": "m"}))
        .send()
        .await
        .unwrap();
    gotify_err(resp, 401).await;
    // gotify checks the token before the body.
    let resp = post(None).json(&json!({})).send().await.unwrap();
    gotify_err(resp, 401).await;
    for resp in [
        post(Some(&unknown)).json(&json!({"message": "m"})).send(),
        post(None)
            .header("X-Gotify-Key", &unknown)
            .json(&json!({"message": "m"}))
            .send(),
        post(None)
            .bearer_auth(&unknown)
            .form(&[("message", "m")])
            .send(),
    ] {
        let body = gotify_err(resp.await.unwrap(), 401).await;
        assert!(!body.to_string().contains(&unknown), "{body}");
    }
    assert_nothing_sent(&app, &token).await;
}

#[tokio::test]
async fn gotify_version() {
    let app = spawn_app().await;
    let (status, body) = json_of(get(&app, "/version").await).await;
    assert_eq!(status, 200, "{body}");
    let version = body["version"]
        .as_str()
        .unwrap_or_else(|| panic!("version is a string: {body}"));
    assert!(!version.is_empty(), "{body}");
}

// ==========================================================================================
// ntfy
// ==========================================================================================

#[tokio::test]
async fn ntfy_post_raw_body_as_curl_d_sends_it() {
    let (app, user, token) = app_and_member().await;
    // curl -d sends application/x-www-form-urlencoded; for ntfy the body is the text.
    let text = "Backup done: 备份完成 a=b&c=d %41";
    let resp = ntfy_post(&app, &format!("/{token}"), &[("X-Title", "Backup")], text).await;
    let body = ntfy_ok(resp, &token, text).await;
    assert_eq!(body["title"], "Backup", "{body}");
    assert!(
        body.get("priority").is_none(),
        "default priority is left out: {body}"
    );
    assert_eq!(
        the_only_message(&app, &user, &token).await,
        format!("Backup\n\n{text}")
    );
}

#[tokio::test]
async fn ntfy_put_and_title_header_aliases() {
    let (app, user, token) = app_and_member().await;
    let path = format!("/{token}");
    let resp = ntfy_send(
        &app,
        reqwest::Method::PUT,
        &path,
        &[("Title", "PUT 标题")],
        "放",
    )
    .await;
    ntfy_ok(resp, &token, "放").await;
    assert_eq!(nth_message(&app, &user, 1).await, "PUT 标题\n\n放");

    let resp = ntfy_post(&app, &path, &[("t", "短 t")], "short alias").await;
    let body = ntfy_ok(resp, &token, "short alias").await;
    assert_eq!(body["title"], "短 t", "{body}");
    assert_eq!(nth_message(&app, &user, 2).await, "短 t\n\nshort alias");

    // No title at all: the text alone.
    let resp = ntfy_post(&app, &path, &[], "no title").await;
    let body = ntfy_ok(resp, &token, "no title").await;
    assert!(body.get("title").is_none(), "{body}");
    assert_eq!(nth_message(&app, &user, 3).await, "no title");
}

#[tokio::test]
async fn ntfy_priority_tags_and_click_headers() {
    let (app, user, token) = app_and_member().await;
    let path = format!("/{token}");

    let resp = ntfy_post(
        &app,
        &path,
        &[("X-Title", "机房"), ("X-Priority", "5")],
        "断电",
    )
    .await;
    assert_eq!(ntfy_ok(resp, &token, "断电").await["priority"], 5);
    assert_eq!(nth_message(&app, &user, 1).await, "🚨 机房\n\n断电");

    let resp = ntfy_post(
        &app,
        &path,
        &[("X-Title", "Urgent"), ("X-Priority", "urgent")],
        "x",
    )
    .await;
    assert_eq!(ntfy_ok(resp, &token, "x").await["priority"], 5);
    assert_eq!(nth_message(&app, &user, 2).await, "🚨 Urgent\n\nx");

    let resp = ntfy_post(
        &app,
        &path,
        &[("X-Title", "磁盘"), ("X-Tags", "warning,disk")],
        "/dev/sda1 93%",
    )
    .await;
    let body = ntfy_ok(resp, &token, "/dev/sda1 93%").await;
    assert_eq!(body["tags"], json!(["warning", "disk"]), "{body}");
    assert_eq!(
        body["title"], "磁盘",
        "the answer has the title as sent: {body}"
    );
    let text = nth_message(&app, &user, 3).await;
    assert_eq!(text, "⚠️ 磁盘\n\n/dev/sda1 93%\nTags: disk");
    assert_eq!(last_line(&text), "Tags: disk");

    let link = "https://grafana.example.com/d/abc?from=now-1h&to=now";
    let resp = ntfy_post(
        &app,
        &path,
        &[("X-Title", "负载"), ("X-Priority", "4"), ("X-Click", link)],
        "load 12.5",
    )
    .await;
    let body = ntfy_ok(resp, &token, "load 12.5").await;
    assert_eq!(body["priority"], 4, "{body}");
    assert_eq!(body["click"], link, "{body}");
    // X-Click makes a card that opens the link.
    let card = nth_card(&app, &user, 4).await;
    assert_eq!(card.parts(), ("❗ 负载", "load 12.5", link));

    // All of them at once: the urgency marker first, then the tag emoji.
    let resp = ntfy_post(
        &app,
        &path,
        &[
            ("X-Title", "全部"),
            ("X-Priority", "max"),
            ("X-Tags", "warning, disk ,db"),
            ("X-Click", link),
        ],
        "all",
    )
    .await;
    ntfy_ok(resp, &token, "all").await;
    let card = nth_card(&app, &user, 5).await;
    assert_eq!(card.parts(), ("🚨 ⚠️ 全部", "all\nTags: disk, db", link));
}

#[tokio::test]
async fn ntfy_rfc2047_and_raw_utf8_header_values() {
    let (app, user, token) = app_and_member().await;
    let path = format!("/{token}");
    let encoded = format!("=?UTF-8?B?{}?=", STANDARD.encode("磁盘已满 disk full"));
    let resp = ntfy_post(&app, &path, &[("X-Title", &encoded)], "编码标题").await;
    let body = ntfy_ok(resp, &token, "编码标题").await;
    assert_eq!(body["title"], "磁盘已满 disk full", "{body}");
    assert_eq!(
        nth_message(&app, &user, 1).await,
        "磁盘已满 disk full\n\n编码标题"
    );

    // Quoted-printable encoded words too.
    let resp = ntfy_post(
        &app,
        &path,
        &[("Title", "=?utf-8?q?=E5=A4=87=E4=BB=BD_ok?=")],
        "q",
    )
    .await;
    ntfy_ok(resp, &token, "q").await;
    assert_eq!(nth_message(&app, &user, 2).await, "备份 ok\n\nq");

    // Raw UTF-8, as curl -H "X-Title: 原始标题" sends it.
    let resp = ntfy_post(
        &app,
        &path,
        &[("X-Title", "原始 UTF-8 标题"), ("X-Tags", "警告,warning")],
        "raw",
    )
    .await;
    let body = ntfy_ok(resp, &token, "raw").await;
    assert_eq!(body["tags"], json!(["警告", "warning"]), "{body}");
    assert_eq!(
        nth_message(&app, &user, 3).await,
        "⚠️ 原始 UTF-8 标题\n\nraw\nTags: 警告"
    );
}

#[tokio::test]
async fn ntfy_options_in_the_query() {
    let (app, user, token) = app_and_member().await;
    let path = format!("/{token}");
    let query_post = |query: Vec<(&'static str, &'static str)>, body: &'static str| {
        app.http
            .post(app.url(&path))
            .query(&query)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };

    let resp = query_post(
        vec![
            ("title", "查询标题"),
            ("priority", "high"),
            ("tags", "warning,disk"),
        ],
        "q1",
    )
    .await
    .unwrap();
    let body = ntfy_ok(resp, &token, "q1").await;
    assert_eq!(body["priority"], 4, "{body}");
    assert_eq!(
        nth_message(&app, &user, 1).await,
        "❗ ⚠️ 查询标题\n\nq1\nTags: disk"
    );

    let resp = query_post(vec![("t", "短"), ("p", "5"), ("ta", "db")], "q2")
        .await
        .unwrap();
    ntfy_ok(resp, &token, "q2").await;
    assert_eq!(nth_message(&app, &user, 2).await, "🚨 短\n\nq2\nTags: db");

    // The message itself from the query, with an empty body.
    let resp = query_post(vec![("message", "来自查询"), ("title", "m")], "")
        .await
        .unwrap();
    ntfy_ok(resp, &token, "来自查询").await;
    assert_eq!(nth_message(&app, &user, 3).await, "m\n\n来自查询");

    // Headers win over the query.
    let resp = app
        .http
        .post(app.url(&path))
        .query(&[("title", "query")])
        .header("X-Title", "header")
        .body("h")
        .send()
        .await
        .unwrap();
    ntfy_ok(resp, &token, "h").await;
    assert_eq!(nth_message(&app, &user, 4).await, "header\n\nh");
}

#[tokio::test]
async fn ntfy_empty_body_is_triggered() {
    let (app, user, token) = app_and_member().await;
    let resp = ntfy_post(&app, &format!("/{token}"), &[("X-Title", "门铃")], "").await;
    let body = ntfy_ok(resp, &token, "triggered").await;
    assert_eq!(body["title"], "门铃", "{body}");
    assert_eq!(
        the_only_message(&app, &user, &token).await,
        "门铃\n\ntriggered"
    );
}

/// A message that shows nothing (zero-width, format characters, fillers) is refused, not sent
/// as a blank message and not taken for the empty trigger; a title that shows nothing is
/// left out.
#[tokio::test]
async fn ntfy_a_message_that_shows_nothing_is_refused() {
    let (app, user, token) = app_and_member().await;
    let topic = format!("/{token}");
    for blank in crate::send::BLANK_TEXTS {
        let blank = *blank;
        ntfy_err(ntfy_post(&app, &topic, &[], blank).await, 400).await;
        ntfy_err(ntfy_post(&app, &topic, &[("title", "t")], blank).await, 400).await;
        let resp = app
            .http
            .post(app.url("/"))
            .json(&json!({"topic": token, "message": blank}))
            .send()
            .await
            .unwrap();
        ntfy_err(resp, 400).await;
    }
    assert_nothing_sent(&app, &token).await;
    let resp = ntfy_post(&app, &topic, &[("title", "\u{3164}")], "\u{200B}up").await;
    ntfy_ok(resp, &token, "\u{200B}up").await;
    assert_eq!(the_only_message(&app, &user, &token).await, "\u{200B}up");
}

/// gotify: a message that shows nothing is "message is required".
#[tokio::test]
async fn gotify_a_message_that_shows_nothing_is_refused() {
    let (app, _user, token) = app_and_member().await;
    for blank in crate::send::BLANK_TEXTS {
        let resp = app
            .http
            .post(app.url("/message"))
            .query(&[("token", token.as_str())])
            .json(&json!({"title": blank, "message": blank}))
            .send()
            .await
            .unwrap();
        gotify_err(resp, 400).await;
    }
    assert_nothing_sent(&app, &token).await;
}

#[tokio::test]
async fn ntfy_get_publish_send_and_trigger() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .get(app.url(&format!("/{token}/publish")))
        .query(&[
            ("message", "经由 GET 发布"),
            ("title", "发布"),
            ("tags", "tada"),
        ])
        .send()
        .await
        .unwrap();
    let body = ntfy_ok(resp, &token, "经由 GET 发布").await;
    assert_eq!(body["title"], "发布", "{body}");
    assert_eq!(
        nth_message(&app, &user, 1).await,
        "🎉 发布\n\n经由 GET 发布"
    );

    let resp = app
        .http
        .get(app.url(&format!("/{token}/send")))
        .query(&[("m", "send 动词"), ("t", "S")])
        .send()
        .await
        .unwrap();
    ntfy_ok(resp, &token, "send 动词").await;
    assert_eq!(nth_message(&app, &user, 2).await, "S\n\nsend 动词");

    let resp = get(&app, &format!("/{token}/trigger")).await;
    ntfy_ok(resp, &token, "triggered").await;
    assert_eq!(nth_message(&app, &user, 3).await, "triggered");

    // POST to the publish path: the body is the message.
    let resp = ntfy_post(
        &app,
        &format!("/{token}/publish"),
        &[("Title", "P")],
        "邮寄",
    )
    .await;
    ntfy_ok(resp, &token, "邮寄").await;
    assert_eq!(nth_message(&app, &user, 4).await, "P\n\n邮寄");
    assert_eq!(messages_of(&app, &token).await.len(), 4);
}

#[tokio::test]
async fn ntfy_json_publish_to_root() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .post(app.url("/"))
        .json(&json!({
            "topic": token,
            "message": "JSON 正文",
            "title": "JSON 标题",
            "tags": ["warning", "disk"],
            "priority": 4,
        }))
        .send()
        .await
        .unwrap();
    let body = ntfy_ok(resp, &token, "JSON 正文").await;
    assert_eq!(body["title"], "JSON 标题", "{body}");
    assert_eq!(body["priority"], 4, "{body}");
    assert_eq!(body["tags"], json!(["warning", "disk"]), "{body}");
    assert_eq!(
        the_only_message(&app, &user, &token).await,
        "❗ ⚠️ JSON 标题\n\nJSON 正文\nTags: disk"
    );
}

#[tokio::test]
async fn ntfy_token_by_bearer_basic_or_auth_param_with_any_topic() {
    let (app, user, token) = app_and_member().await;

    let resp = ntfy_post(
        &app,
        "/alerts",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("X-Title", "bearer"),
        ],
        "b1",
    )
    .await;
    ntfy_ok(resp, "alerts", "b1").await;
    assert_eq!(nth_message(&app, &user, 1).await, "bearer\n\nb1");

    let basic = STANDARD.encode(format!(":{token}"));
    let resp = ntfy_post(
        &app,
        "/backups",
        &[
            ("Authorization", &format!("Basic {basic}")),
            ("X-Title", "basic"),
        ],
        "b2",
    )
    .await;
    ntfy_ok(resp, "backups", "b2").await;
    assert_eq!(nth_message(&app, &user, 2).await, "basic\n\nb2");

    let auth = URL_SAFE_NO_PAD.encode(format!("Bearer {token}"));
    let resp = app
        .http
        .post(app.url("/cron_jobs"))
        .query(&[("auth", auth.as_str()), ("title", "param")])
        .body("b3")
        .send()
        .await
        .unwrap();
    ntfy_ok(resp, "cron_jobs", "b3").await;
    assert_eq!(nth_message(&app, &user, 3).await, "param\n\nb3");

    // The same on GET …/publish and on JSON to /.
    let resp = app
        .http
        .get(app.url("/alerts/publish"))
        .query(&[("auth", auth.as_str()), ("message", "b4")])
        .send()
        .await
        .unwrap();
    ntfy_ok(resp, "alerts", "b4").await;
    assert_eq!(nth_message(&app, &user, 4).await, "b4");

    let resp = app
        .http
        .post(app.url("/"))
        .bearer_auth(&token)
        .json(&json!({"topic": "alerts", "message": "b5", "title": "json"}))
        .send()
        .await
        .unwrap();
    ntfy_ok(resp, "alerts", "b5").await;
    assert_eq!(nth_message(&app, &user, 5).await, "json\n\nb5");

    let resp = app
        .http
        .post(app.url("/"))
        .query(&[("auth", auth.as_str())])
        .json(&json!({"topic": "alerts", "message": "b6"}))
        .send()
        .await
        .unwrap();
    ntfy_ok(resp, "alerts", "b6").await;
    assert_eq!(nth_message(&app, &user, 6).await, "b6");

    // Apprise's ntfy://TOKEN@host/topic sends Basic "TOKEN:None".
    let basic = STANDARD.encode(format!("{token}:None"));
    let resp = ntfy_post(
        &app,
        "/alerts",
        &[("Authorization", &format!("Basic {basic}"))],
        "b7",
    )
    .await;
    ntfy_ok(resp, "alerts", "b7").await;
    assert_eq!(nth_message(&app, &user, 7).await, "b7");
    assert_eq!(messages_of(&app, &token).await.len(), 7);
}

#[tokio::test]
async fn ntfy_a_name_given_twice_in_the_query_takes_the_first() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .post(app.url(&format!("/{token}")))
        .query(&[
            ("title", "first"),
            ("t", "second"),
            ("p", "5"),
            ("priority", "1"),
        ])
        .body("x")
        .send()
        .await
        .unwrap();
    let body = ntfy_ok(resp, &token, "x").await;
    assert_eq!(body["priority"], 5, "{body}");
    assert_eq!(nth_message(&app, &user, 1).await, "🚨 first\n\nx");
}

#[tokio::test]
async fn ntfy_errors_have_ntfy_shape_and_send_nothing() {
    let (app, _user, token) = app_and_member().await;
    let bearer = format!("Bearer {token}");
    let unknown = "A".repeat(32);

    // No token: a topic that is not one, no Authorization.
    ntfy_err(ntfy_post(&app, "/alerts", &[], "x").await, 401).await;
    ntfy_err(get(&app, "/alerts/publish?message=x").await, 401).await;
    let resp = app
        .http
        .post(app.url("/"))
        .json(&json!({"topic": "alerts", "message": "x"}))
        .send()
        .await
        .unwrap();
    ntfy_err(resp, 401).await;
    // An unknown token, as the topic or as Bearer: the token is not echoed.
    for resp in [
        ntfy_post(&app, &format!("/{unknown}"), &[], "x").await,
        ntfy_post(
            &app,
            "/alerts",
            &[("Authorization", &format!("Bearer {unknown}"))],
            "x",
        )
        .await,
    ] {
        let body = ntfy_err(resp, 401).await;
        assert!(!body.to_string().contains(&unknown), "{body}");
    }

    let path = format!("/{token}");
    // A priority that is not one.
    for p in ["7", "0", "soon"] {
        let body = ntfy_err(ntfy_post(&app, &path, &[("X-Priority", p)], "x").await, 400).await;
        assert!(!body.to_string().contains(&token), "{body}");
    }
    // A delay that is no time, or a time long gone, is refused (issue 21: delays are
    // scheduled, see ntfy_delays_are_scheduled_not_sent_early): never sent at once.
    for (name, value) in [
        ("X-Delay", "30 fortnights"),
        ("At", "someday, 10am"),
        ("X-At", "1600000000"),
        ("In", "-30m"),
    ] {
        let body = ntfy_err(ntfy_post(&app, &path, &[(name, value)], "x").await, 400).await;
        assert!(!body.to_string().contains(&token), "{body}");
    }
    ntfy_err(
        ntfy_post(&app, &format!("{path}?delay=whenever"), &[], "x").await,
        400,
    )
    .await;
    // A body that is not text where the body is the message (with X-Attach; without, it
    // is a file: tests/api/uploads.rs).
    ntfy_err(
        ntfy_post(
            &app,
            &path,
            &[("X-Attach", "http://127.0.0.1:9/a.png")],
            &b"\x89PNG\r\n\x1a\n\xff\xfe"[..],
        )
        .await,
        400,
    )
    .await;
    // JSON to / without a topic, or not JSON at all.
    let resp = app
        .http
        .post(app.url("/"))
        .bearer_auth(&token)
        .json(&json!({"message": "x"}))
        .send()
        .await
        .unwrap();
    ntfy_err(resp, 400).await;
    ntfy_err(
        ntfy_post(&app, "/", &[("Authorization", &bearer)], "hi").await,
        400,
    )
    .await;

    // pushbot's own route names are never topics, even with a valid token. (`/metrics` is
    // a route of its own, GET only: POST and PUT are 405, see tests/api/metrics.rs.)
    for name in ["m", "hooks", "wecom"] {
        let resp = ntfy_post(
            &app,
            &format!("/{name}"),
            &[("Authorization", &bearer)],
            "x",
        )
        .await;
        ntfy_err(resp, 404).await;
        let resp = ntfy_send(
            &app,
            reqwest::Method::PUT,
            &format!("/{name}"),
            &[("Authorization", &bearer)],
            "x",
        )
        .await;
        ntfy_err(resp, 404).await;
    }
    let resp = app
        .http
        .post(app.url("/"))
        .bearer_auth(&token)
        .json(&json!({"topic": "metrics", "message": "x"}))
        .send()
        .await
        .unwrap();
    ntfy_err(resp, 404).await;
    assert_nothing_sent(&app, &token).await;
}

/// `/{token}/{text}` stays Bark's (also when the text is a word such as "hello"); only
/// `publish`, `send` and `trigger` make it ntfy's.
#[tokio::test]
async fn bark_hello_is_still_bark_and_publish_is_ntfy() {
    let (app, user, token) = app_and_member().await;
    bark_ok(get(&app, &format!("/{token}/hello")).await).await;
    assert_eq!(nth_message(&app, &user, 1).await, "hello");
    bark_ok(get(&app, &format!("/{token}/{}", enc("你好 hello"))).await).await;
    assert_eq!(nth_message(&app, &user, 2).await, "你好 hello");

    let resp = get(&app, &format!("/{token}/publish")).await;
    ntfy_ok(resp, &token, "triggered").await;
    assert_eq!(nth_message(&app, &user, 3).await, "triggered");

    // A Bark text that is one of ntfy's verbs goes with a title.
    bark_ok(get(&app, &format!("/{token}/title/send")).await).await;
    assert_eq!(nth_message(&app, &user, 4).await, "title\n\nsend");
    assert_eq!(messages_of(&app, &token).await.len(), 4);
}

// ==========================================================================================
// alert webhooks
// ==========================================================================================

/// Alertmanager's webhook payload (version 4): one group, two firing alerts.
fn alertmanager_firing() -> Value {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"InstanceDown\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "pushbot",
        "groupLabels": {"alertname": "InstanceDown"},
        "commonLabels": {"alertname": "InstanceDown", "job": "node", "severity": "critical"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "InstanceDown", "instance": "db-1:9100", "job": "node", "severity": "critical"},
                "annotations": {"summary": "db-1 宕机", "description": "db-1:9100 has been down for more than 5 minutes."},
                "startsAt": "2026-11-27T02:00:00.000Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph?g0.expr=up+%3D%3D+0",
                "fingerprint": "a1"
            },
            {
                "status": "firing",
                "labels": {"alertname": "InstanceDown", "instance": "db-2:9100", "job": "node", "severity": "critical"},
                "annotations": {"summary": "db-2 宕机", "runbook_url": "https://wiki/runbooks/down"},
                "startsAt": "2026-11-27T02:01:30Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph?g0.expr=up+%3D%3D+0",
                "fingerprint": "a2"
            }
        ]
    })
}

/// The same group once both alerts are resolved.
fn alertmanager_resolved() -> Value {
    let mut payload = alertmanager_firing();
    payload["status"] = json!("resolved");
    for alert in payload["alerts"].as_array_mut().unwrap() {
        alert["status"] = json!("resolved");
        alert["endsAt"] = json!("2026-11-27T02:30:00Z");
    }
    payload
}

/// The sample payload of Grafana's webhook contact point documentation (unified alerting).
fn grafana_sample() -> Value {
    json!({
        "receiver": "My Super Webhook",
        "status": "firing",
        "orgId": 1,
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "High memory usage", "team": "blue", "zone": "us-1"},
                "annotations": {
                    "description": "The system has high memory usage",
                    "runbook_url": "https://myrunbook.com/runbook/1234",
                    "summary": "This alert was triggered for zone us-1"
                },
                "startsAt": "2021-10-12T09:51:03.157076+02:00",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "https://play.grafana.org/alerting/1afz29v7z/edit",
                "fingerprint": "c6eadffa33fcdf37",
                "silenceURL": "https://play.grafana.org/alerting/silence/new?alertmanager=grafana&matchers=alertname%3DT2%2Cteam%3Dblue%2Czone%3Dus-1",
                "dashboardURL": "",
                "panelURL": "",
                "values": {"B": 44.23, "C": 1},
                "valueString": "[ var='B' labels={__name__=go_memstats_heap_inuse_bytes, instance=http://localhost:3000, job=grafana} value=44.23 ], [ var='C' labels={__name__=go_memstats_heap_inuse_bytes, instance=http://localhost:3000, job=grafana} value=1 ]"
            },
            {
                "status": "firing",
                "labels": {"alertname": "High CPU usage", "team": "blue", "zone": "eu-1"},
                "annotations": {
                    "description": "The system has high CPU usage",
                    "runbook_url": "https://myrunbook.com/runbook/1234",
                    "summary": "This alert was triggered for zone eu-1"
                },
                "startsAt": "2021-10-12T09:56:03.157076+02:00",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "https://play.grafana.org/alerting/d1rdpdv7k/edit",
                "fingerprint": "bc97ff14869b13e3",
                "silenceURL": "https://play.grafana.org/alerting/silence/new?alertmanager=grafana&matchers=alertname%3DT1%2Cteam%3Dblue%2Czone%3Deu-1",
                "dashboardURL": "",
                "panelURL": "",
                "values": {"B": 44.23, "C": 1},
                "valueString": "[ var='B' labels={__name__=go_memstats_heap_inuse_bytes, instance=http://localhost:3000, job=grafana} value=44.23 ], [ var='C' labels={__name__=go_memstats_heap_inuse_bytes, instance=http://localhost:3000, job=grafana} value=1 ]"
            }
        ],
        "groupLabels": {},
        "commonLabels": {"team": "blue"},
        "commonAnnotations": {},
        "externalURL": "https://play.grafana.org/",
        "version": "1",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "title": "[FIRING:2]  (blue)",
        "state": "alerting",
        "message": "**Firing**\n\nValue: B=44.23, C=1\nLabels:\n - alertname = High memory usage\n - team = blue\n - zone = us-1\n"
    })
}

/// Asserts `text` reads like text, not like the JSON it came from.
fn assert_not_json(text: &str) {
    assert!(
        !text.contains("{\""),
        "the alert is not shown as JSON: {text:?}"
    );
    assert!(
        !text.contains("\":"),
        "the alert is not shown as JSON: {text:?}"
    );
}

#[tokio::test]
async fn alertmanager_firing_with_token_in_the_query() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .post(app.url("/hooks/alertmanager"))
        .query(&[("token", token.as_str())])
        .json(&alertmanager_firing())
        .send()
        .await
        .unwrap();
    let id = accepted_id(resp).await;
    let text = the_only_message(&app, &user, &token).await;
    let (title, content) = title_and_content(&text);
    assert_eq!(title, "🚨 [FIRING:2] InstanceDown", "{text}");
    assert_not_json(content);
    let expect_in_order = [
        "Firing (2):",
        "instance=db-1:9100",
        "db-1 宕机",
        "db-1:9100 has been down for more than 5 minutes.",
        "since 2026-11-27 10:00:00 (UTC+8)",
        "instance=db-2:9100",
        "db-2 宕机",
        "runbook_url: https://wiki/runbooks/down",
        "since 2026-11-27 10:01:30 (UTC+8)",
        "severity=critical",
        "http://alertmanager:9093",
    ];
    let mut from = 0;
    for part in expect_in_order {
        let at = content[from..]
            .find(part)
            .unwrap_or_else(|| panic!("{part:?} (in this order) in {content}"));
        from += at + part.len();
    }
    // Labels every alert shares are not repeated on each one.
    assert_eq!(content.matches("job=node").count(), 1, "{content}");
    let status = app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(status["title"], "🚨 [FIRING:2] InstanceDown", "{status}");
}

#[tokio::test]
async fn alertmanager_resolved_with_bearer() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .post(app.url("/hooks/alertmanager"))
        .bearer_auth(&token)
        .json(&alertmanager_resolved())
        .send()
        .await
        .unwrap();
    let id = accepted_id(resp).await;
    let text = the_only_message(&app, &user, &token).await;
    let (title, content) = title_and_content(&text);
    assert_eq!(
        title, "[RESOLVED] InstanceDown",
        "no urgency once resolved: {text}"
    );
    assert_not_json(content);
    assert!(content.starts_with("Resolved (2):\n"), "{content}");
    assert!(
        content.contains("db-1 宕机") && content.contains("db-2 宕机"),
        "{content}"
    );
    assert!(
        content.contains("resolved 2026-11-27 10:30:00 (UTC+8)"),
        "{content}"
    );
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
}

#[tokio::test]
async fn grafana_sample_payload_reads_like_an_alert() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .post(app.url("/hooks/grafana"))
        .query(&[("token", token.as_str())])
        .json(&grafana_sample())
        .send()
        .await
        .unwrap();
    let id = accepted_id(resp).await;
    let text = the_only_message(&app, &user, &token).await;
    let (title, content) = title_and_content(&text);
    assert!(
        title.starts_with("[FIRING:2]"),
        "no severity, no marker: {text}"
    );
    assert_not_json(content);
    for part in [
        "Firing (2):",
        "High memory usage",
        "This alert was triggered for zone us-1",
        "The system has high memory usage",
        "B=44.23",
        "C=1",
        // 09:51:03+02:00 is 07:51:03 UTC, 15:51:03 at the default UTC+8.
        "since 2021-10-12 15:51:03 (UTC+8)",
        "High CPU usage",
        "This alert was triggered for zone eu-1",
        "since 2021-10-12 15:56:03 (UTC+8)",
        "https://play.grafana.org/alerting/1afz29v7z/edit",
        "silence: https://play.grafana.org/alerting/silence/new?alertmanager=grafana",
        "team=blue",
    ] {
        assert!(content.contains(part), "{part:?} in {content}");
    }
    assert!(
        content.find("High memory usage") < content.find("High CPU usage"),
        "{content}"
    );
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
}

#[tokio::test]
async fn webhook_errors_are_native_and_send_nothing() {
    let (app, _user, token) = app_and_member().await;
    let unknown = "A".repeat(32);
    let post = |path: &str, token: Option<&str>, body: &str| {
        let mut req = app
            .http
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(t) = token {
            req = req.query(&[("token", t)]);
        }
        req.send()
    };
    let firing = alertmanager_firing().to_string();
    let grafana = grafana_sample().to_string();
    for (path, payload) in [
        ("/hooks/alertmanager", &firing),
        ("/hooks/grafana", &grafana),
    ] {
        // Not JSON, cut short, or no alerts in it.
        for body in [
            "not json",
            &payload[..payload.len() / 2],
            "{\"alerts\": []}",
            "[]",
        ] {
            let resp = post(path, Some(&token), body).await.unwrap();
            let err = assert_error(resp, 400, "bad_request").await;
            assert!(!err.to_string().contains(&token), "{err}");
        }
        // No token, or an unknown one.
        assert_error(
            post(path, None, payload).await.unwrap(),
            401,
            "unauthorized",
        )
        .await;
        let err = assert_error(
            post(path, Some(&unknown), payload).await.unwrap(),
            401,
            "unauthorized",
        )
        .await;
        assert!(!err.to_string().contains(&unknown), "{err}");
    }
    assert_nothing_sent(&app, &token).await;
}

/// Posts `payload` to an alert webhook for `token`; the accepted message's id.
async fn post_hook(app: &TestApp, path: &str, token: &str, payload: &Value) -> String {
    let resp = app
        .http
        .post(app.url(path))
        .query(&[("token", token)])
        .json(payload)
        .send()
        .await
        .unwrap();
    accepted_id(resp).await
}

/// The whole text of the `n`-th message WeCom got: the text itself, or for a message too
/// long for one (a card) the message page it links to.
async fn nth_whole_text(app: &TestApp, n: usize) -> String {
    let sent = app.mock.wait_for_sent(n, WAIT).await;
    let s = &sent[n - 1];
    match &s.card {
        None => s.content.clone(),
        Some(card) => {
            let path = card
                .url
                .strip_prefix(PUBLIC_URL)
                .unwrap_or_else(|| panic!("a page link: {card:?}"));
            let resp = get(app, path).await;
            assert_eq!(resp.status(), 200);
            format!("{}\n\n{}", s.content, resp.text().await.unwrap())
        }
    }
}

/// Both webhook routes: (path, a payload with one firing alert, named `name`).
fn one_alert_payloads(name: &str, labels: Value, annotations: Value) -> [(&'static str, Value); 2] {
    let mut am = alertmanager_firing();
    am["groupLabels"] = json!({"alertname": name});
    am["commonLabels"] = json!({"alertname": name});
    am["alerts"] = json!([am["alerts"][0].clone()]);
    am["alerts"][0]["labels"] = labels.clone();
    am["alerts"][0]["labels"]["alertname"] = json!(name);
    am["alerts"][0]["annotations"] = annotations.clone();
    let mut gf = grafana_sample();
    gf["alerts"] = json!([gf["alerts"][0].clone()]);
    gf["alerts"][0]["labels"] = labels;
    gf["alerts"][0]["labels"]["alertname"] = json!(name);
    gf["alerts"][0]["annotations"] = annotations;
    [("/hooks/alertmanager", am), ("/hooks/grafana", gf)]
}

/// A time the configured offset (UTC+8) would push past the year 9999 is shown as given:
/// a 200 and a delivered alert, not a 500 that Alertmanager retries forever.
#[tokio::test]
async fn webhook_times_past_9999_are_delivered_as_given() {
    let (app, user, token) = app_and_member().await;
    let end = "9999-12-31T23:59:59Z";
    let mut firing = alertmanager_firing();
    let mut grafana = grafana_sample();
    for payload in [&mut firing, &mut grafana] {
        for alert in payload["alerts"].as_array_mut().unwrap() {
            alert["startsAt"] = json!(end);
            alert["endsAt"] = json!(end);
        }
    }
    let mut resolved = alertmanager_resolved();
    for alert in resolved["alerts"].as_array_mut().unwrap() {
        alert["endsAt"] = json!(end);
    }
    for (n, (path, payload)) in [
        ("/hooks/alertmanager", &firing),
        ("/hooks/grafana", &grafana),
        ("/hooks/alertmanager", &resolved),
    ]
    .into_iter()
    .enumerate()
    {
        let id = post_hook(&app, path, &token, payload).await;
        let text = nth_message(&app, &user, n + 1).await;
        assert!(text.contains(&format!(" {end}")), "{path}: {text}");
        app.wait_for_status(&id, &token, "delivered", WAIT).await;
    }
}

/// One alert whose description is 17 KB: a 200, and the member reads its name, its labels
/// and the start of its text (the whole of what is kept on the message page).
#[tokio::test]
async fn a_webhook_alert_with_a_huge_description_keeps_name_labels_and_text() {
    let (app, _user, token) = app_and_member().await;
    let description = format!("Start of the story. {}", "x".repeat(17 * 1024));
    let payloads = one_alert_payloads(
        "BigOne",
        json!({"instance": "db-1:9100", "zone": "eu-1"}),
        json!({"description": description}),
    );
    for (n, (path, payload)) in payloads.iter().enumerate() {
        let id = post_hook(&app, path, &token, payload).await;
        let text = nth_whole_text(&app, n + 1).await;
        for part in [
            "[FIRING:1] BigOne",
            "BigOne (",
            "instance=db-1:9100",
            "zone=eu-1",
            "Start of the story. xxxx",
        ] {
            assert!(text.contains(part), "{path}: {part:?} in {text}");
        }
        assert!(!text.contains("not shown"), "{path}: {text}");
        app.wait_for_status(&id, &token, "delivered", WAIT).await;
    }
}

/// An alertname of 1,100 bytes: a 200 and the title cut (grapheme-safe, within 1,024 bytes
/// with the urgency marker).
#[tokio::test]
async fn a_webhook_alertname_too_long_for_a_title_is_cut() {
    let (app, _user, token) = app_and_member().await;
    let name = "名".repeat(1100 / 3 + 1);
    assert!(name.len() >= 1100);
    let payloads = one_alert_payloads(&name, json!({"severity": "critical"}), json!({}));
    for (n, (path, payload)) in payloads.iter().enumerate() {
        let id = post_hook(&app, path, &token, payload).await;
        let status = app.wait_for_status(&id, &token, "delivered", WAIT).await;
        let title = status["title"].as_str().unwrap();
        assert!(title.len() <= 1024, "{path}: {}", title.len());
        assert!(title.starts_with("🚨 [FIRING:1] 名名"), "{path}: {title}");
        assert!(title.ends_with("名…"), "{path}: {title}");
        let text = nth_whole_text(&app, n + 1).await;
        assert!(text.contains("名名名"), "{path}: {text}");
    }
}

/// Two alerts with 70 KB of shared annotations: a 200, and both alerts are there.
#[tokio::test]
async fn webhook_common_annotations_are_bounded_like_the_alert_list() {
    let (app, _user, token) = app_and_member().await;
    let huge = "r".repeat(70 * 1024);
    let mut firing = alertmanager_firing();
    let mut grafana = grafana_sample();
    for payload in [&mut firing, &mut grafana] {
        payload["commonAnnotations"] = json!({"runbook": huge});
        for alert in payload["alerts"].as_array_mut().unwrap() {
            alert["annotations"]["runbook"] = json!(huge);
        }
    }
    for (n, (path, payload, names)) in [
        ("/hooks/alertmanager", &firing, ["db-1 宕机", "db-2 宕机"]),
        (
            "/hooks/grafana",
            &grafana,
            ["High memory usage", "High CPU usage"],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let id = post_hook(&app, path, &token, payload).await;
        let text = nth_whole_text(&app, n + 1).await;
        for name in names {
            assert!(text.contains(name), "{path}: {name:?} in {text}");
        }
        assert!(text.contains("runbook: rrrr"), "{path}: {text}");
        app.wait_for_status(&id, &token, "delivered", WAIT).await;
    }
}

// ==========================================================================================
// logging
// ==========================================================================================

/// Tokens never reach the log through the gotify, ntfy or webhook routes either (paths,
/// query strings, `X-Gotify-Key`, `?auth=`), even at debug level and for refused requests.
#[tokio::test]
async fn tokens_on_the_new_routes_are_never_logged() {
    let DebugBinary {
        mock,
        mut bin,
        setup: _setup,
    } = debug_binary().await;
    let user = userid("newlog");
    let old = bin.get_token(&user).await;
    let token = bin.rotate(&user).await;
    let auth = URL_SAFE_NO_PAD.encode(format!("Bearer {token}"));
    let http = &bin.http;

    let ok = [
        http.post(bin.url(&format!("/{token}"))).body("ntfy path"),
        http.put(bin.url(&format!("/{token}"))).body("ntfy put"),
        http.get(bin.url(&format!("/{token}/publish?message=get"))),
        http.post(bin.url(&format!("/alerts?auth={auth}")))
            .body("auth param"),
        http.post(bin.url(&format!("/message?token={token}")))
            .form(&[("message", "gotify query")]),
        http.post(bin.url("/message"))
            .header("X-Gotify-Key", &token)
            .form(&[("message", "gotify key")]),
        http.post(bin.url(&format!("/hooks/alertmanager?token={token}")))
            .json(&alertmanager_firing()),
    ];
    let accepted = ok.len();
    for req in ok {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    }
    // Refused ones: the rotated token everywhere.
    let refused = [
        http.post(bin.url(&format!("/{old}"))).body("old"),
        http.get(bin.url(&format!("/{old}/publish"))),
        http.post(bin.url(&format!("/message?token={old}")))
            .form(&[("message", "old")]),
        http.post(bin.url(&format!("/hooks/grafana?token={old}")))
            .json(&grafana_sample()),
    ];
    for req in refused {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{:?}", resp.text().await);
    }
    mock.wait_for_sent(accepted, WAIT).await;
    // Let the delivery of the last ones be logged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    bin.kill9();

    let log = std::fs::read_to_string(&bin.log_path).unwrap();
    assert!(log.contains("DEBUG"), "debug logging was on: {log}");
    for secret in [&old, &token] {
        assert_not_logged(&log, secret);
    }
    assert!(!log.contains(&auth), "log leaks the auth parameter:\n{log}");
}

// ==========================================================================================
// Apprise, the real client
// ==========================================================================================

const APPRISE_TITLE: &str = "标题 title";
const APPRISE_BODY: &str = "正文 body 中文";

/// Runs `cmd` with its output in files under `dir`, killing it after `timeout`; returns
/// (success, stdout + stderr).
fn run_logged(mut cmd: Command, dir: &Path, timeout: Duration) -> Result<(bool, String), String> {
    let name = format!("run-{}", rand::random::<u32>());
    let out_path = dir.join(format!("{name}.out"));
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    match status {
        Some(status) => Ok((status.success(), output)),
        None => Err(format!(
            "{cmd:?} did not finish within {timeout:?}:\n{output}"
        )),
    }
}

/// `python venv/bin/apprise …`: the venv's interpreter runs the script, so the venv works
/// wherever it was built (the script's `#!` names the directory it was installed in).
fn apprise_command(venv: &Path) -> Command {
    let mut cmd = Command::new(venv.join("bin").join("python"));
    cmd.arg(venv.join("bin").join("apprise"));
    // 127.0.0.1 never goes through a proxy the environment may name.
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    cmd
}

fn apprise_works(venv: &Path, scratch: &Path) -> bool {
    if !venv.join("bin").join("apprise").is_file() {
        return false;
    }
    let mut cmd = apprise_command(venv);
    cmd.arg("--version");
    matches!(
        run_logged(cmd, scratch, Duration::from_secs(60)),
        Ok((true, out)) if out.contains("Apprise")
    )
}

/// A venv with Apprise, cached in `target/apprise-venv`: built once in a private temporary
/// directory and moved into place when complete, so a failed or concurrent build never
/// leaves a half-made cache.
fn apprise_venv() -> Result<PathBuf, String> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .to_path_buf();
    let scratch = tempfile::Builder::new()
        .prefix("apprise-build-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .map_err(|e| format!("temporary directory: {e}"))?;
    let venv = target.join("apprise-venv");
    if apprise_works(&venv, scratch.path()) {
        return Ok(venv);
    }
    let staging = scratch.path().join("venv");
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "venv"]).arg(&staging);
    match run_logged(cmd, scratch.path(), Duration::from_secs(120))? {
        (true, _) => {}
        (false, out) => return Err(format!("python3 -m venv failed:\n{out}")),
    }
    let mut cmd = Command::new(staging.join("bin").join("python"));
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "apprise",
    ]);
    match run_logged(cmd, scratch.path(), Duration::from_secs(300))? {
        (true, _) => {}
        (false, out) => return Err(format!("pip install apprise failed:\n{out}")),
    }
    if !apprise_works(&staging, scratch.path()) {
        return Err("apprise does not run in the new venv".into());
    }
    // A broken cache goes; a complete one another run just built stays.
    if venv.exists() && !apprise_works(&venv, scratch.path()) {
        let _ = std::fs::remove_dir_all(&venv);
    }
    if std::fs::rename(&staging, &venv).is_err() && !apprise_works(&venv, scratch.path()) {
        return Err(format!("cannot move the venv to {}", venv.display()));
    }
    Ok(venv)
}

/// Sends [`APPRISE_TITLE`] and [`APPRISE_BODY`] to one Apprise URL; panics unless the CLI
/// reports success.
async fn apprise_notify(venv: &Path, url: String) {
    apprise_notify_attaching(venv, url, None).await;
}

/// [`apprise_notify`] with `--attach FILE` when `attach` is given.
async fn apprise_notify_attaching(venv: &Path, url: String, attach: Option<PathBuf>) {
    let venv = venv.to_path_buf();
    let result = tokio::task::spawn_blocking(move || {
        let scratch = tempfile::tempdir().expect("tempdir");
        let mut cmd = apprise_command(&venv);
        cmd.args([
            "-vv",
            "--storage-mode",
            "memory",
            "-t",
            APPRISE_TITLE,
            "-b",
            APPRISE_BODY,
        ]);
        if let Some(file) = &attach {
            cmd.arg("--attach").arg(file);
        }
        cmd.arg(&url);
        (
            url,
            run_logged(cmd, scratch.path(), Duration::from_secs(60)),
        )
    })
    .await
    .expect("apprise task");
    match result {
        (_, Ok((true, _))) => {}
        (url, Ok((false, out))) => panic!("apprise {url} failed:\n{out}"),
        (url, Err(e)) => panic!("apprise {url}: {e}"),
    }
}

/// The Apprise CLI, a client many people already use, reaches the member through pushbot
/// as gotify, ntfy (topic = token, and token as Bearer with any topic) and Bark, with the
/// title and the text intact.
#[tokio::test]
async fn apprise_cli_delivers_as_gotify_ntfy_and_bark() {
    let venv = match tokio::task::spawn_blocking(apprise_venv)
        .await
        .expect("venv task")
    {
        Ok(venv) => venv,
        Err(why) => {
            println!("SKIPPED: apprise_cli_delivers_as_gotify_ntfy_and_bark: no Apprise ({why})");
            return;
        }
    };
    let (app, user, token) = app_and_member().await;
    let port = app.port;
    let urls = [
        format!("gotify://127.0.0.1:{port}/{token}"),
        format!("ntfy://127.0.0.1:{port}/{token}"),
        format!("ntfy://{token}@127.0.0.1:{port}/alerts?auth=token"),
        format!("bark://127.0.0.1:{port}/{token}"),
    ];
    for (i, url) in urls.iter().enumerate() {
        apprise_notify(&venv, url.clone()).await;
        let text = nth_message(&app, &user, i + 1).await;
        let scheme = url.split("://").next().unwrap();
        assert_eq!(
            text,
            format!("{APPRISE_TITLE}\n\n{APPRISE_BODY}"),
            "apprise {scheme} (#{i})"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.mock.sent().len(), urls.len(), "{:#?}", app.mock.sent());
    assert_eq!(messages_of(&app, &token).await.len(), urls.len());
}

/// Apprise's `--attach` through the ntfy URL (it POSTs the file as the body, its name in
/// `?filename=`, title and text in the query) arrives as the message's attachment, byte for
/// byte, with the title and the text.
#[tokio::test]
async fn apprise_attach_through_ntfy_arrives_as_an_attachment() {
    let venv = match tokio::task::spawn_blocking(apprise_venv)
        .await
        .expect("venv task")
    {
        Ok(venv) => venv,
        Err(why) => {
            println!(
                "SKIPPED: apprise_attach_through_ntfy_arrives_as_an_attachment: no Apprise ({why})"
            );
            return;
        }
    };
    let (app, _user, token) = app_and_member().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("chart.png");
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    bytes.extend((0..40_000u32).map(|i| (i % 241) as u8));
    std::fs::write(&file, &bytes).expect("write the attachment");
    let port = app.port;
    apprise_notify_attaching(
        &venv,
        format!("ntfy://127.0.0.1:{port}/{token}"),
        Some(file),
    )
    .await;
    let listed = messages_of(&app, &token).await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    let id = listed[0]["id"].as_str().expect("an id");
    let message = app.message_json(id, &token).await;
    assert_eq!(message["title"], APPRISE_TITLE, "{message}");
    let sha256 = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    assert_eq!(
        message["attachments"],
        json!([{
            "filename": "chart.png",
            "kind": "image",
            "size": bytes.len(),
            "mime": "image/png",
            "sha256": sha256,
        }]),
        "{message}"
    );
}

// ==========================================================================================
// Issue 26: what an original accepts and pushbot cannot honour is refused by name
// ==========================================================================================

#[tokio::test]
async fn ntfy_options_pushbot_cannot_honour_are_refused_by_name() {
    let (app, _user, token) = app_and_member().await;
    let path = format!("/{token}");
    // (Attachments, X-Attach and X-Filename, are taken: tests/api/uploads.rs.)
    for (header, value) in [
        ("X-Actions", "view, Open, https://example.com"),
        ("Actions", "view, Open, https://example.com"),
        ("X-Email", "me@example.com"),
        ("Email", "me@example.com"),
        ("X-Call", "yes"),
        ("X-Template", "yes"),
    ] {
        let body = ntfy_err(ntfy_post(&app, &path, &[(header, value)], "x").await, 400).await;
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("\"{}\"", header.to_ascii_lowercase())),
            "{header}: {body}"
        );
    }
    for query in ["e=me@example.com", "actions=x"] {
        let name = query.split('=').next().unwrap_or_default();
        let body = ntfy_err(
            ntfy_post(&app, &format!("{path}?{query}"), &[], "x").await,
            400,
        )
        .await;
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("\"{name}\"")),
            "{query}: {body}"
        );
    }
    for field in [
        json!({"email": "me@example.com"}),
        json!({"actions": [{"action": "view", "label": "Open", "url": "https://example.com"}]}),
    ] {
        let mut body = json!({"topic": "alerts", "message": "x"});
        if let (Some(map), Some(more)) = (body.as_object_mut(), field.as_object()) {
            map.extend(more.clone());
        }
        let resp = app
            .http
            .post(app.url("/"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        ntfy_err(resp, 400).await;
    }
    assert_nothing_sent(&app, &token).await;
    // What only ntfy's phone app acts on is ignored; a template turned off is no template.
    let resp = ntfy_post(
        &app,
        &path,
        &[
            ("X-Icon", "https://example.com/i.png"),
            ("X-Cache", "no"),
            ("X-Firebase", "no"),
            ("X-Template", "no"),
        ],
        "still sent",
    )
    .await;
    ntfy_ok(resp, &token, "still sent").await;
}

/// Issue 21: ntfy's delays, refused by name before, are scheduled — under every name ntfy
/// reads them by (the first in ntfy's order counts, as in ntfy), in headers, the query and
/// JSON — and nothing goes early.
#[tokio::test]
async fn ntfy_delays_are_scheduled_not_sent_early() {
    let (app, _user, token) = app_and_member().await;
    let path = format!("/{token}");
    let now = now_secs();
    let mut ids = Vec::new();
    for (headers, query) in [
        (vec![("X-Delay", "30m")], ""),
        (vec![("X-In", "30m")], ""),
        (vec![("At", "tomorrow, 10am")], ""),
        // ntfy's order of names decides which one counts.
        (vec![("Delay", "not even read"), ("X-Delay", "1 day")], ""),
        (vec![], "?at=10am"),
        (vec![], "?delay=1h"),
        (vec![], "?in=2%20days"),
    ] {
        let resp = ntfy_post(&app, &format!("{path}{query}"), &headers, "later").await;
        let (status, body) = json_of(resp).await;
        assert_eq!(status, 200, "{headers:?} {query}: {body}");
        assert_eq!(body["event"], "message", "{body}");
        let time = body["time"].as_i64().unwrap_or_default();
        // A clock time (`10am`) may be only minutes away: the earliest is "later than now".
        assert!(
            time > now && time <= now + 2 * 86_400 + 5,
            "time is when it is delivered: {body}"
        );
        ids.push(body["id"].as_str().unwrap_or_default().to_owned());
    }
    let resp = app
        .http
        .post(app.url("/"))
        .bearer_auth(&token)
        .json(&json!({"topic": "alerts", "message": "later", "delay": "30m"}))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 200, "{body}");
    ids.push(body["id"].as_str().unwrap_or_default().to_owned());
    for id in &ids {
        let m = app.message_json(id, &token).await;
        assert_eq!(m["status"], "scheduled", "{m}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.mock.send_calls(), 0, "nothing goes early");
}

#[tokio::test]
async fn bark_and_serverchan_refuse_what_they_cannot_honour_by_name() {
    let (app, _user, token) = app_and_member().await;
    let refused = |resp: reqwest::Response, name: &'static str| async move {
        let (status, body) = json_of(resp).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("\"{name}\"")),
            "{name}: {body}"
        );
    };
    refused(
        get(&app, &format!("/{token}/x?ciphertext=abc&iv=123")).await,
        "ciphertext",
    )
    .await;
    refused(
        app.http
            .post(app.url("/push"))
            .json(&json!({"device_key": token, "body": "x", "delete": "1"}))
            .send()
            .await
            .unwrap(),
        "delete",
    )
    .await;
    refused(
        app.http
            .post(app.url(&format!("/{token}.send")))
            .form(&[("title", "t"), ("openid", "o1,o2")])
            .send()
            .await
            .unwrap(),
        "openid",
    )
    .await;
    assert_nothing_sent(&app, &token).await;
    // What they document and pushbot honours or may ignore still goes through.
    bark_ok(
        get(
            &app,
            &format!("/{token}/t/b?sound=bell&badge=1&group=g&isArchive=1&call=1&id=n1"),
        )
        .await,
    )
    .await;
    let resp = app
        .http
        .post(app.url(&format!("/{token}.send")))
        .form(&[("title", "t"), ("short", "s"), ("noip", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
}
