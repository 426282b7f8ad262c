//! Shared destinations from the config (issue #18): `[destinations.NAME]` of each kind — a
//! WeCom group robot, a DingTalk robot, a Feishu bot, a Telegram chat through the server's
//! bot, a signed webhook — as channels named by NAME, against [`MockDestinations`]: what
//! each kind receives (rendered and signed as the real service expects), routes and
//! fallbacks that name destinations, who may use them, refusals classified permanent or
//! transient, the services' rate windows shared by every member, secrets kept out of every
//! answer and log line, and start-up errors.
//!
//! Deliveries are checked on what the mock accepted (it verifies every signature), never on
//! what the gateway says about itself alone.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;
use crate::mock_destinations::*;

// ------------------------------------------------------------------------------------------
// the destinations the mock knows
// ------------------------------------------------------------------------------------------

/// The WeCom group robot's key.
const WECOM_KEY: &str = "693a91f6-7e2b-4bc4-97a0-0ec2a1fa5aaa";
/// The DingTalk robot's access token and 加签 secret.
const DING_TOKEN: &str = "0e1c5a4f9b3d7e2a8c6f1b0d4e9a7c3b5f2d8e6a1c9b7f3e0d5a2c8b4f6e1d9a";
const DING_SECRET: &str = "SEC4f1e9d2c7b8a3e6f0d5c1b9a8e7f2d3c4b5a6e7f8d9c0b1a2e3f4d5c6b7a8e9f0";
/// The Feishu bot's hook id and 签名校验 secret.
const FEISHU_HOOK: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
const FEISHU_SECRET: &str = "qpL7l7UaQ9vQXcJ0GZv3Bf";
/// The server's Telegram bot and the group it writes to.
const TG_TOKEN: &str = "7012345678:AAHk3xQ9vR2mP8sT4uW6yZ1bC5dE7fG9hJ0";
const TG_CHAT: i64 = -1_001_234_567_890;
/// The webhook receiver's path, the token its URL carries, and its Standard Webhooks
/// secret (`whsec_` + base64 of 24 bytes).
const HOOK_PATH: &str = "/hooks/pushbot";
const HOOK_URL_TOKEN: &str = "hooktok3n9f8e7d6c5b4";
const HOOK_SECRET: &str = "whsec_c2VjcmV0LWtleS1mb3ItdGhlLXdlYmhvb2sh";
/// The base64 part of [`HOOK_SECRET`] (the key itself, encoded).
const HOOK_SECRET_B64: &str = "c2VjcmV0LWtleS1mb3ItdGhlLXdlYmhvb2sh";

/// What every page link starts with.
const PAGE_PREFIX: &str = "https://push.example.com/m/";

/// One configured destination of each kind, by the name it has in the test config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    /// `ops`: a WeCom group robot.
    Robot,
    /// `ding`: a DingTalk robot with 加签.
    Ding,
    /// `fei`: a Feishu bot with 签名校验.
    Fei,
    /// `tg`: a Telegram supergroup.
    Tg,
    /// `hook`: a signed webhook.
    Hook,
}

impl Dest {
    const ALL: [Dest; 5] = [Dest::Robot, Dest::Ding, Dest::Fei, Dest::Tg, Dest::Hook];

    /// The destination's name: what `channel=` names and the history shows.
    fn name(self) -> &'static str {
        match self {
            Dest::Robot => "ops",
            Dest::Ding => "ding",
            Dest::Fei => "fei",
            Dest::Tg => "tg",
            Dest::Hook => "hook",
        }
    }

    fn kind(self) -> DestKind {
        match self {
            Dest::Robot => DestKind::WeComRobot,
            Dest::Ding => DestKind::DingTalk,
            Dest::Fei => DestKind::Feishu,
            Dest::Tg => DestKind::Telegram,
            Dest::Hook => DestKind::Webhook,
        }
    }

    /// How the mock names it ([`DestMessage::destination`]).
    fn mock_id(self) -> String {
        match self {
            Dest::Robot => WECOM_KEY.to_owned(),
            Dest::Ding => DING_TOKEN.to_owned(),
            Dest::Fei => FEISHU_HOOK.to_owned(),
            Dest::Tg => TG_CHAT.to_string(),
            Dest::Hook => HOOK_PATH.to_owned(),
        }
    }

    /// Its `[destinations.NAME]` table, pointing at `mock`.
    fn config(self, mock: &MockDestinations) -> DestinationSettings {
        match self {
            Dest::Robot => destination_at("wecom-robot", &mock.wecom_url(WECOM_KEY), None),
            Dest::Ding => destination_at(
                "dingtalk",
                &mock.dingtalk_url(DING_TOKEN),
                Some(DING_SECRET),
            ),
            Dest::Fei => {
                destination_at("feishu", &mock.feishu_url(FEISHU_HOOK), Some(FEISHU_SECRET))
            }
            Dest::Tg => telegram_destination(&TG_CHAT.to_string()),
            Dest::Hook => destination_at(
                "webhook",
                &format!("{}?token={HOOK_URL_TOKEN}", mock.webhook_url(HOOK_PATH)),
                Some(HOOK_SECRET),
            ),
        }
    }

    /// The messages the mock accepted for it, in arrival order.
    fn received(self, mock: &MockDestinations) -> Vec<DestMessage> {
        mock.messages_to(self.kind(), &self.mock_id())
    }

    /// The requests the mock received for it, refused ones included.
    fn calls(self, mock: &MockDestinations) -> Vec<DestCall> {
        mock.calls_to(self.kind(), &self.mock_id())
            .into_iter()
            .filter(|c| c.action != "getMe" && c.action != "getChat")
            .collect()
    }
}

/// The mock, with the five destinations registered (signing secrets included), and the
/// `[destinations]` section pointing at it with one table for each.
async fn mock_destinations() -> (MockDestinations, DestinationsSettings) {
    let mock = MockDestinations::start().await;
    mock.add_wecom_robot(WECOM_KEY);
    mock.add_dingtalk_robot(DING_TOKEN, Some(DING_SECRET), &[]);
    mock.add_feishu_hook(FEISHU_HOOK, Some(FEISHU_SECRET), &[]);
    mock.add_telegram_bot(TG_TOKEN);
    mock.add_telegram_chat(TG_CHAT);
    mock.add_webhook(HOOK_PATH, Some(HOOK_SECRET));
    let mut section = destinations_at(&mock);
    section.telegram_bot_token = Some(secret(TG_TOKEN));
    for dest in Dest::ALL {
        section
            .named
            .insert(dest.name().to_owned(), dest.config(&mock));
    }
    (mock, section)
}

/// Short backoffs and probes, a 30 s retry window.
fn quick(c: &mut Settings) {
    c.delivery.backoff_initial = Duration::from_millis(50);
    c.delivery.backoff_max = Duration::from_millis(200);
    c.delivery.probe_max = Duration::from_millis(200);
    c.delivery.retry_window = Duration::from_secs(30);
}

/// The gateway (in-process) with the five destinations of [`mock_destinations`], quick
/// retries, and whatever `tweak` changes.
async fn dest_app(tweak: impl FnOnce(&mut Settings)) -> (TestApp, MockDestinations) {
    let (mock, section) = mock_destinations().await;
    let app = spawn_app_with(|c| {
        quick(c);
        c.destinations = section;
        tweak(c);
    })
    .await;
    (app, mock)
}

/// `[destinations.NAME]` of `section`.
fn named<'a>(section: &'a mut DestinationsSettings, name: &str) -> &'a mut DestinationSettings {
    section
        .named
        .get_mut(name)
        .unwrap_or_else(|| panic!("no [destinations.{name}] in the test config"))
}

/// `[destinations.FROM]` called `to` instead.
fn rename(section: &mut DestinationsSettings, from: &str, to: &str) {
    let d = section.named.remove(from).expect("a destination to rename");
    section.named.insert(to.to_owned(), d);
}

/// A member with a push token.
struct Member {
    user: String,
    token: String,
}

async fn member(api: &Api, prefix: &str) -> Member {
    member_named(api, &userid(prefix)).await
}

async fn member_named(api: &Api, user: &str) -> Member {
    let token = api.get_token(user).await;
    Member {
        user: user.to_owned(),
        token,
    }
}

/// `POST /send` (JSON) with these fields; the answer as it came.
async fn post_send(api: &Api, token: &str, fields: Value) -> reqwest::Response {
    api.send_json(Some(token), &fields).await
}

/// Sends `title` / `content` on `channel`; returns the message id.
async fn send_on(api: &Api, token: &str, title: &str, content: &str, channel: &str) -> String {
    accepted_id(
        post_send(
            api,
            token,
            json!({"title": title, "content": content, "channel": channel}),
        )
        .await,
    )
    .await
}

