//! DingTalk (钉钉) custom robot: `POST {base}/robot/send?access_token=TOKEN` with a JSON
//! message, answered `{"errcode":0,"errmsg":"ok"}` — errors too come in an HTTP 200.
//!
//! A robot has at least one security setting: custom keywords (the message must contain
//! one), an IP whitelist, or 加签 — signing, which pushbot does when given the robot's
//! `SEC…` secret ([`sign`]): `timestamp` (ms) and
//! `sign = base64(HMAC-SHA256(key = secret, msg = timestamp + "\n" + secret))` in the query,
//! URL-encoded exactly once ([`signed_url`]; encoding twice is the classic `sign not match`).
//!
//! Rendering ([`render`]): markdown content as `markdown` {title, text}, everything else as
//! `text`; the body stays within DingTalk's 20000 bytes, cut on grapheme boundaries with
//! the page linked.
//!
//! A robot takes 20 messages a minute; past that DingTalk blocks it for 10 minutes
//! (`130101`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::http::{Answer, call, status_error};
use super::text::{Measure, Shown, fit};
use super::{CLOCK_HINT, Delivered, DestError, Envelope, base64, hmac_sha256, refusal};
use crate::time::UnixMillis;

const LABEL: &str = "DingTalk robot";
/// DingTalk refuses bodies past this ("body 大小不合法;解决方案:请保持大小在 20000bytes 以内").
pub const MAX_BODY_BYTES: usize = 20_000;
/// The text shown at most, leaving room for the JSON around it.
pub const MAX_TEXT_BYTES: usize = 16_000;
/// A markdown message's `title` (the preview in the chat list).
const MAX_TITLE_BYTES: usize = 100;
/// How long DingTalk blocks a robot that sent more than 20 messages in a minute.
pub const THROTTLED_FOR: Duration = Duration::from_secs(600);

