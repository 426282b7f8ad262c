//! `GET /metrics`: off unless `server.metrics`; behind `server.metrics_token` when set; a
//! static route the compat captures never take; and counts that match exactly what
//! happened — accepted, delivered, retried, failed (whichever path failed it), latency,
//! WeCom errcodes, callback outcomes, the queue during an outage.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::compat::{assert_not_logged, bark_ok, get};
use crate::helpers::*;
use crate::tcp_front::TcpFront;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// A metrics token long enough for [`assert_not_logged`]'s 16-character pieces.
const METRICS_TOKEN: &str = "mEtr1cs-t0ken-0123456789abcdef";

fn enabled(c: &mut Settings) {
    c.server.metrics = true;
}

/// One scrape, parsed: series (name with labels, as printed) → value.
struct Scrape {
    text: String,
    values: HashMap<String, f64>,
}

impl Scrape {
    fn parse(text: String) -> Self {
        let values = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("a sample line is `series value`: {l:?}"));
                let value = value
                    .parse()
                    .unwrap_or_else(|e| panic!("{value:?} is a number ({e}): {l:?}"));
                (series.to_owned(), value)
            })
            .collect();
        Self { text, values }
    }

    /// The value of a series that must be there.
    fn get(&self, series: &str) -> f64 {
        *self
            .values
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
    }

    fn queue_depth(&self) -> f64 {
        self.get("pushbot_queue_depth")
    }
}

async fn metrics_response(api: &Api, bearer: Option<&str>) -> reqwest::Response {
    let mut req = api.http.get(api.url("/metrics"));
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("GET /metrics")
}

async fn scrape_with(api: &Api, bearer: Option<&str>) -> Scrape {
    let resp = metrics_response(api, bearer).await;
    let status = resp.status();
    let text = resp.text().await.expect("metrics body");
    assert_eq!(status, 200, "{text}");
    Scrape::parse(text)
}

async fn scrape(api: &Api) -> Scrape {
    scrape_with(api, None).await
}

/// Scrapes until `done` holds (the scheduler counts an outcome right after recording it,
/// so a status read over HTTP can be a moment ahead of the counters); the last scrape.
async fn scrape_until(api: &Api, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let scrape = scrape(api).await;
        if done(&scrape) {
            return scrape;
        }
        if Instant::now() > deadline {
            panic!("{what} within {WAIT:?}; last scrape:\n{}", scrape.text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn accepted(endpoint: &str) -> String {
    format!("pushbot_messages_accepted_total{{endpoint=\"{endpoint}\"}}")
}

fn attempts(outcome: &str) -> String {
    format!("pushbot_channel_attempts_total{{channel=\"wecom\",outcome=\"{outcome}\"}}")
}

fn wecom_errors(api: &str, errcode: &str) -> String {
    format!("pushbot_wecom_errors_total{{api=\"{api}\",errcode=\"{errcode}\"}}")
}

fn callbacks(outcome: &str) -> String {
    format!("pushbot_callbacks_total{{outcome=\"{outcome}\"}}")
}

const DELIVERED: &str = "pushbot_messages_delivered_total{channel=\"wecom\"}";
const FAILED: &str = "pushbot_messages_failed_total{channel=\"wecom\"}";
const LATENCY_COUNT: &str = "pushbot_delivery_latency_seconds_count";

// ---- access ----

#[tokio::test]
async fn metrics_are_not_found_unless_enabled() {
    let app = spawn_app().await;
    assert_error(get(&app, "/metrics").await, 404, "not_found").await;
    let resp = app.http.post(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 405, "never an ntfy publish to \"metrics\"");
    assert_eq!(app.mock.send_calls(), 0);
}

#[tokio::test]
async fn enabled_metrics_speak_both_text_formats_and_only_get() {
    let app = spawn_app_with(enabled).await;

    let resp = get(&app, "/metrics").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], TEXT);
    let text = Scrape::parse(resp.text().await.unwrap());
    let version = format!(
        "pushbot_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(text.get(&version), 1.0);
    assert_eq!(text.get(&accepted("native")), 0.0);
    assert_eq!(text.queue_depth(), 0.0);
    for line in [
        "# TYPE pushbot_messages_accepted_total counter",
        "# TYPE pushbot_delivery_latency_seconds histogram",
        "# TYPE pushbot_queue_depth gauge",
    ] {
        assert!(text.text.contains(line), "{line} in:\n{}", text.text);
    }

    // Prometheus asks for OpenMetrics first.
    let resp = app
        .http
        .get(app.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], OPENMETRICS);
    let body = resp.text().await.unwrap();
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE pushbot_build info"), "{body}");
    assert_eq!(Scrape::parse(body).get(&accepted("native")), 0.0);

    // The static route wins over the compat captures: not a ServerChan key, not an ntfy
    // topic.
    for method in [reqwest::Method::POST, reqwest::Method::PUT] {
        let resp = app
            .http
            .request(method.clone(), app.url("/metrics"))
            .body("a message?")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} /metrics");
        assert_eq!(resp.headers()["allow"], "GET,HEAD", "{method} /metrics");
    }
    assert_eq!(scrape(&app).await.get(&accepted("ntfy")), 0.0);
    assert_eq!(app.mock.send_calls(), 0);
}

