//! A shared destination (`[destinations.NAME]`) as a delivery channel: messages routed to
//! its name (`channel=ops`, `fallback wecom,ops`) go to its group chat or webhook.
//!
//! Its rate windows are the service's own (a WeCom group robot takes 20 messages a
//! minute, …) and count every message sent to it, whoever sent it ([`Channel::shared_windows`]).

use futures_util::future::BoxFuture;

use super::{Destination, Envelope, Settings};
use crate::config::Members;
use crate::delivery::limits::RateWindow;
use crate::delivery::{Capabilities, Channel, ChannelError};
use crate::domain::{ChannelName, Outbound, UserId};
use crate::store::now_ms;

pub struct DestinationChannel {
    name: ChannelName,
    destination: Destination,
    members: Members,
    http: reqwest::Client,
    settings: Settings,
    /// `server.public_url`, for page links.
    public_base: std::sync::Arc<str>,
}

impl DestinationChannel {
    pub fn new(
        name: ChannelName,
        destination: Destination,
        members: Members,
        http: reqwest::Client,
        settings: Settings,
        public_base: std::sync::Arc<str>,
    ) -> Self {
        Self {
            name,
            destination,
            members,
            http,
            settings,
            public_base,
        }
    }

    /// The address as logs and `doctor` may show it (no key).
    pub fn masked(&self) -> String {
        self.destination.masked()
    }
}

impl Channel for DestinationChannel {
    fn name(&self) -> ChannelName {
        self.name
    }

    fn capabilities(&self) -> Capabilities {
        self.destination.kind().capabilities()
    }

    fn rate_windows(&self) -> &[RateWindow] {
        self.destination.rate_windows()
    }

    fn shared_windows(&self) -> bool {
        true
    }

    fn serves(&self, userid: &UserId) -> bool {
        self.members.includes(userid)
    }

    fn deliver<'a>(&'a self, message: &'a Outbound) -> BoxFuture<'a, Result<(), ChannelError>> {
        Box::pin(async move {
            let page = message
                .page_key
                .as_deref()
                .map(|key| message.id.page_url(&self.public_base, key));
            let envelope = Envelope {
                message,
                page_url: page.as_deref(),
                created_at_ms: now_ms(),
            };
            self.destination
                .send(&self.http, &self.settings, &envelope)
                .await
                .map(drop)
                .map_err(ChannelError::from)
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            self.destination
                .check(&self.http, &self.settings)
                .await
                .into_result()
        })
    }
}
