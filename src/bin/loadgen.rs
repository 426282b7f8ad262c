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
//!
//! Each invocation with messages to send also measures, after the accept+deliver run(s)
//! (`--no-extras` leaves these out, as before they existed):
//!
//! - **accept-only**: the same run once more with delivery held back — the WeCom stand-in
//!   answers no `message/send` until the last client request has been answered (pushbot's
//!   `wecom.request_timeout` is raised for that run so that no held send times out); then
//!   it answers them all and the run is checked for lost messages like any other. The
//!   delivery workers still claim lanes and wait on their 64 held sends, but send nothing.
//! - **the durable-write bound of the disk**: a minimal queue in SQLite in the same temp
//!   directory — one table, one index, WAL, `synchronous=FULL`, 16 messages of 60 bytes per
//!   committed transaction, the previous group marked delivered in the same transaction,
//!   one thread, `--bound-secs` (3) seconds — as messages/s and its own WAL bytes/message
//!   (the WAL file's growth, no checkpoint during the bound);
//!   pushbot's SQLite accept+deliver rate is printed as a percentage of it.
//!
//! On SQLite each run also prints **pushbot's own WAL**: the frames its writer's commits
//! wrote during the run, as SQLite reports them after each commit (a WAL hook on the
//! writer's connection, `Application::build_measuring_wal`), as frames/commit, messages/commit and WAL
//! bytes per accepted message (WAL of deliveries included).
//!
//! `--compare` measures SQLite and PostgreSQL side by side: `--rounds` (3) rounds of one
//! SQLite run then one PostgreSQL run (`--storage postgres://…`, or
//! `postgres://postgres@127.0.0.1:5432/test`), then accept-only once per engine, then the
//! bound; it prints per round and as medians accepted req/s, p99, lost and duplicates, and
//! the PostgreSQL/SQLite ratio of accepted rates (per round and of the medians). The
//! SQLite runs always have one instance; `--instances` applies to PostgreSQL. Everything
//! ends with one summary block giving every figure and the command line:
//!
//! ```text
//! cargo run --release --bin loadgen -- --compare --messages 30000
//! ```
//!
//! `--group N` adds a group run after the others (issue 29): members 0…N−1 form one group,
//! made with `POST /groups` by member 0 and joined by the others with `POST /groups/join`
//! and the invite, as people would. First one message to the group is sent on the idle
//! server and timed until every member's copy has arrived at the stand-in; then
//! `--group-messages` (20) group messages go one after another while the clients send their
//! personal messages as in every run. It reports the group messages' accept latency, the
//! copies lost or repeated (each copy is counted per message and member), and the
//! personal sends' rate and p99 in that run, to set beside the runs without groups.
//! `--group-every MS` paces the group messages (one every MS ms) instead of sending each as
//! soon as the previous one was answered:
//!
//! ```text
//! cargo run --release --bin loadgen -- --messages 30000 --group 1000 --group-every 250
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
    /// Measure SQLite and PostgreSQL side by side, interleaved for `--rounds` rounds
    /// (PostgreSQL: `--storage postgres://…`, or postgres://postgres@127.0.0.1:5432/test).
    #[arg(long)]
    compare: bool,
    /// Rounds of `--compare` (each: one SQLite run, then one PostgreSQL run).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds the durable-write bound (a minimal SQLite queue) is measured for.
    #[arg(long, default_value_t = 3)]
    bound_secs: u64,
    /// Only the accept+deliver run(s): no accept-only run, no durable-write bound, no
    /// summary (the behaviour before these existed).
    #[arg(long)]
    no_extras: bool,
    /// After the other runs, a group run: members 0…N−1 form one group (made with
    /// `POST /groups` and joined with `POST /groups/join`, as members would), one message to
    /// it is timed on the idle server until every copy is delivered, then `--group-messages`
    /// group messages are sent one after another while the clients send their personal
    /// messages. 0: no group run.
    #[arg(long, default_value_t = 0)]
    group: usize,
    /// Group messages sent during the group run's personal load.
    #[arg(long, default_value_t = 20)]
    group_messages: usize,
    /// Milliseconds from the start of one group message to the start of the next during
    /// the personal load (a team's alerts come at a pace, not as a flood); 0: one after
    /// another, each as soon as the previous one was answered.
    #[arg(long, default_value_t = 0)]
    group_every: u64,
}

