//! Test harness: starts the gateway (in-process via `Application`, or the real binary)
//! against a [`MockWeCom`], and talks to it the way WeCom and push scripts do.

use std::net::TcpListener as StdTcpListener;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
/// Settings are typed: tests set durations.
pub use std::time::Duration;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pushbot::app::Application;
pub use pushbot::config::{
    DestinationSettings, DestinationsSettings, EmailSettings, HttpUrl, Members, SendRate, Settings,
    SmsSettings, StorageUrl,
};
pub use pushbot::delivery::limits::RateWindow;
use pushbot::domain::{Route, UserId};
pub use pushbot::wecom::credentials::{AgentId, CorpSecret};
use pushbot::wecom::crypto::WeComCrypto;
pub use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions as _, Connection as _};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::mock_sms::{
    ALIYUN_CODE_TEMPLATE, ALIYUN_KEY_ID, ALIYUN_KEY_SECRET, ALIYUN_TEMPLATE, SIGN_NAME,
    TENCENT_CODE_TEMPLATE, TENCENT_SDK_APP_ID, TENCENT_SECRET_ID, TENCENT_SECRET_KEY,
    TENCENT_TEMPLATE, TWILIO_FROM, TWILIO_SID, TWILIO_TOKEN,
};
pub use crate::mock_sms::{MockSms, SmsProvider};
pub use crate::mock_wecom::{
    AGENT_ID, CORP_ID, GetTokenFailure, MockWeCom, SECRET, SendReply, Sent, SentCard,
};

pub const CALLBACK_TOKEN: &str = "QDG6eK";
pub const ENCODING_AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
pub const PUBLIC_URL: &str = "https://push.example.com";

/// Generous upper bound for anything that should happen "soon"; tests normally finish in
/// milliseconds and only a broken gateway waits this long.
pub const WAIT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------------------------
// configuration
// ------------------------------------------------------------------------------------------

/// The test suite's own defaults, as a config file gives them: every other key is the
/// server's default, so a key added to [`Settings`] needs nothing here. Quick retries, a
/// long sweep (so that a test of any other guarantee cannot pass thanks to it), member
/// limits no test meets unless it sets its own, no digests. `server.listen`,
/// `storage.url` and `wecom.api_base` are placeholders: [`spawn_app_with`] and [`render`]
/// set them.
fn test_defaults() -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "{PUBLIC_URL}"

[wecom]
corp_id = "{CORP_ID}"
agent_id = {AGENT_ID}
secret = "{SECRET}"
callback_token = "{CALLBACK_TOKEN}"
encoding_aes_key = "{ENCODING_AES_KEY}"
api_base = "http://127.0.0.1:9"
request_timeout = "2s"
callback_max_age = "24h"
member_limits = [{{ count = 100000, per = "1s" }}]

[delivery]
retry_window = "2s"
backoff_initial = "10ms"
backoff_max = "100ms"
concurrency = 16
sweep_interval = "60s"
shutdown_grace = "2s"
digest_after = "off"
max_in_flight = 64
lease = "10s"
probe_max = "1s"

[log]
level = "warn"
"#
    )
}

/// The settings every test starts from ([`test_defaults`]); a test changes the typed
/// fields it is about (`c.delivery.retry_window = Duration::from_secs(5)`).
pub fn test_settings() -> Settings {
    Settings::from_toml(&test_defaults()).expect("the test defaults load")
}

/// [`test_settings`] with whatever `tweak` changes.
pub fn settings_with(tweak: impl FnOnce(&mut Settings)) -> Settings {
    let mut settings = test_settings();
    tweak(&mut settings);
    settings
}

/// The config file for `settings` listening on `listen`, storing at `store_url` (see
/// [`TestDb::url`]) and calling WeCom at `api_base`. It holds the secrets: a test's own file.
pub fn render(settings: &Settings, listen: &str, store_url: &str, api_base: &str) -> String {
    let mut settings = settings.clone();
    settings.server.listen = listen.parse().expect("a listen address");
    settings.storage.url = storage_url(store_url);
    settings.wecom.api_base = http_url(api_base);
    toml::to_string(&settings).expect("settings serialize")
}

pub fn http_url(url: &str) -> HttpUrl {
    HttpUrl::try_from(url.to_owned()).unwrap_or_else(|e| panic!("{e}"))
}

pub fn storage_url(url: &str) -> StorageUrl {
    StorageUrl::try_from(url.to_owned()).unwrap_or_else(|e| panic!("{e}"))
}

pub fn secret(value: &str) -> SecretString {
    SecretString::from(value.to_owned())
}

/// `delivery.fallback` from `wecom,email`-style text.
pub fn route(channels: &str) -> Route {
    Route::parse(channels).unwrap_or_else(|e| panic!("{e}"))
}

/// `wecom.member_limits` from (count, per) windows.
pub fn member_limits(windows: &[(u32, Duration)]) -> Vec<RateWindow> {
    windows
        .iter()
        .map(|&(count, per)| RateWindow { count, per })
        .collect()
}

/// A section's settings from its TOML (the server's defaults for the rest).
fn section<T: serde::de::DeserializeOwned>(toml_text: &str) -> T {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}\n{toml_text}"))
}

/// A TOML basic string holding `s` (JSON's escapes are TOML's).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// `[email]`: plain SMTP without TLS or AUTH to a test sink on `127.0.0.1:{port}`.
pub fn local_email(port: u16) -> EmailSettings {
    section(&format!(
        r#"host = "127.0.0.1"
port = {port}
security = "none"
from = "pushbot <bot@example.com>"
timeout = "2s""#
    ))
}

