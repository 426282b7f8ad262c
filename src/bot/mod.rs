//! Chat commands: what a member's message or menu click means, and the texts we answer.
//!
//! Pure: no storage, no network. The callback handler asks [`interpret`] what to do, does
//! it, and renders the answer with the functions below.

use unicode_normalization::UnicodeNormalization;

use crate::delivery::Binding;
use crate::delivery::quiet::QuietHours;
use crate::domain::ChannelName;
use crate::wecom::xml::Inbound;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Show the member's push token (created on first use).
    Token,
    /// Replace the member's token; the old one stops working.
    Rotate,
    Help,
    /// First contact (`subscribe` event).
    Welcome,
    /// `email alice@example.com`, `phone 13800138000`: send a verification code to the
    /// address (as typed) over that channel.
    Bind {
        channel: ChannelName,
        typed: String,
    },
    /// `email off`, `phone off`: unbind the address on that channel.
    Unbind(ChannelName),
    /// `verify 123456` (or the six digits alone): always six ASCII digits.
    Verify(String),
    /// `verify` with anything but six digits: a typo, answered with the usage line and
    /// not counted as an attempt.
    VerifyUsage,
    /// `status`: token hint, address, channel order, today's counts.
    Status,
    /// `fallback email,wecom` (as typed; empty: explain).
    Fallback(String),
    /// `format text|markdown|card|default` (as typed; empty: explain).
    Format(String),
    /// `quiet 23:00-07:00 [strict]`, `quiet off`, `quiet default` (as typed; empty: show
    /// the member's quiet hours).
    Quiet(String),
    /// `timezone +08:00`, `timezone default` (as typed; empty: show the member's offset).
    Timezone(String),
    /// `robot ops https://qyapi…/send?key=…` (optionally a signing secret after it), or
    /// `robot ops telegram -1001234` / `telegram ops -1001234`: add a destination of the
    /// member's own, kept only if its test message is accepted.
    AddRobot {
        name: String,
        telegram: bool,
        address: String,
        secret: Option<String>,
    },
    /// `robot ops off`.
    RemoveRobot(String),
    /// `robots`, or `robot` alone: the member's destinations (masked) and the shared ones.
    Robots,
    /// `robot` with something it cannot read: the usage.
    RobotUsage,
    /// `login` / `登录` / `console` / `控制台`: a one-time link to the web console.
    Login,
    /// `logout` / `退出登录` / `登出`: end every console session of the member.
    Logout,
    /// `ack` / `收到` / `确认`: acknowledge the member's latest message that asks for it.
    Ack,
    /// `group new ops` / `建群 ops`: make a group (the name as typed, checked by the caller).
    GroupNew(String),
    /// `join K7QM-3XPA` / `加入 K7QM-3XPA`: join a group by its invite code (as typed).
    GroupJoin(String),
    /// `leave ops` / `退出 ops` (not `退出登录`: that is `logout`).
    GroupLeave(String),
    /// `groups` / `群组`: the member's groups.
    Groups,
    /// `group rotate ops`: a new token for the owner's group.
    GroupRotate(String),
    /// `group invite ops`: a new invite code for the owner's group.
    GroupInvite(String),
    /// `group kick ops bob`: remove a member from the owner's group.
    GroupKick {
        group: String,
        member: String,
    },
    /// `group delete ops`: delete the owner's group.
    GroupDelete(String),
    /// `mute ops` / `静音 ops`, `unmute ops` / `取消静音 ops`: skip (or no longer skip) the
    /// member for the group's messages.
    GroupMute {
        group: String,
        muted: bool,
    },
    /// `group`, `join`, `mute` … with something missing or unreadable: the usage.
    GroupUsage,
}

/// The command a callback asks for, or `None` when it needs no answer (e.g. `enter_agent`,
/// location reports, unknown menu keys).
pub fn interpret(inbound: &Inbound) -> Option<Command> {
    match inbound.msg_type.as_str() {
        "text" => Some(parse_text(inbound.content.as_deref().unwrap_or(""))),
        "event" => match inbound
            .event
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("subscribe") => Some(Command::Welcome),
            Some("click") => inbound.event_key.as_deref().and_then(parse_keyword),
            _ => None,
        },
        // Pictures, voice, files…: we cannot use them, so explain what we can do.
        _ => Some(Command::Help),
    }
}

/// Typed text: a known keyword (with its argument), anything else gets the help text.
///
/// Read as a phone's IME types it (see [`fold`]): `ＴＯＫＥＮ`, `令牌！`, `邮箱：a@x.com`,
/// `fallback wecom、email` and `１２３４５６` all mean what they say.
pub fn parse_text(text: &str) -> Command {
    let text = fold(text);
    // A code pasted on its own.
    if is_code(&text) {
        return Command::Verify(text);
    }
    // `免打扰23:00-07:00`: a Chinese keyword needs no space after it.
    if let Some((word, rest)) = glued(&text) {
        return match word {
            "时区" | "時區" => Command::Timezone(rest.to_owned()),
            "建群" => Command::GroupNew(rest.to_owned()),
            "加入" => Command::GroupJoin(rest.to_owned()),
            "静音" => Command::GroupMute {
                group: rest.to_owned(),
                muted: true,
            },
            "取消静音" => Command::GroupMute {
                group: rest.to_owned(),
                muted: false,
            },
            _ => Command::Quiet(rest.to_owned()),
        };
    }
    let (word, rest) = split_keyword(&text);
    let word = word.trim_start_matches('/').to_lowercase();
    match word.as_str() {
        "email" | "e-mail" | "mail" | "邮箱" | "邮件" => binding(ChannelName::Email, rest),
        "phone" | "mobile" | "sms" | "手机" | "手机号" | "短信" => {
            binding(ChannelName::Sms, rest)
        }
        "verify" | "验证" | "code" | "验证码" => {
            if is_code(rest) {
                Command::Verify(rest.to_owned())
            } else {
                Command::VerifyUsage
            }
        }
        // `、` is how a Chinese IME separates list items (`，` folds to `,`).
        "fallback" | "回退" | "channels" | "渠道" => Command::Fallback(rest.replace('、', ",")),
        "format" | "格式" | "样式" => Command::Format(rest.to_owned()),
        "quiet" | "dnd" | "免打扰" | "勿扰" => Command::Quiet(rest.to_owned()),
        "timezone" | "tz" | "时区" | "時區" => Command::Timezone(rest.to_owned()),
        "robot" | "robots" | "机器人" | "群机器人" => robot(rest, false),
        "telegram" | "tg" => robot(rest, true),
        "group" | "groups" | "群组" | "群" => group(rest),
        "建群" => one_argument(rest, Command::GroupNew),
        "join" | "加入" => one_argument(rest, Command::GroupJoin),
        "leave" | "退出" => one_argument(rest, Command::GroupLeave),
        "mute" | "静音" => one_argument(rest, |group| Command::GroupMute { group, muted: true }),
        "unmute" | "取消静音" => one_argument(rest, |group| Command::GroupMute {
            group,
            muted: false,
        }),
        _ if rest.is_empty() => parse_keyword(&word).unwrap_or(Command::Help),
        _ => Command::Help,
    }
}

/// Chinese keywords that may be followed by their argument without a space
/// (`免打扰23:00-07:00`, `时区+8`, `建群运维`, `加入K7QM-3XPA`, `静音运维`). Not `退出`:
/// `退出登录` is `logout`, so leaving a group needs the space (`退出 运维`).
const GLUED: [&str; 8] = [
    "免打扰",
    "勿扰",
    "时区",
    "時區",
    "建群",
    "加入",
    "取消静音",
    "静音",
];

/// `join`, `leave`, `mute` …: the argument (all of it: a name with a space in it is
/// refused by name, a code may be typed with spaces), or the usage when there is none.
fn one_argument(rest: &str, command: impl FnOnce(String) -> Command) -> Command {
    if rest.is_empty() {
        Command::GroupUsage
    } else {
        command(rest.to_owned())
    }
}

