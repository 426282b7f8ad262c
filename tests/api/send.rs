//! `/send` in its three shapes, `/messages/{id}` and `/healthz`.

use serde_json::json;

use serde_json::Value;

use crate::helpers::*;

async fn app_and_member() -> (TestApp, String, String) {
    let app = spawn_app().await;
    let user = userid("sender");
    let token = app.get_token(&user).await;
    (app, user, token)
}

#[tokio::test]
async fn healthz_is_200() {
    let app = spawn_app().await;
    let resp = app.healthz().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn get_send_queues_and_delivers_title_and_content() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .send_get(&[
            ("token", &token),
            ("title", "Backup"),
            ("content", "done in 3s"),
        ])
        .await;
    let id = accepted_id(resp).await;

    let sent = app.mock.wait_for_sent(1, WAIT).await;
    assert_eq!(
        sent[0],
        Sent {
            touser: user.clone(),
            agentid: AGENT_ID,
            msgtype: "text".to_owned(),
            content: "Backup\n\ndone in 3s".to_owned(),
            card: None,
        }
    );
    let status = app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(status["ok"], true);
    assert_eq!(status["id"], id.as_str());
    assert!(status["attempts"].as_i64().unwrap() >= 1, "{status}");
    assert!(status["last_error"].is_null(), "{status}");
}

#[tokio::test]
async fn the_exact_json_body_sent_to_wecom() {
    let (app, user, token) = app_and_member().await;
    app.send_ok(&token, "T", "C").await;
    let calls = app.mock.wait_for_send_calls(1, WAIT).await;
    let body = &calls[0].body;
    // WeCom tolerates extra fields (`safe`, `enable_duplicate_check`…); these must be exact.
    assert_eq!(body["touser"], json!(user), "{body}");
    assert_eq!(body["msgtype"], "text", "{body}");
    assert_eq!(body["agentid"], json!(AGENT_ID), "{body}");
    assert_eq!(body["text"], json!({"content": "T\n\nC"}), "{body}");
    assert!(calls[0].access_token.is_some());
}

#[tokio::test]
async fn post_json_with_bearer_token() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .send_json(
            Some(&token),
            &json!({"title": "Deploy", "content": "v1.2.3 is live"}),
        )
        .await;
    let id = accepted_id(resp).await;
    let sent = app.mock.wait_for_sent(1, WAIT).await;
    assert_eq!(sent[0].touser, user);
    assert_eq!(sent[0].content, "Deploy\n\nv1.2.3 is live");
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
}

#[tokio::test]
async fn post_form_with_token_field() {
    let (app, user, token) = app_and_member().await;
    let resp = app
        .send_form(&[
            ("token", &token),
            ("title", "Form"),
            ("content", "a & b = c"),
        ])
        .await;
    let id = accepted_id(resp).await;
    let sent = app.mock.wait_for_sent(1, WAIT).await;
    assert_eq!(sent[0].touser, user);
    assert_eq!(sent[0].content, "Form\n\na & b = c");
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
}

#[tokio::test]
async fn desp_is_an_alias_of_content_in_every_shape() {
    let (app, _user, token) = app_and_member().await;
    accepted_id(
        app.send_get(&[("token", &token), ("title", "g"), ("desp", "get-desp")])
            .await,
    )
    .await;
    accepted_id(
        app.send_json(Some(&token), &json!({"title": "j", "desp": "json-desp"}))
            .await,
    )
    .await;
    accepted_id(
        app.send_form(&[("token", &token), ("title", "f"), ("desp", "form-desp")])
            .await,
    )
    .await;
    let sent = app.mock.wait_for_sent(3, WAIT).await;
    let mut contents: Vec<_> = sent.iter().map(|s| s.content.clone()).collect();
    contents.sort();
    assert_eq!(
        contents,
        ["f\n\nform-desp", "g\n\nget-desp", "j\n\njson-desp"]
    );
}