/// The message as DingTalk takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "msgtype", rename_all = "lowercase")]
pub enum DingMessage {
    Text { text: Text },
    Markdown { markdown: Markdown },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Text {
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Markdown {
    pub title: String,
    pub text: String,
}

/// `{base}/robot/send?access_token=…`
pub fn endpoint(base: &Url, access_token: &str) -> Url {
    let mut url = super::at(base, "/robot/send");
    url.query_pairs_mut()
        .append_pair("access_token", access_token);
    url
}

/// `base64(HMAC-SHA256(key = secret, msg = "{timestamp_ms}\n{secret}"))`, not URL-encoded.
pub fn sign(secret: &str, timestamp_ms: i64) -> String {
    let string_to_sign = format!("{timestamp_ms}\n{secret}");
    base64(&hmac_sha256(secret.as_bytes(), string_to_sign.as_bytes()))
}

/// `endpoint` with `timestamp` and `sign` added (each encoded once), or as it is without a
/// secret.
pub fn signed_url(endpoint: &Url, secret: Option<&str>, timestamp_ms: i64) -> Url {
    let mut url = endpoint.clone();
    if let Some(secret) = secret {
        url.query_pairs_mut()
            .append_pair("timestamp", &timestamp_ms.to_string())
            .append_pair("sign", &sign(secret, timestamp_ms));
    }
    url
}

/// The robot message for `envelope` (see the module documentation).
pub fn render(envelope: &Envelope<'_>) -> DingMessage {
    render_within(envelope, MAX_TEXT_BYTES)
}

fn render_within(envelope: &Envelope<'_>, max_text: usize) -> DingMessage {
    let shown = Shown::of(envelope);
    let body = shown.plain_body();
    if let (true, Some(content)) = (shown.markdown, shown.content) {
        let title = shown
            .title
            .map(str::to_owned)
            .unwrap_or_else(|| body.lines().next().unwrap_or_default().to_owned());
        let mut text = match shown.title {
            Some(title) => format!("### {title}\n\n{content}"),
            None => content.to_owned(),
        };
        if let Some(link) = shown.url_link() {
            text.push_str("\n\n");
            text.push_str(&link.markdown());
        }
        if text.len() <= max_text {
            return DingMessage::Markdown {
                markdown: Markdown {
                    title: Measure::Bytes.excerpt(&title, MAX_TITLE_BYTES),
                    text,
                },
            };
        }
    }
    let fitted = fit(&shown, body, max_text, Measure::Bytes, |link| {
        link.plain().len()
    });
    DingMessage::Text {
        text: Text {
            content: fitted.plain(),
        },
    }
}

/// The request body: the message, cut further if its JSON would pass [`MAX_BODY_BYTES`]
/// (escaped quotes and line breaks take more room than they show).
pub fn body(envelope: &Envelope<'_>) -> Vec<u8> {
    let mut max_text = MAX_TEXT_BYTES;
    loop {
        let json = serde_json::to_vec(&render_within(envelope, max_text)).unwrap_or_default();
        if json.len() <= MAX_BODY_BYTES || max_text <= super::MIN_TEXT_BYTES {
            return json;
        }
        max_text = super::smaller_budget(max_text, json.len(), MAX_BODY_BYTES);
    }
}

#[derive(Debug, Deserialize)]
struct Reply {
    errcode: Option<i64>,
    #[serde(default)]
    errmsg: String,
}

/// The send's outcome from DingTalk's answer: `errcode` decides, whatever the HTTP status.
/// `signed`: whether the request carried a signature.
pub(super) fn classify(answer: &Answer, signed: bool) -> Result<(), DestError> {
    match serde_json::from_slice::<Reply>(&answer.body) {
        Ok(Reply {
            errcode: Some(0), ..
        }) => Ok(()),
        Ok(Reply {
            errcode: Some(code),
            errmsg,
        }) => Err(explain(code, &errmsg, signed)),
        _ => Err(status_error(
            LABEL,
            answer,
            "check [destinations] dingtalk_base",
        )),
    }
}

fn explain(code: i64, message: &str, signed: bool) -> DestError {
    let code_text = code.to_string();
    let permanent =
        |hint: &str| DestError::permanent(refusal(LABEL, "refused", &code_text, message, hint));
    let lower = message.to_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    match code {
        310000 if has(&["sign not match", "签名不匹配"]) => permanent(if signed {
            "the signature does not match: give pushbot the robot's secret exactly as shown (robot settings → 安全设置 → 加签, it starts with SEC)"
        } else {
            "the robot requires 加签 (signing): add the destination again with its SEC… secret (robot settings → 安全设置 → 加签)"
        }),
        310000 if has(&["keywords not in content", "关键词"]) => permanent(
            "the robot's security setting 自定义关键词 requires one of its keywords in every message: put one in the title, or switch the robot to 加签 and give pushbot the SEC… secret",
        ),
        310000 if has(&["whitelist", "白名单"]) => permanent(
            "the robot's IP whitelist (安全设置 → IP地址（段）) does not include this server's address: add it, or use 加签 instead",
        ),
        310000 if has(&["invalid timestamp", "timestamp"]) => DestError::transient(
            refusal(LABEL, "refused for now", &code_text, message, CLOCK_HINT),
            true,
            None,
        ),
        310000 => permanent("the robot's security settings (安全设置) refused the message"),
        130101 | 410100 => DestError::transient(
            refusal(
                LABEL,
                "refused for now",
                &code_text,
                message,
                "the robot sent more than 20 messages a minute and is blocked for 10 minutes: will retry",
            ),
            true,
            Some(THROTTLED_FOR),
        ),
        300001 | 400101 | 400102 => permanent(
            "the robot's access_token is not valid (the robot was removed or disabled): copy the robot's webhook URL again (群设置 → 机器人) and add it again",
        ),
        -1 => DestError::transient(
            refusal(
                LABEL,
                "failed",
                &code_text,
                message,
                "DingTalk is busy: will retry",
            ),
            true,
            None,
        ),
        _ => permanent(""),
    }
}

pub(super) async fn send(
    http: &reqwest::Client,
    endpoint: &Url,
    secret: Option<&str>,
    envelope: &Envelope<'_>,
    timeout: Duration,
) -> Result<Delivered, DestError> {
    let url = signed_url(endpoint, secret, UnixMillis::now().as_millis());
    let request = http
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/json;charset=utf-8",
        )
        .body(body(envelope));
    let answer = call(request, timeout)
        .await
        .map_err(|e| e.into_error(LABEL))?;
    classify(&answer, secret.is_some()).map(|()| Delivered::Sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::destinations::tests::{PAGE, bases_at, client, envelope, mock, outbound};
    use crate::delivery::destinations::{Destination, Kind, Settings};
    use crate::domain::Format;

    fn answer(body: &str) -> Answer {
        Answer {
            status: 200,
            body: body.as_bytes().to_vec(),
            retry_after: None,
        }
    }

    /// channels.md V6 (self-computed from DingTalk's documented algorithm, recomputed with
    /// Python's hmac): no official vector is published.
    #[test]
    fn signature_vector_v6() {
        assert_eq!(
            sign("SEC0123456789abcdef", 1_700_000_000_000),
            "TSZbRFUuvaSQaRKUpF970OPCb2/LcQAP3wOvwZIzBZk="
        );
        let base = Url::parse("https://oapi.dingtalk.com").unwrap();
        let url = signed_url(
            &endpoint(&base, "abc123"),
            Some("SEC0123456789abcdef"),
            1_700_000_000_000,
        );
        // Encoded once: `/` is %2F and `=` is %3D, never %252F.
        assert_eq!(
            url.as_str(),
            "https://oapi.dingtalk.com/robot/send?access_token=abc123&timestamp=1700000000000&sign=TSZbRFUuvaSQaRKUpF970OPCb2%2FLcQAP3wOvwZIzBZk%3D"
        );
        assert_eq!(
            signed_url(&endpoint(&base, "abc123"), None, 1).as_str(),
            "https://oapi.dingtalk.com/robot/send?access_token=abc123"
        );
        // `+` in a signature must arrive as `+`, not as a space.
        let with_plus = (0..2000)
            .map(|t| sign("SECx", t))
            .find(|s| s.contains('+'))
            .unwrap();
        let t = (0..2000).find(|&t| sign("SECx", t) == with_plus).unwrap();
        let url = signed_url(&endpoint(&base, "abc123"), Some("SECx"), t);
        let sent: String = url
            .query_pairs()
            .find(|(k, _)| k == "sign")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        assert_eq!(sent, with_plus);
    }

    #[test]
    fn rendering() {
        let m = outbound(Some("T"), Some("C"));
        assert_eq!(
            serde_json::to_value(render(&envelope(&m))).unwrap(),
            serde_json::json!({"msgtype": "text", "text": {"content": "T\n\nC"}})
        );
        let mut m = outbound(None, Some("**磁盘** 91%\n\n- a\n- b"));
        m.format = Format::Markdown;
        assert_eq!(
            serde_json::to_value(render(&envelope(&m))).unwrap(),
            serde_json::json!({"msgtype": "markdown", "markdown": {
                "title": "磁盘 91%",
                "text": "**磁盘** 91%\n\n- a\n- b"
            }})
        );
    }

    #[test]
    fn long_messages_fit_the_body_limit() {
        // Quotes and line breaks double in JSON: the body still fits.
        let long = "\"q\"\n".repeat(6000);
        let m = outbound(Some("告警"), Some(&long));
        let json = body(&envelope(&m));
        assert!(json.len() <= MAX_BODY_BYTES, "{}", json.len());
        assert!(json.len() > MAX_BODY_BYTES * 3 / 4, "{}", json.len());
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let content = value["text"]["content"].as_str().unwrap();
        assert!(
            content.ends_with(&format!("\n\n阅读全文: {PAGE}")),
            "{content}"
        );
        let mut m = outbound(Some("告警"), Some(&"磁盘使用率超过阈值。".repeat(1000)));
        m.format = Format::Markdown;
        let json = body(&envelope(&m));
        assert!(json.len() <= MAX_BODY_BYTES, "{}", json.len());
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["msgtype"], "text");
    }

    #[test]
    fn classification_of_dingtalks_answers() {
        assert_eq!(
            classify(&answer(r#"{"errcode":0,"errmsg":"ok"}"#), true),
            Ok(())
        );
        let e = classify(
            &answer(r#"{"errcode":310000,"errmsg":"sign not match, more: [https://ding-doc.dingtalk.com/doc#/serverapi2/qf2nxq]"}"#),
            true,
        )
        .unwrap_err();
        assert!(!e.is_transient());
        assert!(e.reason().contains("SEC"), "{}", e.reason());
        let e = classify(
            &answer(r#"{"errcode":310000,"errmsg":"description:机器人发送签名不匹配;solution:请确认签名和生成签名的时间戳必须都放在调用的网址中"}"#),
            false,
        )
        .unwrap_err();
        assert!(e.reason().contains("requires 加签"), "{}", e.reason());
        let e = classify(
            &answer(r#"{"errcode":310000,"errmsg":"keywords not in content, more: [https://ding-doc.dingtalk.com/doc#/serverapi2/qf2nxq]"}"#),
            false,
        )
        .unwrap_err();
        assert!(e.reason().contains("自定义关键词"), "{}", e.reason());
        let e = classify(
            &answer(r#"{"errcode":310000,"errmsg":"ip 1.2.3.4 not in whitelist"}"#),
            false,
        )
        .unwrap_err();
        assert!(e.reason().contains("whitelist") && !e.is_transient());
        let e = classify(
            &answer(r#"{"errcode":310000,"errmsg":"invalid timestamp"}"#),
            true,
        )
        .unwrap_err();
        assert!(
            e.is_transient() && e.reason().contains("clock"),
            "{}",
            e.reason()
        );
        let e = classify(
            &answer(r#"{"errcode":130101,"errmsg":"send too fast, exceed 20 times per minute"}"#),
            true,
        )
        .unwrap_err();
        assert!(matches!(
            e,
            DestError::Transient {
                unreachable: true,
                ..
            }
        ));
        assert_eq!(e.retry_after(), Some(THROTTLED_FOR));
        let e = classify(
            &answer(r#"{"errcode":300001,"errmsg":"token is not exist"}"#),
            false,
        )
        .unwrap_err();
        assert!(!e.is_transient() && e.reason().contains("access_token"));
        assert!(
            classify(&answer(r#"{"errcode":-1,"errmsg":"系统繁忙"}"#), false)
                .unwrap_err()
                .is_transient()
        );
    }

    #[tokio::test]
    async fn a_round_trip_against_a_mock_that_checks_the_signature() {
        const SECRET: &str = "SECd0e1f2a3b4c5";
        // The mock verifies as DingTalk does: recompute from the decoded query.
        let mock = mock(|r| {
            let pairs: Vec<(String, String)> = url::form_urlencoded::parse(r.query.as_bytes())
                .into_owned()
                .collect();
            let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let (Some(t), Some(s)) = (get("timestamp"), get("sign")) else {
                return (
                    200,
                    r#"{"errcode":310000,"errmsg":"sign not match"}"#.into(),
                );
            };
            let t: i64 = t.parse().unwrap();
            if (UnixMillis::now().as_millis() - t).abs() > 3_600_000 {
                return (
                    200,
                    r#"{"errcode":310000,"errmsg":"invalid timestamp"}"#.into(),
                );
            }
            if s == sign(SECRET, t) {
                (200, r#"{"errcode":0,"errmsg":"ok"}"#.into())
            } else {
                (
                    200,
                    r#"{"errcode":310000,"errmsg":"sign not match"}"#.into(),
                )
            }
        })
        .await;
        let bases = bases_at(&mock);
        let url = format!("{}/robot/send?access_token=tok0123", mock.base);
        let m = outbound(Some("T"), Some("C"));
        let settings = Settings::default();
        let signed =
            Destination::from_config(Kind::DingTalk, Some(&url), None, Some(SECRET), &bases)
                .unwrap();
        assert_eq!(
            signed.send(&client(), &settings, &envelope(&m)).await,
            Ok(Delivered::Sent)
        );
        let wrong =
            Destination::from_config(Kind::DingTalk, Some(&url), None, Some("SECwrong0"), &bases)
                .unwrap();
        let e = wrong
            .send(&client(), &settings, &envelope(&m))
            .await
            .unwrap_err();
        assert!(!e.is_transient() && !e.reason().contains("SECwrong0"));
        let unsigned =
            Destination::from_config(Kind::DingTalk, Some(&url), None, None, &bases).unwrap();
        let e = unsigned
            .send(&client(), &settings, &envelope(&m))
            .await
            .unwrap_err();
        assert!(e.reason().contains("requires 加签"), "{}", e.reason());
        let first = &mock.requests()[0];
        assert_eq!(first.path, "/robot/send");
        assert!(first.query.starts_with("access_token=tok0123&timestamp="));
        assert_eq!(
            first.header("content-type"),
            Some("application/json;charset=utf-8")
        );
        assert_eq!(first.json()["text"]["content"], "T\n\nC");
    }
}
