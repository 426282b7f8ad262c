//! Idempotent sends: a client that lost the answer to `/send` may post again with the
//! same `Idempotency-Key` (header, or `idempotency_key` in JSON, a form or the query) and
//! gets the first message back instead of a second one.

use serde_json::{Value, json};

use crate::helpers::*;

struct Member {
    user: String,
    token: String,
}

async fn member(app: &TestApp, prefix: &str) -> Member {
    let user = userid(prefix);
    let token = app.get_token(&user).await;
    Member { user, token }
}

/// `GET /send` with the key in the `Idempotency-Key` header.
async fn send_with_header(app: &TestApp, token: &str, title: &str, key: &str) -> reqwest::Response {
    app.http
        .get(app.url("/send"))
        .query(&[("token", token), ("title", title)])
        .header("Idempotency-Key", key)
        .send()
        .await
        .expect("GET /send with Idempotency-Key")
}

async fn json_body(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.expect("send body");
    assert_eq!(status, 200, "send must answer 200: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("send answers JSON ({e}): {text}"))
}

/// A first send with a key: accepted as new (not flagged duplicate); returns its id.
async fn first(resp: reqwest::Response) -> String {
    let body = json_body(resp).await;
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(body["status"], "queued", "{body}");
    assert_ne!(
        body.get("duplicate"),
        Some(&Value::Bool(true)),
        "a first send is not a duplicate: {body}"
    );
    body["id"].as_str().expect("id").to_owned()
}

/// A repeat: 200 with the first message's id, its current status and `duplicate: true`.
async fn repeat_of(resp: reqwest::Response, id: &str) -> Value {
    let body = json_body(resp).await;
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(
        body["id"], id,
        "a repeat answers the first message's id: {body}"
    );
    assert_eq!(body["duplicate"], true, "{body}");
    body
}

/// How many messages the member has (all statuses).
async fn message_count(app: &TestApp, token: &str) -> usize {
    let resp = app.messages(&[("token", token), ("limit", "100")]).await;
    let body: Value = resp.json().await.expect("message list is JSON");
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("messages is a list: {body}"))
        .len()
}

fn sent_to(app: &TestApp, user: &str) -> usize {
    app.mock.sent().iter().filter(|s| s.touser == user).count()
}

#[tokio::test]
async fn a_repeated_key_answers_the_first_message_and_sends_nothing_more() {
    let app = spawn_app().await;
    let m = member(&app, "idem").await;
    let key = "backup-2026-11-25";

    let id = first(send_with_header(&app, &m.token, "Backup done", key).await).await;
    // A repeat while it is still queued (or already delivered) and once it is delivered.
    let early = repeat_of(
        send_with_header(&app, &m.token, "Backup done", key).await,
        &id,
    )
    .await;
    assert!(
        early["status"] == "queued" || early["status"] == "delivered",
        "{early}"
    );
    app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    let late = repeat_of(
        send_with_header(&app, &m.token, "Backup done", key).await,
        &id,
    )
    .await;
    assert_eq!(late["status"], "delivered", "the current status: {late}");

    assert_eq!(message_count(&app, &m.token).await, 1, "nothing new stored");
    assert_eq!(sent_to(&app, &m.user), 1, "WeCom got one message");
}

#[tokio::test]
async fn the_key_may_come_as_a_json_form_or_query_field() {
    let app = spawn_app().await;
    let m = member(&app, "idemf").await;

    // JSON body, Bearer token.
    let body = json!({"title": "json", "idempotency_key": "k-json"});
    let id = first(app.send_json(Some(&m.token), &body).await).await;
    repeat_of(app.send_json(Some(&m.token), &body).await, &id).await;

    // Form body.
    let form = [
        ("token", m.token.as_str()),
        ("title", "form"),
        ("idempotency_key", "k-form"),
    ];
    let id = first(app.send_form(&form).await).await;
    repeat_of(app.send_form(&form).await, &id).await;

    // Query string.
    let query = [
        ("token", m.token.as_str()),
        ("title", "query"),
        ("idempotency_key", "k-query"),
    ];
    let id = first(app.send_get(&query).await).await;
    repeat_of(app.send_get(&query).await, &id).await;

    // One key, wherever it is written: header first, then the JSON field.
    let id = first(send_with_header(&app, &m.token, "either", "k-both").await).await;
    let body = json!({"title": "either", "idempotency_key": "k-both"});
    repeat_of(app.send_json(Some(&m.token), &body).await, &id).await;

    assert_eq!(message_count(&app, &m.token).await, 4);
    app.mock.wait_for_sent(4, WAIT).await;
    // Later than the four firsts, so a stray fifth would have been sent before it.
    let fence = app.send_ok(&m.token, "fence", "").await;
    app.wait_for_status(&fence, &m.token, "delivered", WAIT)
        .await;
    assert_eq!(sent_to(&app, &m.user), 5, "{:#?}", app.mock.sent());
}

