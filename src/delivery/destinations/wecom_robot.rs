//! WeCom (企业微信) group robot: `POST {base}/cgi-bin/webhook/send?key=KEY` with a JSON
//! message, answered `{"errcode":0,"errmsg":"ok"}` — errors too come in an HTTP 200 with
//! `errcode != 0`.
//!
//! Rendering ([`render`]): markdown content goes as `markdown` (the WeCom client renders
//! headings, bold, links, code and quotes; ≤ 4096 bytes), everything else — and markdown
//! that does not fit — as `text` (≤ 2048 bytes), cut on grapheme boundaries with the
//! message's page linked. (Markdown does not show in WeChat's WeCom plug-in; a group
//! robot's readers are in WeCom itself.)
//!
//! A robot takes 20 messages a minute; over that WeCom answers `45009`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::http::{Answer, call, status_error};
use super::text::{Measure, Shown, fit};
use super::{Delivered, DestError, Envelope, refusal};

const LABEL: &str = "WeCom group robot";
/// `text` content, in bytes.
pub const MAX_TEXT_BYTES: usize = 2048;
/// `markdown` content, in bytes.
pub const MAX_MARKDOWN_BYTES: usize = 4096;
/// After `45009`: the robot's minute is used up.
const THROTTLED_FOR: Duration = Duration::from_secs(60);

