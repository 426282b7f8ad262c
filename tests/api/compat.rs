//! Drop-in compatibility: `multipart/form-data` on `/send` (curl -F), ServerChan
//! (`/{token}.send`, `/send/{token}.send`, `GET /push`) and Bark (`/{token}/…`, `POST /push`,
//! `/ping`). Every route ends in the same durable path as `/send`; the native routes are not
//! shadowed, unknown paths are 404 and tokens in URL paths never reach the log.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::helpers::*;

pub(crate) async fn app_and_member() -> (TestApp, String, String) {
    let app = spawn_app().await;
    let user = userid("compat");
    let token = app.get_token(&user).await;
    (app, user, token)
}

/// Percent-encodes everything but RFC 3986 unreserved characters (so `/` becomes `%2F`).
pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// curl -F's boundary style: dashes and lowercase hex.
const CURL_BOUNDARY: &str = "------------------------d74496d66958873e";
/// A browser's boundary style: mixed case (boundaries are case-sensitive, RFC 2046).
const BROWSER_BOUNDARY: &str = "----WebKitFormBoundary7MA4YWxkTrZu0gW";

/// A `multipart/form-data` body as curl -F builds it: (Content-Type, body).
fn multipart(fields: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    multipart_with(CURL_BOUNDARY, fields)
}

fn multipart_with(boundary: &str, fields: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn post_multipart(app: &TestApp, fields: &[(&str, &[u8])]) -> reqwest::Response {
    let (content_type, body) = multipart(fields);
    app.http
        .post(app.url("/send"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST /send (multipart)")
}

/// The member's stored messages, newest first.
pub(crate) async fn messages_of(app: &TestApp, token: &str) -> Vec<Value> {
    let resp = app.messages(&[("token", token)]).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["messages"].as_array().cloned().unwrap_or_default()
}

/// Waits for WeCom to accept a message, then checks it was the only one, for `user`, and
/// that the member has exactly one stored message; returns its WeCom text.
pub(crate) async fn the_only_message(app: &TestApp, user: &str, token: &str) -> String {
    let sent = the_only_sent(app, user, token).await;
    assert_eq!(sent.msgtype, "text", "{sent:#?}");
    sent.content
}

/// [`the_only_message`] for a message that became a card: the card.
pub(crate) async fn the_only_card(app: &TestApp, user: &str, token: &str) -> SentCard {
    let sent = the_only_sent(app, user, token).await;
    assert_eq!(sent.msgtype, "textcard", "{sent:#?}");
    sent.card
        .clone()
        .unwrap_or_else(|| panic!("a card: {sent:#?}"))
}

async fn the_only_sent(app: &TestApp, user: &str, token: &str) -> Sent {
    app.mock.wait_for_sent(1, WAIT).await;
    // Give a duplicate the chance to show up.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = app.mock.sent();
    assert_eq!(
        sent.len(),
        1,
        "exactly one message reaches WeCom: {sent:#?}"
    );
    assert_eq!(sent[0].touser, user, "{sent:#?}");
    let stored = messages_of(app, token).await;
    assert_eq!(stored.len(), 1, "exactly one message stored: {stored:#?}");
    sent[0].clone()
}

/// Nothing reached WeCom and nothing was stored for the member.
pub(crate) async fn assert_nothing_sent(app: &TestApp, token: &str) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.mock.send_calls(), 0, "{:#?}", app.mock.calls());
    assert!(messages_of(app, token).await.is_empty());
}

pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A JSON string or number as text (ids may be either).
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("expected a string or number, got {other}"),
    }
}

pub(crate) async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("response body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("HTTP {status}: body is not JSON ({e}): {text:?}"));
    (status, body)
}

// ---- ServerChan response shapes ----

struct Pushed {
    pushid: String,
    readkey: String,
}

/// HTTP 200 `{"code":0,"message":"","data":{"pushid","readkey","error":"SUCCESS","errno":0}}`.
/// A ServerChan success whose message reaches WeCom as `expected` and is then delivered.
async fn sc_delivered(
    app: &TestApp,
    user: &str,
    token: &str,
    resp: reqwest::Response,
    expected: &str,
) -> Pushed {
    let pushed = sc_ok(resp).await;
    assert_eq!(the_only_message(app, user, token).await, expected);
    app.wait_for_status(&pushed.pushid, token, "delivered", WAIT)
        .await;
    pushed
}

async fn sc_ok(resp: reqwest::Response) -> Pushed {
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 200, "ServerChan success is HTTP 200: {body}");
    assert_eq!(body["code"].as_i64(), Some(0), "{body}");
    assert_eq!(body["message"], "", "{body}");
    let data = &body["data"];
    assert_eq!(data["error"], "SUCCESS", "{body}");
    assert_eq!(data["errno"].as_i64(), Some(0), "{body}");
    let pushid = as_text(&data["pushid"]);
    assert!(!pushid.is_empty(), "{body}");
    let readkey = data["readkey"]
        .as_str()
        .unwrap_or_else(|| panic!("readkey is a string: {body}"))
        .to_owned();
    assert!(!readkey.is_empty(), "{body}");
    Pushed { pushid, readkey }
}