/// `group` / `群组` and what follows: nothing (or `list`) lists the member's groups;
/// `new NAME`, `join CODE`, `leave NAME`, `rotate NAME`, `invite NAME`, `kick NAME USERID`,
/// `delete NAME`, `mute NAME`, `unmute NAME` (or their Chinese words).
fn group(rest: &str) -> Command {
    let (verb, arg) = split_keyword(rest);
    let verb = verb.to_lowercase();
    match verb.as_str() {
        "" | "list" | "ls" | "列表" => Command::Groups,
        "new" | "create" | "新建" | "创建" | "建" => one_argument(arg, Command::GroupNew),
        "join" | "加入" => one_argument(arg, Command::GroupJoin),
        "leave" | "退出" => one_argument(arg, Command::GroupLeave),
        "rotate" | "重置" => one_argument(arg, Command::GroupRotate),
        "invite" | "邀请" | "邀请码" => one_argument(arg, Command::GroupInvite),
        "delete" | "remove" | "删除" | "解散" => one_argument(arg, Command::GroupDelete),
        "mute" | "静音" => one_argument(arg, |group| Command::GroupMute { group, muted: true }),
        "unmute" | "取消静音" => one_argument(arg, |group| Command::GroupMute {
            group,
            muted: false,
        }),
        "kick" | "移除" | "踢出" => match arg.split_whitespace().collect::<Vec<_>>()[..] {
            [group, member] => Command::GroupKick {
                group: group.to_owned(),
                member: member.to_owned(),
            },
            _ => Command::GroupUsage,
        },
        _ => Command::GroupUsage,
    }
}

/// A [`GLUED`] keyword with something right after it: the keyword and the rest (trimmed,
/// without a leading `:`).
fn glued(text: &str) -> Option<(&'static str, &str)> {
    GLUED.into_iter().find_map(|word| {
        let rest = text.strip_prefix(word)?;
        let first = rest.chars().next()?;
        (!first.is_whitespace() && first != ':').then_some((word, rest.trim()))
    })
}

/// `robot NAME ADDRESS [SECRET]`, `robot NAME telegram CHAT`, `robot NAME off`, `robots`;
/// `telegram NAME CHAT` (`telegram` set).
fn robot(rest: &str, telegram: bool) -> Command {
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words.as_slice() {
        [] if !telegram => Command::Robots,
        [name, off]
            if matches!(
                off.to_lowercase().as_str(),
                "off" | "remove" | "delete" | "关闭" | "删除" | "解绑"
            ) =>
        {
            Command::RemoveRobot((*name).to_owned())
        }
        [name, tg, chat] if !telegram && tg.eq_ignore_ascii_case("telegram") => Command::AddRobot {
            name: (*name).to_owned(),
            telegram: true,
            address: (*chat).to_owned(),
            secret: None,
        },
        [name, address] => Command::AddRobot {
            name: (*name).to_owned(),
            telegram,
            address: (*address).to_owned(),
            secret: None,
        },
        [name, address, secret] if !telegram => Command::AddRobot {
            name: (*name).to_owned(),
            telegram,
            address: (*address).to_owned(),
            secret: Some((*secret).to_owned()),
        },
        _ => Command::RobotUsage,
    }
}

/// `email …` / `phone …`: bind, unbind, or (nothing after it) show the status.
fn binding(channel: ChannelName, rest: &str) -> Command {
    if matches!(
        rest.to_lowercase().as_str(),
        "off" | "none" | "remove" | "unbind" | "关闭" | "解绑" | "删除"
    ) {
        Command::Unbind(channel)
    } else if rest.is_empty() {
        Command::Status
    } else {
        Command::Bind {
            channel,
            typed: rest.to_owned(),
        }
    }
}

/// A verification code as it is sent: six ASCII digits.
pub fn is_code(text: &str) -> bool {
    text.len() == 6 && text.bytes().all(|b| b.is_ascii_digit())
}

/// Characters that show as nothing: zero-width space, joiners and marks (U+200B–U+200F),
/// word joiner, BOM, Mongolian vowel separator. Pasted text carries them.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}' | '\u{2060}' | '\u{FEFF}' | '\u{180E}'
    )
}

/// What ends a sentence, once folded (`！`, `？`, `．` fold to their ASCII forms; `｡` to `。`).
const SENTENCE_END: [char; 4] = ['。', '.', '!', '?'];

/// Text as the parser reads it: invisible characters dropped, full-width and other
/// compatibility forms folded (NFKC: `ＴＯＫＥＮ` → `TOKEN`, `１２３` → `123`, `：` → `:`,
/// `，` → `,`), trimmed, and without trailing sentence punctuation (`token。`, `status?`).
///
/// Every argument a command takes today (an address, a code, channel and format names)
/// means the same folded; nothing is kept byte for byte as typed.
pub fn fold(text: &str) -> String {
    let folded: String = text.chars().filter(|c| !is_invisible(*c)).nfkc().collect();
    let mut text = folded.trim();
    loop {
        let shorter = text.trim_end_matches(SENTENCE_END).trim_end();
        if shorter.len() == text.len() {
            return text.to_owned();
        }
        text = shorter;
    }
}

/// `email a@x.com`, `email:a@x.com`, `邮箱：a@x.com` (folded to `:`), `email : a@x.com`:
/// the keyword and its argument (trimmed, possibly empty).
fn split_keyword(text: &str) -> (&str, &str) {
    match text.find(|c: char| c.is_whitespace() || c == ':') {
        Some(at) => {
            let (word, rest) = text.split_at(at);
            let rest = rest.trim_start();
            let rest = rest.strip_prefix(':').unwrap_or(rest);
            (word, rest.trim())
        }
        None => (text, ""),
    }
}

fn parse_keyword(text: &str) -> Option<Command> {
    let word = text.trim().trim_start_matches('/').to_lowercase();
    match word.as_str() {
        "token" | "令牌" => Some(Command::Token),
        "rotate" | "重置" => Some(Command::Rotate),
        "help" | "帮助" | "?" | "？" => Some(Command::Help),
        "status" | "状态" => Some(Command::Status),
        "login" | "登录" | "console" | "控制台" => Some(Command::Login),
        "logout" | "退出登录" | "登出" => Some(Command::Logout),
        "ack" | "收到" | "确认" => Some(Command::Ack),
        _ => None,
    }
}

/// Examples, safest first: the token in a header stays out of proxy and access logs; the
/// GET form (token in the URL) comes last, for tools that can only open a URL.
fn usage(token: &str, public_base: &str) -> String {
    format!(
        "推送示例 Example:\n\
         curl -H \"Authorization: Bearer {token}\" -d title=Hello -d content=World {public_base}/send\n\n\
         JSON:\n\
         curl -H \"Authorization: Bearer {token}\" -H \"Content-Type: application/json\" \
         -d '{{\"title\":\"Hello\",\"content\":\"World\"}}' {public_base}/send\n\n\
         只能用 URL 时 URL only (令牌会留在代理日志里 the token ends up in proxy logs):\n\
         curl \"{public_base}/send?token={token}&title=Hello&content=World\"\n\n\
         令牌泄露请发送 rotate（重置）换一个。Send rotate if the token leaks."
    )
}

/// Answer to `token`. Line 2 is the token alone, so it is easy to copy on a phone.
pub fn token_reply(token: &str, public_base: &str) -> String {
    format!(
        "你的推送令牌 Your push token:\n{token}\n\n{}",
        usage(token, public_base)
    )
}

/// Answer to `rotate`. Line 2 is the new token alone.
pub fn rotated_reply(token: &str, public_base: &str) -> String {
    format!(
        "已重置，旧令牌立即失效。New token (the old one no longer works):\n{token}\n\n{}",
        usage(token, public_base)
    )
}

pub fn help_reply() -> String {
    "pushbot 命令 Commands:\n\
     token（令牌）— 查看你的推送令牌和用法 show your push token and how to use it\n\
     rotate（重置）— 换一个新令牌，旧令牌立即失效 issue a new token; the old one stops working\n\
     email 地址（邮箱 地址）— 绑定邮箱，企业微信发不出时改用邮件 bind an e-mail address for fallback\n\
     phone 手机号（手机 号码）— 绑定手机号用于短信（需服务器已配置）bind a phone number for SMS (if configured)\n\
     verify 验证码（验证）— 完成绑定 confirm it with the code you received\n\
     email off · phone off（邮箱 关闭 · 手机 关闭）— 解绑 unbind\n\
     fallback wecom,email,sms（回退）— 设置渠道顺序 set your channel order\n\
     robot ops URL（机器人）— 添加群聊目的地 add a group chat (robots 列表 list)\n\
     format text|markdown|card（格式）— 消息样式：纯文本 / Markdown（仅企业微信客户端）/ 卡片 how messages look\n\
     quiet 23:00-07:00（免打扰）— 时段内的消息结束后送达，紧急消息除外（加 strict 也等）quiet hours: messages wait until they end · quiet off（免打扰 关）\n\
     timezone +08:00（时区）— 免打扰按你的时区 your UTC offset for quiet hours\n\
     status（状态）— 查看绑定和今日统计 your token, address, order and today's counts\n\
     login（登录）— 网页控制台的一次性链接 a one-time link to the web console · logout（退出登录）\n\
     ack（收到）— 确认告警 acknowledge an alert\n\
     group new ops（建群 ops）— 建一个群组，一个令牌推送给所有成员 make a group: one token reaches every member\n\
     join 邀请码（加入）· leave ops（退出 ops）· groups（群组）· mute ops（静音）· unmute ops（取消静音）\n\
     help（帮助）— 显示本帮助 show this help"
        .to_owned()
}

