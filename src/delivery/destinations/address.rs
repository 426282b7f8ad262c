//! Which addresses a destination may have, as a member types them in the chat.
//!
//! A member must never be able to make pushbot POST to an arbitrary or internal address:
//! a robot URL is accepted only when its scheme, host, port and path are exactly those of
//! the configured base of its kind ([`Bases`]), and only its key is kept — every request is
//! rebuilt from the base and the key. `https://qyapi.weixin.qq.com.evil.com/…`,
//! `https://qyapi.weixin.qq.com@evil.com/…`, `http://169.254.169.254/…` and other paths on
//! the right host are all refused. Generic webhooks (any URL) come from the config only.

use url::Url;

use super::{Bases, Destination, Kind};

/// The robot kinds, each with what its chat address looks like.
const ROBOTS: [Kind; 3] = [Kind::WeComRobot, Kind::DingTalk, Kind::Feishu];

/// Longest key, token or hook id accepted.
const MAX_KEY: usize = 128;

/// Why a destination's address is refused: for the chat (robots and Telegram: Chinese,
/// then English) or for the config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not an address of the robot kind(s) this server accepts: why, and each kind that
    /// was considered with the form of its addresses on the configured bases.
    #[error("{}", accepted_text(.why, .accepted))]
    NotAccepted {
        why: Refusal,
        accepted: Vec<(Kind, String)>,
    },
    /// A generic webhook typed in the chat.
    #[error(
        "通用 webhook 只能由管理员在配置文件里添加（[destinations.名称] kind = \"webhook\"）。\nGeneric webhooks can only be added in the server's config ([destinations.NAME] kind = \"webhook\")."
    )]
    WebhookInChat,
    /// Neither a numeric chat id nor `@channel`; the typed text, shortened.
    #[error(
        "“{0}” 不是 Telegram 的 chat id：群组的 id 是负数（例如 -1001234567890），公开频道可以写 @频道名。把机器人拉进群后，可以从 getUpdates 或 @userinfobot 查到 id。\n{0:?} is not a Telegram chat id: a group's id is negative (such as -1001234567890), a public channel may be given as @name."
    )]
    NotTelegramChatId(String),
    #[error("the webhook url is not a URL ({0}); write it like https://hooks.example.com/pushbot")]
    WebhookNotUrl(url::ParseError),
    #[error(
        "the webhook url must be an http:// or https:// URL such as https://hooks.example.com/pushbot"
    )]
    WebhookNotHttp,
    /// A configured destination without the field its kind is reached by.
    #[error("a {kind} destination needs {field}")]
    Missing { kind: Kind, field: &'static str },
}

