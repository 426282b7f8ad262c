//! Destinations (issue #18): group chats and other apps a message can go to besides a
//! member's own channels — a WeCom group robot, a DingTalk custom robot, a Feishu/Lark
//! custom bot, a Telegram chat through the server's bot, and a generic signed webhook.
//!
//! This module is the protocol layer only: what each kind accepts as an address
//! ([`parse_chat_url`], [`Destination::from_config`], [`Destination::from_stored`]), how a
//! message is rendered for it, how requests are signed, how the service's answer is
//! classified ([`DestError`]), and one HTTP call per send ([`Destination::send`]). Routing,
//! lanes, limits enforcement, storage and chat commands are the caller's.
//!
//! - **Addresses carry secrets.** A robot's key or token is the whole of its security:
//!   [`Destination`]'s `Debug` and [`Destination::masked`] never show it, reasons never
//!   contain it (each kind scrubs what the service echoes back), and requests are rebuilt
//!   from the *configured* base of each kind ([`Bases`]) plus the key alone, so nothing a
//!   member types can make pushbot POST to another host, port or path.
//! - **Pure parts are tested without I/O:** rendering, signing (a function of the timestamp),
//!   classification of literal answers. [`Destination::send`] adds only the HTTP call.
//! - **At least once.** Robots and webhooks have no idempotency; a request that may have
//!   reached the service (a timeout after it was written) is reported transient, so the
//!   message is sent again — a duplicate in a group chat is better than a lost alert.
//!
//! | kind | address | limits | format |
//! |---|---|---|---|
//! | [`wecom_robot`] | `https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…` | 20/min | `markdown` ≤ 4096 B, else `text` ≤ 2048 B |
//! | [`dingtalk`] | `https://oapi.dingtalk.com/robot/send?access_token=…` (+ `SEC…` secret) | 20/min (over it: blocked 10 min) | `markdown` or `text`, body ≤ 20000 B |
//! | [`feishu`] | `https://open.feishu.cn/open-apis/bot/v2/hook/…` or `open.larksuite.com` (+ secret) | 100/min and 5/s | `post` or `text`, body ≤ 20 KB |
//! | [`telegram`] | a chat id (`-100…`, `@channel`), the server's bot | 20/min per group, 1/s per chat | `HTML`, ≤ 4096 characters |
//! | [`webhook`] | any URL, from the config only (+ `whsec_…` secret) | none | JSON, Standard Webhooks signature |

//! # Wiring (for the caller)
//!
//! - **A route entry** names a destination; the destination itself is a [`Destination`]
//!   (kind, address, optional secret), built from the config ([`Destination::from_config`])
//!   or from the chat ([`parse_chat_url`], then [`Destination::with_secret`]) and stored as
//!   [`Destination::expose_address`] + [`Destination::expose_secret`] (both secrets), read
//!   back with [`Destination::from_stored`] (which checks the address against the bases again).
//! - **Lanes and limits** are per robot, not per destination name: key them by
//!   [`Destination::lane_key`] and shape them by [`Kind::rate_windows`] (and
//!   [`Kind::penalty`]); shape digests by [`Kind::capabilities`].
//! - **A send** is [`Destination::send`] with an [`Envelope`] (the message, its page URL, when
//!   it was accepted); its [`DestError`] converts into a [`ChannelError`]. Honour
//!   [`DestError::retry_after`]. On [`Delivered::ChatMoved`], store the new chat id.
//! - **Health/doctor**: [`Destination::check`] (Telegram only; the others say a test message
//!   is the check). Log and show [`Destination::masked`], never the address.
//! - **The HTTP client**: one without redirects (`reqwest::redirect::Policy::none()`) keeps
//!   every request on the address checked here; Telegram may need the proxy.

mod address;
mod channel;
pub mod dingtalk;
pub mod feishu;
mod http;
pub mod telegram;
mod text;
pub mod webhook;
pub mod wecom_robot;

pub use channel::{DestinationChannel, Factory};

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use url::Url;

use super::limits::RateWindow;
use super::{Attachments, Capabilities, ChannelError, CheckError};
use crate::domain::Outbound;
use crate::time::UnixMillis;

pub use address::{AddressError, Refusal, SecretError, parse_chat_url};

/// The kinds of destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    WeComRobot,
    DingTalk,
    Feishu,
    Telegram,
    Webhook,
}

/// What a kind can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest text (title, content and links, as readable text) one message shows;
    /// a digest is cut to it.
    pub max_text_bytes: usize,
    /// Whether the service renders markdown (markdown content is sent as such).
    pub markdown: bool,
    /// The largest request body the service takes, when it has a limit.
    pub max_body_bytes: Option<usize>,
}

