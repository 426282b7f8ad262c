//! Delivery: per-member lanes pulled from the database by one scheduler, under each
//! member's send limits and each channel's health.
//!
//! Flow: `/send` calls [`Outbox::accept`], which commits the message and, in the same
//! transaction, opens its member's *lane* (a row in `lanes`). The database is the queue:
//! the [scheduler](scheduler) claims due lanes (an owner and a lease in the row, so a
//! second instance never works on a lane whose lease is live), works through each lane in
//! acceptance order — one message (or one digest) at a time, never faster than the
//! member limits allow — and records every outcome. Nothing about a message lives only
//! in memory: a client that hangs up, a lost task or a `kill -9` leaves rows that the
//! scheduler (or the next start) picks up. Memory holds at most `delivery.max_in_flight`
//! lanes and one message per lane.
//!
//! Pure parts, tested without I/O or sleeping: [`limits`] (sliding windows, digest
//! planning), [`digest`] (digest text), [`health`] (a channel that is down gets one probe
//! at a time), [`backoff`], [`next_step`] (what follows a failed try: retry, the next
//! channel, or the end).

pub mod backoff;
mod batch;
mod decide;
pub mod destinations;
pub mod digest;
pub mod email;
pub mod escalate;
pub mod health;
pub mod limits;
pub mod next_step;
pub mod quiet;
pub mod registry;
mod scheduler;
pub mod sms;
pub mod wecom;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::config::DeliverySettings;
use crate::domain::{
    ChannelName, Format, Look, MessageId, Outbound, Route, RouteError, UnknownChannel, UserId,
};
use crate::metrics::Metrics;
use crate::store::{Message, Store, StoreError};
use crate::time::UnixMillis;
use limits::RateWindow;
use scheduler::Scheduler;

/// `last_error` of an attempt cut off at the end of the shutdown grace.
pub const INTERRUPTED: &str = "interrupted by shutdown; will be retried";

/// Why a channel could not deliver a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelError {
    /// Retrying later may succeed. `unreachable`: the channel itself did not answer
    /// (refused, timed out, HTTP 5xx, busy), so the whole queue waits for it, not only
    /// this message.
    Transient { reason: String, unreachable: bool },
    /// Retrying cannot help until someone changes something (credentials, visible range).
    Permanent { reason: String },
    /// The service refused for now and said how long to wait (Telegram's `retry_after`,
    /// a robot blocked for minutes): retried no sooner than that, like a transient failure
    /// of a channel that answered.
    Wait {
        reason: String,
        retry_after: std::time::Duration,
    },
    /// The channel may or may not have taken it, and cannot say (an SMS whose request
    /// timed out and that the provider cannot look up). Sending again could deliver it
    /// twice (and bill it twice): the step is recorded as `unconfirmed` and the message
    /// moves on as after a permanent failure.
    Unconfirmed { reason: String },
}

impl ChannelError {
    /// Shown to the sender as `last_error`; never contains secrets.
    pub fn reason(&self) -> &str {
        match self {
            Self::Transient { reason, .. }
            | Self::Wait { reason, .. }
            | Self::Permanent { reason }
            | Self::Unconfirmed { reason } => reason,
        }
    }

    /// What a retry needs: the reason, whether the channel did not answer, and the least
    /// wait before the next try.
    pub fn retry_parts(&self) -> (&String, bool, std::time::Duration) {
        match self {
            Self::Transient {
                reason,
                unreachable,
            } => (reason, *unreachable, std::time::Duration::ZERO),
            Self::Wait {
                reason,
                retry_after,
            } => (reason, false, *retry_after),
            Self::Permanent { reason } | Self::Unconfirmed { reason } => {
                (reason, false, std::time::Duration::ZERO)
            }
        }
    }
}

/// What a channel can carry; the scheduler shapes messages by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The longest text the channel shows in one message (a digest is cut to it).
    pub max_text_bytes: usize,
    /// Several waiting messages may go as one digest when the recipient's rate windows
    /// would otherwise hold them back.
    pub digests: bool,
    /// How a message's images and files travel.
    pub attachments: Attachments,
}