/// The stand-in's view of what arrived.
struct Received {
    seen: Vec<AtomicBool>,
    unique: AtomicUsize,
    duplicates: AtomicUsize,
    last_at_ns: AtomicU64,
    start: Instant,
    /// While `true` the stand-in answers no `message/send` (an accept-only run holds
    /// delivery back this way); set to `false` when the measurement ends.
    hold: tokio::sync::watch::Sender<bool>,
    /// Group run: which copies arrived, at `message × group_size + member` (member `memberN`
    /// is N); a copy's content carries `grp=message`.
    group_seen: Vec<AtomicBool>,
    group_size: usize,
    group_unique: AtomicUsize,
    group_duplicates: AtomicUsize,
}

/// PostgreSQL for `--compare` without `--storage`.
const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The figures of one run, for the summary.
struct Figures {
    engine: &'static str,
    instances: usize,
    accept_only: bool,
    rate: f64,
    p99_ms: f64,
    lost: usize,
    duplicates: usize,
    /// SQLite: what pushbot's writer wrote to the WAL during the run.
    wal: Option<WalFigures>,
    /// The group run's own figures (that run's personal sends are in the fields above).
    group: Option<GroupReport>,
}

/// pushbot's own WAL over one run, as SQLite reported it after each of the writer's
/// commits (`Store::write_stats`).
#[derive(Clone, Copy)]
struct WalFigures {
    frames: u64,
    frame_bytes: u64,
    commits: u64,
    messages: usize,
}

impl WalFigures {
    fn frames_per_commit(&self) -> f64 {
        self.frames as f64 / self.commits.max(1) as f64
    }

    fn messages_per_commit(&self) -> f64 {
        self.messages as f64 / self.commits.max(1) as f64
    }

    fn bytes_per_message(&self) -> f64 {
        (self.frames * self.frame_bytes) as f64 / self.messages.max(1) as f64
    }
}

impl std::fmt::Display for WalFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} frames of {} B in {} commits for {} messages: {:.1} frames/commit, \
             {:.1} messages/commit, {:.0} B/message",
            self.frames,
            self.frame_bytes,
            self.commits,
            self.messages,
            self.frames_per_commit(),
            self.messages_per_commit(),
            self.bytes_per_message()
        )
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    // The load clients' own reqwest needs a TLS provider even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    pushbot::telemetry::init(&Settings::from_toml(MINIMAL_CONFIG)?.log);
    let extras = args.messages > 0 && !args.no_extras;
    let mut runs: Vec<Figures> = Vec::new();
    if args.compare {
        let postgres = args
            .storage
            .clone()
            .filter(|s| s.starts_with("postgres"))
            .unwrap_or_else(|| DEFAULT_POSTGRES.to_owned());
        for round in 1..=args.rounds.max(1) {
            println!("== round {round}: SQLite ==");
            runs.push(run(&args, None, false, false)?);
            println!("== round {round}: PostgreSQL ==");
            runs.push(run(&args, Some(&postgres), false, false)?);
        }
        if extras {
            println!("== accept-only: SQLite ==");
            runs.push(run(&args, None, true, false)?);
            println!("== accept-only: PostgreSQL ==");
            runs.push(run(&args, Some(&postgres), true, false)?);
        }
    } else {
        runs.push(run(&args, args.storage.as_deref(), false, false)?);
        if extras {
            println!("== accept-only ==");
            runs.push(run(&args, args.storage.as_deref(), true, false)?);
        }
    }
    if args.group > 0 {
        println!("== group of {} ==", args.group);
        let storage = if args.compare {
            None
        } else {
            args.storage.as_deref()
        };
        runs.push(run(&args, storage, false, true)?);
    }
    let bound = if extras {
        println!("== durable-write bound ==");
        let b = durable_bound(Duration::from_secs(args.bound_secs))?;
        println!(
            "bound:          {:.0} msg/s, WAL {:.0} B/message (minimal queue in SQLite, WAL, synchronous=FULL, 16 per commit)",
            b.0, b.1
        );
        Some(b)
    } else {
        None
    };
    if extras || args.compare || args.group > 0 {
        summary(&command_line, &runs, bound);
    }
    let lost: usize = runs.iter().map(|f| f.lost).sum();
    if lost > 0 {
        return Err(format!("{lost} messages lost").into());
    }
    Ok(())
}

