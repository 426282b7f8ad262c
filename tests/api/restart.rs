//! The outbox is durable: what was accepted before a stop is delivered after a start.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::db;
use crate::helpers::*;

#[tokio::test]
async fn queued_messages_are_delivered_by_the_next_instance() {
    let mut app = spawn_app_with(|c| c.delivery.retry_window = Duration::from_secs(60)).await;
    let user = userid("durable");
    let token = app.get_token(&user).await;

    // WeCom is down: every attempt fails transiently, so the messages stay queued.
    app.mock.fail_always(SendReply::errcode(-1, "system busy"));
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(app.send_ok(&token, "queued", &i.to_string()).await);
    }
    app.mock.wait_for_send_calls(3, WAIT).await;
    for id in &ids {
        let status = app.message_json(id, &token).await;
        assert_eq!(status["status"], "queued", "{status}");
    }

    app.stop().await;
    // While nothing runs, the messages are in the database, queued.
    let mut conn = db::connect(app.store_url()).await;
    for id in &ids {
        assert_eq!(db::message(&mut conn, id).await.status, "queued");
    }
    db::close(conn).await;
    assert!(
        app.healthz().await.is_err(),
        "the old instance no longer listens"
    );
    app.mock.heal();
    app.restart().await;

    let sent = app.mock.wait_for_sent(3, WAIT).await;
    // In acceptance order: one member's messages form one lane.
    let contents: Vec<_> = sent.iter().map(|s| s.content.clone()).collect();
    assert_eq!(contents, ["queued\n\n0", "queued\n\n1", "queued\n\n2"]);
    assert!(sent.iter().all(|s| s.touser == user));
    for (i, id) in ids.iter().enumerate() {
        let status = app.wait_for_status(id, &token, "delivered", WAIT).await;
        // The lane's head was tried (and failed) before the restart; the messages behind
        // it waited for it rather than each hitting WeCom while it was down.
        if i == 0 {
            assert!(status["attempts"].as_i64().unwrap() > 1, "{status}");
        }
    }
}

#[tokio::test]
async fn tokens_survive_a_restart() {
    let mut app = spawn_app().await;
    let user = userid("durable");
    let token = app.get_token(&user).await;
    let rotated_user = userid("rotated");
    let old = app.get_token(&rotated_user).await;
    let new = app.rotate(&rotated_user).await;

    app.restart().await;

    assert_eq!(app.get_token(&user).await, token);
    assert_eq!(app.get_token(&rotated_user).await, new);
    let resp = app.send_get(&[("token", &old), ("title", "revoked")]).await;
    assert_error(resp, 401, "unauthorized").await;
    let id = app.send_ok(&token, "after", "restart").await;
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
}

#[tokio::test]
async fn a_callback_retried_across_a_restart_is_still_processed_once() {
    let mut app = spawn_app().await;
    let user = userid("retry");
    app.get_token(&user).await;
    let msg_id = next_msg_id();
    let first = app
        .user_says_with_id(&user, "rotate", msg_id)
        .await
        .unwrap();

    app.restart().await;

    let again = app
        .user_says_with_id(&user, "rotate", msg_id)
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(app.get_token(&user).await, token_from_reply(&first));
}

#[tokio::test]
async fn delivered_and_failed_messages_are_not_resent_after_a_restart() {
    let mut app = spawn_app().await;
    let user = userid("settled");
    let token = app.get_token(&user).await;
    let delivered = app.send_ok(&token, "once", "").await;
    app.wait_for_status(&delivered, &token, "delivered", WAIT)
        .await;
    app.mock
        .push_replies([SendReply::errcode(48002, "api forbidden")]);
    let failed = app.send_ok(&token, "never", "").await;
    app.wait_for_status(&failed, &token, "failed", WAIT).await;
    let calls = app.mock.send_calls();

    app.restart().await;

    // A fresh message goes through, and nothing old was re-sent before it.
    let probe = app.send_ok(&token, "probe", "").await;
    app.wait_for_status(&probe, &token, "delivered", WAIT).await;
    assert_eq!(app.mock.send_calls(), calls + 1);
    let status = app.message_json(&failed, &token).await;
    assert_eq!(status["status"], "failed");
    let status = app.message_json(&delivered, &token).await;
    assert_eq!(status["status"], "delivered");
}

#[tokio::test]
async fn a_delivery_in_flight_does_not_hold_up_shutdown_or_get_lost() {
    let mut app = spawn_app_with(|c| {
        c.wecom.request_timeout = Duration::from_secs(1);
        c.delivery.retry_window = Duration::from_secs(60);
    })
    .await;
    let user = userid("inflight");
    let token = app.get_token(&user).await;
    app.mock.set_delay(Some(Duration::from_secs(30)));
    let id = app.send_ok(&token, "in", "flight").await;
    app.mock.wait_for_send_started(1, WAIT).await;

    let started = Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );

    app.mock.heal();
    app.restart().await;
    let status = app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert!(status["attempts"].as_i64().unwrap() >= 1, "{status}");
    assert!(app.mock.sent().iter().any(|s| s.content == "in\n\nflight"));
}

#[tokio::test]
async fn no_delivery_attempt_starts_after_shutdown_began() {
    let mut app = spawn_app_with(|c| {
        c.delivery.retry_window = Duration::from_secs(60);
        c.delivery.backoff_initial = Duration::from_millis(40);
        c.delivery.backoff_max = Duration::from_millis(40);
    })
    .await;
    let user = userid("stopping");
    let token = app.get_token(&user).await;
    // Three messages keep being retried every 20-40 ms while WeCom is busy.
    app.mock.fail_always(SendReply::errcode(-1, "system busy"));
    for i in 0..3 {
        app.send_ok(&token, "busy", &i.to_string()).await;
    }
    app.mock.wait_for_send_calls(9, WAIT).await;

    // A request still being received keeps the HTTP side draining for a while.
    let mut slow = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    slow.write_all(
        b"POST /send HTTP/1.1\r\nHost: pushbot\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"title\":",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    app.begin_stop();
    let at_stop = app.mock.send_started();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let started_after = app.mock.send_started() - at_stop;
    // At most the attempts already on their way when the signal came (one per message).
    assert!(
        started_after <= 3,
        "{started_after} message/send calls started after shutdown began"
    );
    drop(slow);
    app.stop().await;
}

#[tokio::test]
async fn an_attempt_cut_off_by_the_shutdown_grace_is_queued_and_delivered_after_restart() {
    let mut app = spawn_app_with(|c| {
        c.wecom.request_timeout = Duration::from_secs(30);
        c.delivery.retry_window = Duration::from_secs(60);
        c.delivery.shutdown_grace = Duration::from_millis(300);
    })
    .await;
    let user = userid("cutoff");
    let token = app.get_token(&user).await;
    app.mock.set_delay(Some(Duration::from_secs(30)));
    let id = app.send_ok(&token, "cut", "off").await;
    app.mock.wait_for_send_started(1, WAIT).await;

    let started = Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?} with a 300 ms grace",
        started.elapsed()
    );

    // While nothing runs: still queued (not lost, not failed), and it says why.
    let mut conn = db::connect(app.store_url()).await;
    let row = db::message(&mut conn, &id).await;
    db::close(conn).await;
    assert_eq!(row.status, "queued", "{row:?}");
    assert_eq!(row.attempts, 1, "the cut-off attempt counts: {row:?}");
    let error = row.last_error.clone().unwrap_or_default();
    assert!(error.contains("interrupted by shutdown"), "{row:?}");

    app.mock.heal();
    app.restart().await;
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert!(app.mock.sent().iter().any(|s| s.content == "cut\n\noff"));
}
