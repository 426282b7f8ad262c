//! What a decrypted callback must be before anything answers or acts on it. Pure: no I/O.
//!
//! A correct signature and a successful decryption prove only that the ciphertext was made
//! with our Token and key for our corp. That is just as true of everything the gateway
//! encrypts itself (its passive replies, which carry member tokens) and of every message
//! WeCom has ever sent us. So the plaintext must also be what belongs where it arrived:
//! an echo at the URL check ([`is_url_echo`]), and at the message callback a message for
//! this corp's app from someone other than the corp ([`check_address`]).

use super::xml::Inbound;

/// Longest URL-check echo answered. WeCom's are a random number of about 19 digits
/// (Tencent's samples: `1616140317555161061`); `pushbot doctor` sends 31 characters.
pub const MAX_ECHO_BYTES: usize = 128;

/// Whether `plain`, a decrypted URL-check `echostr`, looks like what WeCom sends there: 1 to
/// [`MAX_ECHO_BYTES`] ASCII letters, digits, `-` or `_`.
///
/// Everything else the key ever encrypts — each inbound message, each passive reply — is
/// XML, so it starts with `<` and is never answered: the URL check cannot be used to
/// decrypt a captured message or reply (a member's token in the reply to `token`).
pub fn is_url_echo(plain: &str) -> bool {
    !plain.is_empty()
        && plain.len() <= MAX_ECHO_BYTES
        && plain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Why a decrypted, well-formed message is not one for us. The texts name the setting to
/// compare, never the values found (they are not secret, but they are not ours either).
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum Misaddressed {
    #[error("the message is addressed to another corp: its ToUserName is not wecom.corp_id")]
    OtherCorp,
    #[error("the message is for another app: its AgentID is not wecom.agent_id")]
    OtherAgent,
    #[error("the message is from the corp itself: a passive reply, not a member's message")]
    FromCorp,
}

/// Accepts a decrypted message only if it is addressed to this app of this corp:
/// `ToUserName` is `corp_id`, `AgentID` — when present and not empty, since some events
/// carry none — is `agent_id`, and `FromUserName` is not the corp itself.
///
/// The ReceiveId inside the ciphertext is our corp id for every message *and* every reply,
/// so it cannot tell them apart; the inner address can. A passive reply is addressed to a
/// member and comes from the corp (no AgentID): posted back to us, it is refused here
/// instead of being taken for a message "from" a member named after the corp id.
pub fn check_address(inbound: &Inbound, corp_id: &str, agent_id: i64) -> Result<(), Misaddressed> {
    if inbound.to_user_name.trim() != corp_id {
        return Err(Misaddressed::OtherCorp);
    }
    if let Some(agent) = inbound.agent_id.as_deref().map(str::trim)
        && !agent.is_empty()
        && agent.parse::<i64>().ok() != Some(agent_id)
    {
        return Err(Misaddressed::OtherAgent);
    }
    if inbound.from_user_name.trim() == corp_id {
        return Err(Misaddressed::FromCorp);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wecom::xml::{parse_inbound, text_reply_xml};

    const CORP: &str = "ww1436e0e65a779aee";
    const AGENT: i64 = 1000002;

    fn message(to: &str, from: &str, agent: Option<&str>) -> Inbound {
        let agent = agent
            .map(|a| format!("<AgentID>{a}</AgentID>"))
            .unwrap_or_default();
        parse_inbound(&format!(
            "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName>\
             <CreateTime>1476422779</CreateTime><MsgType>text</MsgType><Content>token</Content>\
             <MsgId>1456453720</MsgId>{agent}</xml>"
        ))
        .unwrap()
    }

    #[test]
    fn echoes_wecom_sends_are_answered() {
        for echo in [
            "1616140317555161061",
            "0",
            "AbC123xyz",
            "pushbot-doctor-0123456789abcdef",
            "under_score",
            &"9".repeat(MAX_ECHO_BYTES),
        ] {
            assert!(is_url_echo(echo), "{echo:?}");
        }
    }

    #[test]
    fn anything_else_is_not_an_echo() {
        let reply = text_reply_xml(
            "zhangsan",
            CORP,
            1,
            "Your token:\nAbCdEfGhIjKlMnOpQrStUvWxYz012345",
        );
        for plain in [
            "",
            &reply,
            "<xml><ToUserName>ww</ToUserName></xml>",
            "<",
            "1616140317555161061\n",
            " 1616140317555161061",
            "echo with spaces",
            "a+b",
            "a/b=",
            "中文",
            "１２３",
            "12\u{0}34",
            &"9".repeat(MAX_ECHO_BYTES + 1),
        ] {
            assert!(!is_url_echo(plain), "{plain:?}");
        }
    }

    #[test]
    fn a_message_for_this_app_passes() {
        assert_eq!(
            check_address(&message(CORP, "zhangsan", Some("1000002")), CORP, AGENT),
            Ok(())
        );
        // Whitespace around the values, as a hand-written XML might have.
        assert_eq!(
            check_address(
                &message(&format!(" {CORP}\n"), "zhangsan", Some(" 1000002 ")),
                CORP,
                AGENT
            ),
            Ok(())
        );
    }

    #[test]
    fn events_without_an_agent_id_pass() {
        assert_eq!(
            check_address(&message(CORP, "zhangsan", None), CORP, AGENT),
            Ok(())
        );
        assert_eq!(
            check_address(&message(CORP, "sys", Some("")), CORP, AGENT),
            Ok(())
        );
    }

    #[test]
    fn another_corp_is_refused() {
        for to in [
            "wwOtherCorp0000000",
            "",
            "zhangsan",
            &CORP.to_uppercase(),
            &format!("{CORP}x"),
        ] {
            assert_eq!(
                check_address(&message(to, "zhangsan", Some("1000002")), CORP, AGENT),
                Err(Misaddressed::OtherCorp),
                "{to:?}"
            );
        }
    }

    #[test]
    fn another_agent_is_refused() {
        for agent in [
            "218", "1000003", "0", "-1000002", "1000002x", "abc", "10000020",
        ] {
            assert_eq!(
                check_address(&message(CORP, "zhangsan", Some(agent)), CORP, AGENT),
                Err(Misaddressed::OtherAgent),
                "{agent:?}"
            );
        }
    }

    #[test]
    fn our_own_passive_reply_is_refused() {
        // Addressed to the member, from the corp, no AgentID: exactly what encrypted_reply
        // sends.
        let reply = parse_inbound(&text_reply_xml("zhangsan", CORP, 1, "token")).unwrap();
        assert_eq!(
            check_address(&reply, CORP, AGENT),
            Err(Misaddressed::OtherCorp)
        );
        // Even for a member whose userid happens to be the corp id.
        let reply = parse_inbound(&text_reply_xml(CORP, CORP, 1, "token")).unwrap();
        assert_eq!(
            check_address(&reply, CORP, AGENT),
            Err(Misaddressed::FromCorp)
        );
    }
}
