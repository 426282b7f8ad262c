//! Settings: one TOML file, every key overridable by `PUSHBOT_<SECTION>__<KEY>`.
//!
//! Precedence is defaults < file < environment. Values are parsed into typed settings
//! ("parse, don't validate"): a malformed value, an unknown key (with the nearest valid one
//! suggested) or an inconsistent combination stops loading with one line naming the key, so
//! a [`Settings`] that exists is a usable one. Secrets redact themselves in `{:?}`.
//! The variables Kubernetes sets for a Service named `pushbot…` (`PUSHBOT_PORT`,
//! `PUSHBOT_SERVICE_HOST`, …) are not settings and are ignored ([`is_service_link`]).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

use crate::delivery::limits::RateWindow;
use crate::delivery::quiet::{QuietHours, QuietSetting};
use crate::domain::{ChannelName, Look, Route};
use crate::store::Engine;
use crate::wecom::credentials::{AgentId, CallbackToken, CorpId, CorpSecret, EncodingAesKey};

/// Default config file looked up in the working directory when neither
/// `--config` nor `PUSHBOT_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "pushbot.toml";

/// WeCom's API, unless `wecom.api_base` says otherwise (tests, egress proxies).
pub const DEFAULT_API_BASE: &str = "https://qyapi.weixin.qq.com";

/// Serialized (`toml::to_string`), settings are the config file that loads them again:
/// durations written the short way (`"30s"`), `"off"`/`"0"` where a field means none, and
/// **every secret with its real value** (the WeCom secret, the callback token and key, SMTP
/// and SMS secrets, robot URLs, passwords in `storage.url` and `wecom.proxy`). That is what
/// writing a config file needs; never log or show serialized settings (`{:?}` redacts).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    #[serde(default)]
    pub storage: StorageSettings,
    pub wecom: WeComSettings,
    #[serde(default)]
    pub delivery: DeliverySettings,
    /// The e-mail channel; absent: no e-mail.
    #[serde(default)]
    pub email: Option<EmailSettings>,
    /// The SMS channel; absent: no SMS.
    #[serde(default)]
    pub sms: Option<SmsSettings>,
    /// Group chats and webhooks messages can be sent to by name (`[destinations.NAME]`).
    #[serde(default)]
    pub destinations: DestinationsSettings,
    /// Images and files sent with messages.
    #[serde(default)]
    pub media: MediaSettings,
    /// The web console members open from the chat (`login`).
    #[serde(default)]
    pub console: ConsoleSettings,
    /// Groups: their limits, and the groups backed by WeCom departments and tags.
    #[serde(default)]
    pub groups: GroupsSettings,
    /// Messages that ask to be acknowledged, and their escalation.
    #[serde(default)]
    pub ack: AckSettings,
    #[serde(default)]
    pub log: LogSettings,
    /// The Kubernetes service-link variables (`PUSHBOT_PORT`, `PUSHBOT_SERVICE_HOST`, …)
    /// found in the environment and ignored: not settings (see [`is_service_link`]).
    #[serde(skip)]
    pub ignored_variables: Vec<String>,
}

/// `[destinations]`: where each kind's service is, the server's Telegram bot, and the
/// shared destinations (`[destinations.NAME]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DestinationsSettings {
    /// Where WeCom group robots are (default `https://qyapi.weixin.qq.com`); robot URLs must
    /// be on it. A reverse proxy or a test mock changes it.
    #[serde(default)]
    pub wecom_robot_base: Option<HttpUrl>,
    /// Where DingTalk robots are (default `https://oapi.dingtalk.com`).
    #[serde(default)]
    pub dingtalk_base: Option<HttpUrl>,
    /// Where Feishu bots are (default `https://open.feishu.cn`).
    #[serde(default)]
    pub feishu_base: Option<HttpUrl>,
    /// Where Lark bots are (default `https://open.larksuite.com`).
    #[serde(default)]
    pub lark_base: Option<HttpUrl>,
    /// Where Telegram's Bot API is (default `https://api.telegram.org`).
    #[serde(default)]
    pub telegram_base: Option<HttpUrl>,
    /// The server's Telegram bot (from @BotFather), for `telegram` destinations: from
    /// `PUSHBOT_DESTINATIONS__TELEGRAM_BOT_TOKEN` or `telegram_bot_token_file`.
    #[serde(default, serialize_with = "exposed")]
    pub telegram_bot_token: Option<secrecy::SecretString>,
    /// A file holding the Telegram bot token; read at start-up.
    #[serde(default)]
    pub telegram_bot_token_file: Option<PathBuf>,
    /// One call to a destination.
    #[serde(
        default = "default_destination_timeout",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub timeout: Duration,
    /// `[destinations.NAME]`, by name.
    #[serde(flatten)]
    pub named: std::collections::BTreeMap<String, DestinationSettings>,
}

/// `[destinations.NAME]`: one shared destination.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSettings {
    /// `wecom-robot`, `dingtalk`, `feishu`, `telegram` or `webhook`.
    pub kind: String,
    /// The robot's or webhook's URL (it carries the key: prefer
    /// `PUSHBOT_DESTINATIONS__NAME__URL` or `url_file`).
    #[serde(default, serialize_with = "exposed")]
    pub url: Option<secrecy::SecretString>,
    /// A file holding the URL; read at start-up.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Telegram: the chat (`-100…` or `@channel`).
    #[serde(default)]
    pub chat_id: Option<String>,
    /// DingTalk `SEC…`, Feishu's signing secret, a webhook's `whsec_…`.
    #[serde(default, serialize_with = "exposed")]
    pub secret: Option<secrecy::SecretString>,
    /// A file holding the secret; read at start-up.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Who may send to it: userids, or `"all"` (the default).
    #[serde(default)]
    pub members: Members,
}

/// `members = ["alice", "bob"]` or `members = "all"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Members {
    #[default]
    All,
    Only(Vec<crate::domain::UserId>),
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w.trim().eq_ignore_ascii_case("all") => Ok(Self::All),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "members is a list of userids or \"all\", not {w:?}"
            ))),
            Raw::List(list) => Ok(Self::Only(
                list.iter().map(|u| crate::domain::UserId::new(u)).collect(),
            )),
        }
    }
}

/// `"all"`, or the list of userids.
impl Serialize for Members {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::All => s.serialize_str("all"),
            Self::Only(list) => s.collect_seq(list.iter().map(crate::domain::UserId::as_str)),
        }
    }
}

impl Members {
    pub fn includes(&self, userid: &crate::domain::UserId) -> bool {
        match self {
            Self::All => true,
            Self::Only(list) => list.contains(userid),
        }
    }
}

/// A shared destination, checked: what the registry builds a channel from.
#[derive(Debug, Clone)]
pub struct ConfiguredDestination {
    pub name: ChannelName,
    pub destination: crate::delivery::destinations::Destination,
    pub members: Members,
}

/// No `[destinations]` section: the real services, no bot, no shared destination.
impl Default for DestinationsSettings {
    fn default() -> Self {
        Self {
            wecom_robot_base: None,
            dingtalk_base: None,
            feishu_base: None,
            lark_base: None,
            telegram_base: None,
            telegram_bot_token: None,
            telegram_bot_token_file: None,
            timeout: default_destination_timeout(),
            named: std::collections::BTreeMap::new(),
        }
    }
}

impl DestinationsSettings {
    /// The bases, each the configured one or the real service.
    pub fn bases(&self) -> crate::delivery::destinations::Bases {
        let mut bases = crate::delivery::destinations::Bases::default();
        for (set, field) in [
            (&self.wecom_robot_base, &mut bases.wecom_robot),
            (&self.dingtalk_base, &mut bases.dingtalk),
            (&self.feishu_base, &mut bases.feishu),
            (&self.lark_base, &mut bases.lark),
            (&self.telegram_base, &mut bases.telegram),
        ] {
            if let Some(url) = set {
                *field = url.url().clone();
            }
        }
        bases
    }

    /// The shared destinations, checked (name, kind, address on its base, secret).
    pub fn configured(&self) -> Result<Vec<ConfiguredDestination>, ConfigError> {
        use secrecy::ExposeSecret as _;
        let bases = self.bases();
        let mut seen = std::collections::HashSet::new();
        self.named
            .iter()
            .map(|(name, d)| {
                let invalid = |field: &str, message: String| ConfigError::Invalid {
                    key: format!("destinations.{name}.{field}"),
                    message,
                };
                let dest_name =
                    crate::domain::DestName::parse(name).map_err(|m| ConfigError::Invalid {
                        key: format!("destinations.{name}"),
                        message: m.to_string(),
                    })?;
                if !seen.insert(dest_name) {
                    return Err(ConfigError::Invalid {
                        key: format!("destinations.{name}"),
                        message: format!(
                            "another [destinations] table has the same name {:?} (names are not case-sensitive)",
                            dest_name.as_str()
                        ),
                    });
                }
                let kind: crate::delivery::destinations::Kind =
                    d.kind.parse().map_err(
                        |m: crate::delivery::destinations::UnknownKind| {
                            invalid("kind", m.to_string())
                        },
                    )?;
                let address_key = if kind == crate::delivery::destinations::Kind::Telegram {
                    "chat_id"
                } else {
                    "url"
                };
                let mut destination = crate::delivery::destinations::Destination::from_config(
                    kind,
                    d.url.as_ref().map(|u| u.expose_secret()),
                    d.chat_id.as_deref(),
                    None,
                    &bases,
                )
                .map_err(|m| invalid(address_key, m.to_string()))?;
                if let Some(secret) = &d.secret {
                    destination = destination
                        .with_secret(secret.expose_secret())
                        .map_err(|m| invalid("secret", m.to_string()))?;
                }
                Ok(ConfiguredDestination {
                    name: ChannelName::Dest(dest_name),
                    destination,
                    members: d.members.clone(),
                })
            })
            .collect()
    }
}

/// `[email]`: SMTP for the e-mail channel (fallback and verification codes).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// The SMTP server, e.g. `smtp.qq.com`.
    #[serde(deserialize_with = "non_empty")]
    pub host: String,
    /// Default by `security`: 465 (tls), 587 (starttls), 25 (none).
    #[serde(default)]
    pub port: Option<u16>,
    /// How the SMTP connection is protected: `tls` (TLS from the first byte, port 465),
    /// `starttls` (a plain connection upgraded with STARTTLS, which is required; port 587)
    /// or `none` (no encryption at all: only for a relay on the same host or network).
    #[serde(default)]
    pub security: SmtpSecurity,
    /// The SMTP login; set it and a password, or neither.
    #[serde(default)]
    pub username: Option<String>,
    /// Set it from `PUSHBOT_EMAIL__PASSWORD` or `password_file`, never in a committed file.
    #[serde(default, serialize_with = "exposed")]
    pub password: Option<secrecy::SecretString>,
    /// A file holding the password (Docker/Kubernetes secrets); read at start-up.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The sender, `pushbot <bot@example.com>` or `bot@example.com`.
    pub from: Sender,
    /// One SMTP operation (connect, command, sending a message).
    #[serde(
        default = "default_smtp_timeout",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub timeout: Duration,
    /// How long a verification code can be used.
    #[serde(
        default = "default_code_ttl",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub code_ttl: Duration,
    /// Verification mails per member, and per address, in any hour.
    #[serde(
        default = "default_codes_per_hour",
        deserialize_with = "at_least_one_u32"
    )]
    pub codes_per_hour: u32,
}

impl EmailSettings {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.security {
            SmtpSecurity::Tls => 465,
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::None => 25,
        })
    }
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// TLS from the first byte (port 465, "SSL").
    #[default]
    Tls,
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    StartTls,
    /// No encryption at all: only for a relay on the same host or network.
    None,
}

/// `[sms]`: one SMS provider for messages and verification codes.
///
/// Flat, so that every key can be set from the environment (`PUSHBOT_SMS__ACCESS_KEY_SECRET`);
/// which keys a provider needs (and which it refuses) is checked when loading, and
/// [`SmsSettings::provider_config`] gives them typed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmsSettings {
    /// `aliyun`, `tencent` or `twilio`.
    pub provider: SmsProvider,

    /// Aliyun: the AccessKey ID (a RAM user's, with `dysms:SendSms`).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Aliyun: from `PUSHBOT_SMS__ACCESS_KEY_SECRET` or `access_key_secret_file`.
    #[serde(default, serialize_with = "exposed")]
    pub access_key_secret: Option<secrecy::SecretString>,
    /// Aliyun: a file holding the AccessKey secret; read at start-up.
    #[serde(default)]
    pub access_key_secret_file: Option<PathBuf>,

    /// Tencent Cloud: the API key's SecretId.
    #[serde(default)]
    pub secret_id: Option<String>,
    /// Tencent Cloud: from `PUSHBOT_SMS__SECRET_KEY` or `secret_key_file`.
    #[serde(default, serialize_with = "exposed")]
    pub secret_key: Option<secrecy::SecretString>,
    /// Tencent Cloud: a file holding the SecretKey; read at start-up.
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
    /// Tencent Cloud: the SMS application's SdkAppId, e.g. `1400006666`.
    #[serde(default)]
    pub sdk_app_id: Option<String>,
    /// Tencent Cloud: the API region (default `ap-guangzhou`).
    #[serde(default)]
    pub region: Option<String>,

    /// Aliyun and Tencent Cloud: the approved signature (签名), e.g. `阿里云短信测试`.
    #[serde(default)]
    pub sign_name: Option<String>,
    /// Aliyun and Tencent Cloud: the approved template for messages (variables `title`,
    /// `content`, `link`; Tencent: `{1}`, `{2}`, `{3}`).
    #[serde(default)]
    pub template: Option<String>,
    /// Aliyun and Tencent Cloud: the approved template for verification codes (variable
    /// `code`; Tencent: `{1}`).
    #[serde(default)]
    pub code_template: Option<String>,
    /// Aliyun and Tencent Cloud: longest template variable, in characters (default 35 for
    /// Aliyun, 12 for Tencent Cloud; enterprise accounts may allow more).
    #[serde(default)]
    pub max_variable_chars: Option<usize>,

    /// Twilio: the Account SID (`AC…`).
    #[serde(default)]
    pub account_sid: Option<String>,
    /// Twilio: from `PUSHBOT_SMS__AUTH_TOKEN` or `auth_token_file`.
    #[serde(default, serialize_with = "exposed")]
    pub auth_token: Option<secrecy::SecretString>,
    /// Twilio: a file holding the Auth Token; read at start-up.
    #[serde(default)]
    pub auth_token_file: Option<PathBuf>,
    /// Twilio: the sender, a number in E.164 (`+15005550006`), an alphanumeric sender ID, or
    /// a Messaging Service SID (`MG…`).
    #[serde(default)]
    pub from: Option<String>,
    /// Twilio: a message is cut to fit this many SMS segments (default 2).
    #[serde(default)]
    pub max_segments: Option<u32>,

    /// The provider's API (default per provider); tests and egress proxies change it.
    #[serde(default)]
    pub api_base: Option<HttpUrl>,
    /// SMS per member per day (messages and codes together).
    #[serde(
        default = "default_sms_daily_limit_per_member",
        deserialize_with = "at_least_one_u32"
    )]
    pub daily_limit_per_member: u32,
    /// SMS per day for the whole instance: a cost cap.
    #[serde(
        default = "default_sms_daily_limit",
        deserialize_with = "at_least_one_u32"
    )]
    pub daily_limit: u32,
    /// One call to the provider's API.
    #[serde(
        default = "default_sms_timeout",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub timeout: Duration,
    /// How long a verification code can be used.
    #[serde(
        default = "default_code_ttl",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub code_ttl: Duration,
    /// Verification texts per member, and per number, in any hour.
    #[serde(
        default = "default_codes_per_hour",
        deserialize_with = "at_least_one_u32"
    )]
    pub codes_per_hour: u32,
    /// After a text whose send timed out, how long to keep asking the provider whether it
    /// took it before recording the step `unconfirmed` (the provider's records are not
    /// searchable at once; where it cannot be asked at all, e.g. Twilio, this is the wait).
    #[serde(
        default = "default_sms_lookup_after",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub lookup_after: Duration,
}