/// `(channel, outcome)` of each history entry.
fn history(status: &Value) -> Vec<(String, String)> {
    status["history"]
        .as_array()
        .unwrap_or_else(|| panic!("history is an array: {status}"))
        .iter()
        .map(|e| {
            let channel = e["channel"].as_str().unwrap_or_else(|| panic!("{e}"));
            let outcome = e["outcome"].as_str().unwrap_or_else(|| panic!("{e}"));
            (channel.to_owned(), outcome.to_owned())
        })
        .collect()
}

/// Every request was properly signed, authenticated and went to an API the mock has.
fn assert_well_signed(mock: &MockDestinations) {
    assert_eq!(
        mock.signature_failures(),
        0,
        "no badly signed request: {:#?}",
        mock.refused()
    );
    assert_eq!(mock.auth_failures(), 0, "{:#?}", mock.refused());
    assert!(
        mock.unexpected_requests().is_empty(),
        "{:?}",
        mock.unexpected_requests()
    );
}

/// The message's page link, as `/messages/{id}` gives it.
fn page_of(status: &Value) -> String {
    let page = status["page"]
        .as_str()
        .unwrap_or_else(|| panic!("the message has a page: {status}"));
    let id = status["id"].as_str().expect("an id");
    assert!(
        page.starts_with(&format!("{PAGE_PREFIX}{id}?k=")),
        "the page is {PAGE_PREFIX}{{id}}?k=…: {page}"
    );
    page.to_owned()
}

/// Waits until `dest` received `n` messages; returns them.
async fn wait_received(mock: &MockDestinations, dest: Dest, n: usize) -> Vec<DestMessage> {
    mock.wait_for_messages_to(dest.kind(), &dest.mock_id(), n, WAIT)
        .await
}

// ------------------------------------------------------------------------------------------
// 1. each kind delivers
// ------------------------------------------------------------------------------------------