/// HTTP 400 `{"code":<nonzero int>,"message":"<text>"}`.
async fn sc_err(resp: reqwest::Response) -> Value {
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 400, "ServerChan error is HTTP 400: {body}");
    let code = body["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("code is an integer: {body}"));
    assert_ne!(code, 0, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error has a message: {body}"
    );
    body
}

// ---- Bark response shapes ----

fn assert_timestamp(body: &Value) {
    let ts = body["timestamp"]
        .as_i64()
        .unwrap_or_else(|| panic!("timestamp is an integer: {body}"));
    assert!(
        (ts - now_secs()).abs() <= 120,
        "timestamp is unix seconds, now: {body}"
    );
}

/// HTTP 200 `{"code":200,"message":"success","timestamp":…}`.
pub(crate) async fn bark_ok(resp: reqwest::Response) {
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 200, "Bark success is HTTP 200: {body}");
    assert_eq!(body["code"].as_i64(), Some(200), "{body}");
    assert_eq!(body["message"], "success", "{body}");
    assert_timestamp(&body);
}

/// HTTP 400 `{"code":400,"message":…,"timestamp":…}`.
async fn bark_err(resp: reqwest::Response) -> Value {
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 400, "Bark error is HTTP 400: {body}");
    assert_eq!(body["code"].as_i64(), Some(400), "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error has a message: {body}"
    );
    assert_timestamp(&body);
    body
}

pub(crate) async fn get(app: &Api, path: &str) -> reqwest::Response {
    app.http
        .get(app.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

// ==========================================================================================
// multipart/form-data on /send
// ==========================================================================================

#[tokio::test]
async fn multipart_send_queues_and_delivers() {
    let (app, user, token) = app_and_member().await;
    let resp = post_multipart(
        &app,
        &[
            ("token", token.as_bytes()),
            ("title", "磁盘告警".as_bytes()),
            (
                "content",
                "/dev/sda1 使用率 93%\nsecond line & more".as_bytes(),
            ),
        ],
    )
    .await;
    let id = accepted_id(resp).await;
    let text = the_only_message(&app, &user, &token).await;
    assert_eq!(text, "磁盘告警\n\n/dev/sda1 使用率 93%\nsecond line & more");
    let status = app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(status["title"], "磁盘告警", "{status}");
}

/// Browsers (and many HTTP libraries) use mixed-case boundaries; the boundary must be
/// matched exactly as sent, not lowercased.
#[tokio::test]
async fn multipart_with_a_mixed_case_boundary() {
    let (app, user, token) = app_and_member().await;
    let (content_type, body) = multipart_with(
        BROWSER_BOUNDARY,
        &[
            ("token", token.as_bytes()),
            ("title", "浏览器".as_bytes()),
            ("content", b"form"),
        ],
    );
    let resp = app
        .http
        .post(app.url("/send"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let id = accepted_id(resp).await;
    assert_eq!(
        the_only_message(&app, &user, &token).await,
        "浏览器\n\nform"
    );
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
}

#[tokio::test]
async fn multipart_with_bearer_token_and_desp() {
    let (app, user, token) = app_and_member().await;
    let (content_type, body) = multipart(&[("title", b"Backup"), ("desp", b"done in 3s")]);
    let resp = app
        .http
        .post(app.url("/send"))
        .bearer_auth(&token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let id = accepted_id(resp).await;
    assert_eq!(
        the_only_message(&app, &user, &token).await,
        "Backup\n\ndone in 3s"
    );
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
}

#[tokio::test]
async fn multipart_channel_and_idempotency_key_fields_are_honoured() {
    let (app, user, token) = app_and_member().await;
    // The channel field is read: an unknown channel is refused.
    let resp = post_multipart(
        &app,
        &[
            ("token", token.as_bytes()),
            ("title", b"x"),
            ("channel", b"carrier-pigeon"),
        ],
    )
    .await;
    assert_error(resp, 400, "bad_request").await;

    let fields: [(&str, &[u8]); 5] = [
        ("token", token.as_bytes()),
        ("title", b"Once"),
        ("content", b"only once"),
        ("channel", b"wecom"),
        ("idempotency_key", b"compat-multipart-key-1"),
    ];
    let id = accepted_id(post_multipart(&app, &fields).await).await;
    let (status, again) = json_of(post_multipart(&app, &fields).await).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(
        as_text(&again["id"]),
        id,
        "a repeat answers the first id: {again}"
    );
    assert_eq!(again["duplicate"], true, "{again}");

    assert_eq!(
        the_only_message(&app, &user, &token).await,
        "Once\n\nonly once"
    );
    let status = app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "wecom", "{status}");
}

#[tokio::test]
async fn multipart_invalid_utf8_field_is_400_and_stores_nothing() {
    let (app, _user, token) = app_and_member().await;
    let resp = post_multipart(
        &app,
        &[
            ("token", token.as_bytes()),
            ("title", b"ok"),
            ("content", b"bad \xff\xfe byte"),
        ],
    )
    .await;
    let body = assert_error(resp, 400, "bad_request").await;
    assert!(
        body["message"].as_str().unwrap().contains("UTF-8"),
        "{body}"
    );
    assert_nothing_sent(&app, &token).await;
}

#[tokio::test]
async fn multipart_without_token_is_401() {
    let (app, _user, token) = app_and_member().await;
    let resp = post_multipart(&app, &[("title", b"t"), ("content", b"c")]).await;
    assert_error(resp, 401, "unauthorized").await;
    let resp = post_multipart(
        &app,
        &[("token", "A".repeat(32).as_bytes()), ("title", b"t")],
    )
    .await;
    assert_error(resp, 401, "unauthorized").await;
    assert_nothing_sent(&app, &token).await;
}

// ==========================================================================================
// ServerChan
// ==========================================================================================

#[tokio::test]
async fn serverchan_get_with_query_delivers_title_and_desp() {
    let (app, user, token) = app_and_member().await;
    let desp = "## 构建失败\n- job: **deploy**\n- [日志](https://ci.example.com/1)";
    let resp = app
        .http
        .get(app.url(&format!("/{token}.send")))
        .query(&[("title", "构建 #42"), ("desp", desp)])
        .send()
        .await
        .unwrap();
    let pushed = sc_ok(resp).await;
    // desp is markdown: members who read plain text get it readable.
    assert_eq!(
        the_only_message(&app, &user, &token).await,
        "构建 #42\n\n构建失败\n\n• job: deploy\n• 日志 (https://ci.example.com/1)"
    );
    // The pushid is the message id of the native API.
    let status = app
        .wait_for_status(&pushed.pushid, &token, "delivered", WAIT)
        .await;
    assert_eq!(status["title"], "构建 #42", "{status}");
}

#[tokio::test]
async fn serverchan_post_form_ignores_short() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .post(app.url(&format!("/{token}.send")))
        .form(&[
            ("title", "Backup 完成"),
            ("desp", "a & b = c"),
            ("short", "card summary"),
        ])
        .send()
        .await
        .unwrap();
    sc_delivered(&app, &user, &token, resp, "Backup 完成\n\na & b = c").await;
}

#[tokio::test]
async fn serverchan_post_json() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .post(app.url(&format!("/{token}.send")))
        .json(&json!({"title": "Deploy ✅", "desp": "v1.2.3 已上线", "short": "s"}))
        .send()
        .await
        .unwrap();
    sc_delivered(&app, &user, &token, resp, "Deploy ✅\n\nv1.2.3 已上线").await;
}

#[tokio::test]
async fn serverchan_text_is_the_legacy_name_of_title() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .get(app.url(&format!("/{token}.send")))
        .query(&[("text", "旧版标题"), ("desp", "body")])
        .send()
        .await
        .unwrap();
    sc_ok(resp).await;
    assert_eq!(
        the_only_message(&app, &user, &token).await,
        "旧版标题\n\nbody"
    );
}

#[tokio::test]
async fn serverchan_title_alone_is_sent_alone() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .get(app.url(&format!("/{token}.send")))
        .query(&[("title", "just a title")])
        .send()
        .await
        .unwrap();
    sc_ok(resp).await;
    assert_eq!(the_only_message(&app, &user, &token).await, "just a title");
}

