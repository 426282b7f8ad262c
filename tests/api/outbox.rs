//! The outbox's core promise, checked against the database file itself: every committed
//! message is delivered (or visibly failed) without a restart, whatever happens to the
//! request that brought it, to the task that should deliver it, or to the write that
//! records the outcome.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::db;
use crate::helpers::*;

/// Polls the database until every committed message is `delivered` and WeCom has seen
/// each exactly once; panics with the stragglers after `timeout`.
async fn assert_all_delivered_once(app: &TestApp, timeout: Duration) -> usize {
    let mut conn = db::connect(app.store_url()).await;
    let deadline = Instant::now() + timeout;
    loop {
        let rows = db::messages(&mut conn).await;
        let pending: Vec<_> = rows.iter().filter(|m| m.status != "delivered").collect();
        let sent = app.mock.sent();
        if pending.is_empty() && sent.len() >= rows.len() {
            assert_eq!(
                sent.len(),
                rows.len(),
                "each message reached WeCom exactly once"
            );
            db::close(conn).await;
            return rows.len();
        }
        if Instant::now() > deadline {
            panic!(
                "{} of {} committed messages not delivered after {timeout:?} \
                 (WeCom got {} sends); e.g. {:?}",
                pending.len(),
                rows.len(),
                sent.len(),
                pending.iter().take(3).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_that_resets_its_connection_cannot_strand_its_message() {
    let app = spawn_app().await;
    let user = userid("reset");
    let token = app.get_token(&user).await;

    // A burst of POSTs whose clients vanish (RST) while /send waits for the commit.
    const N: usize = 300;
    let addr = format!("127.0.0.1:{}", app.port);
    let clients = (0..N).map(|i| {
        let addr = addr.clone();
        let token = token.clone();
        async move {
            let body = format!(r#"{{"title":"reset","content":"{i}"}}"#);
            let request = format!(
                "POST /send HTTP/1.1\r\nHost: pushbot\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let Ok(mut stream) = TcpStream::connect(&addr).await else {
                return;
            };
            if stream.write_all(request.as_bytes()).await.is_err() {
                return;
            }
            // Give the server a moment to read it, then reset (SO_LINGER 0: RST, no FIN).
            // A few wait for the answer, so that some messages are surely committed and a
            // run where every reset beat the commit cannot pass vacuously (on PostgreSQL,
            // whose /send reads the token and the member's settings before the commit,
            // hardly any of the quick resets get that far).
            if i % 50 == 0 {
                let mut head = [0u8; 16];
                let _ = tokio::time::timeout(WAIT, stream.read(&mut head)).await;
            } else {
                tokio::time::sleep(Duration::from_millis((i % 8) as u64)).await;
            }
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    });
    futures_util::future::join_all(clients).await;

    // The clients are gone, but the server may still be reading and committing what they
    // sent: wait until the number of committed rows stops changing before judging.
    settle_committed(&app, Duration::from_millis(500), Duration::from_secs(10)).await;
    let committed = assert_all_delivered_once(&app, Duration::from_secs(5)).await;
    assert!(committed > 0, "some of the requests were committed");
}

/// Waits until at least one message is committed and the count has not changed for
/// `quiet`; panics after `timeout`.
async fn settle_committed(app: &TestApp, quiet: Duration, timeout: Duration) {
    let mut conn = db::connect(app.store_url()).await;
    let deadline = Instant::now() + timeout;
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let n = db::messages(&mut conn).await.len();
        if n != last {
            (last, since) = (n, Instant::now());
        } else if n > 0 && since.elapsed() >= quiet {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} messages committed, still changing or none after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    db::close(conn).await;
}

#[tokio::test]
async fn the_sweep_delivers_a_queued_message_that_no_task_is_working_on() {
    let app = spawn_app_with(|c| c.delivery.sweep_interval = Duration::from_millis(200)).await;
    let user = userid("orphan");
    let token = app.get_token(&user).await;

    // Committed and queued, but no task was ever started for it (a lost-task bug).
    let id = uuid::Uuid::now_v7().to_string();
    let mut conn = db::connect(app.store_url()).await;
    db::insert_orphan(&mut conn, &id, &user, "orphaned").await;
    db::close(conn).await;

    let status = app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(status["attempts"], 1, "{status}");
    let sent = app.mock.wait_for_sent(1, WAIT).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].touser, user);
    assert_eq!(sent[0].content, "orphaned");
}

#[tokio::test]
async fn the_sweep_leaves_messages_that_a_task_is_working_on_alone() {
    // The sweep runs many times while each message is overdue and owned: in flight at a
    // slow WeCom, or waiting out a backoff after a transient failure.
    let app = spawn_app_with(|c| {
        c.delivery.sweep_interval = Duration::from_millis(20);
        c.delivery.retry_window = Duration::from_secs(10);
        c.delivery.backoff_initial = Duration::from_millis(100);
        c.delivery.backoff_max = Duration::from_millis(200);
    })
    .await;
    let user = userid("owned");
    let token = app.get_token(&user).await;
    app.mock.set_delay(Some(Duration::from_millis(300)));
    app.mock.push_replies([
        SendReply::errcode(-1, "system busy"),
        SendReply::errcode(-1, "system busy"),
    ]);
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(app.send_ok(&token, "owned", &i.to_string()).await);
    }
    for id in &ids {
        app.wait_for_status(id, &token, "delivered", WAIT).await;
    }
    // Give a stray duplicate the time to show up.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(app.mock.sent().len(), 4, "{:#?}", app.mock.sent());
    assert_eq!(
        app.mock.send_started(),
        6,
        "4 messages, 2 of them retried once"
    );
}

#[tokio::test]
async fn an_outcome_that_cannot_be_recorded_is_retried_until_it_is() {
    let app = spawn_app().await;
    let user = userid("unrecorded");
    let token = app.get_token(&user).await;
    let mut conn = db::connect(app.store_url()).await;

    // WeCom accepts the message; recording that fails (full disk, locked database) for
    // a while.
    app.mock.set_delay(Some(Duration::from_millis(300)));
    let id = app.send_ok(&token, "record", "me").await;
    db::fail_updates(&mut conn).await;
    app.mock.wait_for_sent(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = db::message(&mut conn, &id).await;
    assert_eq!(row.status, "queued", "{row:?}");
    assert_eq!(row.attempts, 0, "nothing recorded yet: {row:?}");

    // Writes work again: the outcome is recorded by the task that still holds it,
    // without a restart and without sending the message a second time.
    db::heal_updates(&mut conn).await;
    let status = app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(status["attempts"], 1, "{status}");
    assert_eq!(app.mock.send_started(), 1, "not sent again");
    db::close(conn).await;
}