/// One test per kind for a scenario `async fn name(dest: Dest)`: `destinations::name::robot`,
/// `…::dingtalk`, `…::feishu`, `…::telegram`, `…::webhook`. Attributes before the name go on
/// all five.
macro_rules! on_each_kind {
    ($(#[$attr:meta])* $scenario:ident) => {
        mod $scenario {
            use super::Dest;

            $(#[$attr])*
            #[tokio::test]
            async fn wecom_robot() {
                super::$scenario(Dest::Robot).await;
            }

            $(#[$attr])*
            #[tokio::test]
            async fn dingtalk() {
                super::$scenario(Dest::Ding).await;
            }

            $(#[$attr])*
            #[tokio::test]
            async fn feishu() {
                super::$scenario(Dest::Fei).await;
            }

            $(#[$attr])*
            #[tokio::test]
            async fn telegram() {
                super::$scenario(Dest::Tg).await;
            }

            $(#[$attr])*
            #[tokio::test]
            async fn webhook() {
                super::$scenario(Dest::Hook).await;
            }
        }
    };
}

/// The plain message: characters markup must escape, two lines.
const PLAIN_TITLE: &str = "Disk <full> & more";
const PLAIN_CONTENT: &str = "host-7 at 91% <b>\nsecond line";
/// The markdown message, with the sender's link.
const MD_TITLE: &str = "Report";
const MD_CONTENT: &str = "**disk** 91%";
const MD_URL: &str = "https://grafana.example.com/d/1";

/// 21000 bytes (7000 characters) of content: past every kind's limit.
fn long_content() -> String {
    "磁盘使用率超过阈值。".repeat(700)
}

/// Sends one plain, one markdown and one long message to `dest` by its name, each after
/// the last was delivered; returns their `/messages/{id}` states.
async fn send_three(app: &TestApp, m: &Member, dest: Dest) -> [Value; 3] {
    let name = dest.name();
    let mut out = Vec::new();
    for fields in [
        json!({"title": PLAIN_TITLE, "content": PLAIN_CONTENT, "channel": name}),
        json!({
            "title": MD_TITLE, "content": MD_CONTENT, "format": "markdown",
            "url": MD_URL, "channel": name,
        }),
        json!({"title": "Long", "content": long_content(), "channel": name}),
    ] {
        let id = accepted_id(post_send(app, &m.token, fields).await).await;
        let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
        assert_eq!(status["channel"], name, "{status}");
        assert_eq!(history(&status), pairs(&[(name, "delivered")]), "{status}");
        out.push(status);
    }
    out.try_into().expect("three")
}

/// `channel=NAME` sends one message to the destination, correctly signed, rendered as the
/// kind renders it: a plain message (escaped where markup is used), a markdown message with
/// the sender's link, and a long message cut on a character boundary with its page linked
/// (a webhook gets it whole, with the page in its body). Each is `delivered` on NAME.
async fn each_kind_delivers(dest: Dest) {
    let (app, mock) = dest_app(|_| {}).await;
    let m = member(&app, "kind").await;
    let [plain, md, long] = send_three(&app, &m, dest).await;
    wait_received(&mock, dest, 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = dest.received(&mock);
    assert_eq!(got.len(), 3, "exactly one each: {got:#?}");
    assert_eq!(
        dest.calls(&mock).len(),
        3,
        "nothing refused, nothing retried: {:#?}",
        mock.calls()
    );
    assert_eq!(
        mock.messages().len(),
        3,
        "no other destination got anything: {:#?}",
        mock.messages()
    );
    assert!(app.mock.sent().is_empty(), "nothing went by WeCom");
    assert_well_signed(&mock);
    for msg in &got {
        let signed = matches!(dest, Dest::Ding | Dest::Fei | Dest::Hook);
        assert_eq!(msg.signed, signed, "signed when it has a secret: {msg:#?}");
    }
    let page = page_of(&long);
    let (p, d, l) = (&got[0], &got[1], &got[2]);
    match dest {
        Dest::Robot => {
            assert_eq!(p.msgtype, "text", "{p:#?}");
            assert_eq!(p.text, format!("{PLAIN_TITLE}\n\n{PLAIN_CONTENT}"));
            assert_eq!(d.msgtype, "markdown", "{d:#?}");
            assert_eq!(
                d.text,
                format!("### {MD_TITLE}\n\n{MD_CONTENT}\n\n[详情]({MD_URL})")
            );
            assert_eq!(l.msgtype, "text", "{l:#?}");
            assert!(l.text.len() <= WECOM_TEXT_MAX_BYTES, "{}", l.text.len());
            assert!(
                l.text.len() > WECOM_TEXT_MAX_BYTES - 100,
                "{}",
                l.text.len()
            );
            assert!(l.text.starts_with("Long\n\n磁盘使用率"), "{}", l.text);
            assert!(
                l.text.ends_with(&format!("…\n\n阅读全文: {page}")),
                "cut, then the page: {}",
                l.text
            );
        }
        Dest::Ding => {
            assert_eq!(p.msgtype, "text", "{p:#?}");
            assert_eq!(p.text, format!("{PLAIN_TITLE}\n\n{PLAIN_CONTENT}"));
            assert_eq!(d.msgtype, "markdown", "{d:#?}");
            assert_eq!(d.title.as_deref(), Some(MD_TITLE), "{d:#?}");
            assert_eq!(
                d.text,
                format!("### {MD_TITLE}\n\n{MD_CONTENT}\n\n[详情]({MD_URL})")
            );
            assert_eq!(l.msgtype, "text", "{l:#?}");
            assert!(l.raw_body.len() <= DINGTALK_MAX_BODY_BYTES);
            assert!(l.text.starts_with("Long\n\n磁盘使用率"), "{}", l.text);
            assert!(
                l.text.ends_with(&format!("…\n\n阅读全文: {page}")),
                "cut, then the page: {}",
                l.text
            );
            assert!(l.text.len() < long_content().len());
        }
        Dest::Fei => {
            assert_eq!(p.msgtype, "post", "a titled message is a post: {p:#?}");
            assert_eq!(p.title.as_deref(), Some(PLAIN_TITLE), "{p:#?}");
            assert_eq!(p.text, PLAIN_CONTENT, "{p:#?}");
            assert_eq!(d.msgtype, "post", "{d:#?}");
            assert_eq!(d.title.as_deref(), Some(MD_TITLE), "{d:#?}");
            assert!(
                d.text.starts_with("disk 91%") && !d.text.contains("**"),
                "Feishu does not render markdown: it is made plain: {d:#?}"
            );
            assert!(
                d.links.contains(&("详情".to_owned(), MD_URL.to_owned())),
                "{d:#?}"
            );
            assert_eq!(l.msgtype, "post", "{l:#?}");
            assert!(l.raw_body.len() <= FEISHU_MAX_BODY_BYTES);
            assert!(l.text.starts_with("磁盘使用率"), "{}", l.text);
            assert!(
                l.text.ends_with("…\n\n阅读全文"),
                "cut, then the page: {l:#?}"
            );
            assert!(
                l.links.contains(&("阅读全文".to_owned(), page.clone())),
                "{:?}",
                l.links
            );
        }
        Dest::Tg => {
            assert_eq!(p.msgtype, "HTML", "{p:#?}");
            assert_eq!(
                p.text,
                "<b>Disk &lt;full&gt; &amp; more</b>\n\nhost-7 at 91% &lt;b&gt;\nsecond line"
            );
            assert_eq!(p.shown, format!("{PLAIN_TITLE}\n\n{PLAIN_CONTENT}"));
            assert_eq!(d.msgtype, "HTML", "{d:#?}");
            assert!(
                d.text
                    .starts_with(&format!("<b>{MD_TITLE}</b>\n\n<b>disk</b> 91%")),
                "markdown as Telegram HTML: {d:#?}"
            );
            assert!(d.shown.contains("disk 91%"), "{d:#?}");
            assert!(
                d.links.contains(&("详情".to_owned(), MD_URL.to_owned())),
                "{d:#?}"
            );
            assert!(
                l.shown.encode_utf16().count() <= TELEGRAM_MAX_TEXT,
                "{}",
                l.shown.encode_utf16().count()
            );
            assert!(l.shown.starts_with("Long\n\n磁盘使用率"), "{}", l.shown);
            assert!(
                l.shown.ends_with("…\n\n阅读全文"),
                "cut, then the page: {l:#?}"
            );
            assert!(
                l.links.contains(&("阅读全文".to_owned(), page.clone())),
                "{:?}",
                l.links
            );
        }
        Dest::Hook => {
            for (msg, status, title, content, format, url) in [
                (
                    p,
                    &plain,
                    PLAIN_TITLE,
                    PLAIN_CONTENT.to_owned(),
                    "text",
                    None,
                ),
                (
                    d,
                    &md,
                    MD_TITLE,
                    MD_CONTENT.to_owned(),
                    "markdown",
                    Some(MD_URL),
                ),
                (l, &long, "Long", long_content(), "text", None),
            ] {
                let id = status["id"].as_str().unwrap();
                assert_eq!(msg.msgtype, "application/json", "{msg:#?}");
                let body = &msg.body;
                let mut keys: Vec<&str> = body
                    .as_object()
                    .unwrap_or_else(|| panic!("a JSON object: {}", msg.raw_body))
                    .keys()
                    .map(String::as_str)
                    .collect();
                keys.sort_unstable();
                assert_eq!(
                    keys,
                    [
                        "content",
                        "created_at",
                        "format",
                        "id",
                        "page",
                        "title",
                        "url"
                    ],
                    "the documented body: {body}"
                );
                assert_eq!(body["id"], id, "{body}");
                assert_eq!(body["title"], title, "{body}");
                assert_eq!(body["content"], content.as_str(), "whole, never cut");
                assert_eq!(body["format"], format, "{body}");
                assert_eq!(body["url"], json!(url), "{body}");
                assert_eq!(body["page"], json!(page_of(status)), "{body}");
                let created = body["created_at"].as_str().expect("created_at");
                assert!(
                    created.len() == "2023-11-14T22:13:20.123Z".len() && created.ends_with('Z'),
                    "RFC 3339 UTC with milliseconds: {created}"
                );
                assert_eq!(msg.webhook_id.as_deref(), Some(id), "webhook-id is the id");
                assert!(header_of(msg, "webhook-timestamp").is_some(), "{msg:#?}");
                let sig = header_of(msg, "webhook-signature").unwrap_or_default();
                assert!(sig.starts_with("v1,"), "{sig}");
            }
        }
    }
}

on_each_kind!(each_kind_delivers);

/// A header of a message as received.
fn header_of<'a>(msg: &'a DestMessage, name: &str) -> Option<&'a str> {
    msg.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

// ------------------------------------------------------------------------------------------
// 2. fallback to a destination
// ------------------------------------------------------------------------------------------

/// WeCom refuses the member for good; their order `wecom,ops` (set in the chat) takes the
/// message on to the group robot at once, once; the history shows WeCom's failure, then
/// the delivery on `ops`.
#[tokio::test]
async fn a_members_fallback_order_moves_on_to_a_destination() {
    let (app, mock) = dest_app(|_| {}).await;
    let m = member(&app, "fallops").await;
    let reply = say(&app, &m.user, "fallback wecom,ops").await;
    assert!(
        reply.contains("wecom → ops"),
        "the order is set with the destination: {reply}"
    );
    app.mock.fail_always_for(&m.user, wecom_permanent());
    let started = Instant::now();
    let id = app.send_ok(&m.token, "Disk full", "host-7").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a permanent failure moves on at once: {:?}",
        started.elapsed()
    );
    assert_eq!(status["channel"], "ops", "{status}");
    assert_eq!(
        history(&status),
        pairs(&[("wecom", "failed"), ("ops", "delivered")]),
        "{status}"
    );
    assert!(history_error(&status, 0).contains("81013"), "{status}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = Dest::Robot.received(&mock);
    assert_eq!(got.len(), 1, "once: {got:#?}");
    assert_eq!(got[0].text, "Disk full\n\nhost-7");
    assert_eq!(app.mock.calls().len(), 1, "WeCom tried once");
    assert_well_signed(&mock);
}

/// The same through `delivery.fallback = ["wecom", "ops"]`, for a member with no order of
/// their own.
#[tokio::test]
async fn the_servers_fallback_order_moves_on_to_a_destination() {
    let (app, mock) = dest_app(|c| c.delivery.fallback = route("wecom,ops")).await;
    let m = member(&app, "srvfall").await;
    app.mock.fail_always_for(&m.user, wecom_permanent());
    let id = app.send_ok(&m.token, "Disk full", "host-8").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "ops", "{status}");
    assert_eq!(
        history(&status),
        pairs(&[("wecom", "failed"), ("ops", "delivered")]),
        "{status}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = Dest::Robot.received(&mock);
    assert_eq!(got.len(), 1, "once: {got:#?}");
    assert_eq!(got[0].text, "Disk full\n\nhost-8");

    // A member WeCom serves never reaches the destination.
    let other = member(&app, "srvok").await;
    let id = app.send_ok(&other.token, "fine", "by wecom").await;
    let status = app
        .wait_for_status(&id, &other.token, "delivered", WAIT)
        .await;
    assert_eq!(status["channel"], "wecom", "{status}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(Dest::Robot.received(&mock).len(), 1);
}

// ------------------------------------------------------------------------------------------
// 3. members
// ------------------------------------------------------------------------------------------

/// `members = [alice]`: bob's `channel=ops` is a 400 naming it (nothing sent); with
/// `channel=ops,wecom` his message skips it; alice's `channel=ops` is delivered there.
/// `members = "all"` (`fei`) takes bob's.
#[tokio::test]
async fn a_destination_for_some_members_refuses_the_others() {
    let alice = userid("alice");
    let (app, mock) = dest_app(|c| {
        named(&mut c.destinations, "ops").members = only(&[alice.as_str()]);
        named(&mut c.destinations, "fei").members = Members::All;
    })
    .await;
    let a = member_named(&app, &alice).await;
    let b = member(&app, "bob").await;

    let resp = post_send(
        &app,
        &b.token,
        json!({"title": "not for bob", "channel": "ops"}),
    )
    .await;
    let body = assert_error(resp, 400, "bad_request").await;
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("ops"), "names the destination: {body}");

    let id = send_on(&app, &b.token, "bob skips ops", "", "ops,wecom").await;
    let status = app.wait_for_status(&id, &b.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "wecom", "{status}");

    let id = send_on(&app, &a.token, "alice's", "to the group", "ops").await;
    let status = app.wait_for_status(&id, &a.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "ops", "{status}");

    let id = send_on(&app, &b.token, "bob's", "to feishu", "fei").await;
    let status = app.wait_for_status(&id, &b.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "fei", "{status}");
    assert_eq!(Dest::Fei.received(&mock).len(), 1);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = Dest::Robot.received(&mock);
    assert_eq!(got.len(), 1, "only alice's: {got:#?}");
    assert_eq!(got[0].text, "alice's\n\nto the group");
    assert!(
        Dest::Robot
            .received(&mock)
            .iter()
            .all(|m| !m.text.contains("bob")),
        "{:#?}",
        mock.messages()
    );
}

// ------------------------------------------------------------------------------------------
// 4. unknown names, and channel=all
// ------------------------------------------------------------------------------------------

/// `channel=nosuch` is a 400 naming it; `fallback wecom,nosuch` is refused in the chat (the
/// order stays as it was); `channel=all` goes to the built-in channels only.
#[tokio::test]
async fn unknown_names_are_refused_and_all_means_the_built_in_channels() {
    let (app, mock) = dest_app(|_| {}).await;
    let m = member(&app, "unknown").await;

    for channel in ["nosuch", "wecom,nosuch"] {
        let resp = post_send(&app, &m.token, json!({"title": "typo", "channel": channel})).await;
        let body = assert_error(resp, 400, "bad_request").await;
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("nosuch"),
            "names the unknown channel: {body}"
        );
    }

    let reply = say(&app, &m.user, "fallback wecom,nosuch").await;
    assert!(reply.contains("nosuch"), "names it: {reply}");
    assert!(!reply.contains("wecom → nosuch"), "not set: {reply}");
    let status = say(&app, &m.user, "status").await;
    assert!(
        !status.contains("nosuch"),
        "the order is unchanged: {status}"
    );

    let resp = post_send(
        &app,
        &m.token,
        json!({"title": "everywhere", "content": "all", "channel": "all"}),
    )
    .await;
    let id = accepted_id(resp).await;
    let status = wait_settled(&app, &id, &m.token, WAIT).await;
    assert_eq!(status["status"], "delivered", "{status}");
    assert!(
        history(&status).iter().all(|(c, _)| c == "wecom"),
        "only the built-in channels (WeCom here): {status}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        mock.calls().is_empty(),
        "no destination was called: {:#?}",
        mock.calls()
    );
    assert_eq!(app.mock.sent().len(), 1, "WeCom got it");
}

// ------------------------------------------------------------------------------------------
// 5. bad key / signature: permanent, the next channel is used
// ------------------------------------------------------------------------------------------

/// Asserts the refusal of `dest` (tried once) was permanent with a reason quoting `code`
/// and saying `says`, without the destination's key or secret, and that the message went
/// on to WeCom at once.
async fn assert_refused_then_wecom(
    app: &TestApp,
    mock: &MockDestinations,
    dest: Dest,
    code: &str,
    says: &str,
    secrets: &[&str],
) {
    let m = member(app, "badkey").await;
    let route = format!("{},wecom", dest.name());
    let started = Instant::now();
    let id = send_on(app, &m.token, "moves on", "to wecom", &route).await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no retries of a permanent refusal: {:?}",
        started.elapsed()
    );
    assert_eq!(status["channel"], "wecom", "{status}");
    assert_eq!(
        history(&status),
        pairs(&[(dest.name(), "failed"), ("wecom", "delivered")]),
        "{status}"
    );
    let why = history_error(&status, 0);
    assert!(why.contains(code), "quotes {code}: {why}");
    assert!(why.contains(says), "says {says:?}: {why}");
    let text = status.to_string();
    for secret in secrets {
        assert!(!text.contains(secret), "the answer shows a secret: {text}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = dest.calls(mock);
    assert_eq!(calls.len(), 1, "tried once: {calls:#?}");
    assert!(!calls[0].delivered);
    assert!(dest.received(mock).is_empty());
    let sent = app.mock.sent();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0].content, "moves on\n\nto wecom");
}

/// A DingTalk destination with a secret other than the robot's: DingTalk answers 310000
/// `sign not match`; the step fails at once saying the signature does not match (no token,
/// no secret in it), and `ding,wecom` moves on to WeCom.
#[tokio::test]
async fn a_wrong_dingtalk_secret_fails_at_once_and_the_next_channel_is_used() {
    let wrong = "SEC0000111122223333444455556666777788889999aaaabbbbccccddddeeeeffff0";
    let (app, mock) = dest_app(|c| {
        named(&mut c.destinations, "ding").secret = Some(secret(wrong));
    })
    .await;
    assert_refused_then_wecom(
        &app,
        &mock,
        Dest::Ding,
        "310000",
        "the signature does not match",
        &[DING_TOKEN, DING_SECRET, wrong],
    )
    .await;
    assert_eq!(
        mock.signature_failures(),
        1,
        "the mock saw the bad signature"
    );
}

/// A WeCom robot key the service does not know (93000): the step fails at once saying the
/// key is not valid (without the key), and `ops,wecom` moves on to WeCom.
#[tokio::test]
async fn an_unknown_robot_key_fails_at_once_and_the_next_channel_is_used() {
    let unknown = "deadbeef-0000-4bc4-97a0-0ec2a1fa5aaa";
    let (app, mock) = dest_app(|c| {
        let ops = named(&mut c.destinations, "ops");
        let url = ops.url.as_ref().expect("a url").expose_secret();
        ops.url = Some(secret(&url.replace(WECOM_KEY, unknown)));
    })
    .await;
    let m_calls = || {
        mock.calls_to(DestKind::WeComRobot, unknown)
            .into_iter()
            .filter(|c| c.code == 93000)
            .count()
    };
    let m = member(&app, "badkey").await;
    let id = send_on(&app, &m.token, "moves on", "to wecom", "ops,wecom").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "wecom", "{status}");
    assert_eq!(
        history(&status),
        pairs(&[("ops", "failed"), ("wecom", "delivered")]),
        "{status}"
    );
    let why = history_error(&status, 0);
    assert!(why.contains("93000"), "{why}");
    assert!(why.contains("key is not valid"), "names the fix: {why}");
    assert!(!status.to_string().contains(unknown), "{status}");
    assert!(!status.to_string().contains("deadbeef"), "{status}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(m_calls(), 1, "tried once: {:#?}", mock.calls());
    assert_eq!(app.mock.sent().len(), 1);
}

/// A Feishu destination with the wrong secret (19021) and a Telegram bot token that was
/// revoked (401): permanent, the next channel used, neither secret in the reason.
#[tokio::test]
async fn a_wrong_feishu_secret_or_telegram_token_fails_at_once() {
    let wrong_secret = "wrongWrongWrong0123456789";
    let wrong_token = "7012345678:AAwrongwrongwrongwrongwrongwrong00";
    let (app, mock) = dest_app(|c| {
        named(&mut c.destinations, "fei").secret = Some(secret(wrong_secret));
        c.destinations.telegram_bot_token = Some(secret(wrong_token));
    })
    .await;
    assert_refused_then_wecom(
        &app,
        &mock,
        Dest::Fei,
        "19021",
        "signature does not match",
        &[FEISHU_HOOK, FEISHU_SECRET, wrong_secret],
    )
    .await;
    // Telegram: the mock does not know the token (401 Unauthorized); its calls name no
    // chat, so they are counted by kind.
    let m = member(&app, "badtoken").await;
    let id = send_on(&app, &m.token, "moves on", "to wecom", "tg,wecom").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(
        history(&status),
        pairs(&[("tg", "failed"), ("wecom", "delivered")]),
        "{status}"
    );
    let why = history_error(&status, 0);
    assert!(why.contains("401"), "{why}");
    assert!(
        why.contains("telegram_bot_token"),
        "names the setting: {why}"
    );
    for secret in [wrong_token, TG_TOKEN, "AAwrongwrong"] {
        assert!(!status.to_string().contains(secret), "{status}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sends: Vec<DestCall> = mock
        .calls_of(DestKind::Telegram)
        .into_iter()
        .filter(|c| c.action == "sendMessage")
        .collect();
    assert_eq!(sends.len(), 1, "tried once: {sends:#?}");
}

// ------------------------------------------------------------------------------------------
// 6, 7. rate windows
// ------------------------------------------------------------------------------------------

/// How long a test watches a burst: far less than the services' minute.
const OBSERVE: Duration = Duration::from_secs(3);

/// Sends `n` messages titled `{prefix} {k}` on `channel` as fast as the API takes them;
/// returns their ids in order.
async fn burst(api: &Api, token: &str, prefix: &str, n: usize, channel: &str) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for k in 0..n {
        ids.push(send_on(api, token, &format!("{prefix} {k:02}"), "burst", channel).await);
    }
    ids
}

/// The states of `ids` now.
async fn states(api: &Api, token: &str, ids: &[String]) -> Vec<Value> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(api.message_json(id, token).await);
    }
    out
}

fn count_status(states: &[Value], status: &str) -> usize {
    states.iter().filter(|s| s["status"] == status).count()
}

/// No request to `dest` (a WeCom or DingTalk robot, 20 a minute) was refused — neither
/// WeCom's 45009 nor DingTalk's 130101 and its 10-minute block — and no 60 s span holds more
/// than 20 of its messages.
fn assert_never_over_the_limit(mock: &MockDestinations, dest: Dest) {
    let refused: Vec<DestCall> = dest
        .calls(mock)
        .into_iter()
        .filter(|c| !c.delivered)
        .collect();
    assert!(refused.is_empty(), "refused past the limit: {refused:#?}");
    assert!(
        !mock.dingtalk_blocked(DING_TOKEN),
        "DingTalk blocked the robot"
    );
    let arrivals: Vec<Instant> = dest.received(mock).iter().map(|m| m.received_at).collect();
    for (i, first) in arrivals.iter().enumerate() {
        let within = arrivals[i..]
            .iter()
            .filter(|t| t.duration_since(*first) < Duration::from_secs(60))
            .count();
        assert!(within <= 20, "{within} messages within a minute");
    }
}

/// 25 messages from one member to a robot that takes 20 a minute (WeCom, DingTalk): 20
/// arrive, in order, the service never refuses one, and the other 5 wait in the queue
/// (digests off).
async fn a_burst_stays_within_the_window(dest: Dest) {
    let (app, mock) = dest_app(|c| c.delivery.retry_window = Duration::from_secs(120)).await;
    let m = member(&app, "burst").await;
    let ids = burst(&app, &m.token, "b", 25, dest.name()).await;
    wait_received(&mock, dest, 20).await;
    tokio::time::sleep(OBSERVE).await;
    let got = dest.received(&mock);
    assert_eq!(got.len(), 20, "a full window, no more: {}", got.len());
    assert_never_over_the_limit(&mock, dest);
    let now = states(&app, &m.token, &ids).await;
    // In order: the first 20 went, the last 5 wait.
    for (k, s) in now.iter().enumerate() {
        let expected = if k < 20 { "delivered" } else { "queued" };
        assert_eq!(s["status"], expected, "message {k}: {s}");
    }
    for (k, g) in got.iter().enumerate() {
        assert!(g.text.starts_with(&format!("b {k:02}\n")), "{k}: {g:#?}");
    }
    assert!(app.mock.sent().is_empty(), "nothing went by WeCom");
}

#[tokio::test]
async fn a_burst_to_a_wecom_robot_stays_within_its_window() {
    a_burst_stays_within_the_window(Dest::Robot).await;
}

#[tokio::test]
async fn a_burst_to_a_dingtalk_robot_stays_within_its_window() {
    a_burst_stays_within_the_window(Dest::Ding).await;
}

/// Feishu takes 5 a second (then 11232): 12 messages at once are all delivered within a
/// few seconds, none refused, never more than 5 in a second. Telegram takes one a second
/// in a chat: 3 messages arrive at least a second apart.
#[tokio::test]
async fn feishu_and_telegram_bursts_keep_their_per_second_limits() {
    let (app, mock) = dest_app(|_| {}).await;
    let m = member(&app, "persec").await;
    let (fei, tg) = tokio::join!(
        burst(&app, &m.token, "f", 12, "fei"),
        burst(&app, &m.token, "t", 3, "tg"),
    );
    for (ids, dest) in [(&fei, Dest::Fei), (&tg, Dest::Tg)] {
        for id in ids {
            app.wait_for_status(id, &m.token, "delivered", WAIT).await;
        }
        let refused: Vec<DestCall> = dest
            .calls(&mock)
            .into_iter()
            .filter(|c| !c.delivered)
            .collect();
        assert!(refused.is_empty(), "{dest:?} refused: {refused:#?}");
    }
    let arrivals: Vec<Instant> = Dest::Fei
        .received(&mock)
        .iter()
        .map(|m| m.received_at)
        .collect();
    assert_eq!(arrivals.len(), 12);
    for (i, first) in arrivals.iter().enumerate() {
        let within = arrivals[i..]
            .iter()
            .filter(|t| t.duration_since(*first) < Duration::from_secs(1))
            .count();
        assert!(within <= 5, "{within} Feishu messages within a second");
    }
    let arrivals: Vec<Instant> = Dest::Tg
        .received(&mock)
        .iter()
        .map(|m| m.received_at)
        .collect();
    assert_eq!(arrivals.len(), 3);
    for pair in arrivals.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= Duration::from_secs(1),
            "Telegram messages {gap:?} apart"
        );
    }
    assert_well_signed(&mock);
}

/// With `digest_after = "1s"`, the same burst is delivered at once: the messages the window
/// has no room for go in a digest, which the group sees as one message carrying them (its
/// lines show their titles); every message is `delivered`, some `via` the digest; the
/// robot still gets at most 20 messages and never answers 45009.
///
/// The robot holds its answer to the first message for a second, so that the whole burst is
/// queued when the lane plans: a burst that trickles in while the window fills up can find
/// it full, and a digest then waits for the next free place like any message (a minute).
#[tokio::test]
async fn a_burst_to_a_robot_becomes_a_digest() {
    let (app, mock) = dest_app(|c| {
        c.delivery.retry_window = Duration::from_secs(120);
        c.delivery.digest_after = Some(Duration::from_secs(1));
    })
    .await;
    let m = member(&app, "digest").await;
    mock.fail_next(
        DestKind::WeComRobot,
        Scripted::HoldDelivered(Duration::from_secs(1)),
    );
    let ids = burst(&app, &m.token, "d", 25, "ops").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let done = loop {
        let now = states(&app, &m.token, &ids).await;
        if count_status(&now, "delivered") == ids.len() {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "not all delivered: {} queued, {} failed",
            count_status(&now, "queued"),
            count_status(&now, "failed")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_never_over_the_limit(&mock, Dest::Robot);
    let got = Dest::Robot.received(&mock);
    assert!(got.len() <= 20, "{}", got.len());
    let via: Vec<&str> = done.iter().filter_map(|s| s["via"].as_str()).collect();
    assert!(!via.is_empty(), "some went in a digest: {done:#?}");
    let mut carrier_of_via: std::collections::HashMap<String, usize> = Default::default();
    for (k, s) in done.iter().enumerate() {
        assert_eq!(s["channel"], "ops", "{s}");
        let title = format!("d {k:02}");
        let line = format!(" {title} — burst");
        let carriers: Vec<&DestMessage> = got
            .iter()
            .filter(|g| g.text.starts_with(&format!("{title}\n\n")) || g.text.contains(&line))
            .collect();
        assert_eq!(
            carriers.len(),
            1,
            "{title} reached the group once: {got:#?}"
        );
        let digest = carriers[0].text.contains("条消息 · ");
        assert_eq!(
            digest,
            s["via"].is_string(),
            "{title} is `via` a digest exactly when a digest carried it: {s}\n{}",
            carriers[0].text
        );
        if let Some(via) = s["via"].as_str() {
            let first = carrier_of_via
                .entry(via.to_owned())
                .or_insert(carriers[0].arrival);
            assert_eq!(*first, carriers[0].arrival, "one digest per via: {s}");
        }
    }
    let digests: Vec<&DestMessage> = got
        .iter()
        .filter(|g| g.text.contains("条消息 · "))
        .collect();
    assert!(!digests.is_empty(), "a digest went to the group: {got:#?}");
}

/// Two members each send 15 to the same robot at once: its window (20 a minute) counts
/// both, so 20 arrive, never a 45009, and 10 wait.
#[tokio::test]
async fn two_members_share_one_robots_window() {
    let (app, mock) = dest_app(|c| c.delivery.retry_window = Duration::from_secs(120)).await;
    let a = member(&app, "sharea").await;
    let b = member(&app, "shareb").await;
    let (ids_a, ids_b) = tokio::join!(
        burst(&app, &a.token, "a", 15, "ops"),
        burst(&app, &b.token, "b", 15, "ops"),
    );
    wait_received(&mock, Dest::Robot, 20).await;
    tokio::time::sleep(OBSERVE).await;
    let got = Dest::Robot.received(&mock);
    assert_eq!(got.len(), 20, "one window for both: {}", got.len());
    assert_never_over_the_limit(&mock, Dest::Robot);
    let now_a = states(&app, &a.token, &ids_a).await;
    let now_b = states(&app, &b.token, &ids_b).await;
    let delivered = count_status(&now_a, "delivered") + count_status(&now_b, "delivered");
    let queued = count_status(&now_a, "queued") + count_status(&now_b, "queued");
    assert_eq!((delivered, queued), (20, 10), "{now_a:#?}\n{now_b:#?}");
}

// ------------------------------------------------------------------------------------------
// 8. transient refusals are retried
// ------------------------------------------------------------------------------------------

/// The kind's usual transient refusal, and what its reason quotes.
fn transient(dest: Dest) -> (Scripted, &'static str) {
    match dest {
        Dest::Robot => (Scripted::refuse(-1, "system busy"), "-1"),
        Dest::Ding => (Scripted::refuse(-1, "system busy"), "-1"),
        Dest::Fei => (Scripted::rate_limited(1), "11232"),
        Dest::Tg => (Scripted::rate_limited(1), "429"),
        Dest::Hook => (Scripted::Http(503), "503"),
    }
}

/// One transient refusal (WeCom/DingTalk -1, Feishu 11232, Telegram 429 with
/// `retry_after`, a webhook's HTTP 503), then success: delivered once, the history shows the
/// retry quoting the refusal. A webhook's retry carries the same `webhook-id`.
async fn a_transient_refusal_is_retried(dest: Dest) {
    let (app, mock) = dest_app(|_| {}).await;
    let m = member(&app, "transient").await;
    let (script, code) = transient(dest);
    mock.fail_next(dest.kind(), script);
    let id = send_on(&app, &m.token, "retried", "once", dest.name()).await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], dest.name(), "{status}");
    assert_eq!(
        collapsed(&history(&status)),
        pairs(&[(dest.name(), "retry"), (dest.name(), "delivered")]),
        "{status}"
    );
    let why = history_error(&status, 0);
    assert!(why.contains(code), "the retry quotes {code}: {why}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = dest.received(&mock);
    assert_eq!(got.len(), 1, "delivered once: {got:#?}");
    let calls = dest.calls(&mock);
    assert_eq!(calls.len(), 2, "refused, then accepted: {calls:#?}");
    if dest == Dest::Hook {
        assert_eq!(
            calls[0].header("webhook-id"),
            calls[1].header("webhook-id"),
            "the same webhook-id on a retry"
        );
        assert_eq!(calls[1].header("webhook-id"), Some(id.as_str()));
    }
    assert_well_signed(&mock);
}

on_each_kind!(a_transient_refusal_is_retried);

/// Telegram's 429 says `retry_after`: the next try waits at least that long.
#[tokio::test]
async fn telegrams_retry_after_is_honoured() {
    let (app, mock) = dest_app(|_| {}).await;
    let m = member(&app, "retryafter").await;
    mock.fail_next(DestKind::Telegram, Scripted::rate_limited(2));
    let id = send_on(&app, &m.token, "flood", "control", "tg").await;
    app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    let calls = Dest::Tg.calls(&mock);
    assert_eq!(calls.len(), 2, "{calls:#?}");
    let gap = calls[1].received_at.duration_since(calls[0].received_at);
    assert!(
        gap >= Duration::from_millis(1900),
        "retried {gap:?} after a 429 with retry_after 2"
    );
}

// ------------------------------------------------------------------------------------------
// 9. secrets never appear
// ------------------------------------------------------------------------------------------

/// Everything a destination's address or secret could leak as.
fn every_secret() -> Vec<&'static str> {
    vec![
        WECOM_KEY,
        DING_TOKEN,
        DING_SECRET,
        FEISHU_HOOK,
        FEISHU_SECRET,
        TG_TOKEN,
        // The bot token's secret half alone.
        "AAHk3xQ9vR2mP8sT4uW6yZ1bC5dE7fG9hJ0",
        HOOK_SECRET,
        HOOK_SECRET_B64,
        HOOK_URL_TOKEN,
    ]
}

/// The real binary logging at DEBUG, the bot token and the robot's URL from the
/// environment, DingTalk's URL and the webhook's secret from files: one delivered message per kind, a refusal from each service that
/// echoes the secret back, and a robot that does not answer in time. No key, token or
/// secret is in any chat reply, API answer (`/messages/{id}`, `/messages`, `/healthz`,
/// `/metrics`), `last_error`, or log line.
#[tokio::test]
async fn secrets_never_appear() {
    let wecom = MockWeCom::start().await;
    let (mock, mut section) = mock_destinations().await;
    section.telegram_bot_token = None;
    section.timeout = Duration::from_millis(500);
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("hook.secret");
    std::fs::write(&secret_file, format!("{HOOK_SECRET}\n")).unwrap();
    let hook = named(&mut section, "hook");
    hook.secret = None;
    hook.secret_file = Some(secret_file);
    // The robot's URL from the environment, DingTalk's from a file.
    let robot_url = named(&mut section, "ops").url.take().expect("a url");
    let url_file = dir.path().join("ding.url");
    let ding = named(&mut section, "ding");
    std::fs::write(&url_file, ding.url.take().expect("a url").expose_secret()).unwrap();
    ding.url_file = Some(url_file);
    let mut config = settings_with(|c| {
        c.destinations = section;
        c.server.metrics = true;
    });
    quick(&mut config);
    let setup = bin_setup(&config, &wecom.base_url);
    let mut bin = spawn_binary(
        &setup.config_path,
        setup.port,
        &[
            ("RUST_LOG", "debug"),
            ("PUSHBOT_DESTINATIONS__TELEGRAM_BOT_TOKEN", TG_TOKEN),
            ("PUSHBOT_DESTINATIONS__OPS__URL", robot_url.expose_secret()),
        ],
    )
    .await;
    let m = member(&bin, "quiet").await;
    let mut seen: Vec<String> = Vec::new();
    for text in ["help", "status", "fallback wecom,ops", "status"] {
        seen.push(say(&bin, &m.user, text).await);
    }

    let mut ids = Vec::new();
    for dest in Dest::ALL {
        let id = send_on(&bin, &m.token, "fine", "delivered", dest.name()).await;
        bin.wait_for_status(&id, &m.token, "delivered", WAIT).await;
        ids.push(id);
    }
    assert_eq!(mock.messages().len(), 5, "{:#?}", mock.refused());

    // A refusal from each service that echoes its own key, token or secret back.
    let hook_url = format!("{}?token={HOOK_URL_TOKEN}", mock.webhook_url(HOOK_PATH));
    for dest in Dest::ALL {
        let script = match dest {
            Dest::Robot => Scripted::refuse(93000, &format!("invalid webhook url key={WECOM_KEY}")),
            Dest::Ding => Scripted::refuse(
                310000,
                &format!("sign not match: token {DING_TOKEN}, secret {DING_SECRET}"),
            ),
            Dest::Fei => Scripted::refuse(
                19021,
                &format!("sign match fail: hook {FEISHU_HOOK}, secret {FEISHU_SECRET}"),
            ),
            Dest::Tg => Scripted::refuse(401, &format!("Unauthorized: bot{TG_TOKEN}")),
            Dest::Hook => Scripted::refuse(
                400,
                &format!("bad request to {hook_url} signed with {HOOK_SECRET}"),
            ),
        };
        mock.fail_next(dest.kind(), script);
        let id = send_on(&bin, &m.token, "echoed", "refused", dest.name()).await;
        let status = bin.wait_for_status(&id, &m.token, "failed", WAIT).await;
        let last = status["last_error"].as_str().unwrap_or_default();
        assert!(
            last.contains("***"),
            "the echo is quoted, scrubbed: {status}"
        );
        ids.push(id);
    }

    // A robot that holds its answer past `destinations.timeout`: retried, delivered.
    mock.fail_next(
        DestKind::WeComRobot,
        Scripted::HoldLost(Duration::from_secs(2)),
    );
    let id = send_on(&bin, &m.token, "slow", "robot", "ops").await;
    let status = bin.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert!(
        history_error(&status, 0).contains("no answer"),
        "the timeout is in the history: {status}"
    );
    ids.push(id);

    // And WeCom failing into the robot.
    wecom.fail_always_for(&m.user, wecom_permanent());
    let id = bin.send_ok(&m.token, "via wecom", "").await;
    bin.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    ids.push(id);

    for id in &ids {
        let resp = bin.message(id, Some(&m.token)).await;
        seen.push(resp.text().await.unwrap());
    }
    let resp = bin
        .messages(&[("token", m.token.as_str()), ("limit", "100")])
        .await;
    seen.push(resp.text().await.unwrap());
    seen.push(bin.healthz().await.unwrap().text().await.unwrap());
    let metrics = bin.http.get(bin.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    seen.push(metrics.text().await.unwrap());
    seen.push(say(&bin, &m.user, "status").await);
    bin.kill9();
    let log = std::fs::read_to_string(&bin.log_path).unwrap();
    assert!(log.contains("DEBUG"), "debug logging was on");

    for secret in every_secret() {
        for (i, answer) in seen.iter().enumerate() {
            assert!(
                !answer.contains(secret),
                "answer {i} shows {secret:?}: {answer}"
            );
        }
        let leaks: Vec<&str> = log.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "the log shows {secret:?}:\n{leaks:#?}");
    }
    assert_well_signed(&mock);
}

/// A service's message is quoted in the reason up to 200 characters: a secret it echoes
/// across that cut must not leave its beginning in the reason.
#[tokio::test]
async fn a_secret_cut_by_the_quote_is_still_scrubbed() {
    let (app, mock) = dest_app(|_| {}).await;
    let m = member(&app, "cutsecret").await;
    // "sign not match " and padding put the secret's first 30 characters before the cut.
    let pad = "x".repeat(200 - "sign not match ".len() - 30 - 1);
    mock.fail_next(
        DestKind::DingTalk,
        Scripted::refuse(310000, &format!("sign not match {pad} {DING_SECRET}")),
    );
    let id = send_on(&app, &m.token, "echo", "cut", "ding").await;
    let status = app.wait_for_status(&id, &m.token, "failed", WAIT).await;
    let last = status["last_error"].as_str().unwrap_or_default();
    assert!(last.contains("310000"), "{status}");
    assert!(
        !last.contains(&DING_SECRET[..12]),
        "the secret's beginning is in the reason: {last}"
    );
}

// ------------------------------------------------------------------------------------------
// 10. config errors
// ------------------------------------------------------------------------------------------

/// `pushbot serve` on a config whose `[destinations]` section `tweak` breaks: it must exit
/// non-zero; returns its stderr.
async fn refused_at_start(tweak: impl FnOnce(&mut DestinationsSettings)) -> String {
    let wecom = MockWeCom::start().await;
    let (_mock, mut section) = mock_destinations().await;
    tweak(&mut section);
    let config = settings_with(|c| {
        c.destinations = section;
    });
    let setup = bin_setup(&config, &wecom.base_url);
    let out = run_captured(binary_command(&setup.config_path, &[]), WAIT).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "must not start: {stderr}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn assert_names(stderr: &str, key: &str, says: &str) {
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("pushbot: ") && first.contains(key),
        "the first line names `{key}`: {stderr:?}"
    );
    assert!(stderr.contains(says), "says {says:?}: {stderr:?}");
}

/// A robot URL on a host other than its kind's base, an unknown kind, a name that cannot
/// name a destination (or is a built-in channel's), and `delivery.fallback` naming a
/// destination that does not exist are each refused at start-up with one line naming the
/// key; the refused URL's key is not printed.
#[tokio::test]
async fn bad_destinations_are_refused_at_start_up_naming_the_key() {
    // Another host (the DingTalk listener's address with the WeCom robot path).
    let stderr = refused_at_start(|d| {
        let elsewhere = format!(
            "{}/cgi-bin/webhook/send?key={WECOM_KEY}",
            d.dingtalk_base.as_ref().unwrap().base()
        );
        named(d, "ops").url = Some(secret(&elsewhere));
    })
    .await;
    assert_names(&stderr, "destinations.ops.url", "Only these services");
    assert!(
        !stderr.contains(WECOM_KEY),
        "the key is not printed: {stderr}"
    );

    // The real service's host while the base is the mock.
    let stderr = refused_at_start(|d| {
        named(d, "ops").url = Some(secret(&format!(
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={WECOM_KEY}"
        )));
    })
    .await;
    assert_names(&stderr, "destinations.ops.url", "Only these services");
    assert!(!stderr.contains(WECOM_KEY), "{stderr}");

    let stderr = refused_at_start(|d| named(d, "ding").kind = "slack".to_owned()).await;
    assert_names(&stderr, "destinations.ding.kind", "wecom-robot");

    let stderr = refused_at_start(|d| rename(d, "ops", "Ops Team!")).await;
    assert_names(&stderr, "destinations.", "cannot name a destination");

    let stderr = refused_at_start(|d| rename(d, "ops", "email")).await;
    assert_names(&stderr, "destinations.email", "built-in");

    // A webhook URL that is not http(s).
    let stderr = refused_at_start(|d| {
        named(d, "hook").url = Some(secret("ftp://127.0.0.1/hooks"));
    })
    .await;
    assert_names(&stderr, "destinations.hook.url", "http");

    // delivery.fallback naming no configured destination.
    let wecom = MockWeCom::start().await;
    let (_mock, section) = mock_destinations().await;
    let config = settings_with(|c| {
        c.destinations = section;
        c.delivery.fallback = route("wecom,nosuch");
    });
    let setup = bin_setup(&config, &wecom.base_url);
    let out = run_captured(binary_command(&setup.config_path, &[]), WAIT).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert_names(&stderr, "delivery.fallback", "nosuch");
}

/// A DingTalk secret that is not `SEC…` is refused naming `destinations.NAME.secret`, the
/// key that is wrong.
#[tokio::test]
async fn a_bad_dingtalk_secret_names_its_own_key() {
    let stderr = refused_at_start(|d| named(d, "ding").secret = Some(secret("nosec"))).await;
    assert_names(&stderr, "destinations.ding.secret", "SEC");
}

/// A Telegram destination without `chat_id` is refused naming `destinations.NAME.chat_id`.
#[tokio::test]
async fn a_telegram_destination_without_chat_id_names_its_own_key() {
    let stderr = refused_at_start(|d| named(d, "tg").chat_id = None).await;
    assert_names(&stderr, "destinations.tg.chat_id", "chat_id");
}

/// The settings for `section` as the server loads them from a file.
fn load(
    section: DestinationsSettings,
    tweak: impl FnOnce(&mut Settings),
) -> Result<pushbot::config::Settings, String> {
    let config = settings_with(|c| {
        c.destinations = section;
        tweak(c);
    });
    let toml = render(
        &config,
        "127.0.0.1:0",
        "sqlite:///tmp/unused.db",
        "http://127.0.0.1:9",
    );
    pushbot::config::Settings::from_toml(&toml).map_err(|e| e.to_string())
}

/// A destination's name is case-insensitive (`[destinations.Ops]` is `channel=ops`):
/// `delivery.fallback` may name it too.
#[tokio::test]
async fn a_name_with_capitals_can_be_named_in_delivery_fallback() {
    let (_mock, mut section) = mock_destinations().await;
    rename(&mut section, "ops", "Ops");
    let loaded = load(section, |c| {
        c.delivery.fallback = route("wecom,ops");
    });
    assert!(loaded.is_ok(), "{loaded:?}");
}

/// Two tables whose names differ only in case name one channel: refused at start-up.
#[tokio::test]
async fn names_that_differ_only_in_case_are_refused() {
    let (_mock, mut section) = mock_destinations().await;
    let twin = named(&mut section, "ops").clone();
    rename(&mut section, "ops", "Ops");
    section.named.insert("OPS".to_owned(), twin);
    let loaded = load(section, |_| {});
    let err = loaded.err().unwrap_or_else(|| "loaded".to_owned());
    assert!(
        err.contains("destinations."),
        "refused naming the tables: {err}"
    );
}

/// The harness's own check: the written config has a `[destinations.NAME]` table per
/// destination, and the server loads all five from it.
#[tokio::test]
async fn the_test_config_writes_a_destinations_section_the_server_accepts() {
    let (_mock, section) = mock_destinations().await;
    let text = render(
        &settings_with(|c| c.destinations = section.clone()),
        "127.0.0.1:0",
        "sqlite:///tmp/unused.db",
        "http://127.0.0.1:9",
    );
    for dest in Dest::ALL {
        assert!(
            text.contains(&format!("[destinations.{}]", dest.name())),
            "{text}"
        );
    }
    let settings = load(section, |_| {}).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let configured = settings.destinations.configured().expect("destinations");
    let names: Vec<&str> = configured.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names.len(), 5, "{names:?}");
    for dest in Dest::ALL {
        assert!(names.contains(&dest.name()), "{names:?}");
    }
}