#[tokio::test]
async fn serverchan3_get_send_path() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .get(app.url(&format!("/send/{token}.send")))
        .query(&[("title", "Server酱³"), ("desp", "内容 content")])
        .send()
        .await
        .unwrap();
    sc_delivered(&app, &user, &token, resp, "Server酱³\n\n内容 content").await;
}

#[tokio::test]
async fn serverchan3_post_json_with_tags() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .post(app.url(&format!("/send/{token}.send")))
        .json(&json!({"title": "标签", "desp": "with tags", "tags": "服务器|报警"}))
        .send()
        .await
        .unwrap();
    let pushed = sc_ok(resp).await;
    let text = the_only_message(&app, &user, &token).await;
    // Tags may or may not be shown; title and desp are there, in that order.
    assert!(text.starts_with("标签\n\n"), "{text:?}");
    assert!(text.contains("with tags"), "{text:?}");
    app.wait_for_status(&pushed.pushid, &token, "delivered", WAIT)
        .await;
}

#[tokio::test]
async fn serverchan3_post_form() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .post(app.url(&format!("/send/{token}.send")))
        .form(&[("title", "Form³"), ("desp", "表单")])
        .send()
        .await
        .unwrap();
    sc_ok(resp).await;
    assert_eq!(the_only_message(&app, &user, &token).await, "Form³\n\n表单");
}