#[tokio::test]
async fn a_metrics_token_is_required_when_set_and_never_shown() {
    let app = spawn_app_with(|c| {
        c.server.metrics = true;
        c.server.metrics_token = Some(secret(METRICS_TOKEN));
    })
    .await;
    for bearer in [None, Some("wrong"), Some(&METRICS_TOKEN[1..])] {
        let resp = metrics_response(&app, bearer).await;
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer realm=\"pushbot metrics\""
        );
        let body = assert_error(resp, 401, "unauthorized").await;
        assert!(!body.to_string().contains(METRICS_TOKEN), "{body}");
    }
    // Only the header: not a query parameter (it would end up in access logs).
    let resp = get(&app, &format!("/metrics?token={METRICS_TOKEN}")).await;
    assert_error(resp, 401, "unauthorized").await;

    let scrape = scrape_with(&app, Some(METRICS_TOKEN)).await;
    assert_eq!(scrape.get(&accepted("native")), 0.0);
    assert!(!scrape.text.contains(METRICS_TOKEN));
    assert!(!scrape.text.contains(&METRICS_TOKEN[..16]));
}

/// Set from the environment, as docs/operations.md advises; at debug level neither the token nor
/// a piece of it reaches the log, whether it was right or wrong.
#[tokio::test]
async fn the_metrics_token_from_the_environment_never_reaches_the_log() {
    let mock = MockWeCom::start().await;
    let setup = bin_setup(&test_settings(), &mock.base_url);
    let mut bin = spawn_binary(
        &setup.config_path,
        setup.port,
        &[
            ("RUST_LOG", "debug"),
            ("PUSHBOT_SERVER__METRICS", "true"),
            ("PUSHBOT_SERVER__METRICS_TOKEN", METRICS_TOKEN),
        ],
    )
    .await;
    let wrong = format!("{}x", &METRICS_TOKEN[..METRICS_TOKEN.len() - 1]);
    assert_eq!(metrics_response(&bin, None).await.status(), 401);
    assert_eq!(metrics_response(&bin, Some(&wrong)).await.status(), 401);
    let scrape = scrape_with(&bin, Some(METRICS_TOKEN)).await;
    assert_eq!(scrape.queue_depth(), 0.0);
    bin.kill9();

    let log = std::fs::read_to_string(&bin.log_path).unwrap();
    assert!(log.contains("DEBUG"), "debug logging was on: {log}");
    assert_not_logged(&log, METRICS_TOKEN);
    assert_not_logged(&log, &wrong);
}

// ---- counts ----

