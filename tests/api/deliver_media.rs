//! Delivering messages with images and files (issue 20), judged by what the services
//! received: WeCom gets the text, then each attachment as an image or file message, each a
//! part of its own (counted against the member's limits, kept in lane order, retried alone,
//! never resent once delivered); e-mail attaches the files byte for byte; channels that
//! cannot carry files get a line naming them with the page link; a digest never carries a
//! message with attachments; a `kill -9` mid-parts resumes at the part that was in flight.
//!
//! Messages with attachments are sent as a user would: `POST /send` multipart with `file`
//! parts, the token in the query.

use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::helpers::*;
use crate::mock_destinations::{DestKind, MockDestinations};
use crate::mock_sms::{MockSms, SmsProvider, SmsSent};
use crate::mock_wecom::{MockWeCom, SendCall, SendReply};
use crate::smtp::{SmtpSink, six_digits};

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

/// A small PNG (WeCom takes it as an image): the signature, then `n` bytes of `seed`.
fn png(seed: u8, n: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..n).map(|i| seed.wrapping_add((i * 7 % 251) as u8)));
    bytes
}

/// A small PDF (WeCom takes it as a file).
fn pdf(seed: u8, n: usize) -> Vec<u8> {
    let mut bytes = b"%PDF-1.4\n".to_vec();
    bytes.extend((0..n).map(|i| seed.wrapping_add((i * 13 % 241) as u8)));
    bytes
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `POST /send?token=…` as `curl -F title=… -F content=… -F file=@… …` would: the text
/// fields (and any `extra`, e.g. `channel`), then each file as a `file` part.
async fn post_files(
    api: &Api,
    token: &str,
    title: &str,
    content: &str,
    extra: &[(&str, &str)],
    files: &[(&str, &[u8])],
) -> reqwest::Response {
    let mut form = reqwest::multipart::Form::new()
        .text("title", title.to_owned())
        .text("content", content.to_owned());
    for (name, value) in extra {
        form = form.text((*name).to_owned(), (*value).to_owned());
    }
    for (filename, bytes) in files {
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(bytes.to_vec()).file_name((*filename).to_owned()),
        );
    }
    reqwest::Client::new()
        .post(api.url("/send"))
        .query(&[("token", token)])
        .multipart(form)
        .send()
        .await
        .expect("POST /send multipart")
}

/// As [`post_files`]; asserts it was accepted and returns the message id.
async fn send_files(
    api: &Api,
    token: &str,
    title: &str,
    content: &str,
    extra: &[(&str, &str)],
    files: &[(&str, &[u8])],
) -> String {
    accepted_id(post_files(api, token, title, content, extra, files).await).await
}

struct Member {
    user: String,
    token: String,
}

async fn member(api: &Api, prefix: &str) -> Member {
    let user = userid(prefix);
    let token = api.get_token(&user).await;
    Member { user, token }
}

/// `(outcome, error or note)` of each history entry.
fn history(status: &Value) -> Vec<(String, String)> {
    status["history"]
        .as_array()
        .unwrap_or_else(|| panic!("history is an array: {status}"))
        .iter()
        .map(|e| {
            let outcome = e["outcome"].as_str().unwrap_or_default().to_owned();
            let said = e["error"]
                .as_str()
                .or_else(|| e["note"].as_str())
                .unwrap_or_default()
                .to_owned();
            (outcome, said)
        })
        .collect()
}

/// What WeCom showed `user`, in arrival order: `text:…` for a text, `image:NAME` and
/// `file:NAME` for an attachment (the name it was uploaded under), `card:TITLE`.
fn shown_to(mock: &MockWeCom, user: &str) -> Vec<String> {
    mock.delivered_calls()
        .iter()
        .filter(|c| c.touser() == user)
        .map(|c| {
            let msgtype = c.body["msgtype"].as_str().unwrap_or_default();
            match msgtype {
                "image" | "file" => {
                    let media_id = c.body[msgtype]["media_id"].as_str().unwrap_or_default();
                    let name = mock
                        .upload_of(media_id)
                        .and_then(|u| u.filename)
                        .unwrap_or_else(|| format!("<unknown {media_id}>"));
                    format!("{msgtype}:{name}")
                }
                "textcard" => format!(
                    "card:{}",
                    c.body["textcard"]["title"].as_str().unwrap_or_default()
                ),
                _ => format!("text:{}", c.text()),
            }
        })
        .collect()
}

