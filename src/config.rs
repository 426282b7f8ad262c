//! Settings: one TOML file, every key overridable by `PUSHBOT_<SECTION>__<KEY>`.
//!
//! Precedence is defaults < file < environment. Secrets are held in
//! [`SecretString`] so that `{:?}` of the settings never prints them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use url::Url;

/// Default config file looked up in the working directory when neither
/// `--config` nor `PUSHBOT_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "pushbot.toml";

/// WeCom's API, unless `wecom.api_base` says otherwise (tests, egress proxies).
pub const DEFAULT_API_BASE: &str = "https://qyapi.weixin.qq.com";

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    #[serde(default)]
    pub storage: StorageSettings,
    pub wecom: WeComSettings,
    #[serde(default)]
    pub delivery: DeliverySettings,
    #[serde(default)]
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    /// Address to listen on, e.g. `0.0.0.0:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The URL users reach this service at; used in the curl examples the bot sends.
    pub public_url: Url,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StorageSettings {
    #[serde(default = "default_storage_url")]
    pub url: String,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            url: default_storage_url(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct WeComSettings {
    pub corp_id: String,
    pub agent_id: i64,
    pub secret: SecretString,
    pub callback_token: SecretString,
    pub encoding_aes_key: SecretString,
    /// Defaults to [`DEFAULT_API_BASE`] (set as a config default, so it is parsed like
    /// any user value).
    pub api_base: Url,
    /// Timeout of one call to the WeCom API.
    #[serde(default = "default_request_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Callbacks whose signed timestamp is further than this from our clock are refused,
    /// so a captured callback cannot be replayed once its de-duplication key is forgotten.
    /// `"0s"` turns the check off.
    #[serde(default = "default_callback_max_age", deserialize_with = "duration")]
    pub callback_max_age: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeliverySettings {
    /// How long transient failures are retried before a message is marked failed.
    #[serde(default = "default_retry_window", deserialize_with = "duration")]
    pub retry_window: Duration,
    #[serde(default = "default_backoff_initial", deserialize_with = "duration")]
    pub backoff_initial: Duration,
    #[serde(default = "default_backoff_max", deserialize_with = "duration")]
    pub backoff_max: Duration,
    /// Delivery attempts in flight at once (across all members).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How often due `queued` messages that no delivery task is working on are
    /// rescheduled: a safety net (normally there are none).
    #[serde(default = "default_sweep_interval", deserialize_with = "duration")]
    pub sweep_interval: Duration,
    /// At shutdown, how long attempts in flight may still run; then they are cut off and
    /// their messages handed back to the queue.
    #[serde(default = "default_shutdown_grace", deserialize_with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            retry_window: default_retry_window(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            concurrency: default_concurrency(),
            sweep_interval: default_sweep_interval(),
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// A tracing filter such as `info` or `pushbot=debug,info`; `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_storage_url() -> String {
    "sqlite://pushbot.db".to_owned()
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_callback_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_retry_window() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_backoff_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_concurrency() -> usize {
    64
}
fn default_sweep_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_log_level() -> String {
    "info".to_owned()
}

/// Durations are written the human way: `"90s"`, `"15m"`, `"2h"`, `"250ms"`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {s:?} ({e}); write it like \"90s\", \"15m\" or \"2h\""
        ))
    })
}