/// Delivered, retried, refused for good; a repeated idempotency key; a drop-in endpoint;
/// callbacks of every common kind: each counter shows exactly that.
#[tokio::test]
async fn counters_show_exactly_what_happened() {
    let app = spawn_app_with(|c| {
        c.server.metrics = true;
        c.delivery.retry_window = Duration::from_secs(30);
    })
    .await;
    let ok_user = userid("mok");
    let ok = app.get_token(&ok_user).await;
    let refused_user = userid("mrefused");
    let refused = app.get_token(&refused_user).await;
    let retried_user = userid("mretried");
    let retried = app.get_token(&retried_user).await;
    app.mock
        .fail_always_for(&refused_user, SendReply::errcode(81013, "user not found"));
    app.mock.push_replies_for(
        &retried_user,
        [SendReply::errcode(45009, "api freq out of limit")],
    );

    let mut delivered = Vec::new();
    for i in 0..3 {
        delivered.push((app.send_ok(&ok, "fine", &i.to_string()).await, ok.clone()));
    }
    delivered.push((app.send_ok(&retried, "again", "").await, retried.clone()));
    let once = json!({"title": "once", "idempotency_key": "metrics-once"});
    let id = accepted_id(app.send_json(Some(&ok), &once).await).await;
    let repeat = app.send_json(Some(&ok), &once).await;
    assert_eq!(repeat.status(), 200);
    delivered.push((id, ok.clone()));
    bark_ok(get(&app, &format!("/{ok}/bark/title")).await).await;
    let failed = app.send_ok(&refused, "never", "").await;

    for (id, token) in &delivered {
        app.wait_for_status(id, token, "delivered", WAIT).await;
    }
    app.wait_for_status(&failed, &refused, "failed", WAIT).await;
    app.mock.wait_for_sent(6, WAIT).await;

    // Callbacks: the three `token` requests above were answered; a URL check; a retried
    // callback (same MsgId) answered from the first reply; a forged one.
    let resp = app.verify_url("echo-metrics").await;
    assert_eq!(resp.status(), 200);
    let msg_id = next_msg_id();
    let first = app.user_says_with_id(&ok_user, "help", msg_id).await;
    let again = app.user_says_with_id(&ok_user, "help", msg_id).await;
    assert_eq!(first, again);
    let mut forged = seal_with(&app.crypto, &text_message(&ok_user, "token", next_msg_id()));
    forged.msg_signature = "0".repeat(40);
    assert_eq!(app.post_sealed(&forged).await.status(), 401);

    let m = scrape_until(&app, "six deliveries and one failure are counted", |m| {
        m.get(DELIVERED) >= 6.0 && m.get(FAILED) >= 1.0
    })
    .await;
    let expected: &[(String, f64)] = &[
        (accepted("native"), 6.0),
        (accepted("bark"), 1.0),
        (accepted("serverchan"), 0.0),
        (DELIVERED.to_owned(), 6.0),
        (FAILED.to_owned(), 1.0),
        (attempts("delivered"), 6.0),
        (attempts("retry"), 1.0),
        (attempts("failed"), 1.0),
        (LATENCY_COUNT.to_owned(), 6.0),
        (wecom_errors("message/send", "81013"), 1.0),
        (wecom_errors("message/send", "45009"), 1.0),
        (callbacks("answered"), 4.0),
        (callbacks("duplicate"), 1.0),
        (callbacks("url_check"), 1.0),
        (callbacks("bad_signature"), 1.0),
        (callbacks("stale"), 0.0),
        (
            "pushbot_messages_delivered_total{channel=\"email\"}".to_owned(),
            0.0,
        ),
        ("pushbot_queue_depth".to_owned(), 0.0),
    ];
    for (series, value) in expected {
        assert_eq!(m.get(series), *value, "{series} in:\n{}", m.text);
    }
    let errors = m
        .values
        .keys()
        .filter(|k| k.starts_with("pushbot_wecom_errors_total"))
        .count();
    assert_eq!(errors, 2, "no other WeCom error was seen:\n{}", m.text);
    // Delivered on a local mock within the test: every latency is under 10 s.
    assert_eq!(
        m.get("pushbot_delivery_latency_seconds_bucket{le=\"10\"}"),
        6.0,
        "{}",
        m.text
    );
}