#[tokio::test]
async fn different_members_may_use_the_same_key() {
    let app = spawn_app().await;
    let a = member(&app, "idema").await;
    let b = member(&app, "idemb").await;
    let key = "nightly";

    let id_a = first(send_with_header(&app, &a.token, "a", key).await).await;
    let id_b = first(send_with_header(&app, &b.token, "b", key).await).await;
    assert_ne!(id_a, id_b);
    repeat_of(send_with_header(&app, &a.token, "a", key).await, &id_a).await;
    repeat_of(send_with_header(&app, &b.token, "b", key).await, &id_b).await;

    app.wait_for_status(&id_a, &a.token, "delivered", WAIT)
        .await;
    app.wait_for_status(&id_b, &b.token, "delivered", WAIT)
        .await;
    assert_eq!(message_count(&app, &a.token).await, 1);
    assert_eq!(message_count(&app, &b.token).await, 1);
    assert_eq!(sent_to(&app, &a.user), 1);
    assert_eq!(sent_to(&app, &b.user), 1);
}

#[tokio::test]
async fn a_key_longer_than_200_characters_is_refused() {
    let app = spawn_app().await;
    let m = member(&app, "idemlong").await;
    let too_long = "k".repeat(201);

    assert_error(
        send_with_header(&app, &m.token, "long", &too_long).await,
        400,
        "bad_request",
    )
    .await;
    let body = json!({"title": "long", "idempotency_key": too_long});
    assert_error(
        app.send_json(Some(&m.token), &body).await,
        400,
        "bad_request",
    )
    .await;
    assert_eq!(message_count(&app, &m.token).await, 0, "nothing stored");

    // 200 is fine.
    let longest = "k".repeat(200);
    let id = first(send_with_header(&app, &m.token, "longest", &longest).await).await;
    repeat_of(
        send_with_header(&app, &m.token, "longest", &longest).await,
        &id,
    )
    .await;
    assert_eq!(message_count(&app, &m.token).await, 1);
}

/// A client that timed out may retry while its first request is still being committed:
/// concurrent sends with one key meet in the database's unique index, not in a lookup
/// beforehand. Every one of them gets the same message; one is stored and sent.
#[tokio::test]
async fn concurrent_sends_with_one_key_store_and_send_one_message() {
    let app = spawn_app().await;
    let m = member(&app, "idemc").await;
    let key = "deploy-42";
    let answers = futures_util::future::join_all(
        (0..12).map(|_| send_with_header(&app, &m.token, "Deployed", key)),
    )
    .await;
    let mut ids = Vec::new();
    let mut firsts = 0;
    for resp in answers {
        let body = json_body(resp).await;
        if body.get("duplicate") != Some(&Value::Bool(true)) {
            firsts += 1;
        }
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(firsts, 1, "exactly one send is the first: {ids:?}");
    ids.dedup();
    assert_eq!(ids.len(), 1, "every send answers the same message: {ids:?}");
    app.wait_for_status(&ids[0], &m.token, "delivered", WAIT)
        .await;
    assert_eq!(message_count(&app, &m.token).await, 1, "one message stored");
    assert_eq!(sent_to(&app, &m.user), 1, "WeCom got one message");
}

// ---- a key reused for another message; every compat route (issue 26) ----

/// `409` naming the first message's id; returns the body.
async fn conflict_with(resp: reqwest::Response, first_id: &str) -> String {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(
        status, 409,
        "a key reused for another message is 409: {text}"
    );
    assert!(text.contains(first_id), "names the first message: {text}");
    text
}

#[tokio::test]
async fn a_key_reused_for_another_message_is_409_and_stores_nothing() {
    let app = spawn_app().await;
    let m = member(&app, "idemc").await;
    let key = "k-conflict";
    let id = first(send_with_header(&app, &m.token, "Backup done", key).await).await;
    let text = conflict_with(
        send_with_header(&app, &m.token, "Backup FAILED", key).await,
        &id,
    )
    .await;
    let body: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["error"], "conflict", "{body}");
    // Any part that makes the message counts: content, format, link, channel choice.
    for extra in [
        json!({"content": "more"}),
        json!({"format": "markdown"}),
        json!({"url": "https://example.com/x"}),
        json!({"channel": "wecom"}),
    ] {
        let mut body = json!({"title": "Backup done", "idempotency_key": key});
        if let (Some(map), Some(more)) = (body.as_object_mut(), extra.as_object()) {
            map.extend(more.clone());
        }
        conflict_with(app.send_json(Some(&m.token), &body).await, &id).await;
    }
    // The same request still answers the first message.
    repeat_of(
        send_with_header(&app, &m.token, "Backup done", key).await,
        &id,
    )
    .await;
    app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(message_count(&app, &m.token).await, 1, "nothing new stored");
    assert_eq!(sent_to(&app, &m.user), 1, "WeCom got one message");
}