const MINUTE: Duration = Duration::from_secs(60);
const SECOND: Duration = Duration::from_secs(1);

/// WeCom: "每个机器人发送的消息不能超过20条/分钟".
const WECOM_ROBOT_WINDOWS: [RateWindow; 1] = [RateWindow {
    count: 20,
    per: MINUTE,
}];
/// DingTalk: "每个机器人每分钟最多发送20条。如果超过20条，会限流10分钟".
const DINGTALK_WINDOWS: [RateWindow; 1] = [RateWindow {
    count: 20,
    per: MINUTE,
}];
/// Feishu: 100 requests a minute and 5 a second per robot.
const FEISHU_WINDOWS: [RateWindow; 2] = [
    RateWindow {
        count: 5,
        per: SECOND,
    },
    RateWindow {
        count: 100,
        per: MINUTE,
    },
];
/// Telegram's bot FAQ: about one message a second in one chat, at most 20 a minute in a
/// group.
const TELEGRAM_WINDOWS: [RateWindow; 2] = [
    RateWindow {
        count: 1,
        per: SECOND,
    },
    RateWindow {
        count: 20,
        per: MINUTE,
    },
];

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::WeComRobot,
        Kind::DingTalk,
        Kind::Feishu,
        Kind::Telegram,
        Kind::Webhook,
    ];

    /// As in the config (`kind = "wecom-robot"`) and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WeComRobot => "wecom-robot",
            Self::DingTalk => "dingtalk",
            Self::Feishu => "feishu",
            Self::Telegram => "telegram",
            Self::Webhook => "webhook",
        }
    }

    /// Name for people, in log lines and reasons.
    pub fn label(self) -> &'static str {
        match self {
            Self::WeComRobot => "WeCom group robot",
            Self::DingTalk => "DingTalk robot",
            Self::Feishu => "Feishu bot",
            Self::Telegram => "Telegram",
            Self::Webhook => "Webhook",
        }
    }

    /// Name for people in the chat.
    pub fn label_zh(self) -> &'static str {
        match self {
            Self::WeComRobot => "企业微信群机器人",
            Self::DingTalk => "钉钉群机器人",
            Self::Feishu => "飞书群机器人",
            Self::Telegram => "Telegram",
            Self::Webhook => "Webhook",
        }
    }

    /// The service's own limits per robot (Telegram: per chat), which it enforces by
    /// refusing or, worse, by blocking the robot: never send past them. `[]`: none.
    pub fn rate_windows(self) -> &'static [RateWindow] {
        match self {
            Self::WeComRobot => &WECOM_ROBOT_WINDOWS,
            Self::DingTalk => &DINGTALK_WINDOWS,
            Self::Feishu => &FEISHU_WINDOWS,
            Self::Telegram => &TELEGRAM_WINDOWS,
            Self::Webhook => &[],
        }
    }

    /// How long the service blocks a robot that went past its limit (DingTalk: 10 min).
    pub fn penalty(self) -> Option<Duration> {
        match self {
            Self::DingTalk => Some(dingtalk::THROTTLED_FOR),
            _ => None,
        }
    }

    pub fn limits(self) -> Limits {
        match self {
            Self::WeComRobot => Limits {
                max_text_bytes: wecom_robot::MAX_TEXT_BYTES,
                markdown: true,
                max_body_bytes: None,
            },
            Self::DingTalk => Limits {
                max_text_bytes: dingtalk::MAX_TEXT_BYTES,
                markdown: true,
                max_body_bytes: Some(dingtalk::MAX_BODY_BYTES),
            },
            Self::Feishu => Limits {
                max_text_bytes: feishu::MAX_TEXT_BYTES,
                markdown: false,
                max_body_bytes: Some(feishu::MAX_BODY_BYTES),
            },
            Self::Telegram => Limits {
                // 4096 characters; a byte count is never smaller.
                max_text_bytes: telegram::MAX_TEXT_UNITS,
                markdown: true,
                max_body_bytes: None,
            },
            Self::Webhook => Limits {
                max_text_bytes: webhook::MAX_TEXT_BYTES,
                markdown: false,
                max_body_bytes: None,
            },
        }
    }

    /// As the scheduler's [`Capabilities`]: every kind takes digests, and links a
    /// message's images and files (its page offers them).
    pub fn capabilities(self) -> Capabilities {
        Capabilities {
            max_text_bytes: self.limits().max_text_bytes,
            digests: true,
            attachments: Attachments::Linked,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = UnknownKind;

    /// `wecom-robot`, `dingtalk`, `feishu`, `telegram`, `webhook`, in any case, with `_`
    /// for `-`, and a few common other names (`lark`, `dingding`, `tg`).
    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        let name = s.trim().to_ascii_lowercase().replace('_', "-");
        Ok(match name.as_str() {
            "wecom-robot" | "wecom-bot" | "wecombot" | "wework-robot" => Self::WeComRobot,
            "dingtalk" | "dingding" => Self::DingTalk,
            "feishu" | "lark" => Self::Feishu,
            "telegram" | "tg" => Self::Telegram,
            "webhook" => Self::Webhook,
            _ => return Err(UnknownKind(s.trim().to_owned())),
        })
    }
}

