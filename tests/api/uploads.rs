//! Images and files accepted with a message (issue 20): multipart `file` parts on `/send`,
//! `image_url`/`file_url` fetched once, their limits and refusals, and that a refused
//! request leaves nothing stored. What is stored is read from the database through a
//! connection of our own (`db.rs`).
//!
//! Every URL fetched here is on loopback: the servers are this test's own listeners, and
//! the refusals are judged by a listener that counts the connections it gets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures_util::StreamExt as _;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row as _;

use crate::db;
use crate::helpers::*;

const KIB: usize = 1024;

/// A PNG's signature and IHDR start, then filler up to `len` bytes.
fn png(len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    bytes.resize(len, 0x42);
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn file(name: &str, bytes: Vec<u8>) -> Part {
    Part::bytes(bytes).file_name(name.to_owned())
}

/// `POST /send` with `form`, the token as a Bearer header (or not at all).
async fn post_form(app: &TestApp, token: Option<&str>, form: Form) -> reqwest::Response {
    let mut req = app.http.post(app.url("/send")).multipart(form);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("POST /send (multipart)")
}

/// Blobs, their chunks and messages committed, counted from outside.
async fn stored(app: &TestApp) -> (i64, i64, i64) {
    let mut conn = db::connect(app.store_url()).await;
    let mut count = async |table: &str| -> i64 {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM {table}"
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("count {table}: {e}"))
        .get::<i64, _>("n")
    };
    let counts = (
        count("blobs").await,
        count("blob_chunks").await,
        count("messages").await,
    );
    db::close(conn).await;
    counts
}

async fn app_with(tweak: impl FnOnce(&mut pushbot::config::Settings)) -> (TestApp, String) {
    let app = spawn_app_with(tweak).await;
    let token = app.get_token(&userid("files")).await;
    (app, token)
}

fn attachments(message: &Value) -> Vec<Value> {
    message["attachments"]
        .as_array()
        .unwrap_or_else(|| panic!("the message lists attachments: {message}"))
        .clone()
}

#[tokio::test]
async fn one_and_two_files_are_accepted_and_listed_with_their_sniffed_types() {
    let (app, token) = app_with(|_| {}).await;

    let chart = png(3000);
    let form = Form::new()
        .text("title", "Disk usage")
        .part("file", file("chart.png", chart.clone()));
    let id = accepted_id(post_form(&app, Some(&token), form).await).await;
    let message = app.message_json(&id, &token).await;
    assert_eq!(message["title"], "Disk usage", "{message}");
    assert_eq!(
        attachments(&message),
        [json!({
            "filename": "chart.png",
            "kind": "image",
            "size": 3000,
            "mime": "image/png",
            "sha256": sha256_hex(&chart),
        })]
    );

    // Two files, no text at all, the token as a field before them: the title names them;
    // a .png name on text is a file, by its bytes.
    let text = b"not a picture, only text pretending\n".to_vec();
    let form = Form::new()
        .text("token", token.clone())
        .part("file", file("a.png", chart.clone()))
        .part("file", file("fake.png", text.clone()));
    let id = accepted_id(post_form(&app, None, form).await).await;
    let message = app.message_json(&id, &token).await;
    assert_eq!(message["title"], "📎 a.png, fake.png", "{message}");
    let listed = attachments(&message);
    assert_eq!(listed.len(), 2, "{message}");
    assert_eq!(listed[0]["filename"], "a.png");
    assert_eq!(listed[0]["kind"], "image");
    assert_eq!(listed[1]["filename"], "fake.png");
    assert_eq!(listed[1]["kind"], "file");
    assert_eq!(listed[1]["mime"], "application/octet-stream");
    assert_eq!(listed[1]["size"], text.len());
    assert_eq!(listed[1]["sha256"], sha256_hex(&text));
    assert_eq!(stored(&app).await.0, 3, "three blobs kept");

    // A message without files says nothing about attachments.
    let id = app.send_ok(&token, "plain", "text").await;
    let message = app.message_json(&id, &token).await;
    assert!(message.get("attachments").is_none(), "{message}");
}