// ------------------------------------------------------------------------------------------
// destinations a member adds in the chat
// ------------------------------------------------------------------------------------------

/// The gateway with the mock's bases and no shared destination: what members add is all.
async fn chat_app() -> (TestApp, MockDestinations) {
    let mock = MockDestinations::start().await;
    let section = destinations_at(&mock);
    let app = spawn_app_with(|c| {
        quick(c);
        c.destinations = section;
    })
    .await;
    (app, mock)
}

/// `robot NAME URL`: the test message arrives first, then the destination is kept, listed
/// with its key masked, used by name, and removed.
#[tokio::test]
async fn a_member_adds_a_group_robot_in_the_chat_and_sends_to_it() {
    let (app, mock) = chat_app().await;
    let key = "chat-robot-key-0123456789";
    mock.add_wecom_robot(key);
    let m = member(&app, "robo").await;
    let reply = say(
        &app,
        &m.user,
        &format!("robot team {}", mock.wecom_url(key)),
    )
    .await;
    assert!(reply.contains("added"), "{reply}");
    assert!(!reply.contains(key), "the key stays secret: {reply}");
    let test = mock.messages_to(DestKind::WeComRobot, key);
    assert_eq!(test.len(), 1, "one test message, before the answer");
    assert!(test[0].text.contains("team"), "{:?}", test[0].text);

    let list = say(&app, &m.user, "robots").await;
    assert!(list.contains("team"), "{list}");
    assert!(!list.contains(key), "masked: {list}");

    let id = send_on(&app, &m.token, "to the group", "hello group", "team").await;
    let status = wait_settled(&app, &id, &m.token, WAIT).await;
    assert_eq!(status["status"], "delivered", "{status}");
    assert_eq!(status["channel"], "team", "{status}");
    let got = mock.messages_to(DestKind::WeComRobot, key);
    assert_eq!(got.len(), 2);
    assert!(got[1].text.contains("hello group"), "{:?}", got[1].text);

    let reply = say(&app, &m.user, "robot team off").await;
    assert!(reply.contains("removed"), "{reply}");
    let resp = post_send(&app, &m.token, json!({"title": "x", "channel": "team"})).await;
    assert_error(resp, 400, "bad_request").await;
    assert_well_signed(&mock);
}