/// A destination kind that is none of ours (as typed, trimmed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown destination kind {0:?}: use one of wecom-robot, dingtalk, feishu, telegram, webhook"
)]
pub struct UnknownKind(pub String);

/// Why a destination cannot be made (from the chat, the config or storage).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error(transparent)]
    Kind(#[from] UnknownKind),
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// Where each kind's service is. The chat accepts only addresses on these bases, and every
/// request is built from them. Defaults: the real services; tests point them at local mocks.
/// A base may have a path (a reverse proxy's prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bases {
    /// `[destinations] wecom_robot_base`.
    pub wecom_robot: Url,
    /// `[destinations] dingtalk_base`.
    pub dingtalk: Url,
    /// `[destinations] feishu_base`.
    pub feishu: Url,
    /// Lark (Feishu outside China): `open.larksuite.com`.
    pub lark: Url,
    /// `[destinations] telegram_base`: the Bot API (or a reverse proxy of it).
    pub telegram: Url,
}

pub const DEFAULT_WECOM_ROBOT_BASE: &str = "https://qyapi.weixin.qq.com";
pub const DEFAULT_DINGTALK_BASE: &str = "https://oapi.dingtalk.com";
pub const DEFAULT_FEISHU_BASE: &str = "https://open.feishu.cn";
pub const DEFAULT_LARK_BASE: &str = "https://open.larksuite.com";
pub const DEFAULT_TELEGRAM_BASE: &str = "https://api.telegram.org";

impl Default for Bases {
    fn default() -> Self {
        let url = |literal: &str| match Url::parse(literal) {
            Ok(url) => url,
            Err(_) => unreachable!("the default bases are valid URLs"),
        };
        Self {
            wecom_robot: url(DEFAULT_WECOM_ROBOT_BASE),
            dingtalk: url(DEFAULT_DINGTALK_BASE),
            feishu: url(DEFAULT_FEISHU_BASE),
            lark: url(DEFAULT_LARK_BASE),
            telegram: url(DEFAULT_TELEGRAM_BASE),
        }
    }
}

