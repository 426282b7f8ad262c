//! Load benchmark: drives `/send` with concurrent clients against a real pushbot (in this
//! process, own runtime, SQLite file in a temp dir) and a fast local stand-in for the WeCom
//! API, then reports accepted/s, delivered/s, latency percentiles and lost messages.
//!
//! ```text
//! cargo run --release --bin loadgen -- --clients 32 --messages 100000
//! ```
//!
//! Messages are spread round-robin over `--members` members (1,000 by default); each
//! member's token is obtained the way a person would: a signed, encrypted "token" callback,
//! as WeCom would send it. Every message carries a sequence number; the stand-in marks each
//! number it receives, so "lost" is exact, and the database is checked too.
//!
//! The generated config lifts both per-member limits to effectively unlimited — the API's
//! `server.send_rate` (300 per minute) and WeCom's `wecom.member_limits` (30 per minute):
//! the benchmark measures the accept and delivery paths, not the limiters. It also sets
//! `delivery.max_in_flight = 1024`, so that all 1,000 members' lanes can stay warm (a lane
//! worker keeps its lane for a moment after it runs empty, and reads nothing back from
//! the database for messages it is handed at commit).
//!
//! `--backlog N` first fills the database with N queued messages (spread over the members,
//! written directly, as if WeCom had been down for a long time), then measures how long
//! the service takes to answer `/healthz`, its resident memory while it drains, and the
//! drain rate:
//!
//! ```text
//! cargo run --release --bin loadgen -- --backlog 1000000 --messages 0
//! ```
//!
//! `--storage postgres://…` runs on PostgreSQL instead (in a schema of its own, created
//! for the run and dropped after it), and `--instances N` starts N pushbot instances on
//! the one database, each with its own port, writer and scheduler; the clients spread
//! their requests over them round-robin, as a load balancer would:
//!
//! ```text
//! cargo run --release --bin loadgen -- --storage postgres://postgres@127.0.0.1/test --instances 2
//! ```

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
    /// Members the messages are spread over (round-robin).
    #[arg(long, default_value_t = 1_000)]
    members: usize,
    /// Queued messages written to the database before the service starts.
    #[arg(long, default_value_t = 0)]
    backlog: usize,
    /// Database URL; default: a SQLite file in a temporary directory. A `postgres://` URL
    /// gets a schema of its own for the run.
    #[arg(long)]
    storage: Option<String>,
    /// pushbot instances sharing the database (PostgreSQL only for more than one).
    #[arg(long, default_value_t = 1)]
    instances: usize,
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
        seen: (0..args.backlog + args.messages)
            .map(|_| AtomicBool::new(false))
            .collect(),
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

    // 2. pushbot on its own runtime: SQLite in a temp dir, or a fresh PostgreSQL schema.
    let dir = std::env::temp_dir().join(format!("pushbot-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let instances = args.instances.max(1);
    let schema = format!("loadgen_{}", std::process::id());
    let url = match &args.storage {
        None => format!("sqlite://{}", dir.join("loadgen.db").display()),
        Some(base) if base.starts_with("postgres") => {
            let admin = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            admin.block_on(run_sql(base, &format!("CREATE SCHEMA {schema}")))?;
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}options[search_path]={schema}")
        }
        Some(other) => other.clone(),
    };
    if instances > 1 && !url.starts_with("postgres") {
        return Err("--instances above 1 needs --storage postgres://…".into());
    }
    println!(
        "storage:        {} × {instances} instance(s)",
        if url.starts_with("postgres") {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    let members = args.members.max(1);
    if args.backlog > 0 {
        let filled = Instant::now();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(fill_backlog(&url, args.backlog, members))?;
        println!(
            "backlog:        {} queued messages over {members} members written in {:.1} s",
            args.backlog,
            filled.elapsed().as_secs_f64()
        );
    }
    let settings = |instance: usize| {
        Settings::from_toml(&format!(
            r#"
            [server]
            listen = "127.0.0.1:0"
            public_url = "http://127.0.0.1"
            # one token sends everything: lift the per-member limit (see the module docs)
            send_rate = {{ count = 4000000000, per = "1s" }}
            [storage]
            url = "{url}"
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
            # every member's lane stays warm (see the module docs)
            max_in_flight = 1024
            instance_id = "loadgen-{instance}"
            [log]
            level = "warn"
            "#
        ))
    };
    pushbot::telemetry::init(&settings(0)?.log);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .enable_all()
        .build()?;
    let starting = Instant::now();
    let mut bases = Vec::new();
    let mut servers = Vec::new();
    let mut stops = Vec::new();
    for instance in 0..instances {
        let app = server_rt.block_on(Application::build(settings(instance)?))?;
        bases.push(format!("http://127.0.0.1:{}", app.port()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop_tx);
        servers.push(server_rt.spawn(app.run_until_stopped(async {
            let _ = stop_rx.await;
        })));
    }

    // 3. Clients on a third runtime.
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.backlog > 0 {
        client_rt.block_on(drain_backlog(&args, &bases[0], &received, starting))?;
    }
    let report = client_rt.block_on(drive(&args, &bases, &received, members))?;
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

    for stop in stops {
        let _ = stop.send(());
    }
    for server in servers {
        server_rt.block_on(server)??;
    }
    let (db_delivered, db_other) = server_rt.block_on(count_rows(&url))?;
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(base) = args
        .storage
        .as_deref()
        .filter(|b| b.starts_with("postgres"))
    {
        server_rt.block_on(run_sql(base, &format!("DROP SCHEMA {schema} CASCADE")))?;
    }
    println!("{report}");
    println!("database: {db_delivered} delivered, {db_other} not delivered");
    let lost = (report.accepted + args.backlog).saturating_sub(report.unique);
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
        if self.accepted == 0 && self.errors == 0 {
            // A backlog-only run (`--messages 0`): nothing to time.
            return write!(f, "live load:      none (--messages 0)");
        }
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

/// Writes `count` queued messages for `members` members straight into a fresh database
/// (schema from the service's own migrations), with their lanes: a backlog as a long
/// WeCom outage would leave it. Content carries the sequence number like live messages.
async fn fill_backlog(
    url: &str,
    count: usize,
    members: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    pushbot::store::Store::connect(url).await?.close().await;
    let pool = sqlx::AnyPool::connect(url).await?;
    let mut tx = pool.begin().await?;
    let now = pushbot::time::UnixMillis::now().as_millis();
    const ROWS: usize = 200;
    let mut seq = 0usize;
    while seq < count {
        let n = ROWS.min(count - seq);
        let mut sql = String::from(
            "INSERT INTO messages (id, userid, title, content, status, attempts, created_at, \
             updated_at, next_attempt_at, deadline_at, seq) VALUES ",
        );
        for i in 0..n {
            if i > 0 {
                sql.push(',');
            }
            let s = seq + i;
            // Ids sort like real UUIDv7 ids would (time order = sequence order).
            sql.push_str(&format!(
                "('00000000-0000-7000-8000-{s:012}','member{}','backlog','seq={s}','queued',0,\
                 {now},{now},{now},{deadline},{seq_no})",
                s % members,
                deadline = now + 24 * 3_600_000,
                seq_no = s + 1,
            ));
        }
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await?;
        seq += n;
    }
    sqlx::query(
        "INSERT INTO lanes (userid, due_at, owner, lease_until) \
         SELECT DISTINCT userid, 0, NULL, 0 FROM messages WHERE status = 'queued'",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    pool.close().await;
    Ok(())
}

/// Start-up time, memory while draining, and drain rate of a pre-filled backlog.
async fn drain_backlog(
    args: &Args,
    base: &str,
    received: &Arc<Received>,
    starting: Instant,
) -> Result<(), Box<dyn std::error::Error>> {
    let http = reqwest::Client::new();
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "start-up:       /healthz answered {:.0} ms after Application::build began",
        starting.elapsed().as_secs_f64() * 1000.0
    );
    let draining = Instant::now();
    let deadline = draining + Duration::from_secs(args.drain_timeout);
    let mut peak_kb = 0u64;
    while received.unique.load(Ordering::Relaxed) < args.backlog && Instant::now() < deadline {
        peak_kb = peak_kb.max(rss_kb());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = received.unique.load(Ordering::Relaxed);
    let secs = draining.elapsed().as_secs_f64();
    println!(
        "drain:          {drained} of {} delivered in {secs:.1} s = {:.0} msg/s; RSS at most {} MB while draining",
        args.backlog,
        drained as f64 / secs,
        peak_kb / 1024
    );
    Ok(())
}

/// Resident memory now, in KiB.
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn drive(
    args: &Args,
    bases: &[String],
    received: &Arc<Received>,
    members: usize,
) -> Result<Report, Box<dyn std::error::Error>> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    if args.messages == 0 {
        return Ok(Report {
            clients: args.clients,
            accepted: 0,
            errors: 0,
            send_secs: 0.0,
            deliver_secs: 0.0,
            unique: received.unique.load(Ordering::Relaxed),
            duplicates: received.duplicates.load(Ordering::Relaxed),
            latencies_us: Vec::new(),
        });
    }
    // One token per member, asked for concurrently (as many members would).
    let members = members.min(args.messages);
    let mut asking = Vec::new();
    for m in 0..members {
        let (http, base) = (http.clone(), bases[0].clone());
        asking.push(tokio::spawn(async move {
            obtain_token(&http, &base, &format!("member{m}"), m).await
        }));
    }
    let mut tokens = Vec::with_capacity(members);
    for t in asking {
        tokens.push(
            t.await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?,
        );
    }
    let tokens = Arc::new(tokens);
    let backlog = args.backlog;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let start_ns = received.start.elapsed().as_nanos();
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        // Clients spread over the instances, as behind a load balancer.
        let (http, next, tokens, url) = (
            http.clone(),
            Arc::clone(&next),
            Arc::clone(&tokens),
            format!("{}/send", bases[client % bases.len()]),
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
                let token = &tokens[seq % tokens.len()];
                let seq = backlog + seq;
                let t = Instant::now();
                let res = http
                    .post(&url)
                    .bearer_auth(token)
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
    while received.unique.load(Ordering::Relaxed) < backlog + accepted && Instant::now() < deadline
    {
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
        unique: received.unique.load(Ordering::Relaxed)
            - backlog.min(received.unique.load(Ordering::Relaxed)),
        duplicates: received.duplicates.load(Ordering::Relaxed),
        latencies_us,
    })
}

/// Asks the bot for `member`'s token exactly as WeCom would relay a "token" message.
async fn obtain_token(
    http: &reqwest::Client,
    base: &str,
    member: &str,
    msg_id: usize,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let crypto = WeComCrypto::new(CALLBACK_TOKEN, AES_KEY, CORP_ID)?;
    let inner = format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[{member}]]></FromUserName>\
         <CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[token]]></Content>\
         <MsgId>{}</MsgId><AgentID>1000002</AgentID></xml>",
        msg_id + 1
    );
    let encrypted = crypto.encrypt(&inner);
    let ts = pushbot::time::UnixMillis::now().as_secs();
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

async fn count_rows(url: &str) -> Result<(i64, i64), Box<dyn std::error::Error>> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await?;
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await }
    };
    let delivered = count("SELECT COUNT(*) FROM messages WHERE status = 'delivered'").await?;
    let other = count("SELECT COUNT(*) FROM messages WHERE status <> 'delivered'").await?;
    pool.close().await;
    Ok((delivered, other))
}

/// Runs one statement on `url` (creating and dropping the run's PostgreSQL schema).
async fn run_sql(url: &str, sql: &str) -> Result<(), Box<dyn std::error::Error>> {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await?;
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}
