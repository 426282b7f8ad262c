//! Acknowledgements and escalation (issue 30): `/send` with `ack=true` or `escalate=…`, the
//! acknowledgement by `POST /messages/{id}/ack` and by `ack` / `收到` in the chat, and the
//! escalation to the member's next channel (e-mail, on what the SMTP sink received) when
//! nobody acknowledges — once, and not at all after an acknowledgement.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::db;
use crate::helpers::*;
use crate::smtp::SmtpSink;

/// The gateway with e-mail, escalations allowed from one second on.
async fn ack_app() -> (TestApp, SmtpSink) {
    let sink = SmtpSink::start().await;
    let port = sink.port;
    let app = spawn_app_with(|c| {
        c.email = Some(local_email(port));
        c.ack.escalate_min = Duration::from_secs(1);
        c.server.metrics = true;
    })
    .await;
    (app, sink)
}

async fn send(api: &Api, token: &str, body: &Value) -> (u16, Value) {
    let resp = api.send_json(Some(token), body).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON answer"))
}

async fn send_ok(api: &Api, token: &str, body: &Value) -> String {
    let (status, answer) = send(api, token, body).await;
    assert_eq!(status, 200, "{answer}");
    answer["id"].as_str().expect("an id").to_owned()
}

async fn post_ack(api: &Api, id: &str, token: &str) -> (u16, Value) {
    let resp = http_client()
        .post(api.url(&format!("/messages/{id}/ack")))
        .bearer_auth(token)
        .send()
        .await
        .expect("POST /messages/{id}/ack");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON answer"))
}

async fn acks_stored(app: &TestApp) -> i64 {
    let mut conn = db::connect(app.store_url()).await;
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM acks")
        .fetch_one(&mut conn)
        .await
        .expect("count acks")
}

#[tokio::test]
async fn ack_and_escalate_are_checked_in_every_form_and_a_bad_one_stores_nothing() {
    let (app, _sink) = ack_app().await;
    let user = userid("ackform");
    let token = app.get_token(&user).await;
    for (body, needle) in [
        (json!({"title": "t", "ack": "maybe"}), "ack \"maybe\""),
        (json!({"title": "t", "escalate": "soon"}), "not a duration"),
        (
            json!({"title": "t", "escalate": "500ms"}),
            "between 1s and 1day",
        ),
        (
            json!({"title": "t", "escalate": "25h"}),
            "between 1s and 1day",
        ),
        (json!({"title": "t", "ack": [true]}), ""),
    ] {
        let (status, answer) = send(&app, &token, &body).await;
        assert_eq!(status, 400, "{body} → {answer}");
        let error = answer["message"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{body}: {error:?} names {needle:?}");
    }
    // Query and form spellings, and JSON's own types.
    let q = app
        .send_get(&[("token", &token), ("title", "q"), ("ack", "1")])
        .await;
    assert_eq!(q.status(), 200);
    let form = http_client()
        .post(app.url("/send"))
        .bearer_auth(&token)
        .form(&[("title", "f"), ("escalate", "90")])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    send_ok(&app, &token, &json!({"title": "j", "ack": true})).await;
    send_ok(&app, &token, &json!({"title": "j", "ack": false})).await;
    assert_eq!(
        acks_stored(&app).await,
        3,
        "three asked, one said no, the 400s none"
    );
}

#[tokio::test]
async fn the_owner_acknowledges_once_over_the_api_and_others_cannot() {
    let (app, _sink) = ack_app().await;
    let user = userid("ackapi");
    let token = app.get_token(&user).await;
    let id = send_ok(&app, &token, &json!({"title": "disk full", "ack": true})).await;
    let shown = app.message_json(&id, &token).await;
    assert_eq!(shown["ack"]["required"], true, "{shown}");
    assert!(shown["ack"]["acked_at"].is_null(), "{shown}");

    let (status, first) = post_ack(&app, &id, &token).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["ack"]["acked_by"], user.as_str(), "{first}");
    assert_eq!(first["ack"]["via"], "api", "{first}");
    let at = first["ack"]["acked_at"]
        .as_str()
        .expect("acked_at")
        .to_owned();

    let (status, again) = post_ack(&app, &id, &token).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["ack"]["acked_at"],
        at.as_str(),
        "a second ack changes nothing"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("pushbot_acknowledgements_total{via=\"api\"} 1"),
        "counted once:\n{metrics}"
    );
    assert!(
        metrics.contains("pushbot_time_to_acknowledge_seconds_count 1"),
        "{metrics}"
    );

    let plain = send_ok(&app, &token, &json!({"title": "no ack asked"})).await;
    let (status, answer) = post_ack(&app, &plain, &token).await;
    assert_eq!(status, 409, "{answer}");
    assert!(app.message_json(&plain, &token).await["ack"].is_null());

    let other = app.get_token(&userid("ackother")).await;
    let (status, answer) = post_ack(&app, &id, &other).await;
    assert_eq!(status, 404, "someone else's message: {answer}");
    let (status, _) = post_ack(&app, "no-such-id", &token).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn ack_in_the_chat_acknowledges_the_latest_waiting_message() {
    let (app, _sink) = ack_app().await;
    let user = userid("ackchat");
    let token = app.get_token(&user).await;
    let first = send_ok(&app, &token, &json!({"title": "first", "ack": true})).await;
    let second = send_ok(&app, &token, &json!({"title": "second", "ack": true})).await;

    let reply = say(&app, &user, "收到").await;
    assert_says(&reply, "second", "`收到` names what it acknowledged");
    let shown = app.message_json(&second, &token).await;
    assert_eq!(shown["ack"]["via"], "chat", "{shown}");
    assert!(app.message_json(&first, &token).await["ack"]["acked_at"].is_null());

    let reply = say(&app, &user, "ack").await;
    assert_says(&reply, "first", "then the one before");
    let reply = say(&app, &user, "ack").await;
    assert_says(&reply, "No message is waiting", "nothing left");
}