/// How sends are made: the server's Telegram bot and the time one call may take.
#[derive(Clone)]
pub struct Settings {
    /// `[destinations] telegram_bot_token`: Telegram destinations need it.
    pub telegram_bot_token: Option<SecretString>,
    /// Each call's own limit, whatever the client's timeout.
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            telegram_bot_token: None,
            timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field(
                "telegram_bot_token",
                &self.telegram_bot_token.as_ref().map(|_| "***"),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// One destination: a robot, a chat or a webhook. The key or token inside never shows in
/// `Debug`.
#[derive(Clone)]
pub struct Destination {
    kind: Kind,
    /// The base requests go to: the configured base of the kind (robots, Telegram), or the
    /// webhook's URL itself.
    base: Url,
    /// Robots: the key, access token or hook id; Telegram: the chat id; webhook: the URL.
    address: SecretString,
    /// DingTalk `SEC…`, Feishu signing secret, webhook `whsec_…`.
    secret: Option<SecretString>,
}

impl Destination {
    fn new(kind: Kind, base: Url, address: String) -> Self {
        Self {
            kind,
            base,
            address: SecretString::from(address),
            secret: None,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Telegram: the chat id (not a secret).
    pub fn chat_id(&self) -> Option<&str> {
        (self.kind == Kind::Telegram).then(|| self.address.expose_secret())
    }

    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    /// The same destination signing with `secret` (DingTalk `SEC…`, Feishu's 签名校验
    /// secret, a webhook's `whsec_…`), or why it cannot.
    pub fn with_secret(mut self, secret: &str) -> Result<Self, SecretError> {
        let secret = address::parse_secret(self.kind, secret)?;
        self.secret = Some(SecretString::from(secret));
        Ok(self)
    }

    /// A destination from the config (`[destinations.NAME]`): robots by `url` (on their
    /// configured base, as in the chat), Telegram by `chat_id`, a webhook by any http(s)
    /// `url` (the operator's choice: it may be internal).
    pub fn from_config(
        kind: Kind,
        url: Option<&str>,
        chat_id: Option<&str>,
        secret: Option<&str>,
        bases: &Bases,
    ) -> Result<Self, DestinationError> {
        let missing = |field| AddressError::Missing { kind, field };
        let destination = match kind {
            Kind::Telegram => {
                let chat_id = chat_id.ok_or_else(|| missing("chat_id"))?;
                address::parse_chat_id(chat_id, bases)?
            }
            Kind::Webhook => {
                let url = url.ok_or_else(|| missing("url"))?;
                address::parse_webhook_url(url)?
            }
            _ => {
                let url = url.ok_or_else(|| missing("url"))?;
                parse_chat_url(Some(kind), url, bases)?
            }
        };
        match secret.map(str::trim).filter(|s| !s.is_empty()) {
            Some(secret) => Ok(destination.with_secret(secret)?),
            None => Ok(destination),
        }
    }

    /// What to store: robots, their URL on the configured base; Telegram, the chat id;
    /// webhook, its URL. Holds the key: store it as a secret. [`Destination::from_stored`]
    /// reads it back (and checks it again).
    pub fn expose_address(&self) -> String {
        match self.kind {
            Kind::Telegram | Kind::Webhook => self.address.expose_secret().to_owned(),
            _ => self.endpoint().to_string(),
        }
    }

    /// The stored secret, to store as a secret.
    pub fn expose_secret(&self) -> Option<&str> {
        self.secret.as_ref().map(|s| s.expose_secret())
    }

    /// A destination read back from storage ([`Destination::expose_address`],
    /// [`Destination::expose_secret`]), checked as when it was added: a robot address no
    /// longer on its configured base is refused.
    pub fn from_stored(
        kind: Kind,
        address: &str,
        secret: Option<&str>,
        bases: &Bases,
    ) -> Result<Self, DestinationError> {
        match kind {
            Kind::Telegram => Self::from_config(kind, None, Some(address), secret, bases),
            _ => Self::from_config(kind, Some(address), None, secret, bases),
        }
    }

    /// For `robots`, `status` and logs: the address with its key shortened to its first
    /// and last two characters (`…/send?key=ab…yz`); a webhook shows its origin only.
    pub fn masked(&self) -> String {
        let key = address::mask_key(self.address.expose_secret());
        match self.kind {
            Kind::WeComRobot => format!("{}/cgi-bin/webhook/send?key={key}", base_str(&self.base)),
            Kind::DingTalk => format!("{}/robot/send?access_token={key}", base_str(&self.base)),
            Kind::Feishu => format!("{}/open-apis/bot/v2/hook/{key}", base_str(&self.base)),
            Kind::Telegram => format!("telegram {}", self.address.expose_secret()),
            Kind::Webhook => address::mask_webhook(self.address.expose_secret()),
        }
    }

    /// A key naming the robot (or chat) without revealing it, the same for every
    /// destination that reaches it: the service's limits are per robot, so two members
    /// who add the same robot share one lane. `wecom-robot:3f2a…` (16 hex digits of a
    /// hash); Telegram `telegram:-100123`.
    pub fn lane_key(&self) -> String {
        use sha2::Digest as _;
        match self.kind {
            Kind::Telegram => format!("telegram:{}", self.address.expose_secret()),
            kind => {
                let mut hash = sha2::Sha256::new();
                hash.update(kind.as_str().as_bytes());
                hash.update([0]);
                hash.update(self.endpoint().as_str().as_bytes());
                let digest = hex::encode(hash.finalize());
                format!("{kind}:{}", &digest[..16])
            }
        }
    }

    /// The service's limits for this destination ([`Kind::rate_windows`]).
    pub fn rate_windows(&self) -> &'static [RateWindow] {
        self.kind.rate_windows()
    }

    /// The URL messages are posted to (robots and webhooks), with its key: never log it.
    fn endpoint(&self) -> Url {
        let key = self.address.expose_secret();
        match self.kind {
            Kind::WeComRobot => wecom_robot::endpoint(&self.base, key),
            Kind::DingTalk => dingtalk::endpoint(&self.base, key),
            Kind::Feishu => feishu::endpoint(&self.base, key),
            Kind::Telegram => self.base.clone(),
            Kind::Webhook => self.base.clone(),
        }
    }

    /// Every secret this destination holds, to scrub from reasons.
    fn secrets<'a>(&'a self, settings: &'a Settings) -> Vec<&'a str> {
        let mut secrets = vec![self.address.expose_secret()];
        if self.kind == Kind::Telegram {
            // The chat id is not secret (and short ids would scrub innocent digits).
            secrets.clear();
            if let Some(token) = &settings.telegram_bot_token {
                secrets.push(token.expose_secret());
            }
        }
        if let Some(secret) = &self.secret {
            secrets.push(secret.expose_secret());
        }
        secrets
    }

    /// Sends one message. `Ok` when the service took it; Telegram may say the group moved
    /// ([`Delivered::ChatMoved`]: the message went to the new chat; store its id).
    pub async fn send(
        &self,
        http: &reqwest::Client,
        settings: &Settings,
        envelope: &Envelope<'_>,
    ) -> Result<Delivered, DestError> {
        let secret = self.secret.as_ref().map(|s| s.expose_secret());
        let outcome = match self.kind {
            Kind::WeComRobot => {
                wecom_robot::send(http, &self.endpoint(), envelope, settings.timeout).await
            }
            Kind::DingTalk => {
                dingtalk::send(http, &self.endpoint(), secret, envelope, settings.timeout).await
            }
            Kind::Feishu => {
                feishu::send(http, &self.endpoint(), secret, envelope, settings.timeout).await
            }
            Kind::Telegram => {
                telegram::send(
                    http,
                    &self.base,
                    settings.telegram_bot_token.as_ref(),
                    self.address.expose_secret(),
                    envelope,
                    settings.timeout,
                )
                .await
            }
            Kind::Webhook => {
                webhook::send(http, &self.endpoint(), secret, envelope, settings.timeout).await
            }
        };
        let secrets = self.secrets(settings);
        outcome.map_err(|e| e.map_reason(|reason| redact(reason, &secrets)))
    }

    /// A check that sends nothing, for `pushbot doctor` and health probes. Only Telegram
    /// has one (`getMe`, `getChat`); for the robots and webhooks a test message is the
    /// check.
    pub async fn check(&self, http: &reqwest::Client, settings: &Settings) -> Check {
        let check = match self.kind {
            Kind::Telegram => {
                telegram::check(
                    http,
                    &self.base,
                    settings.telegram_bot_token.as_ref(),
                    self.address.expose_secret(),
                    settings.timeout,
                )
                .await
            }
            kind => Check::Unavailable(format!(
                "a {} cannot be checked without sending: a test message is the check",
                kind.label()
            )),
        };
        let secrets = self.secrets(settings);
        check.map_text(|text| redact(text, &secrets))
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Destination")
            .field("kind", &self.kind)
            .field("address", &self.masked())
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish()
    }
}

fn base_str(base: &Url) -> &str {
    base.as_str().trim_end_matches('/')
}

/// `path` on `base` (after the base's own path, a proxy's prefix), without query.
fn at(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    url.set_path(&format!("{}{path}", base.path().trim_end_matches('/')));
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// What to send: the message (or digest) and what the caller knows about it.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub message: &'a Outbound,
    /// The message's page (`MessageId::page_url`), when it has one: linked when the
    /// message had to be cut, and given to webhooks.
    pub page_url: Option<&'a str>,
    /// When the message was accepted, for webhooks.
    pub created_at_ms: UnixMillis,
}

/// A send the service took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    Sent,
    /// Telegram: the group became a supergroup with this chat id; the message was sent
    /// there. Store the new id (the old one no longer works).
    ChatMoved {
        chat_id: String,
    },
}

/// Why a destination did not take a message. Reasons are sentences for the sender and the
/// operator; they never contain a key, token or secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestError {
    /// Retrying cannot help until someone changes something (the key, the secret, the
    /// robot's security settings, the chat); the reason names the fix.
    Permanent { reason: String },
    /// Retrying later may succeed. `unreachable`: the destination itself is down or
    /// throttling (every message to it would fail now), so its whole lane waits.
    /// `retry_after`: how long the service asked to wait, when it said.
    Transient {
        reason: String,
        unreachable: bool,
        retry_after: Option<Duration>,
    },
}

impl DestError {
    pub fn reason(&self) -> &str {
        match self {
            Self::Permanent { reason } | Self::Transient { reason, .. } => reason,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// How long the service asked to wait (Telegram's `retry_after`, DingTalk's 10-minute
    /// block, a webhook's `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            Self::Permanent { .. } => None,
        }
    }