/// How a channel carries a message's images and files (issue 20).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachments {
    /// One message per attachment after the text, each a *part* of its own (WeCom's app:
    /// image and file messages): each is sent, counted against the member's limits and
    /// recorded on its own, so a failed part is retried alone and the text never resent.
    Separate,
    /// With the text, in one message (e-mail: the files attached).
    Bundled,
    /// The text gets a line naming the files, with the address of the message's page,
    /// which offers them (SMS, group robots, Telegram, webhooks).
    Linked,
}

/// How a member binds an address on a channel that needs one (e-mail, SMS): the chat flow
/// (`email a@b.c` / `phone 138…`, a code sent over the channel, `verify 123456`, `… off`)
/// is written once and reads everything channel-specific from here.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    /// How long a code can be used.
    pub code_ttl: std::time::Duration,
    /// Codes per member, and per address, in any hour.
    pub codes_per_hour: u32,
    /// The chat command, e.g. `email`; the reply says "send `{command} {example}`".
    pub command: &'static str,
    pub example: &'static str,
    /// What the address is called: `("邮箱", "e-mail address")`.
    pub noun: (&'static str, &'static str),
    /// The address as the member typed it, normalised (the stored form), or what is wrong
    /// with it.
    pub parse: fn(&str) -> Result<String, BadAddress>,
    /// The stored address as `status` shows it.
    pub mask: fn(&str) -> String,
    /// The message carrying a code: `(title, content)`, for `(code, minutes valid)`.
    pub code_message: fn(&str, u64) -> (Option<String>, String),
}

/// An address a member typed that its channel cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAddress {
    /// `typed` as it was typed.
    #[error("{typed:?} is not an e-mail address")]
    Email { typed: String },
    #[error(transparent)]
    Phone(#[from] sms::PhoneError),
}

impl Binding {
    /// "no e-mail address is bound for this member (send "email you@example.com" in the app)".
    pub fn missing(&self) -> String {
        format!(
            "no {} is bound for this member (send \"{} {}\" in the app)",
            self.noun.1, self.command, self.example
        )
    }
}

