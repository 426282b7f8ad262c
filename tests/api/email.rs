//! E-mail as a second delivery channel: binding an address by a mailed code, the fallback
//! from WeCom to e-mail (and back by choice), the `channel` parameter of `/send`, SMTP
//! failures, and exactly-once delivery across channels and a `kill -9`.
//!
//! Mail is checked on what a real SMTP server (the test sink) accepted, WeCom on what the
//! mock received; never on what the gateway says about itself alone.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::db;
use crate::helpers::*;
use crate::smtp::{Mail, SmtpSink};
use crate::tcp_front::TcpFront;

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

/// A sink, and the gateway with an `[email]` section pointing at it. Short backoffs; the
/// retry window is the harness default (2 s) unless `tweak` says otherwise.
async fn email_app(tweak: impl FnOnce(&mut Settings)) -> (TestApp, SmtpSink) {
    let sink = SmtpSink::start().await;
    let port = sink.port;
    let app = spawn_app_with(|c| {
        c.email = Some(local_email(port));
        c.delivery.backoff_initial = Duration::from_millis(50);
        c.delivery.backoff_max = Duration::from_millis(200);
        c.delivery.probe_max = Duration::from_millis(200);
        tweak(c);
    })
    .await;
    (app, sink)
}

/// A member with a token (and so a row of its own) and an address of its own.
struct Member {
    user: String,
    token: String,
    address: String,
}

async fn member(api: &Api, prefix: &str) -> Member {
    let user = userid(prefix);
    let token = api.get_token(&user).await;
    let address = format!("{user}@example.com");
    Member {
        user,
        token,
        address,
    }
}

/// `user` asks for a code to `address`; asserts the reply and the mail; returns the code.
/// `nth`: how many code mails to `address` there are once this one arrived.
async fn request_code(api: &Api, sink: &SmtpSink, user: &str, address: &str, nth: usize) -> String {
    let reply = say(api, user, &format!("email {address}")).await;
    assert_says(&reply, "code sent", "`email <address>`");
    assert_says(&reply, address, "`email <address>` names the address");
    let mails = sink.wait_for_mails_to(address, nth, WAIT).await;
    let mail = &mails[nth - 1];
    assert_code_mail(mail, address);
    mail.code()
        .unwrap_or_else(|| panic!("the code mail has a 6-digit code:\n{}", mail.raw()))
}

fn assert_code_mail(mail: &Mail, address: &str) {
    assert_eq!(mail.to, vec![address.to_owned()], "envelope recipient");
    assert_eq!(mail.from, "bot@example.com", "envelope sender");
    assert!(
        has(&mail.subject(), "verification code"),
        "subject says it is a verification code: {:?}\n{}",
        mail.subject(),
        mail.raw()
    );
    assert!(
        has(&mail.header("To").unwrap_or_default(), address),
        "To is the address being bound:\n{}",
        mail.raw()
    );
    assert!(
        has(&mail.header("From").unwrap_or_default(), "bot@example.com"),
        "From is the configured sender:\n{}",
        mail.raw()
    );
}

/// Binds `m.address` to `m.user` by code; returns the reply to `verify`.
async fn bind(api: &Api, sink: &SmtpSink, m: &Member) -> String {
    let nth = sink.mails_to(&m.address).len() + 1;
    let code = request_code(api, sink, &m.user, &m.address, nth).await;
    let reply = say(api, &m.user, &format!("verify {code}")).await;
    assert_says(&reply, "bound", "`verify` with the right code");
    reply
}

/// `status` for `user`: asserts its e-mail line says no address is bound.
async fn assert_unbound(api: &Api, user: &str, address: &str, what: &str) {
    let reply = say(api, user, "status").await;
    let email = line(&reply, "email:");
    assert!(
        has(email, "none"),
        "{what}: {user} has no address bound, yet `status` says {email:?}:\n{reply}"
    );
    assert!(
        !has(&reply, address),
        "{what}: `status` shows no address:\n{reply}"
    );
}

/// A code that is not `code`.
fn other_code(code: &str) -> String {
    let n: u32 = code.parse().expect("a numeric code");
    format!("{:06}", (n + 1) % 1_000_000)
}

/// `(channel, outcome)` of each history entry, checking the entry's shape on the way.
fn history(status: &Value) -> Vec<(String, String)> {
    let entries = status["history"]
        .as_array()
        .unwrap_or_else(|| panic!("history is an array: {status}"));
    let now = db::now_ms();
    let mut last_at = i64::MIN;
    entries
        .iter()
        .map(|e| {
            let channel = e["channel"]
                .as_str()
                .unwrap_or_else(|| panic!("history entry has a channel: {e} in {status}"));
            let outcome = e["outcome"]
                .as_str()
                .unwrap_or_else(|| panic!("history entry has an outcome: {e} in {status}"));
            assert!(
                ["retry", "failed", "delivered"].contains(&outcome),
                "outcome is retry|failed|delivered: {e}"
            );
            assert!(
                e["error"].is_null() || e["error"].is_string(),
                "error is a string or null: {e}"
            );
            let at = rfc3339_ms(
                e["at"]
                    .as_str()
                    .unwrap_or_else(|| panic!("history entry has `at`: {e} in {status}")),
            );
            assert!(
                (now - 3_600_000..=now + 60_000).contains(&at),
                "`at` is a time of this test run: {e}"
            );
            assert!(at >= last_at, "history is in time order: {status}");
            last_at = at;
            (channel.to_owned(), outcome.to_owned())
        })
        .collect()
}

/// Unix milliseconds of an RFC 3339 date-time (`Z` or a numeric offset).
fn rfc3339_ms(s: &str) -> i64 {
    let bad = || -> ! { panic!("{s:?} is not an RFC 3339 date-time") };
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        bad();
    }
    let num = |from: usize, to: usize| -> i64 {
        s.get(from..to)
            .filter(|x| x.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| bad())
    };
    let (year, month, day) = (num(0, 4), num(5, 7), num(8, 10));
    let (hour, minute, second) = (num(11, 13), num(14, 16), num(17, 19));
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            bad();
        }
        let frac = &s[start..i.min(start + 3)];
        millis = format!("{frac:0<3}").parse().unwrap_or_else(|_| bad());
    }
    let offset_minutes = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let m = num(i + 1, i + 3) * 60 + num(i + 4, i + 6);
            if *sign == b'+' { m } else { -m }
        }
        _ => bad(),
    };
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400_000 + ((hour * 60 + minute) * 60 + second) * 1000 + millis
        - offset_minutes * 60_000
}

/// `message/send` calls to `user` whose text mentions `needle` (a unique title).
fn wecom_calls_for(mock: &MockWeCom, user: &str, needle: &str) -> usize {
    mock.calls()
        .iter()
        .filter(|c| c.touser() == user && c.text().contains(needle))
        .count()
}

/// Of those, the ones WeCom accepted (the member saw them).
fn wecom_deliveries_for(mock: &MockWeCom, user: &str, needle: &str) -> usize {
    mock.delivered_calls()
        .iter()
        .filter(|c| c.touser() == user && c.text().contains(needle))
        .count()
}

async fn send_on(api: &Api, token: &str, title: &str, content: &str, channel: &str) -> String {
    let resp = api
        .send_get(&[
            ("token", token),
            ("title", title),
            ("content", content),
            ("channel", channel),
        ])
        .await;
    accepted_id(resp).await
}

// ------------------------------------------------------------------------------------------
// binding
// ------------------------------------------------------------------------------------------