/// Which SMS provider `[sms]` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum SmsProvider {
    Aliyun,
    Tencent,
    Twilio,
}

impl TryFrom<String> for SmsProvider {
    type Error = UnknownSmsProvider;
    fn try_from(value: String) -> Result<Self, UnknownSmsProvider> {
        match value.trim().to_ascii_lowercase().as_str() {
            "aliyun" => Ok(Self::Aliyun),
            "tencent" => Ok(Self::Tencent),
            "twilio" => Ok(Self::Twilio),
            _ => Err(UnknownSmsProvider(value)),
        }
    }
}

/// An `sms.provider` that is none of ours (as written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a supported SMS provider: use \"aliyun\" (Aliyun SMS), \"tencent\" (Tencent Cloud SMS) or \"twilio\""
)]
pub struct UnknownSmsProvider(pub String);

impl From<SmsProvider> for &'static str {
    fn from(provider: SmsProvider) -> Self {
        provider.as_str()
    }
}

impl SmsProvider {
    /// As written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aliyun => "aliyun",
            Self::Tencent => "tencent",
            Self::Twilio => "twilio",
        }
    }

    /// As shown to people.
    pub fn label(self) -> &'static str {
        match self {
            Self::Aliyun => "Aliyun SMS",
            Self::Tencent => "Tencent Cloud SMS",
            Self::Twilio => "Twilio",
        }
    }

    /// The API when `sms.api_base` is not set.
    pub fn default_api_base(self) -> &'static str {
        match self {
            Self::Aliyun => "https://dysmsapi.aliyuncs.com",
            Self::Tencent => "https://sms.tencentcloudapi.com",
            Self::Twilio => "https://api.twilio.com",
        }
    }

    /// The keys of `[sms]` this provider uses, besides the common ones.
    fn own_keys(self) -> &'static [&'static str] {
        match self {
            Self::Aliyun => &[
                "access_key_id",
                "access_key_secret",
                "access_key_secret_file",
                "sign_name",
                "template",
                "code_template",
                "max_variable_chars",
            ],
            Self::Tencent => &[
                "secret_id",
                "secret_key",
                "secret_key_file",
                "sdk_app_id",
                "region",
                "sign_name",
                "template",
                "code_template",
                "max_variable_chars",
            ],
            Self::Twilio => &[
                "account_sid",
                "auth_token",
                "auth_token_file",
                "from",
                "max_segments",
            ],
        }
    }
}

/// `[sms]` checked and typed for its provider ("parse, don't validate").
#[derive(Debug, Clone)]
pub enum SmsProviderConfig {
    Aliyun(AliyunSms),
    Tencent(TencentSms),
    Twilio(TwilioSms),
}

/// Aliyun SMS (dysmsapi 2017-05-25).
#[derive(Debug, Clone)]
pub struct AliyunSms {
    pub api_base: HttpUrl,
    pub access_key_id: String,
    pub access_key_secret: secrecy::SecretString,
    pub sign_name: String,
    pub template: String,
    pub code_template: String,
    pub max_variable_chars: usize,
}

/// Tencent Cloud SMS (API 3.0, 2021-01-11).
#[derive(Debug, Clone)]
pub struct TencentSms {
    pub api_base: HttpUrl,
    pub secret_id: String,
    pub secret_key: secrecy::SecretString,
    /// Digits.
    pub sdk_app_id: String,
    pub region: String,
    pub sign_name: String,
    /// Digits.
    pub template: String,
    /// Digits.
    pub code_template: String,
    pub max_variable_chars: usize,
}

/// Twilio Programmable Messaging.
#[derive(Debug, Clone)]
pub struct TwilioSms {
    pub api_base: HttpUrl,
    pub account_sid: String,
    pub auth_token: secrecy::SecretString,
    pub from: TwilioFrom,
    pub max_segments: u32,
}

/// Who a Twilio message is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioFrom {
    /// A Twilio number, E.164 (`+15005550006`): sent as `From`.
    Number(String),
    /// An alphanumeric sender ID (`PushBot`): sent as `From`.
    Alphanumeric(String),
    /// A Messaging Service SID (`MG…`): sent as `MessagingServiceSid`.
    MessagingService(String),
}

/// Twilio's limit on `Body` is 1600 characters: 10 segments of 153 GSM-7 characters fit.
pub const MAX_SMS_SEGMENTS: u32 = 10;

impl SmsSettings {
    /// The provider's settings, typed. Loading [`Settings`] already made sure this
    /// succeeds (secrets read from their files); it fails only for `SmsSettings` built by
    /// hand.
    pub fn provider_config(&self) -> Result<SmsProviderConfig, ConfigError> {
        let provider = self.provider;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: format!("sms.{key}"),
            message,
        };
        // A key of another provider is refused by name, with the keys this one uses.
        for (key, set) in self.provider_keys_set() {
            if set && !provider.own_keys().contains(&key) {
                return Err(invalid(key, self.foreign_key_message(key)));
            }
        }
        let text = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let secret = |value: &Option<secrecy::SecretString>| {
            use secrecy::ExposeSecret as _;
            value
                .as_ref()
                .filter(|s| !s.expose_secret().trim().is_empty())
                .map(|s| secrecy::SecretString::from(s.expose_secret().trim().to_owned()))
        };
        let api_base = match &self.api_base {
            Some(url) => url.clone(),
            None => HttpUrl::try_from(provider.default_api_base().to_owned())
                .map_err(|message| invalid("api_base", message.to_string()))?,
        };
        // `template` (for messages) and `code_template` (for codes): Aliyun's codes
        // (`SMS_…`), Tencent Cloud's IDs (digits).
        let template_id = |key: &str, digits: bool| -> Result<String, ConfigError> {
            let (value, what) = match key {
                "template" => (&self.template, "messages"),
                _ => (&self.code_template, "verification codes"),
            };
            let Some(id) = text(value) else {
                return Err(invalid(
                    key,
                    format!(
                        "{} sends only approved templates: set sms.{key} to the {} of the template for {what}",
                        provider.label(),
                        if digits {
                            "ID (digits)"
                        } else {
                            "code (SMS_…)"
                        },
                    ),
                ));
            };
            if digits && !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(
                    key,
                    format!(
                        "{id:?} is not a Tencent Cloud template ID: it is all digits, e.g. \"1110\""
                    ),
                ));
            }
            if !digits && id.chars().any(char::is_whitespace) {
                return Err(invalid(
                    key,
                    format!(
                        "{id:?} is not an Aliyun template code: write it like \"SMS_15305****\""
                    ),
                ));
            }
            Ok(id)
        };
        let sign_name = || {
            text(&self.sign_name).ok_or_else(|| {
                invalid(
                    "sign_name",
                    format!(
                        "{} needs the approved signature (签名) as sms.sign_name",
                        provider.label()
                    ),
                )
            })
        };
        let max_variable_chars = |default: usize| match self.max_variable_chars {
            None => Ok(default),
            Some(n) if (2..=1000).contains(&n) => Ok(n),
            Some(n) => Err(invalid(
                "max_variable_chars",
                format!("{n} is out of range: between 2 and 1000 characters"),
            )),
        };
        // A key and its secret: both, or an error naming the one missing.
        let key_pair = |id_key: &'static str,
                        id: &Option<String>,
                        secret_key: &'static str,
                        value: &Option<secrecy::SecretString>| {
            match (text(id), secret(value)) {
                (Some(id), Some(value)) => Ok((id, value)),
                (id, _) => Err(invalid(
                    if id.is_none() { id_key } else { secret_key },
                    format!(
                        "{} needs {id_key} and {secret_key} (set PUSHBOT_SMS__{} or sms.{secret_key}_file)",
                        provider.label(),
                        secret_key.to_uppercase()
                    ),
                )),
            }
        };
        match provider {
            SmsProvider::Aliyun => {
                let (access_key_id, access_key_secret) = key_pair(
                    "access_key_id",
                    &self.access_key_id,
                    "access_key_secret",
                    &self.access_key_secret,
                )?;
                Ok(SmsProviderConfig::Aliyun(AliyunSms {
                    api_base,
                    access_key_id,
                    access_key_secret,
                    sign_name: sign_name()?,
                    template: template_id("template", false)?,
                    code_template: template_id("code_template", false)?,
                    max_variable_chars: max_variable_chars(35)?,
                }))
            }
            SmsProvider::Tencent => {
                let (secret_id, secret_key) =
                    key_pair("secret_id", &self.secret_id, "secret_key", &self.secret_key)?;
                let sdk_app_id = text(&self.sdk_app_id)
                    .filter(|id| id.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| {
                        invalid(
                            "sdk_app_id",
                            "Tencent Cloud needs the SMS application's SdkAppId, digits such as \"1400006666\" (短信控制台 → 应用管理)".to_owned(),
                        )
                    })?;
                let region = match text(&self.region) {
                    None => "ap-guangzhou".to_owned(),
                    Some(r)
                        if r.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
                    {
                        r
                    }
                    Some(r) => {
                        return Err(invalid(
                            "region",
                            format!(
                                "{r:?} is not a Tencent Cloud region: write it like \"ap-guangzhou\""
                            ),
                        ));
                    }
                };
                Ok(SmsProviderConfig::Tencent(TencentSms {
                    api_base,
                    secret_id,
                    secret_key,
                    sdk_app_id,
                    region,
                    sign_name: sign_name()?,
                    template: template_id("template", true)?,
                    code_template: template_id("code_template", true)?,
                    max_variable_chars: max_variable_chars(12)?,
                }))
            }
            SmsProvider::Twilio => {
                let (account_sid, auth_token) = key_pair(
                    "account_sid",
                    &self.account_sid,
                    "auth_token",
                    &self.auth_token,
                )?;
                if !is_twilio_sid(&account_sid, "AC") {
                    return Err(invalid(
                        "account_sid",
                        format!(
                            "{account_sid:?} is not a Twilio Account SID: \"AC\" and 32 hexadecimal digits, shown on the Twilio console's front page"
                        ),
                    ));
                }
                let from = text(&self.from)
                    .ok_or_else(|| {
                        invalid(
                            "from",
                            "Twilio needs a sender: a Twilio number such as \"+15005550006\", an alphanumeric sender ID, or a Messaging Service SID (\"MG…\")".to_owned(),
                        )
                    })
                    .and_then(|from| {
                        twilio_from(&from).map_err(|m| invalid("from", m.to_string()))
                    })?;
                let max_segments = match self.max_segments {
                    None => 2,
                    Some(n) if (1..=MAX_SMS_SEGMENTS).contains(&n) => n,
                    Some(n) => {
                        return Err(invalid(
                            "max_segments",
                            format!(
                                "{n} is out of range: between 1 and {MAX_SMS_SEGMENTS} segments"
                            ),
                        ));
                    }
                };
                Ok(SmsProviderConfig::Twilio(TwilioSms {
                    api_base,
                    account_sid,
                    auth_token,
                    from,
                    max_segments,
                }))
            }
        }
    }

    /// Every provider-specific key, and whether it is set.
    fn provider_keys_set(&self) -> [(&'static str, bool); 17] {
        [
            ("access_key_id", self.access_key_id.is_some()),
            ("access_key_secret", self.access_key_secret.is_some()),
            (
                "access_key_secret_file",
                self.access_key_secret_file.is_some(),
            ),
            ("secret_id", self.secret_id.is_some()),
            ("secret_key", self.secret_key.is_some()),
            ("secret_key_file", self.secret_key_file.is_some()),
            ("sdk_app_id", self.sdk_app_id.is_some()),
            ("region", self.region.is_some()),
            ("sign_name", self.sign_name.is_some()),
            ("template", self.template.is_some()),
            ("code_template", self.code_template.is_some()),
            ("max_variable_chars", self.max_variable_chars.is_some()),
            ("account_sid", self.account_sid.is_some()),
            ("auth_token", self.auth_token.is_some()),
            ("auth_token_file", self.auth_token_file.is_some()),
            ("from", self.from.is_some()),
            ("max_segments", self.max_segments.is_some()),
        ]
    }

    fn foreign_key_message(&self, key: &str) -> String {
        let provider = self.provider;
        let owners: Vec<&str> = [
            SmsProvider::Aliyun,
            SmsProvider::Tencent,
            SmsProvider::Twilio,
        ]
        .into_iter()
        .filter(|p| p.own_keys().contains(&key))
        .map(SmsProvider::label)
        .collect();
        let why = match (provider, key) {
            (SmsProvider::Twilio, "template" | "code_template") => {
                " (Twilio sends free text, no templates)".to_owned()
            }
            (SmsProvider::Twilio, "max_variable_chars") => {
                " (Twilio sends free text: its length is sms.max_segments)".to_owned()
            }
            (_, "max_segments") => format!(
                " ({} fills an approved template: the length limit is sms.max_variable_chars)",
                provider.label()
            ),
            _ => String::new(),
        };
        format!(
            "is for {}, not for provider = \"{}\"{why}; {} uses {}",
            owners.join(" and "),
            provider.as_str(),
            provider.label(),
            provider.own_keys().join(", "),
        )
    }
}

/// `AC` or `MG` and 32 hexadecimal digits.
fn is_twilio_sid(sid: &str, prefix: &str) -> bool {
    sid.len() == 34 && sid.starts_with(prefix) && sid.bytes().skip(2).all(|b| b.is_ascii_hexdigit())
}

/// `sms.from` for Twilio: a Messaging Service SID, an E.164 number or an alphanumeric
/// sender ID (1–11 letters, digits and spaces, at least one letter).
fn twilio_from(from: &str) -> Result<TwilioFrom, TwilioFromError> {
    if from.starts_with("MG") {
        return if is_twilio_sid(from, "MG") {
            Ok(TwilioFrom::MessagingService(from.to_owned()))
        } else {
            Err(TwilioFromError::ServiceSid(from.to_owned()))
        };
    }
    if from.starts_with('+')
        || from
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b' ' || b == b'-')
    {
        let digits: String = from.chars().filter(char::is_ascii_digit).collect();
        let plus_and_digits = from
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-'));
        return if from.starts_with('+')
            && plus_and_digits
            && (8..=15).contains(&digits.len())
            && !digits.starts_with('0')
        {
            Ok(TwilioFrom::Number(format!("+{digits}")))
        } else {
            Err(TwilioFromError::Number(from.to_owned()))
        };
    }
    let alphanumeric = (1..=11).contains(&from.chars().count())
        && from.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ')
        && from.chars().any(|c| c.is_ascii_alphabetic());
    if alphanumeric {
        Ok(TwilioFrom::Alphanumeric(from.to_owned()))
    } else {
        Err(TwilioFromError::Sender(from.to_owned()))
    }
}

/// Which kind of Twilio sender `sms.from` looks like but is not (each with the value as
/// written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum TwilioFromError {
    #[error("{0:?} is not a Messaging Service SID: \"MG\" and 32 hexadecimal digits")]
    ServiceSid(String),
    #[error(
        "{0:?} is not a sender number: write it in E.164 with the country code, like \"+15005550006\""
    )]
    Number(String),
    #[error(
        "{0:?} is not a sender: a Twilio number such as \"+15005550006\", an alphanumeric sender ID (up to 11 letters, digits and spaces), or a Messaging Service SID (\"MG…\")"
    )]
    Sender(String),
}

/// The `From` of every mail, checked at start-up.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Sender(lettre::message::Mailbox);

impl Sender {
    pub fn mailbox(&self) -> &lettre::message::Mailbox {
        &self.0
    }
}

impl TryFrom<String> for Sender {
    type Error = InvalidSender;
    fn try_from(value: String) -> Result<Self, InvalidSender> {
        match value.trim().parse() {
            Ok(mailbox) => Ok(Sender(mailbox)),
            Err(error) => Err(InvalidSender { value, error }),
        }
    }
}

