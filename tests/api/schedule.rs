//! Issue 21: scheduled delivery and cancelling. A message sent with `delay`/`at` (or ntfy's
//! `X-Delay`/`X-At`/`X-In`) waits in the database, holds nothing up, and reaches WeCom at
//! its time (within the scheduler's one-second poll), never before, once — across a
//! `kill -9` too; `DELETE /messages/{id}` cancels it while it has not gone out.
//!
//! Times are judged by the mock's arrival times against the clock of this process: the
//! server accepts a message after the request left here, so "due" here is never later than
//! the server's due time.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::db;
use crate::helpers::*;
use crate::mock_wecom::SendCall;

/// How long after its time a message may arrive: the scheduler's poll (1 s) and a send.
const LATE: Duration = Duration::from_millis(1_500);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `Instant` of a wall-clock time in unix seconds.
fn instant_of(unix_secs: u64) -> Instant {
    let now = SystemTime::now();
    let at = UNIX_EPOCH + Duration::from_secs(unix_secs);
    match at.duration_since(now) {
        Ok(ahead) => Instant::now() + ahead,
        Err(behind) => Instant::now() - behind.duration(),
    }
}

/// The body of a 200 answer.
async fn ok_json(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("JSON")
}

/// A `/send` answer for a scheduled message: `"status":"scheduled"` with a `deliver_at`;
/// answers the id.
async fn scheduled_id(resp: reqwest::Response) -> String {
    let body = ok_json(resp).await;
    assert_eq!(body["status"], "scheduled", "{body}");
    assert!(body["deliver_at"].is_string(), "{body}");
    body["id"].as_str().expect("an id").to_owned()
}