/// A start-up configuration problem, phrased as one line that names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} not found")]
    FileNotFound(PathBuf),
    #[error("configuration error: {0}")]
    Load(String),
    #[error("invalid setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Settings {
    /// Loads defaults < `path` (or `pushbot.toml` if present) < `PUSHBOT_*` environment.
    ///
    /// An explicitly named file must exist; the implicit `pushbot.toml` is optional so a
    /// container can be configured from the environment alone.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        match path {
            Some(p) => {
                if !p.is_file() {
                    return Err(ConfigError::FileNotFound(p.to_path_buf()));
                }
                builder =
                    builder.add_source(config::File::from(p).format(config::FileFormat::Toml));
            }
            None => {
                builder = builder.add_source(
                    config::File::with_name(DEFAULT_CONFIG_FILE)
                        .format(config::FileFormat::Toml)
                        .required(false),
                );
            }
        }
        let env = config::Environment::with_prefix("PUSHBOT")
            .prefix_separator("_")
            .separator("__")
            // `PUSHBOT_CONFIG` names the file; it is not a setting.
            .source(Some(
                std::env::vars()
                    .filter(|(k, _)| k != "PUSHBOT_CONFIG")
                    .collect(),
            ));
        Self::from_builder(builder.add_source(env))
    }

    /// Parses settings from TOML text alone (no environment); used by tests and tools.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_builder(
            config::Config::builder()
                .add_source(config::File::from_str(text, config::FileFormat::Toml)),
        )
    }

    fn from_builder(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Self, ConfigError> {
        let settings: Settings = builder
            .set_default("wecom.api_base", DEFAULT_API_BASE)
            .and_then(|b| b.build())
            .and_then(config::Config::try_deserialize)
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what serde cannot: shapes of WeCom credentials and sane delivery timings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            key,
            message: message.to_owned(),
        };
        if self.wecom.corp_id.trim().is_empty() {
            return Err(invalid("wecom.corp_id", "must not be empty"));
        }
        if self.wecom.agent_id <= 0 {
            return Err(invalid(
                "wecom.agent_id",
                "must be the app's AgentId, a positive number",
            ));
        }
        if self.wecom.secret.expose_secret().trim().is_empty() {
            return Err(invalid("wecom.secret", "must not be empty"));
        }
        let token = self.wecom.callback_token.expose_secret();
        if token.is_empty() || token.len() > 32 || !token.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(invalid(
                "wecom.callback_token",
                "must be the callback Token from the WeCom console: 1 to 32 letters or digits",
            ));
        }
        let key = self.wecom.encoding_aes_key.expose_secret();
        if crate::wecom::crypto::WeComCrypto::new(token, key, &self.wecom.corp_id).is_err() {
            return Err(invalid(
                "wecom.encoding_aes_key",
                "must be the 43-character EncodingAESKey from the WeCom console",
            ));
        }
        if !matches!(self.wecom.api_base.scheme(), "http" | "https") {
            return Err(invalid("wecom.api_base", "must be an http(s) URL"));
        }
        if !matches!(self.server.public_url.scheme(), "http" | "https") {
            return Err(invalid(
                "server.public_url",
                "must be an http(s) URL such as https://push.example.com",
            ));
        }
        if !self.storage.url.starts_with("sqlite:") {
            return Err(invalid(
                "storage.url",
                "only sqlite:// URLs are supported in this version (e.g. sqlite://pushbot.db)",
            ));
        }
        let d = &self.delivery;
        if d.backoff_initial.is_zero() {
            return Err(invalid(
                "delivery.backoff_initial",
                "must be greater than 0",
            ));
        }
        if d.backoff_max < d.backoff_initial {
            return Err(invalid(
                "delivery.backoff_max",
                "must not be smaller than delivery.backoff_initial",
            ));
        }
        if d.concurrency == 0 {
            return Err(invalid("delivery.concurrency", "must be at least 1"));
        }
        if self.wecom.request_timeout.is_zero() {
            return Err(invalid("wecom.request_timeout", "must be greater than 0"));
        }
        Ok(())
    }

    /// `public_url` without a trailing slash, for building links.
    pub fn public_base(&self) -> String {
        self.server
            .public_url
            .as_str()
            .trim_end_matches('/')
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [server]
        public_url = "https://push.example.com"
        [wecom]
        corp_id = "wx5823bf96d3bd56c7"
        agent_id = 1000002
        secret = "s3cr3t"
        callback_token = "QDG6eK"
        encoding_aes_key = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
    "#;

    #[test]
    fn defaults_apply() {
        let s = Settings::from_toml(MINIMAL).unwrap();
        assert_eq!(s.server.listen.port(), 8080);
        assert_eq!(s.storage.url, "sqlite://pushbot.db");
        assert_eq!(s.wecom.api_base.as_str(), "https://qyapi.weixin.qq.com/");
        assert_eq!(s.delivery.retry_window, Duration::from_secs(900));
        assert_eq!(s.delivery.backoff_initial, Duration::from_secs(1));
        assert_eq!(s.delivery.backoff_max, Duration::from_secs(300));
        assert_eq!(s.public_base(), "https://push.example.com");
    }

    #[test]
    fn durations_parse_human_forms() {
        let text = format!(
            "{MINIMAL}\n[delivery]\nretry_window = \"2h\"\nbackoff_initial = \"90s\"\nbackoff_max = \"15m\"\n"
        );
        let s = Settings::from_toml(&text).unwrap();
        assert_eq!(s.delivery.retry_window, Duration::from_secs(7200));
        assert_eq!(s.delivery.backoff_initial, Duration::from_secs(90));
        assert_eq!(s.delivery.backoff_max, Duration::from_secs(900));
    }

    #[test]
    fn bad_duration_names_the_problem() {
        let text = format!("{MINIMAL}\n[delivery]\nretry_window = \"soon\"\n");
        let err = Settings::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("retry_window"), "{err}");
        assert!(err.contains("soon"), "{err}");
    }

    #[test]
    fn missing_key_is_named() {
        let text = MINIMAL.replace("corp_id = \"wx5823bf96d3bd56c7\"", "");
        let err = Settings::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("corp_id"), "{err}");
    }

    #[test]
    fn bad_aes_key_is_named_without_echoing_it() {
        let text = MINIMAL.replace("jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "tooshort");
        let err = Settings::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("wecom.encoding_aes_key"), "{err}");
        assert!(!err.contains("tooshort"), "{err}");
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let s = Settings::from_toml(MINIMAL).unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("s3cr3t"));
        assert!(!dbg.contains("jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"));
        assert!(!dbg.contains("QDG6eK"));
    }

    #[test]
    fn backoff_max_below_initial_is_rejected() {
        let text =
            format!("{MINIMAL}\n[delivery]\nbackoff_initial = \"10s\"\nbackoff_max = \"1s\"\n");
        let err = Settings::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("delivery.backoff_max"), "{err}");
    }
}