/// A robot whose test message is refused (an unknown key) is not kept, and the answer says
/// why without the key.
#[tokio::test]
async fn a_robot_whose_test_message_is_refused_is_not_kept() {
    let (app, mock) = chat_app().await;
    let m = member(&app, "robobad").await;
    let key = "no-such-key-9876543210";
    let reply = say(
        &app,
        &m.user,
        &format!("robot team {}", mock.wecom_url(key)),
    )
    .await;
    assert!(reply.contains("Not added"), "{reply}");
    assert!(reply.contains("93000"), "says why: {reply}");
    assert!(!reply.contains(key), "{reply}");
    let list = say(&app, &m.user, "robots").await;
    assert!(!list.contains("team"), "{list}");
    let resp = post_send(&app, &m.token, json!({"title": "x", "channel": "team"})).await;
    assert_error(resp, 400, "bad_request").await;
}

/// Only addresses on each kind's configured base are taken: another host, another port, a
/// userinfo trick or an internal address is refused before any request is made.
#[tokio::test]
async fn only_the_configured_hosts_are_accepted_in_the_chat() {
    let (app, mock) = chat_app().await;
    let m = member(&app, "robohost").await;
    let good = mock.wecom_url("k-1");
    let other_port = good.replacen("127.0.0.1:", "127.0.0.1:1", 1);
    for typed in [
        "https://example.com/cgi-bin/webhook/send?key=k-1".to_owned(),
        other_port,
        good.replacen("http://", "http://127.0.0.1@", 1),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://127.0.0.2/cgi-bin/webhook/send?key=k-1".to_owned(),
    ] {
        let reply = say(&app, &m.user, &format!("robot team {typed}")).await;
        assert!(!reply.contains("added"), "{typed}: {reply}");
    }
    assert!(
        mock.calls().is_empty(),
        "no request was made: {:?}",
        mock.calls()
    );
}