/// The whole binding flow, `status` before and after, then a message WeCom cannot deliver
/// (81013, permanent) reaches the member by mail at once (the retry window is 30 s), with
/// the mail's headers and parts as documented and the history of both attempts.
#[tokio::test]
async fn a_bound_address_gets_what_wecom_permanently_cannot_deliver() {
    let (app, sink) = email_app(|c| c.delivery.retry_window = Duration::from_secs(30)).await;
    let m = member(&app, "bind").await;

    let reply = say(&app, &m.user, "status").await;
    let token_line = line(&reply, "token:");
    assert!(
        !reply.contains(&m.token) && !reply.contains(&m.token[..8]),
        "`status` never shows the token:\n{reply}"
    );
    assert!(
        token_line.contains(&m.token[..2]) && token_line.contains(&m.token[30..]),
        "the token line shows its first and last two characters ({}…{}): {token_line:?}",
        &m.token[..2],
        &m.token[30..]
    );
    assert!(has(line(&reply, "email:"), "none"), "{reply}");
    line(&reply, "order:");
    line(&reply, "today:");

    // Code requested: the reply says so, the mail has it.
    let code = request_code(&app, &sink, &m.user, &m.address, 1).await;
    assert_eq!(sink.mail_count(), 1, "one code mail");

    // A wrong code binds nothing and says how many tries are left.
    let reply = say(&app, &m.user, &format!("verify {}", other_code(&code))).await;
    assert_says(&reply, "wrong code", "`verify` with a wrong code");
    assert!(
        reply.contains('4'),
        "says 4 attempts are left after the first wrong one:\n{reply}"
    );
    assert_unbound(&app, &m.user, &m.address, "after a wrong code").await;

    let reply = say(&app, &m.user, &format!("verify {code}")).await;
    assert_says(&reply, "bound", "`verify` with the right code");

    let reply = say(&app, &m.user, "status").await;
    assert!(
        !reply.contains(&m.token),
        "`status` never shows the token:\n{reply}"
    );
    let token_line = line(&reply, "token:");
    assert!(
        token_line.contains(&m.token[..2]) && token_line.contains(&m.token[30..]),
        "{token_line:?}"
    );
    let email_line = line(&reply, "email:");
    assert!(
        !has(&reply, &m.address),
        "`status` shows the address only masked:\n{reply}"
    );
    assert!(
        !has(email_line, "none") && email_line.contains('@'),
        "the e-mail line shows the (masked) bound address: {email_line:?}"
    );
    let order = line(&reply, "order:").to_lowercase();
    let (w, e) = (order.find("wecom"), order.find("email"));
    assert!(
        matches!((w, e), (Some(w), Some(e)) if w < e),
        "default order is wecom → email: {order:?}"
    );
    line(&reply, "today:");

    // WeCom cannot reach this member: the mail goes out at once.
    app.mock.fail_always_for(&m.user, wecom_permanent());
    let title = "Disk full";
    let content = "on host-7 <b>now</b> & more";
    let started = Instant::now();
    let id = app.send_ok(&m.token, title, content).await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a permanent WeCom failure goes to e-mail at once, not after the 30 s window \
         ({:?})",
        started.elapsed()
    );
    assert_eq!(status["channel"], "email", "{status}");

    let mail = sink.wait_for_mail_for(&id, WAIT).await;
    assert_eq!(mail.to, vec![m.address.clone()], "envelope recipient");
    assert!(
        has(&mail.header("To").unwrap_or_default(), &m.address),
        "{}",
        mail.raw()
    );
    assert!(
        has(&mail.header("From").unwrap_or_default(), "bot@example.com"),
        "{}",
        mail.raw()
    );
    assert_eq!(
        mail.subject(),
        title,
        "subject is the title:\n{}",
        mail.raw()
    );
    assert!(
        mail.message_id().contains(&format!("<{id}@pushbot>")),
        "Message-ID is <{{id}}@pushbot>: {:?}",
        mail.message_id()
    );
    let parsed = mail.parsed();
    assert_eq!(
        parsed.ctype.mimetype,
        "multipart/alternative",
        "{}",
        mail.raw()
    );
    let text = mail.text().expect("a text/plain part");
    assert_eq!(text.trim_end(), content, "text/plain is the content");
    let html = mail.html().expect("a text/html part");
    assert!(
        html.contains("&lt;b&gt;now&lt;/b&gt;") && html.contains("&amp;"),
        "text/html has the content, escaped: {html}"
    );
    assert!(!html.contains("<b>now</b>"), "nothing unescaped: {html}");

    assert_eq!(
        history(&status),
        pairs(&[("wecom", "failed"), ("email", "delivered")]),
        "{status}"
    );
    let wecom_error = history_error(&status, 0);
    assert!(
        wecom_error.contains("81013") || has(&wecom_error, "invalid"),
        "the WeCom entry says why: {status}"
    );
    assert!(status["history"][1]["error"].is_null(), "{status}");

    // Once each: WeCom was not retried, the mail not sent twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(wecom_calls_for(&app.mock, &m.user, title), 1);
    assert_eq!(sink.mails_for(&id).len(), 1);

    let reply = say(&app, &m.user, "status").await;
    let today = &reply[reply.to_lowercase().find("today:").expect("a today line")..];
    assert!(
        has(today, "email") && has(today, "wecom"),
        "today's counts are per channel: {today:?}"
    );
}

#[tokio::test]
async fn chinese_keywords_bind_show_and_unbind() {
    let (app, sink) = email_app(|_| {}).await;
    let m = member(&app, "zh").await;
    let reply = say(&app, &m.user, &format!("邮箱 {}", m.address)).await;
    assert_says(&reply, "code sent", "`邮箱 <address>`");
    let mails = sink.wait_for_mails_to(&m.address, 1, WAIT).await;
    assert_code_mail(&mails[0], &m.address);
    let code = mails[0].code().expect("a code");
    let reply = say(&app, &m.user, &format!("验证 {code}")).await;
    assert_says(&reply, "bound", "`验证 <code>`");
    let reply = say(&app, &m.user, "状态").await;
    assert!(!has(line(&reply, "email:"), "none"), "{reply}");

    let reply = say(&app, &m.user, "邮箱 关闭").await;
    assert_says(&reply, "unbound", "`邮箱 关闭`");
    assert_unbound(&app, &m.user, &m.address, "after `邮箱 关闭`").await;
}

/// `email off` unbinds: `channel=email` is then refused and a message WeCom cannot
/// deliver is not mailed.
#[tokio::test]
async fn email_off_unbinds() {
    let (app, sink) = email_app(|c| c.delivery.retry_window = Duration::from_secs(30)).await;
    let m = member(&app, "off").await;
    bind(&app, &sink, &m).await;
    let reply = say(&app, &m.user, "email off").await;
    assert_says(&reply, "unbound", "`email off`");
    assert_unbound(&app, &m.user, &m.address, "after `email off`").await;

    let resp = app
        .send_get(&[("token", &m.token), ("title", "x"), ("channel", "email")])
        .await;
    assert_error(resp, 400, "bad_request").await;

    app.mock.fail_always_for(&m.user, wecom_permanent());
    let id = app.send_ok(&m.token, "not mailed", "").await;
    let status = app.wait_for_status(&id, &m.token, "failed", WAIT).await;
    assert_eq!(history(&status), pairs(&[("wecom", "failed")]), "{status}");
    assert!(sink.mails_for(&id).is_empty());
    assert_eq!(sink.mail_count(), 1, "only the code mail");
}