/// Waits until the message shows its escalation step.
async fn wait_escalated(app: &Api, id: &str, token: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let shown = app.message_json(id, token).await;
        if shown["ack"]["escalations"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
        {
            return shown;
        }
        assert!(Instant::now() < deadline, "not escalated: {shown}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_unacknowledged_message_is_escalated_to_email_once() {
    let (app, sink) = ack_app().await;
    let user = userid("ackesc");
    let token = app.get_token(&user).await;
    let address = bind_email(&app, &sink, &user).await;
    // The member's order: WeCom, then e-mail.
    say(&app, &user, "fallback wecom,email").await;
    let id = send_ok(
        &app,
        &token,
        &json!({"title": "db down", "content": "primary lost", "escalate": "2s"}),
    )
    .await;
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(
        sink.mails_to(&address).len(),
        1,
        "only the code mail so far"
    );

    let shown = wait_escalated(&app, &id, &token).await;
    let step = &shown["ack"]["escalations"][0];
    assert_eq!(step["step"], 1, "{shown}");
    let sent = step["message"]
        .as_str()
        .expect("the escalation's message")
        .to_owned();
    let mails = sink.wait_for_mails_to(&address, 2, WAIT).await;
    assert!(
        mails[1].subject().contains("未确认") && mails[1].subject().contains("db down"),
        "{}",
        mails[1].raw()
    );
    let escalation = app.message_json(&sent, &token).await;
    assert_eq!(escalation["resent_from"], id.as_str(), "{escalation}");
    assert_eq!(
        escalation["ack"]["message"],
        id.as_str(),
        "it acknowledges the original"
    );

    // Once: nothing more however long it stays unacknowledged.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sink.mails_to(&address).len(), 2, "one escalation");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("pushbot_escalations_total{step=\"1\"} 1"),
        "{metrics}"
    );
    // The loop that did it reports to /healthz.
    let health: Value = app.healthz().await.unwrap().json().await.unwrap();
    assert_eq!(health["escalation"]["panics"], 0, "{health}");
    assert!(
        health["escalation"]["last_pass_seconds_ago"]
            .as_f64()
            .is_some_and(|s| s < 5.0),
        "{health}"
    );
    // Acknowledging the escalation acknowledges the message.
    let (status, acked) = post_ack(&app, &sent, &token).await;
    assert_eq!(status, 200, "{acked}");
    assert!(app.message_json(&id, &token).await["ack"]["acked_at"].is_string());
}

#[tokio::test]
async fn an_acknowledged_message_is_not_escalated() {
    let (app, sink) = ack_app().await;
    let user = userid("ackstop");
    let token = app.get_token(&user).await;
    let address = bind_email(&app, &sink, &user).await;
    say(&app, &user, "fallback wecom,email").await;
    let id = send_ok(&app, &token, &json!({"title": "seen", "escalate": "2s"})).await;
    let (status, _) = post_ack(&app, &id, &token).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(sink.mails_to(&address).len(), 1, "only the code mail");
    let shown = app.message_json(&id, &token).await;
    assert!(shown["ack"]["escalations"].is_null(), "{shown}");
}

#[tokio::test]
async fn without_another_channel_the_step_is_recorded_and_nothing_is_sent_again() {
    let (app, _sink) = ack_app().await;
    let user = userid("acknone");
    let token = app.get_token(&user).await;
    let id = send_ok(
        &app,
        &token,
        &json!({"title": "only wecom", "escalate": "1s"}),
    )
    .await;
    let shown = wait_escalated(&app, &id, &token).await;
    assert!(
        shown["ack"]["escalations"][0]["message"].is_null(),
        "{shown}"
    );
    let to_member = app
        .mock
        .delivered_calls()
        .iter()
        .filter(|c| c.touser() == user)
        .count();
    assert_eq!(
        to_member, 1,
        "the message once, no escalation on WeCom again"
    );
}

/// `kill -9` between the acceptance and the escalation time: the step is in the database,
/// and the restarted process takes it once.
#[tokio::test]
async fn an_escalation_due_across_a_kill9_runs_once_after_the_restart() {
    let mock = MockWeCom::start().await;
    let sink = SmtpSink::start().await;
    let config = settings_with(|c| {
        c.email = Some(local_email(sink.port));
        c.ack.escalate_min = Duration::from_secs(1);
    });
    let setup = bin_setup(&config, &mock.base_url);
    let mut bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    let user = userid("ack9");
    let token = bin.get_token(&user).await;
    let address = bind_email(&bin, &sink, &user).await;
    say(&bin, &user, "fallback wecom,email").await;
    let id = send_ok(&bin, &token, &json!({"title": "k9", "escalate": "2s"})).await;
    bin.kill9();
    // Due while nothing runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    let shown = wait_escalated(&bin, &id, &token).await;
    assert!(
        shown["ack"]["escalations"][0]["message"].is_string(),
        "{shown}"
    );
    sink.wait_for_mails_to(&address, 2, WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sink.mails_to(&address).len(),
        2,
        "the code mail and one escalation"
    );
}

/// A panic in the escalation loop (a bug) is counted in `/healthz` and the loop restarted:
/// a message due after it is still escalated.
#[tokio::test]
async fn a_panicking_escalation_loop_is_restarted_and_still_escalates() {
    let (app, sink) = ack_app().await;
    app.faults()
        .arm(pushbot::supervise::FaultPoint::EscalationPanic, 1);
    let deadline = Instant::now() + WAIT;
    loop {
        let health: Value = app.healthz().await.unwrap().json().await.unwrap();
        if health["escalation"]["panics"] == 1 {
            assert_eq!(health["status"], "ok", "{health}");
            break;
        }
        assert!(Instant::now() < deadline, "the fault trips: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let user = userid("ackpanic");
    let token = app.get_token(&user).await;
    let address = bind_email(&app, &sink, &user).await;
    say(&app, &user, "fallback wecom,email").await;
    let id = send_ok(&app, &token, &json!({"title": "after", "escalate": "1s"})).await;
    wait_escalated(&app, &id, &token).await;
    sink.wait_for_mails_to(&address, 2, WAIT).await;
}

/// Titles of the messages that ask to be acknowledged.
async fn asking_titles(app: &TestApp) -> Vec<String> {
    let mut conn = db::connect(app.store_url()).await;
    let mut titles: Vec<String> = sqlx::query_scalar::<_, String>(
        "SELECT m.title FROM acks a JOIN messages m ON m.id = a.message_id",
    )
    .fetch_all(&mut conn)
    .await
    .expect("read acks");
    titles.sort();
    titles
}

/// The drop-in routes' own urgency asks for an acknowledgement (`[ack]` defaults): ntfy
/// priority 5, Bark `critical`, gotify 8 and above, a firing alert of severity `critical`;
/// lower ones do not.
#[tokio::test]
async fn urgent_drop_in_messages_and_critical_alerts_ask_to_be_acknowledged() {
    let (app, _sink) = ack_app().await;
    let user = userid("ackcompat");
    let token = app.get_token(&user).await;
    let http = http_client();
    let ok = |resp: reqwest::Response| async move {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "{status}: {body}");
    };
    for (priority, title) in [("5", "ntfy-5"), ("4", "ntfy-4")] {
        ok(http
            .post(app.url(&format!("/{token}")))
            .header("X-Title", title)
            .header("X-Priority", priority)
            .body("x")
            .send()
            .await
            .unwrap())
        .await;
    }
    for (level, title) in [("critical", "bark-critical"), ("active", "bark-active")] {
        ok(http
            .get(app.url(&format!("/{token}/{title}/body")))
            .query(&[("level", level)])
            .send()
            .await
            .unwrap())
        .await;
    }
    for (priority, title) in [(8, "gotify-8"), (5, "gotify-5")] {
        ok(http
            .post(app.url("/message"))
            .query(&[("token", token.as_str())])
            .json(&json!({"title": title, "message": "x", "priority": priority}))
            .send()
            .await
            .unwrap())
        .await;
    }
    for severity in ["critical", "warning"] {
        let alert = json!({
            "version": "4",
            "status": "firing",
            "receiver": "pushbot",
            "groupLabels": {"alertname": format!("am-{severity}")},
            "commonLabels": {"alertname": format!("am-{severity}"), "severity": severity},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager.local",
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": format!("am-{severity}"), "severity": severity},
                "annotations": {},
                "startsAt": "2026-12-08T01:00:00Z"
            }]
        });
        ok(http
            .post(app.url("/hooks/alertmanager"))
            .query(&[("token", token.as_str())])
            .json(&alert)
            .send()
            .await
            .unwrap())
        .await;
    }
    let titles = asking_titles(&app).await;
    assert_eq!(titles.len(), 4, "{titles:?}");
    for wanted in ["ntfy-5", "bark-critical", "gotify-8", "am-critical"] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "{wanted} asks: {titles:?}"
        );
    }
}

