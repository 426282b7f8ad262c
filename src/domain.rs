//! The few values everything else passes around, each normalised or checked in one place.
//!
//! - [`UserId`]: WeCom userids are case-insensitive (WeCom lower-cases them in its answers,
//!   e.g. `invaliduser`), so they are lower-cased once, here, and compared as stored.
//! - [`PushToken`]: its `Debug` and `Display` redact it, so "never log a token" is a
//!   property of the type; [`PushToken::expose`] is the one way to the text.
//! - [`MessageId`]: UUIDv7 text (time-ordered).
//! - [`ChannelName`] and [`Route`]: the channels a message may take, in order.
//! - [`EmailAddress`]: a checked address; its [`EmailAddress::masked`] form is what
//!   chat answers show.
//! - [`Outbound`]: what a channel renders — never the database row — with its
//!   [`OutboundAttachment`]s and which [`Part`] of it is being sent.

use std::fmt;

use crate::time::UnixMillis;

/// A WeCom member's userid, trimmed and lower-cased.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub fn new(raw: &str) -> Self {
        Self(raw.trim().to_lowercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A personal push token (a bearer credential).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PushToken(String);

impl PushToken {
    /// Wraps a token as received or generated; shape checks are [`crate::token`]'s job.
    pub fn new(token: String) -> Self {
        Self(token)
    }

    /// The token itself, for the places that must show or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `ab…yz`: enough for the owner to recognise it, useless to anyone else.
    pub fn hint(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        if chars.len() < 8 {
            return "…".to_owned();
        }
        let head: String = chars[..2].iter().collect();
        let tail: String = chars[chars.len() - 2..].iter().collect();
        format!("{head}…{tail}")
    }
}

impl fmt::Debug for PushToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PushToken({})", self.hint())
    }
}

impl fmt::Display for PushToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hint())
    }
}

/// A message id (UUIDv7 text).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(String);

impl MessageId {
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    pub fn from_stored(id: String) -> Self {
        Self(id)
    }