/// A signed DingTalk robot added with its secret: the test message is signed, and the
/// robot is the member's alone.
#[tokio::test]
async fn a_signed_dingtalk_robot_added_in_the_chat_is_its_members_alone() {
    let (app, mock) = chat_app().await;
    let (token, secret) = ("ding-chat-token", "SECchat0123456789abcdef");
    mock.add_dingtalk_robot(token, Some(secret), &[]);
    let alice = member(&app, "roboa").await;
    let reply = say(
        &app,
        &alice.user,
        &format!("robot ding {} {secret}", mock.dingtalk_url(token)),
    )
    .await;
    assert!(reply.contains("added"), "{reply}");
    assert!(!reply.contains(secret), "{reply}");
    assert_eq!(mock.messages_to(DestKind::DingTalk, token).len(), 1);
    assert_well_signed(&mock);
    let bob = member(&app, "robob").await;
    let resp = post_send(&app, &bob.token, json!({"title": "x", "channel": "ding"})).await;
    assert_error(resp, 400, "bad_request").await;
    // Alice's own order may name it: WeCom refusing her, the group gets it.
    app.mock.fail_always_for(&alice.user, wecom_permanent());
    let reply = say(&app, &alice.user, "fallback wecom,ding").await;
    assert!(!reply.contains("unknown channel"), "{reply}");
    let id = send_on(&app, &alice.token, "fell back", "to the group", "").await;
    let status = wait_settled(&app, &id, &alice.token, WAIT).await;
    assert_eq!(status["status"], "delivered", "{status}");
    assert_eq!(status["channel"], "ding", "{status}");
    assert_eq!(mock.messages_to(DestKind::DingTalk, token).len(), 2);
}