/// An `email.from` that is no mailbox: the value as written, and why.
#[derive(Debug, thiserror::Error)]
#[error("{value:?} is not a sender address ({error}); write it like \"pushbot <bot@example.com>\"")]
pub struct InvalidSender {
    pub value: String,
    pub error: lettre::address::AddressError,
}

impl Serialize for Sender {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0.to_string(), f)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on, e.g. `0.0.0.0:8080`. Behind a reverse proxy on the same host,
    /// `127.0.0.1:8080` is enough.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The URL users reach this service at: used in the curl examples the bot sends and in
    /// links to message pages; WeCom's callback URL is `<public_url>/wecom/callback`.
    pub public_url: HttpUrl,
    /// A client must send a complete request head (request line and headers) within this
    /// time once the server starts waiting for one: right after connecting, and again after
    /// each response on a keep-alive connection. So it is also the keep-alive idle timeout.
    /// Trickled bytes do not extend it.
    #[serde(
        default = "default_header_read_timeout",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub header_read_timeout: Duration,
    /// Open client connections at most. At the cap no new connection is accepted (they wait
    /// in the kernel's listen backlog) until one closes. Lowered at start-up, with a warning,
    /// if the open-file limit cannot hold it plus a reserve of 64 + `delivery.concurrency`.
    #[serde(default = "default_max_connections", deserialize_with = "at_least_one")]
    pub max_connections: usize,
    /// How many messages one member may send: a burst of `count`, refilled at `count` per
    /// `per`; over it `/send` answers 429 with `Retry-After`. Keyed by member, so rotating
    /// the token does not reset it.
    #[serde(default)]
    pub send_rate: SendRate,
    /// Longest message content accepted, in bytes (larger: 413), between 1024 and 1048576
    /// (1 MiB). Content longer than one WeCom message (2048 bytes) arrives as a card linking
    /// to the message's page.
    #[serde(
        default = "default_max_content_bytes",
        deserialize_with = "content_limit"
    )]
    pub max_content_bytes: usize,
    /// Serve Prometheus metrics at `GET /metrics` (otherwise it answers 404).
    #[serde(default)]
    pub metrics: bool,
    /// When set, `/metrics` requires `Authorization: Bearer <this>` (401 without): printable
    /// ASCII without spaces, e.g. from `openssl rand -hex 32`. Set it from
    /// `PUSHBOT_SERVER__METRICS_TOKEN`; never printed.
    #[serde(default, serialize_with = "exposed")]
    pub metrics_token: Option<secrecy::SecretString>,
}

/// `{ count = 300, per = "1m" }`: at most `count` messages in a burst, `count` more per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SendRate {
    #[serde(deserialize_with = "at_least_one_u32")]
    pub count: u32,
    #[serde(
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub per: Duration,
}

impl Default for SendRate {
    fn default() -> Self {
        Self {
            count: 300,
            per: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// Where the data lives: a SQLite file (`sqlite://path`, relative to the working
    /// directory), or a PostgreSQL database (`postgres://user:password@host:port/db`) that
    /// several instances can share. A password goes in `PUSHBOT_STORAGE__URL` (the whole
    /// URL) or `PGPASSWORD`; it is never printed.
    #[serde(default = "default_storage_url")]
    pub url: StorageUrl,
    /// How long delivered, failed and cancelled messages (and their pages) are kept; `"0"`:
    /// forever. Queued and scheduled messages are never purged. At least `"1d"` (an `Idempotency-Key` is honoured
    /// for 24 hours) and twice `delivery.retry_window`.
    #[serde(
        default = "default_retention",
        deserialize_with = "retention",
        serialize_with = "retention_or_zero"
    )]
    pub retention: Option<Duration>,
    /// Connections in the read pool (the group-commit writer has one more of its own), 1 to
    /// 1000.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            url: default_storage_url(),
            retention: default_retention(),
            pool_size: default_pool_size(),
        }
    }
}

/// Where the data lives: a SQLite file (`sqlite://path`), or a PostgreSQL database
/// (`postgres://user:password@host:port/db`) that several instances can share.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct StorageUrl {
    url: String,
    engine: Engine,
    /// The database file; `None` for PostgreSQL or an in-memory database.
    path: Option<PathBuf>,
}

impl StorageUrl {
    /// The URL as configured, for the driver. May hold a password: never log it.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub fn sqlite_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What to show people: the SQLite URL, or PostgreSQL's host, port and database
    /// without user name or password.
    pub fn redacted(&self) -> String {
        match self.engine {
            Engine::Sqlite => self.url.clone(),
            Engine::Postgres => crate::store::describe_postgres(&self.url),
        }
    }
}

impl TryFrom<String> for StorageUrl {
    type Error = StorageUrlError;
    fn try_from(url: String) -> Result<Self, StorageUrlError> {
        let url = url.trim().to_owned();
        let Some(engine) = Engine::of_url(&url) else {
            // The value may hold a password: describe it without repeating it.
            let scheme = url.split(':').next().unwrap_or("").to_owned();
            return Err(StorageUrlError::Unsupported { scheme });
        };
        if engine == Engine::Postgres
            && let Err(err) = url.parse::<sqlx::postgres::PgConnectOptions>()
        {
            return Err(StorageUrlError::InvalidPostgres {
                reason: err.to_string().replace(&url, "…"),
            });
        }
        let path = crate::store::sqlite_path(&url);
        Ok(Self { url, engine, path })
    }
}

/// Why `storage.url` is refused. Neither variant repeats the URL (it may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageUrlError {
    #[error(
        "a {scheme:?} URL is not supported: use sqlite://path/to/pushbot.db (the embedded default) or postgres://user:password@host:5432/database"
    )]
    Unsupported { scheme: String },
    /// `reason`: the driver's, with the URL itself cut out.
    #[error(
        "not a valid PostgreSQL URL ({reason}): expected postgres://user:password@host:5432/database"
    )]
    InvalidPostgres { reason: String },
}

/// The URL as configured, password included: see [`Settings`] on serializing.
impl Serialize for StorageUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.url)
    }
}

impl fmt::Debug for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

/// An absolute `http` or `https` URL.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HttpUrl(Url);

impl HttpUrl {
    pub fn url(&self) -> &Url {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The URL without a trailing slash, for appending paths.
    pub fn base(&self) -> &str {
        self.0.as_str().trim_end_matches('/')
    }
}

impl TryFrom<String> for HttpUrl {
    type Error = HttpUrlError;
    fn try_from(value: String) -> Result<Self, HttpUrlError> {
        let url = match Url::parse(value.trim()) {
            Ok(url) => url,
            Err(error) => return Err(HttpUrlError::NotUrl { value, error }),
        };
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(HttpUrlError::NotHttp { value });
        }
        Ok(Self(url))
    }
}

/// Why a value is no [`HttpUrl`] (each with the value as written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpUrlError {
    #[error("{value:?} is not a URL ({error}); write it like https://push.example.com")]
    NotUrl {
        value: String,
        error: url::ParseError,
    },
    #[error("{value:?} must be an http:// or https:// URL such as https://push.example.com")]
    NotHttp { value: String },
}

impl Serialize for HttpUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_str(), f)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeComSettings {
    /// The company's CorpID (我的企业 → 企业信息 → 企业ID), e.g. `ww0123456789abcdef`.
    pub corp_id: CorpId,
    /// The app's AgentId (应用管理 → the app), a positive number.
    pub agent_id: AgentId,
    /// The app's Secret (应用管理 → the app → Secret). Set it from `PUSHBOT_WECOM__SECRET`.
    pub secret: CorpSecret,
    /// The callback Token (接收消息 → 设置API接收): 1 to 32 letters or digits.
    pub callback_token: CallbackToken,
    /// The callback EncodingAESKey (接收消息 → 设置API接收): 43 characters.
    pub encoding_aes_key: EncodingAesKey,
    /// WeCom's API. Change it only for an egress relay or a test stand-in.
    // Its default, DEFAULT_API_BASE, is set as a config default (`from_builder`), so it is
    // parsed like any user value.
    pub api_base: HttpUrl,
    /// Timeout of one call to the WeCom API.
    #[serde(
        default = "default_request_timeout",
        deserialize_with = "duration",
        serialize_with = "short_duration"
    )]
    pub request_timeout: Duration,
    /// Callbacks whose signed timestamp is further than this from our clock are refused,
    /// so a captured callback cannot be replayed once its de-duplication key is forgotten.
    /// `"0s"` turns the check off.
    #[serde(
        default = "default_callback_max_age",
        deserialize_with = "duration",
        serialize_with = "short_duration"
    )]
    pub callback_max_age: Duration,
    /// Per member, at most `count` messages in any window of `per` (WeCom silently drops
    /// anything above 30 a minute or 1000 an hour while answering success). The excess
    /// waits in the member's queue, in order.
    #[serde(
        default = "default_member_limits",
        deserialize_with = "member_limits",
        serialize_with = "rate_windows"
    )]
    pub member_limits: Vec<RateWindow>,
    /// Send WeCom API calls (and only those) through this proxy: `http://`, `https://`,
    /// `socks5://` or `socks5h://`, credentials in the URL allowed (never printed). Without
    /// it, the `HTTPS_PROXY`/`ALL_PROXY`/`NO_PROXY` environment applies as usual.
    #[serde(default)]
    pub proxy: Option<ProxyUrl>,
}

/// A proxy URL. Its password (and user name) never leave it: `Debug` and `Display` show
/// `http://***@host:3128/`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ProxyUrl(Url);

impl ProxyUrl {
    /// The URL with its credentials, for the HTTP client only.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The URL as it may be shown: credentials replaced by `***`.
    pub fn redacted(&self) -> String {
        let mut shown = self.0.clone();
        if !shown.username().is_empty() || shown.password().is_some() {
            // Cannot fail for a URL with a host, which try_from made sure of.
            let _ = shown.set_password(None);
            let _ = shown.set_username("***");
        }
        shown.to_string()
    }
}

impl TryFrom<String> for ProxyUrl {
    type Error = ProxyUrlError;
    fn try_from(value: String) -> Result<Self, ProxyUrlError> {
        let url = Url::parse(value.trim()).map_err(ProxyUrlError::NotUrl)?;
        if !matches!(url.scheme(), "http" | "https" | "socks5" | "socks5h") || url.host().is_none()
        {
            return Err(ProxyUrlError::NotProxy);
        }
        Ok(Self(url))
    }
}

/// Why a value is no [`ProxyUrl`]. Neither variant repeats the value (it may hold a
/// password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyUrlError {
    #[error("not a URL ({0}); write it like http://proxy.example.com:3128")]
    NotUrl(url::ParseError),
    #[error(
        "must be an http://, https://, socks5:// or socks5h:// URL with a host, such as http://proxy.example.com:3128"
    )]
    NotProxy,
}

/// The URL with its credentials: see [`Settings`] on serializing.
impl Serialize for ProxyUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    /// How long a message that fails on a channel for a transient reason (network, a busy or
    /// throttling service) keeps being retried there; then it goes on to its next channel,
    /// or is marked failed.
    #[serde(
        default = "default_retry_window",
        deserialize_with = "duration",
        serialize_with = "short_duration"
    )]
    pub retry_window: Duration,
    /// First retry delay; it doubles on each failure (with jitter) up to
    /// `delivery.backoff_max`.
    #[serde(
        default = "default_backoff_initial",
        deserialize_with = "duration",
        serialize_with = "short_duration"
    )]
    pub backoff_initial: Duration,
    /// Longest retry delay.
    #[serde(
        default = "default_backoff_max",
        deserialize_with = "duration",
        serialize_with = "short_duration"
    )]
    pub backoff_max: Duration,
    /// Delivery attempts in flight at once (across all members).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How often due `queued` messages that no delivery task is working on are
    /// rescheduled: a safety net (normally there are none).
    #[serde(
        default = "default_sweep_interval",
        deserialize_with = "duration",
        serialize_with = "short_duration"
    )]
    pub sweep_interval: Duration,
    /// At shutdown, how long attempts in flight may still run; then they are cut off and
    /// their messages handed back to the queue.
    #[serde(
        default = "default_shutdown_grace",
        deserialize_with = "duration",
        serialize_with = "short_duration"
    )]
    pub shutdown_grace: Duration,
    /// When a member's waiting messages would wait longer than this for their turn (the
    /// member limits), they are sent together as one digest. `"off"`: never.
    #[serde(
        default = "default_digest_after",
        deserialize_with = "optional_duration",
        serialize_with = "duration_or_off"
    )]
    pub digest_after: Option<Duration>,
    /// Members (lanes) this instance works on at once; the rest of the queue stays on disk.
    #[serde(default = "default_max_in_flight", deserialize_with = "at_least_one")]
    pub max_in_flight: usize,
    /// How long a claim on a member's lane lasts without renewal; another instance takes
    /// the lane over after a crash once it expires.
    #[serde(
        default = "default_lease",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub lease: Duration,
    /// This instance's name in claims. Default `<hostname>:<port>`, stable across restarts
    /// so that a restarted instance takes its own claims back at once.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Longest wait between two probes of a channel that is down.
    #[serde(
        default = "default_probe_max",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub probe_max: Duration,
    /// `/healthz` answers 503 when the delivery scheduler has not begun a pass for longer
    /// than this (it begins one at least every second while it runs).
    #[serde(
        default = "default_stall_after",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub stall_after: Duration,
    /// Time zone of members who have not set their own (`timezone …` in the chat), as an
    /// offset from UTC (`"+08:00"`): their quiet hours, the times in their digests and
    /// "today" in `status`.
    #[serde(
        default = "default_utc_offset",
        deserialize_with = "utc_offset",
        serialize_with = "utc_offset_text"
    )]
    pub utc_offset: i32,
    /// Quiet hours for members who have not set their own (`quiet …` in the chat), e.g.
    /// `"23:00-07:00"`: messages that arrive in the window wait until it ends (then come as
    /// one digest when several waited); urgent ones go through unless `" strict"` follows.
    #[serde(
        default,
        deserialize_with = "quiet_hours",
        serialize_with = "quiet_hours_text"
    )]
    pub quiet_hours: Option<QuietHours>,
    /// Channels a message tries in order, unless the sender or the member says otherwise;
    /// a channel a member cannot be reached on (no bound address) is skipped.
    #[serde(
        default = "default_fallback",
        deserialize_with = "route",
        serialize_with = "route_names"
    )]
    pub fallback: Route,
    /// How messages look for members who have not chosen (`format …` in the chat):
    /// `text`, `markdown` or `card`.
    #[serde(default)]
    pub format: Look,
    /// The furthest ahead a sender may schedule a message (`delay`, `at`, ntfy's
    /// `X-Delay`); further is refused (400). Scheduled messages wait in the database, not
    /// in memory, and are never purged before they are sent.
    #[serde(
        default = "default_max_delay",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub max_delay: Duration,
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
            digest_after: default_digest_after(),
            max_in_flight: default_max_in_flight(),
            lease: default_lease(),
            instance_id: None,
            probe_max: default_probe_max(),
            stall_after: default_stall_after(),
            utc_offset: default_utc_offset(),
            quiet_hours: None,
            fallback: default_fallback(),
            format: Look::default(),
            max_delay: default_max_delay(),
        }
    }
}

