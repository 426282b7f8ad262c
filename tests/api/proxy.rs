//! `wecom.proxy`: WeCom API calls (and only those) go through a forward proxy, its
//! credentials never printed; `pushbot healthcheck` needs neither the WeCom secrets nor a
//! proxy.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::compat::assert_not_logged;
use crate::helpers::*;

/// What the proxy saw of one request.
#[derive(Debug, Clone)]
struct Proxied {
    /// The absolute request target (`http://127.0.0.1:…/cgi-bin/…`), as a forward proxy
    /// receives it.
    target: String,
    proxy_authorization: Option<String>,
}

/// A tiny HTTP forward proxy: records each request and passes it on (plain HTTP only: the
/// mock WeCom speaks HTTP).
struct ForwardProxy {
    port: u16,
    seen: Arc<Mutex<Vec<Proxied>>>,
}

impl ForwardProxy {
    async fn start() -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&seen));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, seen }
    }

    fn seen(&self) -> Vec<Proxied> {
        self.seen.lock().unwrap().clone()
    }
}

async fn forward(State(seen): State<Arc<Mutex<Vec<Proxied>>>>, request: Request) -> Response {
    let target = request.uri().to_string();
    let proxy_authorization = request
        .headers()
        .get("proxy-authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    seen.lock().unwrap().push(Proxied {
        target: target.clone(),
        proxy_authorization,
    });
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut upstream = client.request(parts.method, &target).body(body);
    if let Some(ct) = parts.headers.get("content-type") {
        upstream = upstream.header("content-type", ct);
    }
    match upstream.send().await {
        Ok(resp) => {
            let status = resp.status();
            let bytes: Bytes = resp.bytes().await.unwrap_or_default();
            (status, bytes).into_response()
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

const PROXY_PASSWORD: &str = "pr0xy-s3cret-pw";

#[tokio::test]
async fn wecom_calls_go_through_the_configured_proxy_and_its_password_is_never_printed() {
    let mock = MockWeCom::start().await;
    let proxy = ForwardProxy::start().await;
    let setup = bin_setup(&test_settings(), &mock.base_url);
    let proxy_url = format!("http://alice:{PROXY_PASSWORD}@127.0.0.1:{}", proxy.port);
    let env = [
        ("RUST_LOG", "debug"),
        ("PUSHBOT_WECOM__PROXY", proxy_url.as_str()),
    ];

    // check-config shows the proxy without its credentials.
    let out = pushbot_command(&env)
        .arg("check-config")
        .arg("--config")
        .arg(&setup.config_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("http://***@127.0.0.1:{}/", proxy.port)),
        "{stdout}"
    );
    assert!(
        !stdout.contains(PROXY_PASSWORD) && !stdout.contains("alice"),
        "{stdout}"
    );

    let mut bin = spawn_binary(&setup.config_path, setup.port, &env).await;
    let user = userid("proxied");
    let token = bin.get_token(&user).await;
    let resp = bin
        .http
        .post(bin.url("/send"))
        .bearer_auth(&token)
        .form(&[("title", "via proxy"), ("content", "经代理")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent = mock.wait_for_sent(1, WAIT).await;
    assert!(
        sent.iter().any(|s| s.content == "via proxy\n\n经代理"),
        "{sent:#?}"
    );

    let seen = proxy.seen();
    let mock_base = mock.base_url.trim_end_matches('/');
    assert!(
        seen.iter().any(|p| p
            .target
            .starts_with(&format!("{mock_base}/cgi-bin/gettoken"))),
        "gettoken went through the proxy: {seen:#?}"
    );
    assert!(
        seen.iter().any(|p| p
            .target
            .starts_with(&format!("{mock_base}/cgi-bin/message/send"))),
        "message/send went through the proxy: {seen:#?}"
    );
    // reqwest sends the URL's credentials as Proxy-Authorization.
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{PROXY_PASSWORD}"));
    assert!(
        seen.iter()
            .all(|p| p.proxy_authorization.as_deref() == Some(&format!("Basic {basic}"))),
        "{seen:#?}"
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    bin.kill9();
    let log = std::fs::read_to_string(&bin.log_path).unwrap();
    assert!(log.contains("DEBUG"), "debug logging was on");
    assert!(
        !log.contains(PROXY_PASSWORD),
        "log leaks the proxy password:\n{log}"
    );
    assert_not_logged(&log, &token);
}

/// A proxy that does not answer: WeCom is unreachable (retried, probed), and the reason a
/// member's message waits never carries the proxy's password.
#[tokio::test]
async fn a_dead_proxy_makes_wecom_unreachable_without_printing_its_password() {
    let mock = MockWeCom::start().await;
    // Held for the whole test, so no other test's server can take the port meanwhile (a
    // port merely found free once was, and that server answered as the "proxy"): it takes
    // each connection and hangs up at once, answering nothing.
    let dead_proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = dead_proxy.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in dead_proxy.incoming() {
            drop(conn);
        }
    });
    let setup = bin_setup(&test_settings(), &mock.base_url);
    let proxy_url = format!("http://bob:{PROXY_PASSWORD}@127.0.0.1:{dead}");
    let env = [("PUSHBOT_WECOM__PROXY", proxy_url.as_str())];
    let mut bin = spawn_binary(&setup.config_path, setup.port, &env).await;
    // The bot's reply cannot go out either; the token is issued all the same.
    let user = userid("deadproxy");
    let token = bin.get_token(&user).await;
    let resp = bin
        .http
        .post(bin.url("/send"))
        .bearer_auth(&token)
        .form(&[("title", "stuck")])
        .send()
        .await
        .unwrap();
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        let status: serde_json::Value = bin.message(&id, Some(&token)).await.json().await.unwrap();
        if !status["last_error"].is_null() || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = status["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(!error.is_empty(), "the wait has a reason: {status}");
    assert!(!error.contains(PROXY_PASSWORD), "{error}");
    assert!(mock.sent().is_empty(), "nothing reached WeCom");
    bin.kill9();
    let log = std::fs::read_to_string(&bin.log_path).unwrap();
    assert!(
        !log.contains(PROXY_PASSWORD),
        "log leaks the proxy password:\n{log}"
    );
}

/// `pushbot healthcheck` reads only `server.listen`: it works from a config without the
/// WeCom section and ignores proxy variables (it asks this machine).
#[tokio::test]
async fn healthcheck_needs_only_the_listen_address() {
    let mock = MockWeCom::start().await;
    let setup = bin_setup(&test_settings(), &mock.base_url);
    let mut bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let minimal = dir.path().join("health.toml");
    std::fs::write(
        &minimal,
        format!("[server]\nlisten = \"0.0.0.0:{}\"\n", setup.port),
    )
    .unwrap();
    let dead_proxy = format!("http://127.0.0.1:{}", free_port());
    let run = |config: &std::path::Path| {
        pushbot_command(&[
            ("HTTP_PROXY", dead_proxy.as_str()),
            ("ALL_PROXY", dead_proxy.as_str()),
            ("http_proxy", dead_proxy.as_str()),
        ])
        .arg("healthcheck")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
    };
    let out = run(&minimal);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Or no file at all, with the address from the environment.
    let out = pushbot_command(&[(
        "PUSHBOT_SERVER__LISTEN",
        &format!("127.0.0.1:{}", setup.port),
    )])
    .current_dir(dir.path())
    .arg("healthcheck")
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin.kill9();
    let out = run(&minimal);
    assert!(!out.status.success());
}
