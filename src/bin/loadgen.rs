//! Load benchmark: drives `/send` with concurrent clients against a real pushbot (in this
//! process, own runtime, SQLite file in a temp dir) and a fast local stand-in for the WeCom
//! API, then reports accepted/s, delivered/s, latency percentiles and lost messages.
//!
//! ```text
//! cargo run --release --bin loadgen -- --clients 32 --messages 100000
//! ```
//!
//! The member's token is obtained the way a person would: a signed, encrypted "token"
//! callback, as WeCom would send it. Every message carries a sequence number; the stand-in
//! marks each number it receives, so "lost" is exact, and the database is checked too.
//!
//! All messages go out under one member's token, far beyond the default per-member limit
//! (`server.send_rate`, 300 per minute), so the generated config raises that limit to
//! effectively unlimited: the benchmark measures the send path, not the rate limiter's 429s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use pushbot::app::Application;
use pushbot::config::Settings;
use pushbot::wecom::crypto::WeComCrypto;
use pushbot::wecom::xml;
use serde_json::{Value, json};

const CORP_ID: &str = "wx5823bf96d3bd56c7";
const CALLBACK_TOKEN: &str = "QDG6eK";
const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

#[derive(Parser)]
#[command(about = "Load benchmark for pushbot's /send path")]
struct Args {
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Messages to send in total.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Worker threads of the server runtime.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Give up waiting for deliveries after this many seconds.
    #[arg(long, default_value_t = 120)]
    drain_timeout: u64,
    /// After the run, stop the clients, leave the server idle this many seconds, and
    /// report the process's resident memory then (does the allocator give the spike back?).
    #[arg(long, default_value_t = 0)]
    settle: u64,
}

/// The stand-in's view of what arrived.
struct Received {
    seen: Vec<AtomicBool>,
    unique: AtomicUsize,
    duplicates: AtomicUsize,
    last_at_ns: AtomicU64,
    start: Instant,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // The load clients' own reqwest needs a TLS provider even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let received = Arc::new(Received {
        seen: (0..args.messages).map(|_| AtomicBool::new(false)).collect(),
        unique: AtomicUsize::new(0),
        duplicates: AtomicUsize::new(0),
        last_at_ns: AtomicU64::new(0),
        start: Instant::now(),
    });

    // 1. WeCom stand-in on its own single-threaded runtime.
    let mock_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mock_listener = mock_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let mock_addr = mock_listener.local_addr()?;
    let mock_app = Router::new()
        .route("/cgi-bin/gettoken", get(gettoken))
        .route("/cgi-bin/message/send", post(message_send))
        .with_state(Arc::clone(&received));
    std::thread::spawn(move || {
        mock_rt.block_on(async move {
            let _ = axum::serve(mock_listener, mock_app).await;
        });
    });

    // 2. pushbot on its own runtime, SQLite in a temp dir.
    let dir = std::env::temp_dir().join(format!("pushbot-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("loadgen.db");
    let settings = Settings::from_toml(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        public_url = "http://127.0.0.1"
        # one token sends everything: lift the per-member limit (see the module docs)
        send_rate = {{ count = 4000000000, per = "1s" }}
        [storage]
        url = "sqlite://{db}"
        [wecom]
        corp_id = "{CORP_ID}"
        agent_id = 1000002
        secret = "loadgen-secret"
        callback_token = "{CALLBACK_TOKEN}"
        encoding_aes_key = "{AES_KEY}"
        api_base = "http://{mock_addr}"
        member_limits = [{{ count = 4000000000, per = "1s" }}]
        [delivery]
        concurrency = 64
        [log]
        level = "warn"
        "#,
        db = db.display()
    ))?;
    pushbot::telemetry::init(&settings.log);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .enable_all()
        .build()?;
    let app = server_rt.block_on(Application::build(settings))?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = server_rt.spawn(app.run_until_stopped(async {
        let _ = stop_rx.await;
    }));

    // 3. Clients on a third runtime.
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = client_rt.block_on(drive(&args, &base, &received))?;
    if args.settle > 0 {
        let after_run = memory();
        drop(client_rt);
        std::thread::sleep(Duration::from_secs(args.settle));
        println!(
            "memory:         RSS {} right after the run, {} after {} s idle (peak {})",
            after_run.0,
            memory().0,
            args.settle,
            memory().1
        );
    }

    let _ = stop_tx.send(());
    server_rt.block_on(server)??;
    let (db_delivered, db_other) = server_rt.block_on(count_rows(&db))?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("{report}");
    println!("database: {db_delivered} delivered, {db_other} not delivered");
    let lost = report.accepted.saturating_sub(report.unique);
    if lost > 0 || report.errors > 0 {
        return Err(format!("{lost} lost, {} failed requests", report.errors).into());
    }
    Ok(())
}