/// `[media]`: images and files sent with messages (kept in the database, with the same
/// retention as their messages).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSettings {
    /// The largest image or file accepted, in bytes (larger: 413). The default, 20 MiB, is
    /// WeCom's limit for a file; WeCom gets a JPG or PNG up to 10 MB as an image, anything
    /// else as a file.
    #[serde(
        default = "default_media_max_bytes",
        deserialize_with = "at_least_one_u64"
    )]
    pub max_bytes: u64,
    /// Images and files one message may carry; `0`: none are accepted.
    #[serde(default = "default_media_max_files")]
    pub max_files: u32,
    /// What all stored images and files may take together, in bytes; at least
    /// `media.max_bytes`. A file that does not fit is refused until older messages are
    /// purged (`storage.retention`).
    #[serde(default = "default_media_total_bytes")]
    pub total_bytes: u64,
    /// How long fetching an image or file from a URL (`image_url`, …) may take, whole.
    #[serde(
        default = "default_media_fetch_timeout",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub fetch_timeout: Duration,
    /// How long a request that carries files (a multipart `/send`, an ntfy file body) may
    /// take, whole; every other request has 30 seconds. 20 MiB at 1 Mbit/s takes under 3
    /// minutes.
    #[serde(
        default = "default_media_upload_timeout",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub upload_timeout: Duration,
    /// Networks that are not public (loopback, private, link-local, …) but may be fetched
    /// from anyway, as CIDRs (`["10.1.2.0/24"]`; a bare address is one host): an image host
    /// on your intranet. Empty: public addresses only.
    #[serde(default, deserialize_with = "networks")]
    pub fetch_allow: Vec<ipnet::IpNet>,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            max_bytes: default_media_max_bytes(),
            max_files: default_media_max_files(),
            total_bytes: default_media_total_bytes(),
            fetch_timeout: default_media_fetch_timeout(),
            upload_timeout: default_media_upload_timeout(),
            fetch_allow: Vec::new(),
        }
    }
}

impl MediaSettings {
    /// What the store may keep ([`Store::put_blob`](crate::store::Store::put_blob)).
    pub fn blob_limits(&self) -> crate::store::BlobLimits {
        crate::store::BlobLimits {
            max_bytes: self.max_bytes,
            total_bytes: self.total_bytes,
        }
    }
}

/// `[console]`: the web console at `<public_url>/console`, opened with the one-time link the
/// chat's `login` answers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// How long a console session lasts after logging in (the cookie's lifetime); `logout`
    /// and `rotate` in the chat end it sooner.
    #[serde(
        default = "default_console_session_ttl",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub session_ttl: Duration,
    /// How long the link `login` answers in the chat can be used (once).
    #[serde(
        default = "default_console_login_ttl",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub login_ttl: Duration,
    /// WeCom userids who may open the operators' page (`/console/admin`): members and
    /// their token age, queues, channel health, recent failures, the doctor's checks.
    #[serde(default, deserialize_with = "userids")]
    pub admins: Vec<String>,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            session_ttl: default_console_session_ttl(),
            login_ttl: default_console_login_ttl(),
            admins: Vec::new(),
        }
    }
}

/// `[groups]`: one token that reaches a team (`group new ops` in the chat, `POST /groups`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsSettings {
    /// Members one group may have.
    #[serde(
        default = "default_group_max_members",
        deserialize_with = "at_least_one_u32"
    )]
    pub max_members: u32,
    /// Groups one member may be in (made or joined).
    #[serde(
        default = "default_max_groups_per_member",
        deserialize_with = "at_least_one_u32"
    )]
    pub max_groups_per_member: u32,
    /// How long an invite code works; its group's owner renews it with `group invite NAME`.
    #[serde(
        default = "default_invite_ttl",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub invite_ttl: Duration,
    /// How often the members of the WeCom-backed groups are read from WeCom again.
    #[serde(
        default = "default_group_refresh",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub refresh: Duration,
    /// Wrong invite codes one member may type: at most `count` in any `per` (at most a
    /// day); more are refused without looking at the code.
    #[serde(default = "default_join_failures")]
    pub join_failures: SendRate,
    /// Groups whose members are a WeCom department's or tag's (`[[groups.wecom]]`: `name`,
    /// `party = [department ids]`, `tag = [tag ids]`, `owners = [userids]` who see and
    /// rotate its token).
    #[serde(default)]
    pub wecom: Vec<WecomGroup>,
}

/// `[ack]`: messages sent with `ack=true` or `escalate=…` (issue 30).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AckSettings {
    /// The shortest `escalate=` a sender may ask for (the longest is 24 hours).
    #[serde(
        default = "default_escalate_min",
        deserialize_with = "positive_duration",
        serialize_with = "short_duration"
    )]
    pub escalate_min: Duration,
    /// Messages the compatible routes mark urgent — ntfy priority 5 (`urgent`), Bark
    /// `level=critical`, gotify priority 8 and above — ask to be acknowledged.
    #[serde(default = "default_true")]
    pub urgent: bool,
    /// Firing Alertmanager and Grafana alerts whose `severity` label is one of these ask to
    /// be acknowledged.
    #[serde(default = "default_ack_severities")]
    pub severities: Vec<String>,
}

impl Default for AckSettings {
    fn default() -> Self {
        Self {
            escalate_min: default_escalate_min(),
            urgent: true,
            severities: default_ack_severities(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_ack_severities() -> Vec<String> {
    vec!["critical".to_owned()]
}

/// The longest `escalate=` a sender may ask for.
pub const ESCALATE_MAX: Duration = Duration::from_secs(86_400);

fn default_escalate_min() -> Duration {
    Duration::from_secs(60)
}

/// `[[groups.wecom]]`: a group backed by WeCom departments and tags.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WecomGroup {
    pub name: String,
    /// Department ids: their members (`user/simplelist` with `fetch_child=1`: their
    /// sub-departments' members too, where WeCom honours it).
    #[serde(default)]
    pub party: Vec<u64>,
    /// Tag ids: the members tagged.
    #[serde(default)]
    pub tag: Vec<u64>,
    /// WeCom userids who own the group: they see and rotate its token.
    #[serde(default, deserialize_with = "userids")]
    pub owners: Vec<String>,
}

impl Default for GroupsSettings {
    fn default() -> Self {
        Self {
            max_members: default_group_max_members(),
            max_groups_per_member: default_max_groups_per_member(),
            invite_ttl: default_invite_ttl(),
            refresh: default_group_refresh(),
            join_failures: default_join_failures(),
            wecom: Vec::new(),
        }
    }
}

impl GroupsSettings {
    /// The limits the chat and `/groups` apply.
    pub fn limits(&self) -> crate::groups::Limits {
        crate::groups::Limits {
            max_members: self.max_members,
            max_groups_per_member: self.max_groups_per_member,
            invite_ttl: self.invite_ttl,
            join_failures: self.join_failures.count,
            join_window: self.join_failures.per,
            // Checked at start-up (`check`): every name normalises.
            wecom_names: self
                .wecom
                .iter()
                .filter_map(|g| crate::groups::normalize_name(&g.name).ok())
                .collect(),
        }
    }

    /// What a single value cannot say: the WeCom-backed groups' names and sources, and the
    /// window of wrong invite codes (kept a day at most).
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_owned(),
            message,
        };
        if self.join_failures.per > Duration::from_secs(86_400) {
            return Err(invalid(
                "groups.join_failures",
                "per must be at most \"1d\" (wrong codes are kept a day)".to_owned(),
            ));
        }
        let mut names: Vec<String> = Vec::new();
        for (i, group) in self.wecom.iter().enumerate() {
            let key = format!("groups.wecom[{i}]");
            let name = crate::groups::normalize_name(&group.name)
                .map_err(|e| invalid(&format!("{key}.name"), format!("{e}")))?;
            if names.contains(&name) {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("two [[groups.wecom]] tables are named {name:?}: names must differ"),
                ));
            }
            if group.party.is_empty() && group.tag.is_empty() {
                return Err(invalid(
                    &key,
                    format!(
                        "group {name:?} needs party = [department ids] or tag = [tag ids] \
                         (or both): where its members come from"
                    ),
                ));
            }
            if group.party.contains(&0) || group.tag.contains(&0) {
                return Err(invalid(
                    &key,
                    format!("group {name:?}: department and tag ids start at 1"),
                ));
            }
            names.push(name);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
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

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_connections() -> usize {
    1024
}
fn default_pool_size() -> u32 {
    crate::store::DEFAULT_POOL_SIZE
}

fn default_storage_url() -> StorageUrl {
    StorageUrl {
        url: "sqlite://pushbot.db".to_owned(),
        engine: Engine::Sqlite,
        path: Some(PathBuf::from("pushbot.db")),
    }
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
fn default_stall_after() -> Duration {
    Duration::from_secs(30)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_member_limits() -> Vec<RateWindow> {
    vec![
        RateWindow {
            count: 30,
            per: Duration::from_secs(60),
        },
        RateWindow {
            count: 1000,
            per: Duration::from_secs(3600),
        },
    ]
}
fn default_digest_after() -> Option<Duration> {
    Some(Duration::from_secs(600))
}
fn default_max_in_flight() -> usize {
    512
}
fn default_lease() -> Duration {
    Duration::from_secs(30)
}
fn default_probe_max() -> Duration {
    Duration::from_secs(30)
}
fn default_max_delay() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_utc_offset() -> i32 {
    8 * 3600
}
fn default_fallback() -> Route {
    Route::new(vec![ChannelName::WeCom, ChannelName::Email])
        .unwrap_or_else(|| unreachable!("a non-empty list is a route"))
}
fn default_smtp_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_code_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_codes_per_hour() -> u32 {
    3
}
fn default_sms_daily_limit_per_member() -> u32 {
    10
}
fn default_sms_daily_limit() -> u32 {
    200
}
fn default_destination_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_sms_lookup_after() -> Duration {
    crate::delivery::sms::LOOKUP_AFTER
}

fn default_sms_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_media_max_bytes() -> u64 {
    20 * 1024 * 1024
}
fn default_media_max_files() -> u32 {
    5
}
fn default_media_total_bytes() -> u64 {
    1024 * 1024 * 1024
}
fn default_console_session_ttl() -> Duration {
    Duration::from_secs(7 * 86_400)
}
fn default_console_login_ttl() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_media_fetch_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_media_upload_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_group_max_members() -> u32 {
    1000
}
fn default_max_groups_per_member() -> u32 {
    50
}
fn default_invite_ttl() -> Duration {
    Duration::from_secs(7 * 86_400)
}
fn default_group_refresh() -> Duration {
    Duration::from_secs(600)
}
fn default_join_failures() -> SendRate {
    SendRate {
        count: 10,
        per: Duration::from_secs(3600),
    }
}
fn default_log_level() -> String {
    "info".to_owned()
}

/// `[{ count = 30, per = "1m" }, …]`: each window needs a count of at least 1 and a
/// positive length.
fn member_limits<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RateWindow>, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Window {
        #[serde(deserialize_with = "at_least_one_u32")]
        count: u32,
        #[serde(deserialize_with = "positive_duration")]
        per: Duration,
    }
    let windows = Vec::<Window>::deserialize(d)?;
    Ok(windows
        .into_iter()
        .map(|w| RateWindow {
            count: w.count,
            per: w.per,
        })
        .collect())
}

/// `["wecom", "email"]`: channel names, in order, each once.
fn route<'de, D: Deserializer<'de>>(d: D) -> Result<Route, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    Route::parse(&names.join(",")).map_err(serde::de::Error::custom)
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim() {
        "" => Err(serde::de::Error::custom("must not be empty")),
        t => Ok(t.to_owned()),
    }
}

/// A duration, or `"off"` for none.
fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match humantime::parse_duration(s.trim()) {
        Ok(d) if !d.is_zero() => Ok(Some(d)),
        Ok(_) => Err(serde::de::Error::custom(
            "must be a positive duration such as \"10m\", or \"off\"",
        )),
        Err(e) => Err(serde::de::Error::custom(format!(
            "invalid duration {s:?} ({e}); write it like \"10m\", or \"off\""
        ))),
    }
}

/// `"+08:00"`, `"-05:30"`, `"UTC+8"`, `"Z"` → seconds east of UTC
/// ([`quiet::parse_offset`], as `timezone …` in the chat reads it).
fn utc_offset<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    let s = String::deserialize(d)?;
    crate::delivery::quiet::parse_offset(&s).map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid UTC offset {s:?}; write it like \"+08:00\""
        ))
    })
}

/// `"23:00-07:00"`, `"23:00-07:00 strict"` (as `quiet …` in the chat reads them); `"off"`:
/// none.
fn quiet_hours<'de, D: Deserializer<'de>>(d: D) -> Result<Option<QuietHours>, D::Error> {
    let s = String::deserialize(d)?;
    match s.parse::<QuietSetting>() {
        Ok(QuietSetting::Off) => Ok(None),
        Ok(QuietSetting::On(hours)) => Ok(Some(hours)),
        Err(e) => Err(serde::de::Error::custom(format!(
            "invalid quiet hours {s:?} ({e}); write them like \"23:00-07:00\", or \"off\""
        ))),
    }
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

/// A duration that must not be zero.
fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value = duration(d)?;
    if value.is_zero() {
        return Err(serde::de::Error::custom("must be greater than 0"));
    }
    Ok(value)
}

fn default_max_content_bytes() -> usize {
    64 * 1024
}

/// The largest `server.max_content_bytes`: a request body (1 MiB or more) must hold it.
pub const MAX_CONTENT_LIMIT: usize = 1024 * 1024;

fn content_limit<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        n if (1024..=MAX_CONTENT_LIMIT).contains(&n) => Ok(n),
        n => Err(serde::de::Error::custom(format!(
            "{n} is out of range: between 1024 and {MAX_CONTENT_LIMIT} bytes"
        ))),
    }
}

/// The shortest `storage.retention`: `Idempotency-Key`s are honoured for 24 hours, and the
/// message is what remembers its key.
const MIN_RETENTION: Duration = Duration::from_secs(86_400);

fn default_retention() -> Option<Duration> {
    Some(Duration::from_secs(30 * 86_400))
}

/// A duration such as `"30d"`; `"0"` (or `"forever"`, `"off"`): keep forever.
fn retention<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    let text = s.trim();
    if ["0", "forever", "off"].contains(&text.to_ascii_lowercase().as_str()) {
        return Ok(None);
    }
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Ok(None),
        Ok(d) if d < MIN_RETENTION => Err(serde::de::Error::custom(
            "must be at least \"1d\": an idempotency key is honoured for 24 hours (or \"0\" to keep messages forever)",
        )),
        Ok(d) => Ok(Some(d)),
        Err(e) => Err(serde::de::Error::custom(format!(
            "invalid duration {s:?} ({e}); write it like \"30d\", or \"0\" to keep forever"
        ))),
    }
}

fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

fn at_least_one_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match u64::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

/// `["10.1.2.0/24", "192.168.7.7"]`: networks as CIDRs, a bare address as one host.
fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{text:?} is not a network: write it like \"10.1.2.0/24\" or \"fd00::/8\""
                    ))
                })
        })
        .collect()
}

/// WeCom userids: a list, or (from the environment, `PUSHBOT_CONSOLE__ADMINS=alice,bob`)
/// one comma-separated string; blanks dropped.
fn userids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        List(Vec<String>),
        Text(String),
    }
    let given = Given::deserialize(d)?;
    let names: Vec<String> = match given {
        Given::List(list) => list,
        Given::Text(text) => text.split(',').map(str::to_owned).collect(),
    };
    Ok(names
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect())
}

fn at_least_one_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match u32::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

// Serializing: each value written in a form its deserializer above reads back.

/// A secret's real value (see [`Settings`] on serializing); `None` is left out.
fn exposed<S: Serializer>(value: &Option<secrecy::SecretString>, s: S) -> Result<S::Ok, S::Error> {
    use secrecy::ExposeSecret as _;
    match value {
        Some(secret) => s.serialize_some(secret.expose_secret()),
        None => s.serialize_none(),
    }
}

/// `"30d"`, `"1h"`, `"15m"`, `"90s"`, `"10ms"`: the largest unit that divides the duration
/// exactly (`"0s"` for zero).
fn format_duration(d: Duration) -> String {
    const UNITS: [(u128, &str); 7] = [
        (86_400_000_000_000, "d"),
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let (unit, name) = UNITS
        .into_iter()
        .find(|(unit, _)| nanos.is_multiple_of(*unit))
        .unwrap_or((1, "ns"));
    format!("{}{name}", nanos / unit)
}

fn short_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// `storage.retention`: `"0"` keeps messages forever.
fn retention_or_zero<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => short_duration(d, s),
        None => s.serialize_str("0"),
    }
}