    /// The same error with its reason rewritten.
    pub fn map_reason(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            Self::Permanent { reason } => Self::Permanent { reason: f(reason) },
            Self::Transient {
                reason,
                unreachable,
                retry_after,
            } => Self::Transient {
                reason: f(reason),
                unreachable,
                retry_after,
            },
        }
    }

    fn permanent(reason: String) -> Self {
        Self::Permanent { reason }
    }

    fn transient(reason: String, unreachable: bool, retry_after: Option<Duration>) -> Self {
        Self::Transient {
            reason,
            unreachable,
            retry_after,
        }
    }
}

impl From<DestError> for ChannelError {
    /// The scheduler's classes. (A send that may have reached the service is already
    /// transient here: robots are sent at least once, never `Unconfirmed`.)
    fn from(error: DestError) -> Self {
        match error {
            DestError::Permanent { reason } => ChannelError::Permanent { reason },
            DestError::Transient {
                reason,
                retry_after: Some(retry_after),
                ..
            } => ChannelError::Wait {
                reason,
                retry_after,
            },
            DestError::Transient {
                reason,
                unreachable,
                ..
            } => ChannelError::Transient {
                reason,
                unreachable,
            },
        }
    }
}

/// The outcome of [`Destination::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// What was checked, and that it works.
    Ok(String),
    /// What must be fixed before sending works.
    Failed(String),
    /// The check could not be made (none exists, or the service did not answer).
    Unavailable(String),
}