/// A way to reach a member: one implementation per channel, in its own file, listed once
/// in [`registry`]. Everything the scheduler needs to know about a channel it asks here;
/// it never compares channel names. Implementations must be cheap to call concurrently.
pub trait Channel: Send + Sync {
    /// Which channel this is (stored with messages, named in routes).
    fn name(&self) -> ChannelName;
    fn capabilities(&self) -> Capabilities;
    /// Per-recipient limits (WeCom: 30 a minute and 1000 an hour); `[]`: none. Every
    /// delivery on the channel counts (the `sends` table), across restarts and instances.
    fn rate_windows(&self) -> &[RateWindow] {
        &[]
    }
    /// Whether the rate windows count every message sent on the channel, whoever it was
    /// for (a shared group chat), rather than each recipient's own.
    fn shared_windows(&self) -> bool {
        false
    }
    /// Whether the member may have messages sent this way (a shared destination may be
    /// for some members only).
    fn serves(&self, _userid: &UserId) -> bool {
        true
    }
    /// `Some` when the channel reaches a member at an address they bind and verify;
    /// `None` when it reaches every member by userid.
    fn binding(&self) -> Option<&Binding> {
        None
    }
    /// Sends one message to `message.address` (a bound channel) or `message.userid`.
    fn deliver<'a>(&'a self, message: &'a Outbound) -> BoxFuture<'a, Result<(), ChannelError>>;
    /// Checks the channel's credentials and reachability without sending anything, for
    /// start-up and `pushbot doctor`: `Ok` with what was checked, `Err` with what is wrong.
    fn check(&self) -> BoxFuture<'_, Result<String, CheckError>>;
    /// How long from now every delivery would fail at once with a failure already seen,
    /// without reaching the channel (WeCom's `gettoken` cooldown). Such an answer is not a
    /// try: a channel that is down is not probed before then.
    fn cooldown(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Why [`Channel::check`] found a channel unusable, or could not tell.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// WeCom's `gettoken` refused the app's credentials, or did not answer.
    #[error(transparent)]
    WeCom(#[from] crate::wecom::client::WeComError),
    /// The SMTP server (`host:port`) did not accept a connection.
    #[error("{server} did not accept a connection")]
    SmtpRefused { server: String },
    /// Connecting or logging in to the SMTP server (`host:port`) failed.
    #[error("{server}: {}", crate::error::chain(.error))]
    Smtp {
        server: String,
        error: lettre::transport::smtp::Error,
    },
    /// What must be fixed before sending works, as the provider's or destination's check
    /// put it.
    #[error("{0}")]
    Failed(String),
    /// The check could not be made (none exists, or the service did not answer).
    #[error("{0}")]
    Unavailable(String),
}

/// Builds the channel for a destination a member added in the chat, when a message is
/// about to go there: `(its identity, the channel)`; `Err` says why it cannot be used.
pub trait MemberChannels: Send + Sync {
    fn build(
        &self,
        owner: &UserId,
        stored: &crate::store::StoredDestination,
    ) -> Result<(String, Arc<dyn Channel>), destinations::DestinationError>;
}

/// What a sender asked to deliver.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub userid: UserId,
    pub title: Option<String>,
    pub content: Option<String>,
    /// The sender's `Idempotency-Key`: a repeat within 24 h creates nothing.
    pub idempotency_key: Option<String>,
    /// The digest of what determined the message (the sender's request): a key repeated
    /// with another digest is [`AcceptError::KeyReused`].
    pub request_digest: Option<String>,
    /// The channels to try, in order (see [`Outbox::route`]).
    pub route: Route,
    /// Deliver on every channel of the route, not only until one delivers.
    pub deliver_all: bool,
    /// A fixed address on the route's one channel instead of the member's bound one: a
    /// verification code, to the address being bound.
    pub address_to: Option<String>,
    /// The content's syntax.
    pub format: Format,
    /// The member's chosen look; `None`: `delivery.format`.
    pub look: Option<Look>,
    /// A link the sender wants opened.
    pub url: Option<String>,
    /// Images and files already stored (`Store::put_blob`), in the order they are sent.
    /// Committed with the message, in the same transaction.
    pub attachments: Vec<crate::store::Attachment>,
    /// When to deliver it (the sender's `delay`/`at`, or the end of the member's quiet
    /// hours); `None`, or a time that has come: at once. A message due later is stored
    /// `scheduled`, in no lane, and released into its lane when due.
    pub deliver_at: Option<UnixMillis>,
    /// The sender marked it urgent (`Urgency::Urgent`): quiet hours let it through.
    pub urgent: bool,
    /// Why it waits, when `deliver_at` is not the sender's: [`Held::Quiet`].
    ///
    /// [`Held::Quiet`]: crate::store::Held::Quiet
    pub held: Option<crate::store::Held>,
    /// The message this one sends again (a resend from the console or
    /// `POST /messages/{id}/resend`); `None` for a new message.
    pub resent_from: Option<MessageId>,
    /// The push token the sender was found by, when it must still be the member's as the
    /// message is stored (see [`crate::store::Store::insert_message_verified`]).
    pub verify_token: Option<crate::domain::PushToken>,
    /// The sender asked for an acknowledgement (`ack=true`, `escalate=…`): stored with the
    /// message (its `acks` row).
    pub ack: Option<crate::store::AckAsk>,
}

impl NewMessage {
    /// `old` sent again as a new message that names it (`resent_from`): its title, content,
    /// format, look, link, images and files (`attachments`, the same stored files), on
    /// `route`, with `key` as its idempotency key — a repeat finds the first instead of
    /// sending twice.
    pub fn again(
        old: &Message,
        route: Route,
        key: String,
        attachments: Vec<crate::store::Attachment>,
    ) -> Self {
        Self {
            userid: old.userid.clone(),
            title: old.title.clone(),
            content: old.content.clone(),
            idempotency_key: Some(key.clone()),
            request_digest: Some(key),
            route,
            deliver_all: old.deliver_all,
            address_to: None,
            format: old.format,
            look: Some(old.look),
            url: old.url.clone(),
            attachments,
            deliver_at: None,
            urgent: old.urgent,
            held: None,
            resent_from: Some(old.id.clone()),
            verify_token: None,
            ack: None,
        }
    }
}

/// What a sender asked for with `channel=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelChoice {
    /// No choice: the member's own order, else `delivery.fallback`.
    Default,
    /// These channels, in this order, each only if the one before could not deliver.
    Order(Route),
    /// Every channel the member can be reached on.
    All,
}