/// While WeCom refuses connections the queue depth is what waits, errors are counted as
/// `transport`; once it is back the queue drains to 0.
#[tokio::test]
async fn queue_depth_follows_an_outage_and_returns_to_zero() {
    let front = TcpFront::start(None).await;
    let app = spawn_app_with(|c| {
        c.server.metrics = true;
        c.wecom.api_base = http_url(&front.base_url);
        c.delivery.retry_window = Duration::from_secs(60);
        c.delivery.probe_max = Duration::from_millis(200);
    })
    .await;
    front.forward_to(&app.mock.base_url);
    front.go_down();
    let mut sent = Vec::new();
    for prefix in ["mqa", "mqb"] {
        let token = app.get_token(&userid(prefix)).await;
        for i in 0..2 {
            sent.push((
                app.send_ok(&token, "wait", &i.to_string()).await,
                token.clone(),
            ));
        }
    }
    let down = scrape_until(&app, "a transport error is counted", |m| {
        m.values
            .get(&wecom_errors("gettoken", "transport"))
            .is_some_and(|n| *n >= 1.0)
    })
    .await;
    assert_eq!(down.queue_depth(), 4.0, "{}", down.text);
    assert_eq!(down.get(DELIVERED), 0.0);

    front.come_up();
    for (id, token) in &sent {
        app.wait_for_status(id, token, "delivered", WAIT).await;
    }
    let up = scrape_until(&app, "all four deliveries are counted", |m| {
        m.get(DELIVERED) >= 4.0
    })
    .await;
    assert_eq!(up.queue_depth(), 0.0, "{}", up.text);
    assert_eq!(up.get(DELIVERED), 4.0);
    assert_eq!(up.get(LATENCY_COUNT), 4.0);
    assert_eq!(up.get(FAILED), 0.0);
}

/// Messages whose retry window runs out while WeCom is down end failed — the probe's head
/// in its lane, the others in bulk by the expiry pass — and each counts once.
#[tokio::test]
async fn every_message_failed_by_an_outage_counts_once() {
    let app = spawn_app_with(|c| {
        c.server.metrics = true;
        c.delivery.retry_window = Duration::from_secs(1);
        c.delivery.probe_max = Duration::from_millis(300);
    })
    .await;
    app.mock.fail_always(SendReply::http(503));
    let mut sent = Vec::new();
    for prefix in ["mfa", "mfb", "mfc"] {
        let token = app.get_token(&userid(prefix)).await;
        sent.push((app.send_ok(&token, "doomed", "").await, token));
    }
    for (id, token) in &sent {
        app.wait_for_status(id, token, "failed", WAIT).await;
    }
    let m = scrape_until(&app, "three failures are counted", |m| m.get(FAILED) >= 3.0).await;
    // A moment for a (wrong) double count to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m2 = scrape(&app).await;
    for m in [&m, &m2] {
        assert_eq!(m.get(FAILED), 3.0, "{}", m.text);
        assert_eq!(m.get(&attempts("failed")), 3.0, "{}", m.text);
        assert_eq!(m.get(DELIVERED), 0.0, "{}", m.text);
        assert_eq!(m.queue_depth(), 0.0, "{}", m.text);
        assert!(m.get(&wecom_errors("message/send", "http_503")) >= 1.0);
    }
}

// ---- refused tokens ----

fn auth_refused(endpoint: &str) -> String {
    format!("pushbot_auth_refused_total{{endpoint=\"{endpoint}\"}}")
}

/// A token shaped like a real one that was never issued (the `n`th of a guesser's).
fn wrong_token(n: usize) -> String {
    format!("wr0ng-t0ken-{n:020}")
}