#[tokio::test]
async fn an_expired_code_binds_nothing() {
    let (app, sink) = email_app(|c| {
        c.email.as_mut().expect("email").code_ttl = Duration::from_secs(1);
    })
    .await;
    let m = member(&app, "ttl").await;
    let code = request_code(&app, &sink, &m.user, &m.address, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reply = say(&app, &m.user, &format!("verify {code}")).await;
    assert_says(&reply, "expired", "`verify` after code_ttl");
    assert_unbound(&app, &m.user, &m.address, "after an expired code").await;
}

/// Five wrong codes kill the code: the right one is refused after that. A fresh code
/// (a new request) still works.
#[tokio::test]
async fn five_wrong_codes_kill_the_code() {
    let (app, sink) = email_app(|_| {}).await;
    let m = member(&app, "wrong").await;
    let code = request_code(&app, &sink, &m.user, &m.address, 1).await;
    let wrong = other_code(&code);
    for k in 1..=5 {
        let reply = say(&app, &m.user, &format!("verify {wrong}")).await;
        if k < 5 {
            assert_says(&reply, "wrong code", &format!("wrong attempt {k}"));
            assert!(
                reply.contains(&(5 - k).to_string()),
                "attempt {k}: says {} attempts are left:\n{reply}",
                5 - k
            );
        } else {
            assert!(
                has(&reply, "wrong code") || has(&reply, "too many"),
                "the fifth wrong attempt is refused:\n{reply}"
            );
        }
    }
    let reply = say(&app, &m.user, &format!("verify {code}")).await;
    assert_says(
        &reply,
        "too many wrong attempts",
        "the right code after five wrong ones",
    );
    assert_unbound(&app, &m.user, &m.address, "after a dead code").await;

    // A new code replaces the dead one.
    let code = request_code(&app, &sink, &m.user, &m.address, 2).await;
    let reply = say(&app, &m.user, &format!("verify {code}")).await;
    assert_says(&reply, "bound", "a fresh code after a dead one");
}

/// Issue 26: a malformed `verify` (five digits, letters) is a typo, not a guess: it gets
/// the usage line and costs no attempt, so after more typos than there are attempts the
/// right code, typed with an IME's full-width digits and a full stop, still binds.
#[tokio::test]
async fn malformed_verify_costs_no_attempt() {
    let (app, sink) = email_app(|_| {}).await;
    let m = member(&app, "typo").await;
    let code = request_code(&app, &sink, &m.user, &m.address, 1).await;
    for k in 1..=6 {
        for typo in ["verify 12345", "verify abcdef"] {
            let reply = say(&app, &m.user, typo).await;
            assert_says(&reply, "usage: verify", &format!("{typo:?} #{k}"));
            assert!(
                !has(&reply, "wrong code") && !has(&reply, "too many"),
                "{typo:?} #{k} is not counted as a wrong code:\n{reply}"
            );
        }
    }
    let wide: String = code
        .chars()
        .map(|c| char::from_u32(u32::from(c) + 0xFEE0).unwrap_or(c))
        .collect();
    let reply = say(&app, &m.user, &format!("验证：{wide}。")).await;
    assert_says(&reply, "bound", "the right code after twelve typos");
    let reply = say(&app, &m.user, "状态？").await;
    assert!(
        has(line(&reply, "email:"), "@example.com"),
        "`状态？` shows the bound address:\n{reply}"
    );
}

/// A code is good only for the member who asked for it.
#[tokio::test]
async fn another_member_cannot_use_someone_elses_code() {
    let (app, sink) = email_app(|_| {}).await;
    let a = member(&app, "owner").await;
    let b = member(&app, "thief").await;
    let code = request_code(&app, &sink, &a.user, &a.address, 1).await;

    let reply = say(&app, &b.user, &format!("verify {code}")).await;
    assert_says(&reply, "no pending code", "`verify` without a code request");
    assert_unbound(&app, &b.user, &a.address, "B used A's code").await;
    assert_unbound(&app, &a.user, &a.address, "B used A's code").await;

    // B with a pending code of its own, trying A's.
    let b_code = request_code(&app, &sink, &b.user, &b.address, 1).await;
    if b_code != code {
        let reply = say(&app, &b.user, &format!("verify {code}")).await;
        assert_says(
            &reply,
            "wrong code",
            "B tries A's code with one of its own pending",
        );
        assert_unbound(&app, &b.user, &a.address, "B used A's code").await;
    }

    // A's code still works, for A.
    let reply = say(&app, &a.user, &format!("verify {code}")).await;
    assert_says(&reply, "bound", "A verifies its own code");
    let reply = say(&app, &b.user, "status").await;
    assert!(
        has(line(&reply, "email:"), "none"),
        "B is still unbound:\n{reply}"
    );
}

/// codes_per_hour = 2, per member and per address.
#[tokio::test]
async fn code_mails_are_capped_per_member_and_per_address() {
    let (app, sink) = email_app(|c| {
        c.email.as_mut().expect("email").codes_per_hour = 2;
    })
    .await;
    let a = member(&app, "cap").await;
    let b = member(&app, "capb").await;
    request_code(&app, &sink, &a.user, &a.address, 1).await;
    request_code(&app, &sink, &a.user, &a.address, 2).await;

    // Third for A (even to another address): refused, no mail.
    let other = format!("other-{}", a.address);
    let reply = say(&app, &a.user, &format!("email {other}")).await;
    assert_says(&reply, "too many", "A's third code request this hour");
    // Third for A's address (from B): refused, no mail.
    let reply = say(&app, &b.user, &format!("email {}", a.address)).await;
    assert_says(
        &reply,
        "too many",
        "a third code to the same address this hour",
    );

    // B's own address is fine.
    request_code(&app, &sink, &b.user, &b.address, 1).await;
    sink.wait_for_mails(3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sink.mails_to(&a.address).len(),
        2,
        "no third mail to A's address"
    );
    assert!(sink.mails_to(&other).is_empty(), "no mail past A's cap");
    assert_eq!(sink.mail_count(), 3);
}

#[tokio::test]
async fn an_invalid_address_is_refused() {
    let (app, sink) = email_app(|_| {}).await;
    let m = member(&app, "inval").await;
    for bad in ["not-an-address", "a@", "@example.com", "a@@example.com"] {
        let reply = say(&app, &m.user, &format!("email {bad}")).await;
        assert_says(
            &reply,
            "not a valid e-mail address",
            &format!("`email {bad}`"),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.mail_count(), 0, "nothing was mailed");
    assert!(sink.refused().is_empty(), "nothing was mailed");
}

#[tokio::test]
async fn without_an_email_section_there_is_no_email_channel() {
    let app = spawn_app().await;
    let m = member(&app, "noconf").await;
    let reply = say(&app, &m.user, &format!("email {}", m.address)).await;
    assert_says(
        &reply,
        "e-mail is not configured",
        "`email` without [email]",
    );
    let resp = app
        .send_get(&[("token", &m.token), ("title", "x"), ("channel", "email")])
        .await;
    assert_error(resp, 400, "bad_request").await;
    // Messages go to WeCom as before.
    let id = app.send_ok(&m.token, "plain", "").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "wecom", "{status}");
}

/// The code mail does not depend on WeCom: it goes out while WeCom is unreachable.
#[tokio::test]
async fn the_code_mail_goes_out_while_wecom_is_down() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (app, sink) = email_app(|c| c.wecom.api_base = http_url(&closed)).await;
    let m = member(&app, "wdown").await;
    bind(&app, &sink, &m).await;
}