impl ChannelChoice {
    /// `wecom`, `email`, `wecom,email`, `all`; empty means [`ChannelChoice::Default`].
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self::Default);
        }
        if text.eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        Route::parse(text).map(Self::Order)
    }
}

/// What the route of a member's message depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// Whose message it is.
    pub userid: Option<UserId>,
    /// The channels on which the member has a bound address.
    pub bound: Vec<ChannelName>,
    /// The member's own channel order (`fallback …` in the chat).
    pub own_order: Option<Route>,
}

/// Why [`Outbox::route`] found no route for a message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unroutable {
    /// The sender named a destination that neither the server nor the member has.
    #[error(transparent)]
    Unknown(#[from] UnknownChannel),
    /// None of the channels the sender asked for (`asked`, or all of them) can reach the
    /// member: why not, for each.
    #[error("cannot deliver on channel {}: {}", .asked.to_stored(), sentences(.blocked))]
    Blocked { asked: Route, blocked: Vec<Blocked> },
    /// No channel this server has reaches members without an address (a server without
    /// WeCom is not configurable: a bug).
    #[error("no channel reaches members without an address")]
    NoDefault,
}

/// Why one channel of a route cannot take a member's message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Blocked {
    #[error("{} is not configured on this server", .0.in_sentence())]
    NotConfigured(ChannelName),
    /// The channel needs an address the member has not bound.
    #[error("{}", .0.missing())]
    NotBound(Binding),
    /// The channel does not serve the member (a shared destination for some members).
    #[error("{} cannot reach this member", .0.label())]
    NotServed(ChannelName),
}

/// `a; b; c`.
fn sentences(blocked: &[Blocked]) -> String {
    let texts: Vec<String> = blocked.iter().map(Blocked::to_string).collect();
    texts.join("; ")
}

/// The stored message; `duplicate` when an earlier message with the same idempotency key
/// was found instead of a new one created.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub message: Message,
    pub duplicate: bool,
    /// A group message (issue 29): `message` then stands for the whole (its id is the
    /// group message's, what the sender follows), and this says for how many.
    pub group: Option<GroupAccepted>,
}

/// What a group message was accepted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupAccepted {
    /// Every member the group had at acceptance: one copy each.
    pub recipients: i64,
    /// Of those, members who muted the group (their copies are `muted`, never sent).
    pub muted: i64,
    /// Of those, members the sender's choice of channels cannot reach (their copies are
    /// `failed` from the start, and counted as failed then).
    pub unroutable: i64,
}

/// One recipient's copy of a group message, as the sending route decided it.
#[derive(Debug, Clone)]
pub struct GroupCopy {
    /// Built exactly as a personal message to the member would be (their route, look,
    /// quiet hours, clock).
    pub message: NewMessage,
    pub state: CopyState,
}

/// What becomes of one recipient's copy at acceptance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyState {
    /// Queued (or scheduled) in the member's lane like any of their messages.
    Send,
    /// The member muted the group: stored `muted`, never sent.
    Muted,
    /// None of the channels the sender named can reach this member: stored `failed`,
    /// saying why (the other members still get it).
    Unroutable(String),
}

/// A message sent with a group's token.
#[derive(Debug, Clone)]
pub struct NewGroupMessage {
    pub group_id: String,
    pub group_name: String,
    /// Per group token, as [`NewMessage::idempotency_key`] is per member.
    pub idempotency_key: Option<String>,
    pub request_digest: Option<String>,
    /// One per member, in the group's join order.
    pub copies: Vec<GroupCopy>,
}