#[tokio::test]
async fn serverchan_unknown_token_is_400() {
    let (app, _user, token) = app_and_member().await;
    let unknown = "A".repeat(32);
    sc_err(get(&app, &format!("/{unknown}.send?title=t&desp=d")).await).await;
    sc_err(get(&app, &format!("/send/{unknown}.send?title=t&desp=d")).await).await;
    // A near miss of a real token is unknown too.
    let mut near = token.clone();
    let last = near.pop().unwrap();
    near.push(if last == 'a' { 'b' } else { 'a' });
    sc_err(get(&app, &format!("/{near}.send?title=t")).await).await;
    let resp = app
        .http
        .post(app.url(&format!("/{unknown}.send")))
        .form(&[("title", "t")])
        .send()
        .await
        .unwrap();
    sc_err(resp).await;
    assert_nothing_sent(&app, &token).await;
}

#[tokio::test]
async fn serverchan_requires_a_title() {
    let (app, _user, token) = app_and_member().await;
    // desp alone is not enough for ServerChan.
    sc_err(get(&app, &format!("/{token}.send?desp=only%20desp")).await).await;
    sc_err(get(&app, &format!("/send/{token}.send?desp=only%20desp")).await).await;
    sc_err(get(&app, &format!("/{token}.send")).await).await;
    sc_err(get(&app, &format!("/{token}.send?title=&desp=d")).await).await;
    let resp = app
        .http
        .post(app.url(&format!("/{token}.send")))
        .json(&json!({"desp": "no title"}))
        .send()
        .await
        .unwrap();
    sc_err(resp).await;
    let resp = app
        .http
        .post(app.url(&format!("/{token}.send")))
        .form(&[("desp", "no title")])
        .send()
        .await
        .unwrap();
    sc_err(resp).await;
    assert_nothing_sent(&app, &token).await;
}

/// A title that shows nothing (zero-width, format characters, fillers) is no title.
#[tokio::test]
async fn serverchan_a_title_that_shows_nothing_is_refused() {
    let (app, _user, token) = app_and_member().await;
    for blank in crate::send::BLANK_TEXTS {
        let path = format!("/{token}.send?title={}&desp=d", enc(blank));
        sc_err(get(&app, &path).await).await;
    }
    assert_nothing_sent(&app, &token).await;
}

#[tokio::test]
async fn serverchan_bad_json_is_400() {
    let (app, _user, token) = app_and_member().await;
    for path in [format!("/{token}.send"), format!("/send/{token}.send")] {
        for body in ["{\"title\": ", "not json at all {", "{\"title\": 5}"] {
            let resp = app
                .http
                .post(app.url(&path))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            sc_err(resp).await;
        }
    }
    assert_nothing_sent(&app, &token).await;
}