// ------------------------------------------------------------------------------------------
// fallback
// ------------------------------------------------------------------------------------------

/// Each permanent WeCom refusal the issue names — the untrusted IP (60020) and an
/// `errcode 0` answer that lists the member in `invaliduser` — goes to e-mail at once, long
/// before the 30 s retry window would end.
#[tokio::test]
async fn untrusted_ip_and_invaliduser_fall_back_at_once() {
    let (app, sink) = email_app(|c| c.delivery.retry_window = Duration::from_secs(30)).await;
    let untrusted = member(&app, "ip").await;
    let invalid = member(&app, "inv").await;
    for m in [&untrusted, &invalid] {
        bind(&app, &sink, m).await;
    }
    app.mock.fail_always_for(
        &untrusted.user,
        SendReply::errcode(
            60020,
            "not allow to access from your ip, hint: [1764204731_x], from ip: 203.0.113.7",
        ),
    );
    app.mock
        .fail_always_for(&invalid.user, SendReply::invalid_user(&invalid.user));
    for (m, expect) in [(&untrusted, "203.0.113.7"), (&invalid, "invaliduser")] {
        let started = Instant::now();
        let id = app.send_ok(&m.token, "refused", "by mail").await;
        let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "at once: {status}"
        );
        assert_eq!(status["channel"], "email", "{status}");
        assert_eq!(
            history(&status),
            [
                ("wecom".to_owned(), "failed".to_owned()),
                ("email".to_owned(), "delivered".to_owned())
            ],
            "{status}"
        );
        let why = history_error(&status, 0);
        assert!(why.contains(expect) || has(&why, "invalid"), "{why}");
        assert_eq!(sink.mails_for(&id).len(), 1);
    }
}

/// An SMTP server that is down is probed, not stormed: with ten mails waiting, the server
/// sees a handful of connection attempts while it is down (counted by a TCP front), and
/// all ten arrive once, each once, when it is back.
#[tokio::test]
async fn a_down_smtp_server_gets_probes_not_a_storm() {
    let front = TcpFront::start(None).await;
    let sink = SmtpSink::start().await;
    front.forward_to(&format!("http://127.0.0.1:{}", sink.port));
    let front_port = front
        .base_url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        .expect("the front's port");
    let app = spawn_app_with(|c| {
        c.email = Some(local_email(front_port));
        c.delivery.backoff_initial = Duration::from_millis(50);
        c.delivery.backoff_max = Duration::from_millis(200);
        c.delivery.probe_max = Duration::from_secs(1);
        c.delivery.retry_window = Duration::from_secs(30);
    })
    .await;
    let mut members = Vec::new();
    for i in 0..10 {
        let m = member(&app, &format!("smtpdown{i}")).await;
        bind(&app, &sink, &m).await;
        members.push(m);
    }
    front.go_down();
    let before = front.refused();
    let mut ids = Vec::new();
    for m in &members {
        ids.push((
            send_on(&app, &m.token, "mail me", "later", "email").await,
            m,
        ));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tried = front.refused() - before;
    // Probes at 50 ms, then doubling up to 1 s: about six in 3 s; without channel health
    // each of the ten would retry every 50–200 ms (well over a hundred connections).
    assert!(
        tried <= 12,
        "SMTP down: only probes, not every queued mail: {tried} connection attempts"
    );
    front.come_up();
    for (id, m) in &ids {
        let status = app.wait_for_status(id, &m.token, "delivered", WAIT).await;
        assert_eq!(status["channel"], "email", "{status}");
        assert_eq!(sink.mails_for(id).len(), 1, "mailed once");
    }
}

/// A member whose messages wait for a WeCom that is down binds an address: the code mail
/// does not queue behind them (it goes to the front of the member's lane).
#[tokio::test]
async fn the_code_mail_does_not_wait_behind_a_backlog_for_a_down_wecom() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (app, sink) = email_app(|c| {
        c.wecom.api_base = http_url(&closed);
        c.delivery.retry_window = Duration::from_secs(60);
    })
    .await;
    let m = member(&app, "behind").await;
    let mut waiting = Vec::new();
    for i in 0..3 {
        waiting.push(app.send_ok(&m.token, &format!("waiting {i}"), "").await);
    }
    // The first is being retried against the closed port.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    bind(&app, &sink, &m).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the code came at once: {:?}",
        started.elapsed()
    );
    for id in &waiting {
        let status = app.message_json(id, &m.token).await;
        assert_eq!(status["status"], "queued", "{status}");
    }
}

/// WeCom down while many members wait: lanes that are not the probe do not wait for it —
/// once their WeCom window runs out, the expiry pass hands them to e-mail in bulk, and WeCom
/// sees only the probes meanwhile.
#[tokio::test]
async fn many_members_fall_back_together_without_hammering_a_down_wecom() {
    let front = TcpFront::start(None).await;
    let (app, sink) = email_app(|c| {
        c.wecom.api_base = http_url(&front.base_url);
        c.delivery.retry_window = Duration::from_secs(1);
        // Probes far apart: a message that is not a probe must not wait for one.
        c.delivery.backoff_initial = Duration::from_secs(5);
        c.delivery.backoff_max = Duration::from_secs(10);
        c.delivery.probe_max = Duration::from_secs(10);
    })
    .await;
    front.forward_to(&app.mock.base_url);
    let mut members = Vec::new();
    for i in 0..12 {
        let m = member(&app, &format!("bulk{i}")).await;
        bind(&app, &sink, &m).await;
        members.push(m);
    }
    front.go_down();
    let before = front.refused();
    let started = Instant::now();
    let mut ids = Vec::new();
    for m in &members {
        ids.push((app.send_ok(&m.token, "bulk outage", "by mail").await, m));
    }
    for (id, m) in &ids {
        let status = app.wait_for_status(id, &m.token, "delivered", WAIT).await;
        assert_eq!(status["channel"], "email", "{status}");
        let h = history(&status);
        assert_eq!(
            h.first().map(|(c, _)| c.as_str()),
            Some("wecom"),
            "{status}"
        );
        assert_eq!(sink.mails_for(id).len(), 1);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "all mailed soon after their 1 s window, not after the next probe: {took:?}"
    );
    let tried = front.refused() - before;
    assert!(
        tried <= 3,
        "WeCom got only probes while down, not one attempt per member: {tried}"
    );
}

