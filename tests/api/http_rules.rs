//! HTTP-level rules: JSON for 405/414/431.

use reqwest::Method;
use reqwest::header::ALLOW;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

async fn app_and_member() -> (TestApp, String, String) {
    let app = spawn_app().await;
    let user = userid("rules");
    let token = app.get_token(&user).await;
    (app, user, token)
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
    let allow = resp.headers()[ALLOW].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
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
/// here because the README documents it.
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
