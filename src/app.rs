//! Wiring: settings → storage, WeCom client, outbox, router → a bound listener.
//!
//! `main` and the tests go through the same path: [`Application::build`] binds (port 0 in
//! tests) and [`Application::run_until_stopped`] serves until the shutdown future resolves,
//! then lets delivery attempts in flight finish and flushes the store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::header::AUTHORIZATION;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::api::{self, AppState};
use crate::config::Settings;
use crate::delivery::wecom::WeComChannel;
use crate::delivery::{Channel, Outbox};
use crate::error::ApiError;
use crate::store::{Store, StoreError, now_ms};
use crate::wecom::client::WeComClient;
use crate::wecom::crypto::WeComCrypto;

/// A request taking longer than this is answered 408 (slow clients, stuck storage).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Callback de-duplication keys are kept at least this long (WeCom retries within seconds;
/// they are also kept as long as `wecom.callback_max_age`, so that every callback young
/// enough to pass the timestamp check is still de-duplicated).
const MIN_CALLBACK_RETENTION: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("storage ({url}): {source}")]
    Store {
        url: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid setting wecom.encoding_aes_key: {0}")]
    Crypto(String),
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    #[error("server error: {0}")]
    Serve(#[from] std::io::Error),
}

pub struct Application {
    listener: tokio::net::TcpListener,
    router: Router,
    store: Store,
    outbox: Outbox,
    port: u16,
    callback_retention: Duration,
    callback_url: String,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let store = Store::connect(&settings.storage.url)
            .await
            .map_err(|source| StartupError::Store {
                url: settings.storage.url.clone(),
                source,
            })?;
        let crypto = WeComCrypto::new(
            settings.wecom.callback_token.expose_secret(),
            settings.wecom.encoding_aes_key.expose_secret(),
            &settings.wecom.corp_id,
        )
        .map_err(|e| StartupError::Crypto(e.to_string()))?;
        let client = Arc::new(WeComClient::new(
            http_client(settings.wecom.request_timeout)?,
            &settings.wecom,
        ));
        let channels: Vec<Arc<dyn Channel>> = vec![Arc::new(WeComChannel::new(client))];
        let outbox = Outbox::new(store.clone(), channels, settings.delivery.clone());

        let state = AppState {
            store: store.clone(),
            outbox: outbox.clone(),
            crypto: Arc::new(crypto),
            corp_id: settings.wecom.corp_id.as_str().into(),
            public_base: settings.public_base().into(),
            callback_max_age: settings.wecom.callback_max_age,
        };
        let router = with_middleware(api::router(state));

        let addr = settings.server.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let port = listener.local_addr()?.port();
        outbox.start().await.map_err(|source| StartupError::Store {
            url: settings.storage.url.clone(),
            source,
        })?;
        Ok(Self {
            listener,
            router,
            store,
            outbox,
            port,
            callback_retention: MIN_CALLBACK_RETENTION.max(settings.wecom.callback_max_age),
            callback_url: format!("{}/wecom/callback", settings.public_base()),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` resolves, then drains: open requests finish, delivery
    /// attempts in flight get a grace period, queued writes are flushed.
    ///
    /// No delivery attempt starts once `shutdown` has resolved, even while requests are
    /// still draining (what they accept stays queued for the next start).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let outbox = self.outbox.clone();
        let shutdown = async move {
            shutdown.await;
            outbox.stop_attempts();
        };
        let maintenance = tokio::spawn(maintenance(self.store.clone(), self.callback_retention));
        tracing::info!(
            port = self.port,
            callback_url = %self.callback_url,
            "pushbot listening; set the WeCom app's callback URL to callback_url"
        );
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await;
        maintenance.abort();
        // Attempts in flight get `delivery.shutdown_grace`; whatever is cut off is handed
        // back to the queue before the store closes.
        self.outbox.shutdown().await;
        self.store.close().await;
        tracing::info!("pushbot stopped");
        served.map_err(StartupError::Serve)
    }
}

/// Periodic housekeeping: forget old callback de-duplication keys.
async fn maintenance(store: Store, retention: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let cutoff = now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(0));
        match store.prune_callbacks(cutoff).await {
            Ok(n) if n > 0 => tracing::debug!(removed = n, "pruned callback keys"),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "could not prune callback keys"),
        }
    }
}

fn with_middleware(router: Router) -> Router {
    router
        .layer(CatchPanicLayer::custom(|_panic| -> Response {
            ApiError::Internal("handler panicked".into()).into_response()
        }))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // The span names method and path only: query strings can carry push tokens.
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                tracing::debug_span!("http", method = %req.method(), path = %req.uri().path())
            }),
        )
        .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION]))
}

/// HTTPS client for the WeCom API: rustls on ring with compiled-in roots (no CA files
/// needed in a scratch image), pooled keep-alive connections.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, StartupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartupError::HttpClient(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(concat!("pushbot/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| StartupError::HttpClient(e.to_string()))
}