/// What is wrong with a robot address, in Chinese and in English ([`Refusal::texts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Empty,
    /// No scheme and no kind named: the typed text, shortened.
    NotRobotUrl(String),
    NotUrl,
    UserName,
    /// On the right host, but another path than this one.
    Path(String),
    /// The query lacks this parameter (`key`, `access_token`).
    NoKey(&'static str),
    /// The query has this parameter more than once.
    KeyTwice(&'static str),
    /// The kind's key holds other characters than letters, digits, `-` and `_`.
    KeyCharacters(Kind),
    /// On none of the kinds' bases.
    OtherHost,
}

impl Refusal {
    /// `(Chinese, English)`.
    pub fn texts(&self) -> (String, String) {
        match self {
            Self::Empty => ("地址是空的".into(), "the address is empty".into()),
            Self::NotRobotUrl(typed) => (
                format!("“{typed}” 不是机器人的 webhook 地址"),
                format!("{typed:?} is not a robot's webhook URL"),
            ),
            Self::NotUrl => (
                "这不是一个完整的网址".into(),
                "this is not a complete URL".into(),
            ),
            Self::UserName => (
                "网址里不能有 “用户名@”".into(),
                "a URL with a user name (“…@”) is not accepted".into(),
            ),
            Self::Path(path) => (
                format!("路径应当是 {path}"),
                format!("the path must be {path}"),
            ),
            Self::NoKey(name) => (
                format!("网址里缺少 {name}=…"),
                format!("the URL has no {name}=…"),
            ),
            Self::KeyTwice(name) => (
                format!("网址里有多个 {name}"),
                format!("the URL has {name} more than once"),
            ),
            Self::KeyCharacters(kind) => {
                let what = match kind {
                    Kind::WeComRobot => ("key", "key"),
                    Kind::DingTalk => ("access_token", "access_token"),
                    _ => ("hook 编号", "hook id"),
                };
                (
                    format!("{} 只能由字母、数字、- 和 _ 组成", what.0),
                    format!("the {} may only hold letters, digits, - and _", what.1),
                )
            }
            Self::OtherHost => (
                "只接受下列服务的地址，不接受其他网站或内网地址".into(),
                "only these services' addresses are accepted, no other host or internal address"
                    .into(),
            ),
        }
    }
}

/// Why a destination's secret is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "企业微信群机器人没有签名密钥：它的 key 就在 webhook 地址里。\nA WeCom group robot has no secret: its key is in its webhook URL."
    )]
    WeComRobotHasNone,
    #[error(
        "Telegram 目的地不需要密钥：用的是服务器的机器人（[destinations] telegram_bot_token）。\nA Telegram destination takes no secret: it uses the server's bot ([destinations] telegram_bot_token)."
    )]
    TelegramTakesNone,
    #[error(
        "钉钉机器人的加签密钥以 SEC 开头（机器人设置 → 安全设置 → 加签）。\nA DingTalk robot's signing secret starts with SEC (robot settings → 安全设置 → 加签)."
    )]
    DingTalk,
    #[error(
        "飞书机器人的签名密钥在 机器人设置 → 安全设置 → 签名校验。\nA Feishu bot's secret is under bot settings → 安全设置 → 签名校验 (letters and digits)."
    )]
    Feishu,
    #[error(
        "a webhook secret is `whsec_` followed by base64 (Standard Webhooks), e.g. whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    )]
    Webhook,
}

/// The destination a member typed: a robot's webhook URL (its kind recognised from the
/// URL, or `kind_hint`'s when given), a robot's bare key/token/hook id with a `kind_hint`,
/// or a Telegram chat id with `Some(Kind::Telegram)`. `Err` says what is accepted.
pub fn parse_chat_url(
    kind_hint: Option<Kind>,
    typed: &str,
    bases: &Bases,
) -> Result<Destination, AddressError> {
    let typed = unwrap_typed(typed);
    if typed.is_empty() {
        return Err(not_accepted(kind_hint, bases, Refusal::Empty));
    }
    match kind_hint {
        Some(Kind::Webhook) => return Err(AddressError::WebhookInChat),
        Some(Kind::Telegram) => return parse_chat_id(typed, bases),
        _ => {}
    }
    // `qyapi.weixin.qq.com/cgi-bin/…` without its scheme: as the https URL it names.
    let with_scheme;
    let typed = if !typed.contains("://") && typed.contains('/') {
        with_scheme = format!("https://{typed}");
        with_scheme.as_str()
    } else {
        typed
    };
    if !typed.contains("://") {
        return match kind_hint {
            // A bare key: people paste the key where the URL was expected (and the reverse).
            Some(kind) => {
                let key = checked_key(kind, typed, bases)?;
                Ok(Destination::new(kind, base_of(kind, bases).clone(), key))
            }
            None => Err(not_accepted(
                None,
                bases,
                Refusal::NotRobotUrl(shorten(typed)),
            )),
        };
    }
    let url = Url::parse(typed).map_err(|_| not_accepted(kind_hint, bases, Refusal::NotUrl))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(not_accepted(kind_hint, bases, Refusal::UserName));
    }
    let kinds: Vec<Kind> = match kind_hint {
        Some(kind) => vec![kind],
        None => ROBOTS.to_vec(),
    };
    let mut on_base = None;
    for kind in kinds {
        for base in bases_of(kind, bases) {
            if !same_origin(&url, base) {
                continue;
            }
            match robot_key(kind, &url, base) {
                Ok(key) => {
                    let key = checked_key(kind, &key, bases)?;
                    return Ok(Destination::new(kind, base.clone(), key));
                }
                Err(why) => {
                    on_base.get_or_insert((kind, why));
                }
            }
        }
    }
    Err(match on_base {
        Some((kind, why)) => not_accepted(Some(kind), bases, why),
        None => not_accepted(kind_hint, bases, Refusal::OtherHost),
    })
}

