//! Quiet hours (免打扰) from the outside: set in the chat as a member types them, they hold
//! a member's messages until the window ends — on every route, at acceptance and at
//! attempt time — let urgent ones through unless `strict`, and release the held messages
//! when the window ends (as one digest when several waited, with the member limits that
//! make digests) or at once when the member turns them off. The server's
//! `delivery.quiet_hours` applies to members who set nothing.
//!
//! What the member received is judged by what the mock WeCom received and when, never by
//! what the gateway says about itself. Windows are real: a window around now (two hours
//! long) for what must be held, and a window that ends seconds from now — at an offset
//! chosen so that the member's clock is seconds before a whole minute — for its end.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::helpers::*;
use crate::mock_wecom::SendCall;

struct Member {
    user: String,
    token: String,
}

async fn member(api: &Api, prefix: &str) -> Member {
    let user = userid(prefix);
    let token = api.get_token(&user).await;
    Member { user, token }
}

/// The `/send` rate limit out of the way.
fn unthrottled(c: &mut Settings) {
    c.server.send_rate = SendRate {
        count: 1_000_000,
        per: Duration::from_secs(1),
    };
}

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_millis()).expect("milliseconds fit")
}

/// `HH:MM` of minutes after midnight.
fn clock(minutes: i64) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// `+08:00`, `-05:17:23` of seconds east of UTC.
fn offset_text(secs: i64) -> String {
    let sign = if secs < 0 { '-' } else { '+' };
    let a = secs.abs();
    let (h, m, s) = (a / 3600, a / 60 % 60, a % 60);
    if s == 0 {
        format!("{sign}{h:02}:{m:02}")
    } else {
        format!("{sign}{h:02}:{m:02}:{s:02}")
    }
}

/// A window around now at `offset` seconds east of UTC: from an hour ago to an hour from
/// now (across midnight when it falls there), and when it ends (unix ms).
fn window_around_now(offset: i64) -> (String, i64) {
    let now = now_ms();
    let local = (now + offset * 1000).rem_euclid(DAY_MS);
    let minute = local / 60_000;
    let (start, end) = ((minute + 1440 - 60) % 1440, (minute + 60) % 1440);
    let ahead = (end * 60_000 - local).rem_euclid(DAY_MS);
    (format!("{}-{}", clock(start), clock(end)), now + ahead)
}

/// An offset (seconds east of UTC) at which it is `seconds` before 12:01 now, and when that
/// is (unix ms): the window `12:00-12:01` there ends that many seconds from now.
fn offset_ending_in(seconds: i64) -> (i64, i64) {
    let now = now_ms();
    let utc_secs = now.div_euclid(1000).rem_euclid(86_400);
    let target = 12 * 3600 + 60 - seconds;
    // Normalised to [-12 h, 12 h): every time of day is reachable within ±14 h.
    let offset = (target - utc_secs + 12 * 3600).rem_euclid(86_400) - 12 * 3600;
    let end = now.div_euclid(1000) * 1000 + seconds * 1000;
    (offset, end)
}

/// Unix ms of an RFC 3339 time as `GET /messages/{id}` writes it.
fn unix_ms(rfc3339: &Value) -> i64 {
    let text = rfc3339
        .as_str()
        .unwrap_or_else(|| panic!("an RFC 3339 time: {rfc3339}"));
    let at = humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    i64::try_from(
        at.duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("milliseconds fit")
}

/// `/send` with a title: the message's id, after checking the answer's status.
async fn send(app: &TestApp, token: &str, title: &str, status: &str) -> String {
    let resp = app
        .http
        .post(app.url("/send"))
        .bearer_auth(token)
        .json(&json!({ "title": title }))
        .send()
        .await
        .expect("POST /send");
    assert_eq!(resp.status(), 200, "{title}");
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["status"], status, "{title}: {body}");
    body["id"].as_str().expect("an id").to_owned()
}

/// ntfy's `POST /{token}` with `X-Priority`: the message's id.
async fn ntfy(app: &TestApp, token: &str, priority: &str, text: &str) -> String {
    let resp = app
        .http
        .post(app.url(&format!("/{token}")))
        .header("X-Priority", priority)
        .body(text.to_owned())
        .send()
        .await
        .expect("ntfy POST");
    assert_eq!(resp.status(), 200, "{text}");
    let body: Value = resp.json().await.expect("JSON");
    body["id"].as_str().expect("an id").to_owned()
}