/// Waits until WeCom showed `user` at least `n` messages; returns them ([`shown_to`]).
async fn wait_shown(mock: &MockWeCom, user: &str, n: usize, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let shown = shown_to(mock, user);
        if shown.len() >= n {
            return shown;
        }
        assert!(
            Instant::now() < deadline,
            "{user} was shown {} of {n} messages within {timeout:?}: {shown:?}\ncalls: {:#?}",
            shown.len(),
            mock.calls()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// No member was shown more than `count` messages in any window `[t, t + per)`, judged by
/// when the mock received them.
fn assert_member_limit(calls: &[SendCall], user: &str, count: usize, per: Duration) {
    let mut times: Vec<Instant> = calls
        .iter()
        .filter(|c| c.delivered() && c.touser() == user)
        .map(|c| c.received_at)
        .collect();
    times.sort();
    for (i, start) in times.iter().enumerate() {
        let inside = times[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < per)
            .count();
        assert!(
            inside <= count,
            "{user} was shown {inside} messages within {per:?} (limit {count})"
        );
    }
}

/// Short backoffs and probes, a 30 s retry window.
fn quick(c: &mut Settings) {
    c.delivery.backoff_initial = Duration::from_millis(50);
    c.delivery.backoff_max = Duration::from_millis(200);
    c.delivery.probe_max = Duration::from_millis(200);
    c.delivery.retry_window = Duration::from_secs(30);
}

// ------------------------------------------------------------------------------------------
// WeCom: part by part
// ------------------------------------------------------------------------------------------

/// The text, then the image, then the file, each its own message, each counted against the
/// member's limits: at 2 a second the three parts and the plain message after them are
/// spread over the windows, none dropped, and the plain one comes after the last part.
#[tokio::test]
async fn wecom_gets_the_text_then_each_attachment_in_order_each_counted() {
    let app = spawn_app_with(|c| {
        quick(c);
        c.wecom.member_limits = member_limits(&[(2, Duration::from_secs(1))]);
    })
    .await;
    let m = member(&app, "parts").await;
    let chart = png(1, 3000);
    let report = pdf(2, 5000);
    let id = send_files(
        &app,
        &m.token,
        "Weekly report",
        "numbers attached",
        &[],
        &[("chart.png", &chart), ("report.pdf", &report)],
    )
    .await;
    let after = app.send_ok(&m.token, "after the files", "").await;
    let shown = wait_shown(&app.mock, &m.user, 4, Duration::from_secs(10)).await;
    assert_eq!(
        shown,
        [
            "text:Weekly report\n\nnumbers attached",
            "image:chart.png",
            "file:report.pdf",
            "text:after the files",
        ]
    );
    let calls = app.mock.delivered_calls();
    assert_member_limit(&calls, &m.user, 2, Duration::from_secs(1));
    // What was uploaded is what was sent, under its name, as its kind.
    let uploads = app.mock.uploads();
    let got: Vec<(Option<&str>, Option<&str>, &str)> = uploads
        .iter()
        .map(|u| (u.kind.as_deref(), u.filename.as_deref(), u.sha256.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (Some("image"), Some("chart.png"), sha256(&chart).as_str()),
            (Some("file"), Some("report.pdf"), sha256(&report).as_str()),
        ]
    );
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "wecom", "{status}");
    assert_eq!(status["last_error"], Value::Null, "{status}");
    assert_eq!(
        history(&status),
        pairs(&[
            ("delivered", "part 1 of 3 (text)"),
            ("delivered", "part 2 of 3 (image chart.png)"),
            ("delivered", ""),
        ]),
        "{status}"
    );
    app.wait_for_status(&after, &m.token, "delivered", WAIT)
        .await;
    assert_eq!(app.mock.calls().len(), 4, "nothing was sent twice");
}

/// Each part is in the send history, not only in the worker's memory: right after a
/// restart, a plain message still waits for the windows the three parts used up.
#[tokio::test]
async fn parts_count_against_the_limits_across_a_restart() {
    let mut app = spawn_app_with(|c| {
        quick(c);
        c.wecom.member_limits = member_limits(&[(3, Duration::from_secs(3))]);
        c.delivery.instance_id = Some("media-limits-restart".to_owned());
    })
    .await;
    let m = member(&app, "partsrestart").await;
    let id = send_files(
        &app,
        &m.token,
        "three parts",
        "",
        &[],
        &[("chart.png", &png(14, 700)), ("report.pdf", &pdf(15, 700))],
    )
    .await;
    app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    app.restart().await;
    let plain = app.send_ok(&m.token, "after the restart", "").await;
    app.wait_for_status(&plain, &m.token, "delivered", WAIT)
        .await;
    assert_eq!(
        shown_to(&app.mock, &m.user),
        [
            "text:three parts",
            "image:chart.png",
            "file:report.pdf",
            "text:after the restart"
        ]
    );
    assert_member_limit(
        &app.mock.delivered_calls(),
        &m.user,
        3,
        Duration::from_secs(3),
    );
}

/// The image fails (WeCom answers HTTP 502): the history says the text went out and the
/// image did not; the retry sends the image alone (WeCom shows the text once), then the
/// file.
#[tokio::test]
async fn a_failed_image_is_retried_alone_and_the_history_says_the_text_was_delivered() {
    let app = spawn_app_with(quick).await;
    let m = member(&app, "partfail").await;
    let chart = png(3, 2000);
    let report = pdf(4, 2000);
    // The text is accepted, the image's first try is not.
    app.mock.push_replies_for(
        &m.user,
        [SendReply::ok(), SendReply::http(502), SendReply::http(502)],
    );
    let id = send_files(
        &app,
        &m.token,
        "Deploy",
        "",
        &[],
        &[("chart.png", &chart), ("report.pdf", &report)],
    )
    .await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    let shown = shown_to(&app.mock, &m.user);
    assert_eq!(
        shown,
        ["text:Deploy", "image:chart.png", "file:report.pdf"],
        "the text once, then the image, then the file"
    );
    let texts = app
        .mock
        .calls()
        .iter()
        .filter(|c| c.touser() == m.user && c.body["msgtype"] == "text")
        .count();
    assert_eq!(texts, 1, "the text was never sent again");
    let h = history(&status);
    assert_eq!(
        h[0],
        pairs(&[("delivered", "part 1 of 3 (text)")])[0],
        "{status}"
    );
    let retries: Vec<&(String, String)> = h.iter().filter(|(o, _)| o == "retry").collect();
    assert_eq!(retries.len(), 2, "{status}");
    for (_, error) in retries {
        assert_eq!(
            error, "text delivered; image chart.png: WeCom API answered HTTP 502",
            "{status}"
        );
    }
    assert_eq!(
        h[h.len() - 2],
        pairs(&[("delivered", "part 2 of 3 (image chart.png)")])[0],
        "{status}"
    );
    assert_eq!(status["last_error"], Value::Null, "{status}");
    // The image was uploaded once: its retries reuse the media_id.
    assert_eq!(app.mock.upload_calls().len(), 2, "one upload per file");
}

/// A failed part that is given up on says so in `last_error` while the text stays
/// delivered: the message fails (its last channel) with the parts that went out named.
#[tokio::test]
async fn a_part_refused_for_good_fails_the_message_saying_what_was_delivered() {
    let app = spawn_app_with(quick).await;
    let m = member(&app, "partperm").await;
    let chart = png(5, 1000);
    app.mock
        .push_replies_for(&m.user, [SendReply::ok(), wecom_permanent()]);
    let id = send_files(&app, &m.token, "Alert", "", &[], &[("chart.png", &chart)]).await;
    let status = wait_settled(&app, &id, &m.token, WAIT).await;
    assert_eq!(status["status"], "failed", "{status}");
    let last_error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.starts_with("text delivered; image chart.png: "),
        "{status}"
    );
    let h = history(&status);
    assert_eq!(
        h[0],
        pairs(&[("delivered", "part 1 of 2 (text)")])[0],
        "{status}"
    );
    assert_eq!(h[1].0, "failed", "{status}");
    assert_eq!(shown_to(&app.mock, &m.user), ["text:Alert"]);
}