    /// The smallest id generated at `at` or later: every id made earlier sorts below it
    /// (a UUIDv7 starts with its time in milliseconds, and ids are lower-case hex).
    pub fn first_at(at: UnixMillis) -> Self {
        let ms = u64::try_from(at.as_millis()).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
        Self(format!(
            "{:08x}-{:04x}-0000-0000-000000000000",
            ms >> 16,
            ms & 0xFFFF
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The link to this message's page on the server at `public_base`.
    pub fn page_url(&self, public_base: &str, key: &str) -> String {
        format!("{}/m/{}?k={key}", public_base.trim_end_matches('/'), self.0)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A delivery channel, by its stable name (stored in the database and accepted in the
/// API as `wecom` / `email` / `sms`, or a destination's name such as `ops`). Only the
/// names live here; what a channel can do is its
/// [`Channel`](crate::delivery::Channel) implementation's to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelName {
    WeCom,
    Email,
    Sms,
    /// A named destination (a group robot, a webhook…): `[destinations.NAME]`.
    Dest(DestName),
}

/// A destination's name: 1–32 of `a-z 0-9 _ -`, starting with a letter or digit, and not a
/// built-in channel's name or alias. Interned (a name is stored once for the life of the
/// process, at most [`DestName::MAX_NAMES`] of them), so that [`ChannelName`] stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestName(&'static str);

impl DestName {
    /// Distinct destination names one process will hold.
    pub const MAX_NAMES: usize = 4096;

    /// The name as typed (trimmed, lower-cased), if it can name a destination.
    pub fn parse(typed: &str) -> Result<Self, DestNameError> {
        let name = typed.trim().to_ascii_lowercase();
        let valid = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if !valid {
            return Err(DestNameError::Invalid {
                typed: typed.chars().take(40).collect(),
            });
        }
        if ChannelName::ALL
            .iter()
            .any(|c| c.names().contains(&name.as_str()))
        {
            return Err(DestNameError::BuiltIn { name });
        }
        intern(name).map(Self)
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Debug for DestName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

/// Why a text cannot name a destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestNameError {
    /// Not 1–32 of `a-z 0-9 _ -` starting with a letter or digit; `typed`: its first 40
    /// characters.
    #[error("{typed:?} cannot name a destination: use 1 to 32 of a-z, 0-9, _ and -, e.g. ops")]
    Invalid { typed: String },
    /// A built-in channel's name or alias (`email`, `短信`…), lower-cased.
    #[error("{name:?} is a built-in channel's name")]
    BuiltIn { name: String },
    /// The process holds [`DestName::MAX_NAMES`] names already.
    #[error("too many destination names in use")]
    TooMany,
}

/// The one `&'static str` for `name`.
fn intern(name: String) -> Result<&'static str, DestNameError> {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock, PoisonError};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = names.get(name.as_str()) {
        return Ok(known);
    }
    if names.len() >= DestName::MAX_NAMES {
        return Err(DestNameError::TooMany);
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.insert(leaked);
    Ok(leaked)
}

impl ChannelName {
    /// The built-in channels, in the order `channel=all` tries them (destinations are
    /// in `all` only when named).
    pub const ALL: [ChannelName; 3] = [ChannelName::WeCom, ChannelName::Email, ChannelName::Sms];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::WeCom => "wecom",
            Self::Email => "email",
            Self::Sms => "sms",
            Self::Dest(name) => name.as_str(),
        }
    }

    /// Name for people, in log lines and errors.
    pub fn label(self) -> &'static str {
        match self {
            Self::WeCom => "WeCom",
            Self::Email => "E-mail",
            Self::Sms => "SMS",
            Self::Dest(name) => name.as_str(),
        }
    }

    /// Its name for people who read Chinese first.
    pub fn zh(self) -> &'static str {
        match self {
            Self::WeCom => "企业微信",
            Self::Email => "邮件",
            Self::Sms => "短信",
            Self::Dest(name) => name.as_str(),
        }
    }

    /// Every name it answers to.
    fn names(self) -> Vec<&'static str> {
        let mut names = vec![self.as_str()];
        names.extend_from_slice(self.aliases());
        names
    }

    /// Its name inside a sentence ("e-mail is not configured").
    pub fn in_sentence(self) -> &'static str {
        match self {
            Self::Email => "e-mail",
            other => other.label(),
        }
    }

    /// What people type for it (besides [`Self::as_str`]).
    fn aliases(self) -> &'static [&'static str] {
        match self {
            Self::WeCom => &["企业微信", "微信"],
            Self::Email => &["e-mail", "mail", "邮件", "邮箱"],
            Self::Sms => &["phone", "短信", "手机"],
            Self::Dest(_) => &[],
        }
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ChannelName {
    type Err = UnknownChannel;
    fn from_str(s: &str) -> Result<Self, UnknownChannel> {
        let typed = s.trim().to_ascii_lowercase();
        if let Some(builtin) = Self::ALL
            .into_iter()
            .find(|c| c.names().contains(&typed.as_str()))
        {
            return Ok(builtin);
        }
        // Anything else that could name a destination does; whether one by that name
        // exists is for the route to say.
        DestName::parse(&typed)
            .map(Self::Dest)
            .map_err(|_| UnknownChannel { name: typed })
    }
}

/// A name that is no channel: neither a built-in one nor one a destination could have —
/// or, from [`Outbox::route`](crate::delivery::Outbox::route), a destination's name
/// that no destination has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown channel {name:?}: the channels are wecom, email and sms, or a destination's name")]
pub struct UnknownChannel {
    /// As typed, trimmed and lower-cased.
    pub name: String,
}

/// Why a text is not a [`Route`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Unknown(#[from] UnknownChannel),
    #[error("channel {0} is listed twice")]
    Twice(ChannelName),
    #[error("no channel given: use wecom, email, sms or a list such as wecom,email")]
    Empty,
}