/// Every byte percent-encoded: any bytes reach the path as they are.
fn encoded(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// `POST /messages/{id}/ack` and `/send`'s `ack`/`escalate` with hostile input: random
/// bytes, huge and invisible text, NUL, unknown fields, far-off durations. Never a 5xx, and
/// nothing changes: the one message that asks stays unacknowledged, no other asks.
#[tokio::test]
async fn hostile_acks_never_get_a_5xx_and_change_nothing() {
    let (app, _sink) = ack_app().await;
    let user = userid("ackhostile");
    let token = app.get_token(&user).await;
    let id = send_ok(&app, &token, &json!({"title": "real", "ack": true})).await;
    let http = http_client();
    // A small generator (reproducible): random byte strings of every length up to 300.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut ids: Vec<String> = (0..200)
        .map(|_| {
            let len = usize::try_from(next() % 300).unwrap();
            let bytes: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
            encoded(&bytes)
        })
        .collect();
    ids.extend([
        "%00".to_owned(),
        "a".repeat(60_000),
        encoded("\u{200b}\u{2060}\u{feff}".repeat(2000).as_bytes()),
        encoded(format!("{id}\u{200b}").as_bytes()),
        encoded(format!("{id}\0").as_bytes()),
        "..%2F..%2Fetc%2Fpasswd".to_owned(),
        encoded("🚨".repeat(500).as_bytes()),
    ]);
    for hostile in &ids {
        let resp = http
            .post(app.url(&format!("/messages/{hostile}/ack")))
            .query(&[("token", token.as_str()), ("unknown", "x"), ("_", "1")])
            .send()
            .await
            .expect("an answer");
        let status = resp.status();
        assert!(
            !status.is_server_error(),
            "{status} for id {}…",
            hostile.chars().take(60).collect::<String>()
        );
    }
    // Hostile tokens, the real id.
    for hostile in ["", "\u{200b}", &"x".repeat(60_000), "%00"] {
        let resp = http
            .post(app.url(&format!("/messages/{id}/ack")))
            .query(&[("token", hostile)])
            .send()
            .await
            .expect("an answer");
        assert!(!resp.status().is_server_error(), "{}", resp.status());
        assert!(resp.status().is_client_error(), "{}", resp.status());
    }
    // /send's fields: far-off, huge, invisible, wrong types.
    for body in [
        json!({"title": "h", "escalate": "99999999999d"}),
        json!({"title": "h", "escalate": "1e400"}),
        json!({"title": "h", "escalate": 1e300}),
        json!({"title": "h", "escalate": -1}),
        json!({"title": "h", "escalate": "9999-12-31T23:59:59Z"}),
        json!({"title": "h", "escalate": "\u{200b}".repeat(10_000)}),
        json!({"title": "h", "ack": "y".repeat(100_000)}),
        json!({"title": "h", "ack": {"nested": true}}),
        json!({"title": "h", "ack": "\u{0000}"}),
        json!({"title": "h", "acknowledge": true}),
    ] {
        let (status, answer) = send(&app, &token, &body).await;
        assert!(
            (400..500).contains(&status),
            "{status} for {body}: {answer}"
        );
    }
    assert_eq!(acks_stored(&app).await, 1, "nothing else asks");
    assert!(app.message_json(&id, &token).await["ack"]["acked_at"].is_null());
}