/// Answer to `ack`: what was acknowledged (`title`, shown cut), or that nothing waits.
pub fn ack_reply(acked: Option<(&str, Option<&str>)>) -> String {
    match acked {
        None => "没有待确认的消息。No message is waiting for your acknowledgement.".to_owned(),
        Some((id, title)) => {
            let title: String = title.unwrap_or("").chars().take(40).collect();
            format!("已确认 Acknowledged：{title}\n（{id}）\n不会再升级。It will not be escalated.")
        }
    }
}

/// Answer to `login`: the one-time link on a line of its own.
pub fn login_reply(link: &str, ttl_minutes: u64) -> String {
    format!(
        "登录控制台 Log in to the console（{ttl_minutes} 分钟内有效，仅可使用一次 \
         valid for {ttl_minutes} minutes, once）:\n{link}\n\n\
         不要转发此链接。Do not forward this link: it logs in as you."
    )
}

/// Answer to `logout`: how many console sessions ended.
pub fn logout_reply(ended: u64) -> String {
    if ended == 0 {
        "控制台没有登录中的会话。No console session was open.".to_owned()
    } else {
        format!(
            "已退出控制台（{ended} 个会话）。Logged out of the console ({ended} session(s) ended)."
        )
    }
}

/// What the member sees of their own settings and today's deliveries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusView {
    /// `ab…yz`, or `None` without a token yet.
    pub token_hint: Option<String>,
    /// One line per channel a member can bind an address on: its command (`email`,
    /// `phone`) and the masked address, if bound.
    pub addresses: Vec<(String, Option<String>)>,
    /// `wecom → email`.
    pub order: String,
    /// Whether the order is the member's own (else the server's default).
    pub own_order: bool,
    /// Channels in the order that a member cannot use (e-mail without an address).
    pub unusable: Vec<String>,
    /// `(channel, delivered, failed)` for messages accepted today.
    pub today: Vec<(String, i64, i64)>,
    /// How messages look (`text`, `markdown`, `card`).
    pub look: String,
    /// Whether that is the member's own choice (else the server's default).
    pub own_look: bool,
    /// The member's quiet hours (`23:00-07:00 strict`), `None`: none.
    pub quiet: Option<String>,
    /// Whether that is the member's own choice (else the server's default).
    pub own_quiet: bool,
    /// The member's offset from UTC (`+08:00`).
    pub offset: String,
    /// Whether that is the member's own choice (else the server's default).
    pub own_offset: bool,
}

/// "" for the member's own setting, "（默认 default）" for the server's.
pub fn default_mark(own: bool) -> &'static str {
    if own { "" } else { "（默认 default）" }
}

/// The mark `status` puts after a setting.
fn whose(own: bool) -> &'static str {
    if own {
        "（你的设置 yours）"
    } else {
        "（默认 default）"
    }
}

/// `default`, `reset`, `默认`: back to the server's setting.
pub fn is_reset(typed: &str) -> bool {
    matches!(
        typed.trim().to_lowercase().as_str(),
        "default" | "reset" | "默认"
    )
}

pub fn status_reply(view: &StatusView) -> String {
    let token = view.token_hint.as_deref().unwrap_or("— (send token)");
    let addresses: String = view
        .addresses
        .iter()
        .map(|(what, masked)| {
            format!(
                "{what}: {}\n",
                masked.as_deref().unwrap_or("none（未绑定）")
            )
        })
        .collect();
    let mut order = view.order.clone();
    order.push_str(whose(view.own_order));
    if !view.unusable.is_empty() {
        order.push_str(&format!("；不可用 unusable: {}", view.unusable.join(", ")));
    }
    let today = if view.today.is_empty() {
        "no messages（暂无）".to_owned()
    } else {
        view.today
            .iter()
            .map(|(channel, delivered, failed)| format!("{channel} ✓{delivered} ✗{failed}"))
            .collect::<Vec<_>>()
            .join(" · ")
    };
    format!(
        "状态 Status\n\
         token: {token}\n\
         {addresses}\
         order: {order}\n\
         format: {look}{}\n\
         quiet: {quiet}{}\n\
         timezone: UTC{offset}{}\n\
         today: {today}（✓ 送达 delivered ✗ 失败 failed）",
        whose(view.own_look),
        whose(view.own_quiet),
        whose(view.own_offset),
        look = view.look,
        quiet = view.quiet.as_deref().unwrap_or("off（无 none）"),
        offset = view.offset,
    )
}

/// Answer to `format …`.
pub fn format_set_reply(look: &str, own: bool) -> String {
    let what = match look {
        "markdown" => "Markdown（企业微信客户端显示格式；微信里收不到 Markdown，请用 text）",
        "card" => "卡片 card：标题、摘要和全文链接 title, excerpt and a link to the full message",
        _ => "纯文本 text（Markdown 转成易读文本；太长时改发带全文链接的卡片）",
    };
    format!(
        "消息样式已设为 Messages now look like: {look}{}\n{what}",
        default_mark(own)
    )
}

pub fn format_invalid_reply(problem: &str) -> String {
    format!(
        "{problem}\n用法 Usage: format text · format markdown · format card · format default（格式 …）"
    )
}

/// What quiet hours do, in a line, for a reply.
fn quiet_meaning(strict: bool) -> &'static str {
    if strict {
        "时段内的所有消息（包括紧急消息）在结束时送达，多条合并为一条摘要。\n\
         Every message in the window, urgent ones too, waits until it ends; several arrive as one digest."
    } else {
        "时段内的消息在结束时送达，多条合并为一条摘要；紧急消息照常立即送达。\n\
         Messages in the window wait until it ends (several arrive as one digest); urgent ones still come at once."
    }
}

/// The member's quiet hours as a reply shows them: `23:00-07:00（UTC+08:00）`.
fn quiet_shown(hours: &QuietHours, offset: &str) -> String {
    format!("{hours}（UTC{offset}）")
}

/// Answer to `quiet 23:00-07:00 [strict]` (or `quiet default` with a server default):
/// `until`, the end of the window when it is quiet now; `retimed`, how many held messages
/// were given a new time.
pub fn quiet_set_reply(
    hours: &QuietHours,
    own: bool,
    offset: &str,
    until: Option<&str>,
    retimed: u64,
) -> String {
    let mut reply = format!(
        "免打扰已设为 Quiet hours set: {}{}\n{}",
        quiet_shown(hours, offset),
        default_mark(own),
        quiet_meaning(hours.strict)
    );
    if let Some(until) = until {
        reply.push_str(&format!(
            "\n现在正处于免打扰时段，消息将在 {until} 送达。It is quiet now: messages wait until {until}."
        ));
    }
    if retimed > 0 && until.is_none() {
        reply.push_str(&format!(
            "\n{retimed} 条等待中的消息现在送达。{retimed} waiting message(s) are on their way now."
        ));
    }
    reply
}

/// Answer to `quiet off` (or `quiet default` without a server default).
pub fn quiet_off_reply(own: bool, retimed: u64) -> String {
    let mut reply = format!(
        "免打扰已关闭{}。Quiet hours off: messages arrive at once.",
        default_mark(own)
    );
    if retimed > 0 {
        reply.push_str(&format!(
            "\n{retimed} 条等待中的消息现在送达。{retimed} waiting message(s) are on their way now."
        ));
    }
    reply
}

/// Answer to `quiet` alone, or to quiet hours that do not read: `problem` first.
pub fn quiet_usage_reply(
    problem: Option<&str>,
    current: Option<&QuietHours>,
    own: bool,
    offset: &str,
) -> String {
    let current = match current {
        Some(hours) => quiet_shown(hours, offset),
        None => "off（无 none）".to_owned(),
    };
    let mut reply = problem.map(|p| format!("{p}\n")).unwrap_or_default();
    reply.push_str(&format!(
        "免打扰 Quiet hours: {current}{}\n\
         用法 Usage: quiet 23:00-07:00 · quiet 23:00-07:00 strict（紧急消息也等 urgent ones wait too）\
         · quiet off · quiet default（免打扰 23:00-07:00 · 免打扰 关）",
        default_mark(own)
    ));
    reply
}

/// Answer to `timezone +08:00` (or `timezone default`); `quiet`: the member's quiet hours,
/// now kept at this offset.
pub fn timezone_set_reply(offset: &str, own: bool, quiet: Option<&QuietHours>) -> String {
    let mut reply = format!("时区已设为 Time zone set: UTC{offset}{}", default_mark(own));
    if let Some(hours) = quiet {
        reply.push_str(&format!(
            "\n免打扰 Quiet hours: {}",
            quiet_shown(hours, offset)
        ));
    }
    reply
}