/// WeCom forgot a cached `media_id` (40007): it is uploaded again once and the image sent
/// with the new id; the message is delivered.
#[tokio::test]
async fn a_forgotten_media_id_is_uploaded_again_once_and_the_image_delivered() {
    let app = spawn_app_with(quick).await;
    let m = member(&app, "expired").await;
    let chart = png(6, 4000);
    let first = send_files(&app, &m.token, "one", "", &[], &[("chart.png", &chart)]).await;
    app.wait_for_status(&first, &m.token, "delivered", WAIT)
        .await;
    assert_eq!(app.mock.uploads().len(), 1);
    app.mock.expire_all_media();
    let second = send_files(&app, &m.token, "two", "", &[], &[("chart.png", &chart)]).await;
    let status = app
        .wait_for_status(&second, &m.token, "delivered", WAIT)
        .await;
    assert_eq!(status["last_error"], Value::Null, "{status}");
    let uploads = app.mock.uploads();
    assert_eq!(uploads.len(), 2, "uploaded again, once");
    assert_eq!(uploads[1].sha256, sha256(&chart));
    let images: Vec<SendCall> = app
        .mock
        .calls()
        .into_iter()
        .filter(|c| c.touser() == m.user && c.body["msgtype"] == "image")
        .collect();
    let answers: Vec<i64> = images.iter().map(|c| c.reply.errcode).collect();
    assert_eq!(
        answers,
        [0, 40007, 0],
        "the stale id once, then the new one"
    );
    assert_eq!(
        shown_to(&app.mock, &m.user),
        ["text:one", "image:chart.png", "text:two", "image:chart.png"]
    );
}