/// The channels a message tries, in order: the next one only when the one before could
/// not deliver it (or, for `all`, each of them). Never empty, no channel twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route(Vec<ChannelName>);

impl Route {
    /// `wecom,email` (also with spaces, `，` or `/`): an ordered list without repeats.
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let mut channels = Vec::new();
        for part in text
            .split([',', '，', '/', ' ', '>'])
            .map(str::trim)
            .filter(|p| !p.is_empty() && *p != "-" && *p != "→")
        {
            let channel: ChannelName = part.parse()?;
            if channels.contains(&channel) {
                return Err(RouteError::Twice(channel));
            }
            channels.push(channel);
        }
        Self::new(channels).ok_or(RouteError::Empty)
    }

    /// `None` when `channels` is empty.
    pub fn new(channels: Vec<ChannelName>) -> Option<Self> {
        let mut seen = Vec::with_capacity(channels.len());
        for c in channels {
            if !seen.contains(&c) {
                seen.push(c);
            }
        }
        (!seen.is_empty()).then_some(Self(seen))
    }

    pub fn channels(&self) -> &[ChannelName] {
        &self.0
    }

    pub fn first(&self) -> ChannelName {
        self.0[0]
    }

    /// The route after its first channel, if anything is left.
    pub fn rest(&self) -> Option<Route> {
        Route::new(self.0[1..].to_vec())
    }

    pub fn contains(&self, channel: ChannelName) -> bool {
        self.0.contains(&channel)
    }

    /// The channels of `self` that `keep` accepts, in order; `None` if none does.
    pub fn filter(&self, keep: impl Fn(ChannelName) -> bool) -> Option<Route> {
        Route::new(self.0.iter().copied().filter(|c| keep(*c)).collect())
    }

    /// `wecom,email`: the stored form.
    pub fn to_stored(&self) -> String {
        let names: Vec<&str> = self.0.iter().map(|c| c.as_str()).collect();
        names.join(",")
    }

    /// `wecom → email`: the form shown to people.
    pub fn to_display(&self) -> String {
        let names: Vec<&str> = self.0.iter().map(|c| c.as_str()).collect();
        names.join(" → ")
    }
}

/// An e-mail address as a member binds it: one `@`, a dotted domain, no spaces or angle
/// brackets; lower-cased domain. Deliberately plain (what a person types in a chat).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Option<Self> {
        let text = raw.trim();
        let (local, domain) = text.rsplit_once('@')?;
        let ok_local = !local.is_empty()
            && local.len() <= 64
            && local
                .chars()
                .all(|c| c.is_ascii_graphic() && !"<>()[]\\,;:\"@".contains(c));
        let ok_domain = domain.len() <= 253
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        (ok_local && ok_domain).then(|| Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `a***e@example.com`: enough for the owner to recognise it.
    pub fn masked(&self) -> String {
        let (local, domain) = self.0.rsplit_once('@').unwrap_or((&self.0, ""));
        let chars: Vec<char> = local.chars().collect();
        let shown = match chars.as_slice() {
            [] => String::new(),
            [only] => format!("{only}***"),
            [first, .., last] => format!("{first}***{last}"),
        };
        format!("{shown}@{domain}")
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress({})", self.masked())
    }
}

/// How urgent a message is, on one scale for every client dialect (ServerChan has none,
/// Bark `level`, gotify 0–10, ntfy 1–5). High and urgent messages are marked at the start
/// of their title, so they stand out in the chat list; low and normal ones are unmarked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Urgency {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

impl Urgency {
    /// The title with this urgency's marker in front.
    pub fn mark(self, title: &str) -> String {
        let marker = match self {
            Self::Low | Self::Normal => return title.to_owned(),
            Self::High => "❗",
            Self::Urgent => "🚨",
        };
        if title.is_empty() {
            marker.to_owned()
        } else {
            format!("{marker} {title}")
        }
    }