/// The typed text without what chat clients and people wrap around a URL.
fn unwrap_typed(typed: &str) -> &str {
    typed
        .trim()
        .trim_matches(|c: char| matches!(c, '<' | '>' | '"' | '\'' | '`' | '“' | '”' | '「' | '」'))
        .trim()
}

/// The first 40 characters of what was typed, for a refusal (it may hold a secret, but the
/// member just typed it themselves, in their own chat).
fn shorten(typed: &str) -> String {
    match typed.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &typed[..end]),
        None => typed.to_owned(),
    }
}

fn base_of(kind: Kind, bases: &Bases) -> &Url {
    match kind {
        Kind::WeComRobot => &bases.wecom_robot,
        Kind::DingTalk => &bases.dingtalk,
        Kind::Feishu => &bases.feishu,
        Kind::Telegram | Kind::Webhook => &bases.telegram,
    }
}

/// The bases a kind's URLs may be on (Feishu: Feishu's and Lark's).
fn bases_of(kind: Kind, bases: &Bases) -> Vec<&Url> {
    match kind {
        Kind::Feishu => vec![&bases.feishu, &bases.lark],
        Kind::WeComRobot | Kind::DingTalk => vec![base_of(kind, bases)],
        Kind::Telegram | Kind::Webhook => vec![],
    }
}

fn same_origin(url: &Url, base: &Url) -> bool {
    url.scheme() == base.scheme()
        && url.host_str().is_some()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
}

/// The base's path without its trailing slash (`""` for a bare host).
fn prefix(base: &Url) -> &str {
    base.path().trim_end_matches('/')
}

/// The key in a URL on the kind's base, or why it has none.
fn robot_key(kind: Kind, url: &Url, base: &Url) -> Result<String, Refusal> {
    let prefix = prefix(base);
    let query_key = |path: &str, name: &'static str| -> Result<String, Refusal> {
        if url.path() != format!("{prefix}{path}") {
            return Err(Refusal::Path(path.to_owned()));
        }
        let values: Vec<String> = url
            .query_pairs()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .collect();
        match values.as_slice() {
            [one] if !one.is_empty() => Ok(one.clone()),
            [] | [_] => Err(Refusal::NoKey(name)),
            _ => Err(Refusal::KeyTwice(name)),
        }
    };
    match kind {
        Kind::WeComRobot => query_key("/cgi-bin/webhook/send", "key"),
        Kind::DingTalk => query_key("/robot/send", "access_token"),
        Kind::Feishu => {
            const HOOK: &str = "/open-apis/bot/v2/hook/";
            url.path()
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix(HOOK))
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| Refusal::Path(format!("{HOOK}…")))
        }
        // Never on a robot base ([`bases_of`] has none for them).
        Kind::Telegram | Kind::Webhook => Err(Refusal::OtherHost),
    }
}

/// `key` if it looks like the kind's key (letters, digits, `-`, `_`): nothing that could
/// change the URL it is put into.
fn checked_key(kind: Kind, key: &str, bases: &Bases) -> Result<String, AddressError> {
    let fine = (4..=MAX_KEY).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if fine {
        Ok(key.to_owned())
    } else {
        Err(not_accepted(
            Some(kind),
            bases,
            Refusal::KeyCharacters(kind),
        ))
    }
}

/// The refusal, with the forms accepted for the kind (or every robot kind).
fn not_accepted(kind: Option<Kind>, bases: &Bases, why: Refusal) -> AddressError {
    let kinds: Vec<Kind> = match kind {
        Some(kind) => vec![kind],
        None => ROBOTS.to_vec(),
    };
    AddressError::NotAccepted {
        why,
        accepted: kinds.into_iter().map(|k| (k, form(k, bases))).collect(),
    }
}