/// Every refused token counts once, on the endpoint it came in on: wrong ones and missing
/// ones, native and drop-in routes and the status API; accepted and rate-limited sends do
/// not count.
#[tokio::test]
async fn refused_tokens_are_counted_by_endpoint() {
    let app = spawn_app_with(|c| {
        c.server.metrics = true;
        c.server.send_rate = SendRate {
            count: 1,
            per: Duration::from_secs(3600),
        };
    })
    .await;
    let token = app.get_token(&userid("refused")).await;
    for n in 0..50 {
        let resp = app
            .send_get(&[("token", &wrong_token(n)), ("title", "guess")])
            .await;
        assert_eq!(resp.status(), 401);
    }
    let resp = app.send_json(None, &json!({"title": "no token"})).await;
    assert_eq!(resp.status(), 401);
    let resp = app.send_get(&[("token", "short"), ("title", "x")]).await;
    assert_eq!(resp.status(), 401);
    for n in 0..2 {
        let resp = get(&app, &format!("/{}/title/body", wrong_token(n))).await;
        assert!(resp.status().is_client_error(), "{}", resp.status());
    }
    let resp = get(&app, &format!("/{}.send?title=x", wrong_token(7))).await;
    assert!(resp.status().is_client_error(), "{}", resp.status());
    let resp = app.messages(&[("token", &wrong_token(8))]).await;
    assert_eq!(resp.status(), 401);
    let resp = app
        .http
        .post(app.url("/message"))
        .json(&json!({"message": "no token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = app
        .http
        .post(app.url("/alerts"))
        .body("no token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Accepted, then over the member's rate: neither is a refused token.
    app.send_ok(&token, "real", "").await;
    let resp = app.send_get(&[("token", &token), ("title", "again")]).await;
    assert_eq!(resp.status(), 429);

    let m = scrape(&app).await;
    for (endpoint, n) in [
        ("native", 52.0),
        ("bark", 2.0),
        ("serverchan", 1.0),
        ("messages", 1.0),
        ("gotify", 1.0),
        ("ntfy", 1.0),
        ("alertmanager", 0.0),
        ("grafana", 0.0),
    ] {
        assert_eq!(m.get(&auth_refused(endpoint)), n, "{endpoint}:\n{}", m.text);
    }
    assert_eq!(m.get(&accepted("native")), 1.0, "{}", m.text);
    assert!(
        !m.text.contains("auth_refused_total{endpoint=\"chat\"}"),
        "{}",
        m.text
    );
}

/// The real binary's log sums refused tokens up per client address: one WARN line for 50
/// wrong tokens, with the count and the address — and none of the tokens. (A minute's
/// summary is also written at shutdown, which is how this test sees it without waiting.)
#[tokio::test]
async fn refused_tokens_are_one_warn_line_per_address_without_the_tokens() {
    let mock = MockWeCom::start().await;
    let setup = bin_setup(&test_settings(), &mock.base_url);
    let mut bin = spawn_binary(
        &setup.config_path,
        setup.port,
        &[("RUST_LOG", "warn"), ("PUSHBOT_SERVER__METRICS", "true")],
    )
    .await;
    let tokens: Vec<String> = (0..50).map(wrong_token).collect();
    for token in &tokens {
        let resp = bin.send_json(Some(token), &json!({"title": "guess"})).await;
        assert_eq!(resp.status(), 401);
    }
    assert_eq!(scrape(&bin).await.get(&auth_refused("native")), 50.0);

    let pid = bin.child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    while bin.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "pushbot did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let log = std::fs::read_to_string(&bin.log_path).unwrap();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    let refused: Vec<&&str> = warnings
        .iter()
        .filter(|l| l.contains("push tokens refused"))
        .collect();
    assert_eq!(refused.len(), 1, "one summary line:\n{log}");
    let line = refused[0];
    assert!(line.contains("refused=50"), "{line}");
    assert!(line.contains("client=127.0.0.1"), "{line}");
    assert!(line.contains("endpoints=native"), "{line}");
    for token in &tokens {
        assert_not_logged(&log, token);
    }
}