#[tokio::test]
async fn wecoms_own_limits_are_checked_at_send() {
    let (app, token) = app_with(|_| {}).await;
    // WeCom takes no file of 5 bytes or fewer: refused now, not at delivery.
    let form = Form::new()
        .text("title", "tiny")
        .part("file", file("t.txt", b"abc".to_vec()));
    let body = assert_error(
        post_form(&app, Some(&token), form).await,
        400,
        "bad_request",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("t.txt"),
        "{body}"
    );
    assert_eq!(stored(&app).await, (0, 0, 0));
}

#[tokio::test]
async fn a_file_over_the_limit_is_413_and_nothing_is_kept() {
    // A quota that holds one 60 KiB file, not two.
    let (app, token) = app_with(|c| {
        c.media.max_bytes = 64 * KIB as u64;
        c.media.total_bytes = 100 * KIB as u64;
    })
    .await;
    // The first file is stored whole before the second one is found too large.
    let form = Form::new()
        .text("title", "two")
        .part("file", file("ok.bin", vec![7; 60 * KIB]))
        .part("file", file("big.bin", vec![8; 64 * KIB + 1]));
    let body = assert_error(
        post_form(&app, Some(&token), form).await,
        413,
        "payload_too_large",
    )
    .await;
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("big.bin")
            && message.contains("64 KiB")
            && message.contains("media.max_bytes"),
        "{message}"
    );
    assert_eq!(stored(&app).await, (0, 0, 0), "nothing stored");

    // The quota is free again: a 60 KiB file fits (it would not beside the first one).
    let form = Form::new()
        .text("title", "one")
        .part("file", file("ok.bin", vec![9; 60 * KIB]));
    accepted_id(post_form(&app, Some(&token), form).await).await;
    // And a second one does not: the quota is full (503, named).
    let form = Form::new()
        .text("title", "again")
        .part("file", file("more.bin", vec![10; 60 * KIB]));
    let body = assert_error(
        post_form(&app, Some(&token), form).await,
        503,
        "storage_full",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("media.total_bytes"),
        "{body}"
    );
    let (blobs, _, messages) = stored(&app).await;
    assert_eq!((blobs, messages), (1, 1));
}

#[tokio::test]
async fn more_files_than_allowed_is_413() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = files_server(Arc::clone(&hits)).await;
    let (app, token) = app_with(|c| {
        c.media.max_files = 2;
        allow_files_server(c);
    })
    .await;
    let mut form = Form::new().text("title", "three");
    for i in 0..3 {
        form = form.part(
            "file",
            file(&format!("f{i}.txt"), format!("file number {i}").into()),
        );
    }
    let body = assert_error(
        post_form(&app, Some(&token), form).await,
        413,
        "payload_too_large",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("media.max_files"),
        "{body}"
    );
    assert_eq!(stored(&app).await, (0, 0, 0), "the first two are gone too");
    // Two files and an image_url are three as well (refused before fetching anything).
    let form = Form::new()
        .text("image_url", format!("http://{server}/chart.png"))
        .part("file", file("a.txt", b"file a ....".to_vec()))
        .part("file", file("b.txt", b"file b ....".to_vec()));
    assert_error(
        post_form(&app, Some(&token), form).await,
        413,
        "payload_too_large",
    )
    .await;
    assert_eq!(stored(&app).await, (0, 0, 0));
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing fetched");
}

#[tokio::test]
async fn the_token_must_come_before_the_first_file() {
    let (app, token) = app_with(|_| {}).await;
    let form = Form::new()
        .text("title", "late token")
        .part("file", file("a.txt", b"some file text".to_vec()))
        .text("token", token.clone());
    let body = assert_error(post_form(&app, None, form).await, 401, "unauthorized").await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("before the first file"),
        "{body}"
    );
    // A wrong token is refused before the file is stored.
    let form = Form::new()
        .text("token", "Q".repeat(32))
        .part("file", file("a.txt", b"some file text".to_vec()));
    assert_error(post_form(&app, None, form).await, 401, "unauthorized").await;
    assert_eq!(stored(&app).await, (0, 0, 0));

    // In the query it is known before the body.
    let form = Form::new().part("file", file("a.txt", b"some file text".to_vec()));
    let resp = app
        .http
        .post(app.url("/send"))
        .query(&[("token", &token)])
        .multipart(form)
        .send()
        .await
        .unwrap();
    accepted_id(resp).await;
}

