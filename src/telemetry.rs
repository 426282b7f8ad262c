//! Logging set-up. Request logs carry method, path and status, never query strings (they
//! may hold push tokens) or bodies.
//!
//! **Logging can never take anything down.** A log destination that fails (a full disk
//! under `pushbot serve > pushbot.log`, a closed pipe, EPIPE) costs log lines and nothing
//! else: write errors are dropped here ([`Stderr`]) and tracing-subscriber's own report
//! of a failed write (an `eprintln!`, which panics when stderr fails) is switched off.
//! Nothing logs while holding a lock that delivery needs.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber; `RUST_LOG` overrides `log.level`. Safe to call twice.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: `docker logs` and log files get plain text.
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr)
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match settings.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // Already installed (tests, embedding): keep the first one.
    drop(result);
}

/// Standard error that never fails: a line that cannot be written is dropped. (The
/// process ignores SIGPIPE, Rust's default, so a closed pipe is an `EPIPE` error here.)
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Written whole or not at all, as far as anyone upstream can tell.
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    #[test]
    fn writes_report_success_whatever_happens_to_them() {
        let mut out = super::Stderr;
        assert_eq!(out.write(b"").ok(), Some(0));
        assert!(out.flush().is_ok());
    }
}