/// WeCom unreachable for the whole retry window: the message is mailed exactly once after
/// the window, and WeCom, once back, never gets it late.
#[tokio::test]
async fn wecom_down_for_the_whole_window_is_mailed_once_and_never_sent_late() {
    let front = TcpFront::start(None).await;
    let (app, sink) = email_app(|c| {
        c.wecom.api_base = http_url(&front.base_url);
        c.delivery.retry_window = Duration::from_secs(2);
    })
    .await;
    front.forward_to(&app.mock.base_url);
    let m = member(&app, "wdn").await;
    bind(&app, &sink, &m).await;

    front.go_down();
    let title = format!("outage for {}", m.user);
    let started = Instant::now();
    let id = app.send_ok(&m.token, &title, "by mail").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    let after = started.elapsed();
    assert_eq!(status["channel"], "email", "{status}");
    assert!(
        after >= Duration::from_millis(1500),
        "mailed only once the 2 s WeCom window was used up, not after {after:?}"
    );
    let mail = sink.wait_for_mail_for(&id, WAIT).await;
    assert_eq!(mail.subject(), title);
    assert!(
        mail.received_at.duration_since(started) >= Duration::from_millis(1500),
        "the mail went out once the 2 s WeCom window was used up, not after {:?}",
        mail.received_at.duration_since(started)
    );

    let h = history(&status);
    let (last, before) = h.split_last().expect("history is not empty");
    assert_eq!(
        last,
        &("email".to_owned(), "delivered".to_owned()),
        "{status}"
    );
    assert!(!before.is_empty(), "WeCom was tried first: {status}");
    assert!(
        before.iter().all(|(c, o)| c == "wecom" && o != "delivered"),
        "only failed WeCom attempts before the mail: {status}"
    );
    assert!(front.refused() >= 1, "WeCom was tried while down");

    // WeCom is back: a new message goes there, the old one never does.
    front.come_up();
    // The next message reaches WeCom once a probe has found it back. (On a loaded machine
    // a first one can spend its short window waiting for that probe and be mailed: that
    // is the fallback working, so allow a few.)
    let mut probes = Vec::new();
    for _ in 0..3 {
        let probe = app.send_ok(&m.token, "after the outage", "").await;
        let probe_status = app
            .wait_for_status(&probe, &m.token, "delivered", WAIT)
            .await;
        probes.push(probe);
        if probe_status["channel"] == "wecom" {
            break;
        }
    }
    let (probe, earlier) = probes.split_last().expect("one was sent");
    let last = app.message_json(probe, &m.token).await;
    assert_eq!(last["channel"], "wecom", "WeCom is back: {last}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        wecom_calls_for(&app.mock, &m.user, &title),
        0,
        "no late WeCom send of a mailed message"
    );
    assert_eq!(sink.mails_for(&id).len(), 1, "mailed exactly once");
    assert!(sink.mails_for(probe).is_empty());
    for mailed in earlier {
        assert_eq!(sink.mails_for(mailed).len(), 1);
    }
    let status = app.message_json(&id, &m.token).await;
    assert_eq!(status["status"], "delivered");
    assert_eq!(status["channel"], "email");
}

/// A gateway whose WeCom refuses connections from the first try on, probed far apart: the
/// first probe 2.5 s after the first failure, the next 5 s later (`probe_max` 30 s), with
/// a 4 s retry window, and three members with a bound address each. No regular probe falls
/// in the window's last second, nor soon after it.
async fn wecom_down_window_app(prefix: &str) -> (TestApp, SmtpSink, TcpFront, Vec<Member>) {
    let front = TcpFront::start(None).await;
    let (app, sink) = email_app(|c| {
        c.wecom.api_base = http_url(&front.base_url);
        c.delivery.retry_window = Duration::from_secs(4);
        c.delivery.backoff_initial = Duration::from_millis(2500);
        c.delivery.backoff_max = Duration::from_secs(30);
        c.delivery.probe_max = Duration::from_secs(30);
    })
    .await;
    front.forward_to(&app.mock.base_url);
    let mut members = Vec::new();
    for i in 0..3 {
        let m = member(&app, &format!("{prefix}{i}")).await;
        bind(&app, &sink, &m).await;
        members.push(m);
    }
    front.go_down();
    (app, sink, front, members)
}

const DOWN_WINDOW: Duration = Duration::from_secs(4);

