//! Supervised background work (issue 16): a panic in the scheduler loop or a lane worker
//! is recovered, one in the storage writer stops the process (and a restart delivers
//! everything), a stalled scheduler makes `/healthz` answer 503, and a log destination
//! that fails (a full disk, a closed pipe) costs log lines and nothing else.
//!
//! Faults are injected through the application's test hooks
//! ([`pushbot::supervise::Faults`]); the logging tests run the real binary.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pushbot::supervise::FaultPoint;
use serde_json::Value;

use crate::helpers::*;

/// Waits until every armed fault of `point` has been tripped.
async fn wait_tripped(app: &TestApp, point: FaultPoint) {
    let deadline = Instant::now() + WAIT;
    while app.faults().armed(point) > 0 {
        assert!(Instant::now() < deadline, "{point:?} was never reached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn healthz_json(api: &Api) -> (u16, Value) {
    let resp = api.healthz().await.expect("healthz answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("healthz is JSON"))
}

async fn metrics_text(api: &Api) -> String {
    let resp = reqwest::get(api.url("/metrics"))
        .await
        .expect("metrics answers");
    resp.text().await.expect("metrics text")
}

#[tokio::test]
async fn a_lane_worker_that_panics_is_released_and_its_message_delivered_at_once() {
    let app = spawn_app().await;
    let user = userid("lanepanic");
    let token = app.get_token(&user).await;
    app.faults().arm(FaultPoint::LanePanic, 1);
    let started = Instant::now();
    let id = app
        .send_ok(&token, "after a panic", "still delivered")
        .await;
    // Without recovery the dead worker's lane stays in this instance's set: its lease is
    // renewed for ever and the message never goes out.
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(
        app.faults().armed(FaultPoint::LanePanic),
        0,
        "the fault fired"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the lane was worked again at once, not after its lease: {:?}",
        started.elapsed()
    );
    let sent = app.mock.wait_for_sent(1, WAIT).await;
    assert_eq!(sent.len(), 1, "sent once: {sent:?}");
    // The same member's lane keeps working afterwards.
    let id = app.send_ok(&token, "next", "one").await;
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
    let (status, _) = healthz_json(&app.api).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_lane_that_panics_while_probing_hands_the_probe_back() {
    // WeCom down: every lane waits for the one probe. If the panicked probe were never
    // handed back, no lane would be let through again and nothing would be delivered.
    let app = spawn_app_with(|c| {
        c.delivery.retry_window = Duration::from_secs(30);
        c.delivery.probe_max = Duration::from_millis(200);
    })
    .await;
    let user = userid("probepanic");
    let token = app.get_token(&user).await;
    app.mock.fail_always(SendReply::http(502));
    let first = app.send_ok(&token, "while down", "1").await;
    app.mock.wait_for_send_calls(2, WAIT).await;
    app.faults().arm(FaultPoint::LanePanic, 1);
    wait_tripped(&app, FaultPoint::LanePanic).await;
    app.mock.heal();
    app.wait_for_status(&first, &token, "delivered", WAIT).await;
}

#[tokio::test]
async fn a_scheduler_loop_that_panics_is_restarted_and_delivers_to_new_members() {
    let app = spawn_app().await;
    app.faults().arm(FaultPoint::SchedulerPanic, 1);
    wait_tripped(&app, FaultPoint::SchedulerPanic).await;
    // Members with no lane yet: only the loop claims their lanes.
    let mut sent = Vec::new();
    for i in 0..3 {
        let user = userid(&format!("looppanic{i}"));
        let token = app.get_token(&user).await;
        let id = app
            .send_ok(&token, "after the loop panicked", &format!("m{i}"))
            .await;
        sent.push((id, token));
        let (status, body) = healthz_json(&app.api).await;
        assert_eq!(status, 200, "{body}");
    }
    for (id, token) in &sent {
        app.wait_for_status(id, token, "delivered", WAIT).await;
    }
}

#[tokio::test]
async fn a_stalled_scheduler_makes_healthz_and_metrics_say_so() {
    let app = spawn_app_with(|c| {
        c.delivery.stall_after = Duration::from_secs(1);
        c.server.metrics = true;
    })
    .await;
    let (status, body) = healthz_json(&app.api).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["scheduler"]["last_pass_seconds_ago"].as_f64().unwrap() < 1.0,
        "{body}"
    );
    assert_eq!(body["scheduler"]["stall_after_seconds"], 1.0, "{body}");
    assert_eq!(body["oldest_due_seconds"]["wecom"], 0.0, "{body}");

    app.faults().arm(FaultPoint::SchedulerStall, 1);
    wait_tripped(&app, FaultPoint::SchedulerStall).await;
    let deadline = Instant::now() + WAIT;
    let body = loop {
        let (status, body) = healthz_json(&app.api).await;
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "healthz stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["status"], "unavailable", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("scheduler"),
        "{body}"
    );
    assert!(
        body["scheduler"]["last_pass_seconds_ago"].as_f64().unwrap() > 1.0,
        "{body}"
    );
    let metrics = metrics_text(&app.api).await;
    let age: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pushbot_scheduler_last_pass_age_seconds "))
        .unwrap_or_else(|| panic!("no scheduler age in {metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(age > 1.0, "{age}");
}

#[tokio::test]
async fn healthz_reports_how_long_the_oldest_due_message_has_waited() {
    // One attempt at a time, WeCom answering slowly: the second member's message is due
    // while the first one's is in flight.
    let app = spawn_app_with(|c| {
        c.delivery.concurrency = 1;
        c.wecom.request_timeout = Duration::from_secs(5);
        c.server.metrics = true;
    })
    .await;
    app.mock.set_delay(Some(Duration::from_millis(2_500)));
    let (a, b) = (userid("oldestdue-a"), userid("oldestdue-b"));
    let (ta, tb) = (app.get_token(&a).await, app.get_token(&b).await);
    app.send_ok(&ta, "slow", "1").await;
    app.mock.wait_for_send_started(1, WAIT).await;
    app.send_ok(&tb, "waits", "2").await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, body) = healthz_json(&app.api).await;
    assert_eq!(status, 200, "{body}");
    let waited = body["oldest_due_seconds"]["wecom"].as_f64().unwrap();
    assert!((1.0..3.0).contains(&waited), "{body}");
    let metrics = metrics_text(&app.api).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pushbot_queue_oldest_due_age_seconds{channel=\"wecom\"} 1")),
        "{metrics}"
    );
    app.mock.set_delay(None);
    app.mock.wait_for_sent(2, WAIT).await;
}

#[tokio::test]
async fn a_writer_that_panics_stops_the_service_and_a_restart_delivers_every_accepted_message() {
    let mut app = spawn_app_with(|c| c.delivery.retry_window = Duration::from_secs(60)).await;
    let user = userid("writerpanic");
    let token = app.get_token(&user).await;
    let mut accepted = Vec::new();
    for i in 0..5 {
        accepted.push(app.send_ok(&token, "before", &format!("b{i}")).await);
    }
    app.faults().arm(FaultPoint::WriterPanic, 1);
    // The writer panics at its next batch (a message, or an outcome of those above):
    // from then on no write is answered 200 and `/healthz` never says ok.
    let client = reqwest::Client::new();
    let mut tripped_at: Option<Instant> = None;
    for i in 0..40 {
        let content = format!("d{i}");
        let query = [
            ("token", token.as_str()),
            ("title", "during"),
            ("content", &content),
        ];
        let Ok(resp) = client.get(app.url("/send")).query(&query).send().await else {
            break; // stopped: nothing answers any more
        };
        match resp.status().as_u16() {
            200 => {
                let body: Value = resp.json().await.unwrap();
                accepted.push(body["id"].as_str().unwrap().to_owned());
            }
            status => assert_eq!(status, 503, "refused as unavailable"),
        }
        if app.faults().armed(FaultPoint::WriterPanic) == 0 {
            // The writer's queue closes as its thread unwinds: give it a moment.
            let tripped = *tripped_at.get_or_insert_with(Instant::now);
            if tripped.elapsed() < Duration::from_millis(50) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let Ok(health) = client.get(app.url("/healthz")).send().await else {
                break;
            };
            let code = health.status().as_u16();
            let body = health.text().await.unwrap_or_default();
            assert_ne!(
                code, 200,
                "/healthz said ok after the writer failed: {body}"
            );
        }
    }
    // The service may stop so fast that the next request finds nothing listening before
    // the loop saw the fault disarmed: the fault's own count says it fired.
    assert!(
        tripped_at.is_some() || app.faults().armed(FaultPoint::WriterPanic) == 0,
        "the writer's fault fired"
    );
    let exit = app
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the service stopped by itself within seconds");
    let err = exit.expect_err("it stopped with an error (exit status 1)");
    assert!(err.contains("storage writer"), "{err}");

    app.restart().await;
    for id in &accepted {
        app.wait_for_status(id, &token, "delivered", WAIT).await;
    }
    let contents: HashSet<String> = app.mock.sent().iter().map(|s| s.content.clone()).collect();
    assert!(contents.len() >= accepted.len(), "{contents:?}");
}

// ---- logging that fails ------------------------------------------------------------------

/// A `pushbot serve` whose standard output and error go where `stdio` says, at debug
/// level (a line per request), with 300 sends after start-up; answers how many were
/// accepted and whether `/healthz` said 200 after each.
async fn three_hundred_sends_with_stderr(
    stdio: impl Fn() -> Stdio,
    on_start: impl FnOnce(&mut std::process::Child),
) {
    let mock = MockWeCom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let db = TestDb::new(dir.path());
    let config = test_settings();
    let toml = render(
        &config,
        &format!("127.0.0.1:{port}"),
        db.url(),
        &mock.base_url,
    );
    let config_path = dir.path().join("pushbot.toml");
    std::fs::write(&config_path, toml).unwrap();
    let mut child = binary_command(&config_path, &[("RUST_LOG", "debug")])
        .stdin(Stdio::null())
        .stdout(stdio())
        .stderr(stdio())
        .spawn()
        .expect("start pushbot");
    on_start(&mut child);
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = api.healthz().await
            && r.status() == 200
        {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "pushbot exited at start-up"
        );
        assert!(Instant::now() < deadline, "pushbot did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let user = userid("logfull");
    let token = api.get_token(&user).await;
    let mut accepted = 0;
    for i in 0..300 {
        let resp = api
            .send_get(&[
                ("token", &token),
                ("title", "log"),
                ("content", &format!("l{i:03}")),
            ])
            .await;
        assert_eq!(resp.status(), 200, "send {i}");
        accepted += 1;
        if i % 50 == 0 {
            let health = api.healthz().await.unwrap();
            assert_eq!(health.status(), 200, "healthz during send {i}");
        }
    }
    let sent = mock.wait_for_sent(accepted, Duration::from_secs(30)).await;
    let contents: HashSet<&str> = sent.iter().map(|s| s.content.as_str()).collect();
    assert_eq!(contents.len(), 300, "every accepted message was delivered");
    assert!(
        child.try_wait().unwrap().is_none(),
        "pushbot is still running"
    );
    let health = api.healthz().await.unwrap();
    assert_eq!(health.status(), 200);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn a_full_log_disk_costs_log_lines_and_nothing_else() {
    let Some(disk) = Tmpfs::mount("64k") else {
        return;
    };
    let log = disk.path().join("pushbot.log");
    // Fill the disk first: every log line fails from the start.
    let filler = disk.path().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 * 1024]);
    let file = std::fs::File::create(&log).unwrap();
    three_hundred_sends_with_stderr(|| Stdio::from(file.try_clone().unwrap()), |_| {}).await;
    let written = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    assert!(
        written < 64 * 1024,
        "the log could not grow: {written} bytes"
    );
}

#[tokio::test]
async fn a_closed_log_pipe_costs_log_lines_and_nothing_else() {
    three_hundred_sends_with_stderr(Stdio::piped, |child| {
        // Nobody reads what it logs: every write is EPIPE from now on.
        drop(child.stdout.take());
        drop(child.stderr.take());
    })
    .await;
}
