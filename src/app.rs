//! Wiring: settings → storage, WeCom client, outbox, router → a bound listener.
//!
//! `main` and the tests go through the same path: [`Application::build`] binds (port 0 in
//! tests) and [`Application::run_until_stopped`] serves until the shutdown future resolves,
//! then lets delivery attempts in flight finish and flushes the store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::header::{AUTHORIZATION, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderValue, Request};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::api::rate_limit::SendLimiter;
use crate::api::{self, AppState};
use crate::config::{ProxyUrl, Settings};
use crate::delivery::Outbox;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::server::{self, ServeOptions};
use crate::store::{ORPHAN_AFTER, Store, StoreError};
use crate::time::UnixMillis;
use crate::wecom::client::WeComClient;
use crate::wecom::crypto::WeComCrypto;
use crate::wecom_groups::WecomGroups;

/// A request taking longer than this is answered 408 (slow clients, stuck storage).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Callback de-duplication keys are kept at least this long (WeCom retries within seconds;
/// they are also kept as long as `wecom.callback_max_age`, so that every callback young
/// enough to pass the timestamp check is still de-duplicated).
const MIN_CALLBACK_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Why the service could not start or stopped with an error. `Display` is one short line;
/// the cause is the `source()` chain (printed with [`crate::error::chain`]).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("storage {url}")]
    Store {
        url: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up TLS for the HTTP client")]
    Tls(#[source] rustls::Error),
    #[error("cannot build the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    /// Already says which setting and why, credentials redacted.
    #[error("{0}")]
    Proxy(String),
    #[error("e-mail channel")]
    Email(#[from] crate::delivery::email::SetupError),
    #[error("SMS channel: {0}")]
    Sms(#[source] crate::config::ConfigError),
    /// Checked when the config was loaded; only settings built by hand get here.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("server error")]
    Serve(#[from] std::io::Error),
    /// Background work (the storage writer thread) failed for good (see
    /// [`crate::supervise`]); already logged.
    #[error("stopped because {0}")]
    Failed(String),
}

pub struct Application {
    listener: tokio::net::TcpListener,
    router: Router,
    store: Store,
    outbox: Outbox,
    wecom_groups: WecomGroups,
    escalation: crate::delivery::escalate::Escalation,
    metrics: Metrics,
    port: u16,
    callback_retention: Duration,
    /// `storage.retention`.
    retention: Option<Duration>,
    callback_url: String,
    serve_options: ServeOptions,
    /// Summed up in the log once a minute, and once more at shutdown.
    refused: Arc<api::refused::RefusedTokens>,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with(settings, false).await
    }

    /// As [`Application::build`], and on SQLite the WAL frames of the store's writer are
    /// counted ([`Store::write_stats`]): for the benchmark.
    pub async fn build_measuring_wal(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with(settings, true).await
    }

    async fn build_with(settings: Settings, measure_wal: bool) -> Result<Self, StartupError> {
        if !settings.ignored_variables.is_empty() {
            tracing::debug!(
                variables = %settings.ignored_variables.join(" "),
                "ignored Kubernetes service-link variables: they are not settings"
            );
        }
        let store_error = |source| StartupError::Store {
            url: settings.storage.url.redacted(),
            source,
        };
        let (url, pool_size) = (settings.storage.url.as_str(), settings.storage.pool_size);
        let store = if measure_wal {
            Store::connect_measuring_wal(url, pool_size).await
        } else {
            Store::connect_with(url, pool_size).await
        }
        .map_err(store_error)?;
        let crypto = WeComCrypto::from_config(
            &settings.wecom.callback_token,
            &settings.wecom.encoding_aes_key,
            &settings.wecom.corp_id,
        );
        let metrics = Metrics::new();
        let client = Arc::new(
            WeComClient::new(wecom_http_client(&settings)?, &settings.wecom)
                .with_metrics(metrics.clone()),
        );
        let factory = crate::delivery::registry::destinations(&settings, &store)?;
        let escalation = crate::delivery::escalate::Escalation::default();
        let wecom_groups = WecomGroups::start(&store, Arc::clone(&client), &settings.groups)
            .await
            .map_err(store_error)?;
        let channels = crate::delivery::registry::build(&settings, client, &store, &factory)?;
        let checks = channels.clone();
        let outbox = Outbox::new(
            store.clone(),
            channels,
            Arc::clone(&factory),
            settings.delivery.clone(),
            instance_id(&settings),
            metrics.clone(),
            settings.public_base().into(),
        );

        let refused = api::refused::RefusedTokens::new();
        let state = AppState {
            store: store.clone(),
            outbox: outbox.clone(),
            crypto: Arc::new(crypto),
            corp_id: settings.wecom.corp_id.as_str().into(),
            agent_id: settings.wecom.agent_id.get(),
            public_base: settings.public_base().into(),
            callback_max_age: settings.wecom.callback_max_age,
            send_limiter: SendLimiter::new(settings.server.send_rate),
            utc_offset: settings.delivery.utc_offset,
            quiet_hours: settings.delivery.quiet_hours,
            max_content_bytes: settings.server.max_content_bytes,
            ack: Arc::new(settings.ack.clone()),
            retention: settings.storage.retention,
            metrics: metrics.clone(),
            metrics_access: api::metrics::MetricsAccess::from_settings(&settings.server),
            refused: Arc::clone(&refused),
            media: api::MediaState {
                fetcher: crate::media::Fetcher::new(crate::media::FetchLimits {
                    max_bytes: settings.media.max_bytes,
                    timeout: settings.media.fetch_timeout,
                    allow: settings.media.fetch_allow.clone(),
                })?,
                limits: settings.media.blob_limits(),
                max_files: settings.media.max_files,
            },
            console: api::console::ConsoleState::from_settings(&settings),
            groups: settings.groups.limits(),
            wecom_groups: wecom_groups.clone(),
            escalation: escalation.clone(),
            running_config: Arc::new(settings.clone()),
        };
        let router = with_middleware(api::router(state), settings.media.upload_timeout);

        let addr = listen_addr(&settings);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let port = listener.local_addr()?.port();
        outbox.start().await.map_err(store_error)?;
        // Wrong credentials or a firewalled port should be visible on day one, not at the
        // first fallback; but no channel other than WeCom is needed to start (WeCom's own
        // start-up check is `pushbot doctor`'s and the first send's).
        for channel in checks.into_iter().filter(|c| c.binding().is_some()) {
            tokio::spawn(async move {
                let name = channel.name();
                match channel.check().await {
                    Ok(what) => {
                        tracing::info!(channel = %name, "{what}; {} channel ready", name.label())
                    }
                    Err(err) => tracing::warn!(
                        channel = %name,
                        error = %err,
                        "{} channel check failed; delivery will be retried, but check its config section",
                        name.label()
                    ),
                }
            });
        }
        Ok(Self {
            listener,
            router,
            store,
            outbox,
            wecom_groups,
            escalation,
            metrics,
            port,
            callback_retention: MIN_CALLBACK_RETENTION.max(settings.wecom.callback_max_age),
            retention: settings.storage.retention,
            callback_url: format!("{}/wecom/callback", settings.public_base()),
            refused,
            serve_options: ServeOptions {
                header_read_timeout: settings.server.header_read_timeout,
                max_connections: server::connection_cap(
                    settings.server.max_connections,
                    settings.delivery.concurrency,
                ),
                // Long enough for a request that has begun to finish or time out.
                drain_timeout: settings.server.header_read_timeout.max(REQUEST_TIMEOUT)
                    + Duration::from_secs(1),
            },
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The store, to read what its writer committed ([`Store::write_stats`]): for the
    /// benchmark, which reads it before and after a run.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// How background work that cannot go on stops the process, and the test hooks.
    pub fn supervisor(&self) -> crate::supervise::Supervisor {
        self.store.supervisor().clone()
    }

    /// Serves until `shutdown` resolves, then drains: open requests finish, delivery
    /// attempts in flight get a grace period, queued writes are flushed.
    ///
    /// No delivery attempt starts once `shutdown` has resolved, even while requests are
    /// still draining (what they accept stays queued for the next start).
    ///
    /// Background work that fails for good (the storage writer thread) stops the service
    /// the same way, and then this returns [`StartupError::Failed`]: `main` exits with
    /// status 1, for Docker or systemd to restart it.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let outbox = self.outbox.clone();
        let supervisor = self.store.supervisor().clone();
        let failed = supervisor.clone();
        let shutdown = async move {
            tokio::select! {
                () = shutdown => {}
                _ = failed.failed() => {}
            }
            outbox.stop_attempts();
        };
        // Reads the WeCom-backed groups now and every `groups.refresh`.
        let group_refresh = self.wecom_groups.spawn();
        // Sends unacknowledged messages again when their escalation time comes.
        let escalation = self.escalation.spawn(
            self.outbox.clone(),
            self.store.clone(),
            self.metrics.clone(),
        );
        let maintenance = tokio::spawn(maintenance(
            self.store.clone(),
            self.callback_retention,
            self.retention,
        ));
        tracing::info!(
            port = self.port,
            callback_url = %self.callback_url,
            "pushbot listening; set the WeCom app's callback URL to callback_url"
        );
        server::serve(self.listener, self.router, self.serve_options, shutdown).await;
        maintenance.abort();
        escalation.abort();
        if let Some(group_refresh) = group_refresh {
            group_refresh.abort();
        }
        // The refusals of the last, unfinished minute.
        self.refused.summarize();
        // Attempts in flight get `delivery.shutdown_grace`; whatever is cut off is handed
        // back to the queue before the store closes.
        self.outbox.shutdown().await;
        self.store.close().await;
        if let Some(reason) = supervisor.reason() {
            tracing::error!("pushbot stopped because {reason}");
            return Err(StartupError::Failed(reason));
        }
        tracing::info!("pushbot stopped");
        Ok(())
    }
}

/// `delivery.instance_id`, else `<hostname>:<port>`: stable across restarts of the same
/// service (so that it takes its own lane claims back at once), distinct between two
/// services on one host.
fn instance_id(settings: &Settings) -> String {
    if let Some(id) = settings.delivery.instance_id.as_deref().map(str::trim)
        && !id.is_empty()
    {
        return id.to_owned();
    }
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| {
            std::fs::read_to_string(path)
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "pushbot".to_owned());
    format!("{host}:{}", settings.server.listen.port())
}

/// `server.listen`, except that a service still configured with WeCom's public sample
/// callback Token or EncodingAESKey only listens on loopback: anyone who can reach it could
/// forge callbacks and mint a push token for any member.
fn listen_addr(settings: &Settings) -> std::net::SocketAddr {
    let addr = settings.server.listen;
    if !settings.uses_sample_credentials() {
        return addr;
    }
    if addr.ip().is_loopback() {
        tracing::warn!(
            "wecom.callback_token / wecom.encoding_aes_key are WeCom's public sample values; \
             fine for a local try-out, replace them with your app's before going live"
        );
        return addr;
    }
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()));
    tracing::error!(
        configured = %addr,
        listening = %local,
        "wecom.callback_token / wecom.encoding_aes_key are WeCom's PUBLIC SAMPLE values: anyone \
         could forge callbacks and mint push tokens. Listening on loopback only until you set \
         your app's own values (接收消息 → 设置API接收 → 随机获取)"
    );
    local
}

/// Hourly (and at start-up): forgets old callback keys and wrong invite codes, purges finished messages older
/// than `storage.retention` (their pages answer 410 from then on) with their attachments,
/// then files no message names (after an hour) and WeCom media ids WeCom has forgotten.
/// A panic (a bug) costs one pass.
async fn maintenance(store: Store, callback_retention: Duration, retention: Option<Duration>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let pass = maintenance_pass(&store, callback_retention, retention);
        if let Err(panic) = crate::supervise::catch(pass).await {
            tracing::error!(task = "maintenance", panic = %panic, "maintenance panicked; this pass is skipped, the next one runs in an hour");
        }
    }
}

async fn maintenance_pass(
    store: &Store,
    callback_retention: Duration,
    retention: Option<Duration>,
) {
    let ago = |d: Duration| UnixMillis::now() - d;
    match store.prune_callbacks(ago(callback_retention)).await {
        Ok(n) if n > 0 => tracing::debug!(removed = n, "pruned callback keys"),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "could not prune callback keys"),
    }
    match store.prune_console(UnixMillis::now()).await {
        Ok(n) if n > 0 => tracing::debug!(
            removed = n,
            "pruned expired console sessions and login links"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "could not prune console sessions"),
    }
    // Wrong invite codes count for at most a day (`groups.join_failures.per`).
    match store
        .prune_join_failures(ago(Duration::from_secs(86_400)))
        .await
    {
        Ok(n) if n > 0 => tracing::debug!(removed = n, "pruned old wrong invite codes"),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "could not prune wrong invite codes"),
    }
    if let Some(retention) = retention {
        purge_messages(store, retention).await;
    }
    // After the messages: the blobs only they named go in the same pass.
    match store.purge_orphan_blobs(ago(ORPHAN_AFTER)).await {
        Ok(n) if n > 0 => tracing::info!(removed = n, "purged files no message names"),
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(error = %err, "could not purge unused files; trying again in an hour")
        }
    }
    match store.prune_wecom_media(UnixMillis::now()).await {
        Ok(n) if n > 0 => tracing::debug!(removed = n, "pruned expired WeCom media ids"),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "could not prune WeCom media ids"),
    }
}