/// The same content twice (two messages, two members): uploaded once, its `media_id`
/// reused.
#[tokio::test]
async fn the_same_file_twice_is_uploaded_once() {
    let app = spawn_app_with(quick).await;
    let a = member(&app, "samea").await;
    let b = member(&app, "sameb").await;
    let report = pdf(7, 6000);
    let first = send_files(&app, &a.token, "a", "", &[], &[("report.pdf", &report)]).await;
    app.wait_for_status(&first, &a.token, "delivered", WAIT)
        .await;
    let second = send_files(&app, &b.token, "b", "", &[], &[("report.pdf", &report)]).await;
    app.wait_for_status(&second, &b.token, "delivered", WAIT)
        .await;
    assert_eq!(
        app.mock.upload_calls().len(),
        1,
        "one upload for one content"
    );
    assert_eq!(shown_to(&app.mock, &a.user), ["text:a", "file:report.pdf"]);
    assert_eq!(shown_to(&app.mock, &b.user), ["text:b", "file:report.pdf"]);
}

// ------------------------------------------------------------------------------------------
// e-mail and the channels that link
// ------------------------------------------------------------------------------------------

/// E-mail carries the files as attachments, byte for byte, under their names.
#[tokio::test]
async fn email_attaches_the_files_byte_for_byte() {
    let sink = SmtpSink::start().await;
    let port = sink.port;
    let app = spawn_app_with(|c| {
        quick(c);
        c.email = Some(local_email(port));
    })
    .await;
    let m = member(&app, "mailfiles").await;
    let address = format!("{}@example.com", m.user);
    let reply = say(&app, &m.user, &format!("email {address}")).await;
    assert_says(&reply, "code sent", "`email <address>`");
    let code_mail = &sink.wait_for_mails_to(&address, 1, WAIT).await[0];
    let code = code_mail.code().expect("a code");
    assert_says(
        &say(&app, &m.user, &format!("verify {code}")).await,
        "bound",
        "`verify`",
    );
    let chart = png(8, 70_000);
    let report = pdf(9, 300_000);
    let id = send_files(
        &app,
        &m.token,
        "Quarterly",
        "see the files",
        &[("channel", "email")],
        &[("图表 chart.png", &chart), ("report.pdf", &report)],
    )
    .await;
    let mail = sink.wait_for_mail_for(&id, WAIT).await;
    let parsed = mail.parsed();
    assert_eq!(parsed.ctype.mimetype, "multipart/mixed", "{}", mail.raw());
    let attached: Vec<(String, String, String)> = parsed
        .subparts
        .iter()
        .filter(|p| p.get_content_disposition().params.contains_key("filename"))
        .map(|p| {
            (
                p.get_content_disposition().params["filename"].clone(),
                p.ctype.mimetype.clone(),
                sha256(&p.get_body_raw().expect("an attachment body")),
            )
        })
        .collect();
    assert_eq!(
        attached,
        [
            (
                "图表 chart.png".to_owned(),
                "image/png".to_owned(),
                sha256(&chart)
            ),
            (
                "report.pdf".to_owned(),
                "application/pdf".to_owned(),
                sha256(&report)
            ),
        ]
    );
    assert!(
        mail.text().unwrap_or_default().contains("see the files"),
        "{}",
        mail.raw()
    );
    app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert!(app.mock.uploads().is_empty(), "nothing went to WeCom");
}

