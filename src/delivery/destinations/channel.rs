//! A shared destination (`[destinations.NAME]`) as a delivery channel: messages routed to
//! its name (`channel=ops`, `fallback wecom,ops`) go to its group chat or webhook.
//!
//! Its rate windows are the service's own (a WeCom group robot takes 20 messages a
//! minute, …). A shared destination's count every message sent to it, whoever sent it
//! ([`Channel::shared_windows`]); a member's own destination (added in the chat) counts
//! that member's messages.
//!
//! [`Factory`] builds both kinds: the shared ones at start-up, a member's own when a
//! message is about to go there (and for the chat's test message).

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{Bases, Delivered, Destination, DestinationError, Envelope, Kind, Settings};
use crate::config::{ConfiguredDestination, Members};
use crate::delivery::limits::RateWindow;
use crate::delivery::{Capabilities, Channel, ChannelError, CheckError};
use crate::domain::{ChannelName, Outbound, UserId};
use crate::store::StoredDestination;
use crate::time::UnixMillis;

pub struct DestinationChannel {
    name: ChannelName,
    destination: Destination,
    members: Members,
    /// A shared destination (from the config): windows count everyone's messages.
    shared: bool,
    /// A member's own destination: whose, and where to store a Telegram chat's new id.
    owner: Option<(UserId, crate::store::Store)>,
    http: reqwest::Client,
    settings: Settings,
    /// `server.public_url`, for page links.
    public_base: std::sync::Arc<str>,
}

impl DestinationChannel {
    /// The address as logs and `doctor` may show it (no key).
    pub fn masked(&self) -> String {
        self.destination.masked()
    }

    /// The destination's identity (its robot or chat), for per-robot state.
    pub fn lane_key(&self) -> String {
        self.destination.lane_key()
    }
}

/// Builds destination channels with the server's bases, HTTP client and Telegram bot.
pub struct Factory {
    store: crate::store::Store,
    bases: Bases,
    http: reqwest::Client,
    settings: Settings,
    public_base: Arc<str>,
}

impl Factory {
    pub fn new(
        store: crate::store::Store,
        bases: Bases,
        http: reqwest::Client,
        settings: Settings,
        public_base: Arc<str>,
    ) -> Self {
        Self {
            store,
            bases,
            http,
            settings,
            public_base,
        }
    }

    fn channel(
        &self,
        name: ChannelName,
        destination: Destination,
        members: Members,
        shared: bool,
    ) -> DestinationChannel {
        DestinationChannel {
            name,
            destination,
            members,
            shared,
            owner: None,
            http: self.http.clone(),
            settings: self.settings.clone(),
            public_base: Arc::clone(&self.public_base),
        }
    }

    /// A `[destinations.NAME]` destination.
    pub fn shared(&self, d: ConfiguredDestination) -> DestinationChannel {
        self.channel(d.name, d.destination, d.members, true)
    }

    /// A destination a member typed in the chat (`robot ops URL [SECRET]`), checked against
    /// the bases: `Err` reads as a sentence for the chat.
    pub fn from_chat(
        &self,
        name: ChannelName,
        kind_hint: Option<Kind>,
        typed: &str,
        secret: Option<&str>,
    ) -> Result<DestinationChannel, DestinationError> {
        let mut destination = super::parse_chat_url(kind_hint, typed, &self.bases)?;
        if let Some(secret) = secret {
            destination = destination.with_secret(secret)?;
        }
        Ok(self.channel(name, destination, Members::All, false))
    }

    /// A member's stored destination, checked again (a base changed since: refused).
    pub fn from_stored(
        &self,
        stored: &StoredDestination,
    ) -> Result<DestinationChannel, DestinationError> {
        let kind: Kind = stored.kind.parse()?;
        let destination =
            Destination::from_stored(kind, &stored.address, stored.secret.as_deref(), &self.bases)?;
        Ok(self.channel(stored.name, destination, Members::All, false))
    }

    /// [`Self::from_stored`] for delivering `owner`'s messages: a Telegram group that
    /// moved is stored under its new id.
    fn owned(
        &self,
        owner: &UserId,
        stored: &StoredDestination,
    ) -> Result<DestinationChannel, DestinationError> {
        let mut channel = self.from_stored(stored)?;
        channel.owner = Some((owner.clone(), self.store.clone()));
        Ok(channel)
    }

    /// What to store of a channel made by [`Self::from_chat`].
    pub fn to_stored(channel: &DestinationChannel) -> StoredDestination {
        StoredDestination {
            name: channel.name,
            kind: channel.destination.kind().as_str().to_owned(),
            address: channel.destination.expose_address(),
            secret: channel.destination.expose_secret().map(str::to_owned),
        }
    }
}

impl crate::delivery::MemberChannels for Factory {
    fn build(
        &self,
        owner: &UserId,
        stored: &StoredDestination,
    ) -> Result<(String, Arc<dyn Channel>), DestinationError> {
        let channel = self.owned(owner, stored)?;
        Ok((channel.lane_key(), Arc::new(channel)))
    }
}

impl DestinationChannel {
    /// A Telegram group became a supergroup: its old id no longer works.
    async fn chat_moved(&self, chat_id: &str) {
        match &self.owner {
            Some((userid, store)) => {
                match store
                    .move_member_destination(userid, self.name, chat_id)
                    .await
                {
                    Ok(()) => {
                        tracing::info!(userid = %userid, destination = %self.name, chat_id, "Telegram chat moved; its new id is stored")
                    }
                    Err(err) => {
                        tracing::warn!(userid = %userid, destination = %self.name, chat_id, error = %crate::error::chain(&err), "Telegram chat moved, and its new id could not be stored")
                    }
                }
            }
            None => tracing::warn!(
                destination = %self.name,
                chat_id,
                "the Telegram group became a supergroup: set [destinations.{}] chat_id = \"{chat_id}\" (until then each message is refused once at the old id and sent again to the new one)",
                self.name
            ),
        }
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
        self.shared
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
                created_at_ms: UnixMillis::now(),
            };
            let delivered = self
                .destination
                .send(&self.http, &self.settings, &envelope)
                .await
                .map_err(ChannelError::from)?;
            if let Delivered::ChatMoved { chat_id } = delivered {
                self.chat_moved(&chat_id).await;
            }
            Ok(())
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<String, CheckError>> {
        Box::pin(async move {
            self.destination
                .check(&self.http, &self.settings)
                .await
                .into_result()
        })
    }
}