/// Answer to `timezone` alone, or to an offset that does not read: `problem` first.
pub fn timezone_usage_reply(problem: Option<&str>, offset: &str, own: bool) -> String {
    let mut reply = problem.map(|p| format!("{p}\n")).unwrap_or_default();
    reply.push_str(&format!(
        "时区 Time zone: UTC{offset}{}\n\
         用法 Usage: timezone +08:00 · timezone UTC-5 · timezone default（时区 +08:00）",
        default_mark(own)
    ));
    reply
}

pub fn code_sent_reply(address: &str, ttl_minutes: u64) -> String {
    format!(
        "验证码已发送到 {address}，请在 {ttl_minutes} 分钟内回复 verify 验证码（验证 验证码）。\n\
         Verification code sent to {address}: reply \"verify <code>\" within {ttl_minutes} minutes."
    )
}

/// Answer to an address that does not parse.
pub fn address_invalid_reply(binding: &Binding, typed: &str) -> String {
    let shown: String = typed.chars().take(80).collect();
    let (zh, en) = binding.noun;
    let example = format!("{} {}", binding.command, binding.example);
    format!(
        "「{shown}」不是有效的{zh}，例如 {example}。\n\
         That is not a valid {en}; send e.g. {example}"
    )
}

pub fn channel_unavailable_reply(channel: ChannelName) -> String {
    let word = channel.in_sentence();
    let en: String = word
        .chars()
        .take(1)
        .flat_map(char::to_uppercase)
        .chain(word.chars().skip(1))
        .collect();
    format!(
        "本服务器未配置{}发送，请联系管理员。\n{en} is not configured on this server; ask its administrator.",
        channel.zh()
    )
}

pub fn code_too_many_reply() -> String {
    "验证码请求太频繁，请一小时后再试。\nToo many codes requested for you or this address; try again in an hour."
        .to_owned()
}

/// Answer to the right code. `in_order`: the channel is in the member's effective channel
/// order (else say how to add it).
pub fn bound_reply(
    binding: &Binding,
    channel: ChannelName,
    masked: &str,
    in_order: bool,
) -> String {
    let zh = binding.noun.0;
    let label = channel.label();
    if in_order {
        format!(
            "{zh}已绑定：{masked}。企业微信发送失败时将改用它。\n\
             {label} bound: {masked}. Messages WeCom cannot deliver go there."
        )
    } else {
        let name = channel.as_str();
        format!(
            "{zh}已绑定：{masked}。发送 fallback wecom,{name} 让企业微信发不出的消息改用它。\n\
             {label} bound: {masked}. Send \"fallback wecom,{name}\" to have messages WeCom cannot deliver go there."
        )
    }
}

pub fn code_wrong_reply(attempts_left: i64) -> String {
    format!("验证码错误，还可尝试 {attempts_left} 次。\nWrong code; {attempts_left} attempts left.")
}

pub fn code_expired_reply() -> String {
    "验证码已过期，请重新发送 email 地址 或 phone 号码 获取新验证码。\nThe code has expired; send email <address> or phone <number> again for a new one."
        .to_owned()
}

pub fn code_exhausted_reply() -> String {
    "错误次数过多，该验证码已失效，请重新发送 email 地址 或 phone 号码。\nToo many wrong attempts: this code no longer works; send email <address> or phone <number> for a new one."
        .to_owned()
}

/// Answer to `verify` without six digits after it; the code's tries are untouched.
pub fn verify_usage_reply() -> String {
    "用法 Usage: verify 123456（验证 123456）——邮件或短信里的 6 位数字，本次不计入尝试次数。\n\
     The code is the six digits from the mail or text; this did not count as an attempt."
        .to_owned()
}

pub fn no_pending_code_reply() -> String {
    "没有待验证的验证码，请先发送 email 地址 或 phone 号码。\nNo pending code: send email you@example.com or phone 13800138000 first."
        .to_owned()
}

pub fn unbound_reply(binding: &Binding, channel: ChannelName) -> String {
    format!(
        "{}已解绑。\n{} unbound: nothing will be sent there any more.",
        binding.noun.0,
        channel.label()
    )
}

pub fn fallback_set_reply(order: &str, own: bool) -> String {
    format!(
        "渠道顺序已设置。Channel order set.\norder: {order}{}",
        default_mark(own)
    )
}

pub fn fallback_invalid_reply(problem: &str) -> String {
    format!(
        "{problem}\n用法 Usage: fallback email,wecom · fallback wecom · fallback default（回退 …）"
    )
}

/// The verification mail: subject and body.
pub fn verification_mail(code: &str, ttl_minutes: u64) -> (String, String) {
    (
        "pushbot 邮箱验证码 · verification code".to_owned(),
        format!(
            "你的 pushbot 邮箱验证码 Your pushbot verification code:\n\n{code}\n\n\
             请在企业微信应用中回复 verify {code}（{ttl_minutes} 分钟内有效）。\n\
             Reply \"verify {code}\" in the WeCom app within {ttl_minutes} minutes.\n\n\
             不是你本人操作请忽略本邮件。If you did not ask for this, ignore this mail."
        ),
    )
}

pub fn robot_usage_reply(problem: Option<&str>) -> String {
    let usage = "用法 Usage:\n\
         robot ops https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…（企业微信群机器人）\n\
         robot ops https://oapi.dingtalk.com/robot/send?access_token=… SEC…（钉钉，可加签名密钥）\n\
         robot ops https://open.feishu.cn/open-apis/bot/v2/hook/… [secret]（飞书）\n\
         robot ops telegram -1001234567890（Telegram 群，需服务器配置机器人）\n\
         robot ops off（删除 remove）· robots（列表 list）\n\
         然后 Then: channel=ops 或 or fallback wecom,ops";
    match problem {
        Some(problem) => format!("{problem}\n{usage}"),
        None => usage.to_owned(),
    }
}

/// The test message a new destination gets: it is added only if this arrives.
pub fn robot_test_message(name: &str) -> (String, String) {
    (
        "pushbot 测试消息 · test message".to_owned(),
        format!(
            "这个群已作为推送目的地「{name}」添加。\nThis chat was added as the pushbot destination \"{name}\"."
        ),
    )
}

pub fn robot_added_reply(name: &str, masked: &str) -> String {
    format!(
        "已添加目的地「{name}」：{masked}，测试消息已送达。\n\
         Destination \"{name}\" added ({masked}); its test message arrived.\n\
         发送 Send: channel={name}，或设为回退 or as a fallback: fallback wecom,{name}"
    )
}

pub fn robot_refused_reply(name: &str, why: &str) -> String {
    format!(
        "未添加「{name}」：测试消息没有送达。\nNot added: its test message was refused or did not arrive.\n{why}"
    )
}

pub fn robot_removed_reply(name: &str, existed: bool) -> String {
    if existed {
        format!("已删除目的地「{name}」。\nDestination \"{name}\" removed.")
    } else {
        format!("没有名为「{name}」的目的地。\nYou have no destination named \"{name}\".")
    }
}

/// `robots`: the member's own (name, kind, masked address) and the shared ones' names.
pub fn robots_reply(own: &[(String, String, String)], shared: &[String]) -> String {
    let mut reply = String::from("目的地 Destinations:\n");
    if own.is_empty() && shared.is_empty() {
        reply.push_str("none（暂无）— robot ops <URL> 添加 to add one\n");
    }
    for (name, kind, masked) in own {
        if masked.starts_with(kind.as_str()) {
            reply.push_str(&format!("{name}: {masked}\n"));
        } else {
            reply.push_str(&format!("{name}: {kind} {masked}\n"));
        }
    }
    for name in shared {
        reply.push_str(&format!("{name}: 共享 shared (config)\n"));
    }
    reply.push_str("发送 Send: channel=<name> · 删除 remove: robot <name> off");
    reply
}

/// A group's send example: the same `/send` as a personal token's.
fn group_usage_example(token: &str, public_base: &str) -> String {
    format!(
        "推送示例 Example:\n\
         curl -H \"Authorization: Bearer {token}\" -d title=Hello -d content=World {public_base}/send"
    )
}

/// Answer to `group new NAME`, to its owner only: the token alone on a line (easy to copy
/// on a phone), the invite to pass on, a curl example.
pub fn group_created_reply(
    name: &str,
    token: &str,
    invite: &str,
    valid: &str,
    public_base: &str,
) -> String {
    format!(
        "已建群组「{name}」，你是群主。Group \"{name}\" made; you own it.\n\
         群组推送令牌 The group's push token:\n{token}\n\n\
         邀请码 Invite code（{valid} 内有效 valid for {valid}）:\n{invite}\n\
         成员发送 Members send: join {invite}（加入 {invite}）\n\n{}\n\n\
         令牌泄露请发送 group rotate {name} 换一个。Send group rotate {name} if it leaks.",
        group_usage_example(token, public_base)
    )
}