/// The line a channel that cannot carry files gets for `names`, linking `page`.
fn attachment_line(names: &[&str], page: &str) -> String {
    let noun = if names.len() == 1 { "file" } else { "files" };
    format!(
        "📎 {} 个附件 {noun}: {} → {page}",
        names.len(),
        names.join(", ")
    )
}

/// A group robot gets the text with a line naming the files and linking the page, where
/// they are.
#[tokio::test]
async fn a_group_robot_gets_a_line_naming_the_files_with_the_page_link() {
    const KEY: &str = "media-robot-key";
    let mock = MockDestinations::start().await;
    mock.add_wecom_robot(KEY);
    let mut section = destinations_at(&mock);
    section.named.insert(
        "ops".to_owned(),
        destination_at("wecom-robot", &mock.wecom_url(KEY), None),
    );
    let app = spawn_app_with(|c| {
        quick(c);
        c.destinations = section;
    })
    .await;
    let m = member(&app, "robotfiles").await;
    let id = send_files(
        &app,
        &m.token,
        "Build 42",
        "failed",
        &[("channel", "ops")],
        &[
            ("log.txt", b"line one\nline two\n"),
            ("chart.png", &png(10, 500)),
        ],
    )
    .await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    let page = status["page"].as_str().expect("a page").to_owned();
    let got = mock
        .wait_for_messages_to(DestKind::WeComRobot, KEY, 1, WAIT)
        .await;
    assert_eq!(got.len(), 1, "one message: the files are linked, not sent");
    let text = &got[0].text;
    assert!(text.starts_with("Build 42"), "{text}");
    assert!(
        text.contains(&attachment_line(&["log.txt", "chart.png"], &page)),
        "{text}"
    );
    assert!(app.mock.uploads().is_empty(), "nothing went to WeCom");
}

/// A text (Twilio) carries the line and the page link too.
#[tokio::test]
async fn a_text_message_carries_the_line_and_the_page_link() {
    const TYPED: &str = "138 0013 8000";
    const PHONE: &str = "+8613800138000";
    let sms = MockSms::start().await;
    let app = spawn_app_with(|c| {
        quick(c);
        c.sms = Some(mock_sms(&sms, SmsProvider::Twilio));
    })
    .await;
    let m = member(&app, "smsfiles").await;
    let reply = say(&app, &m.user, &format!("phone {TYPED}")).await;
    assert_says(&reply, "code sent", "`phone <number>`");
    let code = loop_until(|| {
        sms.sent()
            .into_iter()
            .find(|t: &SmsSent| t.to_e164() == PHONE)
            .and_then(|t| six_digits(&t.text))
    })
    .await;
    assert_says(
        &say(&app, &m.user, &format!("verify {code}")).await,
        "bound",
        "`verify`",
    );
    let id = send_files(
        &app,
        &m.token,
        "Disk",
        "",
        &[("channel", "sms")],
        &[("df.txt", b"/dev/sda1 99%\n")],
    )
    .await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    let page = status["page"].as_str().expect("a page").to_owned();
    let text = loop_until(|| {
        sms.sent()
            .into_iter()
            .find(|t| t.text.contains(&format!("/m/{id}?")))
    })
    .await
    .text;
    assert!(text.contains("📎 1 个附件 file: df.txt"), "{text}");
    assert_eq!(
        text.matches(&page).count(),
        1,
        "the page link, once: {text}"
    );
}

/// Polls `probe` every 10 ms until it yields a value (at most [`WAIT`]).
async fn loop_until<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ------------------------------------------------------------------------------------------
// digests
// ------------------------------------------------------------------------------------------