/// Two instances on one PostgreSQL database, a member on each sending 15 to the same shared
/// robot at once: one window for everyone, across instances (an advisory lock takes turns).
#[tokio::test]
async fn two_instances_share_one_robots_window() {
    let schema = TestDb::postgres();
    let wecom = MockWeCom::start().await;
    let (mock, section) = mock_destinations().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut apps = Vec::new();
    for id in ["dest-a", "dest-b"] {
        let port = free_port();
        let mut config = settings_with(|c| {
            c.delivery.instance_id = Some(id.to_owned());
            c.destinations = section.clone();
        });
        quick(&mut config);
        config.delivery.retry_window = Duration::from_secs(120);
        let toml = render(
            &config,
            &format!("127.0.0.1:{port}"),
            schema.url(),
            &wecom.base_url,
        );
        let path = dir.path().join(format!("{id}.toml"));
        std::fs::write(&path, toml).expect("write config");
        apps.push(spawn_binary(&path, port, &[]).await);
    }
    // Each answer takes a moment, so the two instances' sends overlap: without a turn
    // across instances both would take the window's last places.
    mock.fail_always(
        DestKind::WeComRobot,
        Scripted::HoldDelivered(Duration::from_millis(150)),
    );
    let a = member(&apps[0], "inst2a").await;
    let b = member(&apps[1], "inst2b").await;
    tokio::join!(
        burst(&apps[0], &a.token, "a", 15, "ops"),
        burst(&apps[1], &b.token, "b", 15, "ops"),
    );
    wait_received(&mock, Dest::Robot, 20).await;
    tokio::time::sleep(OBSERVE).await;
    assert_eq!(
        Dest::Robot.received(&mock).len(),
        20,
        "one window across both instances"
    );
    assert_never_over_the_limit(&mock, Dest::Robot);
}