pub fn group_joined_reply(name: &str) -> String {
    format!(
        "已加入群组「{name}」，群组的消息会发给你。\nJoined group \"{name}\": its messages reach you now.\n\
         不想收到请发送 mute {name}（静音 {name}），退出请发送 leave {name}（退出 {name}）。"
    )
}

/// Answer to `leave NAME`.
pub fn group_left_reply(name: &str, new_owner: Option<&str>, deleted: bool) -> String {
    if deleted {
        format!(
            "已退出群组「{name}」；你是最后一位成员，群组已删除。\n\
             Left group \"{name}\"; you were its last member, so it is deleted."
        )
    } else if let Some(owner) = new_owner {
        format!(
            "已退出群组「{name}」，群主转给了 {owner}。\n\
             Left group \"{name}\"; {owner}, its longest-standing member, owns it now."
        )
    } else {
        format!("已退出群组「{name}」。\nLeft group \"{name}\".")
    }
}

/// One of the member's groups as `groups` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLine {
    pub name: String,
    pub owner: bool,
    pub muted: bool,
    pub members: i64,
    pub wecom: bool,
    /// For the owner: the token, and the invite with the day it expires (`2026-12-14`).
    pub token: Option<String>,
    pub invite: Option<(String, String)>,
}

/// Bytes a passive reply may have (WeCom's limit on a text reply).
const REPLY_BYTES: usize = 2048;

/// Answer to `groups`: as many groups as fit a passive reply, then how many more there are
/// (`GET /groups` lists them all).
pub fn groups_reply(groups: &[GroupLine]) -> String {
    if groups.is_empty() {
        return "你还没有群组。You are in no group.\n\
                建群 Make one: group new ops（建群 ops）· 加入 Join one: join 邀请码（加入 邀请码）"
            .to_owned();
    }
    let footer = "\n\n群主 Owners: group rotate|invite|delete NAME · group kick NAME USERID";
    let mut reply = String::from("你的群组 Your groups:\n");
    for (shown, g) in groups.iter().enumerate() {
        let mut block = format!("\n{}（{} 人 members）", g.name, g.members);
        if g.owner {
            block.push_str(" · 群主 owner");
        }
        if g.wecom {
            block.push_str(" · 企业微信 from WeCom");
        }
        if g.muted {
            block.push_str(" · 已静音 muted");
        }
        if let Some(token) = &g.token {
            block.push_str(&format!("\n令牌 token: {token}"));
        }
        if let Some((invite, until)) = &g.invite {
            block.push_str(&format!("\n邀请码 invite: {invite}（至 until {until}）"));
        }
        // Room for this block, the footer and the longest "more" line.
        if reply.len() + block.len() + footer.len() + 80 >= REPLY_BYTES {
            let more = groups.len() - shown;
            reply.push_str(&format!(
                "\n…还有 {more} 个 and {more} more: GET /groups lists them all"
            ));
            break;
        }
        reply.push_str(&block);
    }
    reply.push_str(footer);
    reply
}

/// Answer to `group rotate NAME`: the new token alone on a line.
pub fn group_rotated_reply(name: &str, token: &str, public_base: &str) -> String {
    format!(
        "群组「{name}」的令牌已重置，旧令牌立即失效。\n\
         Group \"{name}\" has a new token (the old one no longer works):\n{token}\n\n{}",
        group_usage_example(token, public_base)
    )
}

/// Answer to `group invite NAME`.
pub fn group_invite_reply(name: &str, invite: &str, valid: &str) -> String {
    format!(
        "群组「{name}」的新邀请码（{valid} 内有效，旧邀请码已失效）：\n\
         New invite code for \"{name}\" (valid for {valid}; the old one no longer works):\n\
         {invite}\n成员发送 Members send: join {invite}"
    )
}

pub fn group_kicked_reply(name: &str, member: &str) -> String {
    format!("已将 {member} 移出群组「{name}」。\nRemoved {member} from group \"{name}\".")
}

pub fn group_deleted_reply(name: &str) -> String {
    format!(
        "群组「{name}」已删除，它的令牌立即失效。\nGroup \"{name}\" deleted; its token no longer works."
    )
}

pub fn group_muted_reply(name: &str, muted: bool) -> String {
    if muted {
        format!(
            "已静音群组「{name}」：它的消息不再发给你（消息状态里显示 muted）。\n\
             Group \"{name}\" muted: its messages skip you (shown as muted). unmute {name} to undo."
        )
    } else {
        format!(
            "已取消静音群组「{name}」。\nGroup \"{name}\" unmuted: its messages reach you again."
        )
    }
}

pub fn group_usage_reply() -> String {
    "群组命令 Group commands:\n\
     group new ops（建群 ops）— 建群 make a group\n\
     join 邀请码（加入 邀请码）— 加入 join with an invite code\n\
     leave ops（退出 ops）— 退出 leave\n\
     groups（群组）— 你的群组 your groups\n\
     mute ops（静音 ops）· unmute ops（取消静音 ops）— 静音 skip its messages\n\
     群主 owners: group rotate ops · group invite ops · group kick ops USERID · group delete ops"
        .to_owned()
}

/// Why a group command was refused, in both languages.
pub fn group_refused_reply(refusal: &crate::groups::Refusal) -> String {
    use crate::groups::Refusal;
    let chinese = match refusal {
        Refusal::BadName(_) => "群组名无效：1 到 32 个字符，一个词，不含空格。".to_owned(),
        Refusal::BadInvite => "邀请码是 8 位字母和数字，例如 K7QM-3XPA，请向群主索取。".to_owned(),
        Refusal::WrongInvite => "没有群组使用这个邀请码，请向群主核对。".to_owned(),
        Refusal::InviteExpired => {
            "邀请码已过期，请群主发送 group invite 群名 生成新的。".to_owned()
        }
        Refusal::TooManyTries(_) => "输错邀请码次数过多，请稍后再试。".to_owned(),
        Refusal::NameTaken(name) => format!("你已在名为「{name}」的群组中，请换个名字。"),
        Refusal::Reserved(name) => {
            format!("「{name}」是企业微信部门/标签群组的名称，请换个名字。")
        }
        Refusal::TooManyGroups(max) => format!("你已加入 {max} 个群组，达到上限，请先退出一个。"),
        Refusal::Full(name, max) => format!("群组「{name}」已有 {max} 人，达到上限。"),
        Refusal::AlreadyMember(name) => format!("你已在群组「{name}」中。"),
        Refusal::NoSuchGroup(name) => {
            format!("你不在名为「{name}」的群组中。发送 groups 查看你的群组。")
        }
        Refusal::NotOwner(name) => format!("只有群组「{name}」的群主可以这样做。"),
        Refusal::FromWecom(name) => {
            format!("群组「{name}」的成员来自企业微信通讯录，不能这样修改；可以静音。")
        }
        Refusal::KickSelf(name) => format!("不能移除自己：请发送 leave {name}（退出 {name}）。"),
        Refusal::NotMember(name, member) => format!("{member} 不在群组「{name}」中。"),
    };
    let english = match refusal {
        Refusal::NoSuchGroup(name) => {
            format!("You are in no group named \"{name}\": send groups to list yours.")
        }
        Refusal::InviteExpired => "This invite code has expired: its owner sends group invite \
             NAME for a new one."
            .to_owned(),
        Refusal::KickSelf(name) => {
            format!("You cannot remove yourself: send leave {name} instead.")
        }
        other => {
            let mut text = other.message();
            if let Some(first) = text.get(..1) {
                text = format!("{}{}", first.to_uppercase(), &text[1..]);
            }
            format!("{text}.")
        }
    };
    format!("{chinese}\n{english}")
}