/// Just enough configuration for the log settings (the runs build their own).
const MINIMAL_CONFIG: &str = r#"
[server]
public_url = "http://127.0.0.1"
[wecom]
corp_id = "wx5823bf96d3bd56c7"
agent_id = 1000002
secret = "loadgen-secret"
callback_token = "QDG6eK"
encoding_aes_key = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
[log]
level = "warn"
"#;

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The one block to copy: every figure of the invocation and its command line.
fn summary(command_line: &str, runs: &[Figures], bound: Option<(f64, f64)>) {
    println!();
    println!("==================== summary ====================");
    println!("command: {command_line}");
    println!(
        "{:<6} {:<13} {:<14} {:>11} {:>9} {:>5} {:>5}",
        "run", "engine", "mode", "accepted/s", "p99 ms", "lost", "dups"
    );
    let mut sqlite_round = 0;
    let mut pg_round = 0;
    for f in runs.iter().filter(|f| f.group.is_none()) {
        let label = if f.accept_only {
            "-".to_owned()
        } else if f.engine == "SQLite" {
            sqlite_round += 1;
            sqlite_round.to_string()
        } else {
            pg_round += 1;
            pg_round.to_string()
        };
        println!(
            "{label:<6} {:<13} {:<14} {:>11.0} {:>9.2} {:>5} {:>5}",
            if f.instances > 1 {
                format!("{}×{}", f.engine, f.instances)
            } else {
                f.engine.to_owned()
            },
            if f.accept_only {
                "accept-only"
            } else {
                "accept+deliver"
            },
            f.rate,
            f.p99_ms,
            f.lost,
            f.duplicates
        );
    }
    let pick = |engine: &str, accept_only: bool| -> Vec<&Figures> {
        runs.iter()
            .filter(|f| f.engine == engine && f.accept_only == accept_only && f.group.is_none())
            .collect()
    };
    let med = |fs: &[&Figures], g: fn(&Figures) -> f64| median(fs.iter().map(|f| g(f)).collect());
    let sqlite = pick("SQLite", false);
    let pg = pick("PostgreSQL", false);
    for (name, fs) in [("SQLite", &sqlite), ("PostgreSQL", &pg)] {
        if fs.is_empty() {
            continue;
        }
        println!(
            "median {name} accept+deliver ({} runs): {:.0} req/s, p99 {:.2} ms, lost {}, duplicates {}",
            fs.len(),
            med(fs, |f| f.rate),
            med(fs, |f| f.p99_ms),
            fs.iter().map(|f| f.lost).sum::<usize>(),
            fs.iter().map(|f| f.duplicates).sum::<usize>(),
        );
        let wal: Vec<WalFigures> = fs.iter().filter_map(|f| f.wal).collect();
        if !wal.is_empty() {
            let m = |g: fn(&WalFigures) -> f64| median(wal.iter().map(g).collect());
            println!(
                "median {name} accept+deliver WAL (pushbot's writer, from SQLite): {:.0} B/message, \
                 {:.1} frames/commit, {:.1} messages/commit",
                m(WalFigures::bytes_per_message),
                m(WalFigures::frames_per_commit),
                m(WalFigures::messages_per_commit),
            );
        }
    }
    if !sqlite.is_empty() && !pg.is_empty() {
        let ratios: Vec<f64> = sqlite
            .iter()
            .zip(&pg)
            .map(|(s, p)| p.rate / s.rate)
            .collect();
        let per_round = ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "PostgreSQL/SQLite accepted rate: per round {per_round}; of the medians {:.2}",
            med(&pg, |f| f.rate) / med(&sqlite, |f| f.rate)
        );
    }
    for name in ["SQLite", "PostgreSQL"] {
        for f in pick(name, true) {
            println!(
                "accept-only {name}: {:.0} req/s, p99 {:.2} ms (delivery held back until the clients finished)",
                f.rate, f.p99_ms
            );
            if let Some(wal) = &f.wal {
                println!("accept-only {name} WAL: {wal}");
            }
        }
    }
    for f in runs {
        if let Some(g) = &f.group {
            g.summary(f);
        }
    }
    if let Some((bound, bound_wal)) = bound {
        println!(
            "durable-write bound (minimal SQLite queue, this disk): {bound:.0} msg/s, WAL {bound_wal:.0} B/msg"
        );
        if !sqlite.is_empty() {
            let rate = med(&sqlite, |f| f.rate);
            println!(
                "SQLite accept+deliver (median {rate:.0} req/s) = {:.1} % of the bound",
                100.0 * rate / bound
            );
        }
    }
    println!("=================================================");
}