/// "{why}。只接受：…\n{Why}. Accepted: …".
fn accepted_text(why: &Refusal, accepted: &[(Kind, String)]) -> String {
    let (why_zh, why_en) = why.texts();
    let forms: Vec<String> = accepted
        .iter()
        .map(|(kind, form)| format!("{} {form}", kind.label_zh()))
        .collect();
    let forms_en: Vec<String> = accepted
        .iter()
        .map(|(kind, form)| format!("{}: {form}", kind.label()))
        .collect();
    let mut chars = why_en.chars();
    let why_en: String = chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default();
    format!(
        "{why_zh}。只接受：{}。\n{why_en}. Accepted: {}.",
        forms.join("；"),
        forms_en.join("; ")
    )
}

/// What an address of the kind looks like.
fn form(kind: Kind, bases: &Bases) -> String {
    let base = |url: &Url| url.as_str().trim_end_matches('/').to_owned();
    match kind {
        Kind::WeComRobot => format!("{}/cgi-bin/webhook/send?key=…", base(&bases.wecom_robot)),
        Kind::DingTalk => format!("{}/robot/send?access_token=…", base(&bases.dingtalk)),
        Kind::Feishu => format!(
            "{}/open-apis/bot/v2/hook/… or {}/open-apis/bot/v2/hook/…",
            base(&bases.feishu),
            base(&bases.lark)
        ),
        Kind::Telegram => "telegram -1001234567890 (chat id) or @channel".to_owned(),
        Kind::Webhook => "[destinations.NAME] url = \"https://…\"".to_owned(),
    }
}

/// A Telegram chat: a numeric id (groups and channels are negative, `-100…`) or a public
/// channel's `@username`.
pub(super) fn parse_chat_id(typed: &str, bases: &Bases) -> Result<Destination, AddressError> {
    let typed = unwrap_typed(typed);
    let numeric = {
        let digits = typed.strip_prefix('-').unwrap_or(typed);
        (1..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    };
    let username = typed.strip_prefix('@').is_some_and(|name| {
        (4..=32).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    if numeric || username {
        Ok(Destination::new(
            Kind::Telegram,
            bases.telegram.clone(),
            typed.to_owned(),
        ))
    } else {
        Err(AddressError::NotTelegramChatId(shorten(typed)))
    }
}

/// A webhook URL from the config: any absolute http(s) URL (the fragment dropped).
pub(super) fn parse_webhook_url(typed: &str) -> Result<Destination, AddressError> {
    let typed = typed.trim();
    let mut url = Url::parse(typed).map_err(AddressError::WebhookNotUrl)?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(AddressError::WebhookNotHttp);
    }
    url.set_fragment(None);
    let address = url.to_string();
    Ok(Destination::new(Kind::Webhook, url, address))
}

/// A destination's secret as typed, checked for its kind.
pub(super) fn parse_secret(kind: Kind, typed: &str) -> Result<String, SecretError> {
    let secret = unwrap_typed(typed);
    let printable =
        !secret.is_empty() && secret.len() <= 512 && secret.bytes().all(|b| b.is_ascii_graphic());
    let fine = match kind {
        Kind::WeComRobot => return Err(SecretError::WeComRobotHasNone),
        Kind::Telegram => return Err(SecretError::TelegramTakesNone),
        Kind::DingTalk => {
            secret.len() > 3
                && secret.starts_with("SEC")
                && secret.bytes().all(|b| b.is_ascii_alphanumeric())
        }
        Kind::Feishu => printable,
        Kind::Webhook => printable && super::webhook::signing_key(secret).is_some(),
    };
    match (fine, kind) {
        (true, _) => Ok(secret.to_owned()),
        (false, Kind::DingTalk) => Err(SecretError::DingTalk),
        (false, Kind::Feishu) => Err(SecretError::Feishu),
        (false, _) => Err(SecretError::Webhook),
    }
}

/// `ab…yz`: the first and last two characters of a key (nothing of a short one).
pub(super) fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 8 {
        return "…".to_owned();
    }
    let head: String = chars[..2].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}…{tail}")
}

