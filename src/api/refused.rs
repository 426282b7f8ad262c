//! Refused push tokens: counted per endpoint (`pushbot_auth_refused_total`) and summed up in
//! the log once a minute, one WARN line per client address — the count and the endpoints,
//! never a token.
//!
//! Nothing is throttled by address. Members behind one proxy or NAT share an address, so a
//! throttle would let one script with an old token lock out everyone else there; and a token
//! is 192 random bits, so guessing one is hopeless at any rate an address could send.
//!
//! The client address is the TCP peer: the accept loop puts it into every request as axum's
//! `ConnectInfo` ([`crate::server::serve`]), and [`with_client`] makes it known to the code
//! that refuses a token. pushbot has no trusted-proxy setting (it does not read
//! `X-Forwarded-For`), so behind a reverse proxy the address is the proxy's.
//!
//! Memory is bounded: at most [`MAX_CLIENTS`] addresses are told apart in a minute; refusals
//! from further addresses are summed up in one line of their own.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;

use crate::metrics::TokenRoute;

/// How often the log sums up the refusals.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// Client addresses told apart within one summary period.
pub const MAX_CLIENTS: usize = 1024;

tokio::task_local! {
    /// The TCP peer of the request being handled.
    static CLIENT: IpAddr;
}

/// Middleware: runs the request with its TCP peer's address known to [`RefusedTokens`].
pub async fn with_client(request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip().to_canonical());
    match peer {
        Some(ip) => CLIENT.scope(ip, next.run(request)).await,
        None => next.run(request).await,
    }
}

/// The refusals from one address (or from all addresses beyond the cap) in this period.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    refused: u64,
    /// Endpoints they came in on, in order of first refusal; at most [`TokenRoute::ALL`].
    routes: Vec<&'static str>,
}

impl Tally {
    fn add(&mut self, route: TokenRoute) {
        self.refused += 1;
        let route = route.as_str();
        if !self.routes.contains(&route) {
            self.routes.push(route);
        }
    }
}

#[derive(Debug, Default)]
struct Period {
    /// `None`: a request without a known peer (not through the accept loop).
    by_client: HashMap<Option<IpAddr>, Tally>,
    /// From addresses beyond [`MAX_CLIENTS`].
    others: Tally,
}

/// The refusals of the current period, summed up in the log by [`Self::summarize`].
#[derive(Debug, Default)]
pub struct RefusedTokens {
    period: Mutex<Period>,
}

impl RefusedTokens {
    /// Inside a Tokio runtime, also starts the task that logs the summary every minute; it
    /// ends once the returned value is dropped.
    pub fn new() -> Arc<Self> {
        let refused = Arc::new(Self::default());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // A panic (a bug) costs one summary.
            runtime.spawn(crate::supervise::every(
                "the refused-token summary",
                SUMMARY_EVERY,
                Arc::downgrade(&refused),
                RefusedTokens::summarize,
            ));
        }
        refused
    }

    /// A token was refused on `route`, for the client of the request being handled.
    pub fn record(&self, route: TokenRoute) {
        self.record_from(CLIENT.try_with(|ip| *ip).ok(), route);
    }

    fn record_from(&self, client: Option<IpAddr>, route: TokenRoute) {
        let mut period = self.period.lock().unwrap_or_else(PoisonError::into_inner);
        let at_cap = period.by_client.len() >= MAX_CLIENTS;
        match period.by_client.get_mut(&client) {
            Some(tally) => tally.add(route),
            None if at_cap => period.others.add(route),
            None => period.by_client.entry(client).or_default().add(route),
        }
    }

    /// Logs one WARN line per address with refusals since the last summary (the most
    /// first), and one for the addresses beyond the cap; then starts a new period.
    pub fn summarize(&self) {
        let period =
            std::mem::take(&mut *self.period.lock().unwrap_or_else(PoisonError::into_inner));
        let mut clients: Vec<_> = period.by_client.into_iter().collect();
        clients.sort_by_key(|(_, tally)| std::cmp::Reverse(tally.refused));
        for (client, tally) in clients {
            let client = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
            tracing::warn!(
                client = %client,
                refused = tally.refused,
                endpoints = %tally.routes.join(","),
                "push tokens refused (missing or invalid) from this address, summed up once a \
                 minute: an old or mistyped token, or someone guessing (hopeless: 192-bit tokens)"
            );
        }
        if period.others.refused > 0 {
            tracing::warn!(
                refused = period.others.refused,
                endpoints = %period.others.routes.join(","),
                "push tokens refused (missing or invalid), summed up once a minute, from the \
                 addresses beyond the first {MAX_CLIENTS} of the minute"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Endpoint;

    fn ip(n: u32) -> Option<IpAddr> {
        Some(IpAddr::from(n.to_be_bytes()))
    }

    #[test]
    fn refusals_are_tallied_per_address_with_their_endpoints() {
        let r = RefusedTokens::default();
        for _ in 0..3 {
            r.record_from(ip(1), TokenRoute::Send(Endpoint::Native));
        }
        r.record_from(ip(1), TokenRoute::Send(Endpoint::Bark));
        r.record_from(ip(1), TokenRoute::Send(Endpoint::Native));
        r.record_from(ip(2), TokenRoute::Status);
        r.record_from(None, TokenRoute::Status);
        let period = r.period.lock().unwrap();
        assert_eq!(
            period.by_client[&ip(1)],
            Tally {
                refused: 5,
                routes: vec!["native", "bark"],
            }
        );
        assert_eq!(period.by_client[&ip(2)].refused, 1);
        assert_eq!(period.by_client[&None].routes, vec!["messages"]);
        assert_eq!(period.others, Tally::default());
    }

    #[test]
    fn memory_is_capped_and_the_rest_counted_together() {
        let r = RefusedTokens::default();
        for n in 0..(MAX_CLIENTS as u32 + 500) {
            r.record_from(ip(n), TokenRoute::Send(Endpoint::Ntfy));
        }
        // An address already tracked keeps its own tally past the cap.
        r.record_from(ip(0), TokenRoute::Send(Endpoint::Ntfy));
        {
            let period = r.period.lock().unwrap();
            assert_eq!(period.by_client.len(), MAX_CLIENTS);
            assert_eq!(period.by_client[&ip(0)].refused, 2);
            assert_eq!(period.others.refused, 500);
            assert_eq!(period.others.routes, vec!["ntfy"]);
        }
        // A summary starts a new period.
        r.summarize();
        let period = r.period.lock().unwrap();
        assert!(period.by_client.is_empty());
        assert_eq!(period.others, Tally::default());
    }
}