/// One measured run: a fresh WeCom stand-in, fresh database (SQLite file in a temp dir, or
/// a schema of its own on `storage`), fresh pushbot instance(s), the clients, the checks.
/// `hold`: accept-only — the stand-in answers no send until the clients are done.
/// `group_run`: the group run (see `--group`).
fn run(
    args: &Args,
    storage: Option<&str>,
    hold: bool,
    group_run: bool,
) -> Result<Figures, Box<dyn std::error::Error>> {
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let run_no = RUN.fetch_add(1, Ordering::Relaxed);
    let received = Arc::new(Received {
        seen: (0..args.backlog + args.messages)
            .map(|_| AtomicBool::new(false))
            .collect(),
        unique: AtomicUsize::new(0),
        duplicates: AtomicUsize::new(0),
        last_at_ns: AtomicU64::new(0),
        start: Instant::now(),
        hold: tokio::sync::watch::Sender::new(hold),
        group_seen: (0..if group_run {
            (args.group_messages + 1) * args.group
        } else {
            0
        })
            .map(|_| AtomicBool::new(false))
            .collect(),
        group_size: if group_run { args.group } else { 0 },
        group_unique: AtomicUsize::new(0),
        group_duplicates: AtomicUsize::new(0),
    });

    // 1. WeCom stand-in on its own single-threaded runtime, stopped after the run.
    let mock_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mock_listener = mock_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let mock_addr = mock_listener.local_addr()?;
    let mock_app = Router::new()
        .route("/cgi-bin/gettoken", get(gettoken))
        .route("/cgi-bin/message/send", post(message_send))
        .with_state(Arc::clone(&received));
    let (stop_mock, mock_stopped) = tokio::sync::oneshot::channel::<()>();
    let mock_thread = std::thread::spawn(move || {
        mock_rt.block_on(async move {
            tokio::select! {
                _ = axum::serve(mock_listener, mock_app) => {}
                _ = mock_stopped => {}
            }
        });
    });

    // 2. pushbot on its own runtime: SQLite in a temp dir, or a fresh PostgreSQL schema.
    let dir = std::env::temp_dir().join(format!("pushbot-loadgen-{}-{run_no}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let instances = args.instances.max(1);
    let schema = format!("loadgen_{}_{run_no}", std::process::id());
    let url = match storage {
        None => format!("sqlite://{}", dir.join("loadgen.db").display()),
        Some(base) if base.starts_with("postgres") => {
            let admin = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            admin.block_on(run_sql(base, &format!("CREATE SCHEMA {schema}")))?;
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}options[search_path]={schema}")
        }
        Some(other) => other.to_owned(),
    };
    let postgres = url.starts_with("postgres");
    // --instances applies to PostgreSQL; in --compare the SQLite runs have one.
    let instances = if postgres { instances } else { 1 };
    if args.instances > 1 && !postgres && !args.compare {
        return Err("--instances above 1 needs --storage postgres://…".into());
    }
    let engine = if postgres { "PostgreSQL" } else { "SQLite" };
    println!(
        "storage:        {engine} × {instances} instance(s){}",
        if hold {
            " — accept-only: delivery held back until the clients finish"
        } else {
            ""
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
    // A held send must not time out (it would be retried or called unconfirmed).
    let request_timeout = if hold {
        "request_timeout = \"3600s\""
    } else {
        ""
    };
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
            {request_timeout}
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
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .enable_all()
        .build()?;
    let starting = Instant::now();
    let mut bases = Vec::new();
    let mut servers = Vec::new();
    let mut stops = Vec::new();
    let mut stores = Vec::new();
    for instance in 0..instances {
        // pushbot's own WAL per message (SQLite): frames counted after each commit.
        let app = server_rt.block_on(Application::build_measuring_wal(settings(instance)?))?;
        stores.push(app.store());
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
        client_rt.block_on(drain_backlog(args, &bases[0], &received, starting))?;
    }
    let stats = |stores: &[pushbot::store::Store]| -> Vec<pushbot::store::WriteStats> {
        stores
            .iter()
            .map(pushbot::store::Store::write_stats)
            .collect()
    };
    let before = stats(&stores);
    let report = client_rt.block_on(drive(args, &bases, &received, members, group_run))?;
    let after = stats(&stores);
    drop(stores);
    // One SQLite instance: its writer's WAL over the run (tokens included, a few frames).
    let wal = match (before.as_slice(), after.as_slice()) {
        ([b], [a]) if report.accepted > 0 => {
            match (b.wal_frames, a.wal_frames, a.wal_frame_bytes) {
                (Some(fb), Some(fa), Some(frame_bytes)) => Some(WalFigures {
                    frames: fa.saturating_sub(fb),
                    frame_bytes,
                    commits: a.commits.saturating_sub(b.commits),
                    messages: report.accepted,
                }),
                _ => None,
            }
        }
        _ => None,
    };
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
    if let Some(base) = storage.filter(|b| b.starts_with("postgres")) {
        server_rt.block_on(run_sql(base, &format!("DROP SCHEMA {schema} CASCADE")))?;
    }
    let _ = stop_mock.send(());
    // A panic in the WeCom stand-in would leave sends unanswered: the run is void, said so.
    mock_thread
        .join()
        .map_err(|_| "the WeCom stand-in panicked: this run's figures are void")?;
    println!("{report}");
    if let Some(wal) = &wal {
        println!("WAL (pushbot):  {wal}");
    }
    println!("database: {db_delivered} delivered, {db_other} not delivered");
    let lost = (report.accepted + args.backlog).saturating_sub(report.unique);
    if report.errors > 0 {
        return Err(format!("{lost} lost, {} failed requests", report.errors).into());
    }
    Ok(Figures {
        engine,
        instances,
        accept_only: hold,
        rate: if report.send_secs > 0.0 {
            report.accepted as f64 / report.send_secs
        } else {
            0.0
        },
        p99_ms: report.percentile(0.99),
        lost,
        duplicates: report.duplicates,
        wal,
        group: report.group,
    })
}

/// The durable-write bound of this disk: a minimal queue in SQLite (one table, one index,
/// WAL, `synchronous=FULL`), 16 messages of 60 bytes per committed transaction, the
/// previous group marked delivered in the same transaction; messages per second over
/// `secs`, on one thread, in a file in the same temp directory as the runs.
/// Answers messages per second and WAL bytes per message (from the WAL file's growth).
fn durable_bound(secs: Duration) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    const GROUP: i64 = 16;
    let dir = std::env::temp_dir().join(format!("pushbot-loadgen-{}-bound", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let conn = rusqlite::Connection::open(dir.join("bound.db"))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("bound: journal_mode is {mode}, not WAL").into());
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE queue (id INTEGER PRIMARY KEY, body TEXT NOT NULL, delivered INTEGER NOT NULL);
         CREATE INDEX queue_pending ON queue (delivered, id);",
    )?;
    let body = "x".repeat(60);
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    // No checkpoint during the run, so the WAL file holds every frame written: its size is
    // the WAL this queue wrote (a 32-byte header, then per frame a 24-byte header + a page).
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
    let wal_path = dir.join("bound.db-wal");
    let wal_at_start = std::fs::metadata(&wal_path).map_or(0, |m| m.len());
    let started = Instant::now();
    let mut next: i64 = 1;
    while started.elapsed() < secs {
        let tx = conn.unchecked_transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO queue (id, body, delivered) VALUES (?1, ?2, 0)")?;
            for id in next..next + GROUP {
                insert.execute(rusqlite::params![id, body])?;
            }
            tx.prepare_cached(
                "UPDATE queue SET delivered = 1 WHERE delivered = 0 AND id >= ?1 AND id < ?2",
            )?
            .execute(rusqlite::params![next - GROUP, next])?;
        }
        tx.commit()?;
        next += GROUP;
    }
    let rate = (next - 1) as f64 / started.elapsed().as_secs_f64();
    let wal_bytes = std::fs::metadata(&wal_path)
        .map_or(0, |m| m.len())
        .saturating_sub(wal_at_start.max(32));
    let frames = wal_bytes / u64::try_from(page_size + 24).unwrap_or(u64::MAX);
    let wal_per_message = frames as f64 * (page_size + 24) as f64 / (next - 1) as f64;
    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((rate, wal_per_message))
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
    group: Option<GroupReport>,
}

impl Report {
    /// A latency percentile in milliseconds.
    fn percentile(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies_us, p)
    }
}

