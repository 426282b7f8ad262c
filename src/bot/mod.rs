//! Chat commands: what a member's message or menu click means, and the texts we answer.
//!
//! Pure: no storage, no network. The callback handler asks [`interpret`] what to do, does
//! it, and renders the answer with the functions below.

use crate::wecom::xml::Inbound;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Show the member's push token (created on first use).
    Token,
    /// Replace the member's token; the old one stops working.
    Rotate,
    Help,
    /// First contact (`subscribe` event).
    Welcome,
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

/// Typed text: a known keyword, anything else gets the help text.
pub fn parse_text(text: &str) -> Command {
    parse_keyword(text).unwrap_or(Command::Help)
}

fn parse_keyword(text: &str) -> Option<Command> {
    let word = text.trim().trim_start_matches('/').to_lowercase();
    match word.as_str() {
        "token" | "令牌" => Some(Command::Token),
        "rotate" | "重置" => Some(Command::Rotate),
        "help" | "帮助" | "?" | "？" => Some(Command::Help),
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
     help（帮助）— 显示本帮助 show this help"
        .to_owned()
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
        assert_eq!(interpret(&inbound("image")), Some(Command::Help));
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

    #[test]
    fn replies_fit_a_passive_reply() {
        // Passive text replies are limited to 2048 bytes.
        let token = "x".repeat(32);
        let base = format!("https://{}.example.com", "h".repeat(60));
        assert!(token_reply(&token, &base).len() < 2048);
        assert!(welcome_reply().len() < 2048);
    }
}