pub fn welcome_reply() -> String {
    format!(
        "欢迎使用 pushbot！发送 token（令牌）获取你的推送令牌，脚本用它把消息推送到这里。\n\
         Welcome to pushbot! Send token to get your personal push token.\n\n{}",
        help_reply()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(msg_type: &str) -> Inbound {
        Inbound {
            to_user_name: "corp".into(),
            from_user_name: "alice".into(),
            create_time: 1,
            msg_type: msg_type.into(),
            content: None,
            msg_id: None,
            agent_id: None,
            event: None,
            event_key: None,
        }
    }

    fn text(s: &str) -> Inbound {
        Inbound {
            content: Some(s.into()),
            ..inbound("text")
        }
    }

    fn event(e: &str, key: Option<&str>) -> Inbound {
        Inbound {
            event: Some(e.into()),
            event_key: key.map(Into::into),
            ..inbound("event")
        }
    }

    #[test]
    fn keywords_in_both_languages() {
        assert_eq!(interpret(&text("token")), Some(Command::Token));
        assert_eq!(interpret(&text(" Token \n")), Some(Command::Token));
        assert_eq!(interpret(&text("令牌")), Some(Command::Token));
        assert_eq!(interpret(&text("/rotate")), Some(Command::Rotate));
        assert_eq!(interpret(&text("重置")), Some(Command::Rotate));
        assert_eq!(interpret(&text("帮助")), Some(Command::Help));
        assert_eq!(interpret(&text("what is this")), Some(Command::Help));
        assert_eq!(interpret(&text("login")), Some(Command::Login));
        assert_eq!(interpret(&text("登录")), Some(Command::Login));
        assert_eq!(interpret(&text("控制台")), Some(Command::Login));
        assert_eq!(interpret(&text("Console")), Some(Command::Login));
        assert_eq!(interpret(&text("logout")), Some(Command::Logout));
        assert_eq!(interpret(&text("退出登录")), Some(Command::Logout));
        assert_eq!(interpret(&text("登出")), Some(Command::Logout));
        assert_eq!(interpret(&inbound("image")), Some(Command::Help));
    }

    #[test]
    fn commands_with_arguments() {
        assert_eq!(
            parse_text("email Alice@Example.com"),
            Command::Bind {
                channel: ChannelName::Email,
                typed: "Alice@Example.com".into()
            }
        );
        assert_eq!(
            parse_text("邮箱  a@b.cn "),
            Command::Bind {
                channel: ChannelName::Email,
                typed: "a@b.cn".into()
            }
        );
        assert_eq!(parse_text("email off"), Command::Unbind(ChannelName::Email));
        assert_eq!(parse_text("邮箱 关闭"), Command::Unbind(ChannelName::Email));
        assert_eq!(parse_text("email"), Command::Status);
        assert_eq!(
            parse_text("verify 123456"),
            Command::Verify("123456".into())
        );
        assert_eq!(parse_text("验证 654321"), Command::Verify("654321".into()));
        assert_eq!(parse_text(" 012345 "), Command::Verify("012345".into()));
        assert_eq!(parse_text("status"), Command::Status);
        assert_eq!(parse_text("状态"), Command::Status);
        assert_eq!(
            parse_text("fallback email,wecom"),
            Command::Fallback("email,wecom".into())
        );
        assert_eq!(parse_text("回退 wecom"), Command::Fallback("wecom".into()));
        assert_eq!(parse_text("format card"), Command::Format("card".into()));
        assert_eq!(
            parse_text("格式 markdown"),
            Command::Format("markdown".into())
        );
        assert_eq!(parse_text("fallback"), Command::Fallback(String::new()));
        assert_eq!(parse_text("1234567"), Command::Help);
    }

    /// Issue 26 item 6: each as a Chinese phone types it, and the command it means.
    #[test]
    fn commands_as_a_phone_types_them() {
        let cases: &[(&str, Command)] = &[
            ("token。", Command::Token),
            ("令牌！", Command::Token),
            ("ＴＯＫＥＮ", Command::Token),
            ("ｔｏｋｅｎ　", Command::Token),
            ("状态？", Command::Status),
            ("status?", Command::Status),
            ("status！！", Command::Status),
            ("status 。", Command::Status),
            ("\u{200b}token", Command::Token),
            ("\u{feff}to\u{200d}ken\u{2060}", Command::Token),
            ("\u{180e}rotate。", Command::Rotate),
            (
                "邮箱：a@x.com",
                Command::Bind {
                    channel: ChannelName::Email,
                    typed: "a@x.com".into(),
                },
            ),
            (
                "email: a@x.com.",
                Command::Bind {
                    channel: ChannelName::Email,
                    typed: "a@x.com".into(),
                },
            ),
            (
                "email : ａ＠ｘ．ｃｏｍ",
                Command::Bind {
                    channel: ChannelName::Email,
                    typed: "a@x.com".into(),
                },
            ),
            ("邮箱：关闭。", Command::Unbind(ChannelName::Email)),
            ("格式：文本", Command::Format("文本".into())),
            ("format:card!", Command::Format("card".into())),
            (
                "fallback wecom、email",
                Command::Fallback("wecom,email".into()),
            ),
            (
                "回退：wecom，email。",
                Command::Fallback("wecom,email".into()),
            ),
            ("１２３４５６", Command::Verify("123456".into())),
            ("１２３４５６。", Command::Verify("123456".into())),
            ("验证：１２３４５６", Command::Verify("123456".into())),
            ("verify 042137!", Command::Verify("042137".into())),
            ("？", Command::Help),
            ("帮助。", Command::Help),
        ];
        for (typed, want) in cases {
            assert_eq!(&parse_text(typed), want, "{typed:?}");
        }
    }

    #[test]
    fn quiet_hours_and_time_zone_commands() {
        let cases: &[(&str, Command)] = &[
            ("quiet 23:00-07:00", Command::Quiet("23:00-07:00".into())),
            ("Quiet 23-7 strict", Command::Quiet("23-7 strict".into())),
            ("/quiet off", Command::Quiet("off".into())),
            ("quiet", Command::Quiet(String::new())),
            ("dnd 22-6", Command::Quiet("22-6".into())),
            ("免打扰 23:00-07:00", Command::Quiet("23:00-07:00".into())),
            ("免打扰23:00-07:00", Command::Quiet("23:00-07:00".into())),
            (
                "免打扰：23：00～07：00。",
                Command::Quiet("23:00~07:00".into()),
            ),
            ("免打扰 关", Command::Quiet("关".into())),
            ("免打扰关", Command::Quiet("关".into())),
            ("免打扰", Command::Quiet(String::new())),
            (
                "勿扰 23点至7点 严格",
                Command::Quiet("23点至7点 严格".into()),
            ),
            ("timezone +08:00", Command::Timezone("+08:00".into())),
            ("tz UTC-5", Command::Timezone("UTC-5".into())),
            ("时区 +08:00", Command::Timezone("+08:00".into())),
            ("时区+8", Command::Timezone("+8".into())),
            ("时区：UTC＋８", Command::Timezone("UTC+8".into())),
            ("timezone", Command::Timezone(String::new())),
            ("时区", Command::Timezone(String::new())),
        ];
        for (typed, want) in cases {
            assert_eq!(&parse_text(typed), want, "{typed:?}");
        }
    }

    fn night(strict: bool) -> QuietHours {
        QuietHours {
            window: "23:00-07:00".parse().unwrap(),
            strict,
        }
    }

    #[test]
    fn quiet_hours_replies_say_what_happens_in_both_languages() {
        let set = quiet_set_reply(&night(false), true, "+08:00", None, 0);
        assert!(
            set.contains("免打扰已设为 Quiet hours set: 23:00-07:00（UTC+08:00）"),
            "{set}"
        );
        assert!(
            set.contains("紧急消息照常") && set.contains("urgent ones still come at once"),
            "{set}"
        );
        assert!(!set.contains("默认"), "{set}");
        let strict = quiet_set_reply(&night(true), true, "+08:00", Some("07:00"), 3);
        assert!(strict.contains("23:00-07:00 strict"), "{strict}");
        assert!(strict.contains("urgent ones too"), "{strict}");
        assert!(
            strict.contains("wait until 07:00") && strict.contains("在 07:00 送达"),
            "{strict}"
        );
        assert!(
            !strict.contains("on their way"),
            "held messages still wait: {strict}"
        );
        let moved = quiet_set_reply(&night(false), false, "-05:00", None, 2);
        assert!(
            moved.contains("（默认 default）") && moved.contains("UTC-05:00"),
            "{moved}"
        );
        assert!(
            moved.contains("2 waiting message(s) are on their way now"),
            "{moved}"
        );
        let off = quiet_off_reply(true, 4);
        assert!(
            off.contains("免打扰已关闭") && off.contains("Quiet hours off"),
            "{off}"
        );
        assert!(
            off.contains("4 条") && off.contains("4 waiting message(s)"),
            "{off}"
        );
        assert!(!quiet_off_reply(true, 0).contains("waiting"));
        let shown = quiet_usage_reply(None, Some(&night(false)), false, "+08:00");
        assert!(
            shown.starts_with("免打扰 Quiet hours: 23:00-07:00（UTC+08:00）（默认 default）"),
            "{shown}"
        );
        assert!(
            shown.contains("quiet off") && shown.contains("免打扰 关"),
            "{shown}"
        );
        let none = quiet_usage_reply(
            Some("「x」不是时间段 is not a window"),
            None,
            true,
            "+08:00",
        );
        assert!(
            none.starts_with("「x」不是时间段 is not a window\n免打扰 Quiet hours: off"),
            "{none}"
        );
        let tz = timezone_set_reply("+05:30", true, Some(&night(false)));
        assert!(
            tz.contains("时区已设为 Time zone set: UTC+05:30")
                && tz.contains("23:00-07:00（UTC+05:30）"),
            "{tz}"
        );
        assert!(!timezone_set_reply("+05:30", false, None).contains("Quiet"));
        let usage = timezone_usage_reply(Some("bad"), "+08:00", false);
        assert!(
            usage.starts_with("bad\n时区 Time zone: UTC+08:00（默认 default）"),
            "{usage}"
        );
        assert!(usage.contains("timezone +08:00"), "{usage}");
        for reply in [set, strict, moved, off, shown, none, tz, usage] {
            assert!(reply.len() < 2048, "{reply}");
        }
    }

    #[test]
    fn help_lists_quiet_hours_and_the_time_zone() {
        let help = help_reply();
        assert!(help.contains("quiet 23:00-07:00（免打扰）"), "{help}");
        assert!(help.contains("quiet off（免打扰 关）"), "{help}");
        assert!(help.contains("timezone +08:00（时区）"), "{help}");
        assert!(welcome_reply().len() < 2048);
    }

    /// A malformed `verify` is a typo to explain, not a wrong code.
    #[test]
    fn robot_commands() {
        let add =
            |name: &str, telegram: bool, address: &str, secret: Option<&str>| Command::AddRobot {
                name: name.into(),
                telegram,
                address: address.into(),
                secret: secret.map(Into::into),
            };
        let url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=AbC-123";
        assert_eq!(
            parse_text(&format!("robot ops {url}")),
            add("ops", false, url, None),
            "the key keeps its case"
        );
        assert_eq!(
            parse_text("机器人 ops https://oapi.dingtalk.com/robot/send?access_token=t SECx"),
            add(
                "ops",
                false,
                "https://oapi.dingtalk.com/robot/send?access_token=t",
                Some("SECx")
            )
        );
        assert_eq!(
            parse_text("robot tg telegram -1001234"),
            add("tg", true, "-1001234", None)
        );
        assert_eq!(
            parse_text("telegram tg -1001234"),
            add("tg", true, "-1001234", None)
        );
        assert_eq!(
            parse_text("robot ops off"),
            Command::RemoveRobot("ops".into())
        );
        assert_eq!(
            parse_text("机器人 ops 删除"),
            Command::RemoveRobot("ops".into())
        );
        assert_eq!(parse_text("robots"), Command::Robots);
        assert_eq!(parse_text("robot"), Command::Robots);
        assert_eq!(parse_text("robot ops"), Command::RobotUsage);
        assert_eq!(parse_text("robot a b c d"), Command::RobotUsage);
    }

    #[test]
    fn verify_without_six_digits_is_usage() {
        for typed in [
            "verify",
            "verify 12345",
            "verify abcdef",
            "verify 442 251",
            "verify 1234567",
            "verify ١٢٣٤٥٦",
            "验证",
            "验证码：12345。",
        ] {
            assert_eq!(parse_text(typed), Command::VerifyUsage, "{typed:?}");
        }
        assert!(verify_usage_reply().contains("Usage: verify 123456"));
    }

    /// Arguments survive folding as typed where it matters: an address keeps its case
    /// and its inner dots; only a sentence's final stop goes.
    #[test]
    fn folding_keeps_arguments() {
        assert_eq!(
            parse_text("email Alice.Smith@Mail.Example.com"),
            Command::Bind {
                channel: ChannelName::Email,
                typed: "Alice.Smith@Mail.Example.com".into()
            }
        );
        assert_eq!(
            parse_text("email a+tag@x.com"),
            Command::Bind {
                channel: ChannelName::Email,
                typed: "a+tag@x.com".into()
            }
        );
        assert_eq!(fold("  token 。! ？ "), "token");
        assert_eq!(fold("。"), "");
        assert_eq!(parse_text("token foo"), Command::Help);
    }

    /// The group commands in both languages, full-width or glued to a Chinese keyword; the
    /// logout command is not taken for leaving a group.
    #[test]
    fn group_commands_read_as_typed() {
        let new = |n: &str| Command::GroupNew(n.into());
        let mute = |n: &str, muted| Command::GroupMute {
            group: n.into(),
            muted,
        };
        for (typed, command) in [
            ("group new ops", new("ops")),
            ("Group New ops", new("ops")),
            ("ｇｒｏｕｐ　ｎｅｗ　ｏｐｓ", new("ops")),
            ("建群 运维", new("运维")),
            ("建群运维", new("运维")),
            ("建群：运维。", new("运维")),
            ("群组 新建 运维", new("运维")),
            ("group new two words", new("two words")),
            ("join K7QM-3XPA", Command::GroupJoin("K7QM-3XPA".into())),
            ("加入 k7qm 3xpa", Command::GroupJoin("k7qm 3xpa".into())),
            ("加入K7QM-3XPA", Command::GroupJoin("K7QM-3XPA".into())),
            (
                "group join K7QM-3XPA",
                Command::GroupJoin("K7QM-3XPA".into()),
            ),
            ("leave ops", Command::GroupLeave("ops".into())),
            ("退出 运维", Command::GroupLeave("运维".into())),
            ("退出登录", Command::Logout),
            ("groups", Command::Groups),
            ("群组", Command::Groups),
            ("group", Command::Groups),
            ("group list", Command::Groups),
            ("group rotate ops", Command::GroupRotate("ops".into())),
            ("group invite ops", Command::GroupInvite("ops".into())),
            ("群组 邀请 ops", Command::GroupInvite("ops".into())),
            (
                "group kick ops Bob",
                Command::GroupKick {
                    group: "ops".into(),
                    member: "Bob".into(),
                },
            ),
            ("group delete ops", Command::GroupDelete("ops".into())),
            ("群组 解散 ops", Command::GroupDelete("ops".into())),
            ("mute ops", mute("ops", true)),
            ("静音 ops", mute("ops", true)),
            ("静音ops", mute("ops", true)),
            ("unmute ops", mute("ops", false)),
            ("取消静音 ops", mute("ops", false)),
            ("取消静音ops", mute("ops", false)),
            ("group mute ops", mute("ops", true)),
            ("group new", Command::GroupUsage),
            ("join", Command::GroupUsage),
            ("leave", Command::GroupUsage),
            ("mute", Command::GroupUsage),
            ("group kick ops", Command::GroupUsage),
            ("group frobnicate ops", Command::GroupUsage),
        ] {
            assert_eq!(parse_text(typed), command, "{typed:?}");
        }
    }

    /// The refusals say what to do in both languages, and the owner's reply carries the
    /// token alone on a line.
    #[test]
    fn group_replies_are_bilingual() {
        use crate::groups::Refusal;
        let reply = group_created_reply("ops", "TOKEN123", "K7QM-3XPA", "7d", "https://p.x");
        assert!(reply.lines().any(|l| l == "TOKEN123"), "{reply}");
        assert!(
            reply.contains("join K7QM-3XPA") && reply.contains("/send"),
            "{reply}"
        );
        for refusal in [
            Refusal::WrongInvite,
            Refusal::InviteExpired,
            Refusal::NotOwner("ops".into()),
            Refusal::NoSuchGroup("ops".into()),
            Refusal::TooManyGroups(50),
        ] {
            let reply = group_refused_reply(&refusal);
            assert!(
                reply
                    .chars()
                    .any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
            );
            assert!(
                reply.lines().nth(1).is_some_and(|l| l.is_ascii()),
                "{reply}"
            );
        }
    }

    #[test]
    fn status_never_shows_more_than_it_should() {
        let reply = status_reply(&StatusView {
            token_hint: Some("ab…yz".into()),
            addresses: vec![("email".into(), Some("a***e@example.com".into()))],
            order: "wecom → email".into(),
            own_order: false,
            unusable: vec![],
            today: vec![("email".into(), 1, 0), ("wecom".into(), 3, 1)],
            look: "card".into(),
            own_look: true,
            quiet: Some("23:00-07:00 strict".into()),
            own_quiet: true,
            offset: "+08:00".into(),
            own_offset: false,
        });
        assert!(reply.contains("token: ab…yz"), "{reply}");
        assert!(
            reply.contains("quiet: 23:00-07:00 strict（你的设置 yours）"),
            "{reply}"
        );
        assert!(
            reply.contains("timezone: UTC+08:00（默认 default）"),
            "{reply}"
        );
        assert!(reply.contains("format: card（你的设置 yours）"), "{reply}");
        assert!(reply.contains("email: a***e@example.com"), "{reply}");
        assert!(reply.contains("order: wecom → email"), "{reply}");
        assert!(
            reply.contains("today: email ✓1 ✗0 · wecom ✓3 ✗1"),
            "{reply}"
        );
        assert!(reply.len() < 2048);
        let empty = status_reply(&StatusView {
            addresses: vec![("email".into(), None), ("phone".into(), None)],
            ..StatusView::default()
        });
        assert!(empty.contains("email: none"), "{empty}");
        assert!(
            empty.contains("quiet: off（无 none）（默认 default）"),
            "{empty}"
        );
        assert!(empty.contains("\nphone: none"), "{empty}");
    }

    #[test]
    fn the_verification_mail_carries_the_code_once_in_its_body() {
        let (subject, body) = verification_mail("042137", 10);
        assert!(subject.contains("verification code"));
        assert!(!subject.contains("042137"));
        assert!(body.contains("\n042137\n"));
    }

    #[test]
    fn events() {
        assert_eq!(interpret(&event("subscribe", None)), Some(Command::Welcome));
        assert_eq!(
            interpret(&event("click", Some("rotate"))),
            Some(Command::Rotate)
        );
        assert_eq!(
            interpret(&event("click", Some("token"))),
            Some(Command::Token)
        );
        assert_eq!(
            interpret(&event("click", Some("help"))),
            Some(Command::Help)
        );
        assert_eq!(interpret(&event("click", Some("other"))), None);
        assert_eq!(interpret(&event("enter_agent", None)), None);
        assert_eq!(interpret(&event("unsubscribe", None)), None);
    }

    #[test]
    fn token_reply_has_token_on_line_two_and_a_curl_example() {
        let reply = token_reply("TOK", "https://push.example.com");
        assert_eq!(reply.lines().nth(1), Some("TOK"));
        assert!(reply.contains("curl \"https://push.example.com/send?token=TOK&title="));
        // The header form leads; the URL form (token in proxy logs) comes last.
        let header = reply.find("Authorization: Bearer TOK").unwrap();
        let url = reply.find("send?token=TOK").unwrap();
        assert!(header < url, "{reply}");
        let first_curl = reply.lines().find(|l| l.starts_with("curl")).unwrap();
        assert!(first_curl.contains("Authorization: Bearer"), "{reply}");
        let rotated = rotated_reply("NEW", "https://push.example.com");
        assert_eq!(rotated.lines().nth(1), Some("NEW"));
    }

    /// However many groups a member is in, the list fits a passive reply.
    #[test]
    fn the_groups_list_fits_a_passive_reply() {
        let line = |i: usize| GroupLine {
            name: format!("{}{i}", "群".repeat(28)),
            owner: true,
            muted: true,
            members: 1000,
            wecom: false,
            token: Some("x".repeat(32)),
            invite: Some(("K7QM-3XPA".into(), "2026-12-14".into())),
        };
        let few: Vec<GroupLine> = (0..2).map(line).collect();
        let reply = groups_reply(&few);
        assert!(
            reply.contains(&"x".repeat(32)) && !reply.contains("more"),
            "{reply}"
        );
        let many: Vec<GroupLine> = (0..50).map(line).collect();
        let reply = groups_reply(&many);
        assert!(reply.len() < REPLY_BYTES, "{}", reply.len());
        assert!(reply.contains("more: GET /groups"), "{reply}");
    }

    #[test]
    fn replies_fit_a_passive_reply() {
        // Passive text replies are limited to 2048 bytes.
        let token = "x".repeat(32);
        let base = format!("https://{}.example.com", "h".repeat(60));
        assert!(token_reply(&token, &base).len() < 2048);
        assert!(welcome_reply().len() < 2048);
        assert!(help_reply().len() < 2048);
        assert!(help_reply().contains("login（登录）"));
        assert!(login_reply(&format!("{base}/console/login?t={token}"), 10).len() < 2048);
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;
        use super::{event, text};

        /// Chat-shaped text: keywords, arguments, the punctuation, spaces and invisible
        /// characters phones produce, and their full-width forms.
        fn chatty() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "token",
                "令牌",
                "rotate",
                "status",
                "状态",
                "email",
                "邮箱",
                "verify",
                "验证",
                "format",
                "格式",
                "fallback",
                "回退",
                "quiet",
                "免打扰",
                "timezone",
                "时区",
                "23:00-07:00",
                "+08:00",
                "help",
                "off",
                "关闭",
                "text",
                "文本",
                "wecom",
                "email",
                "a@x.com",
                "１２３４５６",
                "123456",
                "12345",
                "abcdef",
                " ",
                "　",
                ":",
                "：",
                "、",
                "，",
                ",",
                "。",
                "！",
                "？",
                ".",
                "!",
                "?",
                "/",
                "\u{200b}",
                "\u{feff}",
                "\u{180e}",
                "\u{2060}",
                "\u{301}",
                "ｅ",
                "Ｔ",
                "\n",
                "😀",
                "\u{85}",
                "\u{2028}",
                "\u{3000}",
            ]);
            prop_oneof![
                prop::collection::vec(piece, 0..8).prop_map(|v| v.concat()),
                any::<String>(),
            ]
        }

        /// Printable ASCII to its full-width form (`!`…`~` → U+FF01…U+FF5E).
        fn full_width(s: &str) -> String {
            s.chars()
                .map(|c| match c {
                    '!'..='~' => char::from_u32(u32::from(c) + 0xFEE0).unwrap_or(c),
                    c => c,
                })
                .collect()
        }

        proptest! {
            /// Any text or click: a command (help when nothing else) or no answer, never a
            /// panic; a `Verify` always carries six ASCII digits, an address is never empty.
            #[test]
            fn any_text_is_a_command(typed in chatty(), key in chatty()) {
                match parse_text(&typed) {
                    Command::Verify(code) => prop_assert!(is_code(&code), "{code:?}"),
                    Command::Bind { typed, .. } => prop_assert!(!typed.is_empty()),
                    _ => {}
                }
                prop_assert!(interpret(&text(&typed)).is_some());
                let _ = interpret(&event("click", Some(&key)));
                let _ = interpret(&event(&key, Some(&typed)));
            }

            /// Folding is done once and for all: folded text folds to itself, holds no
            /// invisible characters and does not end a sentence.
            #[test]
            fn folding_is_stable(typed in chatty()) {
                let once = fold(&typed);
                prop_assert_eq!(fold(&once), once.clone());
                prop_assert!(!once.chars().any(is_invisible));
                prop_assert!(!once.ends_with(SENTENCE_END));
                prop_assert_eq!(once.trim(), once.as_str());
            }

            /// A group command means the same full-width, after a zero-width space or with a
            /// final stop; its argument is never empty, and a name or code in it is kept.
            #[test]
            fn group_commands_mean_the_same_however_typed(
                verb in prop::sample::select(vec![
                    "group new", "join", "leave", "group rotate", "group invite",
                    "group delete", "mute", "unmute", "建群", "加入", "退出", "静音", "取消静音",
                ]),
                arg in "[a-z0-9][a-z0-9_-]{0,10}",
                end in prop::sample::select(vec!["", "。", "！", "?"]),
            ) {
                let typed = format!("{verb} {arg}");
                let plain = parse_text(&typed);
                prop_assert_eq!(parse_text(&full_width(&typed)), plain.clone());
                prop_assert_eq!(parse_text(&format!("\u{200b}{typed}{end}")), plain.clone());
                match plain {
                    Command::GroupNew(a)
                    | Command::GroupJoin(a)
                    | Command::GroupLeave(a)
                    | Command::GroupRotate(a)
                    | Command::GroupInvite(a)
                    | Command::GroupDelete(a)
                    | Command::GroupMute { group: a, .. } => prop_assert_eq!(a, arg),
                    other => prop_assert!(false, "{typed:?} read as {other:?}"),
                }
            }

            /// Full-width forms, a leading zero-width space and a final `。` or `！` change
            /// nothing about the command.
            #[test]
            fn typing_variants_mean_the_same(
                typed in "(token|rotate|status|help|email|verify|format|fallback|quiet|timezone)( [!-~]{0,12})?",
                end in prop::sample::select(vec!["", "。", "！", "？", "!", "?", "."]),
            ) {
                let plain = parse_text(&typed);
                prop_assert_eq!(parse_text(&full_width(&typed)), plain.clone());
                prop_assert_eq!(parse_text(&format!("\u{200b}{typed}")), plain.clone());
                prop_assert_eq!(parse_text(&format!("{typed}{end}")), plain);
            }
        }
    }
}