/// Why a message was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The idempotency key was used (within 24 h) for a message that differs: nothing was
    /// stored; `first` is that message.
    #[error("idempotency key reused for a different message (first: {first})")]
    KeyReused { first: MessageId },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The first message with the key, unless the request differs from it. A message stored
/// before digests were kept (`None`) is taken as the same request, as it was then.
fn repeat_of(first: Message, digest: Option<&str>) -> Result<Accepted, AcceptError> {
    match (first.idempotency_digest.as_deref(), digest) {
        (Some(stored), Some(digest)) if stored != digest => {
            Err(AcceptError::KeyReused { first: first.id })
        }
        _ => Ok(Accepted {
            message: first,
            duplicate: true,
            group: None,
        }),
    }
}

/// As [`repeat_of`], for a group message.
fn group_repeat_of(
    first: crate::store::GroupSend,
    digest: Option<&str>,
) -> Result<Accepted, AcceptError> {
    match (first.idempotency_digest.as_deref(), digest) {
        (Some(stored), Some(digest)) if stored != digest => {
            Err(AcceptError::KeyReused { first: first.id })
        }
        _ => Ok(Accepted {
            group: Some(GroupAccepted {
                recipients: first.recipients,
                muted: 0,
                unroutable: 0,
            }),
            message: group_stand_in(&first),
            duplicate: true,
        }),
    }
}

/// The message that stands for a group message in an answer: its id, time and status.
fn group_stand_in(send: &crate::store::GroupSend) -> Message {
    Message::new_queued(
        send.id.clone(),
        UserId::new(""),
        None,
        None,
        send.created_at,
        send.created_at,
    )
}

/// Handle to the outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Scheduler>,
    /// The channels this server has, in route order.
    configured: Arc<[ChannelName]>,
    registry: Arc<[Arc<dyn Channel>]>,
    /// Builds the destinations members add in the chat.
    destinations: Arc<destinations::Factory>,
}

impl Outbox {
    pub fn new(
        store: Store,
        channels: Vec<Arc<dyn Channel>>,
        destinations: Arc<destinations::Factory>,
        settings: DeliverySettings,
        owner: String,
        metrics: Metrics,
        public_base: Arc<str>,
    ) -> Self {
        let configured: Arc<[ChannelName]> = channels.iter().map(|c| c.name()).collect();
        let registry: Arc<[Arc<dyn Channel>]> = channels.iter().cloned().collect();
        Self {
            inner: Arc::new(Scheduler::new(
                store,
                channels,
                Arc::clone(&destinations) as Arc<dyn MemberChannels>,
                settings,
                owner,
                metrics,
                public_base,
            )),
            configured,
            registry,
            destinations,
        }
    }

    /// Builds the destinations members add in the chat.
    pub fn destinations(&self) -> &destinations::Factory {
        &self.destinations
    }

    /// The configured channel of that name.
    pub fn channel(&self, name: ChannelName) -> Option<&Arc<dyn Channel>> {
        self.registry.iter().find(|c| c.name() == name)
    }

    /// How a member binds an address on the channel, when it is configured and needs one.
    pub fn binding(&self, name: ChannelName) -> Option<&Binding> {
        self.channel(name).and_then(|c| c.binding())
    }

    /// Whether the member, with these bound channels, can be reached on `channel` here.
    pub fn reaches(
        &self,
        channel: ChannelName,
        userid: Option<&UserId>,
        bound: &[ChannelName],
    ) -> bool {
        match self.channel(channel) {
            Some(c) => {
                (c.binding().is_none() || bound.contains(&channel))
                    && userid.is_none_or(|u| c.serves(u))
            }
            // A destination the member added in the chat (`bound` lists them too).
            None => matches!(channel, ChannelName::Dest(_)) && bound.contains(&channel),
        }
    }

    /// `delivery.fallback`: the order of a member who chose none.
    pub fn default_route(&self) -> &Route {
        &self.inner.settings.fallback
    }

    /// `delivery.format`: how messages look for members who have not chosen.
    pub fn default_look(&self) -> Look {
        self.inner.settings.format
    }