#[tokio::test]
async fn serverchan_push_reads_a_message_back_with_its_readkey() {
    let (app, _user, token) = app_and_member().await;
    let resp = app
        .http
        .get(app.url(&format!("/{token}.send")))
        .query(&[("title", "查询"), ("desp", "read me back")])
        .send()
        .await
        .unwrap();
    let pushed = sc_ok(resp).await;
    app.mock.wait_for_sent(1, WAIT).await;

    let deadline = Instant::now() + WAIT;
    let data = loop {
        let resp = app
            .http
            .get(app.url("/push"))
            .query(&[("id", pushed.pushid.as_str()), ("readkey", &pushed.readkey)])
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(resp).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["code"].as_i64(), Some(0), "{body}");
        assert_eq!(body["message"], "", "{body}");
        let data = body["data"].clone();
        assert_eq!(as_text(&data["id"]), pushed.pushid, "{body}");
        assert_eq!(data["title"], "查询", "{body}");
        assert_eq!(data["desp"], "read me back", "{body}");
        let state = data["status"].as_str().unwrap_or_default().to_owned();
        assert!(
            ["queued", "delivered", "failed"].contains(&state.as_str()),
            "{body}"
        );
        if state == "delivered" {
            break data;
        }
        assert_eq!(state, "queued", "{body}");
        assert!(Instant::now() < deadline, "never delivered: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(data["status"], "delivered");
}

#[tokio::test]
async fn serverchan_push_with_a_wrong_readkey_or_id_is_400_and_reveals_nothing() {
    let (app, _user, token) = app_and_member().await;
    let first = sc_ok(
        app.http
            .get(app.url(&format!("/{token}.send")))
            .query(&[("title", "secret title"), ("desp", "secret desp")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    let second = sc_ok(
        app.http
            .get(app.url(&format!("/{token}.send")))
            .query(&[("title", "other"), ("desp", "other desp")])
            .send()
            .await
            .unwrap(),
    )
    .await;

    let cases: Vec<Vec<(&str, String)>> = vec![
        // Another message's readkey.
        vec![
            ("id", first.pushid.clone()),
            ("readkey", second.readkey.clone()),
        ],
        vec![
            ("id", first.pushid.clone()),
            ("readkey", "wrong".to_owned()),
        ],
        vec![
            ("id", first.pushid.clone()),
            ("readkey", format!("{}x", first.readkey)),
        ],
        vec![("id", first.pushid.clone()), ("readkey", String::new())],
        vec![("id", first.pushid.clone())],
        vec![
            ("id", "no-such-message".to_owned()),
            ("readkey", first.readkey.clone()),
        ],
        vec![("readkey", first.readkey.clone())],
    ];
    for query in cases {
        let resp = app
            .http
            .get(app.url("/push"))
            .query(&query)
            .send()
            .await
            .unwrap();
        let body = sc_err(resp).await;
        let text = body.to_string();
        assert!(
            !text.contains("secret title") && !text.contains("secret desp"),
            "{query:?} must not reveal the message: {body}"
        );
    }
}

#[tokio::test]
async fn serverchan_old_token_after_rotate_is_400() {
    let app = spawn_app().await;
    let user = userid("rotating");
    let old = app.get_token(&user).await;
    let new = app.rotate(&user).await;
    assert_ne!(old, new);
    sc_err(get(&app, &format!("/{old}.send?title=old")).await).await;
    sc_err(get(&app, &format!("/send/{old}.send?title=old")).await).await;
    assert_eq!(app.mock.send_calls(), 0);

    sc_ok(get(&app, &format!("/{new}.send?title=new&desp=token")).await).await;
    assert_eq!(the_only_message(&app, &user, &new).await, "new\n\ntoken");
}

// ==========================================================================================
// Bark
// ==========================================================================================

#[tokio::test]
async fn bark_ping_is_pong() {
    let app = spawn_app().await;
    let (status, body) = json_of(get(&app, "/ping").await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"].as_i64(), Some(200), "{body}");
    assert_eq!(body["message"], "pong", "{body}");
    assert_timestamp(&body);
}

#[tokio::test]
async fn bark_get_body_only() {
    let (app, user, token) = app_and_member().await;
    let body = "服务器 重启 完成 / ok";
    bark_ok(get(&app, &format!("/{token}/{}", enc(body))).await).await;
    assert_eq!(the_only_message(&app, &user, &token).await, body);
}

#[tokio::test]
async fn bark_get_title_and_body_are_percent_decoded() {
    let (app, user, token) = app_and_member().await;
    let title = "告警 🚨 a/b";
    let body = "磁盘 /dev/sda1 使用率 93%";
    bark_ok(get(&app, &format!("/{token}/{}/{}", enc(title), enc(body))).await).await;
    assert_eq!(
        the_only_message(&app, &user, &token).await,
        format!("{title}\n\n{body}")
    );
}

#[tokio::test]
async fn bark_get_title_subtitle_body() {
    let (app, user, token) = app_and_member().await;
    let path = format!(
        "/{token}/{}/{}/{}",
        enc("标题"),
        enc("副标题 sub"),
        enc("正文 body")
    );
    bark_ok(get(&app, &path).await).await;
    let text = the_only_message(&app, &user, &token).await;
    let content = text
        .strip_prefix("标题\n\n")
        .unwrap_or_else(|| panic!("title first: {text:?}"));
    let sub = content
        .find("副标题 sub")
        .unwrap_or_else(|| panic!("subtitle in the content: {text:?}"));
    let body = content
        .find("正文 body")
        .unwrap_or_else(|| panic!("body in the content: {text:?}"));
    assert!(sub < body, "subtitle before the body: {text:?}");
}

#[tokio::test]
async fn bark_query_params_are_accepted_and_url_is_kept() {
    let (app, user, token) = app_and_member().await;
    let link = "https://example.com/run/42?a=1&b=2";
    let resp = app
        .http
        .get(app.url(&format!("/{token}/{}/{}", enc("部署"), enc("完成"))))
        .query(&[
            ("url", link),
            ("group", "ci"),
            ("level", "active"),
            ("sound", "minuet"),
            ("icon", "https://example.com/icon.png"),
        ])
        .send()
        .await
        .unwrap();
    bark_ok(resp).await;
    // The link makes a card that opens it.
    let card = the_only_card(&app, &user, &token).await;
    assert_eq!(card.parts(), ("部署", "完成", link));
}

#[tokio::test]
async fn bark_post_path_with_form_params() {
    let (app, user, token) = app_and_member().await;
    let link = "https://example.com/x";
    let resp = app
        .http
        .post(app.url(&format!("/{token}/{}/{}", enc("表单"), enc("正文"))))
        .form(&[("url", link), ("group", "g"), ("sound", "bell")])
        .send()
        .await
        .unwrap();
    bark_ok(resp).await;
    let card = the_only_card(&app, &user, &token).await;
    assert_eq!(card.parts(), ("表单", "正文", link));
}

#[tokio::test]
async fn bark_post_push_json() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .post(app.url("/push"))
        .json(&json!({
            "device_key": token,
            "title": "JSON 推送",
            "subtitle": "子标题",
            "body": "正文内容",
            "url": "https://example.com/detail",
            "group": "ops",
            "sound": "bell",
        }))
        .send()
        .await
        .unwrap();
    bark_ok(resp).await;
    let card = the_only_card(&app, &user, &token).await;
    assert_eq!(card.title, "JSON 推送");
    assert_eq!(
        card.description, "子标题\n正文内容",
        "subtitle before the body"
    );
    assert_eq!(card.url, "https://example.com/detail");
}

#[tokio::test]
async fn bark_post_push_json_body_only_is_exact() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .post(app.url("/push"))
        .json(&json!({"device_key": token, "title": "标题", "body": "只有正文"}))
        .send()
        .await
        .unwrap();
    bark_ok(resp).await;
    assert_eq!(
        the_only_message(&app, &user, &token).await,
        "标题\n\n只有正文"
    );
}

#[tokio::test]
async fn bark_push_uses_markdown_when_body_is_absent() {
    let (app, user, token) = app_and_member().await;
    let markdown = "**粗体** and `code`";
    let resp = app
        .http
        .post(app.url("/push"))
        .json(&json!({"device_key": token, "title": "MD", "markdown": markdown}))
        .send()
        .await
        .unwrap();
    bark_ok(resp).await;
    // Markdown, made readable for a member who reads plain text.
    assert_eq!(
        the_only_message(&app, &user, &token).await,
        "MD\n\n粗体 and code"
    );
}

#[tokio::test]
async fn bark_push_device_keys_sends_one_message_per_key() {
    let app = spawn_app().await;
    let alice = userid("alice");
    let bob = userid("bob");
    let alice_token = app.get_token(&alice).await;
    let bob_token = app.get_token(&bob).await;
    let resp = app
        .http
        .post(app.url("/push"))
        .json(&json!({
            "device_keys": [alice_token, bob_token],
            "title": "群发",
            "body": "to both",
        }))
        .send()
        .await
        .unwrap();
    bark_ok(resp).await;
    app.mock.wait_for_sent(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = app.mock.sent();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    let mut to: Vec<_> = sent.iter().map(|s| s.touser.clone()).collect();
    to.sort();
    let mut expected = vec![alice.clone(), bob.clone()];
    expected.sort();
    assert_eq!(to, expected, "one message for each key: {sent:#?}");
    for s in &sent {
        assert_eq!(s.content, "群发\n\nto both", "{sent:#?}");
    }
    assert_eq!(messages_of(&app, &alice_token).await.len(), 1);
    assert_eq!(messages_of(&app, &bob_token).await.len(), 1);
}

/// A body (or markdown) that shows nothing is refused on every Bark form, and nothing is
/// sent; real text next to invisible characters still is.
#[tokio::test]
async fn bark_text_that_shows_nothing_is_refused() {
    let (app, user, token) = app_and_member().await;
    for blank in crate::send::BLANK_TEXTS {
        let blank = *blank;
        bark_err(get(&app, &format!("/{token}/{}", enc(blank))).await).await;
        bark_err(get(&app, &format!("/{token}/{}/{}", enc(blank), enc(blank))).await).await;
        for body in [
            json!({"device_key": token, "title": blank, "body": blank}),
            json!({"device_key": token, "markdown": blank}),
            json!({"device_keys": [token], "title": "t", "body": blank}),
        ] {
            let resp = app.http.post(app.url("/push")).json(&body).send().await;
            bark_err(resp.unwrap()).await;
        }
    }
    assert_nothing_sent(&app, &token).await;
    bark_ok(
        get(
            &app,
            &format!("/{token}/{}/{}", enc("\u{3164}"), enc("\u{200B}ok")),
        )
        .await,
    )
    .await;
    assert_eq!(the_only_message(&app, &user, &token).await, "\u{200B}ok");
}

/// Several keys are all or nothing: one unknown key (first or last) is a 400 and nothing is
/// stored or delivered for the good ones, so a client that retries does not deliver twice.
#[tokio::test]
async fn bark_push_device_keys_with_an_unknown_one_sends_nothing() {
    let app = spawn_app().await;
    let good = app.get_token(&userid("barkgood")).await;
    let rotated_user = userid("barkold");
    let old = app.get_token(&rotated_user).await;
    let current = app.rotate(&rotated_user).await;
    for keys in [
        json!([good, "A".repeat(32)]),
        json!(["A".repeat(32), good]),
        json!([good, "not a token"]),
        json!([good, old]),
    ] {
        let resp = app
            .http
            .post(app.url("/push"))
            .json(&json!({"device_keys": keys, "title": "t", "body": "b"}))
            .send()
            .await
            .unwrap();
        let err = bark_err(resp).await;
        assert!(
            err["message"].as_str().unwrap().contains("device key"),
            "{err}"
        );
    }
    assert_nothing_sent(&app, &good).await;
    assert!(messages_of(&app, &current).await.is_empty());
}

/// A key listed twice (or as both device_key and in device_keys) gets one message.
#[tokio::test]
async fn bark_push_a_key_given_twice_gets_one_message() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .post(app.url("/push"))
        .json(&json!({
            "device_keys": [token, format!(" {token}"), token],
            "device_key": token,
            "body": "once",
        }))
        .send()
        .await
        .unwrap();
    bark_ok(resp).await;
    assert_eq!(the_only_message(&app, &user, &token).await, "once");
}

#[tokio::test]
async fn bark_critical_level_still_carries_title_and_body() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .http
        .get(app.url(&format!("/{token}/{}/{}", enc("紧急"), enc("机房断电"))))
        .query(&[("level", "critical")])
        .send()
        .await
        .unwrap();
    bark_ok(resp).await;
    let text = the_only_message(&app, &user, &token).await;
    assert!(
        text.contains("紧急") && text.contains("机房断电"),
        "{text:?}"
    );
    let title_at = text.find("紧急").unwrap();
    let body_at = text.find("机房断电").unwrap();
    assert!(title_at < body_at, "{text:?}");
}

#[tokio::test]
async fn bark_push_json_levels_still_carry_title_and_body() {
    let (app, user, token) = app_and_member().await;
    for (i, level) in ["critical", "timeSensitive"].into_iter().enumerate() {
        let resp = app
            .http
            .post(app.url("/push"))
            .json(&json!({
                "device_key": token,
                "title": format!("T{i}"),
                "body": format!("正文{i}"),
                "level": level,
            }))
            .send()
            .await
            .unwrap();
        bark_ok(resp).await;
        let sent = app.mock.wait_for_sent(i + 1, WAIT).await;
        let text = &sent[i].content;
        assert_eq!(sent[i].touser, user);
        assert!(
            text.contains(&format!("T{i}")) && text.contains(&format!("正文{i}")),
            "{level}: {text:?}"
        );
    }
    assert_eq!(messages_of(&app, &token).await.len(), 2);
}

#[tokio::test]
async fn bark_push_errors_are_400() {
    let (app, _user, token) = app_and_member().await;
    let post = |body: Value| app.http.post(app.url("/push")).json(&body).send();
    // No device key.
    bark_err(post(json!({"title": "t", "body": "b"})).await.unwrap()).await;
    bark_err(post(json!({"device_key": "", "body": "b"})).await.unwrap()).await;
    // No body (nor markdown).
    bark_err(
        post(json!({"device_key": token, "title": "t"}))
            .await
            .unwrap(),
    )
    .await;
    // Unknown device key.
    bark_err(
        post(json!({"device_key": "A".repeat(32), "body": "b"}))
            .await
            .unwrap(),
    )
    .await;
    assert_nothing_sent(&app, &token).await;
}

#[tokio::test]
async fn bark_path_with_an_unknown_or_rotated_key_sends_nothing() {
    let app = spawn_app().await;
    let user = userid("barkrot");
    let old = app.get_token(&user).await;
    let new = app.rotate(&user).await;
    for path in [
        format!("/{old}/body"),
        format!("/{old}/title/body"),
        format!("/{}/title/body", "A".repeat(32)),
    ] {
        let resp = get(&app, &path).await;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        // Bark's 400, or the 404 of a path that is not a token: never accepted.
        assert!(
            status == 400 || status == 404,
            "GET {path} must be refused: {status} {text}"
        );
        if status == 400 {
            let body: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(body["code"].as_i64(), Some(400), "{body}");
        }
    }
    assert_nothing_sent(&app, &new).await;
}

// ==========================================================================================
// routing
// ==========================================================================================

#[tokio::test]
async fn native_routes_are_not_shadowed() {
    let (app, user, token) = app_and_member().await;

    let (status, health) = json_of(get(&app, "/healthz").await).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["storage"], engine().name(), "{health}");
    let (status, index) = json_of(get(&app, "/").await).await;
    assert_eq!(status, 200);
    assert_eq!(index["name"], "pushbot", "{index}");

    // The callback still verifies URLs (two segments, like a Bark path).
    let resp = app.verify_url("compat-echo").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "compat-echo");

    // Native /send and its native errors.
    let id = app.send_ok(&token, "native", "send").await;
    assert_error(app.send_get(&[("title", "t")]).await, 401, "unauthorized").await;
    assert_error(app.messages(&[]).await, 401, "unauthorized").await;

    // /messages/{id} has two segments, like a Bark path; it is still the native status.
    let status = app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(status["id"], id.as_str(), "{status}");
    let resp = get(&app, &format!("/messages/{id}")).await;
    assert_error(resp, 401, "unauthorized").await;

    // A message sent through a compatibility route is listed like any other.
    sc_ok(get(&app, &format!("/{token}.send?title=compat")).await).await;
    app.mock.wait_for_sent(2, WAIT).await;
    let listed = messages_of(&app, &token).await;
    assert_eq!(listed.len(), 2, "{listed:#?}");
    assert_eq!(listed[0]["title"], "compat", "{listed:#?}");
    assert_eq!(listed[1]["id"], id.as_str(), "{listed:#?}");

    let sent = app.mock.sent();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert!(sent.iter().all(|s| s.touser == user));
}