/// `delivery.digest_after`: `"off"` for never.
fn duration_or_off<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => short_duration(d, s),
        None => s.serialize_str("off"),
    }
}

/// Seconds east of UTC → `"+08:00"`, `"-05:30"`.
fn utc_offset_text<S: Serializer>(offset: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::delivery::quiet::offset_text(*offset))
}

/// `"23:00-07:00"`, `"23:00-07:00 strict"`; none: not written.
fn quiet_hours_text<S: Serializer>(hours: &Option<QuietHours>, s: S) -> Result<S::Ok, S::Error> {
    match hours {
        Some(hours) => s.serialize_some(&hours.to_string()),
        None => s.serialize_none(),
    }
}

/// `[{ count = 30, per = "1m" }, …]`.
fn rate_windows<S: Serializer>(windows: &[RateWindow], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Window {
        count: u32,
        per: String,
    }
    s.collect_seq(windows.iter().map(|w| Window {
        count: w.count,
        per: format_duration(w.per),
    }))
}

/// `["wecom", "email"]`.
fn route_names<S: Serializer>(route: &Route, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(route.channels().iter().map(|c| c.as_str()))
}

/// A secret from a file (Docker/Kubernetes secrets): its content without the final line
/// break; an empty file is an error.
fn read_secret_file(key: &str, path: &Path) -> Result<secrecy::SecretString, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
        key: key.to_owned(),
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    let secret = text.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        return Err(ConfigError::Invalid {
            key: key.to_owned(),
            message: format!("{} is empty", path.display()),
        });
    }
    Ok(secrecy::SecretString::from(secret))
}

/// A start-up configuration problem, phrased as one line that names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} not found")]
    FileNotFound(PathBuf),
    #[error("configuration error: {0}")]
    Load(#[source] config::ConfigError),
    #[error("unknown setting `{key}`{}", match suggestion {
        Some(s) => format!("; did you mean `{s}`?"),
        None if valid.is_empty() => String::new(),
        None => format!("; valid here: {}", valid.join(", ")),
    })]
    UnknownKey {
        key: String,
        suggestion: Option<String>,
        valid: Vec<String>,
    },
    #[error("invalid setting {key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// Turns serde's "unknown field `lisen`, expected `listen` or `public_url`" (which the
    /// config crate reports with the section as its key) into [`ConfigError::UnknownKey`]
    /// with the nearest valid key suggested.
    fn from_config(err: config::ConfigError) -> Self {
        if let config::ConfigError::Type {
            origin,
            unexpected,
            expected,
            key: Some(key),
        } = &err
        {
            return Self::Invalid {
                key: key.clone(),
                message: format!(
                    "expected {expected}, got {unexpected}{}",
                    origin_note(origin.as_deref(), key)
                ),
            };
        }
        let (message, section) = match &err {
            config::ConfigError::At { error, key, .. } => (error.to_string(), key.clone()),
            config::ConfigError::Message(m) => (m.clone(), None),
            _ => return Self::Load(err),
        };
        let Some(rest) = message.strip_prefix("unknown field `") else {
            // A value that did not parse: name the key, keep the reason.
            if let config::ConfigError::At {
                key: Some(key),
                origin,
                ..
            } = &err
            {
                return Self::Invalid {
                    key: key.clone(),
                    message: format!("{message}{}", origin_note(origin.as_deref(), key)),
                };
            }
            return Self::Load(err);
        };
        let Some((field, rest)) = rest.split_once('`') else {
            return Self::Load(err);
        };
        let valid: Vec<String> = rest
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        let qualify = |name: &str| match &section {
            Some(section) => format!("{section}.{name}"),
            None => name.to_owned(),
        };
        let suggestion = nearest(field, valid.iter().map(String::as_str)).map(qualify);
        Self::UnknownKey {
            key: qualify(field),
            suggestion,
            valid,
        }
    }
}

/// The name among `valid` that `typed` most likely meant (Jaro-Winkler ≥ 0.8), for a
/// "did you mean" hint: the config loader's unknown keys and the API's unknown fields.
pub(crate) fn nearest<'a>(
    typed: &str,
    valid: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    valid
        .into_iter()
        .map(|v| (strsim::jaro_winkler(typed, v), v))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, v)| v)
}

/// The `PUSHBOT_*` variables that are settings, and the names of those that are
/// Kubernetes service links (ignored). `PUSHBOT_CONFIG` names the file: neither.
///
/// Read with `vars_os`: `std::env::vars` panics on a variable that is not UTF-8, and
/// someone else's variable must not stop pushbot.
fn environment() -> Result<(HashMap<String, String>, Vec<String>), ConfigError> {
    classify(std::env::vars_os())
}

/// [`environment`]'s rule over any list of variables: those named `PUSHBOT_…` (in any
/// case) are settings or service links; a non-UTF-8 value of one is an error naming it.
fn classify(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<(HashMap<String, String>, Vec<String>), ConfigError> {
    let mut settings = HashMap::new();
    let mut links = Vec::new();
    for (name, value) in vars {
        // The config crate matches its prefix without regard to case.
        let Some(name) = name
            .to_str()
            .filter(|n| {
                n.get(..8)
                    .is_some_and(|p| p.eq_ignore_ascii_case("PUSHBOT_"))
            })
            .map(str::to_owned)
        else {
            continue;
        };
        if name == "PUSHBOT_CONFIG" {
            continue;
        }
        let Ok(value) = value.into_string() else {
            return Err(ConfigError::Invalid {
                key: name,
                message: "the value is not valid UTF-8".to_owned(),
            });
        };
        if is_service_link(&name, &value) {
            links.push(name);
        } else if name
            .get(8..)
            .is_none_or(|key| key.split("__").any(str::is_empty))
        {
            // `PUSHBOT_`, `PUSHBOT_SERVER__`: no key to set, and nothing the config crate
            // would name in its error.
            return Err(ConfigError::Invalid {
                key: name,
                message: "not a setting: use PUSHBOT_<SECTION>__<KEY>".to_owned(),
            });
        } else {
            settings.insert(name, value);
        }
    }
    links.sort();
    Ok((settings, links))
}

/// Whether a `PUSHBOT_…` variable is one Kubernetes sets in every pod of a namespace with
/// a Service named `pushbot` or `pushbot-<something>` (and Docker's legacy links alike),
/// rather than a setting:
///
/// ```text
/// <S>_SERVICE_HOST=10.96.0.12           <S>_PORT=tcp://10.96.0.12:8080
/// <S>_SERVICE_PORT=8080                 <S>_PORT_8080_TCP=tcp://10.96.0.12:8080
/// <S>_SERVICE_PORT_<PORT NAME>=8080     <S>_PORT_8080_TCP_PROTO=tcp
///                                       <S>_PORT_8080_TCP_PORT=8080
///                                       <S>_PORT_8080_TCP_ADDR=10.96.0.12
/// ```
///
/// `<S>` is the Service's name in capitals with `_` for `-` (`PUSHBOT`, `PUSHBOT_SERVER`);
/// the protocol is TCP, UDP or SCTP. Every setting has a double underscore
/// (`PUSHBOT_<SECTION>__<KEY>`, e.g. `PUSHBOT_EMAIL__PORT`) and a link never does (a
/// Service name cannot end in `-`), so no setting is ever taken for a link. The value must
/// have the link's form too (an address, a port, `tcp://address:port`), so that a setting
/// written with one underscore by mistake (`PUSHBOT_SERVER_PORT=9090`) is still refused
/// rather than silently ignored.
pub fn is_service_link(name: &str, value: &str) -> bool {
    const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
    let name = name.to_ascii_uppercase();
    if name.contains("__")
        || !name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return false;
    }
    let service = |s: &str| s == "PUSHBOT" || s.starts_with("PUSHBOT_");
    let is_ip = |v: &str| v.parse::<std::net::IpAddr>().is_ok();
    let is_port = |v: &str| v.parse::<u16>().is_ok_and(|p| p > 0);
    // `tcp://10.96.0.12:8080` (`[fd00::12]:8080` for IPv6), with the protocol and port
    // asked for, if any.
    let is_link = |v: &str, protocol: Option<&str>, port: Option<&str>| {
        v.split_once("://").is_some_and(|(scheme, address)| {
            PROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(scheme))
                && protocol.is_none_or(|p| p.eq_ignore_ascii_case(scheme))
                && address
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| a.port() > 0 && port.is_none_or(|p| p == a.port().to_string()))
        })
    };
    if let Some(s) = name.strip_suffix("_SERVICE_HOST") {
        return service(s) && is_ip(value);
    }
    if let Some(s) = name.strip_suffix("_SERVICE_PORT") {
        return service(s) && is_port(value);
    }
    if let Some((s, port_name)) = name.split_once("_SERVICE_PORT_") {
        return service(s) && !port_name.is_empty() && is_port(value);
    }
    if let Some(s) = name.strip_suffix("_PORT")
        && service(s)
        && is_link(value, None, None)
    {
        return true;
    }
    let parts: Vec<&str> = name.split('_').collect();
    let at = |from_end: usize| parts.len().checked_sub(from_end).and_then(|i| parts.get(i));
    let port_prefix = |n: usize| {
        // `<S>_PORT_<port>_<PROTOCOL>` ending `n` parts from the end.
        match (at(n + 3), at(n + 2), at(n + 1)) {
            (Some(&"PORT"), Some(port), Some(protocol))
                if PROTOCOLS.contains(protocol) && is_port(port) =>
            {
                let service_parts = parts.get(..parts.len() - (n + 3)).unwrap_or_default();
                service(&service_parts.join("_")).then_some((*port, *protocol))
            }
            _ => None,
        }
    };
    if let Some((port, protocol)) = port_prefix(0) {
        return is_link(value, Some(protocol), Some(port));
    }
    match (port_prefix(1), at(1)) {
        (Some((_, protocol)), Some(&"PROTO")) => value.eq_ignore_ascii_case(protocol),
        (Some((port, _)), Some(&"PORT")) => value == port,
        (Some(_), Some(&"ADDR")) => is_ip(value),
        _ => false,
    }
}

/// Where a bad value came from: ` (from PUSHBOT_WECOM__AGENT_ID)` or ` (in FILE)`.
fn origin_note(origin: Option<&str>, key: &str) -> String {
    match origin {
        Some("the environment") => {
            let name: Vec<String> = key.split('.').map(str::to_ascii_uppercase).collect();
            format!(" (from PUSHBOT_{})", name.join("__"))
        }
        Some(file) => format!(" (in {file})"),
        None => String::new(),
    }
}

/// The `PUSHBOT_<SECTION>__<KEY>` overrides in `env` (from [`environment`]) as a source.
fn env_source(env: HashMap<String, String>) -> config::Environment {
    config::Environment::with_prefix("PUSHBOT")
        .prefix_separator("_")
        .separator("__")
        .source(Some(env))
}