/// `[sms]` that makes `provider` of `mock` work: the mock's credentials, sign name and
/// templates, its listener as `api_base`; every other key is the server's default.
pub fn mock_sms(mock: &MockSms, provider: SmsProvider) -> SmsSettings {
    let own = match provider {
        SmsProvider::Aliyun => format!(
            r#"provider = "aliyun"
access_key_id = "{ALIYUN_KEY_ID}"
access_key_secret = "{ALIYUN_KEY_SECRET}"
sign_name = "{SIGN_NAME}"
template = "{ALIYUN_TEMPLATE}"
code_template = "{ALIYUN_CODE_TEMPLATE}""#
        ),
        SmsProvider::Tencent => format!(
            r#"provider = "tencent"
secret_id = "{TENCENT_SECRET_ID}"
secret_key = "{TENCENT_SECRET_KEY}"
sdk_app_id = "{TENCENT_SDK_APP_ID}"
sign_name = "{SIGN_NAME}"
template = "{TENCENT_TEMPLATE}"
code_template = "{TENCENT_CODE_TEMPLATE}""#
        ),
        SmsProvider::Twilio => format!(
            r#"provider = "twilio"
account_sid = "{TWILIO_SID}"
auth_token = "{TWILIO_TOKEN}"
from = "{TWILIO_FROM}""#
        ),
    };
    section(&format!(
        "{own}\napi_base = {}",
        toml_str(mock.base_url(provider))
    ))
}

/// The provider's secret in `[sms]`: `access_key_secret` (Aliyun), `secret_key` (Tencent
/// Cloud) or `auth_token` (Twilio). `None`: not in the file (give it in the environment).
pub fn sms_secret(sms: &mut SmsSettings) -> &mut Option<SecretString> {
    match sms.provider {
        pushbot::config::SmsProvider::Aliyun => &mut sms.access_key_secret,
        pushbot::config::SmsProvider::Tencent => &mut sms.secret_key,
        pushbot::config::SmsProvider::Twilio => &mut sms.auth_token,
    }
}

/// The key [`sms_secret`] is written under.
pub fn sms_secret_key(sms: &SmsSettings) -> &'static str {
    match sms.provider {
        pushbot::config::SmsProvider::Aliyun => "access_key_secret",
        pushbot::config::SmsProvider::Tencent => "secret_key",
        pushbot::config::SmsProvider::Twilio => "auth_token",
    }
}

/// `[destinations]` with every base at `mock`'s listener of that kind (Lark too, at the
/// Feishu listener), no bot token and no shared destination yet.
pub fn destinations_at(mock: &crate::mock_destinations::MockDestinations) -> DestinationsSettings {
    use crate::mock_destinations::DestKind;
    section(&format!(
        "wecom_robot_base = {}\ndingtalk_base = {}\nfeishu_base = {}\nlark_base = {}\ntelegram_base = {}",
        toml_str(mock.base_url(DestKind::WeComRobot)),
        toml_str(mock.base_url(DestKind::DingTalk)),
        toml_str(mock.base_url(DestKind::Feishu)),
        toml_str(mock.base_url(DestKind::Feishu)),
        toml_str(mock.base_url(DestKind::Telegram)),
    ))
}

/// `[destinations.NAME]` of `kind` (as written: `wecom-robot`, `dingtalk`, `feishu`,
/// `telegram`, `webhook`) with nothing else set.
pub fn destination(kind: &str) -> DestinationSettings {
    section(&format!("kind = {}", toml_str(kind)))
}

/// A robot or webhook at `url`, signing with `secret` if given.
pub fn destination_at(kind: &str, url: &str, signing: Option<&str>) -> DestinationSettings {
    let mut d = destination(kind);
    d.url = Some(secret(url));
    d.secret = signing.map(secret);
    d
}

/// A Telegram chat through the server's bot.
pub fn telegram_destination(chat_id: &str) -> DestinationSettings {
    let mut d = destination("telegram");
    d.chat_id = Some(chat_id.to_owned());
    d
}

/// `members = [...]`: only these may send to a destination.
pub fn only(members: &[&str]) -> Members {
    Members::Only(members.iter().map(|m| UserId::new(m)).collect())
}

// ------------------------------------------------------------------------------------------
// the storage engine under test
// ------------------------------------------------------------------------------------------

/// The engine the suite stores into, chosen by `PUSHBOT_TEST_DB`: `sqlite` (the default) or
/// `postgres` (a PostgreSQL server at `PUSHBOT_TEST_PG_URL`, [`PG_URL_DEFAULT`] by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    /// As `/healthz` and `check-config` name it.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }
}

/// The PostgreSQL database test schemas are created in when `PUSHBOT_TEST_PG_URL` is unset.
pub const PG_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The engine chosen for this run; panics on a value that names none.
pub fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    *ENGINE.get_or_init(|| match std::env::var("PUSHBOT_TEST_DB") {
        Err(std::env::VarError::NotPresent) => Engine::Sqlite,
        Ok(v) if v.is_empty() || v == "sqlite" => Engine::Sqlite,
        Ok(v) if v == "postgres" => Engine::Postgres,
        Ok(other) => {
            panic!("PUSHBOT_TEST_DB={other:?}: expected `sqlite` (the default) or `postgres`")
        }
        Err(e) => panic!("PUSHBOT_TEST_DB: {e}; expected `sqlite` (the default) or `postgres`"),
    })
}

/// Ends the test early on PostgreSQL, saying why on one line: for the few tests about the
/// SQLite file itself (its disk, its path, its journal), not about behaviour.
macro_rules! sqlite_only {
    ($reason:expr) => {
        if $crate::helpers::engine() == $crate::helpers::Engine::Postgres {
            eprintln!("skipped on postgres: {}", $reason);
            return;
        }
    };
}
pub(crate) use sqlite_only;