    /// Bark's `level`: `passive`, `active` (default), `timeSensitive`, `critical`.
    pub fn from_bark(level: &str) -> Self {
        match level.trim().to_ascii_lowercase().as_str() {
            "passive" => Self::Low,
            "timesensitive" => Self::High,
            "critical" => Self::Urgent,
            _ => Self::Normal,
        }
    }

    /// gotify's priority 0–10: 0–3 low, 4–7 normal, 8 and above urgent — what gotify's own
    /// app shows as a pop-up, and what comes through quiet hours (gotify has no step between).
    pub fn from_gotify(priority: i64) -> Self {
        match priority {
            i64::MIN..=3 => Self::Low,
            4..=7 => Self::Normal,
            _ => Self::Urgent,
        }
    }

    /// ntfy's priority 1 (min) – 5 (max/urgent), 3 the default.
    pub fn from_ntfy(priority: u8) -> Self {
        match priority {
            0..=2 => Self::Low,
            3 => Self::Normal,
            4 => Self::High,
            _ => Self::Urgent,
        }
    }
}

/// The syntax of a message's content, as the sender declared it (`format=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Text,
    Markdown,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Markdown => "markdown",
        }
    }

    /// A stored value; anything unknown reads as text (shown as it is, never lost).
    pub fn from_stored(s: &str) -> Self {
        if s == "markdown" {
            Self::Markdown
        } else {
            Self::Text
        }
    }
}

impl std::str::FromStr for Format {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, UnknownFormat> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "text" | "plain" | "txt" => Ok(Self::Text),
            "markdown" | "md" => Ok(Self::Markdown),
            other => Err(UnknownFormat {
                typed: other.to_owned(),
            }),
        }
    }
}

/// A `format=` that is neither text nor markdown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format {typed:?}: the formats are text and markdown")]
pub struct UnknownFormat {
    /// As typed, trimmed and lower-cased.
    pub typed: String,
}

/// How a member wants messages to look in WeCom (`format …` in the chat).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Look {
    /// Plain text (markdown turned into readable text); a card with a link when too long.
    #[default]
    Text,
    /// WeCom's markdown (the WeCom client renders it; WeChat does not).
    Markdown,
    /// Always a card with a link to the message's page.
    Card,
}

impl Look {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Markdown => "markdown",
            Self::Card => "card",
        }
    }

    pub fn from_stored(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

impl std::str::FromStr for Look {
    type Err = UnknownLook;
    fn from_str(s: &str) -> Result<Self, UnknownLook> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" | "文本" | "纯文本" => Ok(Self::Text),
            "markdown" | "md" => Ok(Self::Markdown),
            "card" | "卡片" => Ok(Self::Card),
            other => Err(UnknownLook {
                typed: other.to_owned(),
            }),
        }
    }
}

/// A look (`format …` in the chat) that is none of text, markdown and card.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format {typed:?}: choose text, markdown or card")]
pub struct UnknownLook {
    /// As typed, trimmed and lower-cased.
    pub typed: String,
}

/// One message as a channel sends it: a single accepted message, or a digest of several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The message (or digest) id: e-mail uses it as its Message-ID.
    pub id: MessageId,
    pub userid: UserId,
    pub title: Option<String>,
    pub content: Option<String>,
    /// The recipient on a channel that needs an address (e-mail, SMS): the member's bound
    /// one, or the one being verified. `None` on channels that reach members by userid.
    pub address: Option<String>,
    /// The content's syntax.
    pub format: Format,
    /// How the member wants it to look.
    pub look: Look,
    /// A link the sender wants opened (the card points there).
    pub url: Option<String>,
    /// The key of the message's page (`/m/{id}?k=…`), when it has one.
    pub page_key: Option<String>,
    /// A verification code to the address being bound: `content` is the code message the
    /// channel's [`Binding`](crate::delivery::Binding) made (SMS sends it with its code
    /// template).
    pub verification: bool,
    /// The message's images and files, in the order they are sent (empty for most
    /// messages; read only for a message that has some).
    pub attachments: Vec<OutboundAttachment>,
    /// Which part of the message this is, on a channel that sends attachments separately.
    pub part: Part,
    /// The group message this is one member's copy of (`None` for a personal message, a
    /// digest, a verification): copies of one group message with the same body may share
    /// one WeCom call.
    pub group_send: Option<MessageId>,
}