impl Check {
    fn map_text(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            Self::Ok(t) => Self::Ok(f(t)),
            Self::Failed(t) => Self::Failed(f(t)),
            Self::Unavailable(t) => Self::Unavailable(f(t)),
        }
    }

    /// As the `Channel::check` answer: `Ok` only when checked and working.
    pub fn into_result(self) -> Result<String, CheckError> {
        match self {
            Self::Ok(t) => Ok(t),
            Self::Failed(t) => Err(CheckError::Failed(t)),
            Self::Unavailable(t) => Err(CheckError::Unavailable(t)),
        }
    }
}

/// The least text a body is cut to when its JSON is too large.
const MIN_TEXT_BYTES: usize = 512;

/// A text budget for a body whose JSON came out at `body_len` with `max_text`: in
/// proportion to what must go (JSON escaping inflates text unevenly), with some room to
/// spare, and always smaller, never below [`MIN_TEXT_BYTES`].
fn smaller_budget(max_text: usize, body_len: usize, max_body: usize) -> usize {
    let scaled = max_text.saturating_mul(max_body.saturating_sub(512)) / body_len.max(1);
    scaled.min(max_text.saturating_sub(1)).max(MIN_TEXT_BYTES)
}

/// What to say when a service refuses a signature because our clock is off.
const CLOCK_HINT: &str = "this server's clock may be off (signatures must be within an hour of the service's time): run NTP (chrony, systemd-timesyncd) and check `date -u`";

/// Longest part of a service's own message quoted in a reason.
const MAX_QUOTED: usize = 200;

/// A service's message for a reason: one line, at most [`MAX_QUOTED`] characters.
fn quote(message: &str) -> String {
    let line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(MAX_QUOTED) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line,
    }
}

/// `{label} refused: {code} ({message}): {hint}`, empty parts left out.
fn refusal(label: &str, verb: &str, code: &str, message: &str, hint: &str) -> String {
    let message = quote(message);
    let mut reason = format!("{label} {verb}: {code}");
    if !message.is_empty() && message != code {
        reason.push_str(&format!(" ({message})"));
    }
    if !hint.is_empty() {
        reason.push_str(": ");
        reason.push_str(hint);
    }
    reason
}