/// Bark's `GET /{key}/{title}/{body}?level=…`.
async fn bark(app: &TestApp, token: &str, level: &str, title: &str) {
    let resp = app
        .http
        .get(app.url(&format!("/{token}/{title}/body?level={level}")))
        .send()
        .await
        .expect("Bark GET");
    assert_eq!(resp.status(), 200, "{title}");
}

/// The member's messages with that status (newest first).
async fn listed(app: &TestApp, token: &str, status: &str) -> Vec<Value> {
    let resp = app
        .messages(&[("token", token), ("status", status), ("limit", "100")])
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    body["messages"].as_array().cloned().unwrap_or_default()
}

/// What the member received, in order of arrival.
fn received(app: &TestApp, user: &str) -> Vec<SendCall> {
    app.mock
        .delivered_calls()
        .into_iter()
        .filter(|c| c.touser() == user)
        .collect()
}

/// Waits until the member has received `n` messages; panics after `timeout`.
async fn wait_received(app: &TestApp, user: &str, n: usize, timeout: Duration) -> Vec<SendCall> {
    let deadline = Instant::now() + timeout;
    loop {
        let calls = received(app, user);
        if calls.len() >= n {
            return calls;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} messages for {user} within {timeout:?}, got {calls:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A held message, as `GET /messages/{id}` shows it: scheduled for quiet hours, due at
/// `end`.
async fn assert_held(app: &TestApp, id: &str, token: &str, end: i64) {
    let body = app.message_json(id, token).await;
    assert_eq!(body["status"], "scheduled", "{body}");
    assert_eq!(body["held"], "quiet", "{body}");
    assert_eq!(
        unix_ms(&body["deliver_at"]),
        end,
        "due at the window's end: {body}"
    );
}

/// A window around now holds a normal message on `/send` and on the drop-in routes (due
/// at the window's end, nothing sent), and lets urgent ones through at once: ntfy
/// priority 5 and `urgent`, Bark `critical`.
#[tokio::test]
async fn a_window_holds_normal_messages_and_lets_urgent_ones_through() {
    let app = spawn_app_with(unthrottled).await;
    let m = member(&app, "quiet").await;
    // The server's offset (+08:00): the member set none.
    let (window, end) = window_around_now(8 * 3600);
    let reply = say(&app, &m.user, &format!("quiet {window}")).await;
    assert_says(
        &reply,
        &format!("Quiet hours set: {window}（UTC+08:00）"),
        "the window",
    );
    assert_says(&reply, "免打扰已设为", "in Chinese too");
    assert_says(
        &reply,
        &format!("messages wait until {}", &window[6..]),
        "quiet now",
    );

    let normal = send(&app, &m.token, "normal one", "scheduled").await;
    assert_held(&app, &normal, &m.token, end).await;
    let ntfy_normal = ntfy(&app, &m.token, "3", "ntfy default").await;
    assert_held(&app, &ntfy_normal, &m.token, end).await;
    bark(&app, &m.token, "active", "bark-active").await;

    let urgent = ntfy(&app, &m.token, "5", "ntfy five").await;
    ntfy(&app, &m.token, "urgent", "ntfy urgent").await;
    bark(&app, &m.token, "critical", "bark-critical").await;
    let calls = wait_received(&app, &m.user, 3, WAIT).await;
    let texts: Vec<&str> = calls.iter().map(SendCall::text).collect();
    for want in ["ntfy five", "ntfy urgent", "bark-critical"] {
        assert!(texts.iter().any(|t| t.contains(want)), "{want}: {texts:?}");
    }
    let body = app
        .wait_for_status(&urgent, &m.token, "delivered", WAIT)
        .await;
    assert_eq!(body["urgent"], true, "{body}");
    // And nothing else, a while later: the held ones are still held.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let texts: Vec<String> = received(&app, &m.user)
        .iter()
        .map(|c| c.text().to_owned())
        .collect();
    assert_eq!(texts.len(), 3, "only the urgent ones: {texts:?}");
    assert_held(&app, &normal, &m.token, end).await;
    let held = listed(&app, &m.token, "scheduled").await;
    assert_eq!(held.len(), 3, "/send, ntfy and Bark: {held:#?}");
    for message in &held {
        assert_eq!(message["held"], "quiet", "{message}");
        assert_eq!(unix_ms(&message["deliver_at"]), end, "{message}");
    }
}

/// `strict`: urgent messages wait too.
#[tokio::test]
async fn strict_quiet_hours_hold_urgent_messages_too() {
    let app = spawn_app_with(unthrottled).await;
    let m = member(&app, "strict").await;
    let (window, end) = window_around_now(8 * 3600);
    let reply = say(&app, &m.user, &format!("免打扰 {window} 严格")).await;
    assert_says(&reply, &format!("{window} strict"), "strict");
    assert_says(&reply, "urgent ones too", "what strict means");
    let urgent = ntfy(&app, &m.token, "5", "fire").await;
    assert_held(&app, &urgent, &m.token, end).await;
    bark(&app, &m.token, "critical", "critical").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        received(&app, &m.user).is_empty(),
        "nothing gets through a strict window"
    );
    assert_eq!(listed(&app, &m.token, "scheduled").await.len(), 2);
    let status = say(&app, &m.user, "status").await;
    assert_says(
        &status,
        &format!("quiet: {window} strict（你的设置 yours）"),
        "status shows the window",
    );
    assert_says(
        &status,
        "timezone: UTC+08:00（默认 default）",
        "and the offset",
    );
}

/// A window that ends 4 s from now: the messages it holds arrive when it ends and not a
/// moment before — several as one digest carrying every one of them, at the default member
/// limits and `digest_after` (by which alone, having room, they would go one by one) —
/// while an urgent one came through at once, alone.
#[tokio::test]
async fn the_end_of_the_window_releases_the_held_messages_as_one_digest() {
    let app = spawn_app_with(|c| {
        c.delivery.digest_after = pushbot::config::DeliverySettings::default().digest_after;
        unthrottled(c);
    })
    .await;
    let m = member(&app, "release").await;
    let (offset, end) = offset_ending_in(4);
    let ends = Instant::now() + Duration::from_millis(u64::try_from(end - now_ms()).unwrap_or(0));
    let reply = say(&app, &m.user, &format!("时区 {}", offset_text(offset))).await;
    assert_says(&reply, &format!("UTC{}", offset_text(offset)), "the offset");
    let reply = say(&app, &m.user, "quiet 12:00-12:01").await;
    assert_says(&reply, "messages wait until 12:01", "quiet now");

    let titles = ["held one 一", "held two 二", "held three 三"];
    let mut ids = Vec::new();
    for title in titles {
        ids.push(send(&app, &m.token, title, "scheduled").await);
    }
    assert_held(&app, &ids[0], &m.token, end).await;
    ntfy(&app, &m.token, "5", "urgent in between").await;
    let calls = wait_received(&app, &m.user, 1, WAIT).await;
    assert!(calls[0].text().contains("urgent in between"), "{calls:#?}");
    assert!(calls[0].received_at < ends, "the urgent one came at once");

    let calls = wait_received(&app, &m.user, 2, Duration::from_secs(4) + WAIT).await;
    let digest = &calls[1];
    assert!(
        digest.received_at >= ends,
        "a held message arrived {:?} before the window ended",
        ends.duration_since(digest.received_at)
    );
    for title in titles {
        assert!(
            digest.text().contains(title),
            "{title} in {}",
            digest.text()
        );
    }
    // One digest, not a flood: nothing else arrives.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        received(&app, &m.user).len(),
        2,
        "{:#?}",
        received(&app, &m.user)
    );
    let mut via = Vec::new();
    for id in &ids {
        let body = app.wait_for_status(id, &m.token, "delivered", WAIT).await;
        assert!(body["via"].is_string(), "carried by the digest: {body}");
        assert!(unix_ms(&body["delivered_at"]) >= end, "{body}");
        via.push(body["via"].clone());
    }
    via.dedup();
    assert_eq!(via.len(), 1, "one digest carried them all: {via:?}");
}

/// `quiet off` sends what the window held at once, and what comes next is not held.
#[tokio::test]
async fn quiet_off_releases_the_held_messages_at_once() {
    let app = spawn_app_with(unthrottled).await;
    let m = member(&app, "off").await;
    let (window, end) = window_around_now(8 * 3600);
    say(&app, &m.user, &format!("quiet {window}")).await;
    let first = send(&app, &m.token, "first held", "scheduled").await;
    let second = send(&app, &m.token, "second held", "scheduled").await;
    assert_held(&app, &second, &m.token, end).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(received(&app, &m.user).is_empty());

    let reply = say(&app, &m.user, "quiet off").await;
    assert_says(&reply, "Quiet hours off", "off");
    assert_says(
        &reply,
        "2 waiting message(s) are on their way now",
        "the held ones",
    );
    let calls = wait_received(&app, &m.user, 2, WAIT).await;
    let texts: Vec<&str> = calls.iter().map(SendCall::text).collect();
    assert!(
        texts[0].contains("first held") && texts[1].contains("second held"),
        "in order: {texts:?}"
    );
    for id in [&first, &second] {
        app.wait_for_status(id, &m.token, "delivered", WAIT).await;
    }
    send(&app, &m.token, "after", "queued").await;
    wait_received(&app, &m.user, 3, WAIT).await;
    let status = say(&app, &m.user, "status").await;
    assert_says(
        &status,
        "quiet: off（无 none）（你的设置 yours）",
        "off is the member's",
    );
}

/// `delivery.quiet_hours` holds the messages of members who set nothing; `免打扰 关` turns
/// it off for one member (and releases what it held), `quiet default` brings it back.
#[tokio::test]
async fn the_servers_quiet_hours_apply_unless_the_member_turns_them_off() {
    let (window, end) = window_around_now(-5 * 3600);
    let server_window = window.clone();
    let app = spawn_app_with(move |c| {
        c.delivery.quiet_hours = Some(server_window.parse().expect("a window"));
        c.delivery.utc_offset = -5 * 3600;
        unthrottled(c);
    })
    .await;
    let m = member(&app, "server").await;
    let other = member(&app, "server").await;
    let held = send(&app, &m.token, "held by the server", "scheduled").await;
    assert_held(&app, &held, &m.token, end).await;
    send(&app, &other.token, "held for the other", "scheduled").await;
    let status = say(&app, &m.user, "状态").await;
    assert_says(
        &status,
        &format!("quiet: {window}（默认 default）"),
        "the server's",
    );
    assert_says(
        &status,
        "timezone: UTC-05:00（默认 default）",
        "the server's offset",
    );
    let shown = say(&app, &m.user, "免打扰").await;
    assert_says(
        &shown,
        &format!("Quiet hours: {window}（UTC-05:00）（默认 default）"),
        "shown",
    );

    let reply = say(&app, &m.user, "免打扰 关").await;
    assert_says(&reply, "免打扰已关闭", "off");
    wait_received(&app, &m.user, 1, WAIT).await;
    app.wait_for_status(&held, &m.token, "delivered", WAIT)
        .await;
    send(&app, &m.token, "not held", "queued").await;
    wait_received(&app, &m.user, 2, WAIT).await;
    // The other member still has the server's quiet hours.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(received(&app, &other.user).is_empty());

    let reply = say(&app, &m.user, "quiet default").await;
    assert_says(
        &reply,
        &format!("{window}（UTC-05:00）（默认 default）"),
        "back",
    );
    send(&app, &m.token, "held again", "scheduled").await;
}

/// Messages accepted before the window was set (here: behind a head in backoff after
/// WeCom was busy) are held when their turn comes, not sent; an urgent message among them
/// still goes — alone, not in a digest that would carry the held ones with it (member
/// limits of 1 a second and `digest_after = "1s"` would make one).
#[tokio::test]
async fn a_backlog_that_reaches_the_window_is_held_at_its_turn() {
    let app = spawn_app_with(|c| {
        c.delivery.retry_window = Duration::from_secs(60);
        c.delivery.backoff_initial = Duration::from_secs(3);
        c.delivery.backoff_max = Duration::from_secs(3);
        c.wecom.member_limits = member_limits(&[(1, Duration::from_secs(1))]);
        c.delivery.digest_after = Some(Duration::from_secs(1));
        unthrottled(c);
    })
    .await;
    let m = member(&app, "backlog").await;
    app.mock.push_replies_for(
        &m.user,
        [SendReply::errcode(45009, "api freq out of limit")],
    );
    let first = send(&app, &m.token, "accepted before", "queued").await;
    app.mock.wait_for_send_started(1, WAIT).await;
    let urgent = ntfy(&app, &m.token, "5", "urgent behind").await;
    let second = send(&app, &m.token, "also before", "queued").await;
    let (window, end) = window_around_now(8 * 3600);
    say(&app, &m.user, &format!("quiet {window}")).await;
    // The first one's backoff ends: it is held, the urgent one goes alone, the last one is
    // held.
    let calls = wait_received(&app, &m.user, 1, WAIT).await;
    assert!(calls[0].text().contains("urgent behind"), "{calls:#?}");
    assert!(
        !calls[0].text().contains("before"),
        "a held message went with the urgent one: {}",
        calls[0].text()
    );
    app.wait_for_status(&urgent, &m.token, "delivered", WAIT)
        .await;
    for id in [&first, &second] {
        let body = app.wait_for_status(id, &m.token, "scheduled", WAIT).await;
        assert_eq!(body["held"], "quiet", "{body}");
        assert_eq!(unix_ms(&body["deliver_at"]), end, "{body}");
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        received(&app, &m.user).len(),
        1,
        "the held ones were not sent"
    );
}

/// A message its sender scheduled (`delay`) keeps its time at acceptance; when that time
/// comes inside the member's window, it is held until the window's end — never sent.
#[tokio::test]
async fn a_message_scheduled_into_the_window_is_held_when_its_time_comes() {
    let app = spawn_app_with(unthrottled).await;
    let m = member(&app, "later").await;
    let (window, end) = window_around_now(8 * 3600);
    say(&app, &m.user, &format!("quiet {window}")).await;
    let sent_at = now_ms();
    let resp = app
        .http
        .post(app.url("/send"))
        .bearer_auth(&m.token)
        .json(&json!({ "title": "in two seconds", "delay": "2s" }))
        .send()
        .await
        .expect("POST /send");
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["status"], "scheduled", "{body}");
    let id = body["id"].as_str().expect("an id").to_owned();
    let body = app.message_json(&id, &m.token).await;
    assert!(body.get("held").is_none(), "the sender's time: {body}");
    let due = unix_ms(&body["deliver_at"]);
    assert!((due - sent_at - 2_000).abs() < 1_000, "{body}");
    let deadline = Instant::now() + WAIT;
    let body = loop {
        let body = app.message_json(&id, &m.token).await;
        if body["held"] == "quiet" {
            break body;
        }
        assert!(Instant::now() < deadline, "not held: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["status"], "scheduled", "{body}");
    assert_eq!(unix_ms(&body["deliver_at"]), end, "{body}");
    assert!(now_ms() >= due, "held at its time, not before");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        received(&app, &m.user).is_empty(),
        "never sent in the window"
    );
}

/// A sender's clock time (ntfy's `X-At: 10am`) is read on the member's clock
/// (`timezone …`), not the server's.
#[tokio::test]
async fn a_clock_time_is_the_members_clock() {
    let app = spawn_app_with(unthrottled).await;
    let m = member(&app, "clock").await;
    say(&app, &m.user, "timezone +05:30").await;
    let resp = app
        .http
        .post(app.url(&format!("/{}", m.token)))
        .header("X-At", "10am")
        .body("stand-up")
        .send()
        .await
        .expect("ntfy POST");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    let id = body["id"].as_str().expect("an id").to_owned();
    let body = app.message_json(&id, &m.token).await;
    assert_eq!(body["status"], "scheduled", "{body}");
    // 10:00 at +05:30 is 04:30 UTC.
    let due = unix_ms(&body["deliver_at"]);
    assert_eq!(due.rem_euclid(DAY_MS), (4 * 60 + 30) * 60_000, "{body}");
}

/// What the chat answers to quiet hours and offsets it cannot read, and `help`.
#[tokio::test]
async fn the_chat_explains_what_it_cannot_read() {
    let app = spawn_app().await;
    let m = member(&app, "typo").await;
    let reply = say(&app, &m.user, "quiet 7-7").await;
    assert_says(&reply, "start and end are the same", "empty window");
    assert_says(&reply, "Usage: quiet 23:00-07:00", "usage");
    let reply = say(&app, &m.user, "免打扰 今晚").await;
    assert_says(&reply, "「今晚」", "what was typed");
    let reply = say(&app, &m.user, "timezone Asia/Shanghai").await;
    assert_says(&reply, "is not a UTC offset", "not an offset");
    assert_says(&reply, "timezone +08:00", "usage");
    let status = say(&app, &m.user, "status").await;
    assert_says(
        &status,
        "quiet: off（无 none）（默认 default）",
        "nothing was set",
    );
    let help = say(&app, &m.user, "help").await;
    assert_says(&help, "quiet 23:00-07:00（免打扰）", "help lists quiet");
    assert_says(&help, "timezone +08:00（时区）", "and timezone");
}