/// `PUSHBOT_TEST_PG_URL`, or [`PG_URL_DEFAULT`]: the database test schemas are created in.
pub fn pg_base_url() -> String {
    std::env::var("PUSHBOT_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| PG_URL_DEFAULT.to_owned())
}

/// A URL fit for a message: any password replaced.
fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// One app's database: a SQLite file, or (PostgreSQL) a fresh schema of its own in the test
/// database, dropped with this value.
pub struct TestDb {
    url: String,
    sqlite_path: Option<PathBuf>,
    /// (server URL, schema) on PostgreSQL.
    pg_schema: Option<(String, String)>,
}

impl TestDb {
    /// A new, empty database for the engine under test; a SQLite file is `dir/pushbot.db`.
    pub fn new(dir: &Path) -> Self {
        match engine() {
            Engine::Sqlite => Self::sqlite(&dir.join("pushbot.db")),
            Engine::Postgres => Self::postgres(),
        }
    }

    /// The SQLite file at `path` (whatever the engine under test).
    pub fn sqlite(path: &Path) -> Self {
        Self {
            url: sqlite_url(path),
            sqlite_path: Some(path.to_owned()),
            pg_schema: None,
        }
    }

    /// A fresh schema in the PostgreSQL test database (whatever the engine under test);
    /// panics, naming the server, when it cannot be reached: a test that needs PostgreSQL
    /// never passes without it.
    pub fn postgres() -> Self {
        let base = pg_base_url();
        let created = on_own_runtime({
            let base = base.clone();
            async move { create_schema(&base).await }
        });
        let schema = match created {
            Ok(Ok(schema)) => schema,
            Ok(Err(e)) => panic!(
                "PUSHBOT_TEST_DB=postgres, but no test schema could be created in the \
                 PostgreSQL database at {} (PUSHBOT_TEST_PG_URL, by default {PG_URL_DEFAULT}): \
                 {e}. Start PostgreSQL there, point PUSHBOT_TEST_PG_URL at one, run the tests \
                 through .ci/run (it starts a throwaway PostgreSQL when none answers), or run \
                 with PUSHBOT_TEST_DB=sqlite.",
                without_password(&base)
            ),
            Err(e) => panic!("PUSHBOT_TEST_DB=postgres: cannot run the set-up thread: {e}"),
        };
        let sep = if base.contains('?') { '&' } else { '?' };
        Self {
            url: format!("{base}{sep}options[search_path]={schema}"),
            sqlite_path: None,
            pg_schema: Some((base, schema)),
        }
    }

    /// The `storage.url` that selects this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The file, when it is a SQLite database.
    pub fn sqlite_path(&self) -> Option<&Path> {
        self.sqlite_path.as_deref()
    }

    /// Like [`Self::url`] for a PostgreSQL schema, but reaching the server at `addr` (a
    /// TCP front) instead.
    pub fn pg_url_via(&self, addr: std::net::SocketAddr) -> String {
        let (base, schema) = self.pg_schema.as_ref().expect("a PostgreSQL test database");
        let mut url = url::Url::parse(base).expect("PostgreSQL URL");
        url.set_host(Some(&addr.ip().to_string()))
            .expect("set the host");
        url.set_port(Some(addr.port())).expect("set the port");
        let sep = if url.as_str().contains('?') { '&' } else { '?' };
        format!("{url}{sep}options[search_path]={schema}")
    }

    /// Where the PostgreSQL server listens, as `http://IP:PORT` (what `TcpFront` takes).
    pub fn pg_server_as_http(&self) -> String {
        use std::net::ToSocketAddrs as _;
        let (base, _) = self.pg_schema.as_ref().expect("a PostgreSQL test database");
        let options = PgConnectOptions::from_str(base).expect("PostgreSQL URL");
        let addr = (options.get_host(), options.get_port())
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| {
                panic!(
                    "{}: the server must be reachable over TCP for this test",
                    without_password(base)
                )
            });
        format!("http://{addr}")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((base, schema)) = self.pg_schema.take() else {
            return;
        };
        let dropped = on_own_runtime({
            let schema = schema.clone();
            async move { drop_schema(&base, &schema).await }
        });
        // Never panic here (this may run while a failed test unwinds); a leftover schema
        // only takes room.
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("test schema {schema} was not dropped: {e}"),
            Err(e) => eprintln!("test schema {schema} was not dropped: {e}"),
        }
    }
}

/// `storage.url` for the SQLite file at `path`.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Runs `f` to completion on a thread of its own with its own runtime, so that sync code
/// (config set-up, `Drop`) can use the database from inside the test's runtime.
fn on_own_runtime<T: Send + 'static>(
    f: impl Future<Output = T> + Send + 'static,
) -> std::io::Result<T> {
    std::thread::Builder::new()
        .name("test-db".to_owned())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(f))
        })?
        .join()
        .map_err(|_| std::io::Error::other("the database thread panicked"))?
}

async fn pg_connect(base: &str) -> Result<PgConnection, String> {
    let options = PgConnectOptions::from_str(base)
        .map_err(|e| e.to_string())?
        .disable_statement_logging();
    match tokio::time::timeout(WAIT, options.connect()).await {
        Ok(conn) => conn.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no connection within {WAIT:?}")),
    }
}