/// A burst at one a second with digests after 1 s: the plain messages before and after the
/// one with a file go in digests, the one with a file never does — it goes alone, part by
/// part, in its place in the lane.
#[tokio::test]
async fn a_message_with_files_is_never_carried_in_a_digest() {
    let app = spawn_app_with(|c| {
        quick(c);
        c.wecom.member_limits = member_limits(&[(1, Duration::from_secs(1))]);
        c.delivery.digest_after = Some(Duration::from_secs(1));
    })
    .await;
    let m = member(&app, "digestfiles").await;
    let mut before = Vec::new();
    for i in 0..4 {
        before.push(app.send_ok(&m.token, &format!("before {i}"), "").await);
    }
    let chart = png(11, 800);
    let files = send_files(
        &app,
        &m.token,
        "with file",
        "",
        &[],
        &[("chart.png", &chart)],
    )
    .await;
    let mut after = Vec::new();
    for i in 0..4 {
        after.push(app.send_ok(&m.token, &format!("after {i}"), "").await);
    }
    for id in before.iter().chain(&after) {
        app.wait_for_status(id, &m.token, "delivered", Duration::from_secs(30))
            .await;
    }
    let status = app
        .wait_for_status(&files, &m.token, "delivered", WAIT)
        .await;
    assert_eq!(status["via"], Value::Null, "delivered alone: {status}");
    let mut digests = 0;
    for id in before.iter().chain(&after) {
        if !app.message_json(id, &m.token).await["via"].is_null() {
            digests += 1;
        }
    }
    assert!(digests > 0, "the plain messages around it went in digests");
    // Its text and its image, each alone, after everything sent before it and before
    // everything sent after it.
    let shown = shown_to(&app.mock, &m.user);
    let at = |wanted: &str| {
        shown
            .iter()
            .position(|s| s == wanted)
            .unwrap_or_else(|| panic!("{wanted} shown: {shown:#?}"))
    };
    let (text, image) = (at("text:with file"), at("image:chart.png"));
    assert_eq!(image, text + 1, "{shown:#?}");
    for (i, s) in shown.iter().enumerate() {
        assert!(
            !(i != text && s.contains("with file")),
            "not in a digest: {shown:#?}"
        );
        if s.contains("before ") {
            assert!(i < text, "{shown:#?}");
        }
        if s.contains("after ") {
            assert!(i > image, "{shown:#?}");
        }
    }
    assert_member_limit(
        &app.mock.delivered_calls(),
        &m.user,
        1,
        Duration::from_secs(1),
    );
}

// ------------------------------------------------------------------------------------------
// a crash mid-parts
// ------------------------------------------------------------------------------------------

/// The binary is killed (`kill -9`) while the image part is at WeCom: the text was
/// recorded as delivered, so the next start sends the image (again: it may have arrived)
/// and the file, never the text.
#[tokio::test]
async fn kill9_mid_parts_resumes_at_the_part_in_flight() {
    let mock = MockWeCom::start().await;
    let config = settings_with(|c| {
        quick(c);
        c.delivery.instance_id = Some("media-kill9".to_owned());
    });
    let setup = bin_setup(&config, &mock.base_url);
    let mut bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    let user = userid("killparts");
    let token = bin.get_token(&user).await;
    let started = mock.send_started();
    // The text goes through; the image hangs at WeCom until the process is gone.
    mock.push_replies_for(
        &user,
        [
            SendReply::ok(),
            SendReply::ok().delayed(Duration::from_secs(30)),
        ],
    );
    let chart = png(12, 1500);
    let report = pdf(13, 1500);
    let id = send_files(
        &bin,
        &token,
        "Nightly",
        "",
        &[],
        &[("chart.png", &chart), ("report.pdf", &report)],
    )
    .await;
    // The text arrived, then the image request.
    mock.wait_for_send_started(started + 2, WAIT).await;
    let status = bin.message_json(&id, &token).await;
    assert_eq!(
        history(&status),
        pairs(&[("delivered", "part 1 of 3 (text)")]),
        "{status}"
    );
    bin.kill9();
    mock.heal();
    let bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    let status = bin.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(
        shown_to(&mock, &user),
        ["text:Nightly", "image:chart.png", "file:report.pdf"],
        "the text once; the image (cut off) and the file after the restart"
    );
    assert_eq!(
        history(&status),
        pairs(&[
            ("delivered", "part 1 of 3 (text)"),
            ("delivered", "part 2 of 3 (image chart.png)"),
            ("delivered", ""),
        ]),
        "{status}"
    );
}
