//! `pushbot` command line: parse arguments, load settings, run. Nothing else lives here.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pushbot::app::Application;
use pushbot::config::Settings;

#[derive(Parser)]
#[command(
    name = "pushbot",
    version,
    about = "Self-hosted push gateway for WeCom"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service and the delivery worker.
    Serve {
        /// TOML config file (default: ./pushbot.toml if present). Every key can be
        /// overridden by PUSHBOT_<SECTION>__<KEY>, e.g. PUSHBOT_WECOM__SECRET.
        #[arg(long, short, env = "PUSHBOT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Exit 0 if the local service answers /healthz (for Docker's HEALTHCHECK: a scratch
    /// image has no curl).
    Healthcheck {
        #[arg(long, short, env = "PUSHBOT_CONFIG")]
        config: Option<PathBuf>,
        /// Check this URL instead of the one derived from server.listen.
        #[arg(long)]
        url: Option<String>,
    },
    /// Load and validate the configuration, print a summary (secrets redacted), exit.
    CheckConfig {
        #[arg(long, short, env = "PUSHBOT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check the set-up end to end (config, database, WeCom credentials and app, callback
    /// URL, SMTP) and say what to fix; exit 0 when nothing failed.
    Doctor {
        #[arg(long, short, env = "PUSHBOT_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Healthcheck { config, url } => healthcheck(config, url),
        Command::CheckConfig { config } => match Settings::load(config.as_deref()) {
            Ok(settings) => {
                // A closed stdout (`| head`) is not an error worth a panic.
                let mut out = std::io::stdout();
                let _ = writeln!(out, "configuration OK\n{settings:#?}");
                // The database is reported, not required: the configuration is valid even
                // while the database is down (`pushbot doctor` fails on that).
                let url = settings.storage.url.as_str();
                let reach = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt
                        .block_on(pushbot::store::Store::reachability(url))
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let engine = settings.storage.url.engine().as_str();
                let _ = match reach {
                    Ok(what) => writeln!(out, "storage: {engine}, {what}"),
                    Err(why) => writeln!(out, "storage: {engine}, {why}"),
                };
                ExitCode::SUCCESS
            }
            Err(err) => fail(&err),
        },
        Command::Doctor { config } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build();
            block_on(runtime, async {
                let mut out = std::io::stdout();
                if pushbot::doctor::run(config.as_deref(), &mut out).await {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            })
        }
    }
}

fn fail_with(message: &str) -> ExitCode {
    eprintln!("pushbot: {message}");
    ExitCode::FAILURE
}

/// Prints `err` with its causes on one line and exits with failure.
fn fail(err: &(dyn std::error::Error + 'static)) -> ExitCode {
    eprintln!("pushbot: {}", pushbot::error::chain(err));
    ExitCode::FAILURE
}

fn block_on(
    runtime: std::io::Result<tokio::runtime::Runtime>,
    task: impl std::future::Future<Output = ExitCode>,
) -> ExitCode {
    match runtime {
        Ok(rt) => rt.block_on(task),
        Err(err) => fail(&err),
    }
}

fn serve(config: Option<PathBuf>) -> ExitCode {
    let settings = match Settings::load(config.as_deref()) {
        Ok(s) => s,
        Err(err) => return fail(&err),
    };
    pushbot::telemetry::init(&settings.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    block_on(runtime, async {
        let app = match Application::build(settings).await {
            Ok(app) => app,
            Err(err) => return fail(&err),
        };
        match app.run_until_stopped(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&err),
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM (what `docker stop` sends).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}

fn healthcheck(config: Option<PathBuf>, url: Option<String>) -> ExitCode {
    let url = match url {
        Some(url) => url,
        // Only the listen address is needed, not the WeCom secrets.
        None => match Settings::load_listen(config.as_deref()) {
            // The service listens on all interfaces in a container; ask over loopback.
            Ok(listen) => format!("http://127.0.0.1:{}/healthz", listen.port()),
            Err(err) => return fail(&err),
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    block_on(runtime, async {
        let client = match pushbot::app::http_client(
            std::time::Duration::from_secs(3),
            pushbot::app::Egress::Direct,
        ) {
            Ok(c) => c,
            Err(err) => return fail(&err),
        };
        match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
            Ok(r) => fail_with(&format!("{url} answered {}", r.status())),
            Err(err) => fail_with(&format!(
                "{url}: {}",
                pushbot::error::chain(&err.without_url())
            )),
        }
    })
}