/// Creates a schema with a new random name; returns the name.
async fn create_schema(base: &str) -> Result<String, String> {
    let mut conn = pg_connect(base).await?;
    loop {
        let schema = format!("pb_{:08x}", rand::random::<u32>());
        let created = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut conn)
            .await;
        match created {
            Ok(_) => {
                let _ = conn.close().await;
                return Ok(schema);
            }
            // Taken (by another test or another run): draw again.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P06") => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Drops `schema` and all in it. An in-process app may still hold locks in it (its tasks
/// wait on the very runtime this drop blocks): its sessions are ended first.
async fn drop_schema(base: &str, schema: &str) -> Result<(), String> {
    let mut conn = pg_connect(base).await?;
    let deadline = Instant::now() + WAIT;
    sqlx::query("SET lock_timeout = '1s'")
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM (SELECT DISTINCT l.pid FROM pg_locks l \
             JOIN pg_class c ON c.oid = l.relation \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()) AS holders",
        )
        .bind(schema)
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
        let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&mut conn)
        .await;
        match dropped {
            Ok(_) => {
                let _ = conn.close().await;
                return Ok(());
            }
            // lock_not_available: someone took a lock meanwhile; end them too.
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("55P03") && Instant::now() < deadline =>
            {
                continue;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn init() {
    // reqwest is built without a default TLS provider; the tests speak plain HTTP, but a
    // client still needs one to be constructed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn http_client() -> reqwest::Client {
    init();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("test HTTP client")
}

pub fn crypto() -> WeComCrypto {
    WeComCrypto::new(CALLBACK_TOKEN, ENCODING_AES_KEY, CORP_ID).expect("test crypto")
}

// ------------------------------------------------------------------------------------------
// in-process application
// ------------------------------------------------------------------------------------------

struct Running {
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), String>>,
    supervisor: pushbot::supervise::Supervisor,
}

pub struct TestApp {
    pub api: Api,
    pub port: u16,
    pub mock: MockWeCom,
    /// Holds the SQLite file (and nothing else on PostgreSQL).
    pub _dir: TempDir,
    /// The app's database (kept across [`Self::restart`]).
    pub db: TestDb,
    /// What the app was started with (and [`Self::restart`] starts it with).
    pub config: Settings,
    running: Option<Running>,
}

impl Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The gateway in-process on [`test_settings`], listening on a free port, storing in a
/// database of its own, calling the mock WeCom (unless `tweak` points `wecom.api_base`
/// elsewhere), with whatever else `tweak` changes.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    init();
    let mock = MockWeCom::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDb::new(dir.path());
    let mut config = test_settings();
    config.server.listen = "127.0.0.1:0".parse().expect("a listen address");
    config.storage.url = storage_url(db.url());
    config.wecom.api_base = http_url(&mock.base_url);
    tweak(&mut config);
    let (port, running) = start_app(&config).await;
    TestApp {
        api: Api::new(format!("http://127.0.0.1:{port}")),
        port,
        mock,
        _dir: dir,
        db,
        config,
        running: Some(running),
    }
}

async fn start_app(config: &Settings) -> (u16, Running) {
    let app = Application::build(config.clone())
        .await
        .expect("application builds");
    let port = app.port();
    let supervisor = app.supervisor();
    let (shutdown, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run_until_stopped(async move {
            let _ = rx.await;
        })
        .await
        .map_err(|e| format!("{e:?}"))
    });
    (
        port,
        Running {
            shutdown: Some(shutdown),
            handle,
            supervisor,
        },
    )
}

impl TestApp {
    /// The `storage.url` the app was given: where [`crate::db::connect`] looks.
    pub fn store_url(&self) -> &str {
        self.db.url()
    }

    /// Asks the application to shut down (like SIGTERM) without waiting for it to finish;
    /// [`Self::stop`] then waits.
    pub fn begin_stop(&mut self) {
        if let Some(shutdown) = self.running.as_mut().and_then(|r| r.shutdown.take()) {
            let _ = shutdown.send(());
        }
    }

    /// Graceful shutdown; returns once `run_until_stopped` has returned.
    pub async fn stop(&mut self) {
        self.begin_stop();
        let Some(running) = self.running.take() else {
            return;
        };
        let result = tokio::time::timeout(WAIT, running.handle)
            .await
            .expect("application stops within the timeout after shutdown")
            .expect("application task did not panic");
        result.expect("run_until_stopped returns Ok after a graceful shutdown");
    }

    /// The running application's fault hooks ([`pushbot::supervise::Faults`]).
    pub fn faults(&self) -> &pushbot::supervise::Faults {
        self.running
            .as_ref()
            .expect("the application is running")
            .supervisor
            .faults()
    }

    /// Waits (at most `timeout`) for `run_until_stopped` to return by itself, as after a
    /// background task failed for good; answers what it returned, `None` on time-out.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<Result<(), String>> {
        let running = self.running.as_mut()?;
        let result = tokio::time::timeout(timeout, &mut running.handle)
            .await
            .ok()?;
        self.running = None;
        Some(result.unwrap_or_else(|e| Err(format!("the application task failed: {e}"))))
    }

    /// Stops this instance and starts a fresh `Application` on the same database and mock.
    pub async fn restart(&mut self) {
        self.stop().await;
        let (port, running) = start_app(&self.config).await;
        self.port = port;
        self.api.address = format!("http://127.0.0.1:{port}");
        self.running = Some(running);
    }
}

// ------------------------------------------------------------------------------------------
// the real binary
// ------------------------------------------------------------------------------------------

/// A `pushbot serve` child process; killed (SIGKILL) when dropped.
pub struct BinApp {
    pub api: Api,
    pub child: Child,
    pub log_path: PathBuf,
}

impl Deref for BinApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for BinApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (the binary cannot report the one it bound).
pub fn free_port() -> u16 {
    let l = StdTcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
    l.local_addr().expect("local addr").port()
}

pub fn binary_command(config_path: &Path, envs: &[(&str, &str)]) -> Command {
    let mut cmd = pushbot_command(envs);
    cmd.arg("serve").arg("--config").arg(config_path);
    cmd
}

