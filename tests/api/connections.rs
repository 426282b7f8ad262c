//! Connection handling seen from a hostile or careless client: idle and trickling
//! connections, more connections than the cap, and shutdown with connections open. Raw TCP
//! sockets, because an HTTP client library would never misbehave like this.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::helpers::*;

async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to pushbot")
}

/// Resolves when the server closes `stream` (EOF or reset), returning when that happened
/// (measured from `since`) and how many bytes the server sent first.
fn closed_by_server(mut stream: TcpStream, since: Instant) -> JoinHandle<(Duration, usize)> {
    tokio::spawn(async move {
        let mut received = 0;
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (since.elapsed(), received),
                Ok(Ok(n)) => received += n,
                Err(_) => panic!("the server left a connection open for {WAIT:?}"),
            }
        }
    })
}

/// `/healthz` on a new connection each time: a pooled keep-alive connection could be
/// closed by the server's idle timeout (the same short header timeout these tests set) just
/// as the request goes out, which is the client's race, not what these tests look at.
async fn healthz_ok(app: &TestApp) {
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .expect("test HTTP client");
    let resp = tokio::time::timeout(WAIT, fresh.get(app.url("/healthz")).send())
        .await
        .expect("healthz answers in time")
        .expect("healthz request");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_header_timeout_while_others_are_served() {
    let app = spawn_app_with(|c| c.server.header_read_timeout = Duration::from_millis(700)).await;
    let start = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(closed_by_server(connect(app.port).await, start));
    }
    // Served while the idle connections are open.
    healthz_ok(&app).await;
    for conn in idle {
        let (after, bytes) = conn.await.unwrap();
        assert!(
            after >= Duration::from_millis(600) && after < Duration::from_secs(3),
            "an idle connection must be closed at the header timeout (700 ms), was {after:?}"
        );
        assert_eq!(bytes, 0, "nothing is sent to a client that sent nothing");
    }
    // And once they are gone.
    healthz_ok(&app).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let app = spawn_app_with(|c| c.server.header_read_timeout = Duration::from_millis(500)).await;
    let mut stream = connect(app.port).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let (after, _) = closed_by_server(stream, Instant::now()).await.unwrap();
    assert!(
        after >= Duration::from_millis(400) && after < Duration::from_secs(3),
        "an idle keep-alive connection must be closed at the header timeout, was {after:?}"
    );
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off_at_the_header_timeout() {
    let app = spawn_app_with(|c| c.server.header_read_timeout = Duration::from_secs(1)).await;
    let start = Instant::now();
    let stream = connect(app.port).await;
    let (read_half, mut write_half) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut read_half = read_half;
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, read_half.read(&mut buf))
            .await
            .expect("the server cuts the trickling client off")
            .unwrap_or(0);
        (start.elapsed(), n)
    });
    write_half
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // One byte every 200 ms: each byte arrives well within any per-read timeout.
    while !reader.is_finished() && start.elapsed() < WAIT {
        if write_half.write_all(b"a").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (after, bytes) = reader.await.unwrap();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(3),
        "trickled headers must not extend the 1 s header timeout; closed after {after:?}"
    );
    assert_eq!(bytes, 0, "no response to an incomplete request");
    healthz_ok(&app).await;
}

#[tokio::test]
async fn more_connections_than_the_cap_wait_and_the_service_keeps_working() {
    const CAP: usize = 8;
    const IDLE: usize = 20;
    let app = spawn_app_with(|c| {
        c.server.header_read_timeout = Duration::from_secs(1);
        c.server.max_connections = CAP;
    })
    .await;
    let start = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        // The kernel completes the handshake even for connections we do not accept yet.
        idle.push(closed_by_server(connect(app.port).await, start));
    }
    // Queued behind the idle ones; served once their timeouts free slots.
    let request_started = Instant::now();
    healthz_ok(&app).await;
    assert!(
        request_started.elapsed() >= Duration::from_millis(900),
        "the cap must hold new connections back while {CAP} idle ones are open"
    );
    let mut closed = Vec::new();
    for conn in idle {
        closed.push(conn.await.unwrap().0);
    }
    let first_round = closed
        .iter()
        .filter(|t| **t < Duration::from_millis(1500))
        .count();
    assert!(
        first_round <= CAP,
        "at most {CAP} connections are served at once, but {first_round} were closed in the first timeout: {closed:?}"
    );
    healthz_ok(&app).await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_lets_a_request_in_progress_finish() {
    let mut app = spawn_app().await; // default 30 s header timeout
    let user = userid("drain");
    let token = app.get_token(&user).await;
    let port = app.port;

    // Idle, and idle keep-alive after one request: closed at once on shutdown.
    let idle = closed_by_server(connect(port).await, Instant::now());
    let mut keep_alive = connect(port).await;
    keep_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = keep_alive.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let keep_alive = closed_by_server(keep_alive, Instant::now());

    // A request whose body is still on its way when shutdown starts.
    let body = br#"{"title":"sent during shutdown"}"#;
    let mut in_progress = connect(port).await;
    in_progress
        .write_all(
            format!(
                "POST /send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    in_progress.write_all(&body[..5]).await.unwrap();
    // Let the server read the head and start waiting for the rest of the body (bytes it
    // has not read yet when shutdown starts are not a request in progress).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let finish = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Shutdown has begun: the listener is closed …
        assert!(
            TcpStream::connect(("127.0.0.1", port)).await.is_err(),
            "no new connections after shutdown"
        );
        // … but the request in progress completes.
        in_progress.write_all(&body[5..]).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(WAIT, in_progress.read_to_end(&mut response))
            .await
            .expect("the response arrives and the connection closes")
            .unwrap();
        String::from_utf8_lossy(&response).into_owned()
    };
    let started = Instant::now();
    let ((), response) = tokio::join!(app.stop(), finish);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""ok":true"#), "{response}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown must not wait for the 30 s header timeout of idle connections"
    );
    for conn in [idle, keep_alive] {
        let (after, _) = conn.await.unwrap();
        assert!(
            after < Duration::from_secs(5),
            "closed on shutdown: {after:?}"
        );
    }
}