/// Sends `make()` twice with one key, then once more with another body: one message,
/// one push, the same id answered, then 409.
async fn one_push_per_key(
    app: &TestApp,
    m: &Member,
    make: impl Fn(&str) -> reqwest::RequestBuilder,
    id_of: impl Fn(&Value) -> String,
) {
    let key = format!("k-{}", m.user);
    let send = |body: &str| {
        let request = make(body).header("Idempotency-Key", key.as_str());
        async move {
            let resp = request.send().await.expect("request");
            let status = resp.status();
            let text = resp.text().await.expect("body");
            (status.as_u16(), text)
        }
    };
    let (status, text) = send("the same").await;
    assert_eq!(status, 200, "{text}");
    let first_id = id_of(&serde_json::from_str(&text).expect("JSON"));
    let (status, again) = send("the same").await;
    assert_eq!(status, 200, "a repeat is answered as the first: {again}");
    assert_eq!(
        id_of(&serde_json::from_str(&again).expect("JSON")),
        first_id,
        "the first message's id: {again}"
    );
    let (status, other) = send("another").await;
    assert_eq!(status, 409, "another message with the key: {other}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(message_count(app, &m.token).await, 1, "one message stored");
    app.mock.wait_for_sent(1, WAIT).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(sent_to(app, &m.user), 1, "one push");
}

fn str_id(body: &Value) -> String {
    body["id"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body["id"].to_string())
}

#[tokio::test]
async fn serverchan_honours_the_idempotency_key() {
    let app = spawn_app().await;
    let m = member(&app, "idsc").await;
    let url = app.url(&format!("/{}.send", m.token));
    one_push_per_key(
        &app,
        &m,
        |desp| app.http.post(&url).form(&[("title", "t"), ("desp", desp)]),
        |body| {
            body["data"]["pushid"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        },
    )
    .await;
}

#[tokio::test]
async fn bark_path_and_push_honour_the_idempotency_key() {
    let app = spawn_app().await;
    let m = member(&app, "idbk").await;
    // Bark answers no id: the counts tell.
    let token = m.token.clone();
    one_push_per_key(
        &app,
        &m,
        |body| {
            app.http
                .get(app.url(&format!("/{token}/title/{}", body.replace(' ', "%20"))))
        },
        |_| String::new(),
    )
    .await;
    let m = member(&app, "idbp").await;
    let token = m.token.clone();
    let before = app.mock.sent().len();
    let key = "k-bark-push";
    for body in ["one", "one"] {
        let resp = app
            .http
            .post(app.url("/push"))
            .header("Idempotency-Key", key)
            .json(&json!({"device_key": token, "body": body}))
            .send()
            .await
            .expect("POST /push");
        assert_eq!(
            resp.status(),
            200,
            "{}",
            resp.text().await.unwrap_or_default()
        );
    }
    let resp = app
        .http
        .post(app.url("/push"))
        .header("Idempotency-Key", key)
        .json(&json!({"device_key": token, "body": "two"}))
        .send()
        .await
        .expect("POST /push");
    assert_eq!(resp.status(), 409);
    app.mock.wait_for_sent(before + 1, WAIT).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(sent_to(&app, &m.user), 1, "one push");
    assert_eq!(message_count(&app, &m.token).await, 1);
}

#[tokio::test]
async fn gotify_honours_the_idempotency_key() {
    let app = spawn_app().await;
    let m = member(&app, "idgo").await;
    let url = app.url("/message");
    one_push_per_key(
        &app,
        &m,
        |message| {
            app.http
                .post(&url)
                .header("X-Gotify-Key", m.token.as_str())
                .json(&json!({"title": "t", "message": message}))
        },
        |body| body["id"].to_string(),
    )
    .await;
}

#[tokio::test]
async fn ntfy_honours_the_idempotency_key() {
    let app = spawn_app().await;
    let m = member(&app, "idnt").await;
    let url = app.url(&format!("/{}", m.token));
    one_push_per_key(
        &app,
        &m,
        |message| app.http.post(&url).body(message.to_owned()),
        str_id,
    )
    .await;
    // The JSON publish too.
    let m = member(&app, "idnj").await;
    let url = app.url("/");
    let before = app.mock.sent().len();
    for _ in 0..2 {
        let resp = app
            .http
            .post(&url)
            .bearer_auth(&m.token)
            .header("Idempotency-Key", "k-json-publish")
            .json(&json!({"topic": "alerts", "message": "once"}))
            .send()
            .await
            .expect("POST /");
        assert_eq!(
            resp.status(),
            200,
            "{}",
            resp.text().await.unwrap_or_default()
        );
    }
    app.mock.wait_for_sent(before + 1, WAIT).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(sent_to(&app, &m.user), 1, "one push");
}