/// Percentile `p` of sorted latencies in microseconds, in milliseconds (0 for none).
fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[i.min(sorted_us.len() - 1)] as f64 / 1000.0
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |p: f64| self.percentile(p);
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
    group_run: bool,
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
            group: None,
        });
    }
    // One token per member, asked for concurrently (as many members would).
    let group_size = if group_run { args.group } else { 0 };
    let members = members.min(args.messages).max(group_size);
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
    // The group run: the group is made and joined, and one message to it timed on the idle
    // server, before the personal load starts.
    let group = if group_run {
        Some(GroupRun::start(&http, &bases[0], &tokens[..group_size], received, args).await?)
    } else {
        None
    };
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
                let (good, micros) = timed_send(&http, &url, token, &format!("seq={seq}")).await;
                latencies.push(micros);
                if good {
                    ok += 1;
                } else {
                    errors += 1;
                }
            }
            (ok, errors, latencies)
        }));
    }
    // Group messages one after another, alongside the clients' personal ones.
    let group_sender = group.as_ref().map(|g| {
        let (http, url, token, count) = (
            http.clone(),
            format!("{}/send", bases[0]),
            g.token.clone(),
            args.group_messages,
        );
        let every = Duration::from_millis(args.group_every);
        tokio::spawn(
            async move { send_group_messages(&http, &url, &token, 1..=count, every).await },
        )
    });
    let (mut accepted, mut errors, mut latencies_us) = (0, 0, Vec::new());
    for t in tasks {
        let (ok, err, lat) = t.await?;
        accepted += ok;
        errors += err;
        latencies_us.extend(lat);
    }
    let send_secs = started.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    // Accept-only: the measurement is over; let the held deliveries go.
    received.hold.send_replace(false);

    let deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    while received.unique.load(Ordering::Relaxed) < backlog + accepted && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_ns = u128::from(received.last_at_ns.load(Ordering::Relaxed));
    let deliver_secs = (last_ns.saturating_sub(start_ns)) as f64 / 1e9;
    let group = match (group, group_sender) {
        (Some(g), Some(sender)) => {
            let (sent, failed, latencies) = sender.await?;
            Some(g.finish(received, sent, failed, latencies, deadline).await)
        }
        _ => None,
    };
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
        group,
    })
}

