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