#[tokio::test]
async fn a_repeated_idempotency_key_keeps_no_second_copy() {
    let (app, token) = app_with(|_| {}).await;
    let send = |bytes: Vec<u8>| {
        let form = Form::new()
            .text("idempotency_key", "k-1")
            .part("file", file("a.png", bytes));
        post_form(&app, Some(&token), form)
    };
    let first = accepted_id(send(png(100)).await).await;
    let again: Value = send(png(100)).await.json().await.unwrap();
    assert_eq!(again["id"], first.as_str(), "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(stored(&app).await.0, 1, "the repeat's copy is removed");
    // Another file under the same key is another request.
    assert_error(send(png(101)).await, 409, "conflict").await;
    assert_eq!(stored(&app).await.0, 1);
}

/// A local HTTP server on `ip` (a loopback address), counting the requests it answers.
async fn serve(ip: &str, router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .expect("bind a local server");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// A listener on `ip`:`port` (0: any free port) that only counts the connections it gets
/// (and closes them); `None` when it cannot bind.
async fn counting(ip: &str, port: u16) -> Option<(Arc<AtomicUsize>, u16)> {
    let listener = tokio::net::TcpListener::bind((ip, port)).await.ok()?;
    let port = listener.local_addr().ok()?.port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    Some((count, port))
}

/// The files' server on 127.0.0.2, which `media.fetch_allow` allows: `/chart.png`,
/// `/page.html`, `/redirect?to=URL` (302); every request counted.
async fn files_server(hits: Arc<AtomicUsize>) -> SocketAddr {
    let counted = |hits: &Arc<AtomicUsize>| {
        let hits = Arc::clone(hits);
        move || {
            hits.fetch_add(1, Ordering::SeqCst);
        }
    };
    let (a, b, c) = (counted(&hits), counted(&hits), counted(&hits));
    let router = Router::new()
        .route(
            "/chart.png",
            get(move || async move {
                a();
                ([(header::CONTENT_TYPE, "image/png")], png(2048))
            }),
        )
        .route(
            "/page.html",
            get(move || async move {
                b();
                // Declared an image; it is not one.
                (
                    [(header::CONTENT_TYPE, "image/png")],
                    "<!doctype html><html><body>hello</body></html>",
                )
            }),
        )
        .route(
            "/redirect",
            get(
                move |axum::extract::Query(q): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >| async move {
                    c();
                    (
                        StatusCode::FOUND,
                        [(header::LOCATION, q.get("to").cloned().unwrap_or_default())],
                    )
                        .into_response()
                },
            ),
        );
    serve("127.0.0.2", router).await
}

fn allow_files_server(c: &mut pushbot::config::Settings) {
    c.media.fetch_allow = vec!["127.0.0.2/32".parse().expect("a network")];
}

#[tokio::test]
async fn image_url_and_file_url_are_fetched_once_and_stored() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = files_server(Arc::clone(&hits)).await;
    let (app, token) = app_with(allow_files_server).await;

    let image_url = format!("http://{server}/chart.png");
    let id = accepted_id(
        app.send_json(
            Some(&token),
            &json!({"title": "fetched", "image_url": image_url}),
        )
        .await,
    )
    .await;
    assert_eq!(hits.load(Ordering::SeqCst), 1, "fetched once");
    let message = app.message_json(&id, &token).await;
    assert_eq!(
        attachments(&message),
        [json!({
            "filename": "chart.png",
            "kind": "image",
            "size": 2048,
            "mime": "image/png",
            "sha256": sha256_hex(&png(2048)),
        })]
    );

    // In a form and the query alike; file_url takes anything, after image_url.
    let page_url = format!("http://{server}/page.html");
    let resp = app
        .send_form(&[
            ("token", &token),
            ("file_url", &page_url),
            ("image_url", &image_url),
        ])
        .await;
    let id = accepted_id(resp).await;
    let message = app.message_json(&id, &token).await;
    let listed = attachments(&message);
    assert_eq!(listed.len(), 2, "{message}");
    assert_eq!(listed[0]["filename"], "chart.png");
    assert_eq!(listed[1]["filename"], "page.html");
    assert_eq!(listed[1]["kind"], "file");
    assert_eq!(message["title"], "📎 chart.png, page.html");
    let resp = app
        .send_get(&[("token", &token), ("title", "q"), ("image_url", &image_url)])
        .await;
    accepted_id(resp).await;
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn image_url_that_is_not_an_image_is_415() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = files_server(Arc::clone(&hits)).await;
    let (app, token) = app_with(allow_files_server).await;
    let before = stored(&app).await;
    let resp = app
        .send_json(
            Some(&token),
            &json!({"title": "t", "image_url": format!("http://{server}/page.html")}),
        )
        .await;
    let body = assert_error(resp, 415, "unsupported_media_type").await;
    assert!(
        body["message"].as_str().unwrap().contains("image"),
        "{body}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(stored(&app).await, before, "nothing kept");
    // A multipart file stored before it goes too.
    let form = Form::new()
        .text("image_url", format!("http://{server}/page.html"))
        .part("file", file("a.txt", b"some file text".to_vec()));
    assert_error(
        post_form(&app, Some(&token), form).await,
        415,
        "unsupported_media_type",
    )
    .await;
    assert_eq!(stored(&app).await, before, "nothing kept");
}

#[tokio::test]
async fn fetching_refuses_loopback_in_every_spelling_without_connecting() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = files_server(Arc::clone(&hits)).await;
    // The target: a port on 127.0.0.1 (and the same on ::1) that only counts connections.
    let (v4, port) = counting("127.0.0.1", 0).await.expect("bind 127.0.0.1");
    let v6 = counting("::1", port).await.map(|(count, _)| count);
    let (app, token) = app_with(allow_files_server).await;

    let urls = [
        format!("http://127.1:{port}/x.png"),
        format!("http://0x7f000001:{port}/x.png"),
        format!("http://2130706433:{port}/x.png"),
        format!("http://[::1]:{port}/x.png"),
        format!("http://localhost:{port}/x.png"),
        format!("http://127.0.0.1:{port}/x.png"),
        // An allowed server redirecting to an address that is not allowed.
        format!("http://{server}/redirect?to=http://127.0.0.1:{port}/x.png"),
    ];
    for url in &urls {
        for field in ["image_url", "file_url"] {
            let resp = app
                .send_json(Some(&token), &json!({"title": "t", field: url}))
                .await;
            let body = assert_error(resp, 400, "bad_request").await;
            assert!(
                body["message"].as_str().unwrap().contains("refused"),
                "{url}: {body}"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(v4.load(Ordering::SeqCst), 0, "no connection to 127.0.0.1");
    if let Some(v6) = v6 {
        assert_eq!(v6.load(Ordering::SeqCst), 0, "no connection to ::1");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "only the redirects were asked"
    );
    assert_eq!(stored(&app).await, (0, 0, 0));
}

#[tokio::test]
async fn a_request_with_files_counts_once_against_the_send_rate() {
    let (app, token) = app_with(|c| {
        c.server.send_rate = SendRate {
            count: 1,
            per: Duration::from_secs(3600),
        };
    })
    .await;
    let form = || {
        Form::new()
            .text("title", "rated")
            .part("file", file("a.txt", b"some file text".to_vec()))
            .part("file", file("b.txt", b"more file text".to_vec()))
    };
    accepted_id(post_form(&app, Some(&token), form()).await).await;
    assert_error(
        post_form(&app, Some(&token), form()).await,
        429,
        "rate_limited",
    )
    .await;
    assert_eq!(
        stored(&app).await.0,
        2,
        "the refused request's files are not kept"
    );
}

// ------------------------------------------------------------------------------------------
// The drop-in routes: ntfy's attachments, Bark's `image`, gotify's `bigImageUrl`
// ------------------------------------------------------------------------------------------

/// An ntfy publish: `method` `path` with `headers` and `body`; answers status and JSON.
async fn ntfy(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = app.http.request(method, app.url(path)).body(body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("ntfy publish");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    (status, body)
}

#[tokio::test]
async fn ntfy_put_with_a_filename_streams_the_body_as_the_file() {
    let (app, token) = app_with(|_| {}).await;
    let chart = png(5000);
    let (status, body) = ntfy(
        &app,
        reqwest::Method::PUT,
        &format!("/{token}"),
        &[
            ("X-Filename", "chart.png"),
            ("X-Message", "disk usage"),
            ("X-Title", "Backup"),
        ],
        chart.clone(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "disk usage", "{body}");
    assert_eq!(
        body["attachment"],
        json!({"name": "chart.png", "type": "image/png", "size": 5000})
    );
    let id = body["id"].as_str().unwrap();
    let message = app.message_json(id, &token).await;
    assert_eq!(message["title"], "Backup");
    assert_eq!(
        attachments(&message),
        [json!({
            "filename": "chart.png",
            "kind": "image",
            "size": 5000,
            "mime": "image/png",
            "sha256": sha256_hex(&chart),
        })]
    );

    // Without a message: the file is the message (ntfy's words in the answer).
    let (status, body) = ntfy(
        &app,
        reqwest::Method::POST,
        &format!("/{token}?filename=log.txt"),
        &[],
        b"line one\nline two\n".to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "You received a file: log.txt", "{body}");
    let message = app.message_json(body["id"].as_str().unwrap(), &token).await;
    assert_eq!(message["title"], "📎 log.txt", "{message}");
    assert_eq!(attachments(&message)[0]["kind"], "file");

    // A body that is not UTF-8 is a file without being named one.
    let (status, body) = ntfy(
        &app,
        reqwest::Method::POST,
        &format!("/{token}"),
        &[("X-Message", "raw bytes")],
        vec![0xff, 0xfe, 0x00, 0x01, 0x02, 0x03, 0x04],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let message = app.message_json(body["id"].as_str().unwrap(), &token).await;
    assert_eq!(attachments(&message)[0]["filename"], "file-1.bin");
}

#[tokio::test]
async fn an_ntfy_file_may_be_larger_than_a_text_body_but_not_than_max_bytes() {
    let (app, token) = app_with(|c| {
        c.media.max_bytes = 3 * 1024 * KIB as u64;
    })
    .await;
    // 2 MiB: over the 1 MiB a text body may have, within media.max_bytes.
    let big: Vec<u8> = (0..2 * 1024 * KIB).map(|i| (i % 251) as u8).collect();
    let path = format!("/{token}/publish");
    let (status, body) = ntfy(
        &app,
        reqwest::Method::POST,
        &path,
        &[("Filename", "dump.bin")],
        big.clone(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let message = app.message_json(body["id"].as_str().unwrap(), &token).await;
    assert_eq!(attachments(&message)[0]["sha256"], sha256_hex(&big));
    // The same bytes as the message text are over the text limit, as before.
    let (status, _) = ntfy(
        &app,
        reqwest::Method::POST,
        &path,
        &[],
        vec![b'x'; 2 * 1024 * KIB],
    )
    .await;
    assert_eq!(status, 413);
    // A file over media.max_bytes is refused, and nothing of it is kept.
    let before = stored(&app).await;
    let (status, body) = ntfy(
        &app,
        reqwest::Method::PUT,
        &format!("/{token}"),
        &[("f", "huge.bin")],
        vec![1; 3 * 1024 * KIB + 1],
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["http"], 413, "ntfy's error shape: {body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("huge.bin"),
        "{body}"
    );
    assert_eq!(stored(&app).await, before);
}

#[tokio::test]
async fn ntfy_attach_bark_image_and_gotify_big_image_are_fetched() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = files_server(Arc::clone(&hits)).await;
    let (app, token) = app_with(allow_files_server).await;
    let chart_url = format!("http://{server}/chart.png");
    let page_url = format!("http://{server}/page.html");

    // ntfy X-Attach: the body is the message; Filename names the fetched file.
    let (status, body) = ntfy(
        &app,
        reqwest::Method::POST,
        &format!("/{token}"),
        &[("X-Attach", &chart_url), ("Filename", "graph.png")],
        b"see the graph".to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "see the graph");
    let message = app.message_json(body["id"].as_str().unwrap(), &token).await;
    let listed = attachments(&message);
    assert_eq!(listed[0]["filename"], "graph.png");
    assert_eq!(listed[0]["kind"], "image", "an image when it sniffs as one");
    // ntfy's JSON publish, anything attached as a file.
    let resp = app
        .http
        .post(app.url("/"))
        .bearer_auth(&token)
        .json(&json!({"topic": "alerts", "message": "m", "attach": page_url}))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    let message = app.message_json(body["id"].as_str().unwrap(), &token).await;
    assert_eq!(attachments(&message)[0]["kind"], "file", "{message}");

    // Bark's image.
    let resp = app
        .http
        .get(app.url(&format!("/{token}/title/body")))
        .query(&[("image", &chart_url)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let latest = crate::compat::messages_of(&app, &token).await;
    let message = app
        .message_json(latest[0]["id"].as_str().unwrap(), &token)
        .await;
    assert_eq!(attachments(&message)[0]["mime"], "image/png", "{message}");
    // Bark's image that is not one: Bark's error shape, 415, nothing sent.
    let resp = app
        .http
        .get(app.url(&format!("/{token}/title/body")))
        .query(&[("image", &page_url)])
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], 415, "{body}");

    // gotify's bigImageUrl.
    let resp = app
        .http
        .post(app.url("/message"))
        .query(&[("token", &token)])
        .json(&json!({
            "title": "g",
            "message": "with a picture",
            "extras": {"client::notification": {"bigImageUrl": chart_url}},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let latest = crate::compat::messages_of(&app, &token).await;
    let message = app
        .message_json(latest[0]["id"].as_str().unwrap(), &token)
        .await;
    assert_eq!(attachments(&message)[0]["kind"], "image", "{message}");
    assert_eq!(hits.load(Ordering::SeqCst), 5, "each URL fetched once");
    // Refused addresses are refused on the drop-in routes too.
    let (status, body) = ntfy(
        &app,
        reqwest::Method::POST,
        &format!("/{token}"),
        &[("X-Attach", "http://127.0.0.1:9/x.png")],
        b"m".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

// ------------------------------------------------------------------------------------------
// Hostile multipart bodies
// ------------------------------------------------------------------------------------------

mod hostile_multipart {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    use super::*;

    /// Where the token is.
    #[derive(Debug, Clone, Copy)]
    enum Auth {
        Query,
        Bearer,
        FirstField,
        LastField,
        Wrong,
        None,
    }

    #[derive(Debug, Clone)]
    struct PartSpec {
        name: Option<String>,
        filename: Option<String>,
        content_type: Option<&'static str>,
        body: Vec<u8>,
    }

    #[derive(Debug, Clone)]
    struct Case {
        auth: Auth,
        parts: Vec<PartSpec>,
        ending: &'static str,
        header: &'static str,
        /// Cut the body after this share of its bytes (per mille), if any.
        cut: Option<u16>,
    }

    const BOUNDARY: &str = "XyZzY";

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => "[a-z 你好\u{200b}\r\n-]{0,40}".prop_map(String::into_bytes),
            3 => (0usize..6000).prop_map(png),
            1 => prop::collection::vec(any::<u8>(), 0..3000),
            1 => Just(format!("a\r\n--{BOUNDARY}\r\nContent-Disposition: form-data").into_bytes()),
            1 => Just(b"\xff\xfe not utf-8".to_vec()),
            1 => Just(Vec::new()),
        ]
    }

    fn part() -> impl Strategy<Value = PartSpec> {
        let name = prop_oneof![
            8 => Just(Some("file".to_owned())),
            6 => prop::sample::select(vec!["title", "content", "desp", "_ts"])
                .prop_map(|n| Some(n.to_owned())),
            1 => prop::sample::select(vec![
                "channel", "format", "url", "image_url", "idempotency_key", "tilte", "",
                "fi\"le", "file\r\nX: y",
            ])
            .prop_map(|n| Some(n.to_owned())),
            1 => Just(None),
            1 => "\\PC{0,12}".prop_map(Some),
        ];
        let filename = prop_oneof![
            3 => Just(None),
            3 => Just(Some("chart.png".to_owned())),
            1 => Just(Some(String::new())),
            1 => Just(Some("../../etc/passwd".to_owned())),
            1 => Just(Some("a\u{202e}gnp.exe".to_owned())),
            1 => "\\PC{0,20}".prop_map(Some),
        ];
        let content_type = prop::sample::select(vec![
            None,
            Some("image/png"),
            Some("text/plain; charset=gbk"),
            Some("multipart/mixed; boundary=inner"),
        ]);
        (name, filename, content_type, body()).prop_map(|(name, filename, content_type, body)| {
            PartSpec {
                name,
                filename,
                content_type,
                body,
            }
        })
    }

    fn case() -> impl Strategy<Value = Case> {
        let auth = prop_oneof![
            3 => prop::sample::select(vec![Auth::Query, Auth::Bearer, Auth::FirstField]),
            1 => prop::sample::select(vec![Auth::LastField, Auth::Wrong, Auth::None]),
        ];
        let ending = prop_oneof![
            4 => Just("--XyZzY--\r\n"),
            1 => prop::sample::select(vec!["--XyZzY--", "", "--XyZzY", "--XyZzY\r\n", "--other--\r\n"]),
        ];
        let header = prop_oneof![
            4 => Just("multipart/form-data; boundary=XyZzY"),
            1 => prop::sample::select(vec![
                "multipart/form-data; boundary=\"XyZzY\"",
                "multipart/form-data",
                "multipart/form-data; boundary=other",
                "Multipart/Form-Data; boundary=XyZzY; charset=utf-8",
            ]),
        ];
        let cut = prop_oneof![6 => Just(None), 1 => (0u16..1000).prop_map(Some)];
        (
            auth,
            prop::collection::vec(part(), 0..5),
            ending,
            header,
            cut,
        )
            .prop_map(|(auth, parts, ending, header, cut)| Case {
                auth,
                parts,
                ending,
                header,
                cut,
            })
    }

    fn encode(case: &Case, token: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let field = |out: &mut Vec<u8>, name: &str, value: &[u8]| {
            out.extend_from_slice(
                format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                    .as_bytes(),
            );
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        };
        if matches!(case.auth, Auth::FirstField) {
            field(&mut out, "token", token.as_bytes());
        }
        for part in &case.parts {
            out.extend_from_slice(
                format!("--{BOUNDARY}\r\nContent-Disposition: form-data").as_bytes(),
            );
            if let Some(name) = &part.name {
                out.extend_from_slice(format!("; name=\"{name}\"").as_bytes());
            }
            if let Some(filename) = &part.filename {
                out.extend_from_slice(format!("; filename=\"{filename}\"").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            if let Some(content_type) = part.content_type {
                out.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&part.body);
            out.extend_from_slice(b"\r\n");
        }
        if matches!(case.auth, Auth::LastField) {
            field(&mut out, "token", token.as_bytes());
        }
        out.extend_from_slice(case.ending.as_bytes());
        if let Some(cut) = case.cut {
            out.truncate(out.len() * usize::from(cut) / 1000);
        }
        out
    }

    /// Messages, blobs no message names, and chunks of no blob.
    async fn state(app: &TestApp) -> (i64, i64, i64) {
        let mut conn = db::connect(app.store_url()).await;
        let mut one = async |sql: &'static str| -> i64 {
            sqlx::query(sql)
                .fetch_one(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .get::<i64, _>(0)
        };
        let counts = (
            one("SELECT CAST(COUNT(*) AS BIGINT) FROM messages").await,
            one("SELECT CAST(COUNT(*) AS BIGINT) FROM blobs \
                 WHERE NOT EXISTS (SELECT 1 FROM message_media m WHERE m.blob_id = blobs.id)")
            .await,
            one("SELECT CAST(COUNT(*) AS BIGINT) FROM blob_chunks \
                 WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.id = blob_chunks.blob_id)")
            .await,
        );
        db::close(conn).await;
        counts
    }

    async fn check(app: &TestApp, token: &str, case: &Case) -> Result<u16, TestCaseError> {
        let (messages, _, _) = state(app).await;
        let mut req = app
            .http
            .post(app.url("/send"))
            .header(reqwest::header::CONTENT_TYPE, case.header)
            .body(encode(case, token));
        match case.auth {
            Auth::Query => req = req.query(&[("token", token)]),
            Auth::Bearer => req = req.bearer_auth(token),
            Auth::Wrong => req = req.bearer_auth("W".repeat(32)),
            _ => {}
        }
        let resp = req
            .send()
            .await
            .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        prop_assert!(status < 500, "{status}: {text}");
        let (after, orphans, loose_chunks) = state(app).await;
        let accepted = status == 200;
        prop_assert_eq!(
            after - messages,
            i64::from(accepted),
            "{}: {}",
            status,
            text
        );
        prop_assert_eq!((orphans, loose_chunks), (0, 0), "{}: {}", status, text);
        Ok(status)
    }

    /// Any multipart body (well-formed or not: names, file names, types, bodies, endings,
    /// a cut anywhere, the token anywhere) is a message or a 4xx — never a 5xx — and a
    /// refused one leaves neither a message nor a blob nor a chunk behind.
    #[test]
    fn any_multipart_body_is_a_message_or_a_4xx_and_leaves_nothing() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (app, token) = runtime.block_on(app_with(|c| {
            c.media.max_bytes = 4 * KIB as u64;
            c.media.max_files = 2;
            c.server.send_rate = SendRate {
                count: 1_000_000,
                per: Duration::from_secs(1),
            };
        }));
        let seen = std::sync::Mutex::new(std::collections::BTreeMap::<u16, usize>::new());
        let mut runner = TestRunner::new(Config {
            cases: 256,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&case(), |case| {
            let status = runtime.block_on(check(&app, &token, &case))?;
            if let Ok(mut seen) = seen.lock() {
                *seen.entry(status).or_default() += 1;
            }
            Ok(())
        });
        runtime.block_on(async move { drop(app) });
        if let Err(err) = result {
            panic!("{err}");
        }
        let seen = seen.into_inner().unwrap_or_default();
        // The corpus reached past the parser: some were accepted, some refused.
        assert!(seen.get(&200).is_some_and(|n| *n > 0), "{seen:?}");
        assert!(seen.keys().any(|s| *s >= 400), "{seen:?}");
        println!("statuses: {seen:?}");
    }
}

/// `POST /send` with a multipart body that trickles in: a title, then a file of 40 pieces of
/// 16 KiB, one every 100 ms (4 s in all), then the closing boundary.
async fn post_slowly(app: &TestApp, token: &str) -> reqwest::Response {
    const HEAD: &str = "--Slow\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nslow\r\n\
                --Slow\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.bin\"\r\n\
                Content-Type: application/octet-stream\r\n\r\n";
    let pieces = futures_util::stream::iter(0..42).then(|i| async move {
        match i {
            0 => Ok::<_, std::io::Error>(bytes::Bytes::from_static(HEAD.as_bytes())),
            41 => Ok(bytes::Bytes::from_static(b"\r\n--Slow--\r\n")),
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(bytes::Bytes::from(vec![b'x'; 16 * KIB]))
            }
        }
    });
    app.http
        .post(app.url("/send"))
        .bearer_auth(token)
        .header("content-type", "multipart/form-data; boundary=Slow")
        .body(reqwest::Body::wrap_stream(pieces))
        .send()
        .await
        .expect("POST /send (slow multipart)")
}

/// A request with files may take `media.upload_timeout` (not the 30 seconds other requests
/// have); past it the answer is a JSON 408 naming the setting, and the half-received file
/// is removed.
#[tokio::test]
async fn an_upload_slower_than_media_upload_timeout_is_408_and_leaves_nothing() {
    // The upload takes 4 s: twice the limit.
    let (app, token) = app_with(|c| c.media.upload_timeout = Duration::from_secs(2)).await;
    let body = assert_error(post_slowly(&app, &token).await, 408, "request_timeout").await;
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("media.upload_timeout")),
        "{body}"
    );
    // The chunks received before the timeout are removed (a task of their own).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stored(&app).await != (0, 0, 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the half-received file is still stored: {:?}",
            stored(&app).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The same slow upload within the limit is accepted.
    let (app, token) = app_with(|c| c.media.upload_timeout = Duration::from_secs(20)).await;
    accepted_id(post_slowly(&app, &token).await).await;
}