/// Purges finished messages older than `retention`, a batch at a time.
async fn purge_messages(store: &Store, retention: Duration) {
    /// Messages deleted per transaction, so the writer never waits long for the lock.
    const PURGE_BATCH: usize = 1000;
    let cutoff = UnixMillis::now() - retention;
    let mut total = 0;
    loop {
        match store.purge_messages(cutoff, PURGE_BATCH).await {
            Ok(n) => {
                total += n;
                if n < PURGE_BATCH as u64 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not purge old messages; trying again in an hour");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(purged = total, retention = %humantime::format_duration(retention), "purged messages past storage.retention");
    }
}

fn with_middleware(router: Router, upload_timeout: Duration) -> Router {
    router
        .layer(CatchPanicLayer::custom(|_panic| -> Response {
            ApiError::internal("a request handler panicked").into_response()
        }))
        .layer(axum::middleware::from_fn(
            move |req: Request<axum::body::Body>, next: axum::middleware::Next| {
                let (limit, what) = if api::carries_files(&req) {
                    (
                        upload_timeout,
                        " (media.upload_timeout, for requests with files)",
                    )
                } else {
                    (REQUEST_TIMEOUT, "")
                };
                async move {
                    match tokio::time::timeout(limit, next.run(req)).await {
                        Ok(response) => response,
                        Err(_) => ApiError::RequestTimeout(format!(
                            "the request took longer than {}{what}",
                            humantime::format_duration(limit)
                        ))
                        .into_response(),
                    }
                }
            },
        ))
        // The span names method and path only: query strings can carry push tokens, and
        // so can paths (`/TOKEN.send`, Bark's `/TOKEN/…`), which are logged redacted.
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let path = api::redact_path(req.uri().path());
                tracing::debug_span!("http", method = %req.method(), path = %path)
            }),
        )
        .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION]))
        // Outermost, so that every answer has it, the 408 and a panic's 500 too: no browser
        // may guess that a JSON error echoing a sender's text is HTML or script. (The accept
        // loop's own 414/431 set it themselves: see `server::check_request_head`.)
        .layer(SetResponseHeaderLayer::overriding(
            X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
}

/// The client for WeCom API calls: `wecom.proxy` when set, else the proxy environment.
pub fn wecom_http_client(settings: &Settings) -> Result<reqwest::Client, StartupError> {
    let egress = match &settings.wecom.proxy {
        Some(proxy) => Egress::Proxy(proxy),
        None => Egress::Environment,
    };
    http_client(settings.wecom.request_timeout, egress)
}

/// Which proxy an HTTP client goes through.
#[derive(Debug, Clone, Copy)]
pub enum Egress<'a> {
    /// `wecom.proxy`.
    Proxy(&'a ProxyUrl),
    /// The `HTTPS_PROXY`/`ALL_PROXY`/`NO_PROXY` environment (reqwest's default).
    Environment,
    /// None at all: for calls to this machine (healthcheck, doctor's callback check).
    Direct,
}

/// An HTTPS client (WeCom, SMS providers, webhooks, the doctor's checks): rustls on ring
/// with compiled-in roots (no CA files needed in a scratch image), pooled keep-alive
/// connections, each request limited to `timeout`, going out through `egress`.
pub fn http_client(timeout: Duration, egress: Egress<'_>) -> Result<reqwest::Client, StartupError> {
    client_builder(timeout, egress)?
        .build()
        .map_err(StartupError::HttpClient)
}

/// [`http_client`] that follows no redirect: a request stays on the address checked before
/// it was made (destinations a member typed).
pub fn http_client_no_redirects(
    timeout: Duration,
    egress: Egress<'_>,
) -> Result<reqwest::Client, StartupError> {
    client_builder(timeout, egress)?
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(StartupError::HttpClient)
}

/// The builder behind [`http_client`] (TLS, timeouts, pool, User-Agent), for clients that
/// add more (the media fetcher's guarded resolver).
pub(crate) fn client_builder(
    timeout: Duration,
    egress: Egress<'_>,
) -> Result<reqwest::ClientBuilder, StartupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(StartupError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = match egress {
        Egress::Proxy(url) => {
            reqwest::Client::builder().proxy(reqwest::Proxy::all(url.expose()).map_err(|e| {
                StartupError::Proxy(format!(
                    "wecom.proxy {url}: {}",
                    crate::wecom::client::describe(e)
                ))
            })?)
        }
        Egress::Environment => reqwest::Client::builder(),
        Egress::Direct => reqwest::Client::builder().no_proxy(),
    };
    Ok(builder
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(concat!("pushbot/", env!("CARGO_PKG_VERSION"))))
}
