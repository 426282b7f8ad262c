//! HTTP-level rules: JSON for 405/414/431, HEAD /send without side effects, body types and
//! UTF-8 on /send, and the per-member send rate limit.

use std::time::Duration;

use reqwest::header::{ALLOW, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

async fn app_and_member() -> (TestApp, String, String) {
    let app = spawn_app().await;
    let user = userid("rules");
    let token = app.get_token(&user).await;
    (app, user, token)
}

/// The member's messages, newest first.
async fn messages_of(app: &TestApp, token: &str) -> Vec<Value> {
    let resp = app.messages(&[("token", token)]).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["messages"].as_array().cloned().unwrap_or_default()
}

/// Proves nothing else was delivered: sends one real message and checks it is the only
/// thing WeCom ever received.
async fn assert_only_this_reaches_wecom(app: &TestApp, token: &str) {
    app.send_ok(token, "real", "message").await;
    let sent = app.mock.wait_for_sent(1, WAIT).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].content, "real\n\nmessage");
    assert_eq!(messages_of(app, token).await.len(), 1);
}

#[tokio::test]
async fn head_send_is_405_and_creates_nothing() {
    let (app, _user, token) = app_and_member().await;
    let resp = app
        .http
        .head(app.url("/send"))
        .query(&[("token", token.as_str()), ("title", "preview")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()[ALLOW], "GET, POST");
    assert!(resp.bytes().await.unwrap().is_empty(), "HEAD has no body");
    assert!(messages_of(&app, &token).await.is_empty());
    assert_only_this_reaches_wecom(&app, &token).await;
}

#[tokio::test]
async fn other_methods_are_405_in_json_with_allow() {
    let app = spawn_app().await;
    let resp = app
        .http
        .request(Method::PUT, app.url("/send"))
        .body("title=x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()[ALLOW], "GET, POST");
    assert_error(resp, 405, "method_not_allowed").await;

    let resp = app.http.delete(app.url("/healthz")).send().await.unwrap();
    let allow = resp.headers()[ALLOW].to_str().unwrap().to_owned();
    assert!(allow.contains("GET"), "{allow}");
    assert_error(resp, 405, "method_not_allowed").await;

    let resp = app.http.post(app.url("/messages")).send().await.unwrap();
    assert_error(resp, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn a_long_uri_is_414_in_json() {
    let (app, _user, token) = app_and_member().await;
    let content = "a".repeat(9 * 1024);
    let resp = app
        .send_get(&[("token", &token), ("content", &content)])
        .await;
    let body = assert_error(resp, 414, "uri_too_long").await;
    assert!(body["message"].as_str().unwrap().contains("POST"), "{body}");
    // Just under the limit is fine.
    let content = "a".repeat(7 * 1024);
    accepted_id(
        app.send_get(&[("token", &token), ("content", &content)])
            .await,
    )
    .await;
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_431_in_json() {
    let app = spawn_app().await;
    let mut req = app.http.get(app.url("/healthz"));
    for i in 0..120 {
        req = req.header(format!("x-extra-{i}"), "1");
    }
    let resp = req.send().await.unwrap();
    assert_error(resp, 431, "headers_too_large").await;

    let resp = app
        .http
        .get(app.url("/healthz"))
        .header("x-big", "b".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_error(resp, 431, "headers_too_large").await;

    // Within the limits: answered normally.
    let resp = app
        .http
        .get(app.url("/healthz"))
        .header("x-big", "b".repeat(16 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Far beyond our limits hyper answers itself (status only, no JSON) and closes: pinned
/// here because docs/api.md documents it.
#[tokio::test]
async fn far_beyond_the_limits_hyper_answers_431_and_closes() {
    let app = spawn_app().await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    let request = format!(
        "GET /send?content={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    // The server may stop reading (and reset) before we finish writing.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 431"),
        "hyper's own limit answers 431: {response:?}"
    );
    app.healthz().await.unwrap();
}

/// No answer may be sniffed into HTML or script by a browser: every one says
/// `X-Content-Type-Options: nosniff` — JSON, pages, metrics, refusals and the errors the
/// accept loop answers before routing.
#[tokio::test]
async fn every_answer_says_nosniff() {
    let app = spawn_app_with(|c| c.server.metrics = true).await;
    let long = format!("/send?content={}", "a".repeat(9 * 1024));
    let bad_token = "x".repeat(32);
    let cases: Vec<(Method, String, u16)> = vec![
        (Method::GET, "/".into(), 200),
        (Method::GET, "/healthz".into(), 200),
        (Method::GET, "/metrics".into(), 200),
        (Method::GET, format!("/send?token={bad_token}&title=x"), 401),
        (Method::GET, format!("/{bad_token}.send?title=x"), 400),
        (Method::GET, "/no/such/endpoint/here".into(), 404),
        (Method::DELETE, "/healthz".into(), 405),
        (Method::PUT, "/send".into(), 405),
        (Method::GET, "/m/x".into(), 404),
        (Method::GET, "/m/x?k=y".into(), 404),
        (Method::GET, "/m/x/files/0?k=y".into(), 404),
        (Method::POST, "/m/x/files/0?k=y".into(), 405),
        (Method::GET, long, 414),
    ];
    for (method, path, status) in cases {
        let resp = app
            .http
            .request(method.clone(), app.url(&path))
            .send()
            .await
            .unwrap();
        let shown: String = path.chars().take(60).collect();
        assert_eq!(resp.status().as_u16(), status, "{method} {shown}");
        assert_eq!(
            resp.headers()
                .get("x-content-type-options")
                .map(|v| v.as_bytes()),
            Some(&b"nosniff"[..]),
            "{method} {shown}: {:?}",
            resp.headers()
        );
    }
    let mut req = app.http.get(app.url("/healthz"));
    for i in 0..120 {
        req = req.header(format!("x-extra-{i}"), "1");
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn plain_text_body_is_415_naming_the_accepted_types() {
    let (app, _user, token) = app_and_member().await;
    let resp = app
        .http
        .post(app.url("/send"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("disk full on /dev/sda1")
        .send()
        .await
        .unwrap();
    let body = assert_error(resp, 415, "unsupported_media_type").await;
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("application/json"), "{message}");
    assert!(
        message.contains("application/x-www-form-urlencoded"),
        "{message}"
    );

    // No Content-Type and a body starting with `{`: JSON, as curl users expect.
    let resp = app
        .http
        .post(app.url("/send"))
        .bearer_auth(&token)
        .body(r#"{"title":"sniffed"}"#)
        .send()
        .await
        .unwrap();
    accepted_id(resp).await;
}

#[tokio::test]
async fn invalid_utf8_is_400_in_query_form_and_json_and_stores_nothing() {
    let (app, _user, token) = app_and_member().await;

    let resp = app
        .http
        .get(format!(
            "{}?token={token}&title=bad%FFbyte",
            app.url("/send")
        ))
        .send()
        .await
        .unwrap();
    let body = assert_error(resp, 400, "bad_request").await;
    assert!(
        body["message"].as_str().unwrap().contains("UTF-8"),
        "{body}"
    );

    let resp = app
        .http
        .post(app.url("/send"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}&content=%C3%28"))
        .send()
        .await
        .unwrap();
    let body = assert_error(resp, 400, "bad_request").await;
    assert!(
        body["message"].as_str().unwrap().contains("UTF-8"),
        "{body}"
    );

    let mut json_bytes = br#"{"title":"bad "#.to_vec();
    json_bytes.push(0xff);
    json_bytes.extend_from_slice(br#""}"#);
    let resp = app
        .http
        .post(app.url("/send"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(json_bytes)
        .send()
        .await
        .unwrap();
    let body = assert_error(resp, 400, "bad_request").await;
    assert!(
        body["message"].as_str().unwrap().contains("UTF-8"),
        "{body}"
    );

    assert!(messages_of(&app, &token).await.is_empty());
    assert_only_this_reaches_wecom(&app, &token).await;
}

#[tokio::test]
async fn sends_over_the_rate_are_429_per_member_with_retry_after() {
    let app = spawn_app_with(|c| {
        c.server.send_rate = SendRate {
            count: 3,
            per: Duration::from_secs(3),
        }
    })
    .await;
    let alice = userid("alice");
    let token = app.get_token(&alice).await;
    for i in 0..3 {
        app.send_ok(&token, "burst", &i.to_string()).await;
    }
    let resp = app
        .send_json(Some(&token), &json!({"title": "one too many"}))
        .await;
    let retry_after: u64 = resp.headers()[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds");
    // One message refills every second.
    assert_eq!(retry_after, 1);
    let body = assert_error(resp, 429, "rate_limited").await;
    assert!(
        body["message"].as_str().unwrap().contains("3 per 3s"),
        "{body}"
    );

    // Rotating the token does not reset the budget: it belongs to the member.
    let rotated = app.rotate(&alice).await;
    let resp = app.send_get(&[("token", &rotated), ("title", "t")]).await;
    assert_error(resp, 429, "rate_limited").await;

    // Another member is unaffected.
    let bob = app.get_token(&userid("bob")).await;
    app.send_ok(&bob, "bob", "fine").await;

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    app.send_ok(&rotated, "after", "waiting").await;
    // Exactly the accepted ones were stored: 3 + 1 for alice.
    assert_eq!(messages_of(&app, &rotated).await.len(), 4);
}