/// The delivered call whose text is `text`, waiting for it.
async fn call_for(app: &TestApp, text: &str, timeout: Duration) -> SendCall {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(call) = app
            .mock
            .delivered_calls()
            .into_iter()
            .find(|c| c.text() == text)
        {
            return call;
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} was not delivered within {timeout:?}; delivered: {:?}",
            app.mock
                .delivered_calls()
                .iter()
                .map(|c| c.text().to_owned())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that `text` arrived at `due` or after, and no later than `due` + [`LATE`].
async fn arrives_on_time(app: &TestApp, text: &str, due: Instant) {
    let call = call_for(app, text, WAIT).await;
    assert!(
        call.received_at >= due,
        "{text:?} arrived {:?} early",
        due - call.received_at
    );
    assert!(
        call.received_at <= due + LATE,
        "{text:?} arrived {:?} late",
        call.received_at - due
    );
}

/// How many times WeCom took `text`.
fn delivered_times(app: &TestApp, text: &str) -> usize {
    app.mock
        .delivered_calls()
        .iter()
        .filter(|c| c.text() == text)
        .count()
}

async fn delete(app: &Api, id: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = app.http.delete(app.url(&format!("/messages/{id}")));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("DELETE /messages/{id}")
}

fn multipart(fields: &[(&str, &str)]) -> (String, String) {
    let mut body = String::new();
    for (name, value) in fields {
        body.push_str(&format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    body.push_str("--XyZ--\r\n");
    ("multipart/form-data; boundary=XyZ".to_owned(), body)
}

// ------------------------------------------------------------------------------------------
// /send: delay and at, in every form
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn delay_on_send_in_every_form_arrives_at_its_time_never_early() {
    let app = spawn_app().await;
    let token = app.get_token(&userid("delayed")).await;
    let mut due = Vec::new();
    // The query, JSON (a number and a string), a form, multipart.
    let start = Instant::now();
    let id = scheduled_id(
        app.send_get(&[("token", &token), ("title", "query"), ("delay", "2")])
            .await,
    )
    .await;
    due.push(("query", start + Duration::from_secs(2), id));
    let start = Instant::now();
    let id = scheduled_id(
        app.send_json(Some(&token), &json!({"title": "json", "delay": 2}))
            .await,
    )
    .await;
    due.push(("json", start + Duration::from_secs(2), id));
    let start = Instant::now();
    let id = scheduled_id(
        app.send_json(Some(&token), &json!({"title": "json text", "delay": "2s"}))
            .await,
    )
    .await;
    due.push(("json text", start + Duration::from_secs(2), id));
    let start = Instant::now();
    let id = scheduled_id(
        app.send_form(&[("token", &token), ("title", "form"), ("delay", "2s")])
            .await,
    )
    .await;
    due.push(("form", start + Duration::from_secs(2), id));
    let (content_type, body) =
        multipart(&[("token", &token), ("title", "multipart"), ("delay", "2s")]);
    let start = Instant::now();
    let resp = app
        .http
        .post(app.url("/send"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    due.push((
        "multipart",
        start + Duration::from_secs(2),
        scheduled_id(resp).await,
    ));

    // Waiting in the database, in no lane: GET says so.
    for (_, _, id) in &due {
        let m = app.message_json(id, &token).await;
        assert_eq!(m["status"], "scheduled", "{m}");
        assert!(m["deliver_at"].is_string(), "{m}");
        assert!(m["next_attempt_at"].is_null(), "{m}");
    }
    let listed = ok_json(
        app.messages(&[("token", &token), ("status", "scheduled")])
            .await,
    )
    .await;
    assert_eq!(
        listed["messages"].as_array().map(Vec::len),
        Some(5),
        "{listed}"
    );
    assert!(app.mock.sent().is_empty(), "nothing goes early");
    for (text, at, _) in &due {
        arrives_on_time(&app, text, *at).await;
    }
    for (text, _, id) in &due {
        let m = app.wait_for_status(id, &token, "delivered", WAIT).await;
        assert!(m["deliver_at"].is_string(), "it keeps its time: {m}");
        assert_eq!(delivered_times(&app, text), 1, "{text}");
    }
}

#[tokio::test]
async fn at_on_send_as_rfc3339_or_unix_seconds_arrives_at_its_time() {
    let app = spawn_app().await;
    let token = app.get_token(&userid("at")).await;
    let at = unix_now() + 3;
    // The same second as RFC 3339 at +08:00.
    let local = SystemTime::UNIX_EPOCH + Duration::from_secs(at + 8 * 3600);
    let rfc3339 = format!(
        "{}+08:00",
        humantime::format_rfc3339_seconds(local)
            .to_string()
            .trim_end_matches('Z')
    );
    let unix = at.to_string();
    let body = ok_json(
        app.send_get(&[("token", &token), ("title", "unix"), ("at", &unix)])
            .await,
    )
    .await;
    assert_eq!(body["status"], "scheduled", "{body}");
    let utc = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_secs(at)).to_string();
    assert_eq!(body["deliver_at"], utc, "{body}");
    let body = ok_json(
        app.send_json(Some(&token), &json!({"title": "rfc3339", "at": rfc3339}))
            .await,
    )
    .await;
    assert_eq!(body["deliver_at"], utc, "the same time: {body}");
    let due = instant_of(at);
    arrives_on_time(&app, "unix", due).await;
    arrives_on_time(&app, "rfc3339", due).await;
}

// ------------------------------------------------------------------------------------------
// ntfy: X-Delay, X-At, X-In and their other names
// ------------------------------------------------------------------------------------------

async fn ntfy(app: &TestApp, path: &str, headers: &[(&str, &str)], body: &str) -> Value {
    let mut req = app.http.post(app.url(path)).body(body.to_owned());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    ok_json(req.send().await.unwrap()).await
}

#[tokio::test]
async fn ntfy_delays_in_headers_query_and_json_arrive_at_their_time() {
    let app = spawn_app().await;
    let user = userid("ntfy-later");
    let token = app.get_token(&user).await;
    let path = format!("/{token}");
    let at = (unix_now() + 3).to_string();
    let mut due = Vec::new();
    for (text, headers, query) in [
        ("x-delay", vec![("X-Delay", "2s")], ""),
        ("delay", vec![("Delay", "2 seconds")], ""),
        ("x-in", vec![("X-In", "2s")], ""),
        ("in", vec![("In", "2s")], ""),
        ("x-at", vec![("X-At", at.as_str())], ""),
        ("at", vec![("At", at.as_str())], ""),
        ("query delay", vec![], "?delay=2s"),
        ("query in", vec![], "?in=2s"),
    ] {
        let start = Instant::now();
        let body = ntfy(&app, &format!("{path}{query}"), &headers, text).await;
        assert_eq!(body["event"], "message", "{body}");
        let time = body["time"].as_u64().expect("time");
        let id = body["id"].as_str().expect("id").to_owned();
        // ntfy's `time` of a delayed message is when it will be delivered.
        let m = app.message_json(&id, &token).await;
        assert_eq!(m["status"], "scheduled", "{text}: {m}");
        let deliver_at = humantime::parse_rfc3339(m["deliver_at"].as_str().unwrap()).unwrap();
        let deliver_secs = deliver_at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(time, deliver_secs, "{text}: {body}");
        let due_at = if headers.iter().any(|(_, v)| *v == at) {
            instant_of(at.parse().unwrap())
        } else {
            start + Duration::from_secs(2)
        };
        due.push((text, due_at));
    }
    let at_query = format!("{path}?at={at}");
    ntfy(&app, &at_query, &[], "query at").await;
    due.push(("query at", instant_of(at.parse().unwrap())));
    // JSON publishing: ntfy's `delay` key.
    let start = Instant::now();
    let body = ok_json(
        app.http
            .post(app.url("/"))
            .bearer_auth(&token)
            .json(&json!({"topic": "alerts", "message": "json delay", "delay": "2s"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(body["time"].as_u64().unwrap() > unix_now(), "{body}");
    due.push(("json delay", start + Duration::from_secs(2)));
    assert!(app.mock.sent().is_empty(), "nothing goes early");
    for (text, at) in due {
        arrives_on_time(&app, text, at).await;
        assert_eq!(delivered_times(&app, text), 1, "{text}");
    }
}

// ------------------------------------------------------------------------------------------
// lanes: a scheduled message blocks nothing; due together, acceptance order
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_scheduled_message_does_not_hold_up_later_immediate_ones() {
    let app = spawn_app().await;
    let user = userid("unblocked");
    let token = app.get_token(&user).await;
    let start = Instant::now();
    scheduled_id(
        app.send_get(&[("token", &token), ("title", "later"), ("delay", "3s")])
            .await,
    )
    .await;
    for i in 0..3 {
        app.send_ok(&token, &format!("now {i}"), "").await;
    }
    let sent = app.mock.wait_for_sent(3, WAIT).await;
    let texts: Vec<&str> = sent.iter().map(|s| s.content.as_str()).collect();
    assert_eq!(texts, ["now 0", "now 1", "now 2"]);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "the immediate ones went at once: {:?}",
        start.elapsed()
    );
    arrives_on_time(&app, "later", start + Duration::from_secs(3)).await;
    // And one sent after it was released goes after it.
    app.send_ok(&token, "after", "").await;
    let sent = app.mock.wait_for_sent(5, WAIT).await;
    assert_eq!(sent[3].content, "later");
    assert_eq!(sent[4].content, "after");
}

/// A lane worker that just sent a member's message waits a moment for the next one, which
/// the writer hands it straight from the commit: a scheduled message must not be handed
/// over (it would go early, or hold the lane until its time), only released into the lane
/// at its time.
#[tokio::test]
async fn a_busy_lane_is_not_handed_a_scheduled_message() {
    let app = spawn_app().await;
    let user = userid("busy-lane");
    let token = app.get_token(&user).await;
    for round in 0..3 {
        app.send_ok(&token, &format!("now {round}"), "").await;
        // Its worker is still lingering on the lane (300 ms) when these are accepted.
        let start = Instant::now();
        let later = format!("later {round}");
        scheduled_id(
            app.send_get(&[("token", &token), ("title", &later), ("delay", "2s")])
                .await,
        )
        .await;
        let next = format!("next {round}");
        app.send_ok(&token, &next, "").await;
        let call = call_for(&app, &next, WAIT).await;
        assert!(
            call.received_at < start + Duration::from_secs(1),
            "{next:?} waited {:?} behind a scheduled message",
            call.received_at - start
        );
        arrives_on_time(&app, &later, start + Duration::from_secs(2)).await;
    }
}

/// Released at its time, a message takes its place in its member's queue by acceptance
/// order: ahead of messages accepted after it that are still waiting (here for the member's
/// limit), behind those accepted before it.
#[tokio::test]
async fn a_released_message_goes_ahead_of_those_accepted_after_it() {
    let app = spawn_app_with(|c| {
        c.wecom.member_limits = member_limits(&[(1, Duration::from_millis(1_500))]);
    })
    .await;
    let user = userid("in-order");
    let token = app.get_token(&user).await;
    app.send_ok(&token, "before", "").await;
    app.mock.wait_for_sent(1, WAIT).await;
    scheduled_id(
        app.send_get(&[("token", &token), ("title", "scheduled"), ("delay", "1s")])
            .await,
    )
    .await;
    // Accepted after it, due at once, but held back by the limit until after its time.
    app.send_ok(&token, "after 1", "").await;
    app.send_ok(&token, "after 2", "").await;
    let sent = app.mock.wait_for_sent(4, Duration::from_secs(15)).await;
    let got: Vec<&str> = sent.iter().map(|s| s.content.as_str()).collect();
    assert_eq!(got, ["before", "scheduled", "after 1", "after 2"]);
}

/// A worker busy with a member's messages has read some ahead (the writer hands it new ones
/// straight from the commit): a message released meanwhile that was accepted before them
/// goes next, not after everything the worker had read.
#[tokio::test]
async fn a_released_message_overtakes_what_a_busy_worker_read_ahead() {
    let app = spawn_app().await;
    let user = userid("busy-worker");
    let token = app.get_token(&user).await;
    // Each send takes 600 ms: the worker is busy for seconds.
    app.mock.set_delay(Some(Duration::from_millis(600)));
    scheduled_id(
        app.send_get(&[("token", &token), ("title", "scheduled"), ("delay", "1s")])
            .await,
    )
    .await;
    for i in 0..7 {
        app.send_ok(&token, &format!("now {i}"), "").await;
    }
    let sent = app.mock.wait_for_sent(8, Duration::from_secs(15)).await;
    let at = sent
        .iter()
        .position(|s| s.content == "scheduled")
        .expect("delivered");
    assert!(
        (1..=3).contains(&at),
        "released at 1 s, while \"now 1\" was being sent, it goes next: {:?}",
        sent.iter().map(|s| s.content.as_str()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn messages_due_at_the_same_time_go_in_acceptance_order() {
    let app = spawn_app().await;
    let user = userid("same-time");
    let token = app.get_token(&user).await;
    let at = (unix_now() + 3).to_string();
    let mut texts = Vec::new();
    for i in 0..20 {
        let text = format!("{i:02}");
        // Alternating forms: the order is the order of acceptance, whatever the form.
        let resp = if i % 2 == 0 {
            app.send_get(&[("token", &token), ("title", &text), ("at", &at)])
                .await
        } else {
            app.send_json(
                Some(&token),
                &json!({"title": text, "at": at.parse::<u64>().unwrap()}),
            )
            .await
        };
        scheduled_id(resp).await;
        texts.push(text);
    }
    let sent = app.mock.wait_for_sent(20, WAIT).await;
    let got: Vec<String> = sent.into_iter().map(|s| s.content).collect();
    assert_eq!(got, texts);
    let first = app.mock.delivered_calls()[0].received_at;
    assert!(
        first >= instant_of(at.parse().unwrap()),
        "not before their time"
    );
}

// ------------------------------------------------------------------------------------------
// cancelling
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_scheduled_message_cancelled_in_time_is_never_sent() {
    let app = spawn_app_with(|c| c.server.metrics = true).await;
    let token = app.get_token(&userid("canceller")).await;
    let id = scheduled_id(
        app.send_get(&[("token", &token), ("title", "never"), ("delay", "2s")])
            .await,
    )
    .await;
    let body = ok_json(delete(&app, &id, Some(&token)).await).await;
    assert_eq!(body["status"], "cancelled", "{body}");
    assert_eq!(body["id"], id.as_str(), "{body}");
    // Again: it is final.
    let body = assert_error(delete(&app, &id, Some(&token)).await, 409, "conflict").await;
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cancelled already"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_secs(2) + LATE).await;
    assert_eq!(delivered_times(&app, "never"), 0);
    let m = app.message_json(&id, &token).await;
    assert_eq!(m["status"], "cancelled", "{m}");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("pushbot_messages_cancelled_total 1"),
        "{metrics}"
    );
    // It is gone from the schedule: nothing else was due.
    let mut conn = db::connect(app.store_url()).await;
    let scheduled: i64 = sqlx::Row::get(
        &sqlx::query("SELECT count(*) AS n FROM messages WHERE status = 'scheduled'")
            .fetch_one(&mut conn)
            .await
            .unwrap(),
        "n",
    );
    assert_eq!(scheduled, 0);
}

#[tokio::test]
async fn a_delivered_message_cannot_be_cancelled_and_others_get_a_404() {
    let app = spawn_app().await;
    let owner = app.get_token(&userid("owner")).await;
    let other = app.get_token(&userid("other")).await;
    let sent = app.send_ok(&owner, "gone", "").await;
    app.wait_for_status(&sent, &owner, "delivered", WAIT).await;
    let body = assert_error(delete(&app, &sent, Some(&owner)).await, 409, "conflict").await;
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("delivered already"),
        "{body}"
    );
    // Someone else's message, scheduled or not: exactly as an unknown id.
    let later = scheduled_id(
        app.send_get(&[("token", &owner), ("title", "mine"), ("delay", "30m")])
            .await,
    )
    .await;
    let unknown = "0190a5b2-0000-7000-8000-000000000000";
    let theirs = assert_error(delete(&app, &later, Some(&other)).await, 404, "not_found").await;
    let none = assert_error(delete(&app, unknown, Some(&other)).await, 404, "not_found").await;
    assert_eq!(
        theirs["message"].as_str().map(|m| m.replace(&later, "ID")),
        none["message"].as_str().map(|m| m.replace(unknown, "ID"))
    );
    assert_error(delete(&app, &later, None).await, 401, "unauthorized").await;
    assert_error(
        delete(&app, &later, Some("wrongtoken000000000000000000000")).await,
        401,
        "unauthorized",
    )
    .await;
    let m = app.message_json(&later, &owner).await;
    assert_eq!(m["status"], "scheduled", "untouched: {m}");
    // The owner may, with the token in the query too.
    let resp = app
        .http
        .delete(app.url(&format!("/messages/{later}")))
        .query(&[("token", owner.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(ok_json(resp).await["status"], "cancelled");
}

/// A queued message that no attempt is working on (its lane waits for a retry) can be
/// cancelled, and is then never sent; one being sent right now cannot.
#[tokio::test]
async fn a_queued_message_is_cancelled_only_while_no_attempt_is_in_flight() {
    let app = spawn_app_with(|c| {
        c.delivery.retry_window = Duration::from_secs(60);
        c.delivery.backoff_initial = Duration::from_secs(30);
        c.delivery.backoff_max = Duration::from_secs(30);
    })
    .await;
    let user = userid("retrying");
    let token = app.get_token(&user).await;
    app.mock
        .push_replies_for(&user, [SendReply::errcode(-1, "system busy")]);
    let id = app.send_ok(&token, "in backoff", "").await;
    app.mock.wait_for_send_started(1, WAIT).await;
    // Its lane is given back until the retry.
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = delete(&app, &id, Some(&token)).await;
        if resp.status() == 200 {
            assert_eq!(ok_json(resp).await["status"], "cancelled");
            break;
        }
        let body = assert_error(resp, 409, "conflict").await;
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("right now"),
            "{body}"
        );
        assert!(Instant::now() < deadline, "never cancellable: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A send that takes a while (within wecom.request_timeout): it is in flight.
    app.mock.set_delay(Some(Duration::from_millis(1_200)));
    let slow = app.send_ok(&token, "slow", "").await;
    app.mock.wait_for_send_started(2, WAIT).await;
    let body = assert_error(delete(&app, &slow, Some(&token)).await, 409, "conflict").await;
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("being delivered right now"),
        "{body}"
    );
    app.wait_for_status(&slow, &token, "delivered", WAIT).await;
    assert_eq!(
        delivered_times(&app, "in backoff"),
        0,
        "cancelled: never sent"
    );
    let m = app.message_json(&id, &token).await;
    assert_eq!(m["status"], "cancelled", "{m}");
}

// ------------------------------------------------------------------------------------------
// durability
// ------------------------------------------------------------------------------------------

/// Scheduled messages survive a `kill -9` and are delivered once after the restart —
/// those that fell due while the process was down at once, the others at their time.
#[tokio::test]
async fn scheduled_messages_survive_kill_9_and_are_delivered_once() {
    let mock = MockWeCom::start().await;
    let setup = bin_setup(&test_settings(), &mock.base_url);
    let mut bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    let user = userid("survivor");
    let token = bin.get_token(&user).await;
    let start = Instant::now();
    let mut texts = Vec::new();
    for (i, delay) in ["1s", "1s", "2s", "6s", "6s"].iter().enumerate() {
        let text = format!("{i} after {delay}");
        let resp = bin
            .send_get(&[("token", &token), ("title", &text), ("delay", delay)])
            .await;
        scheduled_id(resp).await;
        texts.push(text);
    }
    bin.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(mock.sent().is_empty(), "nothing was due before the kill");
    let bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    let sent = mock.wait_for_sent(3, WAIT).await;
    let first: Vec<&str> = sent.iter().map(|s| s.content.as_str()).collect();
    assert_eq!(first, texts[..3], "the overdue ones, in order");
    let sent = mock.wait_for_sent(5, WAIT).await;
    let later = mock.delivered_calls();
    assert!(
        later[3].received_at >= start + Duration::from_secs(6),
        "the others at their time, not at the restart"
    );
    // Once each, however long we wait.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let got: Vec<String> = mock.sent().into_iter().map(|s| s.content).collect();
    assert_eq!(got, texts, "{sent:?}");
    drop(bin);
}

// ------------------------------------------------------------------------------------------
// hostile values
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn impossible_times_are_a_400_that_stores_nothing() {
    let app = spawn_app_with(|c| c.delivery.max_delay = Duration::from_secs(7 * 24 * 3600)).await;
    let user = userid("hostile-time");
    let token = app.get_token(&user).await;
    let past = (unix_now() - 3600).to_string();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("delay", "-1")], "is not a duration"),
        (vec![("delay", "999999d")], "delivery.max_delay: 7days"),
        (vec![("delay", "8d")], "delivery.max_delay"),
        (
            vec![("delay", "99999999999999999999999")],
            "is not a duration",
        ),
        (vec![("delay", "soon")], "is not a duration"),
        (vec![("at", "garbage")], "is not a time"),
        (vec![("at", &past)], "is in the past"),
        (vec![("at", "2020-01-01T00:00:00Z")], "is in the past"),
        (vec![("at", "2099-01-01T00:00:00Z")], "delivery.max_delay"),
        (vec![("at", "2030-01-01T09:00:00")], "no time zone"),
        (vec![("at", "1e9")], "is not a time"),
        (vec![("delay", "1h"), ("at", "1")], "not both"),
    ];
    for (fields, why) in &cases {
        let mut query = vec![("token", token.as_str()), ("title", "x")];
        query.extend(fields.iter().copied());
        let body = assert_error(app.send_get(&query).await, 400, "bad_request").await;
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{fields:?}: {body}");
        assert!(!message.contains(&token), "{body}");
        // The same in JSON.
        let mut object = serde_json::Map::new();
        object.insert("title".into(), json!("x"));
        for (k, v) in fields {
            object.insert((*k).into(), json!(v));
        }
        assert_error(
            app.send_json(Some(&token), &Value::Object(object)).await,
            400,
            "bad_request",
        )
        .await;
    }
    let path = format!("/{token}");
    for (name, value) in [
        ("X-Delay", "garbage"),
        ("X-At", past.as_str()),
        ("X-In", "-5m"),
        ("Delay", "400d"),
        ("At", "25:00"),
    ] {
        let resp = app
            .http
            .post(app.url(&path))
            .header(name, value)
            .body("x")
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["http"], 400, "ntfy's error shape: {body}");
    }
    // JSON with a number that is no time.
    assert_error(
        app.send_json(Some(&token), &json!({"title": "x", "delay": -1}))
            .await,
        400,
        "bad_request",
    )
    .await;
    let mut conn = db::connect(app.store_url()).await;
    let stored: i64 = sqlx::Row::get(
        &sqlx::query("SELECT count(*) AS n FROM messages")
            .fetch_one(&mut conn)
            .await
            .unwrap(),
        "n",
    );
    assert_eq!(stored, 0, "a refused time stores nothing");
}

// ------------------------------------------------------------------------------------------
// idempotency
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_retried_schedule_is_the_same_message_and_another_schedule_is_not() {
    let app = spawn_app().await;
    let token = app.get_token(&userid("retry-later")).await;
    let send = |delay: &'static str| {
        let app = &app;
        let token = token.clone();
        async move {
            app.http
                .post(app.url("/send"))
                .bearer_auth(&token)
                .header("Idempotency-Key", "nightly")
                .json(&json!({"title": "report", "delay": delay}))
                .send()
                .await
                .unwrap()
        }
    };
    let first = ok_json(send("1h").await).await;
    assert_eq!(first["status"], "scheduled");
    // The same request a moment later: the same message, not one an instant later.
    let again = ok_json(send("1h").await).await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["deliver_at"], first["deliver_at"]);
    assert_error(send("2h").await, 409, "conflict").await;
}

/// The furthest a message may be scheduled is a setting; the count by status is there.
#[tokio::test]
async fn scheduled_messages_are_listed_and_counted() {
    let app = spawn_app_with(|c| c.server.metrics = true).await;
    let token = app.get_token(&userid("counted")).await;
    let mut ids = BTreeMap::new();
    for delay in ["1h", "2h"] {
        let id = scheduled_id(
            app.send_get(&[("token", &token), ("title", delay), ("delay", delay)])
                .await,
        )
        .await;
        ids.insert(id, delay);
    }
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("pushbot_queue_scheduled 2"), "{metrics}");
    assert!(metrics.contains("pushbot_queue_depth 0"), "{metrics}");
    let body = assert_error(
        app.messages(&[("token", &token), ("status", "later")])
            .await,
        400,
        "bad_request",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("scheduled, queued, delivered, failed, cancelled"),
        "{body}"
    );
}