/// Replaces every occurrence of each secret in `text` (a service echoing a key back).
fn redact(text: String, secrets: &[&str]) -> String {
    crate::error::scrub_secrets(text, secrets)
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::{KeyInit as _, Mac as _};
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::domain::{Format, Look, MessageId, UserId};

    /// A message as the scheduler hands it over.
    pub(crate) fn outbound(title: Option<&str>, content: Option<&str>) -> Outbound {
        Outbound {
            id: MessageId::from_stored("0190a5b2-0000-7000-8000-000000000001".into()),
            userid: UserId::new("alice"),
            title: title.map(str::to_owned),
            content: content.map(str::to_owned),
            address: None,
            format: Format::Text,
            look: Look::Text,
            url: None,
            page_key: Some("KEY".into()),
            verification: false,
            attachments: Vec::new(),
            part: crate::domain::Part::Whole,
            group_send: None,
        }
    }

    pub(crate) const PAGE: &str = "https://push.example.com/m/0190a5b2?k=KEY";

    pub(crate) fn envelope(message: &Outbound) -> Envelope<'_> {
        Envelope {
            message,
            page_url: Some(PAGE),
            created_at_ms: UnixMillis::from_millis(1_700_000_000_123),
        }
    }

    /// A request as a mock service received it.
    #[derive(Debug, Clone)]
    pub(crate) struct Recorded {
        pub method: String,
        pub path: String,
        /// The raw query string, as sent.
        pub query: String,
        /// Names lower-cased.
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Recorded {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        pub fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    pub(crate) struct Mock {
        /// `http://127.0.0.1:port`
        pub base: String,
        pub requests: Arc<Mutex<Vec<Recorded>>>,
    }

    impl Mock {
        pub fn url(&self) -> Url {
            Url::parse(&self.base).unwrap()
        }

        pub fn requests(&self) -> Vec<Recorded> {
            self.requests.lock().unwrap().clone()
        }
    }

    /// A service on 127.0.0.1 answering each request with `reply`'s status and body.
    pub(crate) async fn mock(
        reply: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static,
    ) -> Mock {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let recorded = requests.clone();
        let reply = Arc::new(reply);
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (requests, reply) = (recorded.clone(), reply.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                let recorded = Recorded {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().unwrap_or_default().to_owned(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_owned(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    body: body.to_vec(),
                };
                let (status, text) = reply(&recorded);
                requests.lock().unwrap().push(recorded);
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    text,
                )
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Mock {
            base: format!("http://{addr}"),
            requests,
        }
    }

    /// The client the gateway uses, without any proxy.
    pub(crate) fn client() -> reqwest::Client {
        crate::app::http_client(Duration::from_secs(5), crate::app::Egress::Direct).unwrap()
    }

    /// Every base at the mock.
    pub(crate) fn bases_at(mock: &Mock) -> Bases {
        Bases {
            wecom_robot: mock.url(),
            dingtalk: mock.url(),
            feishu: mock.url(),
            lark: mock.url(),
            telegram: mock.url(),
        }
    }

    #[test]
    fn kinds_round_trip_and_have_limits() {
        for kind in Kind::ALL {
            assert_eq!(kind.as_str().parse::<Kind>().unwrap(), kind);
            assert_eq!(kind.to_string(), kind.as_str());
            assert!(kind.capabilities().digests);
            assert!(kind.limits().max_text_bytes >= 2048);
        }
        assert_eq!("WeCom_Robot".parse::<Kind>().unwrap(), Kind::WeComRobot);
        assert_eq!("lark".parse::<Kind>().unwrap(), Kind::Feishu);
        assert_eq!(
            "slack".parse::<Kind>(),
            Err(UnknownKind("slack".to_owned()))
        );
        assert!(
            "slack"
                .parse::<Kind>()
                .unwrap_err()
                .to_string()
                .contains("wecom-robot")
        );
        assert_eq!(
            Kind::WeComRobot.rate_windows(),
            &[RateWindow {
                count: 20,
                per: MINUTE
            }]
        );
        assert_eq!(Kind::DingTalk.rate_windows()[0].count, 20);
        assert_eq!(Kind::DingTalk.penalty(), Some(Duration::from_secs(600)));
        assert_eq!(Kind::Feishu.rate_windows().len(), 2);
        assert!(Kind::Feishu.rate_windows().contains(&RateWindow {
            count: 5,
            per: SECOND
        }));
        assert!(Kind::Telegram.rate_windows().contains(&RateWindow {
            count: 20,
            per: MINUTE
        }));
        assert!(Kind::Webhook.rate_windows().is_empty());
        assert_eq!(Kind::WeComRobot.limits().max_text_bytes, 2048);
        assert!(!Kind::Feishu.limits().markdown);
        assert_eq!(Kind::DingTalk.limits().max_body_bytes, Some(20_000));
    }

    #[test]
    fn errors_map_onto_channel_classes() {
        let e = DestError::transient("busy".into(), true, Some(SECOND));
        assert_eq!(e.retry_after(), Some(SECOND));
        // A service that said how long to wait is not asked sooner.
        assert_eq!(
            ChannelError::from(e),
            ChannelError::Wait {
                reason: "busy".into(),
                retry_after: SECOND
            }
        );
        assert_eq!(
            ChannelError::from(DestError::transient("busy".into(), true, None)),
            ChannelError::Transient {
                reason: "busy".into(),
                unreachable: true
            }
        );
        assert_eq!(
            ChannelError::from(DestError::permanent("bad key".into())),
            ChannelError::Permanent {
                reason: "bad key".into()
            }
        );
    }

    #[test]
    fn debug_and_masked_never_show_the_key() {
        let bases = Bases::default();
        let key = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa";
        let d = parse_chat_url(
            None,
            &format!("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={key}"),
            &bases,
        )
        .unwrap();
        let debug = format!("{d:?}");
        assert!(!debug.contains(key), "{debug}");
        assert!(!debug.contains("7xxx"), "{debug}");
        assert_eq!(
            d.masked(),
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=69…aa"
        );
        assert_eq!(
            d.expose_address(),
            format!("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={key}")
        );

        let token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let secret = "SEC8e2b5e0b1c8d7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1";
        let d = Destination::from_config(
            Kind::DingTalk,
            Some(&format!(
                "https://oapi.dingtalk.com/robot/send?access_token={token}"
            )),
            None,
            Some(secret),
            &bases,
        )
        .unwrap();
        let debug = format!("{d:?}");
        assert!(!debug.contains(token) && !debug.contains(secret), "{debug}");
        assert!(debug.contains("***"));
        assert_eq!(
            d.masked(),
            "https://oapi.dingtalk.com/robot/send?access_token=01…ef"
        );

        let settings = Settings {
            telegram_bot_token: Some(SecretString::from("123456:ABCdef")),
            timeout: SECOND,
        };
        assert!(!format!("{settings:?}").contains("ABCdef"));
    }

    #[test]
    fn stored_destinations_read_back_and_are_checked_again() {
        let bases = Bases::default();
        for (kind, address, secret) in [
            (
                Kind::WeComRobot,
                "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abcd-1234",
                None,
            ),
            (
                Kind::DingTalk,
                "https://oapi.dingtalk.com/robot/send?access_token=abcdef0123",
                Some("SECabc123"),
            ),
            (
                Kind::Feishu,
                "https://open.larksuite.com/open-apis/bot/v2/hook/0a1b2c3d-4e5f",
                Some("s3cret"),
            ),
            (Kind::Telegram, "-1001234567890", None),
            (
                Kind::Webhook,
                "http://10.0.0.5:8080/hooks/pushbot?token=x",
                Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            ),
        ] {
            let d = Destination::from_stored(kind, address, secret, &bases).unwrap();
            assert_eq!(d.kind(), kind);
            assert_eq!(d.expose_address(), address);
            assert_eq!(d.expose_secret(), secret);
            let again =
                Destination::from_stored(kind, &d.expose_address(), d.expose_secret(), &bases)
                    .unwrap();
            assert_eq!(again.lane_key(), d.lane_key());
        }
        // A robot address stored when the base was another is refused now.
        let moved = Bases {
            wecom_robot: Url::parse("http://127.0.0.1:9").unwrap(),
            ..Bases::default()
        };
        assert!(
            Destination::from_stored(
                Kind::WeComRobot,
                "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abcd-1234",
                None,
                &moved
            )
            .is_err()
        );
    }

    #[test]
    fn lane_keys_name_the_robot_not_the_destination() {
        let bases = Bases::default();
        let a = parse_chat_url(
            None,
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abcd-1234",
            &bases,
        )
        .unwrap();
        let b = parse_chat_url(Some(Kind::WeComRobot), "abcd-1234", &bases).unwrap();
        let c = parse_chat_url(Some(Kind::WeComRobot), "abcd-1235", &bases).unwrap();
        assert_eq!(a.lane_key(), b.lane_key());
        assert_ne!(a.lane_key(), c.lane_key());
        assert!(a.lane_key().starts_with("wecom-robot:"));
        assert!(!a.lane_key().contains("abcd"));
        let t = parse_chat_url(Some(Kind::Telegram), "-100123", &bases).unwrap();
        assert_eq!(t.lane_key(), "telegram:-100123");
    }

    #[test]
    fn reasons_quote_one_line_and_scrub_secrets() {
        assert_eq!(
            refusal("X", "refused", "93000", "a\nb", "fix it"),
            "X refused: 93000 (a b): fix it"
        );
        assert_eq!(refusal("X", "refused", "1", "", ""), "X refused: 1");
        assert_eq!(quote(&"x".repeat(500)).chars().count(), MAX_QUOTED + 1);
        assert_eq!(
            redact(
                "key abcd-1234 and SECxyz1".into(),
                &["abcd-1234", "SECxyz1"]
            ),
            "key *** and ***"
        );
        // Too short to scrub safely.
        assert_eq!(redact("a 12 b".into(), &["12"]), "a 12 b");
    }

    #[tokio::test]
    async fn robots_have_no_silent_check() {
        let d = parse_chat_url(
            Some(Kind::Feishu),
            "https://open.feishu.cn/open-apis/bot/v2/hook/abc-123",
            &Bases::default(),
        )
        .unwrap();
        let check = d.check(&client(), &Settings::default()).await;
        assert!(
            matches!(&check, Check::Unavailable(t) if t.contains("test message")),
            "{check:?}"
        );
    }
}