#[tokio::test]
async fn title_only_or_content_only_is_sent_alone() {
    let (app, _user, token) = app_and_member().await;
    accepted_id(
        app.send_get(&[("token", &token), ("title", "only title")])
            .await,
    )
    .await;
    let sent = app.mock.wait_for_sent(1, WAIT).await;
    assert_eq!(sent[0].content, "only title");

    accepted_id(
        app.send_json(Some(&token), &json!({"content": "only content"}))
            .await,
    )
    .await;
    let sent = app.mock.wait_for_sent(2, WAIT).await;
    assert_eq!(sent[1].content, "only content");
}

#[tokio::test]
async fn unicode_and_newlines_survive() {
    let (app, _user, token) = app_and_member().await;
    let content = "磁盘使用率 93% ⚠️\nline 2\n\tindented & <b>not html</b>";
    app.send_ok(&token, "告警 🚨", content).await;
    let sent = app.mock.wait_for_sent(1, WAIT).await;
    assert_eq!(sent[0].content, format!("告警 🚨\n\n{content}"));
}

#[tokio::test]
async fn neither_title_nor_content_is_400() {
    let (app, _user, token) = app_and_member().await;
    assert_error(app.send_get(&[("token", &token)]).await, 400, "bad_request").await;
    assert_error(
        app.send_get(&[("token", &token), ("title", ""), ("content", "")])
            .await,
        400,
        "bad_request",
    )
    .await;
    assert_error(
        app.send_json(Some(&token), &json!({})).await,
        400,
        "bad_request",
    )
    .await;
    assert_error(
        app.send_form(&[("token", &token)]).await,
        400,
        "bad_request",
    )
    .await;
    assert_eq!(app.mock.send_calls(), 0);
}

/// Text that shows nothing although it is neither empty nor whitespace: zero-width and other
/// format characters, direction marks, a BOM, the Hangul fillers, the blank Braille cell.
pub(crate) const BLANK_TEXTS: &[&str] = &[
    "\u{200B}",
    "\u{200B}\u{200B} \u{200B}",
    "\u{200F}\u{200E}",
    "\u{202E}\u{2066}",
    "\u{FEFF}",
    "\u{2060}",
    "\u{180E}",
    "\u{3164}",
    "\u{115F}\u{1160}\u{FFA0}",
    "\u{2800}",
    " \u{FEFF}\u{3164}\u{200B}\n\u{00AD}",
];