impl Settings {
    /// Loads defaults < `path` (or `pushbot.toml` if present) < `PUSHBOT_*` environment.
    ///
    /// An explicitly named file must exist; the implicit `pushbot.toml` is optional so a
    /// container can be configured from the environment alone.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (env, ignored) = environment()?;
        let mut settings = Self::from_builder(Self::sources(path, env)?)?;
        settings.ignored_variables = ignored;
        Ok(settings)
    }

    /// Only `server.listen` (default `0.0.0.0:8080`), from the same file and environment as
    /// [`Settings::load`] but without requiring anything else: `pushbot healthcheck` runs
    /// where the WeCom secrets may not be (a container's health probe).
    pub fn load_listen(path: Option<&Path>) -> Result<SocketAddr, ConfigError> {
        #[derive(Deserialize)]
        struct Server {
            #[serde(default = "default_listen")]
            listen: SocketAddr,
        }
        #[derive(Deserialize, Default)]
        struct Partial {
            #[serde(default)]
            server: Option<Server>,
        }
        let (env, _) = environment()?;
        let partial: Partial = Self::sources(path, env)?
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(ConfigError::from_config)?;
        Ok(partial.server.map_or_else(default_listen, |s| s.listen))
    }

    /// The config file (given, or `./pushbot.toml` when present) under the `PUSHBOT_*`
    /// overrides in `env` (from [`environment`]).
    fn sources(
        path: Option<&Path>,
        env: HashMap<String, String>,
    ) -> Result<config::ConfigBuilder<config::builder::DefaultState>, ConfigError> {
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
        Ok(builder.add_source(env_source(env)))
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
            .map_err(ConfigError::from_config)?;
        settings.check()?;
        settings.groups.check()?;
        let settings = settings.read_secrets()?;
        if let Some(sms) = &settings.sms {
            sms.provider_config()?;
        }
        settings.destinations.configured()?;
        Ok(settings)
    }

    /// What a single value's type cannot say: combinations and non-zero timings.
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.to_owned(),
            message: message.to_owned(),
        };
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
        if let Some(token) = &self.server.metrics_token {
            use secrecy::ExposeSecret as _;
            let token = token.expose_secret();
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    "server.metrics_token",
                    "must be printable ASCII without spaces (it is sent as Authorization: Bearer <token>), e.g. from `openssl rand -hex 32`; leave it unset for no token",
                ));
            }
        }
        if self.media.total_bytes < self.media.max_bytes {
            return Err(invalid(
                "media.total_bytes",
                "must be at least media.max_bytes (or no file that large could ever be stored)",
            ));
        }
        // A message's page must outlive its delivery, and a message its idempotency key.
        if let Some(retention) = self.storage.retention
            && retention < d.retry_window.saturating_mul(2)
        {
            return Err(invalid(
                "storage.retention",
                "must be at least twice delivery.retry_window (a card sent at the end of the retry window must still open its page for a while), or \"0\" to keep messages forever",
            ));
        }
        if !(1..=1000).contains(&self.storage.pool_size) {
            return Err(invalid(
                "storage.pool_size",
                "must be between 1 and 1000 connections",
            ));
        }
        if let Some(unknown) = d.fallback.channels().iter().find(|c| {
            matches!(c, ChannelName::Dest(_))
                && !self
                    .destinations
                    .named
                    .keys()
                    .any(|k| k.trim().eq_ignore_ascii_case(c.as_str()))
        }) {
            return Err(invalid(
                "delivery.fallback",
                &format!(
                    "unknown channel {:?}: the channels are wecom, email and sms, or a [destinations.NAME] table's name",
                    unknown.as_str()
                ),
            ));
        }
        if let Some(email) = &self.email {
            if email.password.is_some() && email.password_file.is_some() {
                return Err(invalid(
                    "email.password_file",
                    "set either email.password (e.g. from PUSHBOT_EMAIL__PASSWORD) or email.password_file, not both",
                ));
            }
            let has_password = email.password.is_some() || email.password_file.is_some();
            if email.username.is_some() != has_password {
                return Err(invalid(
                    "email.username",
                    "SMTP login needs both email.username and a password (email.password or email.password_file)",
                ));
            }
        }
        let destinations = &self.destinations;
        let mut both = vec![(
            "destinations.telegram_bot_token".to_owned(),
            destinations.telegram_bot_token.is_some()
                && destinations.telegram_bot_token_file.is_some(),
        )];
        for (name, d) in &destinations.named {
            both.push((
                format!("destinations.{name}.url"),
                d.url.is_some() && d.url_file.is_some(),
            ));
            both.push((
                format!("destinations.{name}.secret"),
                d.secret.is_some() && d.secret_file.is_some(),
            ));
        }
        if let Some((key, _)) = both.into_iter().find(|(_, set)| *set) {
            return Err(ConfigError::Invalid {
                key: format!("{key}_file"),
                message: format!("set either {key} or {key}_file, not both"),
            });
        }
        if let Some(sms) = &self.sms {
            for (secret, file, set) in [
                (
                    "access_key_secret",
                    "access_key_secret_file",
                    sms.access_key_secret.is_some() && sms.access_key_secret_file.is_some(),
                ),
                (
                    "secret_key",
                    "secret_key_file",
                    sms.secret_key.is_some() && sms.secret_key_file.is_some(),
                ),
                (
                    "auth_token",
                    "auth_token_file",
                    sms.auth_token.is_some() && sms.auth_token_file.is_some(),
                ),
            ] {
                if set {
                    return Err(ConfigError::Invalid {
                        key: format!("sms.{file}"),
                        message: format!(
                            "set either sms.{secret} (e.g. from PUSHBOT_SMS__{}) or sms.{file}, not both",
                            secret.to_ascii_uppercase()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Reads `email.password_file` and the `sms.*_file` secrets into their settings (one
    /// place that touches the files).
    fn read_secrets(mut self) -> Result<Self, ConfigError> {
        if let Some(email) = &mut self.email
            && let Some(path) = email.password_file.take()
        {
            email.password = Some(read_secret_file("email.password_file", &path)?);
        }
        if let Some(path) = self.destinations.telegram_bot_token_file.take() {
            self.destinations.telegram_bot_token = Some(read_secret_file(
                "destinations.telegram_bot_token_file",
                &path,
            )?);
        }
        for (name, d) in &mut self.destinations.named {
            if let Some(path) = d.url_file.take() {
                d.url = Some(read_secret_file(
                    &format!("destinations.{name}.url_file"),
                    &path,
                )?);
            }
            if let Some(path) = d.secret_file.take() {
                d.secret = Some(read_secret_file(
                    &format!("destinations.{name}.secret_file"),
                    &path,
                )?);
            }
        }
        if let Some(sms) = &mut self.sms {
            for (key, file, secret) in [
                (
                    "sms.access_key_secret_file",
                    &mut sms.access_key_secret_file,
                    &mut sms.access_key_secret,
                ),
                (
                    "sms.secret_key_file",
                    &mut sms.secret_key_file,
                    &mut sms.secret_key,
                ),
                (
                    "sms.auth_token_file",
                    &mut sms.auth_token_file,
                    &mut sms.auth_token,
                ),
            ] {
                if let Some(path) = file.take() {
                    *secret = Some(read_secret_file(key, &path)?);
                }
            }
        }
        Ok(self)
    }

    /// Whether the callback Token or EncodingAESKey is the public sample from WeCom's
    /// documentation: with it anyone can forge callbacks and mint tokens for any member.
    pub fn uses_sample_credentials(&self) -> bool {
        self.wecom.callback_token.is_public_sample()
            || self.wecom.encoding_aes_key.is_public_sample()
    }

    /// `public_url` without a trailing slash, for building links.
    pub fn public_base(&self) -> String {
        self.server.public_url.base().to_owned()
    }
}

/// The code is the one source of every default: the example config and
/// `docs/configuration.md` are checked against it here.
#[cfg(test)]
mod reference;

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
        assert_eq!(s.storage.url.as_str(), "sqlite://pushbot.db");
        assert_eq!(s.storage.url.sqlite_path(), Some(Path::new("pushbot.db")));
        assert_eq!(s.wecom.api_base.as_str(), "https://qyapi.weixin.qq.com/");
        assert_eq!(s.delivery.retry_window, Duration::from_secs(900));
        assert_eq!(s.delivery.backoff_initial, Duration::from_secs(1));
        assert_eq!(s.delivery.backoff_max, Duration::from_secs(300));
        assert_eq!(s.public_base(), "https://push.example.com");
        assert_eq!(s.destinations.timeout, Duration::from_secs(10));
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
    fn media_networks_and_sizes_are_checked() {
        let media = |lines: &str| Settings::from_toml(&format!("{MINIMAL}\n[media]\n{lines}\n"));
        let s = media(r#"fetch_allow = ["127.0.0.1/32", " 10.0.0.7 ", "fd00::/8"]"#).unwrap();
        let nets: Vec<String> = s.media.fetch_allow.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["127.0.0.1/32", "10.0.0.7/32", "fd00::/8"]);
        assert_eq!(s.media.blob_limits().max_bytes, 20 * 1024 * 1024);
        for (lines, key, says) in [
            (
                r#"fetch_allow = ["intranet"]"#,
                "media.fetch_allow",
                "\"intranet\" is not a network",
            ),
            (
                r#"fetch_allow = ["10.0.0.0/33"]"#,
                "media.fetch_allow",
                "not a network",
            ),
            ("max_bytes = 0", "media.max_bytes", "at least 1"),
            (
                "max_bytes = 100\ntotal_bytes = 99",
                "media.total_bytes",
                "at least media.max_bytes",
            ),
            (r#"fetch_timeout = "0s""#, "media.fetch_timeout", ""),
        ] {
            let err = media(lines).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(says), "{lines}: {err}");
        }
        let s = media("max_files = 0\ntotal_bytes = 20971520").unwrap();
        assert_eq!(
            (s.media.max_files, s.media.total_bytes),
            (0, 20 * 1024 * 1024)
        );
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
    fn metrics_are_off_by_default_and_the_token_stays_secret() {
        let s = Settings::from_toml(MINIMAL).unwrap();
        assert!(!s.server.metrics);
        assert!(s.server.metrics_token.is_none());
        let text = MINIMAL.replace(
            "[server]",
            "[server]\nmetrics = true\nmetrics_token = \"m3tr1cs-t0ken\"",
        );
        let s = Settings::from_toml(&text).unwrap();
        assert!(s.server.metrics);
        let token = s.server.metrics_token.as_ref().unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(token), "m3tr1cs-t0ken");
        assert!(!format!("{s:?}").contains("m3tr1cs"));
        for bad in ["", "two words", " padded"] {
            let text = MINIMAL.replace(
                "[server]",
                &format!("[server]\nmetrics = true\nmetrics_token = \"{bad}\""),
            );
            let err = Settings::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains("server.metrics_token"), "{err}");
            if !bad.is_empty() {
                assert!(!err.contains(bad.trim()), "the token is not echoed: {err}");
            }
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_the_nearest_valid_one() {
        let text = MINIMAL.replace("[server]", "[server]\nlisen = \"0.0.0.0:1\"");
        let err = Settings::from_toml(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown setting `server.lisen`; did you mean `server.listen`?"
        );
        let text = format!("{MINIMAL}\n[delivry]\nretry_window = \"1m\"\n");
        let err = Settings::from_toml(&text).unwrap_err().to_string();
        assert!(
            err.contains("`delivry`") && err.contains("`delivery`"),
            "{err}"
        );
        let text = format!("{MINIMAL}\n[log]\nzzz = 1\n");
        let err = Settings::from_toml(&text).unwrap_err().to_string();
        assert!(
            err.contains("`log.zzz`") && err.contains("level, format"),
            "{err}"
        );
    }

    #[test]
    fn values_are_parsed_into_types() {
        let s = Settings::from_toml(MINIMAL).unwrap();
        assert_eq!(s.wecom.agent_id.get(), 1000002);
        assert_eq!(s.wecom.corp_id.as_str(), "wx5823bf96d3bd56c7");
        assert_eq!(s.wecom.encoding_aes_key.bytes().len(), 32);
        for (from, to, key) in [
            ("agent_id = 1000002", "agent_id = 0", "wecom.agent_id"),
            ("agent_id = 1000002", "agent_id = \"x\"", "wecom.agent_id"),
            (
                "callback_token = \"QDG6eK\"",
                "callback_token = \"a-b\"",
                "wecom.callback_token",
            ),
            ("secret = \"s3cr3t\"", "secret = \" \"", "wecom.secret"),
            (
                "corp_id = \"wx5823bf96d3bd56c7\"",
                "corp_id = \"\"",
                "wecom.corp_id",
            ),
            (
                "public_url = \"https://push.example.com\"",
                "public_url = \"ftp://push.example.com\"",
                "server.public_url",
            ),
        ] {
            let err = Settings::from_toml(&MINIMAL.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{to}: {err}");
        }
        let storage = |url: &str| {
            Settings::from_toml(&format!("{MINIMAL}\n[storage]\nurl = \"{url}\"\n"))
                .map_err(|e| e.to_string())
        };
        let err = storage("mysql://root:hunter2@db/x").unwrap_err();
        assert!(
            err.contains("storage.url") && err.contains("postgres://") && !err.contains("hunter2"),
            "{err}"
        );
        let s = storage("postgres://app:hunter2@db.internal:6543/push").unwrap();
        assert_eq!(s.storage.url.engine(), Engine::Postgres);
        assert_eq!(s.storage.pool_size, crate::store::DEFAULT_POOL_SIZE);
        let shown = format!("{s:?}");
        assert!(
            shown.contains("db.internal:6543/push") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(storage("sqlite://x.db").is_ok());
        let err = Settings::from_toml(&format!("{MINIMAL}\n[storage]\npool_size = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.pool_size"), "{err}");
    }

    #[test]
    fn the_documentation_sample_credentials_are_recognised() {
        let s = Settings::from_toml(MINIMAL).unwrap();
        assert!(s.uses_sample_credentials());
        let own = MINIMAL.replace("QDG6eK", "MyOwnToken1").replace(
            "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        );
        assert!(!Settings::from_toml(&own).unwrap().uses_sample_credentials());
        let half = MINIMAL.replace("QDG6eK", "MyOwnToken1");
        assert!(
            Settings::from_toml(&half)
                .unwrap()
                .uses_sample_credentials()
        );
    }

    #[test]
    fn server_limits_have_defaults_and_parse() {
        let s = Settings::from_toml(MINIMAL).unwrap();
        assert_eq!(s.server.header_read_timeout, Duration::from_secs(30));
        assert_eq!(s.server.max_connections, 1024);
        assert_eq!(s.server.send_rate, SendRate::default());
        assert_eq!(s.server.send_rate.count, 300);
        assert_eq!(s.server.send_rate.per, Duration::from_secs(60));

        let text = MINIMAL.replace(
            "[wecom]",
            "header_read_timeout = \"5s\"\nmax_connections = 50\nsend_rate = { count = 3, per = \"1s\" }\n[wecom]",
        );
        let s = Settings::from_toml(&text).unwrap();
        assert_eq!(s.server.header_read_timeout, Duration::from_secs(5));
        assert_eq!(s.server.max_connections, 50);
        assert_eq!(
            s.server.send_rate,
            SendRate {
                count: 3,
                per: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn retention_outlives_idempotency_keys_and_the_retry_window() {
        let with = |storage: &str, delivery: &str| {
            let text = format!("{MINIMAL}\n[storage]\n{storage}\n[delivery]\n{delivery}\n");
            Settings::from_toml(&text)
        };
        assert_eq!(
            with("", "").unwrap().storage.retention,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(
            with("retention = \"0\"", "").unwrap().storage.retention,
            None
        );
        let err = with("retention = \"12h\"", "").unwrap_err().to_string();
        assert!(
            err.contains("retention") && err.contains("24 hours"),
            "{err}"
        );
        let err = with("retention = \"2d\"", "retry_window = \"25h\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("delivery.retry_window"), "{err}");
        assert!(with("retention = \"2d\"", "retry_window = \"24h\"").is_ok());
        assert!(with("retention = \"1d\"", "").is_ok());
        let err = with("", "format = \"html\"").unwrap_err().to_string();
        assert!(err.contains("format"), "{err}");
        let err =
            Settings::from_toml(&MINIMAL.replace("[wecom]", "max_content_bytes = 100\n[wecom]"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("max_content_bytes"), "{err}");
    }

    #[test]
    fn zero_server_limits_are_rejected_by_name() {
        for (line, key) in [
            ("header_read_timeout = \"0s\"", "header_read_timeout"),
            ("max_connections = 0", "max_connections"),
            ("send_rate = { count = 0, per = \"1m\" }", "count"),
            ("send_rate = { count = 1, per = \"0s\" }", "per"),
        ] {
            let text = MINIMAL.replace("[wecom]", &format!("{line}\n[wecom]"));
            let err = Settings::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
    }

    #[test]
    fn delivery_scheduling_settings_parse() {
        let s = Settings::from_toml(MINIMAL).unwrap();
        assert_eq!(s.wecom.member_limits.len(), 2);
        assert_eq!(s.wecom.member_limits[0].count, 30);
        assert_eq!(s.delivery.digest_after, Some(Duration::from_secs(600)));
        assert_eq!(s.delivery.utc_offset, 8 * 3600);
        let text = MINIMAL.replace(
            "[wecom]",
            "[wecom]\nmember_limits = [{ count = 5, per = \"2s\" }]",
        ) + "\n[delivery]\ndigest_after = \"off\"\nutc_offset = \"-05:30\"\n";
        let s = Settings::from_toml(&text).unwrap();
        assert_eq!(
            s.wecom.member_limits,
            [RateWindow {
                count: 5,
                per: Duration::from_secs(2)
            }]
        );
        assert_eq!(s.delivery.digest_after, None);
        assert_eq!(s.delivery.utc_offset, -(5 * 3600 + 30 * 60));
        for bad in [
            "[wecom]\nmember_limits = [{ count = 0, per = \"1m\" }]",
            "[wecom]\nmember_limits = [{ count = 1, per = \"1m\", x = 1 }]",
        ] {
            assert!(
                Settings::from_toml(&MINIMAL.replace("[wecom]", bad)).is_err(),
                "{bad}"
            );
        }
        let text = format!("{MINIMAL}\n[delivery]\nutc_offset = \"8\"\n");
        assert!(Settings::from_toml(&text).is_err());
    }

    #[test]
    fn quiet_hours_are_read_as_the_chat_reads_them() {
        let s = Settings::from_toml(MINIMAL).unwrap();
        assert_eq!(s.delivery.quiet_hours, None, "none by default");
        let with = |value: &str| {
            Settings::from_toml(&format!(
                "{MINIMAL}\n[delivery]\nquiet_hours = \"{value}\"\nutc_offset = \"UTC-5\"\n"
            ))
        };
        let s = with("23:00-07:00").unwrap();
        let hours = s.delivery.quiet_hours.unwrap();
        assert_eq!(hours.to_string(), "23:00-07:00");
        assert_eq!(s.delivery.utc_offset, -5 * 3600);
        assert_eq!(
            with("23：00～07：00 strict")
                .unwrap()
                .delivery
                .quiet_hours
                .unwrap()
                .to_string(),
            "23:00-07:00 strict"
        );
        assert_eq!(with("off").unwrap().delivery.quiet_hours, None);
        for bad in ["7-7", "tonight", "25-7"] {
            let err = with(bad).unwrap_err().to_string();
            assert!(
                err.contains("quiet_hours") && err.contains("23:00-07:00"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn kubernetes_service_links_are_told_from_settings() {
        for (name, value) in [
            // Service `pushbot`, one port named `http`.
            ("PUSHBOT_SERVICE_HOST", "10.96.0.12"),
            ("PUSHBOT_SERVICE_PORT", "8080"),
            ("PUSHBOT_SERVICE_PORT_HTTP", "8080"),
            ("PUSHBOT_PORT", "tcp://10.96.0.12:8080"),
            ("PUSHBOT_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
            ("PUSHBOT_PORT_8080_TCP_PROTO", "tcp"),
            ("PUSHBOT_PORT_8080_TCP_PORT", "8080"),
            ("PUSHBOT_PORT_8080_TCP_ADDR", "10.96.0.12"),
            // Service `pushbot-server`; UDP, SCTP, IPv6, a port name with a dash.
            ("PUSHBOT_SERVER_SERVICE_HOST", "fd00::12"),
            ("PUSHBOT_SERVER_SERVICE_PORT", "53"),
            ("PUSHBOT_SERVER_SERVICE_PORT_DNS_UDP", "53"),
            ("PUSHBOT_SERVER_PORT", "udp://[fd00::12]:53"),
            ("PUSHBOT_SERVER_PORT_53_UDP", "udp://[fd00::12]:53"),
            ("PUSHBOT_SERVER_PORT_53_UDP_PROTO", "udp"),
            ("PUSHBOT_SERVER_PORT_53_UDP_ADDR", "fd00::12"),
            ("PUSHBOT_SERVER_PORT_9_SCTP", "sctp://10.0.0.1:9"),
            ("PUSHBOT_WECOM_RELAY_2_PORT", "tcp://10.0.0.1:443"),
            ("pushbot_port", "tcp://10.96.0.12:8080"),
        ] {
            assert!(is_service_link(name, value), "{name}={value} is a link");
        }
        for (name, value) in [
            // Settings: always a double underscore, whatever the value.
            ("PUSHBOT_EMAIL__PORT", "587"),
            ("PUSHBOT_EMAIL__PORT", "tcp://10.0.0.1:587"),
            ("PUSHBOT_SERVER__LISTEN", "0.0.0.0:8080"),
            ("PUSHBOT_SERVER__LISTN", "0.0.0.0:8080"),
            ("PUSHBOT_WECOM__SECRT", "x"),
            ("PUSHBOT_STORAGE__URL", "sqlite:///data/pushbot.db"),
            ("PUSHBOT_SERVER__SERVICE_HOST", "10.0.0.1"),
            ("PUSHBOT_X__PORT_8080_TCP_ADDR", "10.0.0.1"),
            // Settings written with one underscore by mistake: not links, so refused.
            ("PUSHBOT_SERVER_PORT", "9090"),
            ("PUSHBOT_EMAIL_PORT", "587"),
            ("PUSHBOT_SERVER_LISTEN", "0.0.0.0:8080"),
            ("PUSHBOT_SERVICE_HOST", "push.example.com"),
            ("PUSHBOT_SERVICE_PORT", "http"),
            ("PUSHBOT_PORT", "tcp://10.96.0.12"),
            ("PUSHBOT_PORT", "http://10.96.0.12:8080"),
            // The pieces must agree with the name.
            ("PUSHBOT_PORT_8080_TCP", "tcp://10.96.0.12:9090"),
            ("PUSHBOT_PORT_8080_TCP", "udp://10.96.0.12:8080"),
            ("PUSHBOT_PORT_8080_TCP_PROTO", "udp"),
            ("PUSHBOT_PORT_8080_TCP_PORT", "9090"),
            ("PUSHBOT_PORT_8080_TCP_ADDR", "somewhere"),
            ("PUSHBOT_PORT_8080_HTTP", "tcp://10.96.0.12:8080"),
            ("PUSHBOT_PORT_HTTP_TCP", "tcp://10.96.0.12:8080"),
            ("PUSHBOT_PORT_8080_TCP_HOST", "10.96.0.12"),
            ("PUSHBOT_SERVICE_PORT_", "8080"),
            // Not ours, or not a name Kubernetes makes.
            ("OTHER_PORT", "tcp://10.96.0.12:8080"),
            ("PUSHBOTX_PORT", "tcp://10.96.0.12:8080"),
            ("PUSHBOT_PORT-X", "tcp://10.96.0.12:8080"),
            ("PUSHBOT", "tcp://10.96.0.12:8080"),
        ] {
            assert!(!is_service_link(name, value), "{name}={value} is no link");
        }
    }

    #[test]
    fn backoff_max_below_initial_is_rejected() {
        let text =
            format!("{MINIMAL}\n[delivery]\nbackoff_initial = \"10s\"\nbackoff_max = \"1s\"\n");
        let err = Settings::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("delivery.backoff_max"), "{err}");
    }

    const ALIYUN: &str = r#"
        [sms]
        provider = "aliyun"
        access_key_id = "LTAI5tExampleKeyId"
        access_key_secret = "al1yun-s3cret"
        sign_name = "阿里云短信测试"
        template = "SMS_154950909"
        code_template = "SMS_154950910"
    "#;
    const TENCENT: &str = r#"
        [sms]
        provider = "tencent"
        secret_id = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE"
        secret_key = "t3ncent-s3cret"
        sdk_app_id = 1400006666
        sign_name = "腾讯云"
        template = 1110
        code_template = "1111"
    "#;
    const TWILIO: &str = r#"
        [sms]
        provider = "twilio"
        account_sid = "AC0123456789abcdef0123456789abcdef"
        auth_token = "tw1l10-t0ken"
        from = "+1 500 555 0006"
    "#;

    fn sms(section: &str) -> Result<SmsProviderConfig, String> {
        let settings =
            Settings::from_toml(&format!("{MINIMAL}\n{section}")).map_err(|e| e.to_string())?;
        let sms = settings.sms.as_ref().expect("an [sms] section");
        let dbg = format!("{settings:?}");
        for secret in ["al1yun-s3cret", "t3ncent-s3cret", "tw1l10-t0ken"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        Ok(sms.provider_config().unwrap())
    }

    #[test]
    fn no_sms_section_no_sms() {
        assert!(Settings::from_toml(MINIMAL).unwrap().sms.is_none());
    }

    #[test]
    fn sms_providers_parse_with_their_defaults() {
        let settings = Settings::from_toml(&format!("{MINIMAL}\n{ALIYUN}")).unwrap();
        let s = settings.sms.as_ref().unwrap();
        assert_eq!(s.daily_limit_per_member, 10);
        assert_eq!(s.daily_limit, 200);
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert_eq!(s.code_ttl, default_code_ttl());
        assert_eq!(s.codes_per_hour, default_codes_per_hour());
        let SmsProviderConfig::Aliyun(a) = sms(ALIYUN).unwrap() else {
            panic!()
        };
        assert_eq!(a.api_base.as_str(), "https://dysmsapi.aliyuncs.com/");
        assert_eq!(a.access_key_id, "LTAI5tExampleKeyId");
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&a.access_key_secret),
            "al1yun-s3cret"
        );
        assert_eq!(
            (a.template.as_str(), a.code_template.as_str()),
            ("SMS_154950909", "SMS_154950910")
        );
        assert_eq!(a.max_variable_chars, 35);

        let SmsProviderConfig::Tencent(t) = sms(TENCENT).unwrap() else {
            panic!()
        };
        assert_eq!(t.api_base.as_str(), "https://sms.tencentcloudapi.com/");
        assert_eq!(t.sdk_app_id, "1400006666");
        assert_eq!(t.region, "ap-guangzhou");
        assert_eq!(
            (t.template.as_str(), t.code_template.as_str()),
            ("1110", "1111")
        );
        assert_eq!(t.max_variable_chars, 12);

        let SmsProviderConfig::Twilio(w) = sms(TWILIO).unwrap() else {
            panic!()
        };
        assert_eq!(w.api_base.as_str(), "https://api.twilio.com/");
        assert_eq!(w.from, TwilioFrom::Number("+15005550006".into()));
        assert_eq!(w.max_segments, 2);

        let custom = format!(
            "{ALIYUN}api_base = \"http://127.0.0.1:9999\"\nmax_variable_chars = 100\ndaily_limit = 5\ntimeout = \"3s\"\ncode_ttl = \"5m\"\ncodes_per_hour = 2\n"
        );
        let SmsProviderConfig::Aliyun(a) = sms(&custom).unwrap() else {
            panic!()
        };
        assert_eq!(a.api_base.as_str(), "http://127.0.0.1:9999/");
        assert_eq!(a.max_variable_chars, 100);
        let settings = Settings::from_toml(&format!("{MINIMAL}\n{custom}")).unwrap();
        let s = settings.sms.unwrap();
        assert_eq!(
            (s.daily_limit, s.timeout, s.code_ttl, s.codes_per_hour),
            (5, Duration::from_secs(3), Duration::from_secs(300), 2)
        );
    }

    #[test]
    fn twilio_senders() {
        for (from, want) in [
            ("+15005550006", TwilioFrom::Number("+15005550006".into())),
            (
                "MG0123456789abcdef0123456789abcdef",
                TwilioFrom::MessagingService("MG0123456789abcdef0123456789abcdef".into()),
            ),
            ("PushBot", TwilioFrom::Alphanumeric("PushBot".into())),
        ] {
            let text = TWILIO.replace("+1 500 555 0006", from);
            let SmsProviderConfig::Twilio(w) = sms(&text).unwrap() else {
                panic!()
            };
            assert_eq!(w.from, want);
        }
        for bad in [
            "15005550006",
            "MG123",
            "+1 500 x",
            "a very long sender id",
            "+0123456789",
            "推送",
        ] {
            let err = sms(&TWILIO.replace("+1 500 555 0006", bad)).unwrap_err();
            assert!(err.contains("sms.from"), "{bad}: {err}");
        }
        let err = sms(&TWILIO.replace("AC0123456789abcdef0123456789abcdef", "SK0123")).unwrap_err();
        assert!(err.contains("sms.account_sid"), "{err}");
        let err = sms(&format!("{TWILIO}max_segments = 11\n")).unwrap_err();
        assert!(err.contains("sms.max_segments"), "{err}");
        let SmsProviderConfig::Twilio(w) = sms(&format!("{TWILIO}max_segments = 4\n")).unwrap()
        else {
            panic!()
        };
        assert_eq!(w.max_segments, 4);
    }

    #[test]
    fn missing_sms_keys_are_named() {
        let without = |section: &str, line: &str| {
            let text: String = section
                .lines()
                .filter(|l| !l.trim_start().starts_with(line))
                .map(|l| format!("{l}\n"))
                .collect();
            sms(&text).unwrap_err()
        };
        let err = without(ALIYUN, "access_key_secret");
        assert_eq!(
            err,
            "invalid setting sms.access_key_secret: Aliyun SMS needs access_key_id and access_key_secret (set PUSHBOT_SMS__ACCESS_KEY_SECRET or sms.access_key_secret_file)"
        );
        assert!(without(ALIYUN, "access_key_id").contains("sms.access_key_id"));
        assert!(without(ALIYUN, "sign_name").contains("sms.sign_name"));
        assert!(without(ALIYUN, "template").contains("sms.template"));
        assert!(without(ALIYUN, "code_template").contains("sms.code_template"));
        assert!(without(TENCENT, "secret_key").contains("PUSHBOT_SMS__SECRET_KEY"));
        assert!(without(TENCENT, "sdk_app_id").contains("sms.sdk_app_id"));
        assert!(without(TENCENT, "code_template").contains("sms.code_template"));
        assert!(without(TWILIO, "auth_token").contains("PUSHBOT_SMS__AUTH_TOKEN"));
        assert!(without(TWILIO, "from").contains("sms.from"));
        let err = without(TWILIO, "provider");
        assert!(err.contains("provider"), "{err}");
        let err = sms(&TWILIO.replace("\"twilio\"", "\"smsbao\"")).unwrap_err();
        assert!(
            err.contains("sms.provider") && err.contains("aliyun"),
            "{err}"
        );
        let err = sms(&TENCENT.replace("template = 1110", "template = \"SMS_1\"")).unwrap_err();
        assert!(
            err.contains("sms.template") && err.contains("digits"),
            "{err}"
        );
        let err = sms(&format!("{TENCENT}region = \"Guangzhou\"\n")).unwrap_err();
        assert!(err.contains("sms.region"), "{err}");
        let err = sms(&format!("{ALIYUN}max_variable_chars = 0\n")).unwrap_err();
        assert!(err.contains("sms.max_variable_chars"), "{err}");
        let err = sms(&format!("{ALIYUN}daily_limit = 0\n")).unwrap_err();
        assert!(err.contains("daily_limit"), "{err}");
        let err = sms(&format!("{ALIYUN}secrt_id = \"x\"\n")).unwrap_err();
        assert!(
            err.contains("`sms.secrt_id`") && err.contains("sms.secret_id"),
            "{err}"
        );
    }

    #[test]
    fn a_key_of_another_provider_is_refused_by_name() {
        let err = sms(&format!("{ALIYUN}secret_id = \"AKIDx\"\n")).unwrap_err();
        assert!(
            err.starts_with("invalid setting sms.secret_id: is for Tencent Cloud SMS, not for provider = \"aliyun\""),
            "{err}"
        );
        assert!(err.contains("access_key_id, access_key_secret"), "{err}");
        let err = sms(&format!("{TWILIO}template = \"SMS_1\"\n")).unwrap_err();
        assert!(
            err.contains("sms.template") && err.contains("no templates"),
            "{err}"
        );
        let err = sms(&format!("{TWILIO}max_variable_chars = 20\n")).unwrap_err();
        assert!(
            err.contains("sms.max_variable_chars") && err.contains("max_segments"),
            "{err}"
        );
        let err = sms(&format!("{TENCENT}max_segments = 3\n")).unwrap_err();
        assert!(
            err.contains("sms.max_segments") && err.contains("max_variable_chars"),
            "{err}"
        );
        let err = sms(&format!("{TENCENT}access_key_id = \"LTAI\"\n")).unwrap_err();
        assert!(
            err.contains("sms.access_key_id") && err.contains("secret_id"),
            "{err}"
        );
        let err = sms(&format!("{ALIYUN}from = \"+15005550006\"\n")).unwrap_err();
        assert!(err.contains("sms.from") && err.contains("Twilio"), "{err}");
    }

    #[test]
    fn sms_secrets_come_from_files_and_not_from_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "fr0m-a-f1le\n").unwrap();
        let from_file = ALIYUN.replace(
            "access_key_secret = \"al1yun-s3cret\"",
            &format!("access_key_secret_file = {:?}", path.display().to_string()),
        );
        let SmsProviderConfig::Aliyun(a) = sms(&from_file).unwrap() else {
            panic!()
        };
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&a.access_key_secret),
            "fr0m-a-f1le"
        );
        let both = format!(
            "{ALIYUN}access_key_secret_file = {:?}\n",
            path.display().to_string()
        );
        let err = sms(&both).unwrap_err();
        assert!(
            err.contains("sms.access_key_secret_file") && err.contains("not both"),
            "{err}"
        );
        let missing = from_file.replace("secret\"", "nothing-here\"");
        let err = sms(&missing).unwrap_err();
        assert!(
            err.contains("sms.access_key_secret_file") && err.contains("cannot read"),
            "{err}"
        );
        std::fs::write(&path, "\n").unwrap();
        let err = sms(&from_file).unwrap_err();
        assert!(err.contains("is empty"), "{err}");
        std::fs::write(&path, "tok3n").unwrap();
        let twilio = TWILIO.replace(
            "auth_token = \"tw1l10-t0ken\"",
            &format!("auth_token_file = {:?}", path.display().to_string()),
        );
        let SmsProviderConfig::Twilio(w) = sms(&twilio).unwrap() else {
            panic!()
        };
        assert_eq!(secrecy::ExposeSecret::expose_secret(&w.auth_token), "tok3n");
    }

    /// The example config's `[sms]` section, uncommented once, is a working Aliyun setup
    /// (with the secret from the environment), and its Tencent and Twilio variants too.
    #[test]
    fn the_example_sms_section_loads_when_uncommented() {
        let example = include_str!("../config/pushbot.example.toml");
        let section: Vec<&str> = example
            .lines()
            .skip_while(|l| *l != "# [sms]")
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
            .collect();
        assert!(section.len() > 20, "no [sms] section in the example");
        let aliyun = section.join("\n") + "\naccess_key_secret = \"x\"\n";
        let SmsProviderConfig::Aliyun(_) = sms(&aliyun).unwrap() else {
            panic!()
        };
        // Each provider's own block uncommented instead of Aliyun's.
        for (provider, secret) in [("tencent", "secret_key"), ("twilio", "auth_token")] {
            let mut lines = vec!["[sms]".to_owned()];
            let mut own = false;
            for line in &section[1..] {
                if line.starts_with("# provider = ") {
                    own = line.contains(provider);
                }
                if own
                    && line.starts_with("# ")
                    && line.contains(" = ")
                    && !line.contains("_file")
                    && !line.contains("api_base")
                {
                    // The placeholder SID is refused on purpose: it must be replaced.
                    let placeholder = format!("AC{}", "x".repeat(32));
                    let valid = format!("AC{}", "0".repeat(32));
                    lines.push(line.trim_start_matches("# ").replace(&placeholder, &valid));
                }
            }
            lines.push(format!("{secret} = \"x\""));
            let config = sms(&lines.join("\n")).unwrap_or_else(|e| panic!("{provider}: {e}"));
            assert_eq!(
                matches!(config, SmsProviderConfig::Twilio(_)),
                provider == "twilio"
            );
        }
    }

    #[test]
    fn console_settings_have_defaults_and_come_from_the_environment() {
        use std::ffi::OsString;
        let defaults = Settings::from_toml(MINIMAL).unwrap().console;
        assert_eq!(defaults.session_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(defaults.login_ttl, Duration::from_secs(600));
        assert!(defaults.admins.is_empty());
        let env = [
            ("PUSHBOT_CONSOLE__ADMINS", "alice, bob,,"),
            ("PUSHBOT_CONSOLE__SESSION_TTL", "12h"),
            ("PUSHBOT_CONSOLE__LOGIN_TTL", "5m"),
        ];
        let (vars, _) = classify(env.map(|(n, v)| (OsString::from(n), OsString::from(v)))).unwrap();
        let builder = config::Config::builder()
            .add_source(config::File::from_str(MINIMAL, config::FileFormat::Toml))
            .add_source(env_source(vars));
        let console = Settings::from_builder(builder).unwrap().console;
        assert_eq!(console.admins, ["alice", "bob"]);
        assert_eq!(console.session_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(console.login_ttl, Duration::from_secs(300));
        let zero = format!("{MINIMAL}\n[console]\nlogin_ttl = \"0s\"\n");
        let err = Settings::from_toml(&zero).unwrap_err().to_string();
        assert!(err.contains("console.login_ttl"), "{err}");
    }

    #[test]
    fn groups_settings_have_defaults_come_from_the_environment_and_are_checked() {
        use std::ffi::OsString;
        let defaults = Settings::from_toml(MINIMAL).unwrap().groups;
        assert_eq!(defaults.limits(), crate::groups::Limits::default());
        assert_eq!(defaults.refresh, Duration::from_secs(600));
        assert!(defaults.wecom.is_empty());
        let env = [
            ("PUSHBOT_GROUPS__MAX_MEMBERS", "200"),
            ("PUSHBOT_GROUPS__INVITE_TTL", "2d"),
            ("PUSHBOT_GROUPS__JOIN_FAILURES__COUNT", "5"),
            ("PUSHBOT_GROUPS__JOIN_FAILURES__PER", "1h"),
        ];
        let (vars, _) = classify(env.map(|(n, v)| (OsString::from(n), OsString::from(v)))).unwrap();
        let builder = config::Config::builder()
            .add_source(config::File::from_str(MINIMAL, config::FileFormat::Toml))
            .add_source(env_source(vars));
        let limits = Settings::from_builder(builder).unwrap().groups.limits();
        assert_eq!(limits.max_members, 200);
        assert_eq!(limits.invite_ttl, Duration::from_secs(2 * 86_400));
        assert_eq!(limits.join_failures, 5);
        assert_eq!(limits.join_window, Duration::from_secs(3600));

        let wecom = format!(
            "{MINIMAL}\n[[groups.wecom]]\nname = \"OnCall\"\nparty = [2]\nowners = \"alice, bob\"\n"
        );
        let groups = Settings::from_toml(&wecom).unwrap().groups;
        assert_eq!(groups.wecom[0].owners, ["alice", "bob"]);
        for (bad, key, says) in [
            (
                "[groups]\nmax_members = 0\n",
                "groups.max_members",
                "at least 1",
            ),
            (
                "[groups]\njoin_failures = { count = 3, per = \"2d\" }\n",
                "groups.join_failures",
                "1d",
            ),
            (
                "[[groups.wecom]]\nname = \"oncall\"\n",
                "groups.wecom[0]",
                "party",
            ),
            (
                "[[groups.wecom]]\nname = \"two words\"\ntag = [1]\n",
                "groups.wecom[0].name",
                "one word",
            ),
            (
                "[[groups.wecom]]\nname = \"a\"\ntag = [1]\n[[groups.wecom]]\nname = \"A\"\ntag = [2]\n",
                "groups.wecom[1].name",
                "must differ",
            ),
            (
                "[[groups.wecom]]\nname = \"a\"\nparty = [0]\n",
                "groups.wecom[0]",
                "start at 1",
            ),
        ] {
            let err = Settings::from_toml(&format!("{MINIMAL}\n{bad}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn sms_settings_come_from_the_environment() {
        use std::ffi::OsString;
        let env = [
            ("PUSHBOT_SMS__PROVIDER", "aliyun"),
            ("PUSHBOT_SMS__ACCESS_KEY_ID", "LTAI5tFromEnv"),
            ("PUSHBOT_SMS__ACCESS_KEY_SECRET", "env-s3cret"),
            ("PUSHBOT_SMS__SIGN_NAME", "阿里云短信测试"),
            ("PUSHBOT_SMS__TEMPLATE", "SMS_1"),
            ("PUSHBOT_SMS__CODE_TEMPLATE", "SMS_2"),
            ("PUSHBOT_SMS__MAX_VARIABLE_CHARS", "20"),
            ("PUSHBOT_SMS__DAILY_LIMIT", "50"),
        ];
        let (vars, _) = classify(env.map(|(n, v)| (OsString::from(n), OsString::from(v)))).unwrap();
        let builder = config::Config::builder()
            .add_source(config::File::from_str(MINIMAL, config::FileFormat::Toml))
            .add_source(env_source(vars));
        let settings = Settings::from_builder(builder).unwrap();
        let sms = settings.sms.as_ref().unwrap();
        assert_eq!(sms.daily_limit, 50);
        let SmsProviderConfig::Aliyun(a) = sms.provider_config().unwrap() else {
            panic!()
        };
        assert_eq!(a.access_key_id, "LTAI5tFromEnv");
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&a.access_key_secret),
            "env-s3cret"
        );
        assert_eq!(a.max_variable_chars, 20);
        assert!(!format!("{settings:?}").contains("env-s3cret"));
    }

    mod properties {
        use std::ffi::OsString;

        use proptest::prelude::*;

        use super::super::*;
        use super::MINIMAL;

        /// Variable names: settings (real and misspelt sections and keys, with one, two or
        /// three underscores, in any case), service-link shapes, and anything else.
        fn name() -> impl Strategy<Value = String> {
            let section = prop::sample::select(vec![
                "SERVER", "STORAGE", "WECOM", "DELIVERY", "EMAIL", "SMS", "LOG", "SERVICE", "PORT",
                "server", "Wecom", "", "X",
            ]);
            let key = prop::sample::select(vec![
                "LISTEN",
                "PUBLIC_URL",
                "URL",
                "POOL_SIZE",
                "AGENT_ID",
                "SECRET",
                "PROXY",
                "CONCURRENCY",
                "RETRY_WINDOW",
                "BACKOFF_MAX",
                "UTC_OFFSET",
                "FALLBACK",
                "FORMAT",
                "HOST",
                "PORT",
                "FROM",
                "CODE_TTL",
                "LEVEL",
                "HOST_X",
                "8080_TCP",
                "SEND_RATE",
                "MEMBER_LIMITS",
                "PROVIDER",
                "ACCESS_KEY_SECRET",
                "TEMPLATE",
                "MAX_SEGMENTS",
                "",
                "__",
            ]);
            let separator = prop::sample::select(vec!["__", "_", "___", ""]);
            prop_oneof![
                (section, separator, key).prop_map(|(s, sep, k)| format!("PUSHBOT_{s}{sep}{k}")),
                "(PUSHBOT|pushbot|PushBot)_[A-Za-z0-9_.-]{0,16}",
                any::<String>(),
            ]
        }

        /// Values: well-formed ones of each kind, link values, and anything else.
        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "",
                    " ",
                    "0",
                    "1",
                    "-1",
                    "8080",
                    "99999",
                    "5s",
                    "1h",
                    "0s",
                    "true",
                    "x",
                    "tcp://10.96.0.12:8080",
                    "10.96.0.12",
                    "0.0.0.0:8080",
                    "https://a.example",
                    "wecom,email",
                    "email",
                    "aliyun",
                    "twilio",
                    "card",
                    "+08:00",
                    "5/1m",
                    "[1]",
                    "{}",
                    "a=b",
                ])
                .prop_map(str::to_owned),
                any::<String>(),
            ]
        }

        /// A variable's raw value: mostly text, sometimes bytes that are not UTF-8.
        fn raw_value() -> impl Strategy<Value = OsString> {
            #[cfg(unix)]
            {
                use std::os::unix::ffi::OsStringExt;
                prop_oneof![
                    4 => value().prop_map(OsString::from),
                    1 => prop::collection::vec(any::<u8>(), 0..8).prop_map(OsString::from_vec),
                ]
            }
            #[cfg(not(unix))]
            value().prop_map(OsString::from)
        }

        fn ours(name: &str) -> bool {
            name.get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case("PUSHBOT_"))
                && name != "PUSHBOT_CONFIG"
        }

        /// `PUSHBOT_`, `PUSHBOT_SERVER__`: a setting's name with nothing to set.
        fn no_key(name: &str) -> bool {
            name.get(8..)
                .is_none_or(|key| key.split("__").any(str::is_empty))
        }

        proptest! {
            /// Any environment: settings and links are exactly the `PUSHBOT_…` variables,
            /// a setting (`__`) is never taken for a link, and a non-UTF-8 value of one of
            /// ours is an error naming the variable.
            #[test]
            fn any_environment_is_sorted_or_refused(
                vars in prop::collection::vec((name(), raw_value()), 0..8)
            ) {
                let bad: Vec<&String> = vars
                    .iter()
                    .filter(|(n, v)| ours(n) && v.to_str().is_none())
                    .map(|(n, _)| n)
                    .collect();
                let env = vars.iter().map(|(n, v)| (OsString::from(n), v.clone()));
                match classify(env) {
                    Ok((settings, links)) => {
                        prop_assert!(bad.is_empty(), "{bad:?} not refused");
                        let wanted = vars.iter().filter(|(n, _)| ours(n)).count();
                        prop_assert!(settings.len() + links.len() <= wanted);
                        for name in settings.keys().chain(&links) {
                            prop_assert!(ours(name), "{name} is not ours");
                        }
                        for name in &links {
                            prop_assert!(!name.contains("__"), "setting {name} taken for a link");
                        }
                        for (name, _) in vars.iter().filter(|(n, _)| ours(n)) {
                            prop_assert!(settings.contains_key(name) || links.contains(name));
                        }
                    }
                    Err(ConfigError::Invalid { key, .. }) => {
                        prop_assert!(
                            bad.contains(&&key) || no_key(&key),
                            "{key} named, bad: {bad:?}"
                        );
                    }
                    Err(other) => prop_assert!(false, "untyped error {other}"),
                }
            }

            /// Any `PUSHBOT_*` settings over a valid file: settings, or an error that names
            /// a key. Never a panic, never an error that does not say which setting.
            #[test]
            fn any_settings_load_or_name_the_problem(
                vars in prop::collection::vec((name(), value()), 0..6)
            ) {
                let env = vars.iter().map(|(n, v)| (OsString::from(n), OsString::from(v)));
                let settings = match classify(env) {
                    Ok((settings, _)) => settings,
                    Err(ConfigError::Invalid { key, .. }) if no_key(&key) => return Ok(()),
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                };
                let builder = config::Config::builder()
                    .add_source(config::File::from_str(MINIMAL, config::FileFormat::Toml))
                    .add_source(env_source(settings.clone()));
                match Settings::from_builder(builder) {
                    Ok(_) => {}
                    Err(ConfigError::Invalid { key, message }) => {
                        prop_assert!(!key.is_empty(), "{message} names no key ({settings:?})");
                    }
                    Err(ConfigError::UnknownKey { key, .. }) => {
                        prop_assert!(!key.is_empty(), "an unknown key without a name");
                    }
                    // A section set from the environment without its required keys.
                    Err(ConfigError::Load(config::ConfigError::NotFound(key))) => {
                        prop_assert!(!key.is_empty(), "a missing key without a name");
                    }
                    Err(other) => prop_assert!(false, "{other} ({settings:?})"),
                }
            }

            /// A valid value for a known key is applied, whatever the case of its name.
            #[test]
            fn a_valid_setting_is_applied(
                n in 1usize..10_000,
                lower in any::<bool>(),
            ) {
                let name = if lower {
                    "pushbot_delivery__concurrency"
                } else {
                    "PUSHBOT_DELIVERY__CONCURRENCY"
                };
                let (settings, _) = classify([(OsString::from(name), OsString::from(n.to_string()))])
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let builder = config::Config::builder()
                    .add_source(config::File::from_str(MINIMAL, config::FileFormat::Toml))
                    .add_source(env_source(settings));
                let loaded = Settings::from_builder(builder)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(loaded.delivery.concurrency, n);
            }
        }
    }

    #[test]
    fn a_destination_secret_comes_from_the_file_or_the_value_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "fr0m-a-f1le\n").unwrap();
        let file = format!("{:?}", file.display().to_string());
        for (section, key) in [
            (
                format!(
                    "[destinations.ops]\nkind = \"wecom-robot\"\nurl = \"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k\"\nurl_file = {file}\n"
                ),
                "destinations.ops.url_file",
            ),
            (
                format!(
                    "[destinations.ding]\nkind = \"dingtalk\"\nurl = \"https://oapi.dingtalk.com/robot/send?access_token=t\"\nsecret = \"SECx\"\nsecret_file = {file}\n"
                ),
                "destinations.ding.secret_file",
            ),
            (
                format!(
                    "[destinations]\ntelegram_bot_token = \"1:x\"\ntelegram_bot_token_file = {file}\n"
                ),
                "destinations.telegram_bot_token_file",
            ),
        ] {
            let err = Settings::from_toml(&format!("{MINIMAL}\n{section}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("not both"), "{err}");
            assert!(
                !err.contains("fr0m-a-f1le") && !err.contains("SECx"),
                "{err}"
            );
        }
    }

    #[test]
    fn shared_destinations_are_checked_and_named() {
        let load = |section: &str| {
            Settings::from_toml(&format!("{MINIMAL}\n{section}")).map_err(|e| e.to_string())
        };
        let good = load(
            r#"
            [delivery]
            fallback = ["wecom", "ops"]
            [destinations]
            wecom_robot_base = "http://127.0.0.1:9"
            timeout = "3s"
            [destinations.ops]
            kind = "wecom-robot"
            url = "http://127.0.0.1:9/cgi-bin/webhook/send?key=abcdef0123"
            members = ["Alice", "bob"]
            [destinations.oncall]
            kind = "dingtalk"
            url = "https://oapi.dingtalk.com/robot/send?access_token=t0ken"
            secret = "SECabc"
            "#,
        )
        .unwrap();
        let configured = good.destinations.configured().unwrap();
        let names: Vec<&str> = configured.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["oncall", "ops"]);
        let ops = &configured[1];
        assert!(ops.members.includes(&crate::domain::UserId::new("alice")));
        assert!(!ops.members.includes(&crate::domain::UserId::new("carol")));
        assert_eq!(configured[0].members, Members::All);
        assert_eq!(good.destinations.timeout, Duration::from_secs(3));
        assert_eq!(good.delivery.fallback.to_stored(), "wecom,ops");
        assert!(
            !format!("{good:?}").contains("abcdef0123"),
            "the key stays secret"
        );
        for (section, key) in [
            (
                "[destinations.ops]\nkind = \"wecom-robot\"\nurl = \"https://evil.example.com/cgi-bin/webhook/send?key=k\"",
                "destinations.ops.url",
            ),
            (
                "[destinations.ops]\nkind = \"pager\"\nurl = \"https://x.example.com\"",
                "destinations.ops.kind",
            ),
            (
                "[destinations.email]\nkind = \"webhook\"\nurl = \"https://x.example.com/h\"",
                "destinations.email",
            ),
            (
                "[destinations.ops]\nkind = \"webhook\"\nurl = \"https://x.example.com/h\"\nmembers = \"some\"",
                "members",
            ),
            (
                "[delivery]\nfallback = [\"wecom\", \"ops\"]",
                "delivery.fallback",
            ),
        ] {
            let err = load(section).unwrap_err();
            assert!(err.contains(key), "{section}: {err}");
        }
    }
}