/// One image or file of a message, as a channel sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundAttachment {
    /// The name it is shown and sent under.
    pub filename: String,
    /// How WeCom takes it (decided at acceptance from the sniffed type and the size).
    pub kind: crate::media::MediaKind,
    /// The sniffed content type.
    pub mime: String,
    pub size: u64,
    /// SHA-256 of the content, lower-case hex (WeCom's `media_id` cache is keyed by it).
    pub sha256: String,
    /// Where its bytes are stored.
    pub blob_id: crate::store::BlobId,
}

impl OutboundAttachment {
    /// `image chart.png`, `file report.pdf`: how the history and errors name it.
    pub fn label(&self) -> String {
        format!("{} {}", self.kind, self.filename)
    }
}

/// Which part of a message a channel is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Part {
    /// All of it at once: the text, with the attachments as the channel carries them
    /// (e-mail attaches them; a channel that links them got a line naming them, with the
    /// page's address, in its content).
    #[default]
    Whole,
    /// The text alone: each attachment follows as a part of its own.
    Text,
    /// The attachment at this index (in [`Outbound::attachments`]) alone.
    Attachment(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_first_at_bounds_them() {
        let before = UnixMillis::now();
        let id = MessageId::generate();
        let after = UnixMillis::now() + std::time::Duration::from_millis(1);
        assert!(MessageId::first_at(before).as_str() <= id.as_str());
        assert!(id.as_str() < MessageId::first_at(after).as_str());
        assert_eq!(
            MessageId::first_at(UnixMillis::from_millis(0x0123_4567_89ab)).as_str(),
            "01234567-89ab-0000-0000-000000000000"
        );
    }

    #[test]
    fn userids_are_case_insensitive() {
        assert_eq!(UserId::new(" ZhangSan "), UserId::new("zhangsan"));
        assert_eq!(UserId::new("ZhangSan").as_str(), "zhangsan");
    }

    #[test]
    fn tokens_never_print_themselves() {
        let token = PushToken::new("abcdefghijklmnopqrstuvwxyz012345".to_owned());
        assert_eq!(format!("{token}"), "ab…45");
        assert_eq!(format!("{token:?}"), "PushToken(ab…45)");
        assert_eq!(token.expose(), "abcdefghijklmnopqrstuvwxyz012345");
        assert_eq!(PushToken::new("short".into()).hint(), "…");
    }

    #[test]
    fn urgency_maps_every_dialect_onto_one_scale() {
        assert_eq!(Urgency::from_bark("critical"), Urgency::Urgent);
        assert_eq!(Urgency::from_bark("timeSensitive"), Urgency::High);
        assert_eq!(Urgency::from_bark("passive"), Urgency::Low);
        assert_eq!(Urgency::from_bark("active"), Urgency::Normal);
        assert_eq!(Urgency::from_gotify(0), Urgency::Low);
        assert_eq!(Urgency::from_gotify(5), Urgency::Normal);
        assert_eq!(Urgency::from_gotify(7), Urgency::Normal);
        assert_eq!(Urgency::from_gotify(8), Urgency::Urgent);
        assert_eq!(Urgency::from_gotify(10), Urgency::Urgent);
        assert_eq!(Urgency::from_ntfy(5), Urgency::Urgent);
        assert_eq!(Urgency::from_ntfy(4), Urgency::High);
        assert_eq!(Urgency::from_ntfy(3), Urgency::Normal);
        assert_eq!(Urgency::Urgent.mark("Disk full"), "🚨 Disk full");
        assert_eq!(Urgency::High.mark(""), "❗");
        assert_eq!(Urgency::Normal.mark("x"), "x");
    }

    #[test]
    fn routes_parse_in_order_without_repeats() {
        let r = Route::parse("email, wecom").unwrap();
        assert_eq!(r.channels(), &[ChannelName::Email, ChannelName::WeCom]);
        assert_eq!(r.to_stored(), "email,wecom");
        assert_eq!(r.to_display(), "email → wecom");
        assert_eq!(r.rest().unwrap().channels(), &[ChannelName::WeCom]);
        assert!(r.rest().unwrap().rest().is_none());
        assert_eq!(Route::parse("WeCom").unwrap().first(), ChannelName::WeCom);
        assert_eq!(
            Route::parse("邮箱，企业微信").unwrap().to_stored(),
            "email,wecom"
        );
        assert_eq!(
            Route::parse("wecom,wecom"),
            Err(RouteError::Twice(ChannelName::WeCom))
        );
        assert_eq!(
            Route::parse("wecom, Fax!").unwrap_err().to_string(),
            "unknown channel \"fax!\": the channels are wecom, email and sms, or a destination's name"
        );
        // Anything that can name a destination does (whether it exists is the route's
        // business), once per name.
        let ops = Route::parse("wecom, OPS").unwrap();
        assert_eq!(ops.to_stored(), "wecom,ops");
        let (ChannelName::Dest(a), ChannelName::Dest(b)) = (
            Route::parse("ops").unwrap().first(),
            "ops".parse::<ChannelName>().unwrap(),
        ) else {
            panic!("ops names a destination");
        };
        assert!(std::ptr::eq(a.as_str(), b.as_str()), "interned once");
        for bad in ["", "-ops", "o p", "ops!", &"x".repeat(33), "email", "短信"] {
            assert!(DestName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Route::parse("短信, wecom").unwrap().to_stored(),
            "sms,wecom"
        );
        assert_eq!(Route::parse(" , "), Err(RouteError::Empty));
        let only_wecom = r.filter(|c| c == ChannelName::WeCom).unwrap();
        assert_eq!(only_wecom.to_stored(), "wecom");
        assert!(r.filter(|_| false).is_none());
    }

    #[test]
    fn refusals_say_which_rule_a_name_broke() {
        assert_eq!(
            DestName::parse(" O P "),
            Err(DestNameError::Invalid {
                typed: " O P ".to_owned()
            })
        );
        assert_eq!(
            DestName::parse(" Mail "),
            Err(DestNameError::BuiltIn {
                name: "mail".to_owned()
            })
        );
        assert_eq!(
            DestName::parse("mail").unwrap_err().to_string(),
            "\"mail\" is a built-in channel's name"
        );
        assert_eq!(
            DestName::parse(&"y".repeat(50)).unwrap_err().to_string(),
            format!(
                "{:?} cannot name a destination: use 1 to 32 of a-z, 0-9, _ and -, e.g. ops",
                "y".repeat(40)
            )
        );
        assert_eq!(
            "Card!".parse::<Look>().unwrap_err().to_string(),
            "unknown format \"card!\": choose text, markdown or card"
        );
        assert_eq!(
            "HTML".parse::<Format>(),
            Err(UnknownFormat {
                typed: "html".to_owned()
            })
        );
    }

    #[test]
    fn email_addresses_are_checked_and_masked() {
        let a = EmailAddress::parse(" Alice.B@Example.COM ").unwrap();
        assert_eq!(a.as_str(), "Alice.B@example.com");
        assert_eq!(a.masked(), "A***B@example.com");
        assert_eq!(
            EmailAddress::parse("x@qq.com").unwrap().masked(),
            "x***@qq.com"
        );
        assert!(!format!("{a:?}").contains("Alice.B"));
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "a@b",
            "a b@example.com",
            "a@exa mple.com",
            "<a@example.com>",
            "a@.example.com",
            "a@example..com",
        ] {
            assert!(EmailAddress::parse(bad).is_none(), "{bad}");
        }
    }
}