/// A title and content that show nothing are "nothing to send" in every form, and nothing
/// is stored or delivered.
#[tokio::test]
async fn text_that_shows_nothing_is_nothing_to_send() {
    let (app, _user, token) = app_and_member().await;
    for blank in BLANK_TEXTS {
        for resp in [
            app.send_get(&[("token", &token), ("title", blank), ("content", blank)])
                .await,
            app.send_get(&[("token", &token), ("content", blank)]).await,
            app.send_json(Some(&token), &json!({"title": blank, "desp": blank}))
                .await,
            app.send_form(&[("token", &token), ("title", blank)]).await,
        ] {
            let err = assert_error(resp, 400, "bad_request").await;
            let message = err["message"].as_str().unwrap();
            assert!(message.starts_with("nothing to send"), "{blank:?}: {err}");
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(app.mock.send_calls(), 0);
    assert!(crate::compat::messages_of(&app, &token).await.is_empty());
}

/// Invisible characters next to real text are kept as sent; a title that shows nothing is
/// left out.
#[tokio::test]
async fn real_text_with_invisible_characters_is_sent_as_it_is() {
    let (app, _user, token) = app_and_member().await;
    let content = "\u{200B}磁盘\u{200B}满了\u{FEFF}";
    app.send_ok(&token, "\u{200B}告警", content).await;
    let resp = app
        .send_json(
            Some(&token),
            &json!({"title": "\u{3164}", "content": "ok\u{200F}"}),
        )
        .await;
    accepted_id(resp).await;
    let sent = app.mock.wait_for_sent(2, WAIT).await;
    assert_eq!(sent[0].content, format!("\u{200B}告警\n\n{content}"));
    assert_eq!(sent[1].content, "ok\u{200F}");
}

#[tokio::test]
async fn missing_or_unknown_token_is_401() {
    let (app, _user, token) = app_and_member().await;
    assert_error(app.send_get(&[("title", "t")]).await, 401, "unauthorized").await;
    assert_error(
        app.send_json(None, &json!({"title": "t"})).await,
        401,
        "unauthorized",
    )
    .await;
    assert_error(app.send_form(&[("title", "t")]).await, 401, "unauthorized").await;

    let unknown = "A".repeat(32);
    assert_error(
        app.send_get(&[("token", &unknown), ("title", "t")]).await,
        401,
        "unauthorized",
    )
    .await;
    assert_error(
        app.send_json(Some(&unknown), &json!({"title": "t"})).await,
        401,
        "unauthorized",
    )
    .await;
    // A near miss of a real token is still unknown.
    let mut near = token.clone();
    let last = near.pop().unwrap();
    near.push(if last == 'a' { 'b' } else { 'a' });
    assert_error(
        app.send_get(&[("token", &near), ("title", "t")]).await,
        401,
        "unauthorized",
    )
    .await;
    assert_error(
        app.send_get(&[("token", ""), ("title", "t")]).await,
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(app.mock.send_calls(), 0);
}

#[tokio::test]
async fn malformed_json_is_400() {
    let (app, _user, token) = app_and_member().await;
    for body in ["{\"title\": ", "not json", "[1,2,3]", "{\"title\": 5}"] {
        let resp = app
            .http
            .post(app.url("/send"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_error(resp, 400, "bad_request").await;
    }
}

#[tokio::test]
async fn content_over_64_kib_is_413() {
    let (app, _user, token) = app_and_member().await;
    let big = "x".repeat(64 * 1024 + 1);
    assert_error(
        app.send_json(Some(&token), &json!({"title": "big", "content": big}))
            .await,
        413,
        "payload_too_large",
    )
    .await;
    assert_error(
        app.send_form(&[("token", &token), ("content", &big)]).await,
        413,
        "payload_too_large",
    )
    .await;
    // Exactly at the limit is fine.
    let at_limit = "y".repeat(64 * 1024);
    accepted_id(
        app.send_json(Some(&token), &json!({"content": at_limit}))
            .await,
    )
    .await;
}

#[tokio::test]
async fn body_over_1_mib_is_413() {
    let (app, _user, token) = app_and_member().await;
    let huge = "z".repeat(1024 * 1024 + 10);
    let resp = app
        .http
        .post(app.url("/send"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!("{{\"title\":\"t\",\"pad\":\"{huge}\"}}"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 413, "payload_too_large").await;
    assert_eq!(app.mock.send_calls(), 0);
}

#[tokio::test]
async fn message_status_requires_the_owners_token() {
    let app = spawn_app().await;
    let alice = app.get_token(&userid("alice")).await;
    let bob = app.get_token(&userid("bob")).await;
    let id = app.send_ok(&alice, "mine", "private").await;

    app.wait_for_status(&id, &alice, "delivered", WAIT).await;

    assert_error(app.message(&id, Some(&bob)).await, 404, "not_found").await;
    assert_error(app.message(&id, None).await, 401, "unauthorized").await;
    assert_error(
        app.message(&id, Some(&"Q".repeat(32))).await,
        401,
        "unauthorized",
    )
    .await;
    assert_error(
        app.message("no-such-message", Some(&alice)).await,
        404,
        "not_found",
    )
    .await;

    // The bearer form works too.
    let resp = app
        .http
        .get(app.url(&format!("/messages/{id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "delivered");
}

#[tokio::test]
async fn every_accepted_message_gets_its_own_id() {
    let (app, _user, token) = app_and_member().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.send_ok(&token, "n", &i.to_string()).await);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    let sent = app.mock.wait_for_sent(5, WAIT).await;
    let mut contents: Vec<_> = sent.iter().map(|s| s.content.clone()).collect();
    contents.sort();
    assert_eq!(contents, ["n\n\n0", "n\n\n1", "n\n\n2", "n\n\n3", "n\n\n4"]);
}

fn listed_ids(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_member_lists_their_messages_newest_first_and_can_filter_failures() {
    let app = spawn_app().await;
    let alice = app.get_token(&userid("alice")).await;
    let bob = app.get_token(&userid("bob")).await;
    let first = app.send_ok(&alice, "first", "x").await;
    app.wait_for_status(&first, &alice, "delivered", WAIT).await;
    app.mock
        .push_replies([SendReply::errcode(48002, "api forbidden")]);
    let second = app.send_ok(&alice, "second", "x").await;
    app.wait_for_status(&second, &alice, "failed", WAIT).await;
    let third = app.send_ok(&alice, "third", "x").await;
    app.wait_for_status(&third, &alice, "delivered", WAIT).await;
    app.send_ok(&bob, "bob's", "x").await;

    let resp = app.messages(&[("token", &alice)]).await;
    assert_eq!(resp.status(), 200);
    let page: Value = resp.json().await.unwrap();
    assert_eq!(
        listed_ids(&page),
        [third.clone(), second.clone(), first.clone()]
    );
    assert_eq!(page["messages"][1]["title"], "second");
    assert!(page["next_before"].is_null());

    let failed: Value = app
        .messages(&[("token", &alice), ("status", "failed")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed_ids(&failed), vec![second.clone()]);
    assert!(
        failed["messages"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("48002")
    );

    // Paging: two at a time.
    let page1: Value = app
        .messages(&[("token", &alice), ("limit", "2")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed_ids(&page1), [third, second.clone()]);
    assert_eq!(page1["next_before"], second.as_str());
    let page2: Value = app
        .messages(&[("token", &alice), ("limit", "2"), ("before", &second)])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed_ids(&page2), [first]);
    assert!(page2["next_before"].is_null());
}

#[tokio::test]
async fn listing_messages_validates_its_input() {
    let app = spawn_app().await;
    let alice = app.get_token(&userid("alice")).await;
    assert_error(app.messages(&[]).await, 401, "unauthorized").await;
    assert_error(
        app.messages(&[("token", &alice), ("status", "lost")]).await,
        400,
        "bad_request",
    )
    .await;
    assert_error(
        app.messages(&[("token", &alice), ("limit", "0")]).await,
        400,
        "bad_request",
    )
    .await;
    assert_error(
        app.messages(&[("token", &alice), ("limit", "many")]).await,
        400,
        "bad_request",
    )
    .await;
}

/// Issue 26: a mistyped or unsupported field is a 400 naming it (and the nearest known
/// field), in every form; nothing is stored or sent.
#[tokio::test]
async fn unknown_fields_are_refused_by_name_in_every_form() {
    let (app, _user, token) = app_and_member().await;
    let named = |body: &Value, field: &str, near: Option<&str>| {
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("\"{field}\"")), "{body}");
        if let Some(near) = near {
            assert!(
                message.contains(&format!("did you mean \"{near}\"")),
                "{body}"
            );
        }
    };
    let body = assert_error(
        app.send_json(Some(&token), &json!({"tilte": "lost", "content": "c"}))
            .await,
        400,
        "bad_request",
    )
    .await;
    named(&body, "tilte", Some("title"));
    let body = assert_error(
        app.send_json(Some(&token), &json!({"title": "t", "sleep": "1h"}))
            .await,
        400,
        "bad_request",
    )
    .await;
    named(&body, "sleep", None);
    let body = assert_error(
        app.send_form(&[("token", &token), ("title", "t"), ("priority", "high")])
            .await,
        400,
        "bad_request",
    )
    .await;
    named(&body, "priority", None);
    let body = assert_error(
        app.send_get(&[("token", &token), ("title", "t"), ("contnet", "c")])
            .await,
        400,
        "bad_request",
    )
    .await;
    named(&body, "contnet", Some("content"));
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nt\r\n\
                --XyZ\r\nContent-Disposition: form-data; name=\"chanel\"\r\n\r\nwecom\r\n\
                --XyZ--\r\n";
    let resp = app
        .http
        .post(app.url("/send"))
        .bearer_auth(&token)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(body)
        .send()
        .await
        .expect("multipart");
    let body = assert_error(resp, 400, "bad_request").await;
    named(&body, "chanel", Some("channel"));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(app.mock.send_calls(), 0, "nothing sent");
    let listed: Value = app
        .messages(&[("token", &token)])
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        listed["messages"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );

    // Cache-busters (`_…`) are no fields.
    let resp = app
        .send_get(&[("token", &token), ("title", "t"), ("_", "1699999999")])
        .await;
    accepted_id(resp).await;
}
