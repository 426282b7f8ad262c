//! Sending with a group's token (issue 29): one request, one copy per member through that
//! member's own lane, limits and fallback; following the group message with its token;
//! membership taken at acceptance; mute and leave; idempotency per group token; every
//! compat route; a `kill -9` during fan-outs.
//!
//! WeCom is the mock, e-mail a real SMTP listener; what counts is what they received and
//! what the database holds, not what the gateway says about itself alone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Row as _;

use crate::db;
use crate::helpers::*;
use crate::smtp::SmtpSink;

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

struct Member {
    user: String,
    token: String,
}

async fn member(api: &Api, prefix: &str) -> Member {
    let user = userid(prefix);
    let token = api.get_token(&user).await;
    Member { user, token }
}

/// A group as the tests use it: its id, name and send token.
struct Group {
    id: String,
    name: String,
    token: String,
}

/// Makes group `name` with `members` (the first is the owner), in that join order, as
/// stored rows (the group commands are tested with the commands themselves).
async fn group(store_url: &str, name: &str, members: &[&str]) -> Group {
    let mut conn = db::connect(store_url).await;
    let id = format!("g-{}", userid("id"));
    let token = pushbot::token::generate().expose().to_owned();
    let now = db::now_ms();
    sqlx::query(
        "INSERT INTO groups (id, name, token, token_created_at, invite, invite_expires_at, \
         source, created_at) VALUES ($1, $2, $3, $4, NULL, NULL, 'chat', $4)",
    )
    .bind(&id)
    .bind(name)
    .bind(&token)
    .bind(now)
    .execute(&mut conn)
    .await
    .expect("insert a group");
    for (i, user) in members.iter().enumerate() {
        join(store_url, &id, user, i == 0, now + i as i64).await;
    }
    Group {
        id,
        name: name.to_owned(),
        token,
    }
}

async fn join(store_url: &str, group_id: &str, user: &str, owner: bool, at: i64) {
    let mut conn = db::connect(store_url).await;
    sqlx::query(
        "INSERT INTO group_members (group_id, userid, owner, joined_at, muted) \
         VALUES ($1, $2, $3, $4, 0)",
    )
    .bind(group_id)
    .bind(user)
    .bind(i64::from(owner))
    .bind(at)
    .execute(&mut conn)
    .await
    .expect("insert a group member");
}

async fn mute(store_url: &str, group_id: &str, user: &str) {
    let mut conn = db::connect(store_url).await;
    sqlx::query("UPDATE group_members SET muted = 1 WHERE group_id = $1 AND userid = $2")
        .bind(group_id)
        .bind(user)
        .execute(&mut conn)
        .await
        .expect("mute");
}

/// `POST /send` (JSON) with the group's token; asserts the answer of an accepted group
/// message for `recipients` members; returns its id.
async fn send_to_group(api: &Api, g: &Group, body: &Value, recipients: i64) -> String {
    let resp = api.send_json(Some(&g.token), body).await;
    let status = resp.status();
    let answer: Value = resp.json().await.expect("JSON answer");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["status"], "queued", "{answer}");
    assert_eq!(answer["recipients"], recipients, "{answer}");
    answer["id"].as_str().expect("an id").to_owned()
}