#[tokio::test]
async fn paths_that_are_not_tokens_are_404_and_send_nothing() {
    let (app, _user, token) = app_and_member().await;
    for path in [
        "/hooks/x/y",
        "/favicon.ico",
        "/robots.txt",
        "/abc/def",
        "/abc/def/ghi",
        "/abc/def/ghi/jkl",
        "/wp-admin/setup.php",
        // Native prefixes with extra segments are not Bark paths either.
        "/send/abc",
        "/messages/x/y",
        "/wecom/callback/x",
        "/healthz/x/y",
    ] {
        let resp = get(&app, path).await;
        assert_eq!(resp.status(), 404, "GET {path}");
        let resp = app
            .http
            .post(app.url(path))
            .form(&[("title", "t"), ("body", "b")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "POST {path}");
    }
    assert_nothing_sent(&app, &token).await;
}

/// The real binary logging at debug level, for tests that read its whole log.
pub(crate) struct DebugBinary {
    pub mock: MockWeCom,
    pub bin: BinApp,
    /// Keeps the config and database alive.
    pub setup: BinSetup,
}

pub(crate) async fn debug_binary() -> DebugBinary {
    let mock = MockWeCom::start().await;
    let setup = bin_setup(&test_settings(), &mock.base_url);
    let bin = spawn_binary(&setup.config_path, setup.port, &[("RUST_LOG", "debug")]).await;
    DebugBinary { mock, bin, setup }
}

// ==========================================================================================
// logging
// ==========================================================================================

/// Tokens in URL paths (ServerChan and Bark) never reach the log, even at debug level and
/// for refused requests.
#[tokio::test]
async fn tokens_in_url_paths_are_never_logged() {
    let DebugBinary {
        mock,
        mut bin,
        setup: _setup,
    } = debug_binary().await;
    let user = userid("pathlog");
    let old = bin.get_token(&user).await;
    let token = bin.rotate(&user).await;

    let pushed = sc_ok(get(&bin, &format!("/{token}.send?title=sc&desp=path")).await).await;
    bin.wait_for_status(&pushed.pushid, &token, "delivered", WAIT)
        .await;
    let pushed = sc_ok(get(&bin, &format!("/send/{token}.send?title=sc3")).await).await;
    bin.wait_for_status(&pushed.pushid, &token, "delivered", WAIT)
        .await;
    bark_ok(get(&bin, &format!("/{token}/title/body")).await).await;
    bark_ok(get(&bin, &format!("/{token}/{}", enc("only body"))).await).await;
    // Refused ones too: a rotated token (ServerChan and Bark) and a missing title.
    sc_err(get(&bin, &format!("/{old}.send?title=old")).await).await;
    sc_err(get(&bin, &format!("/{token}.send?desp=no-title")).await).await;
    let resp = get(&bin, &format!("/{old}/title/body")).await;
    assert!(resp.status().is_client_error(), "{}", resp.status());
    mock.wait_for_sent(4, WAIT).await;
    // Let the delivery of the last ones be logged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    bin.kill9();

    let log = std::fs::read_to_string(&bin.log_path).unwrap();
    assert!(log.contains("DEBUG"), "debug logging was on: {log}");
    for secret in [&old, &token] {
        assert_not_logged(&log, secret);
    }
}

/// Neither the token nor any long piece of it (16 characters) is in the log.
pub(crate) fn assert_not_logged(log: &str, token: &str) {
    assert!(!log.contains(token), "log leaks {token:?}:\n{log}");
    for i in 0..=token.len() - 16 {
        let piece = &token[i..i + 16];
        assert!(
            !log.contains(piece),
            "log leaks part of {token:?} ({piece:?}):\n{log}"
        );
    }
}

/// A client that percent-encodes characters of the token still keeps it out of the log
/// (whether or not the decoded token is accepted).
#[tokio::test]
async fn a_percent_encoded_token_in_the_path_is_not_logged_either() {
    let DebugBinary {
        mock,
        mut bin,
        setup: _setup,
    } = debug_binary().await;
    let user = userid("enclog");
    let token = bin.get_token(&user).await;
    // Every character percent-encoded, or just the first one.
    let encoded: String = token.bytes().map(|b| format!("%{b:02X}")).collect();
    let first = format!("%{:02X}{}", token.as_bytes()[0], &token[1..]);

    let sc = get(&bin, &format!("/{encoded}.send?title=enc&desp=sc")).await;
    let sc_status = sc.status().as_u16();
    let bark = get(&bin, &format!("/{first}/enc/bark")).await;
    let bark_status = bark.status().as_u16();
    for status in [sc_status, bark_status] {
        assert!(
            status == 200 || status == 400 || status == 404,
            "accepted or refused, nothing else: {status}"
        );
    }
    let accepted = [sc_status, bark_status]
        .iter()
        .filter(|s| **s == 200)
        .count();
    if accepted > 0 {
        mock.wait_for_sent(accepted, WAIT).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    bin.kill9();

    let log = std::fs::read_to_string(&bin.log_path).unwrap();
    assert!(log.contains("DEBUG"), "debug logging was on: {log}");
    assert_not_logged(&log, &token);
    assert!(
        !log.contains(&encoded),
        "log leaks the encoded token:\n{log}"
    );
    eprintln!("percent-encoded token: ServerChan {sc_status}, Bark {bark_status}");
}