/// This process's resident set size and its peak (VmRSS, VmHWM), as printed by Linux.
fn memory() -> (String, String) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "?".to_owned())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Report {
    clients: usize,
    accepted: usize,
    errors: usize,
    send_secs: f64,
    deliver_secs: f64,
    unique: usize,
    duplicates: usize,
    latencies_us: Vec<u64>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |p: f64| -> f64 {
            if self.latencies_us.is_empty() {
                return 0.0;
            }
            let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
            self.latencies_us[i.min(self.latencies_us.len() - 1)] as f64 / 1000.0
        };
        writeln!(f, "clients:        {}", self.clients)?;
        writeln!(
            f,
            "accepted:       {} in {:.2} s = {:.0} msg/s ({} failed requests)",
            self.accepted,
            self.send_secs,
            self.accepted as f64 / self.send_secs,
            self.errors
        )?;
        writeln!(
            f,
            "delivered:      {} in {:.2} s = {:.0} msg/s ({} duplicates)",
            self.unique,
            self.deliver_secs,
            self.unique as f64 / self.deliver_secs,
            self.duplicates
        )?;
        writeln!(
            f,
            "latency /send:  p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            pct(0.50),
            pct(0.90),
            pct(0.99),
            pct(1.0)
        )?;
        write!(
            f,
            "lost:           {}",
            self.accepted.saturating_sub(self.unique)
        )
    }
}

async fn drive(
    args: &Args,
    base: &str,
    received: &Arc<Received>,
) -> Result<Report, Box<dyn std::error::Error>> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let token = obtain_token(&http, base).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let start_ns = received.start.elapsed().as_nanos();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (http, next, token, url) = (
            http.clone(),
            Arc::clone(&next),
            token.clone(),
            format!("{base}/send"),
        );
        let total = args.messages;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut ok, mut errors) = (0usize, 0usize);
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total {
                    break;
                }
                let t = Instant::now();
                let res = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({ "title": "load", "content": format!("seq={seq}") }))
                    .send()
                    .await;
                let good = match res {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                latencies.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                if good {
                    ok += 1;
                } else {
                    errors += 1;
                }
            }
            (ok, errors, latencies)
        }));
    }
    let (mut accepted, mut errors, mut latencies_us) = (0, 0, Vec::new());
    for t in tasks {
        let (ok, err, lat) = t.await?;
        accepted += ok;
        errors += err;
        latencies_us.extend(lat);
    }
    let send_secs = started.elapsed().as_secs_f64();
    latencies_us.sort_unstable();

    let deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    while received.unique.load(Ordering::Relaxed) < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_ns = u128::from(received.last_at_ns.load(Ordering::Relaxed));
    let deliver_secs = (last_ns.saturating_sub(start_ns)) as f64 / 1e9;
    Ok(Report {
        clients: args.clients,
        accepted,
        errors,
        send_secs,
        deliver_secs,
        unique: received.unique.load(Ordering::Relaxed),
        duplicates: received.duplicates.load(Ordering::Relaxed),
        latencies_us,
    })
}

/// Asks the bot for a token exactly as WeCom would relay a member's "token" message.
async fn obtain_token(
    http: &reqwest::Client,
    base: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let crypto = WeComCrypto::new(CALLBACK_TOKEN, AES_KEY, CORP_ID)?;
    let inner = format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[loadgen]]></FromUserName>\
         <CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[token]]></Content>\
         <MsgId>1</MsgId><AgentID>1000002</AgentID></xml>"
    );
    let encrypted = crypto.encrypt(&inner);
    let ts = pushbot::store::now_ms() / 1000;
    let (ts, nonce) = (ts.to_string(), "12345".to_owned());
    let signature = crypto.signature(&ts, &nonce, &encrypted);
    let body = format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><AgentID><![CDATA[1000002]]></AgentID><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    );
    let reply = http
        .post(format!("{base}/wecom/callback"))
        .query(&[
            ("msg_signature", &signature),
            ("timestamp", &ts),
            ("nonce", &nonce),
        ])
        .body(body)
        .send()
        .await?;
    if !reply.status().is_success() {
        let status = reply.status();
        return Err(format!("token callback answered {status}: {}", reply.text().await?).into());
    }
    let reply = reply.bytes().await?;
    let envelope = xml::parse_envelope(&reply)?;
    let text = xml::parse_inbound(&crypto.decrypt(&envelope.encrypt)?)?;
    let content = text.content.unwrap_or_default();
    content
        .lines()
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| "bot reply has no token".into())
}

async fn gettoken() -> Json<Value> {
    Json(
        json!({ "errcode": 0, "errmsg": "ok", "access_token": "loadgen-token", "expires_in": 7200 }),
    )
}

async fn message_send(
    State(received): State<Arc<Received>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let seq = body["text"]["content"]
        .as_str()
        .and_then(|c| c.rsplit("seq=").next())
        .and_then(|s| s.trim().parse::<usize>().ok());
    if let Some(flag) = seq.and_then(|s| received.seen.get(s)) {
        if flag.swap(true, Ordering::Relaxed) {
            received.duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            received.unique.fetch_add(1, Ordering::Relaxed);
        }
        let now = u64::try_from(received.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        received.last_at_ns.fetch_max(now, Ordering::Relaxed);
    }
    Json(json!({ "errcode": 0, "errmsg": "ok", "msgid": "x" }))
}

async fn count_rows(db: &std::path::Path) -> Result<(i64, i64), Box<dyn std::error::Error>> {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", db.display())).await?;
    let row = sqlx::query(
        "SELECT SUM(CASE WHEN status = 'delivered' THEN 1 ELSE 0 END) AS d, \
         SUM(CASE WHEN status <> 'delivered' THEN 1 ELSE 0 END) AS o FROM messages",
    )
    .fetch_one(&pool)
    .await?;
    let d: Option<i64> = row.try_get("d")?;
    let o: Option<i64> = row.try_get("o")?;
    pool.close().await;
    Ok((d.unwrap_or(0), o.unwrap_or(0)))
}