    /// `delivery.max_delay`: the furthest ahead a sender may schedule a message.
    pub fn max_delay(&self) -> std::time::Duration {
        self.inner.settings.max_delay
    }

    /// `delivery.utc_offset`: the time zone (seconds east of UTC) of members who have not
    /// set their own, for clock times such as ntfy's `X-At: 10am`.
    pub fn utc_offset(&self) -> i32 {
        self.inner.settings.utc_offset
    }

    /// Whether this server has the channel.
    pub fn has_channel(&self, channel: ChannelName) -> bool {
        self.configured.contains(&channel)
    }

    /// The route a message takes: the sender's choice, else the member's own order, else
    /// `delivery.fallback` — keeping only channels this server has and the member can be
    /// reached on (e-mail needs a bound address). `Err` (a sentence for the sender) when
    /// the sender named channels none of which can reach the member. The bool: deliver
    /// on every channel of the route.
    pub fn route(
        &self,
        choice: &ChannelChoice,
        reach: &Reach,
    ) -> Result<(Route, bool), Unroutable> {
        let usable = |c: ChannelName| self.reaches(c, reach.userid.as_ref(), &reach.bound);
        let why_not = |asked: &Route| Unroutable::Blocked {
            asked: asked.clone(),
            blocked: asked
                .channels()
                .iter()
                .map(|c| match self.channel(*c) {
                    None => Blocked::NotConfigured(*c),
                    Some(channel) => channel
                        .binding()
                        .map_or(Blocked::NotServed(*c), |b| Blocked::NotBound(*b)),
                })
                .collect(),
        };
        match choice {
            ChannelChoice::Order(asked) => {
                // A name that is neither a built-in channel nor a destination here is a
                // typo: refused, not quietly dropped from the order.
                if let Some(unknown) = asked.channels().iter().find(|c| {
                    matches!(c, ChannelName::Dest(_))
                        && self.channel(**c).is_none()
                        && !reach.bound.contains(c)
                }) {
                    return Err(Unroutable::Unknown(UnknownChannel {
                        name: unknown.as_str().to_owned(),
                    }));
                }
                asked
                    .filter(usable)
                    .map(|r| (r, false))
                    .ok_or_else(|| why_not(asked))
            }
            ChannelChoice::All => {
                let all = Route::new(ChannelName::ALL.to_vec())
                    .unwrap_or_else(|| unreachable!("ChannelName::ALL is not empty"));
                all.filter(usable)
                    .map(|r| (r, true))
                    .ok_or_else(|| why_not(&all))
            }
            ChannelChoice::Default => {
                let order = reach
                    .own_order
                    .as_ref()
                    .unwrap_or(&self.inner.settings.fallback);
                // A member whose own order names only channels they cannot be reached on
                // (an unbound address) still gets the first channel that needs no address
                // (WeCom).
                let fallback = self
                    .registry
                    .iter()
                    .find(|c| c.binding().is_none())
                    .and_then(|c| Route::new(vec![c.name()]))
                    .ok_or(Unroutable::NoDefault)?;
                Ok((order.filter(usable).unwrap_or(fallback), false))
            }
        }
    }