/// The group run's group: made by member 0, joined by the others, and one message to it
/// delivered to every member on the idle server.
struct GroupRun {
    token: String,
    size: usize,
    /// The first message: accepted in this long, and delivered to every member this long
    /// after it was accepted.
    probe_accept_ms: f64,
    probe_fanout_secs: f64,
}

/// What the group run measured, for the summary.
#[derive(Clone)]
struct GroupReport {
    size: usize,
    probe_accept_ms: f64,
    probe_fanout_secs: f64,
    /// Group messages sent during the personal load (the probe not counted), refused ones.
    sent: usize,
    failed: usize,
    latencies_us: Vec<u64>,
    /// Copies (probe included) that arrived, that should have, and repeated ones.
    delivered: usize,
    expected: usize,
    duplicates: usize,
}

impl GroupRun {
    async fn start(
        http: &reqwest::Client,
        base: &str,
        tokens: &[String],
        received: &Arc<Received>,
        args: &Args,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let Some(owner) = tokens.first() else {
            return Err("--group needs at least one member".into());
        };
        let made: Value = http
            .post(format!("{base}/groups"))
            .bearer_auth(owner)
            .json(&json!({ "name": "loadgen" }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let (Some(token), Some(invite)) = (made["token"].as_str(), made["invite"].as_str()) else {
            return Err(format!("POST /groups answered without token and invite: {made}").into());
        };
        let mut joining = Vec::new();
        for member in tokens.iter().skip(1) {
            let (http, url, member, invite) = (
                http.clone(),
                format!("{base}/groups/join"),
                member.clone(),
                invite.to_owned(),
            );
            joining.push(tokio::spawn(async move {
                http.post(url)
                    .bearer_auth(member)
                    .json(&json!({ "invite": invite }))
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map(|_| ())
            }));
        }
        for joined in joining {
            joined.await??;
        }
        // The probe: message 0, on the idle server, timed until every copy is in.
        let started = Instant::now();
        let (sent, _, latencies) =
            send_group_messages(http, &format!("{base}/send"), token, 0..=0, Duration::ZERO).await;
        if sent != 1 {
            return Err("the group run's first group message was refused".into());
        }
        let size = tokens.len();
        let deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
        while received.group_unique.load(Ordering::Relaxed) < size && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let accept = latencies.first().copied().unwrap_or(0) as f64 / 1000.0;
        let fanout = started.elapsed().as_secs_f64() - accept / 1000.0;
        println!(
            "group:          {size} members; one message accepted in {accept:.2} ms, \
             delivered to {} of them {fanout:.2} s after",
            received.group_unique.load(Ordering::Relaxed)
        );
        Ok(Self {
            token: token.to_owned(),
            size,
            probe_accept_ms: accept,
            probe_fanout_secs: fanout,
        })
    }

    /// Waits (until `deadline`) for every copy of the group messages, then reports.
    async fn finish(
        self,
        received: &Received,
        sent: usize,
        failed: usize,
        mut latencies_us: Vec<u64>,
        deadline: Instant,
    ) -> GroupReport {
        let expected = (sent + 1) * self.size;
        while received.group_unique.load(Ordering::Relaxed) < expected && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        latencies_us.sort_unstable();
        let report = GroupReport {
            size: self.size,
            probe_accept_ms: self.probe_accept_ms,
            probe_fanout_secs: self.probe_fanout_secs,
            sent,
            failed,
            latencies_us,
            delivered: received.group_unique.load(Ordering::Relaxed),
            expected,
            duplicates: received.group_duplicates.load(Ordering::Relaxed),
        };
        println!(
            "group /send:    {} messages to {} members during the personal load ({} refused): \
             p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; copies delivered {} of {}, {} duplicates",
            report.sent,
            report.size,
            report.failed,
            report.percentile(0.5),
            report.percentile(0.99),
            report.percentile(1.0),
            report.delivered,
            report.expected,
            report.duplicates
        );
        report
    }
}

impl GroupReport {
    fn percentile(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies_us, p)
    }

    /// Its lines of the summary; `run` is the group run (its personal sends).
    fn summary(&self, run: &Figures) {
        println!(
            "group of {} ({}): one message accepted in {:.2} ms, every copy delivered {:.2} s after",
            self.size, run.engine, self.probe_accept_ms, self.probe_fanout_secs
        );
        println!(
            "group of {} ({}): {} group messages during the personal load: accept p50 {:.2} ms, \
             p99 {:.2} ms, max {:.2} ms, {} refused; copies lost {}, duplicates {}",
            self.size,
            run.engine,
            self.sent,
            self.percentile(0.5),
            self.percentile(0.99),
            self.percentile(1.0),
            self.failed,
            self.expected.saturating_sub(self.delivered),
            self.duplicates
        );
        println!(
            "personal /send with that group traffic ({}): {:.0} req/s, p99 {:.2} ms (compare \
             the accept+deliver runs above)",
            run.engine, run.rate, run.p99_ms
        );
    }
}

/// Sends the group messages numbered `range` with the group token, one after another;
/// answers how many were accepted and refused, and each one's latency.
async fn send_group_messages(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    range: std::ops::RangeInclusive<usize>,
    every: Duration,
) -> (usize, usize, Vec<u64>) {
    let (mut sent, mut failed, mut latencies) = (0, 0, Vec::new());
    let start = tokio::time::Instant::now();
    for (i, k) in range.enumerate() {
        // Paced from the start, so a slow answer does not push the next ones back.
        let at = u32::try_from(i).map_or(start, |i| start + every * i);
        tokio::time::sleep_until(at).await;
        let (good, micros) = timed_send(http, url, token, &format!("grp={k}")).await;
        latencies.push(micros);
        if good {
            sent += 1;
        } else {
            failed += 1;
        }
    }
    (sent, failed, latencies)
}

/// One `POST /send` of `content` with `token`: whether it was accepted (and its answer read),
/// and how long it took in microseconds.
async fn timed_send(http: &reqwest::Client, url: &str, token: &str, content: &str) -> (bool, u64) {
    let t = Instant::now();
    let res = http
        .post(url)
        .bearer_auth(token)
        .json(&json!({ "title": "load", "content": content }))
        .send()
        .await;
    let good = match res {
        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
        Err(_) => false,
    };
    (
        good,
        u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX),
    )
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
    // Accept-only: answer nothing until the clients are done.
    let mut hold = received.hold.subscribe();
    let _ = hold.wait_for(|held| !*held).await;
    // A group message's copy: counted per (message, member).
    if let Some(k) = body["text"]["content"]
        .as_str()
        .and_then(|c| c.rsplit_once("grp="))
        .and_then(|(_, k)| k.trim().parse::<usize>().ok())
    {
        let members = body["touser"].as_str().unwrap_or("").split('|');
        for m in members.filter_map(|u| u.strip_prefix("member")?.parse::<usize>().ok()) {
            let slot = (m < received.group_size)
                .then(|| received.group_seen.get(k * received.group_size + m))
                .flatten();
            if let Some(flag) = slot {
                if flag.swap(true, Ordering::Relaxed) {
                    received.group_duplicates.fetch_add(1, Ordering::Relaxed);
                } else {
                    received.group_unique.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        return Json(json!({ "errcode": 0, "errmsg": "ok", "msgid": "x" }));
    }
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

/// Delivered and other rows, and (SQLite) the page size.
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