/// The message as WeCom takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "msgtype", rename_all = "lowercase")]
pub enum RobotMessage {
    Text { text: Content },
    Markdown { markdown: Content },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Content {
    pub content: String,
}

/// `{base}/cgi-bin/webhook/send?key=…`
pub fn endpoint(base: &Url, key: &str) -> Url {
    let mut url = super::at(base, "/cgi-bin/webhook/send");
    url.query_pairs_mut().append_pair("key", key);
    url
}

/// The robot message for `envelope` (see the module documentation).
pub fn render(envelope: &Envelope<'_>) -> RobotMessage {
    let shown = Shown::of(envelope);
    if let (true, Some(content)) = (shown.markdown, shown.content) {
        let mut markdown = match shown.title {
            Some(title) => format!("### {title}\n\n{content}"),
            None => content.to_owned(),
        };
        if let Some(link) = shown.url_link() {
            markdown.push_str("\n\n");
            markdown.push_str(&link.markdown());
        }
        if markdown.len() <= MAX_MARKDOWN_BYTES {
            return RobotMessage::Markdown {
                markdown: Content { content: markdown },
            };
        }
    }
    let fitted = fit(
        &shown,
        shown.plain_body(),
        MAX_TEXT_BYTES,
        Measure::Bytes,
        |link| link.plain().len(),
    );
    RobotMessage::Text {
        text: Content {
            content: fitted.plain(),
        },
    }
}

#[derive(Debug, Deserialize)]
struct Reply {
    errcode: Option<i64>,
    #[serde(default)]
    errmsg: String,
}

/// The send's outcome from WeCom's answer: `errcode` decides, whatever the HTTP status.
pub(super) fn classify(answer: &Answer) -> Result<(), DestError> {
    match serde_json::from_slice::<Reply>(&answer.body) {
        Ok(Reply {
            errcode: Some(0), ..
        }) => Ok(()),
        Ok(Reply {
            errcode: Some(code),
            errmsg,
        }) => Err(explain(code, &errmsg)),
        _ => Err(status_error(
            LABEL,
            answer,
            "check [destinations] wecom_robot_base",
        )),
    }
}

fn explain(code: i64, message: &str) -> DestError {
    let text = |hint: &str| refusal(LABEL, "refused", &code.to_string(), message, hint);
    match code {
        93000 => DestError::permanent(text(
            "the robot's key is not valid (the robot was removed from the group, or the key is wrong): copy the robot's webhook URL again (群聊 → 群机器人 → the robot → Webhook 地址) and add it again",
        )),
        45009 => DestError::transient(
            refusal(
                LABEL,
                "refused for now",
                &code.to_string(),
                message,
                "the robot may send 20 messages a minute: will retry",
            ),
            true,
            Some(THROTTLED_FOR),
        ),
        -1 => DestError::transient(
            refusal(
                LABEL,
                "failed",
                &code.to_string(),
                message,
                "WeCom is busy: will retry",
            ),
            true,
            None,
        ),
        40008 | 44004 | 40058 => {
            DestError::permanent(text("the message was not accepted as sent (a pushbot bug)"))
        }
        _ => DestError::permanent(text("")),
    }
}

pub(super) async fn send(
    http: &reqwest::Client,
    endpoint: &Url,
    envelope: &Envelope<'_>,
    timeout: Duration,
) -> Result<Delivered, DestError> {
    let message = render(envelope);
    let request = http.post(endpoint.clone()).json(&message);
    let answer = call(request, timeout)
        .await
        .map_err(|e| e.into_error(LABEL))?;
    classify(&answer).map(|()| Delivered::Sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::destinations::tests::{PAGE, bases_at, client, envelope, mock, outbound};
    use crate::delivery::destinations::{Kind, Settings, parse_chat_url};
    use crate::domain::Format;

    fn answer(body: &str) -> Answer {
        Answer {
            status: 200,
            body: body.as_bytes().to_vec(),
            retry_after: None,
        }
    }

    fn content(m: &RobotMessage) -> (&'static str, &str) {
        match m {
            RobotMessage::Text { text } => ("text", &text.content),
            RobotMessage::Markdown { markdown } => ("markdown", &markdown.content),
        }
    }

    #[test]
    fn the_json_is_wecoms() {
        let m = outbound(Some("T"), Some("C"));
        let json = serde_json::to_value(render(&envelope(&m))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"msgtype": "text", "text": {"content": "T\n\nC"}})
        );
        let mut m = outbound(Some("Report"), Some("**disk** 91%"));
        m.format = Format::Markdown;
        m.url = Some("https://grafana.example.com/d/1".into());
        let json = serde_json::to_value(render(&envelope(&m))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"msgtype": "markdown", "markdown": {
                "content": "### Report\n\n**disk** 91%\n\n[详情](https://grafana.example.com/d/1)"
            }})
        );
    }

    #[test]
    fn sizes() {
        // Text: exactly 2048 bytes stays whole; one more is cut and links the page.
        let fits = "x".repeat(MAX_TEXT_BYTES);
        let m = outbound(None, Some(&fits));
        assert_eq!(content(&render(&envelope(&m))), ("text", fits.as_str()));
        let over = "磁".repeat(MAX_TEXT_BYTES / 3 + 1);
        let m = outbound(Some("告警"), Some(&over));
        let rendered = render(&envelope(&m));
        let (kind, text) = content(&rendered);
        assert_eq!(kind, "text");
        assert!(text.len() <= MAX_TEXT_BYTES, "{}", text.len());
        assert!(text.ends_with(&format!("…\n\n阅读全文: {PAGE}")), "{text}");
        // Markdown up to 4096 bytes is markdown; beyond, plain text within 2048.
        let mut m = outbound(None, Some(&"**a** ".repeat(600))); // 3600 bytes
        m.format = Format::Markdown;
        assert_eq!(content(&render(&envelope(&m))).0, "markdown");
        let mut m = outbound(None, Some(&"**abcd** ".repeat(500))); // 4500 bytes
        m.format = Format::Markdown;
        let rendered = render(&envelope(&m));
        let (kind, text) = content(&rendered);
        assert_eq!(kind, "text");
        assert!(text.len() <= MAX_TEXT_BYTES);
        assert!(text.starts_with("abcd abcd"), "{text}");
        assert!(text.ends_with(PAGE));
    }

    #[test]
    fn classification_of_wecoms_answers() {
        assert_eq!(classify(&answer(r#"{"errcode":0,"errmsg":"ok"}"#)), Ok(()));
        let e = classify(&answer(
            r#"{"errcode":93000,"errmsg":"invalid webhook url, hint: [1690000000_1_abc], from ip: 1.2.3.4, more info at https://open.work.weixin.qq.com/devtool/query?e=93000"}"#,
        ))
        .unwrap_err();
        assert!(!e.is_transient());
        assert!(e.reason().contains("93000"), "{}", e.reason());
        assert!(e.reason().contains("copy the robot's webhook URL again"));
        let e = classify(&answer(
            r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#,
        ))
        .unwrap_err();
        assert!(matches!(
            e,
            DestError::Transient {
                unreachable: true,
                ..
            }
        ));
        assert_eq!(e.retry_after(), Some(THROTTLED_FOR));
        assert!(
            classify(&answer(r#"{"errcode":-1,"errmsg":"system busy"}"#))
                .unwrap_err()
                .is_transient()
        );
        assert!(
            !classify(&answer(
                r#"{"errcode":40008,"errmsg":"invalid message type"}"#
            ))
            .unwrap_err()
            .is_transient()
        );
        // Not WeCom's answer.
        let e = classify(&Answer {
            status: 502,
            body: b"<html>bad gateway</html>".to_vec(),
            retry_after: None,
        })
        .unwrap_err();
        assert!(e.is_transient());
    }

    #[tokio::test]
    async fn a_round_trip_against_a_mock() {
        let mock = mock(|r| {
            if r.query.contains("key=GOODKEY1") {
                (200, r#"{"errcode":0,"errmsg":"ok"}"#.into())
            } else {
                (
                    200,
                    r#"{"errcode":93000,"errmsg":"invalid webhook url, key BADKEY01 unknown"}"#
                        .into(),
                )
            }
        })
        .await;
        let bases = bases_at(&mock);
        let good = parse_chat_url(
            None,
            &format!("{}/cgi-bin/webhook/send?key=GOODKEY1", mock.base),
            &bases,
        )
        .unwrap();
        assert_eq!(good.kind(), Kind::WeComRobot);
        let m = outbound(Some("T"), Some("C"));
        let settings = Settings::default();
        assert_eq!(
            good.send(&client(), &settings, &envelope(&m)).await,
            Ok(Delivered::Sent)
        );
        let bad = parse_chat_url(Some(Kind::WeComRobot), "BADKEY01", &bases).unwrap();
        let e = bad
            .send(&client(), &settings, &envelope(&m))
            .await
            .unwrap_err();
        assert!(!e.is_transient());
        assert!(!e.reason().contains("BADKEY01"), "{}", e.reason());
        let requests = mock.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].method, "POST");
        assert_eq!(requests[0].path, "/cgi-bin/webhook/send");
        assert_eq!(requests[0].query, "key=GOODKEY1");
        assert_eq!(requests[0].header("content-type"), Some("application/json"));
        assert_eq!(requests[0].json()["text"]["content"], "T\n\nC");
    }
}