/// `GET /messages/{id}` with the group's token, until its status is `want`.
async fn wait_group_status(api: &Api, g: &Group, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = api.message_json(id, &g.token).await;
        if status["status"] == want {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "group message {id} never became {want}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `member → status` of a group message's recipients.
fn recipients(status: &Value) -> BTreeMap<String, String> {
    status["recipients"]
        .as_array()
        .unwrap_or_else(|| panic!("recipients is an array: {status}"))
        .iter()
        .map(|r| {
            (
                r["member"].as_str().unwrap_or_default().to_owned(),
                r["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn unthrottled(c: &mut Settings) {
    c.server.send_rate = pushbot::config::SendRate {
        count: 1_000_000,
        per: Duration::from_secs(1),
    };
}

/// Texts WeCom accepted, per member.
fn texts_by_member(mock: &MockWeCom) -> BTreeMap<String, Vec<String>> {
    let mut calls = mock.delivered_calls();
    calls.sort_by_key(|c| c.arrival);
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for call in calls {
        by.entry(call.touser().to_owned())
            .or_default()
            .push(call.text().to_owned());
    }
    by
}

// ------------------------------------------------------------------------------------------
// fan-out
// ------------------------------------------------------------------------------------------

/// One request to a group of three: one copy for each member at WeCom, the answer says
/// 3 recipients, the group token follows it to `delivered` member by member, and each
/// member's own listing shows the group's name.
#[tokio::test]
async fn a_group_message_reaches_every_member_once() {
    let app = spawn_app().await;
    let (a, b, c) = (
        member(&app, "fan").await,
        member(&app, "fan").await,
        member(&app, "fan").await,
    );
    let g = group(app.store_url(), "ops", &[&a.user, &b.user, &c.user]).await;
    let id = send_to_group(
        &app,
        &g,
        &json!({"title": "Deploy", "content": "v2 is live"}),
        3,
    )
    .await;
    let sent = app.mock.wait_for_sent(3, WAIT).await;
    let to: BTreeSet<&str> = sent.iter().map(|s| s.touser.as_str()).collect();
    assert_eq!(
        to,
        BTreeSet::from([a.user.as_str(), b.user.as_str(), c.user.as_str()])
    );
    assert!(sent.iter().all(|s| s.content == "Deploy\n\nv2 is live"));

    let status = wait_group_status(&app, &g, &id, "delivered").await;
    assert_eq!(status["group"], g.name.as_str(), "{status}");
    assert_eq!(status["id"], id.as_str(), "{status}");
    let list = status["recipients"].as_array().unwrap();
    let members: Vec<&str> = list.iter().map(|r| r["member"].as_str().unwrap()).collect();
    assert_eq!(members, [&a.user, &b.user, &c.user], "join order: {status}");
    for r in list {
        assert_eq!(r["status"], "delivered", "{status}");
        assert_eq!(r["channel"], "wecom", "{status}");
        assert!(r["delivered_at"].is_string(), "{status}");
        assert!(r["last_error"].is_null(), "{status}");
    }
    // Nothing else went to WeCom.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.mock.delivered_calls().len(), 3);

    // Each member sees their copy, named by the group.
    for m in [&a, &b, &c] {
        let resp = app.messages(&[("token", &m.token)]).await;
        let page: Value = resp.json().await.unwrap();
        let mine = page["messages"].as_array().unwrap();
        assert_eq!(mine.len(), 1, "{page}");
        assert_eq!(mine[0]["group"], "ops", "{page}");
        assert_eq!(mine[0]["status"], "delivered", "{page}");
        let copy = mine[0]["id"].as_str().unwrap();
        let one = app.message_json(copy, &m.token).await;
        assert_eq!(one["group"], "ops", "{one}");
        // A member's token does not see the group message by its id.
        let resp = app.message(&id, Some(&m.token)).await;
        assert_eq!(resp.status(), 404);
    }
    // The group token sees only its own messages.
    let resp = app.message(&id, Some(&a.token)).await;
    assert_eq!(resp.status(), 404);
    let other = group(app.store_url(), "dev", &[&a.user]).await;
    let resp = app.message(&id, Some(&other.token)).await;
    assert_eq!(resp.status(), 404);
}

/// Every `/send` form with a group token: GET query, JSON with a Bearer header, a form
/// body; a personal token still answers without `recipients`.
#[tokio::test]
async fn every_send_form_takes_a_group_token() {
    let app = spawn_app_with(unthrottled).await;
    let (a, b) = (member(&app, "forms").await, member(&app, "forms").await);
    let g = group(app.store_url(), "forms", &[&a.user, &b.user]).await;
    let get = app
        .send_get(&[("token", &g.token), ("title", "by GET")])
        .await;
    let form = app
        .send_form(&[("token", &g.token), ("title", "by form")])
        .await;
    let multipart = app
        .http
        .post(app.url("/send"))
        .multipart(
            reqwest::multipart::Form::new()
                .text("token", g.token.clone())
                .text("title", "by multipart"),
        )
        .send()
        .await
        .unwrap();
    for resp in [get, form, multipart] {
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["recipients"], 2, "{body}");
    }
    send_to_group(&app, &g, &json!({"title": "by JSON"}), 2).await;
    app.mock.wait_for_sent(8, WAIT).await;
    let by = texts_by_member(&app.mock);
    for m in [&a, &b] {
        let mut got = by[&m.user].clone();
        got.sort();
        assert_eq!(got, ["by GET", "by JSON", "by form", "by multipart"]);
    }
    let resp = app
        .send_json(Some(&a.token), &json!({"title": "mine"}))
        .await;
    let body: Value = resp.json().await.unwrap();
    assert!(body.get("recipients").is_none(), "{body}");
}

/// A muted member's copy is stored `muted` and never sent; the others get it, and the
/// group message is `delivered` (the muted copy is not meant to go out).
#[tokio::test]
async fn a_muted_member_is_skipped_visibly() {
    let app = spawn_app_with(|c| c.server.metrics = true).await;
    let (a, b) = (member(&app, "mute").await, member(&app, "mute").await);
    let g = group(app.store_url(), "ops", &[&a.user, &b.user]).await;
    mute(app.store_url(), &g.id, &b.user).await;
    let id = send_to_group(&app, &g, &json!({"title": "quiet please"}), 2).await;
    let status = wait_group_status(&app, &g, &id, "delivered").await;
    assert_eq!(
        recipients(&status),
        BTreeMap::from([
            (a.user.clone(), "delivered".to_owned()),
            (b.user.clone(), "muted".to_owned()),
        ]),
        "{status}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent: Vec<String> = app
        .mock
        .delivered_calls()
        .iter()
        .map(|c| c.touser().to_owned())
        .collect();
    assert_eq!(
        sent,
        std::slice::from_ref(&a.user),
        "never sent to the muted member"
    );
    // The muted member sees it too, as muted.
    let page: Value = app
        .messages(&[("token", &b.token), ("status", "muted")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{page}");
    // /metrics counts the recipient-sends: the muted member's copy is not one.
    let metrics = app.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pushbot_group_recipients_total ") && l.ends_with(" 1")),
        "{metrics}"
    );
}

/// Membership is read at acceptance: a member who joins afterwards does not get a message
/// accepted before (though it is still queued behind a busy WeCom).
#[tokio::test]
async fn membership_is_taken_at_acceptance() {
    let app = spawn_app().await;
    let (a, late) = (member(&app, "accept").await, member(&app, "accept").await);
    let g = group(app.store_url(), "ops", &[&a.user]).await;
    // WeCom is slow: the message is still in flight when the new member joins.
    app.mock.set_delay(Some(Duration::from_millis(500)));
    let id = send_to_group(&app, &g, &json!({"title": "before you came"}), 1).await;
    join(app.store_url(), &g.id, &late.user, false, db::now_ms()).await;
    let status = wait_group_status(&app, &g, &id, "delivered").await;
    assert_eq!(recipients(&status).len(), 1, "{status}");
    app.mock.set_delay(None);
    let after = send_to_group(&app, &g, &json!({"title": "after"}), 2).await;
    wait_group_status(&app, &g, &after, "delivered").await;
    let by = texts_by_member(&app.mock);
    assert_eq!(by[&late.user], ["after"]);
    assert_eq!(by[&a.user], ["before you came", "after"]);
}

/// `Idempotency-Key` is per group token: the same request again is the same group message
/// (nothing new stored or sent); another request with the key is refused; a member's own
/// key of the same name is unrelated.
#[tokio::test]
async fn idempotency_keys_are_per_group_token() {
    let app = spawn_app().await;
    let (a, b) = (member(&app, "idem").await, member(&app, "idem").await);
    let g = group(app.store_url(), "ops", &[&a.user, &b.user]).await;
    let send = |title: &'static str| {
        let app = &app;
        let token = g.token.clone();
        async move {
            app.http
                .post(app.url("/send"))
                .bearer_auth(token)
                .header("Idempotency-Key", "nightly-1")
                .json(&json!({ "title": title }))
                .send()
                .await
                .unwrap()
        }
    };
    let first: Value = send("backup done").await.json().await.unwrap();
    assert_eq!(first["recipients"], 2, "{first}");
    let again = send("backup done").await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"], "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["recipients"], 2, "{again}");
    let other = send("something else").await;
    assert_eq!(other.status(), 409, "the key with another request");
    // The member's own key of the same name is theirs.
    let own = app
        .http
        .post(app.url("/send"))
        .bearer_auth(&a.token)
        .header("Idempotency-Key", "nightly-1")
        .json(&json!({"title": "personal"}))
        .send()
        .await
        .unwrap();
    let own: Value = own.json().await.unwrap();
    assert_ne!(own["id"], first["id"], "{own}");
    assert!(own.get("duplicate").is_none(), "{own}");
    app.mock.wait_for_sent(3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let by = texts_by_member(&app.mock);
    assert_eq!(by[&a.user], ["backup done", "personal"]);
    assert_eq!(by[&b.user], ["backup done"]);
    let mut conn = db::connect(app.store_url()).await;
    let n: i64 = sqlx::query("SELECT count(*) FROM group_sends")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// A group token has a send budget of its own (`server.send_rate`), apart from its
/// members' personal budgets.
#[tokio::test]
async fn the_send_rate_applies_per_group_token() {
    let app = spawn_app_with(|c| {
        c.server.send_rate = pushbot::config::SendRate {
            count: 2,
            per: Duration::from_secs(60),
        };
    })
    .await;
    let a = member(&app, "rate").await;
    let g = group(app.store_url(), "ops", &[&a.user]).await;
    for i in 0..2 {
        send_to_group(&app, &g, &json!({ "title": format!("g{i}") }), 1).await;
    }
    let resp = app.send_json(Some(&g.token), &json!({"title": "g3"})).await;
    let body = assert_error(resp, 429, "rate_limited").await;
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("group"),
        "{body}"
    );
    // The member's own budget is untouched.
    accepted_id(
        app.send_json(Some(&a.token), &json!({"title": "mine"}))
            .await,
    )
    .await;
}

// ------------------------------------------------------------------------------------------
// each member's own lane: limits and fallback
// ------------------------------------------------------------------------------------------

/// A burst of 40 group messages (the 30 a minute, scaled to 3 per 300 ms): no
/// member receives more than their limit in any window, and nothing is lost — every
/// member ends with all 40 delivered (some carried by digests).
#[tokio::test]
async fn a_burst_to_a_group_keeps_every_members_limit_and_loses_nothing() {
    const N: usize = 40;
    let app = spawn_app_with(|c| {
        c.wecom.member_limits = member_limits(&[(3, Duration::from_millis(300))]);
        c.delivery.retry_window = Duration::from_secs(60);
        unthrottled(c);
    })
    .await;
    let members = [
        member(&app, "burst").await,
        member(&app, "burst").await,
        member(&app, "burst").await,
    ];
    let users: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
    let g = group(app.store_url(), "burst", &users).await;
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        ids.push(send_to_group(&app, &g, &json!({ "title": format!("alert #{i:02}") }), 3).await);
    }
    for id in &ids {
        let status = wait_group_status(&app, &g, id, "delivered").await;
        assert_eq!(recipients(&status).len(), 3, "{status}");
    }
    // Per member: at most 3 WeCom messages in any 300 ms.
    let calls = app.mock.delivered_calls();
    let mut times: BTreeMap<&str, Vec<Instant>> = BTreeMap::new();
    for call in &calls {
        times
            .entry(call.touser())
            .or_default()
            .push(call.received_at);
    }
    assert_eq!(times.len(), 3);
    for (user, mut at) in times {
        at.sort();
        for (i, start) in at.iter().enumerate() {
            let inside = at[i..]
                .iter()
                .take_while(|t| t.duration_since(*start) < Duration::from_millis(300))
                .count();
            assert!(inside <= 3, "{user}: {inside} messages within 300 ms");
        }
    }
    // Every member's copies of all 40 are delivered (digests carry several).
    for m in &members {
        let mut delivered = 0;
        let mut before: Option<String> = None;
        loop {
            let mut query = vec![
                ("token", m.token.as_str()),
                ("status", "delivered"),
                ("limit", "100"),
            ];
            if let Some(b) = &before {
                query.push(("before", b.as_str()));
            }
            let page: Value = app.messages(&query).await.json().await.unwrap();
            delivered += page["messages"].as_array().unwrap().len();
            match page["next_before"].as_str() {
                Some(next) => before = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(delivered, N, "{}", m.user);
    }
}

/// WeCom refuses one member for good: that member's copy goes by e-mail (their own
/// fallback), the others' by WeCom, and the group message is `delivered`.
#[tokio::test]
async fn one_member_refused_by_wecom_gets_it_by_mail_the_others_by_wecom() {
    let sink = SmtpSink::start().await;
    let port = sink.port;
    let app = spawn_app_with(|c| {
        c.email = Some(local_email(port));
        c.delivery.backoff_initial = Duration::from_millis(50);
        c.delivery.backoff_max = Duration::from_millis(200);
    })
    .await;
    let (a, b, c) = (
        member(&app, "fallback").await,
        member(&app, "fallback").await,
        member(&app, "fallback").await,
    );
    // b binds an address (the chat flow: a code by mail).
    let address = format!("{}@example.com", b.user);
    let reply = say(&app, &b.user, &format!("email {address}")).await;
    assert_says(&reply, "code sent", "email");
    let mail = sink.wait_for_mails_to(&address, 1, WAIT).await;
    let code = mail[0].code().expect("a code");
    assert_says(
        &say(&app, &b.user, &format!("verify {code}")).await,
        "bound",
        "verify",
    );
    app.mock.fail_always_for(&b.user, wecom_permanent());

    let g = group(app.store_url(), "ops", &[&a.user, &b.user, &c.user]).await;
    let id = send_to_group(
        &app,
        &g,
        &json!({"title": "Disk full", "content": "host-7"}),
        3,
    )
    .await;
    let status = wait_group_status(&app, &g, &id, "delivered").await;
    let channels: BTreeMap<String, String> = status["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["member"].as_str().unwrap().to_owned(),
                r["channel"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        channels,
        BTreeMap::from([
            (a.user.clone(), "wecom".to_owned()),
            (b.user.clone(), "email".to_owned()),
            (c.user.clone(), "wecom".to_owned()),
        ]),
        "{status}"
    );
    let mails = sink.wait_for_mails_to(&address, 2, WAIT).await;
    assert_eq!(mails[1].subject(), "Disk full");
    let by = texts_by_member(&app.mock);
    assert!(!by.contains_key(&b.user), "WeCom never took b's copy");
    assert_eq!(by[&a.user], ["Disk full\n\nhost-7"]);
    assert_eq!(by[&c.user], ["Disk full\n\nhost-7"]);
}

/// A group whose members cannot be reached on the channel the sender names is a 400 with
/// nothing stored; when some can, the others' copies fail visibly (`partial`).
#[tokio::test]
async fn a_channel_no_member_can_take_is_refused_one_some_cannot_take_is_partial() {
    let sink = SmtpSink::start().await;
    let port = sink.port;
    let app = spawn_app_with(|c| {
        c.email = Some(local_email(port));
        c.server.metrics = true;
    })
    .await;
    let (a, b) = (member(&app, "chan").await, member(&app, "chan").await);
    let g = group(app.store_url(), "ops", &[&a.user, &b.user]).await;
    let resp = app
        .send_json(Some(&g.token), &json!({"title": "x", "channel": "email"}))
        .await;
    let body = assert_error(resp, 400, "bad_request").await;
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no member"),
        "{body}"
    );
    let mut conn = db::connect(app.store_url()).await;
    let n: i64 = sqlx::query("SELECT count(*) FROM group_sends")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing stored");

    let address = format!("{}@example.com", a.user);
    say(&app, &a.user, &format!("email {address}")).await;
    let code = sink.wait_for_mails_to(&address, 1, WAIT).await[0]
        .code()
        .expect("a code");
    say(&app, &a.user, &format!("verify {code}")).await;
    let id = send_to_group(
        &app,
        &g,
        &json!({"title": "by mail", "channel": "email"}),
        2,
    )
    .await;
    let status = wait_group_status(&app, &g, &id, "partial").await;
    let list = status["recipients"].as_array().unwrap();
    assert_eq!(list[0]["status"], "delivered", "{status}");
    assert_eq!(list[0]["channel"], "email", "{status}");
    assert_eq!(list[1]["status"], "failed", "{status}");
    assert!(
        list[1]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("e-mail"),
        "{status}"
    );
    // The copy that failed at acceptance is a failed message like any other, and not a
    // recipient-send.
    let metrics = app.metrics_text().await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(value("pushbot_messages_failed_total"), 1.0, "{metrics}");
    assert_eq!(value("pushbot_group_recipients_total "), 1.0, "{metrics}");
}

// ------------------------------------------------------------------------------------------
// compat routes
// ------------------------------------------------------------------------------------------

/// ServerChan, Bark, gotify, ntfy and the two alert hooks take a group token like a
/// personal one: each request reaches every member once.
#[tokio::test]
async fn every_compat_route_takes_a_group_token() {
    let app = spawn_app_with(unthrottled).await;
    let (a, b) = (member(&app, "compat").await, member(&app, "compat").await);
    let g = group(app.store_url(), "ops", &[&a.user, &b.user]).await;
    let t = &g.token;
    let http = &app.http;
    let alertmanager = json!({
        "version": "4", "status": "firing", "receiver": "pushbot",
        "groupLabels": {"alertname": "AmDown"}, "commonLabels": {"alertname": "AmDown"},
        "commonAnnotations": {}, "externalURL": "http://am:9093",
        "alerts": [{"status": "firing", "labels": {"alertname": "AmDown"},
                    "annotations": {"summary": "am"}, "startsAt": "2026-12-07T10:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://x"}]
    });
    let grafana = json!({
        "receiver": "pushbot", "status": "firing", "orgId": 1,
        "title": "[FIRING:1] GfDown", "message": "grafana says",
        "groupLabels": {"alertname": "GfDown"}, "commonLabels": {"alertname": "GfDown"},
        "alerts": [{"status": "firing", "labels": {"alertname": "GfDown"},
                    "annotations": {"summary": "gf"}, "startsAt": "2026-12-07T10:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z"}]
    });
    let requests = [
        (
            "serverchan",
            http.get(app.url(&format!("/{t}.send?title=sc-title"))),
        ),
        (
            "bark",
            http.get(app.url(&format!("/{t}/bark-title/bark-body"))),
        ),
        (
            "gotify",
            http.post(app.url("/message"))
                .query(&[("token", t.as_str())])
                .json(&json!({"title": "gotify-title", "message": "gotify-body"})),
        ),
        (
            "ntfy",
            http.post(app.url("/alerts"))
                .bearer_auth(t)
                .header("content-type", "text/plain")
                .body("ntfy-body"),
        ),
        (
            "alertmanager",
            http.post(app.url("/hooks/alertmanager"))
                .query(&[("token", t.as_str())])
                .json(&alertmanager),
        ),
        (
            "grafana",
            http.post(app.url("/hooks/grafana"))
                .query(&[("token", t.as_str())])
                .json(&grafana),
        ),
    ];
    let n = requests.len();
    let mut pushed = Value::Null;
    for (route, request) in requests {
        let resp = request.send().await.unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert_eq!(status, 200, "{route}: {body}");
        if route == "serverchan" {
            pushed = serde_json::from_str(&body).unwrap();
        }
    }
    app.mock.wait_for_sent(2 * n, WAIT).await;
    // ServerChan's status lookup answers for the group message as a whole.
    let (id, key) = (
        pushed["data"]["pushid"].as_str().unwrap_or_default(),
        pushed["data"]["readkey"].as_str().unwrap_or_default(),
    );
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status: Value = http
            .get(app.url("/push"))
            .query(&[("id", id), ("readkey", key)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(status["code"], 0, "{status}");
        assert_eq!(status["data"]["group"], "ops", "{status}");
        assert_eq!(status["data"]["recipients"], 2, "{status}");
        assert_eq!(status["data"]["title"], "sc-title", "{status}");
        if status["data"]["status"] == "delivered" {
            assert_eq!(status["data"]["delivered"], 2, "{status}");
            break;
        }
        assert_eq!(status["data"]["status"], "queued", "{status}");
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wrong = http
        .get(app.url("/push"))
        .query(&[("id", id), ("readkey", "0123456789abcdef")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        wrong.status(),
        400,
        "as for a personal message: ServerChan answers 400"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let by = texts_by_member(&app.mock);
    for m in [&a, &b] {
        let got = &by[&m.user];
        assert_eq!(got.len(), n, "{}: {got:?}", m.user);
        for fragment in [
            "sc-title",
            "bark-title",
            "gotify-title",
            "ntfy-body",
            "AmDown",
            "GfDown",
        ] {
            assert!(
                got.iter().any(|t| t.contains(fragment)),
                "{} got {fragment}: {got:?}",
                m.user
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// kill -9
// ------------------------------------------------------------------------------------------

/// The binary is killed (`kill -9`) while group messages to 30 members are being accepted
/// concurrently: every group message answered 200 is stored with all 30 copies, no group
/// message is stored with fewer, and after a restart every stored copy reaches its member
/// exactly once (WeCom is down until the restart, so nothing was in flight).
#[tokio::test]
async fn kill9_during_fan_outs_loses_and_duplicates_nothing() {
    kill9_during_fan_outs(30, 25).await;
}

/// As above with 100 members: more than a chunk, so each group message is accepted with its
/// plan and its copies written after the `200`, a chunk at a time. A kill leaves some
/// plans half written (their count says how far); the restart writes the rest, and every
/// copy of every group message answered 200 reaches its member exactly once.
#[tokio::test]
async fn kill9_during_planned_fan_outs_loses_and_duplicates_nothing() {
    kill9_during_fan_outs(100, 8).await;
}

async fn kill9_during_fan_outs(members: usize, per_client: usize) {
    let mock = MockWeCom::start().await;
    let config = settings_with(|c| {
        unthrottled(c);
        c.delivery.instance_id = Some(format!("groups-kill9-{members}"));
        c.delivery.retry_window = Duration::from_secs(120);
        c.delivery.backoff_initial = Duration::from_millis(50);
        c.delivery.backoff_max = Duration::from_millis(200);
        c.delivery.probe_max = Duration::from_millis(200);
    });
    let setup = bin_setup(&config, &mock.base_url);
    let mut bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    let mut users = Vec::with_capacity(members);
    for _ in 0..members {
        let user = userid("k9");
        bin.get_token(&user).await;
        users.push(user);
    }
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let g = group(setup.store_url(), "k9", &refs).await;
    mock.fail_always(SendReply::http(503));

    // Senders keep sending until the process is gone.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for client in 0..4 {
        let url = bin.url("/send");
        let token = g.token.clone();
        let stop = stop.clone();
        let accepted = accepted.clone();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut i = 0;
            while i < per_client && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let title = format!("c{client} #{i}");
                i += 1;
                let Ok(resp) = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({ "title": title }))
                    .send()
                    .await
                else {
                    break;
                };
                if resp.status() == 200
                    && let Ok(body) = resp.json::<Value>().await
                    && let Some(id) = body["id"].as_str()
                {
                    accepted.lock().unwrap().push(id.to_owned());
                }
            }
        }));
    }
    // Killed in the middle of the fan-outs: once some were answered, none finished.
    let deadline = Instant::now() + WAIT;
    while accepted.lock().unwrap().len() < 10 {
        assert!(Instant::now() < deadline, "group messages are accepted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bin.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(!accepted.is_empty(), "some group messages were accepted");

    let mut conn = db::connect(setup.store_url()).await;
    let rows = sqlx::query(
        "SELECT g.id, g.recipients, count(m.id) AS copies, g.expanded, \
         CAST(CASE WHEN g.plan IS NULL THEN 0 ELSE 1 END AS BIGINT) AS planned \
         FROM group_sends g LEFT JOIN messages m ON m.group_send = g.id \
         GROUP BY g.id, g.recipients, g.expanded, g.plan",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut halfway = 0;
    let stored: BTreeMap<String, (i64, i64)> = rows
        .iter()
        .map(|r| {
            let id: String = r.get("id");
            let (recipients, copies): (i64, i64) = (r.get("recipients"), r.get("copies"));
            if r.get::<i64, _>("planned") == 1 {
                // Copies still to write: exactly as many are written as its count says.
                assert_eq!(
                    copies,
                    r.get::<i64, _>("expanded"),
                    "{id}: written as counted"
                );
                halfway += 1;
                (id, (recipients, recipients))
            } else {
                (id, (recipients, copies))
            }
        })
        .collect();
    eprintln!(
        "{} group messages stored, {halfway} with copies still to write",
        stored.len()
    );
    for id in &accepted {
        assert!(
            stored.contains_key(id),
            "{id} was answered 200 but is not stored"
        );
    }
    for (id, (recipients, copies)) in &stored {
        assert_eq!(*recipients, members as i64, "{id}");
        assert_eq!(copies, recipients, "{id} is stored with every copy");
    }
    let orphans: i64 = sqlx::query(
        "SELECT count(*) FROM messages WHERE group_send IS NOT NULL \
         AND group_send NOT IN (SELECT id FROM group_sends)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
    .get(0);
    assert_eq!(orphans, 0, "no copy without its group message");

    mock.heal();
    let bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    let total = stored.len() * members;
    let deadline = Instant::now() + Duration::from_secs(60);
    while mock.delivered_calls().len() < total {
        assert!(
            Instant::now() < deadline,
            "{} of {total} copies delivered",
            mock.delivered_calls().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = mock.delivered_calls();
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for call in &calls {
        *seen
            .entry((call.touser().to_owned(), call.text().to_owned()))
            .or_default() += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "each copy exactly once: {:?}",
        seen.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    assert_eq!(calls.len(), total, "nothing else");
    drop(bin);
}

// ------------------------------------------------------------------------------------------
// leaving before the copy goes out
// ------------------------------------------------------------------------------------------

async fn groups_call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Value,
) -> Value {
    let resp = app
        .http
        .request(method, app.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// Group `name` made over HTTP by `owner` and joined by `joiners` with its invite (the
/// same store calls as the chat's): the owner sees its token.
async fn made_over_http(app: &TestApp, name: &str, owner: &Member, joiners: &[&Member]) -> Group {
    let made = groups_call(
        app,
        reqwest::Method::POST,
        "/groups",
        &owner.token,
        json!({ "name": name }),
    )
    .await;
    for m in joiners {
        groups_call(
            app,
            reqwest::Method::POST,
            "/groups/join",
            &m.token,
            json!({ "invite": made["invite"] }),
        )
        .await;
    }
    Group {
        id: String::new(),
        name: name.to_owned(),
        token: made["token"]
            .as_str()
            .expect("the owner sees the token")
            .to_owned(),
    }
}

/// Made, joined, left and kicked over HTTP (the same store calls as the chat): a member who
/// leaves, and one who is removed, before their copy went out are skipped with status
/// `left`; the one who stays still gets it; the group token sees all three.
#[tokio::test]
async fn members_who_leave_or_are_removed_before_it_goes_out_are_skipped_as_left() {
    let app = spawn_app().await;
    let (a, b, c) = (
        member(&app, "leave").await,
        member(&app, "leave").await,
        member(&app, "leave").await,
    );
    let g = made_over_http(&app, "ops", &a, &[&b, &c]).await;
    // Due in an hour: nothing goes out before they leave.
    let id = send_to_group(&app, &g, &json!({"title": "later", "delay": "1h"}), 3).await;
    let status = wait_group_status(&app, &g, &id, "queued").await;
    assert!(
        recipients(&status).values().all(|s| s == "scheduled"),
        "{status}"
    );
    groups_call(
        &app,
        reqwest::Method::POST,
        "/groups/ops/leave",
        &b.token,
        Value::Null,
    )
    .await;
    groups_call(
        &app,
        reqwest::Method::DELETE,
        &format!("/groups/ops/members/{}", c.user),
        &a.token,
        Value::Null,
    )
    .await;
    let status = app.message_json(&id, &g.token).await;
    assert_eq!(status["status"], "queued", "a's copy still waits: {status}");
    assert_eq!(
        recipients(&status),
        BTreeMap::from([
            (a.user.clone(), "scheduled".to_owned()),
            (b.user.clone(), "left".to_owned()),
            (c.user.clone(), "left".to_owned()),
        ]),
        "{status}"
    );
    // The members see it in their own listings, as left.
    let page: Value = app
        .messages(&[("token", &b.token), ("status", "left")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["messages"][0]["group"], "ops", "{page}");
    // A group token manages nothing of its members' copies.
    let resp = app
        .http
        .delete(app.url(&format!("/messages/{id}")))
        .bearer_auth(&g.token)
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "bad_request").await;
}

// ------------------------------------------------------------------------------------------
// files
// ------------------------------------------------------------------------------------------

/// A file sent with a group token (multipart, the token before the file) reaches every
/// member after the text, stored once: each copy names the same blob.
#[tokio::test]
async fn a_file_to_a_group_reaches_every_member() {
    let app = spawn_app().await;
    let (a, b) = (member(&app, "file").await, member(&app, "file").await);
    let g = group(app.store_url(), "ops", &[&a.user, &b.user]).await;
    let form = reqwest::multipart::Form::new()
        .text("token", g.token.clone())
        .text("title", "Nightly log")
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"all good\n".repeat(50))
                .file_name("nightly.log")
                .mime_str("text/plain")
                .unwrap(),
        );
    let resp = app
        .http
        .post(app.url("/send"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["recipients"], 2, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    wait_group_status(&app, &g, &id, "delivered").await;
    for m in [&a, &b] {
        let shown: Vec<String> = app
            .mock
            .delivered_calls()
            .iter()
            .filter(|c| c.touser() == m.user)
            .map(|c| c.body["msgtype"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(shown, ["text", "file"], "{}", m.user);
    }
    // Files go one member per call (each copy's own upload and retry).
    for call in app.mock.calls() {
        if call.body["msgtype"] == "file" {
            assert_eq!(call.batch.len(), 1, "{:?}", call.batch);
        }
    }
    let mut conn = db::connect(app.store_url()).await;
    let row =
        sqlx::query("SELECT count(*) AS n, count(DISTINCT blob_id) AS blobs FROM message_media")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(row.get::<i64, _>("n"), 2, "one attachment row per copy");
    assert_eq!(row.get::<i64, _>("blobs"), 1, "one stored file");
}

// ------------------------------------------------------------------------------------------
// a large group
// ------------------------------------------------------------------------------------------

/// A group of 1,000 (`groups.max_members`' default), most of whom never chatted with the
/// app (a recipient by userid, on the defaults): one request stores 1,000 copies in one
/// commit and every member gets theirs once.
#[tokio::test]
async fn a_thousand_member_group_gets_one_copy_each() {
    const N: usize = 1000;
    let app = spawn_app().await;
    let owner = member(&app, "big").await;
    let g = group(app.store_url(), "all", &[&owner.user]).await;
    let mut conn = db::connect(app.store_url()).await;
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    let base = db::now_ms();
    let mut users = vec![owner.user.clone()];
    for i in 1..N {
        let user = format!("{}-{i:04}", owner.user);
        sqlx::query(
            "INSERT INTO group_members (group_id, userid, owner, joined_at, muted) \
             VALUES ($1, $2, 0, $3, 0)",
        )
        .bind(&g.id)
        .bind(&user)
        .bind(base + i as i64)
        .execute(&mut *tx)
        .await
        .unwrap();
        users.push(user);
    }
    tx.commit().await.unwrap();
    let started = Instant::now();
    let id = send_to_group(&app, &g, &json!({"title": "all hands"}), N as i64).await;
    eprintln!(
        "1,000 copies accepted in {:?} (debug build)",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.mock.delivered_calls().len() < N {
        assert!(
            Instant::now() < deadline,
            "{} of {N} delivered",
            app.mock.delivered_calls().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "1,000 copies delivered {:?} after the request was sent, in {} WeCom calls (debug build)",
        started.elapsed(),
        app.mock.send_requests().len()
    );
    let status = wait_group_status(&app, &g, &id, "delivered").await;
    let listed: Vec<&str> = status["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["member"].as_str().unwrap())
        .collect();
    assert_eq!(listed, users, "every member, in join order");
    let by = texts_by_member(&app.mock);
    assert_eq!(by.len(), N);
    assert!(by.values().all(|t| t == &["all hands"]));
}

// ------------------------------------------------------------------------------------------
// shared WeCom calls (touser=a|b|c)
// ------------------------------------------------------------------------------------------

/// The `message/send` calls that named any of `users`, each as the members it named.
fn requests_naming(mock: &MockWeCom, users: &[&str]) -> Vec<Vec<String>> {
    mock.send_requests()
        .into_iter()
        .filter(|named| named.iter().any(|n| users.contains(&n.as_str())))
        .collect()
}

/// The value of a `/metrics` series.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} in:\n{text}"))
}

/// A group message to 20 members, shaping lifted: WeCom gets it in a handful of calls that
/// each name several members, every member once; each copy is `delivered` by WeCom; and
/// `/metrics` counts 20 recipient-sends in those few calls.
#[tokio::test]
async fn copies_with_the_same_body_go_to_wecom_in_a_handful_of_calls() {
    const N: usize = 20;
    let app = spawn_app_with(|c| {
        unthrottled(c);
        c.server.metrics = true;
    })
    .await;
    let mut members = Vec::with_capacity(N);
    for _ in 0..N {
        members.push(member(&app, "batch").await);
    }
    let users: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
    let g = group(app.store_url(), "all", &users).await;
    let calls_before = metric(&app, "pushbot_wecom_send_calls_total").await;
    let sends_before = metric(&app, "pushbot_wecom_recipient_sends_total").await;
    let id = send_to_group(
        &app,
        &g,
        &json!({"title": "all hands", "content": "at 3"}),
        N as i64,
    )
    .await;
    let status = wait_group_status(&app, &g, &id, "delivered").await;
    for r in status["recipients"].as_array().unwrap() {
        assert_eq!(r["status"], "delivered", "{status}");
        assert_eq!(r["channel"], "wecom", "{status}");
    }
    let by = texts_by_member(&app.mock);
    for user in &users {
        assert_eq!(by[*user], ["all hands\n\nat 3"], "{user}");
    }
    let requests = requests_naming(&app.mock, &users);
    eprintln!(
        "{N} copies in {} calls: {:?}",
        requests.len(),
        requests.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let named: usize = requests.iter().map(Vec::len).sum();
    assert_eq!(named, N, "every member named once: {requests:?}");
    assert!(
        requests.len() <= 5,
        "{} calls for {N} copies: {requests:?}",
        requests.len()
    );
    assert_eq!(
        metric(&app, "pushbot_wecom_recipient_sends_total").await - sends_before,
        N as f64
    );
    assert_eq!(
        metric(&app, "pushbot_wecom_send_calls_total").await - calls_before,
        requests.len() as f64
    );
    assert!(metric(&app, "pushbot_wecom_recipient_sends_today").await >= N as f64);
}

/// WeCom names one member of a shared call in `invaliduser` (errcode 0): that member's
/// copy falls back to e-mail, their own bound address; the others in the same call are
/// delivered by WeCom, once.
#[tokio::test]
async fn a_member_named_invalid_in_a_shared_call_gets_it_by_mail_the_others_by_wecom() {
    let sink = SmtpSink::start().await;
    let port = sink.port;
    let app = spawn_app_with(|c| {
        c.email = Some(local_email(port));
        unthrottled(c);
    })
    .await;
    let mut members = Vec::new();
    for _ in 0..4 {
        members.push(member(&app, "shared").await);
    }
    let b = &members[1];
    let address = format!("{}@example.com", b.user);
    let reply = say(&app, &b.user, &format!("email {address}")).await;
    assert_says(&reply, "code sent", "email");
    let mail = sink.wait_for_mails_to(&address, 1, WAIT).await;
    let code = mail[0].code().expect("a code");
    assert_says(
        &say(&app, &b.user, &format!("verify {code}")).await,
        "bound",
        "verify",
    );
    app.mock
        .fail_always_for(&b.user, SendReply::invalid_user(&b.user));

    let users: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
    let g = group(app.store_url(), "ops", &users).await;
    let id = send_to_group(
        &app,
        &g,
        &json!({"title": "Disk full", "content": "host-9"}),
        4,
    )
    .await;
    let status = wait_group_status(&app, &g, &id, "delivered").await;
    for r in status["recipients"].as_array().unwrap() {
        let want = if r["member"] == b.user.as_str() {
            "email"
        } else {
            "wecom"
        };
        assert_eq!(r["channel"], want, "{status}");
        assert_eq!(r["status"], "delivered", "{status}");
    }
    let mails = sink.wait_for_mails_to(&address, 2, WAIT).await;
    assert_eq!(mails[1].subject(), "Disk full");
    let requests = requests_naming(&app.mock, &users);
    assert!(
        requests
            .iter()
            .any(|named| named.len() > 1 && named.contains(&b.user)),
        "b was named in a shared call: {requests:?}"
    );
    let by = texts_by_member(&app.mock);
    assert!(!by.contains_key(&b.user), "WeCom never took b's copy");
    for m in members.iter().filter(|m| m.user != b.user) {
        assert_eq!(by[&m.user], ["Disk full\n\nhost-9"], "{}", m.user);
    }
}

/// Members who chose markdown get another body than those on plain text: two bodies, two
/// sets of calls, never one call mixing them; everyone gets theirs.
#[tokio::test]
async fn members_with_other_formats_get_their_own_calls() {
    let app = spawn_app_with(unthrottled).await;
    let mut members = Vec::new();
    for _ in 0..6 {
        members.push(member(&app, "fmt").await);
    }
    let markdown: Vec<&str> = members[..3].iter().map(|m| m.user.as_str()).collect();
    for user in &markdown {
        say(&app, user, "format markdown").await;
    }
    let users: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
    let g = group(app.store_url(), "fmt", &users).await;
    let id = send_to_group(
        &app,
        &g,
        &json!({"title": "Report", "content": "**all** green", "format": "markdown"}),
        6,
    )
    .await;
    wait_group_status(&app, &g, &id, "delivered").await;
    let calls: Vec<_> = app
        .mock
        .delivered_calls()
        .into_iter()
        .filter(|c| users.contains(&c.touser()))
        .collect();
    assert_eq!(calls.len(), 6, "{calls:#?}");
    for call in &calls {
        let msgtype = call.body["msgtype"].as_str().unwrap_or_default();
        let want = if markdown.contains(&call.touser()) {
            "markdown"
        } else {
            "text"
        };
        assert_eq!(msgtype, want, "{}", call.touser());
        // Everyone a call named got the same type.
        for other in &call.batch {
            assert_eq!(
                markdown.contains(&other.as_str()),
                markdown.contains(&call.touser()),
                "one call mixed formats: {:?}",
                call.batch
            );
        }
    }
    let requests = requests_naming(&app.mock, &users);
    assert!(requests.len() >= 2, "{requests:?}");
}

/// Personal messages never wait for others: the same text sent at once to ten members
/// with their own tokens goes in ten calls of one member each.
#[tokio::test]
async fn personal_messages_are_never_sent_in_shared_calls() {
    let app = spawn_app_with(unthrottled).await;
    let mut members = Vec::new();
    for _ in 0..10 {
        members.push(member(&app, "own").await);
    }
    let sends = members.iter().map(|m| {
        let app = &app;
        async move {
            accepted_id(
                app.send_json(Some(&m.token), &json!({"title": "same words"}))
                    .await,
            )
            .await
        }
    });
    futures_util::future::join_all(sends).await;
    app.mock.wait_for_sent(10, WAIT).await;
    let users: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
    let requests = requests_naming(&app.mock, &users);
    assert_eq!(requests.len(), 10, "{requests:?}");
    assert!(
        requests.iter().all(|named| named.len() == 1),
        "{requests:?}"
    );
}

/// A shared call that fails fails for everyone it named, and everyone's copy is tried
/// again: the access token expired under it (refreshed once, the call made again), then
/// WeCom busy for the call, then one member's scripted HTTP 502 (no per-member form at
/// WeCom: the mock fails the call it is in) — and in the end each member has the message
/// exactly once.
#[tokio::test]
async fn a_shared_call_that_fails_is_tried_again_for_everyone_in_it() {
    let app = spawn_app_with(|c| {
        unthrottled(c);
        c.delivery.backoff_initial = Duration::from_millis(50);
        c.delivery.backoff_max = Duration::from_millis(200);
        c.delivery.probe_max = Duration::from_millis(200);
    })
    .await;
    let mut members = Vec::new();
    for _ in 0..5 {
        members.push(member(&app, "retry").await);
    }
    let users: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
    let g = group(app.store_url(), "ops", &users).await;
    app.mock.expire_tokens();
    app.mock
        .push_replies([SendReply::errcode(-1, "system busy, hint: [mock]")]);
    // The first call's busy is the call's answer (this member's own first reply is a
    // success); the second call naming them fails with their 502.
    app.mock
        .push_replies_for(&members[2].user, [SendReply::ok(), SendReply::http(502)]);
    let id = send_to_group(&app, &g, &json!({"title": "again"}), 5).await;
    let status = wait_group_status(&app, &g, &id, "delivered").await;
    for r in status["recipients"].as_array().unwrap() {
        assert_eq!(r["channel"], "wecom", "{status}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let by = texts_by_member(&app.mock);
    for user in &users {
        assert_eq!(by[*user], ["again"], "{user} has it exactly once");
    }
    let requests = requests_naming(&app.mock, &users);
    assert!(
        requests.iter().any(|named| named.len() > 1),
        "some call was shared: {requests:?}"
    );
    // The failed calls named several members and delivered to none of them.
    let failed: Vec<_> = app
        .mock
        .calls()
        .into_iter()
        .filter(|c| users.contains(&c.touser()) && !c.delivered())
        .collect();
    assert!(
        failed.iter().any(|c| c.batch.len() > 1),
        "a shared call failed: {failed:#?}"
    );
}

// ------------------------------------------------------------------------------------------
// leaving during a burst
// ------------------------------------------------------------------------------------------

/// A member leaves while a burst of 40 messages to the group is being accepted (sent
/// concurrently, copies going out while others are still accepted): nothing reaches them
/// after the leave's `200` but the one copy that may be in flight. Each of their copies
/// was either sent (before the leave, or in flight at it), or is `left`, or — accepted
/// after the leave — was never made;
/// what WeCom received for them is exactly what their copies say was delivered. On both
/// engines (the leave and the sends' commits meet in the writer; on PostgreSQL at the
/// group's row).
#[tokio::test]
async fn a_leave_during_a_burst_stops_every_copy_not_yet_sent() {
    const N: usize = 40;
    let app = spawn_app_with(|c| {
        c.wecom.member_limits = member_limits(&[(100_000, Duration::from_secs(1))]);
        c.delivery.retry_window = Duration::from_secs(60);
        unthrottled(c);
    })
    .await;
    // Copies are in flight for a while: some are being sent at the moment of the leave.
    app.mock.set_delay(Some(Duration::from_millis(5)));
    let (a, b, c) = (
        member(&app, "burstleave").await,
        member(&app, "burstleave").await,
        member(&app, "burstleave").await,
    );
    let g = made_over_http(&app, "ops", &a, &[&b, &c]).await;
    let sends = (0..N).map(|i| {
        let (app, token) = (&app, g.token.as_str());
        async move {
            // Spread over ~120 ms, so that the leave lands in the middle of the burst.
            tokio::time::sleep(Duration::from_millis(3 * i as u64)).await;
            let started = Instant::now();
            let resp = app
                .send_json(Some(token), &json!({ "title": format!("burst #{i:02}") }))
                .await;
            assert_eq!(resp.status(), 200);
            let answer: Value = resp.json().await.unwrap();
            (started, answer["id"].as_str().expect("an id").to_owned())
        }
    });
    let leave = async {
        // Once the first copies are on their way to WeCom.
        app.mock.wait_for_send_started(1, WAIT).await;
        groups_call(
            &app,
            reqwest::Method::POST,
            "/groups/ops/leave",
            &b.token,
            Value::Null,
        )
        .await;
        Instant::now()
    };
    let (accepted, left_at) = tokio::join!(futures_util::future::join_all(sends), leave);

    let mut delivered_to_b = 0;
    let mut left = 0;
    let mut after = 0;
    for (started, id) in &accepted {
        let status = wait_group_status(&app, &g, id, "delivered").await;
        let by = recipients(&status);
        assert_eq!(by.get(&a.user).map(String::as_str), Some("delivered"));
        assert_eq!(by.get(&c.user).map(String::as_str), Some("delivered"));
        match by.get(&b.user).map(String::as_str) {
            None => {}
            Some("left") => left += 1,
            Some("delivered") => delivered_to_b += 1,
            Some(other) => panic!("b's copy is {other}: {status}"),
        }
        if *started > left_at {
            after += 1;
            assert_eq!(by.get(&b.user), None, "accepted after the leave: {status}");
        }
    }
    let to_b: Vec<_> = app
        .mock
        .delivered_calls()
        .into_iter()
        .filter(|call| call.touser().split('|').any(|u| u == b.user))
        .collect();
    // b's lane sends one copy at a time: the one its worker had read before the leave
    // committed is in flight and may reach WeCom just after the 200 (it shows delivered);
    // any other would be a copy sent to someone who had left.
    let late: Vec<Duration> = to_b
        .iter()
        .filter(|call| call.received_at >= left_at)
        .map(|call| call.received_at - left_at)
        .collect();
    assert!(
        late.len() <= 1,
        "copies reached WeCom for {} after the leave's 200: {late:?}",
        b.user
    );
    assert_eq!(
        to_b.len(),
        delivered_to_b,
        "what WeCom received for the leaver is what their copies say was delivered"
    );
    eprintln!(
        "burst and leave: {delivered_to_b} sent before, {left} left, {} without a copy \
         ({after} accepted after the leave)",
        N - delivered_to_b - left
    );
}

/// The race the writer closes, made certain: a send reads the group's members (the
/// leaver among them), then waits for its `file_url`; meanwhile the member leaves (`200`);
/// then the send is committed. The leaver's copy is stored `left` — not queued — and
/// WeCom never hears of it; the others get it.
#[tokio::test]
async fn a_send_that_read_the_members_before_a_leave_sends_the_leaver_nothing() {
    use axum::Router;
    use axum::routing::get;
    use std::sync::Arc;
    use tokio::sync::Notify;

    let (fetching, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let router = {
        let (fetching, release) = (Arc::clone(&fetching), Arc::clone(&release));
        Router::new().route(
            "/report.txt",
            get(move || {
                let (fetching, release) = (Arc::clone(&fetching), Arc::clone(&release));
                async move {
                    fetching.notify_one();
                    release.notified().await;
                    "the report"
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let files = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let app = spawn_app_with(|c| {
        c.media.fetch_allow = vec!["127.0.0.2/32".parse().expect("a network")];
        unthrottled(c);
    })
    .await;
    let (a, b) = (
        member(&app, "raceleave").await,
        member(&app, "raceleave").await,
    );
    let g = made_over_http(&app, "ops", &a, &[&b]).await;
    let send = {
        let (app, token) = (&app, g.token.as_str());
        let url = format!("http://{files}/report.txt");
        async move {
            app.send_json(Some(token), &json!({"title": "report", "file_url": url}))
                .await
        }
    };
    let leave = async {
        // The send has read the members and is fetching its file.
        tokio::time::timeout(WAIT, fetching.notified())
            .await
            .expect("the send fetches its file");
        groups_call(
            &app,
            reqwest::Method::POST,
            "/groups/ops/leave",
            &b.token,
            Value::Null,
        )
        .await;
        release.notify_one();
    };
    let (resp, ()) = tokio::join!(send, leave);
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(
        answer["recipients"], 2,
        "b was a member when it was read: {answer}"
    );
    let id = answer["id"].as_str().unwrap();
    let status = wait_group_status(&app, &g, id, "delivered").await;
    assert_eq!(
        recipients(&status),
        BTreeMap::from([
            (a.user.clone(), "delivered".to_owned()),
            (b.user.clone(), "left".to_owned()),
        ]),
        "{status}"
    );
    // Anything for b would have gone out by now, with a's.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let to_b: Vec<_> = app
        .mock
        .calls()
        .into_iter()
        .filter(|call| call.touser().split('|').any(|u| u == b.user))
        .collect();
    assert!(to_b.is_empty(), "WeCom got a copy for the leaver: {to_b:?}");
}

/// A copy that is being sent at the moment its member leaves cannot be called back: it
/// reaches them, and the group token shows it as what it was — `delivered`, on WeCom —
/// and it counts against the member's limits like any send (the `sends` history).
#[tokio::test]
async fn a_copy_in_flight_when_its_member_leaves_shows_delivered_and_counts() {
    let app = spawn_app_with(unthrottled).await;
    let (a, b) = (member(&app, "flight").await, member(&app, "flight").await);
    let g = group(app.store_url(), "flight", &[&a.user, &b.user]).await;
    // b's copy only: a has muted the group.
    mute(app.store_url(), &g.id, &a.user).await;
    app.mock.set_delay(Some(Duration::from_millis(600)));
    let id = send_to_group(&app, &g, &json!({"title": "in flight"}), 2).await;
    app.mock.wait_for_send_started(1, WAIT).await;
    let resp = app
        .http
        .post(app.url("/groups/flight/leave"))
        .bearer_auth(&b.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let status = wait_group_status(&app, &g, &id, "delivered").await;
    let copy = status["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["member"] == b.user.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("b's copy: {status}"));
    assert_eq!(copy["status"], "delivered", "{status}");
    assert_eq!(copy["channel"], "wecom", "{status}");
    assert!(copy["delivered_at"].is_string(), "{status}");
    assert!(copy["last_error"].is_null(), "{status}");
    assert_eq!(app.mock.delivered_calls().len(), 1);
    let mut conn = db::connect(app.store_url()).await;
    let sends: i64 = sqlx::query("SELECT count(*) AS n FROM sends WHERE userid = $1")
        .bind(&b.user)
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    assert_eq!(sends, 1, "the send counts against b's limits");
}