/// The `pushbot` binary with no arguments yet and only the given environment.
pub fn pushbot_command(envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pushbot"));
    // Only what the test chooses: no PUSHBOT_* from the developer's shell.
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("RUST_LOG", "warn");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// Starts the binary and waits until `/healthz` answers 200.
pub async fn spawn_binary(config_path: &Path, port: u16, envs: &[(&str, &str)]) -> BinApp {
    spawn_command(binary_command(config_path, envs), config_path, port).await
}

/// Starts `cmd` (a `pushbot serve` on `port`, however started), its output in a log file
/// beside `config_path`, and waits until `/healthz` answers 200.
pub async fn spawn_command(mut cmd: Command, config_path: &Path, port: u16) -> BinApp {
    init();
    let log_path = config_path.with_extension(format!("{port}.log"));
    let log = std::fs::File::create(&log_path).expect("create log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .spawn()
        .expect("start pushbot binary");
    let mut bin = BinApp {
        api: Api::new(format!("http://127.0.0.1:{port}")),
        child,
        log_path,
    };
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = bin.child.try_wait().expect("poll child") {
            panic!(
                "pushbot exited early with {status}; output:\n{}",
                std::fs::read_to_string(&bin.log_path).unwrap_or_default()
            );
        }
        if let Ok(resp) = bin.api.healthz().await
            && resp.status() == 200
        {
            return bin;
        }
        if Instant::now() > deadline {
            let _ = bin.child.kill();
            panic!(
                "pushbot did not become healthy within {WAIT:?}; output:\n{}",
                std::fs::read_to_string(&bin.log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl BinApp {
    pub fn kill9(&mut self) {
        // std's Child::kill sends SIGKILL on Unix: no shutdown hook runs.
        self.child.kill().expect("SIGKILL pushbot");
        self.child.wait().expect("reap pushbot");
    }
}

/// Runs `cmd` to completion with its output captured, without blocking the runtime (an
/// in-process mock may have to answer it meanwhile).
pub async fn run_captured(mut cmd: Command, timeout: Duration) -> std::process::Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pushbot");
    wait_for_exit(child, timeout).await
}

/// Waits (polling) for a child process to exit, returning its output.
pub async fn wait_for_exit(mut child: Child, timeout: Duration) -> std::process::Output {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("poll child").is_some() {
            return child.wait_with_output().expect("collect child output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect child output");
            panic!(
                "process did not exit within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------------------------------------
// WeCom-side messages
// ------------------------------------------------------------------------------------------

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique() -> u64 {
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    base * 1000 + COUNTER.fetch_add(1, Ordering::Relaxed) % 1000
}

/// A fresh MsgId, distinct across the test run.
pub fn next_msg_id() -> u64 {
    7_000_000_000_000_000 + unique() % 1_000_000_000_000_000
}

/// A fresh CreateTime (seconds), so events from one member are distinct.
pub fn next_create_time() -> i64 {
    1_700_000_000 + (COUNTER.fetch_add(1, Ordering::Relaxed) as i64)
}

pub fn unix_now() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .to_string()
}

pub fn nonce() -> String {
    format!("{:010}", rand::random::<u32>())
}

/// A unique member id per call, so tests never share state by accident.
pub fn userid(prefix: &str) -> String {
    format!("{prefix}{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

pub fn text_message(from: &str, content: &str, msg_id: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>\
         <FromUserName><![CDATA[{from}]]></FromUserName>\
         <CreateTime>1700000000</CreateTime>\
         <MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{content}]]></Content>\
         <MsgId>{msg_id}</MsgId>\
         <AgentID>{AGENT_ID}</AgentID></xml>"
    )
}

pub fn event_message(from: &str, event: &str, key: Option<&str>, create_time: i64) -> String {
    let key = key
        .map(|k| format!("<EventKey><![CDATA[{k}]]></EventKey>"))
        .unwrap_or_default();
    format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>\
         <FromUserName><![CDATA[{from}]]></FromUserName>\
         <CreateTime>{create_time}</CreateTime>\
         <MsgType><![CDATA[event]]></MsgType>\
         <AgentID>{AGENT_ID}</AgentID>\
         <Event><![CDATA[{event}]]></Event>{key}</xml>"
    )
}

pub fn envelope_body(encrypt: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>\
         <AgentID><![CDATA[{AGENT_ID}]]></AgentID>\
         <Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    )
}

/// An encrypted, signed callback as WeCom would POST it; fields are public so tests can
/// forge any part.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub msg_signature: String,
    pub timestamp: String,
    pub nonce: String,
    pub encrypt: String,
    pub body: String,
}

impl Sealed {
    pub fn query(&self) -> Vec<(&'static str, String)> {
        vec![
            ("msg_signature", self.msg_signature.clone()),
            ("timestamp", self.timestamp.clone()),
            ("nonce", self.nonce.clone()),
        ]
    }
}

/// Encrypts `inner` with `crypto` and signs it, as WeCom does.
pub fn seal_with(crypto: &WeComCrypto, inner: &str) -> Sealed {
    seal_at(crypto, inner, unix_now())
}

/// Like [`seal_with`], signed with the given timestamp (unix seconds).
pub fn seal_at(crypto: &WeComCrypto, inner: &str, timestamp: String) -> Sealed {
    let encrypt = crypto.encrypt(inner);
    let nonce = nonce();
    let msg_signature = crypto.signature(&timestamp, &nonce, &encrypt);
    Sealed {
        msg_signature,
        timestamp,
        nonce,
        body: envelope_body(&encrypt),
        encrypt,
    }
}

/// A decrypted passive reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub to_user: String,
    pub from_user: String,
    pub msg_type: String,
    pub content: String,
}

#[derive(Deserialize)]
struct ReplyEnvelopeXml {
    #[serde(rename = "Encrypt")]
    encrypt: String,
    #[serde(rename = "MsgSignature")]
    msg_signature: String,
    #[serde(rename = "TimeStamp")]
    timestamp: String,
    #[serde(rename = "Nonce")]
    nonce: String,
}

#[derive(Deserialize)]
struct ReplyXml {
    #[serde(rename = "ToUserName")]
    to_user: String,
    #[serde(rename = "FromUserName", default)]
    from_user: String,
    #[serde(rename = "MsgType")]
    msg_type: String,
    #[serde(rename = "Content", default)]
    content: String,
}

/// Checks and opens a callback response body the way WeCom does: `None` for an empty body
/// (no reply), else the verified, decrypted text reply. Panics on anything else.
pub fn open_reply(body: &str) -> Option<Reply> {
    if body.is_empty() {
        return None;
    }
    let env: ReplyEnvelopeXml = quick_xml::de::from_str(body)
        .unwrap_or_else(|e| panic!("reply is not an encrypted envelope ({e}): {body}"));
    let crypto = crypto();
    assert_eq!(
        env.msg_signature,
        crypto.signature(&env.timestamp, &env.nonce, &env.encrypt),
        "reply MsgSignature must sign TimeStamp, Nonce and Encrypt: {body}"
    );
    let inner = crypto
        .decrypt(&env.encrypt)
        .unwrap_or_else(|e| panic!("reply does not decrypt ({e:?}): {body}"));
    let reply: ReplyXml = quick_xml::de::from_str(&inner)
        .unwrap_or_else(|e| panic!("decrypted reply is not a message ({e}): {inner}"));
    Some(Reply {
        to_user: reply.to_user,
        from_user: reply.from_user,
        msg_type: reply.msg_type,
        content: reply.content,
    })
}

/// The signed parts of an encrypted passive reply, as anyone who sees the reply on the
/// wire has them.
#[derive(Debug, Clone)]
pub struct CapturedReply {
    pub encrypt: String,
    pub msg_signature: String,
    pub timestamp: String,
    pub nonce: String,
}

impl CapturedReply {
    /// Takes the parts from a callback response body (an encrypted reply envelope).
    pub fn from_body(body: &str) -> Self {
        let env: ReplyEnvelopeXml = quick_xml::de::from_str(body)
            .unwrap_or_else(|e| panic!("reply is not an encrypted envelope ({e}): {body}"));
        Self {
            encrypt: env.encrypt,
            msg_signature: env.msg_signature,
            timestamp: env.timestamp,
            nonce: env.nonce,
        }
    }

    /// The reply's own signature and parts as a URL check's query.
    pub fn as_url_check(&self) -> Vec<(&'static str, String)> {
        vec![
            ("msg_signature", self.msg_signature.clone()),
            ("timestamp", self.timestamp.clone()),
            ("nonce", self.nonce.clone()),
            ("echostr", self.encrypt.clone()),
        ]
    }

    /// The reply posted back to the gateway as if it were a callback from WeCom.
    pub fn as_callback(&self) -> Sealed {
        Sealed {
            msg_signature: self.msg_signature.clone(),
            timestamp: self.timestamp.clone(),
            nonce: self.nonce.clone(),
            encrypt: self.encrypt.clone(),
            body: envelope_body(&self.encrypt),
        }
    }
}

/// Line 2 of a token reply, checked to look like a push token.
pub fn token_from_reply(content: &str) -> String {
    let token = content
        .split('\n')
        .nth(1)
        .unwrap_or_else(|| panic!("token reply has no second line: {content:?}"))
        .to_owned();
    assert!(
        is_token(&token),
        "line 2 of the reply must be exactly the token (32 URL-safe characters), got {token:?} in {content:?}"
    );
    token
}

pub fn is_token(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

// ------------------------------------------------------------------------------------------
// one helper per endpoint
// ------------------------------------------------------------------------------------------

pub struct Api {
    pub address: String,
    pub http: reqwest::Client,
    pub crypto: WeComCrypto,
}

impl Api {
    /// `GET /metrics` (the app must have `server.metrics` on), as text.
    pub async fn metrics_text(&self) -> String {
        let resp = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "/metrics");
        resp.text().await.unwrap()
    }

    pub fn new(address: String) -> Self {
        Self {
            address,
            http: http_client(),
            crypto: crypto(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn healthz(&self) -> reqwest::Result<reqwest::Response> {
        self.http.get(self.url("/healthz")).send().await
    }

    // ---- WeCom callback ----

    pub async fn verify_url_raw(&self, query: &[(&str, String)]) -> reqwest::Response {
        self.http
            .get(self.url("/wecom/callback"))
            .query(query)
            .send()
            .await
            .expect("GET /wecom/callback")
    }

    /// The URL check WeCom makes when the callback URL is saved: signed, encrypted echostr.
    pub async fn verify_url(&self, echo_plain: &str) -> reqwest::Response {
        let echostr = self.crypto.encrypt(echo_plain);
        let timestamp = unix_now();
        let nonce = nonce();
        let sig = self.crypto.signature(&timestamp, &nonce, &echostr);
        self.verify_url_raw(&[
            ("msg_signature", sig),
            ("timestamp", timestamp),
            ("nonce", nonce),
            ("echostr", echostr),
        ])
        .await
    }

    pub async fn post_callback_raw(
        &self,
        query: &[(&str, String)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.http
            .post(self.url("/wecom/callback"))
            .query(query)
            .header("content-type", "text/xml")
            .body(body)
            .send()
            .await
            .expect("POST /wecom/callback")
    }

    pub async fn post_sealed(&self, sealed: &Sealed) -> reqwest::Response {
        self.post_callback_raw(&sealed.query(), sealed.body.clone())
            .await
    }

    /// POSTs `inner` properly encrypted and signed; expects 200 and opens the reply.
    pub async fn callback(&self, inner: &str) -> Option<Reply> {
        let resp = self.post_sealed(&seal_with(&self.crypto, inner)).await;
        let status = resp.status();
        let body = resp.text().await.expect("callback body");
        assert_eq!(status, 200, "callback must be accepted: {body}");
        let reply = open_reply(&body);
        if let Some(r) = &reply {
            assert_eq!(r.msg_type, "text", "passive replies are text: {r:?}");
        }
        reply
    }

    /// Member `userid` types `text`; returns the bot's reply text (None = no reply).
    pub async fn user_says(&self, userid: &str, text: &str) -> Option<String> {
        self.user_says_with_id(userid, text, next_msg_id()).await
    }

    pub async fn user_says_with_id(&self, userid: &str, text: &str, msg_id: u64) -> Option<String> {
        let reply = self.callback(&text_message(userid, text, msg_id)).await?;
        assert_eq!(reply.to_user, userid, "reply goes back to the member");
        Some(reply.content)
    }

    pub async fn event(&self, userid: &str, event: &str, key: Option<&str>) -> Option<String> {
        self.event_at(userid, event, key, next_create_time()).await
    }

    pub async fn event_at(
        &self,
        userid: &str,
        event: &str,
        key: Option<&str>,
        create_time: i64,
    ) -> Option<String> {
        let reply = self
            .callback(&event_message(userid, event, key, create_time))
            .await?;
        assert_eq!(reply.to_user, userid, "reply goes back to the member");
        Some(reply.content)
    }

    /// Asks the bot for `userid`'s push token.
    pub async fn get_token(&self, userid: &str) -> String {
        let reply = self
            .user_says(userid, "token")
            .await
            .expect("the bot answers `token`");
        token_from_reply(&reply)
    }

    /// Rotates `userid`'s push token, returning the new one.
    pub async fn rotate(&self, userid: &str) -> String {
        let reply = self
            .user_says(userid, "rotate")
            .await
            .expect("the bot answers `rotate`");
        token_from_reply(&reply)
    }

    // ---- /send ----

    pub async fn send_get(&self, query: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .get(self.url("/send"))
            .query(query)
            .send()
            .await
            .expect("GET /send")
    }

    pub async fn send_json(&self, token: Option<&str>, body: &Value) -> reqwest::Response {
        let mut req = self.http.post(self.url("/send")).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("POST /send (JSON)")
    }

    pub async fn send_form(&self, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(self.url("/send"))
            .form(form)
            .send()
            .await
            .expect("POST /send (form)")
    }

    /// Sends with GET and returns the message id, asserting the documented success shape.
    pub async fn send_ok(&self, token: &str, title: &str, content: &str) -> String {
        let resp = self
            .send_get(&[("token", token), ("title", title), ("content", content)])
            .await;
        accepted_id(resp).await
    }

    // ---- /messages/{id} ----

    pub async fn message(&self, id: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.url(&format!("/messages/{id}")));
        if let Some(t) = token {
            req = req.query(&[("token", t)]);
        }
        req.send().await.expect("GET /messages/{id}")
    }

    /// `GET /messages` with the given query (token included by the caller).
    pub async fn messages(&self, query: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .get(self.url("/messages"))
            .query(query)
            .send()
            .await
            .expect("GET /messages")
    }

    pub async fn message_json(&self, id: &str, token: &str) -> Value {
        let resp = self.message(id, Some(token)).await;
        let status = resp.status();
        let body: Value = resp.json().await.expect("message status is JSON");
        assert_eq!(status, 200, "GET /messages/{id}: {body}");
        body
    }

    /// Polls `/messages/{id}` until it reports `status`; panics with the last state on
    /// timeout, or when it settles otherwise (while it is scheduled or queued it waits).
    pub async fn wait_for_status(
        &self,
        id: &str,
        token: &str,
        status: &str,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let body = self.message_json(id, token).await;
            if body["status"] == status {
                return body;
            }
            if body["status"] != "queued" && body["status"] != "scheduled" {
                panic!(
                    "message {id} settled as {} while waiting for {status:?}: {body}",
                    body["status"]
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "message {id} did not reach status {status:?} within {timeout:?}; last: {body}"
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Asserts a `/send` response is the documented 200 and returns the message id.
pub async fn accepted_id(resp: reqwest::Response) -> String {
    let status = resp.status();
    let text = resp.text().await.expect("send body");
    assert_eq!(status, 200, "send must be accepted: {text}");
    let body: Value = serde_json::from_str(&text).expect("send answers JSON");
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(body["status"], "queued", "{body}");
    let id = body["id"].as_str().expect("id is a string");
    assert!(!id.is_empty(), "{body}");
    id.to_owned()
}

/// Asserts a JSON error response with the given HTTP status and error code.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    let got = resp.status();
    let text = resp.text().await.expect("error body");
    assert_eq!(
        got, status,
        "expected HTTP {status} ({code}), got {got}: {text}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error has a message: {body}"
    );
    body
}

/// A config file for the real binary in a temp dir, on a free port, with a database of its
/// own (every binary started on this config shares it).
pub struct BinSetup {
    pub _dir: TempDir,
    pub db: TestDb,
    pub port: u16,
    pub config_path: PathBuf,
}

impl BinSetup {
    /// The config's `storage.url`: where [`crate::db::connect`] looks.
    pub fn store_url(&self) -> &str {
        self.db.url()
    }
}

pub fn bin_setup(config: &Settings, api_base: &str) -> BinSetup {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let db = TestDb::new(dir.path());
    let toml = render(config, &format!("127.0.0.1:{port}"), db.url(), api_base);
    let config_path = dir.path().join("pushbot.toml");
    std::fs::write(&config_path, toml).expect("write config");
    BinSetup {
        _dir: dir,
        db,
        port,
        config_path,
    }
}

/// Waits until `cond` holds, re-checking whenever `changed` ticks; `false` on timeout.
pub async fn wait_until_changed<S>(
    changed: &tokio::sync::watch::Sender<u64>,
    timeout: Duration,
    state: impl Fn() -> S,
    cond: impl Fn(&S) -> bool,
) -> bool {
    let mut rx = changed.subscribe();
    let check = async {
        loop {
            if cond(&state()) {
                return;
            }
            if rx.changed().await.is_err() {
                // The sender is borrowed by the caller; this cannot happen meanwhile.
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::time::timeout(timeout, check).await.is_ok()
}

/// The harness's own promises about test databases.
mod self_test {
    use super::*;
    use crate::db;

    /// Whether the PostgreSQL test database has a schema called `schema`.
    async fn schema_exists(schema: &str) -> bool {
        let mut conn = db::connect(&pg_base_url()).await;
        let found: Option<String> =
            sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname = $1")
                .bind(schema)
                .fetch_optional(&mut conn)
                .await
                .expect("look up the schema");
        db::close(conn).await;
        found.is_some()
    }

    /// Each app gets a database of its own; on PostgreSQL a schema, gone with the app even
    /// while a connection of that app's runtime holds locks in it.
    #[tokio::test]
    async fn each_app_gets_its_own_database_and_it_goes_with_it() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (TestDb::new(dir_a.path()), TestDb::new(dir_b.path()));
        assert_ne!(a.url(), b.url());
        let Some((_, schema)) = a.pg_schema.clone() else {
            assert!(a.sqlite_path().is_some_and(|p| p.starts_with(dir_a.path())));
            return;
        };
        let mut in_a = db::connect(a.url()).await;
        sqlx::query("CREATE TABLE messages (id TEXT PRIMARY KEY)")
            .execute(&mut in_a)
            .await
            .unwrap();
        let mut in_b = db::connect(b.url()).await;
        let seen: Option<String> = sqlx::query_scalar("SELECT to_regclass('messages')::text")
            .fetch_one(&mut in_b)
            .await
            .unwrap();
        assert_eq!(seen, None, "another app's schema does not see the table");
        db::close(in_b).await;

        // Mid-transaction on this runtime, which the drop blocks.
        sqlx::query("BEGIN").execute(&mut in_a).await.unwrap();
        sqlx::query("INSERT INTO messages (id) VALUES ('x')")
            .execute(&mut in_a)
            .await
            .unwrap();
        assert!(schema_exists(&schema).await);
        drop(a);
        assert!(!schema_exists(&schema).await, "{schema} is dropped");
        drop(in_a);
    }
}

// ------------------------------------------------------------------------------------------
// a disk that fills up
// ------------------------------------------------------------------------------------------

/// A small tmpfs that really fills up. `None` where mounting is not allowed.
pub struct Tmpfs {
    mnt: PathBuf,
    _dir: TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mnt)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Self { mnt, _dir: dir })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

// ------------------------------------------------------------------------------------------
// conversations and message histories (the channel tests: e-mail, SMS, destinations)
// ------------------------------------------------------------------------------------------

/// The bot's reply to `text` from `user`; it must answer.
/// Binds `{user}@example.com` by its mailed code; returns the address.
pub async fn bind_email(api: &Api, sink: &crate::smtp::SmtpSink, user: &str) -> String {
    let address = format!("{user}@example.com");
    let reply = say(api, user, &format!("email {address}")).await;
    assert_says(&reply, "code sent", "`email <address>`");
    let mails = sink.wait_for_mails_to(&address, 1, WAIT).await;
    let code = mails[0].code().expect("the code mail has a code");
    let reply = say(api, user, &format!("verify {code}")).await;
    assert_says(&reply, "bound", "`verify` with the mailed code");
    address
}

pub async fn say(api: &Api, user: &str, text: &str) -> String {
    api.user_says(user, text)
        .await
        .unwrap_or_else(|| panic!("the bot answers {text:?} from {user}"))
}

pub fn has(reply: &str, fragment: &str) -> bool {
    reply.to_lowercase().contains(&fragment.to_lowercase())
}

pub fn assert_says(reply: &str, fragment: &str, what: &str) {
    assert!(
        has(reply, fragment),
        "{what}: the reply must say {fragment:?}, got:\n{reply}"
    );
}

/// The first line of `reply` that mentions `key` (case-insensitive), e.g. `"email:"`.
pub fn line<'a>(reply: &'a str, key: &str) -> &'a str {
    reply
        .lines()
        .find(|l| has(l, key))
        .unwrap_or_else(|| panic!("the reply has a line with {key:?}:\n{reply}"))
}

/// Polls `/messages/{id}` until it is no longer queued; returns its last state.
pub async fn wait_settled(api: &Api, id: &str, token: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let status = api.message_json(id, token).await;
        if status["status"] != "queued" {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "message {id} still queued after {timeout:?}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(c, o)| ((*c).to_owned(), (*o).to_owned()))
        .collect()
}

/// The error of history entry `i`.
pub fn history_error(status: &Value, i: usize) -> String {
    status["history"][i]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The history with its runs of `retry` on one channel collapsed into one entry.
pub fn collapsed(h: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in h {
        if entry.1 == "retry" && out.last() == Some(entry) {
            continue;
        }
        out.push(entry.clone());
    }
    out
}

/// A WeCom answer that can never succeed for this member: all recipients invalid.
pub fn wecom_permanent() -> SendReply {
    SendReply::errcode(81013, "user & party & tag all invalid")
}