/// Sends one message to each member, the first alone until WeCom has refused it; answers
/// each message's id and title with its member.
async fn send_to_each<'m>(
    app: &TestApp,
    front: &TcpFront,
    members: &'m [Member],
    what: &str,
) -> Vec<(String, String, &'m Member)> {
    let mut sent = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let before = front.refused();
        let title = format!("{what} for {}", m.user);
        let id = app.send_ok(&m.token, &title, what).await;
        if i == 0 {
            let deadline = Instant::now() + WAIT;
            while front.refused() <= before {
                assert!(Instant::now() < deadline, "WeCom was tried within {WAIT:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        sent.push((id, title, m));
    }
    sent
}

/// WeCom is back 1 s before the messages' retry windows end: one probe at the end of the
/// first window reaches it, and every message is delivered there; nothing is mailed. (A
/// message moves to its next channel only after a failed try: not because its window
/// ended between two probes — the first member's message is the probe, the others wait
/// in lanes of their own —, nor because its next backoff would have passed the window's
/// end.)
#[tokio::test]
async fn wecom_back_a_second_before_the_window_ends_delivers_and_mails_nothing() {
    let (app, sink, front, members) = wecom_down_window_app("wback").await;
    let mails_before = sink.mail_count();
    let started = Instant::now();
    let sent = send_to_each(&app, &front, &members, "back in time").await;
    tokio::time::sleep((DOWN_WINDOW - Duration::from_secs(1)).saturating_sub(started.elapsed()))
        .await;
    front.come_up();
    for (id, title, m) in &sent {
        let status = app.wait_for_status(id, &m.token, "delivered", WAIT).await;
        let after = started.elapsed();
        assert_eq!(status["channel"], "wecom", "delivered by WeCom: {status}");
        assert!(
            after <= DOWN_WINDOW + Duration::from_secs(2),
            "delivered by the try at the end of the {DOWN_WINDOW:?} window, not {after:?} \
             after it was sent: {status}"
        );
        let h = history(&status);
        assert!(
            h.iter().all(|(c, _)| c == "wecom"),
            "no e-mail step: {status}"
        );
        assert_eq!(wecom_deliveries_for(&app.mock, &m.user, title), 1);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (id, _, _) in &sent {
        assert!(sink.mails_for(id).is_empty(), "{id} was not mailed");
    }
    assert_eq!(sink.mail_count(), mails_before, "nothing mailed");
}

/// WeCom still down when the windows end: each message is mailed once, only after a WeCom
/// try made at the end of the first window failed — not before the window ended because
/// the next backoff or probe would have come later than that.
#[tokio::test]
async fn wecom_still_down_when_the_window_ends_is_tried_at_its_end_then_mailed() {
    let (app, sink, front, members) = wecom_down_window_app("wstill").await;
    let started = Instant::now();
    let sent = send_to_each(&app, &front, &members, "still down").await;
    tokio::time::sleep(
        (DOWN_WINDOW - Duration::from_millis(300)).saturating_sub(started.elapsed()),
    )
    .await;
    let near_the_end = front.refused();
    // The connections WeCom had seen by the time the first mail arrived.
    let deadline = Instant::now() + WAIT;
    let refused_by_the_first_mail = loop {
        if sent.iter().any(|(id, _, _)| !sink.mails_for(id).is_empty()) {
            break front.refused();
        }
        assert!(Instant::now() < deadline, "mailed within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        refused_by_the_first_mail > near_the_end,
        "WeCom was tried at the end of the window before anything was mailed"
    );
    for (id, title, m) in &sent {
        let mail = sink.wait_for_mail_for(id, WAIT).await;
        let mailed_after = mail.received_at.duration_since(started);
        assert!(
            mailed_after >= DOWN_WINDOW,
            "mailed only after the {DOWN_WINDOW:?} window, not after {mailed_after:?}"
        );
        assert!(
            mailed_after <= DOWN_WINDOW + Duration::from_secs(2),
            "mailed soon after the window ended, not after {mailed_after:?}"
        );
        let status = app.wait_for_status(id, &m.token, "delivered", WAIT).await;
        assert_eq!(status["channel"], "email", "{status}");
        assert_eq!(sink.mails_for(id).len(), 1, "mailed once");
        assert_eq!(wecom_calls_for(&app.mock, &m.user, title), 0);
    }
}

/// WeCom failing every other call (HTTP 502) within a long window: every message reaches
/// WeCom once, nothing is mailed.
#[tokio::test]
async fn flapping_wecom_within_the_window_never_falls_back_to_mail() {
    const N: usize = 10;
    let (app, sink) = email_app(|c| c.delivery.retry_window = Duration::from_secs(30)).await;
    let m = member(&app, "flap").await;
    bind(&app, &sink, &m).await;
    let mails_after_binding = sink.mail_count();

    app.mock.push_replies_for(
        &m.user,
        (0..2 * N).flat_map(|_| [SendReply::http(502), SendReply::ok()]),
    );
    let titles: Vec<String> = (0..N).map(|k| format!("{} flap #{k:02}", m.user)).collect();
    let mut ids = Vec::new();
    for t in &titles {
        ids.push(app.send_ok(&m.token, t, "").await);
    }
    for id in &ids {
        let status = app
            .wait_for_status(id, &m.token, "delivered", Duration::from_secs(20))
            .await;
        assert_eq!(status["channel"], "wecom", "{status}");
        let h = history(&status);
        assert!(
            h.iter().all(|(c, _)| c == "wecom"),
            "no e-mail step for a message WeCom delivered in its window: {status}"
        );
        assert_eq!(
            h.last(),
            Some(&("wecom".to_owned(), "delivered".to_owned())),
            "{status}"
        );
    }
    for t in &titles {
        assert_eq!(
            wecom_deliveries_for(&app.mock, &m.user, t),
            1,
            "{t} reached WeCom exactly once"
        );
    }
    assert!(
        app.mock.calls().iter().any(|c| c.reply.status == 502),
        "WeCom did flap"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sink.mail_count(),
        mails_after_binding,
        "nothing but the code mail was mailed"
    );
}

/// A member with no address has no e-mail step: WeCom's permanent failure fails it.
#[tokio::test]
async fn a_member_without_an_address_has_no_email_step() {
    let (app, sink) = email_app(|c| c.delivery.retry_window = Duration::from_secs(30)).await;
    let m = member(&app, "noaddr").await;
    app.mock.fail_always_for(&m.user, wecom_permanent());
    let id = app.send_ok(&m.token, "nowhere", "").await;
    let status = app.wait_for_status(&id, &m.token, "failed", WAIT).await;
    assert_eq!(history(&status), pairs(&[("wecom", "failed")]), "{status}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.mail_count(), 0, "nothing mailed");
    assert!(sink.refused().is_empty(), "nothing mailed");
}

// ------------------------------------------------------------------------------------------
// SMTP failures
// ------------------------------------------------------------------------------------------

/// The sink refuses the next two transactions with a 4xx (at `where_`): the e-mail step
/// retries and the mail arrives exactly once; history shows both retries.
async fn smtp_4xx_is_retried(at_rcpt: bool) {
    let (app, sink) = email_app(|c| c.delivery.retry_window = Duration::from_secs(30)).await;
    let m = member(&app, "smtp4").await;
    bind(&app, &sink, &m).await;
    app.mock.fail_always_for(&m.user, wecom_permanent());
    if at_rcpt {
        sink.fail_next_rcpt(2, "451 4.3.0 try later");
    } else {
        sink.fail_next(2, "451 4.3.0 try later");
    }
    let id = app.send_ok(&m.token, "retried mail", "twice refused").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "email", "{status}");
    let refused = sink.refused();
    assert_eq!(refused.len(), 2, "both refusals were met: {refused:#?}");
    let at = if at_rcpt { "RCPT" } else { "DATA" };
    assert!(
        refused
            .iter()
            .all(|r| r.to == vec![m.address.clone()] && r.at == at && r.reply.starts_with("451")),
        "{refused:#?}"
    );
    let mail = sink.wait_for_mail_for(&id, WAIT).await;
    assert!(
        refused[0].received_at < refused[1].received_at
            && refused[1].received_at < mail.received_at,
        "retried one after the other"
    );
    if !at_rcpt {
        for r in &refused {
            let raw = String::from_utf8_lossy(&r.data);
            assert!(
                raw.contains(&id),
                "the refused mail was this message: {raw}"
            );
        }
    }
    assert_eq!(
        history(&status),
        pairs(&[
            ("wecom", "failed"),
            ("email", "retry"),
            ("email", "retry"),
            ("email", "delivered"),
        ]),
        "{status}"
    );
    for i in [1, 2] {
        assert!(
            history_error(&status, i).contains("451"),
            "the retry says what the server answered: {status}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.mails_for(&id).len(), 1, "mailed exactly once");
    assert_eq!(sink.mails_for(&id)[0].subject(), "retried mail");
}

#[tokio::test]
async fn smtp_451_at_end_of_data_is_retried_and_mailed_once() {
    smtp_4xx_is_retried(false).await;
}

#[tokio::test]
async fn smtp_451_at_rcpt_is_retried_and_mailed_once() {
    smtp_4xx_is_retried(true).await;
}

/// A 5xx fails the e-mail step; with no channel after it, the message fails, and it is
/// not tried again.
#[tokio::test]
async fn smtp_550_fails_the_email_step_and_the_message() {
    let (app, sink) = email_app(|c| c.delivery.retry_window = Duration::from_secs(30)).await;
    let m = member(&app, "smtp5").await;
    bind(&app, &sink, &m).await;
    app.mock.fail_always_for(&m.user, wecom_permanent());
    sink.fail_next(1, "550 5.1.1 no such user");
    let id = app.send_ok(&m.token, "bounced", "").await;
    let status = app.wait_for_status(&id, &m.token, "failed", WAIT).await;
    assert_eq!(
        history(&status),
        pairs(&[("wecom", "failed"), ("email", "failed")]),
        "{status}"
    );
    assert!(
        history_error(&status, 1).contains("550"),
        "the e-mail entry says what the server answered: {status}"
    );
    sink.wait_for_refused(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(sink.mails_for(&id).is_empty(), "never mailed");
    assert_eq!(sink.refused().len(), 1, "a 5xx is not retried");
    let status = app.message_json(&id, &m.token).await;
    assert_eq!(status["status"], "failed", "{status}");
}

/// SMTP refusing connections is transient: retried until it listens again, then mailed
/// once.
#[tokio::test]
async fn smtp_refusing_connections_is_retried_until_it_is_back() {
    let (app, sink) = email_app(|c| c.delivery.retry_window = Duration::from_secs(30)).await;
    let m = member(&app, "smtpdn").await;
    bind(&app, &sink, &m).await;
    app.mock.fail_always_for(&m.user, wecom_permanent());
    sink.set_down(true).await;
    let id = app.send_ok(&m.token, "held", "").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let status = app.message_json(&id, &m.token).await;
    assert_eq!(status["status"], "queued", "still trying: {status}");
    let h = history(&status);
    assert!(
        h.iter().any(|(c, o)| c == "email" && o == "retry"),
        "the refused connection is a retry: {status}"
    );

    sink.set_down(false).await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "email", "{status}");
    let h = history(&status);
    assert_eq!(h.first(), Some(&("wecom".to_owned(), "failed".to_owned())));
    assert_eq!(
        h.last(),
        Some(&("email".to_owned(), "delivered".to_owned()))
    );
    assert!(
        h[1..h.len() - 1]
            .iter()
            .all(|(c, o)| c == "email" && o == "retry"),
        "{status}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.mails_for(&id).len(), 1, "mailed exactly once");
}

// ------------------------------------------------------------------------------------------
// the channel parameter and the member's order
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn channel_email_goes_by_mail_only() {
    let (app, sink) = email_app(|_| {}).await;
    let m = member(&app, "chem").await;
    bind(&app, &sink, &m).await;
    let title = format!("{} mail only", m.user);
    let id = send_on(&app, &m.token, &title, "body", "email").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "email", "{status}");
    assert_eq!(
        history(&status),
        pairs(&[("email", "delivered")]),
        "{status}"
    );
    let mail = sink.wait_for_mail_for(&id, WAIT).await;
    assert_eq!(mail.subject(), title);
    assert_eq!(mail.text().unwrap_or_default().trim_end(), "body");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        wecom_calls_for(&app.mock, &m.user, &title),
        0,
        "not on WeCom"
    );

    // Form and JSON take it too.
    let resp = app
        .send_form(&[("token", &m.token), ("title", "form"), ("channel", "email")])
        .await;
    let form_id = accepted_id(resp).await;
    let resp = app
        .send_json(
            Some(&m.token),
            &json!({"title": "json", "content": "j", "channel": "email"}),
        )
        .await;
    let json_id = accepted_id(resp).await;
    for id in [&form_id, &json_id] {
        let status = app.wait_for_status(id, &m.token, "delivered", WAIT).await;
        assert_eq!(status["channel"], "email", "{status}");
        sink.wait_for_mail_for(id, WAIT).await;
    }
    assert_eq!(wecom_calls_for(&app.mock, &m.user, "form"), 0);
    assert_eq!(wecom_calls_for(&app.mock, &m.user, "json"), 0);
}

/// A sender's image never loads in the mail: a markdown image is a link (text part: its
/// address), raw HTML an `<img>` only as text, and no tag of the HTML part has a `src`.
#[tokio::test]
async fn markdown_images_reach_the_mail_as_links_never_loaded() {
    let (app, sink) = email_app(|_| {}).await;
    let m = member(&app, "mdimg").await;
    bind(&app, &sink, &m).await;
    let content = format!(
        "## 磁盘\n\n![graph](https://tracker.example/p.png?u={0})\n\n\
         <img src=\"https://tracker.example/raw.png?u={0}\">\n\n\
         x <img src=https://tracker.example/inline.png> y",
        m.user
    );
    let resp = app
        .send_json(
            Some(&m.token),
            &json!({"title": "pixel", "content": content, "format": "markdown", "channel": "email"}),
        )
        .await;
    let id = accepted_id(resp).await;
    let mail = sink.wait_for_mail_for(&id, WAIT).await;

    let html = mail.html().expect("a text/html part");
    let lower = html.to_lowercase();
    assert!(!lower.contains("<img"), "{html}");
    for tag in lower
        .split('<')
        .skip(1)
        .map(|t| t.split('>').next().unwrap_or(""))
    {
        assert!(!tag.contains("src="), "<{tag}>: {html}");
        assert!(!tag.contains("background"), "<{tag}>: {html}");
    }
    assert!(
        html.contains(&format!(
            "<a href=\"https://tracker.example/p.png?u={}\" \
             rel=\"noopener noreferrer nofollow\" target=\"_blank\">🖼 graph</a>",
            m.user
        )),
        "{html}"
    );
    assert!(
        html.contains("x &lt;img src=https://tracker.example/inline.png&gt; y"),
        "{html}"
    );
    let text = mail.text().expect("a text/plain part");
    assert!(
        text.contains(&format!(
            "[image: graph] https://tracker.example/p.png?u={}",
            m.user
        )),
        "{text}"
    );
}

#[tokio::test]
async fn channel_all_goes_both_ways() {
    let (app, sink) = email_app(|_| {}).await;
    let m = member(&app, "chall").await;
    bind(&app, &sink, &m).await;
    let title = format!("{} everywhere", m.user);
    let resp = app
        .send_json(
            Some(&m.token),
            &json!({"title": title, "content": "both", "channel": "all"}),
        )
        .await;
    let id = accepted_id(resp).await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    let channel = status["channel"].as_str().unwrap_or_default();
    assert!(
        channel.contains("wecom") && channel.contains("email"),
        "channel lists both: {status}"
    );
    let h = history(&status);
    assert!(
        h.contains(&("wecom".to_owned(), "delivered".to_owned())),
        "{status}"
    );
    assert!(
        h.contains(&("email".to_owned(), "delivered".to_owned())),
        "{status}"
    );
    assert_eq!(h.last().map(|(_, o)| o.as_str()), Some("delivered"));
    sink.wait_for_mail_for(&id, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(wecom_deliveries_for(&app.mock, &m.user, &title), 1);
    assert_eq!(sink.mails_for(&id).len(), 1);
}

#[tokio::test]
async fn unknown_channels_and_email_without_an_address_are_bad_requests() {
    let (app, sink) = email_app(|_| {}).await;
    let unbound = member(&app, "chbad").await;
    for channel in ["bogus", "wecom,bogus", "sms", "email;wecom"] {
        let resp = app
            .send_get(&[
                ("token", &unbound.token),
                ("title", "x"),
                ("channel", channel),
            ])
            .await;
        assert_error(resp, 400, "bad_request").await;
    }
    let resp = app
        .send_json(
            Some(&unbound.token),
            &json!({"title": "x", "channel": "bogus"}),
        )
        .await;
    assert_error(resp, 400, "bad_request").await;

    let resp = app
        .send_get(&[
            ("token", &unbound.token),
            ("title", "x"),
            ("channel", "email"),
        ])
        .await;
    assert_error(resp, 400, "bad_request").await;
    let resp = app
        .send_json(
            Some(&unbound.token),
            &json!({"title": "x", "channel": "email"}),
        )
        .await;
    assert_error(resp, 400, "bad_request").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.mail_count(), 0);
}

/// `fallback email,wecom` puts e-mail first for this member; `回退 wecom` puts it back.
#[tokio::test]
async fn a_members_own_order_is_followed() {
    let (app, sink) = email_app(|_| {}).await;
    let m = member(&app, "order").await;
    bind(&app, &sink, &m).await;

    let reply = say(&app, &m.user, "fallback email,wecom").await;
    let order = line(&reply, "order:").to_lowercase();
    assert!(
        matches!((order.find("email"), order.find("wecom")), (Some(e), Some(w)) if e < w),
        "the new order is email → wecom: {reply}"
    );
    let reply = say(&app, &m.user, "status").await;
    let order = line(&reply, "order:").to_lowercase();
    assert!(
        matches!((order.find("email"), order.find("wecom")), (Some(e), Some(w)) if e < w),
        "`status` shows the member's order: {reply}"
    );

    let title = format!("{} mail first", m.user);
    let id = app.send_ok(&m.token, &title, "").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "email", "{status}");
    sink.wait_for_mail_for(&id, WAIT).await;

    let reply = say(&app, &m.user, "回退 wecom").await;
    let order = line(&reply, "order:").to_lowercase();
    assert!(order.contains("wecom"), "{reply}");
    let title2 = format!("{} wecom again", m.user);
    let id2 = app.send_ok(&m.token, &title2, "").await;
    let status = app.wait_for_status(&id2, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "wecom", "{status}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(wecom_calls_for(&app.mock, &m.user, &title), 0, "mail first");
    assert_eq!(sink.mails_for(&id).len(), 1);
    assert!(sink.mails_for(&id2).is_empty());
}

#[tokio::test]
async fn an_unknown_channel_in_fallback_is_refused_and_changes_nothing() {
    let (app, sink) = email_app(|_| {}).await;
    let m = member(&app, "fbbad").await;
    bind(&app, &sink, &m).await;
    let reply = say(&app, &m.user, "fallback email,pigeon").await;
    assert_says(
        &reply,
        "unknown channel",
        "`fallback` with an unknown channel",
    );
    let reply = say(&app, &m.user, "status").await;
    let order = line(&reply, "order:").to_lowercase();
    assert!(
        matches!((order.find("wecom"), order.find("email")), (Some(w), Some(e)) if w < e),
        "still the default order: {reply}"
    );
    let id = app.send_ok(&m.token, "still wecom", "").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "wecom", "{status}");
}

/// `delivery.fallback` sets the default order.
#[tokio::test]
async fn delivery_fallback_sets_the_default_order() {
    let (app, sink) = email_app(|c| {
        c.delivery.fallback = route("email,wecom");
    })
    .await;
    let m = member(&app, "cfgfb").await;
    bind(&app, &sink, &m).await;
    let title = format!("{} config order", m.user);
    let id = app.send_ok(&m.token, &title, "").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "email", "{status}");
    sink.wait_for_mail_for(&id, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(wecom_calls_for(&app.mock, &m.user, &title), 0);

    // A member without an address skips the e-mail step.
    let n = member(&app, "cfgfbn").await;
    let id = app.send_ok(&n.token, "no address", "").await;
    let status = app.wait_for_status(&id, &n.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "wecom", "{status}");
}

// ------------------------------------------------------------------------------------------
// kill -9 with both channels down
// ------------------------------------------------------------------------------------------

/// The real binary, WeCom and SMTP both down, a message for a bound member queued; `kill
/// -9` (while WeCom's step runs, or once it is the e-mail step's turn), restart, both come
/// back: the member gets it exactly once, over both channels together.
async fn both_down_kill9_restart_delivers_once(in_email_step: bool) {
    let mock = MockWeCom::start().await;
    let front = TcpFront::start(Some(&mock.base_url)).await;
    let sink = SmtpSink::start().await;
    let config = settings_with(|c| {
        // In the e-mail step case WeCom's 6 s are over at the kill (7 s) and the e-mail
        // step has its own 6 s; otherwise WeCom's window is long.
        c.delivery.retry_window = Duration::from_secs(if in_email_step { 6 } else { 30 });
        c.delivery.backoff_initial = Duration::from_millis(50);
        c.delivery.backoff_max = Duration::from_millis(300);
        c.delivery.probe_max = Duration::from_millis(300);
        c.delivery.lease = Duration::from_secs(10);
        c.delivery.instance_id = Some(format!("email-kill9-{in_email_step}"));
        c.email = Some(local_email(sink.port));
    });
    let setup = bin_setup(&config, &front.base_url);
    let mut bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    let m = member(&bin, "k9mail").await;
    bind(&bin, &sink, &m).await;

    front.go_down();
    sink.set_down(true).await;
    let title = format!("{} survives kill -9", m.user);
    let id = bin.send_ok(&m.token, &title, "once").await;
    tokio::time::sleep(if in_email_step {
        Duration::from_secs(7)
    } else {
        Duration::from_secs(1)
    })
    .await;
    let status = bin.message_json(&id, &m.token).await;
    assert_eq!(status["status"], "queued", "both channels down: {status}");
    if in_email_step {
        assert!(
            history(&status).iter().any(|(c, _)| c == "email"),
            "WeCom's window is over: the e-mail step was tried before the kill: {status}"
        );
    }
    bin.kill9();

    let bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    front.come_up();
    sink.set_down(false).await;
    let status = bin
        .wait_for_status(&id, &m.token, "delivered", Duration::from_secs(15))
        .await;
    if in_email_step {
        assert_eq!(
            status["channel"], "email",
            "WeCom's step was over before the kill: {status}"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let by_wecom = wecom_deliveries_for(&mock, &m.user, &title);
    let by_mail = sink.mails_for(&id).len();
    assert_eq!(
        by_wecom + by_mail,
        1,
        "exactly once in all: {by_wecom} by WeCom, {by_mail} by mail; {status}"
    );
    let h = history(&status);
    assert_eq!(
        h.last().map(|(_, o)| o.as_str()),
        Some("delivered"),
        "{status}"
    );
}

#[tokio::test]
async fn kill9_while_both_channels_are_down_delivers_once_after_restart() {
    both_down_kill9_restart_delivers_once(false).await;
}

#[tokio::test]
async fn kill9_in_the_email_step_with_both_down_delivers_once_after_restart() {
    both_down_kill9_restart_delivers_once(true).await;
}

// ------------------------------------------------------------------------------------------
// more
// ------------------------------------------------------------------------------------------

/// The code mail goes through the outbox: requested while SMTP refuses connections, it
/// arrives (once) when SMTP is back.
#[tokio::test]
async fn a_code_requested_while_smtp_is_down_arrives_when_it_is_back() {
    let (app, sink) = email_app(|c| c.delivery.retry_window = Duration::from_secs(30)).await;
    let m = member(&app, "cdown").await;
    sink.set_down(true).await;
    let reply = say(&app, &m.user, &format!("email {}", m.address)).await;
    assert_says(&reply, "code sent", "`email` while SMTP is down");
    tokio::time::sleep(Duration::from_millis(800)).await;
    sink.set_down(false).await;
    let mails = sink.wait_for_mails_to(&m.address, 1, WAIT).await;
    assert_code_mail(&mails[0], &m.address);
    let code = mails[0].code().expect("a code");
    let reply = say(&app, &m.user, &format!("verify {code}")).await;
    assert_says(&reply, "bound", "the code that arrived late");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.mails_to(&m.address).len(), 1, "mailed once");
}

/// An explicit order `email,wecom`: a 5xx ends the e-mail step and WeCom delivers it.
#[tokio::test]
async fn an_explicit_order_moves_on_after_a_5xx() {
    let (app, sink) = email_app(|c| c.delivery.retry_window = Duration::from_secs(30)).await;
    let m = member(&app, "elist").await;
    bind(&app, &sink, &m).await;
    sink.fail_next(1, "554 5.7.1 rejected");
    let title = format!("{} email then wecom", m.user);
    let id = send_on(&app, &m.token, &title, "", "email,wecom").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "wecom", "{status}");
    assert_eq!(
        history(&status),
        pairs(&[("email", "failed"), ("wecom", "delivered")]),
        "{status}"
    );
    assert!(history_error(&status, 0).contains("554"), "{status}");
    assert_eq!(wecom_deliveries_for(&app.mock, &m.user, &title), 1);
    assert!(sink.mails_for(&id).is_empty());
}

/// `channel=wecom` means WeCom only: a permanent WeCom failure is not mailed.
#[tokio::test]
async fn channel_wecom_means_wecom_only() {
    let (app, sink) = email_app(|c| c.delivery.retry_window = Duration::from_secs(30)).await;
    let m = member(&app, "wonly").await;
    bind(&app, &sink, &m).await;
    app.mock.fail_always_for(&m.user, wecom_permanent());
    let id = send_on(&app, &m.token, "wecom only", "", "wecom").await;
    let status = app.wait_for_status(&id, &m.token, "failed", WAIT).await;
    assert_eq!(history(&status), pairs(&[("wecom", "failed")]), "{status}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sink.mails_for(&id).is_empty(), "not mailed");
}