    /// Stores the message durably (its lane with it) and returns the stored record. The
    /// scheduler is woken by the commit itself, so whether the caller is still waiting
    /// does not matter to delivery. A message due later (`deliver_at`) is stored
    /// `scheduled`, without a lane, and the scheduler told when it is due.
    pub async fn accept(&self, new: NewMessage) -> Result<Accepted, AcceptError> {
        let store = &self.inner.store;
        let now = UnixMillis::now();
        if let Some(key) = &new.idempotency_key
            && let Some(first) = store
                .message_by_idempotency_key(&new.userid, key, now)
                .await?
        {
            return repeat_of(first, new.request_digest.as_deref());
        }
        let verify = new.verify_token.clone();
        let (message, attachments) = self.to_store(new, now);
        let mut expired_keys = false;
        loop {
            match store
                .insert_message_verified(message.clone(), attachments.clone(), verify.clone())
                .await
            {
                Ok(()) => {
                    if let Some(at) = message.deliver_at
                        && message.status == crate::store::MessageStatus::Scheduled
                    {
                        self.inner.scheduled_for(at);
                    }
                    return Ok(Accepted {
                        message,
                        duplicate: false,
                        group: None,
                    });
                }
                // A concurrent request with the same key won, or the key was last used
                // more than 24 h ago and not yet forgotten.
                Err(StoreError::DuplicateKey) => {
                    if let Some(key) = &message.idempotency_key
                        && let Some(first) = store
                            .message_by_idempotency_key(&message.userid, key, now)
                            .await?
                    {
                        return repeat_of(first, message.idempotency_digest.as_deref());
                    }
                    if expired_keys {
                        return Err(StoreError::DuplicateKey.into());
                    }
                    store.expire_idempotency_keys(now).await?;
                    expired_keys = true;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Stores a group message durably: its `group_sends` row and one copy per member, each
    /// with its lane, in one transaction (see [`Store::insert_group_send`]); answers once
    /// that is committed. An idempotency key repeated for the group within 24 h finds the
    /// first message, as [`Outbox::accept`] does for a member's.
    pub async fn accept_group(&self, new: NewGroupMessage) -> Result<Accepted, AcceptError> {
        let store = &self.inner.store;
        let now = UnixMillis::now();
        if let Some(key) = &new.idempotency_key
            && let Some(first) = store.group_send_by_key(&new.group_id, key, now).await?
        {
            return group_repeat_of(first, new.request_digest.as_deref());
        }
        let id = MessageId::generate();
        let recipients = i64::try_from(new.copies.len()).unwrap_or(i64::MAX);
        let (mut muted, mut unroutable) = (0, 0);
        let mut copies = Vec::with_capacity(new.copies.len());
        let mut first_due: Option<UnixMillis> = None;
        for copy in new.copies {
            let (mut message, attachments) = self.to_store(copy.message, now);
            message.group_send = Some(id.clone());
            match copy.state {
                CopyState::Send => {
                    if let Some(at) = message.deliver_at
                        && message.status == crate::store::MessageStatus::Scheduled
                    {
                        first_due = Some(first_due.map_or(at, |due| due.min(at)));
                    }
                }
                CopyState::Muted => {
                    muted += 1;
                    message.status = crate::store::MessageStatus::Muted;
                    message.held = None;
                    message.last_error = Some("the member muted this group".into());
                }
                CopyState::Unroutable(why) => {
                    unroutable += 1;
                    message.status = crate::store::MessageStatus::Failed;
                    message.held = None;
                    message.last_error = Some(why);
                }
            }
            copies.push((message, attachments));
        }
        let send = crate::store::GroupSend {
            id,
            group_id: new.group_id,
            group_name: new.group_name,
            created_at: now,
            recipients,
            idempotency_digest: new.request_digest.filter(|_| new.idempotency_key.is_some()),
            idempotency_key: new.idempotency_key,
        };
        // Without a key nothing can collide: the copies are handed over, not copied (a
        // fan-out to 1,000 members would otherwise copy its content 1,000 times more).
        // What the sender hears once every copy is committed.
        let committed = |send: &crate::store::GroupSend| {
            if let Some(at) = first_due {
                self.inner.scheduled_for(at);
            }
            Accepted {
                message: group_stand_in(send),
                duplicate: false,
                group: Some(GroupAccepted {
                    recipients,
                    muted,
                    unroutable,
                }),
            }
        };
        let Some(key) = send.idempotency_key.clone() else {
            store.insert_group_send(send.clone(), copies).await?;
            return Ok(committed(&send));
        };
        let mut expired_keys = false;
        loop {
            match store.insert_group_send(send.clone(), copies.clone()).await {
                Ok(()) => return Ok(committed(&send)),
                Err(StoreError::DuplicateKey) => {
                    if let Some(first) = store.group_send_by_key(&send.group_id, &key, now).await? {
                        return group_repeat_of(first, send.idempotency_digest.as_deref());
                    }
                    if expired_keys {
                        return Err(StoreError::DuplicateKey.into());
                    }
                    store.expire_group_idempotency_keys(now).await?;
                    expired_keys = true;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// The message row a [`NewMessage`] becomes (not yet stored), and its attachments.
    fn to_store(
        &self,
        new: NewMessage,
        now: UnixMillis,
    ) -> (Message, Vec<crate::store::Attachment>) {
        let mut message = Message::new_queued(
            MessageId::generate(),
            new.userid,
            new.title,
            new.content,
            now,
            now + self.inner.settings.retry_window,
        );
        message.idempotency_digest = new.request_digest.filter(|_| new.idempotency_key.is_some());
        message.idempotency_key = new.idempotency_key;
        message.route = new.route;
        message.deliver_all = new.deliver_all;
        message.address_to = new.address_to;
        message.format = new.format;
        message.look = new.look.unwrap_or(self.inner.settings.format);
        message.url = new.url;
        message.page_key = Some(crate::token::page_key());
        message.urgent = new.urgent;
        message.resent_from = new.resent_from;
        message.ack = new.ack;
        if let Some(at) = new.deliver_at.filter(|at| *at > now) {
            message.status = crate::store::MessageStatus::Scheduled;
            message.deliver_at = Some(at);
            message.next_attempt_at = at;
            message.held = new.held;
        }
        (message, new.attachments)
    }

    /// Takes back this instance's claims from an earlier run and starts the scheduler.
    /// Nothing is loaded into memory: the HTTP server answers at once, however long the
    /// queue.
    pub async fn start(&self) -> Result<(), StoreError> {
        self.inner.start().await
    }

    /// How long ago the scheduler loop last began a pass, and the longest that may be
    /// before `/healthz` calls delivery stalled (`delivery.stall_after`).
    pub fn scheduler_pass(&self) -> (std::time::Duration, std::time::Duration) {
        (self.inner.last_pass_age(), self.inner.settings.stall_after)
    }

    /// Each configured channel's health as this instance's scheduler sees it (the
    /// operators' page), in route order.
    pub fn channel_health(&self) -> Vec<(ChannelName, health::Snapshot)> {
        self.inner.channel_health()
    }

    /// The destinations members added in the chat that are down, or were down since this
    /// instance first used them: member, name, health.
    pub fn member_channel_health(&self) -> Vec<(UserId, ChannelName, health::Snapshot)> {
        self.inner.member_channel_health()
    }

    /// The channels configured on this server, in route order.
    pub fn channels(&self) -> &[ChannelName] {
        &self.configured
    }

    /// Shutdown has begun: from now on no delivery attempt starts. Messages accepted from
    /// now on stay queued for the next start. Idempotent.
    pub fn stop_attempts(&self) {
        self.inner.stop.cancel();
    }

    /// Stops attempts (if not done yet) and waits up to `delivery.shutdown_grace` for
    /// those in flight to finish and be recorded. Any still running then are cut off and
    /// handed back to the queue (recorded as a retry saying so); then this instance's
    /// claims are released, so that the store can be closed right after.
    pub async fn shutdown(&self) {
        self.inner.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_with(digest: Option<&str>) -> Message {
        let mut m = Message::new_queued(
            MessageId::generate(),
            UserId::new("u"),
            Some("t".into()),
            None,
            UnixMillis::from_millis(0),
            UnixMillis::from_millis(1),
        );
        m.idempotency_key = Some("k".into());
        m.idempotency_digest = digest.map(str::to_owned);
        m
    }

    #[test]
    fn a_repeat_must_be_the_same_request() {
        let same = repeat_of(first_with(Some("aa")), Some("aa")).expect("same request");
        assert!(same.duplicate);
        let first = first_with(Some("aa"));
        let id = first.id.clone();
        match repeat_of(first, Some("bb")) {
            Err(AcceptError::KeyReused { first }) => assert_eq!(first, id),
            other => panic!("another request with the key: {other:?}"),
        }
        // Rows stored before digests were kept answer as before.
        assert!(repeat_of(first_with(None), Some("bb")).is_ok());
    }
}