/// A webhook URL as its origin: its path and query may hold a token.
pub(super) fn mask_webhook(url: &str) -> String {
    match Url::parse(url) {
        Ok(url) => {
            let origin = url.origin().ascii_serialization();
            let bare = url.path() == "/" && url.query().is_none();
            if bare {
                format!("{origin}/")
            } else {
                format!("{origin}/…")
            }
        }
        Err(_) => "…".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;

    fn parse(hint: Option<Kind>, typed: &str) -> Result<Destination, AddressError> {
        parse_chat_url(hint, typed, &Bases::default())
    }

    #[test]
    fn accepts_each_robot_on_its_own_host_and_path() {
        let d = parse(
            None,
            " https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx-4bc4 ",
        )
        .unwrap();
        assert_eq!(d.kind(), Kind::WeComRobot);
        assert_eq!(d.address.expose_secret(), "693a91f6-7xxx-4bc4");

        let d = parse(
            None,
            "https://oapi.dingtalk.com/robot/send?access_token=0123abcd&timestamp=1&sign=x",
        )
        .unwrap();
        assert_eq!(d.kind(), Kind::DingTalk);
        assert_eq!(d.address.expose_secret(), "0123abcd");
        // Only the token is kept: the pasted timestamp and sign are not sent again.
        assert_eq!(
            d.expose_address(),
            "https://oapi.dingtalk.com/robot/send?access_token=0123abcd"
        );

        let d = parse(
            None,
            "<https://open.feishu.cn/open-apis/bot/v2/hook/0a1b2c3d-4e5f-6789>",
        )
        .unwrap();
        assert_eq!(d.kind(), Kind::Feishu);
        assert_eq!(d.address.expose_secret(), "0a1b2c3d-4e5f-6789");
        let d = parse(
            Some(Kind::Feishu),
            "https://open.larksuite.com/open-apis/bot/v2/hook/0a1b2c3d",
        )
        .unwrap();
        assert_eq!(
            d.expose_address(),
            "https://open.larksuite.com/open-apis/bot/v2/hook/0a1b2c3d"
        );
        // Host names are case-insensitive; an explicit default port is the same origin.
        assert!(
            parse(
                None,
                "HTTPS://QYAPI.WEIXIN.QQ.COM:443/cgi-bin/webhook/send?key=abcd1234"
            )
            .is_ok()
        );
    }

    #[test]
    fn a_bare_key_is_accepted_when_the_kind_is_named() {
        let d = parse(Some(Kind::WeComRobot), "693a91f6-7xxx-4bc4").unwrap();
        assert_eq!(
            d.expose_address(),
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx-4bc4"
        );
        let d = parse(Some(Kind::DingTalk), "0123abcd0123abcd").unwrap();
        assert_eq!(
            d.expose_address(),
            "https://oapi.dingtalk.com/robot/send?access_token=0123abcd0123abcd"
        );
        // A URL without its scheme is the https URL.
        let d = parse(None, "oapi.dingtalk.com/robot/send?access_token=0123abcd").unwrap();
        assert_eq!(
            d.expose_address(),
            "https://oapi.dingtalk.com/robot/send?access_token=0123abcd"
        );
        assert!(
            parse(
                Some(Kind::WeComRobot),
                "evil.com/cgi-bin/webhook/send?key=abcd1234"
            )
            .is_err()
        );
        let err = parse(None, "693a91f6-7xxx-4bc4").unwrap_err().to_string();
        assert!(err.contains("不是机器人的 webhook 地址"), "{err}");
        assert!(err.contains("qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…"));
    }

    #[test]
    fn refuses_other_hosts_internal_addresses_and_tricks() {
        for typed in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:8080/cgi-bin/webhook/send?key=abcd1234",
            "https://qyapi.weixin.qq.com.evil.com/cgi-bin/webhook/send?key=abcd1234",
            "https://qyapi.weixin.qq.com@evil.com/cgi-bin/webhook/send?key=abcd1234",
            "https://user:pw@qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abcd1234",
            "https://evil.com\\@qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abcd1234",
            "https://evil.com#@qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abcd1234",
            "https://evilqyapi.weixin.qq.com/cgi-bin/webhook/send?key=abcd1234",
            "https://qyapi.weixin.qq.com./cgi-bin/webhook/send?key=abcd1234",
            "http://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abcd1234",
            "https://qyapi.weixin.qq.com:8443/cgi-bin/webhook/send?key=abcd1234",
            "file:///etc/passwd",
            "gopher://qyapi.weixin.qq.com/",
            "https://[::1]/cgi-bin/webhook/send?key=abcd1234",
            "https://open.feishu.cn.attacker.net/open-apis/bot/v2/hook/abcd1234",
        ] {
            let err = parse(None, typed).expect_err(typed).to_string();
            assert!(
                err.contains("只接受") && err.contains("Accepted"),
                "{typed}: {err}"
            );
        }
    }

    #[test]
    fn refuses_other_paths_and_missing_keys_on_the_right_host() {
        for (typed, says) in [
            (
                "https://qyapi.weixin.qq.com/cgi-bin/gettoken?key=abcd1234",
                "/cgi-bin/webhook/send",
            ),
            (
                "https://qyapi.weixin.qq.com/cgi-bin/webhook/send/../../gettoken?key=abcd1234",
                "/cgi-bin/webhook/send",
            ),
            ("https://qyapi.weixin.qq.com/cgi-bin/webhook/send", "key=…"),
            (
                "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=",
                "key=…",
            ),
            (
                "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=a1b2c3d4&key=e5f6a7b8",
                "more than once",
            ),
            (
                "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=ab%2F..%2Fcd",
                "letters, digits",
            ),
            (
                "https://oapi.dingtalk.com/robot/send?token=abc",
                "access_token",
            ),
            (
                "https://oapi.dingtalk.com/topapi/robot/send?access_token=abcd1234",
                "/robot/send",
            ),
            (
                "https://open.feishu.cn/open-apis/bot/v2/hook/",
                "/open-apis/bot/v2/hook/",
            ),
            (
                "https://open.feishu.cn/open-apis/im/v1/messages",
                "/open-apis/bot/v2/hook/",
            ),
            (
                "https://open.feishu.cn/open-apis/bot/v2/hook/a/b/c",
                "letters, digits",
            ),
            (
                "https://open.feishu.cn/open-apis/bot/v2/hook/abc%2F..%2Fx",
                "letters, digits",
            ),
        ] {
            let err = parse(None, typed).expect_err(typed).to_string();
            assert!(err.contains(says), "{typed}: {err}");
        }
        // The hint decides which kind is meant: a DingTalk URL given as WeCom is refused.
        let err = parse(
            Some(Kind::WeComRobot),
            "https://oapi.dingtalk.com/robot/send?access_token=abcd1234",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("企业微信群机器人"), "{err}");
        assert!(!err.contains("钉钉"), "{err}");
    }

    #[test]
    fn refusals_carry_their_reason_and_the_accepted_forms() {
        let AddressError::NotAccepted { why, accepted } = parse(
            None,
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=a1b2c3d4&key=e5f6a7b8",
        )
        .unwrap_err() else {
            panic!("a refused robot URL");
        };
        assert_eq!(why, Refusal::KeyTwice("key"));
        assert_eq!(
            accepted,
            [(
                Kind::WeComRobot,
                "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…".to_owned()
            )]
        );
        // Nothing on a robot's host: every robot kind is offered.
        let err = parse(None, "https://example.com/hook").unwrap_err();
        assert!(
            matches!(&err, AddressError::NotAccepted { why: Refusal::OtherHost, accepted } if accepted.len() == 3),
            "{err:?}"
        );
        assert_eq!(
            parse(Some(Kind::Telegram), "chat").err(),
            Some(AddressError::NotTelegramChatId("chat".to_owned()))
        );
        assert_eq!(
            parse(Some(Kind::WeComRobot), "").unwrap_err().to_string(),
            "地址是空的。只接受：企业微信群机器人 https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…。\nThe address is empty. Accepted: WeCom group robot: https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=….",
        );
    }

    #[test]
    fn webhooks_only_from_the_config() {
        let err = parse(Some(Kind::Webhook), "https://hooks.example.com/x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("配置"), "{err}");
        let d = parse_webhook_url("http://10.1.2.3:9000/in?token=t#frag").unwrap();
        assert_eq!(d.expose_address(), "http://10.1.2.3:9000/in?token=t");
        assert_eq!(d.masked(), "http://10.1.2.3:9000/…");
        assert_eq!(
            parse_webhook_url("https://hooks.example.com")
                .unwrap()
                .masked(),
            "https://hooks.example.com/"
        );
        assert!(parse_webhook_url("ftp://x.example/").is_err());
        assert!(parse_webhook_url("not a url").is_err());
    }

    #[test]
    fn telegram_chat_ids() {
        for typed in ["-1001234567890", "123456789", "@my_channel", " -42 "] {
            let d = parse(Some(Kind::Telegram), typed).expect(typed);
            assert_eq!(d.chat_id(), Some(typed.trim()));
            assert_eq!(d.masked(), format!("telegram {}", typed.trim()));
        }
        for typed in [
            "",
            "abc",
            "--1",
            "-",
            "@1abc",
            "@a",
            "12a",
            "https://t.me/x",
        ] {
            assert!(parse(Some(Kind::Telegram), typed).is_err(), "{typed:?}");
        }
    }

    #[test]
    fn secrets_per_kind() {
        assert!(parse_secret(Kind::DingTalk, "SEC0123abc").is_ok());
        let err = parse_secret(Kind::DingTalk, "0123abc").unwrap_err();
        assert_eq!(err, SecretError::DingTalk);
        assert!(err.to_string().contains("SEC"), "{err}");
        assert!(parse_secret(Kind::Feishu, "qpL7l7UaQ9vQXcJ0GZv3Bf").is_ok());
        assert!(parse_secret(Kind::Feishu, "has space").is_err());
        assert_eq!(
            parse_secret(Kind::WeComRobot, "x"),
            Err(SecretError::WeComRobotHasNone)
        );
        assert_eq!(
            parse_secret(Kind::Telegram, "x"),
            Err(SecretError::TelegramTakesNone)
        );
        assert!(parse_secret(Kind::Webhook, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(parse_secret(Kind::Webhook, "whsec_not*base64").is_err());
    }

    #[test]
    fn masks() {
        assert_eq!(mask_key("abcdefghyz"), "ab…yz");
        assert_eq!(mask_key("short"), "…");
    }

    #[test]
    fn bases_pointed_at_a_mock_accept_only_the_mock() {
        let mock = Url::parse("http://127.0.0.1:4567/proxy/").unwrap();
        let bases = Bases {
            wecom_robot: mock.clone(),
            dingtalk: mock.clone(),
            feishu: mock.clone(),
            lark: mock.clone(),
            telegram: mock,
        };
        let d = parse_chat_url(
            None,
            "http://127.0.0.1:4567/proxy/robot/send?access_token=abcd1234",
            &bases,
        )
        .unwrap();
        assert_eq!(d.kind(), Kind::DingTalk);
        assert_eq!(
            d.expose_address(),
            "http://127.0.0.1:4567/proxy/robot/send?access_token=abcd1234"
        );
        let d = parse_chat_url(
            None,
            "http://127.0.0.1:4567/proxy/open-apis/bot/v2/hook/abcd1234",
            &bases,
        )
        .unwrap();
        assert_eq!(d.kind(), Kind::Feishu);
        // The real hosts are not the configured ones now.
        assert!(
            parse_chat_url(
                None,
                "https://oapi.dingtalk.com/robot/send?access_token=abcd1234",
                &bases
            )
            .is_err()
        );
        // Nor the same host without the prefix, or on another port.
        assert!(
            parse_chat_url(
                None,
                "http://127.0.0.1:4567/robot/send?access_token=abcd1234",
                &bases
            )
            .is_err()
        );
        assert!(
            parse_chat_url(
                None,
                "http://127.0.0.1:4568/proxy/robot/send?access_token=abcd1234",
                &bases
            )
            .is_err()
        );
    }
}