/// A signed Feishu bot and a Telegram group added in the chat: each gets its test message
/// (the Telegram one through the server's bot), and each is then used by name.
#[tokio::test]
async fn feishu_and_telegram_destinations_are_added_in_the_chat() {
    let mock = MockDestinations::start().await;
    mock.add_feishu_hook(FEISHU_HOOK, Some(FEISHU_SECRET), &[]);
    mock.add_telegram_bot(TG_TOKEN);
    mock.add_telegram_chat(TG_CHAT);
    let mut section = destinations_at(&mock);
    section.telegram_bot_token = Some(secret(TG_TOKEN));
    let app = spawn_app_with(|c| {
        quick(c);
        c.destinations = section;
    })
    .await;
    let m = member(&app, "robofg").await;
    let reply = say(
        &app,
        &m.user,
        &format!("robot fs {} {FEISHU_SECRET}", mock.feishu_url(FEISHU_HOOK)),
    )
    .await;
    assert!(reply.contains("added"), "{reply}");
    assert!(!reply.contains(FEISHU_SECRET), "{reply}");
    let reply = say(&app, &m.user, &format!("telegram tg {TG_CHAT}")).await;
    assert!(reply.contains("added"), "{reply}");
    assert!(!reply.contains(TG_TOKEN), "{reply}");
    assert_eq!(mock.messages_to(DestKind::Feishu, FEISHU_HOOK).len(), 1);
    assert_eq!(
        mock.messages_to(DestKind::Telegram, &TG_CHAT.to_string())
            .len(),
        1
    );
    for (name, kind, dest) in [
        ("fs", DestKind::Feishu, FEISHU_HOOK.to_owned()),
        ("tg", DestKind::Telegram, TG_CHAT.to_string()),
    ] {
        let id = send_on(&app, &m.token, "by name", "<b>&amp; more", name).await;
        let status = wait_settled(&app, &id, &m.token, WAIT).await;
        assert_eq!(status["status"], "delivered", "{name}: {status}");
        assert_eq!(mock.messages_to(kind, &dest).len(), 2, "{name}");
    }
    assert_well_signed(&mock);
    // A chat that does not exist is refused at its test message, and nothing is kept.
    let reply = say(&app, &m.user, "telegram nochat -1009999999999").await;
    assert!(reply.contains("Not added"), "{reply}");
    let list = say(&app, &m.user, "robots").await;
    assert!(list.contains("fs") && list.contains("tg"), "{list}");
    assert!(!list.contains("nochat"), "{list}");
}

/// A member's Telegram group that became a supergroup: the message reaches the new chat,
/// and the new id is stored, so the next message goes there at once.
#[tokio::test]
async fn a_telegram_group_that_moved_is_followed_and_remembered() {
    let mock = MockDestinations::start().await;
    mock.add_telegram_bot(TG_TOKEN);
    let (old, new) = (-4_001_234_i64, -1_009_876_543_210_i64);
    mock.add_telegram_chat(old);
    mock.add_telegram_chat(new);
    let mut section = destinations_at(&mock);
    section.telegram_bot_token = Some(secret(TG_TOKEN));
    let app = spawn_app_with(|c| {
        quick(c);
        c.destinations = section;
    })
    .await;
    let m = member(&app, "robomove").await;
    let reply = say(&app, &m.user, &format!("telegram grp {old}")).await;
    assert!(reply.contains("added"), "{reply}");
    mock.migrate_telegram_chat(old, new);
    let id = send_on(&app, &m.token, "moved", "to the supergroup", "grp").await;
    let status = wait_settled(&app, &id, &m.token, WAIT).await;
    assert_eq!(status["status"], "delivered", "{status}");
    assert_eq!(
        mock.messages_to(DestKind::Telegram, &new.to_string()).len(),
        1
    );
    let list = say(&app, &m.user, "robots").await;
    assert!(
        list.contains(&new.to_string()),
        "the new id is stored: {list}"
    );
    let before = mock.calls_to(DestKind::Telegram, &old.to_string()).len();
    let id = send_on(&app, &m.token, "again", "straight there", "grp").await;
    wait_settled(&app, &id, &m.token, WAIT).await;
    assert_eq!(
        mock.messages_to(DestKind::Telegram, &new.to_string()).len(),
        2
    );
    assert_eq!(
        mock.calls_to(DestKind::Telegram, &old.to_string()).len(),
        before,
        "the old id is not tried again"
    );
}
