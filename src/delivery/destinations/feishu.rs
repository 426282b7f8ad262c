//! Feishu (飞书) / Lark custom bot: `POST {base}/open-apis/bot/v2/hook/HOOK_ID` with a JSON
//! message. Errors too come in an HTTP 200: `code != 0` (the current answer,
//! authoritative) or, in older answers, `StatusCode != 0`.
//!
//! With 签名校验 on, the body carries `timestamp` (unix **seconds**, as a string) and
//! `sign = base64(HMAC-SHA256(key = timestamp + "\n" + secret, msg = ""))` ([`sign`]) —
//! the key is the concatenation and the message is empty, the reverse of DingTalk.
//!
//! Rendering ([`render`]): a `post` (rich text: the title, then one paragraph per line,
//! every `http(s)` URL an `a` tag, then the links), or plain `text` for a message with
//! nothing but text. Feishu does not render markdown in either: markdown is made readable
//! text. The body stays within 20 KB.
//!
//! A bot takes 100 requests a minute and 5 a second (`11232` past that, and at busy
//! moments: on the hour and half hour).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use url::Url;

use super::http::{Answer, call, status_error};
use super::text::{Fitted, Link, Measure, Shown, fit};
use super::{Delivered, DestError, Envelope, base64, hmac_sha256, refusal};
use crate::time::UnixMillis;

const LABEL: &str = "Feishu bot";
/// Feishu refuses bodies past 20 KB (`9499`); counted as 20000 bytes to be safe.
pub const MAX_BODY_BYTES: usize = 20_000;
/// The text shown at most, leaving room for the JSON around it.
pub const MAX_TEXT_BYTES: usize = 16_000;
/// A longer title is cut (it would leave no room for the content).
const MAX_TITLE_BYTES: usize = 512;

/// The message as Feishu takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeishuMessage {
    /// `msg_type: text`.
    Text(String),
    /// `msg_type: post`, in `zh_cn`.
    Post {
        title: Option<String>,
        /// Paragraphs, each a line of elements.
        lines: Vec<Vec<Element>>,
    },
}

/// One element of a `post` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "tag", rename_all = "lowercase")]
pub enum Element {
    Text { text: String },
    A { text: String, href: String },
}

/// `{base}/open-apis/bot/v2/hook/{hook_id}`
pub fn endpoint(base: &Url, hook_id: &str) -> Url {
    super::at(base, &format!("/open-apis/bot/v2/hook/{hook_id}"))
}

/// `base64(HMAC-SHA256(key = "{timestamp_s}\n{secret}", msg = ""))`.
pub fn sign(secret: &str, timestamp_s: i64) -> String {
    let key = format!("{timestamp_s}\n{secret}");
    base64(&hmac_sha256(key.as_bytes(), b""))
}

/// The message for `envelope` (see the module documentation).
pub fn render(envelope: &Envelope<'_>) -> FeishuMessage {
    render_within(envelope, MAX_TEXT_BYTES)
}

fn render_within(envelope: &Envelope<'_>, max_text: usize) -> FeishuMessage {
    let shown = Shown::of(envelope);
    let plain_only = shown.title.is_none() && shown.url.is_none() && !shown.markdown;
    // In a post the title is its own field: the body is the content alone.
    let body = if plain_only {
        shown.plain_body()
    } else {
        shown.plain_content().unwrap_or_else(|| {
            if shown.title.is_some() {
                String::new()
            } else {
                shown.plain_body()
            }
        })
    };
    let title = shown
        .title
        .map(|t| Measure::Bytes.excerpt(t, MAX_TITLE_BYTES));
    let title_bytes = title.as_ref().map_or(0, String::len);
    let fitted = fit(
        &shown,
        body,
        max_text.saturating_sub(title_bytes),
        Measure::Bytes,
        |link| link.label.len() + link.href.len(),
    );
    if plain_only && !fitted.cut {
        return FeishuMessage::Text(fitted.body);
    }
    FeishuMessage::Post {
        title,
        lines: post_lines(&fitted),
    }
}

/// The body's lines with their URLs as links, a blank line, the links.
fn post_lines(fitted: &Fitted) -> Vec<Vec<Element>> {
    let mut lines: Vec<Vec<Element>> = if fitted.body.is_empty() {
        Vec::new()
    } else {
        fitted.body.split('\n').map(linkify).collect()
    };
    if !fitted.links.is_empty() {
        if !lines.is_empty() {
            lines.push(linkify(""));
        }
        lines.extend(fitted.links.iter().map(|link| vec![link_element(link)]));
    }
    lines
}

fn link_element(link: &Link) -> Element {
    if link.clickable {
        Element::A {
            text: link.label.to_owned(),
            href: link.href.clone(),
        }
    } else {
        Element::Text { text: link.plain() }
    }
}

/// A line as text elements, each `http(s)://…` in it an `a` element.
fn linkify(line: &str) -> Vec<Element> {
    let mut elements = Vec::new();
    // Where the text not yet in an element begins, and where to look for the next URL.
    let (mut pending, mut search) = (0, 0);
    while let Some(found) = ["https://", "http://"]
        .iter()
        .filter_map(|scheme| line[search..].find(scheme))
        .min()
    {
        let start = search + found;
        let from = &line[start..];
        let end = from.find(ends_url).unwrap_or(from.len());
        let url = from[..end].trim_end_matches(['.', ',', ';', ':', '!', '?']);
        let after_scheme = url.split_once("://").map_or("", |(_, rest)| rest);
        if !after_scheme.contains(|c: char| c.is_alphanumeric()) {
            // A scheme and nothing: text. ("http" is ASCII: a char boundary follows.)
            search = start + "http".len();
            continue;
        }
        if pending < start {
            elements.push(Element::Text {
                text: line[pending..start].to_owned(),
            });
        }
        elements.push(Element::A {
            text: url.to_owned(),
            href: url.to_owned(),
        });
        pending = start + url.len();
        search = pending;
    }
    if pending < line.len() || elements.is_empty() {
        elements.push(Element::Text {
            text: line[pending..].to_owned(),
        });
    }
    elements
}

/// Whether `c` ends a URL in running text.
fn ends_url(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            ')' | ']'
                | '>'
                | '<'
                | '"'
                | '\''
                | '）'
                | '，'
                | '。'
                | '、'
                | '；'
                | '：'
                | '」'
                | '】'
                | '》'
        )
}

/// The request body: the message (with `timestamp` and `sign` when signing), cut further
/// if its JSON would pass [`MAX_BODY_BYTES`].
pub fn body(envelope: &Envelope<'_>, secret: Option<&str>, timestamp_s: i64) -> Vec<u8> {
    let mut max_text = MAX_TEXT_BYTES;
    loop {
        let mut value = match render_within(envelope, max_text) {
            FeishuMessage::Text(text) => json!({"msg_type": "text", "content": {"text": text}}),
            FeishuMessage::Post { title, lines } => {
                let mut post = json!({"content": lines});
                if let Some(title) = title {
                    post["title"] = json!(title);
                }
                json!({"msg_type": "post", "content": {"post": {"zh_cn": post}}})
            }
        };
        if let Some(secret) = secret {
            value["timestamp"] = json!(timestamp_s.to_string());
            value["sign"] = json!(sign(secret, timestamp_s));
        }
        let json = serde_json::to_vec(&value).unwrap_or_default();
        if json.len() <= MAX_BODY_BYTES || max_text <= super::MIN_TEXT_BYTES {
            return json;
        }
        max_text = super::smaller_budget(max_text, json.len(), MAX_BODY_BYTES);
    }
}

#[derive(Debug, Deserialize)]
struct Reply {
    code: Option<i64>,
    #[serde(default)]
    msg: String,
    #[serde(rename = "StatusCode")]
    status_code: Option<i64>,
    #[serde(rename = "StatusMessage", default)]
    status_message: String,
}

/// The send's outcome from Feishu's answer: `code` decides, else the older `StatusCode`,
/// whatever the HTTP status. `signed`: whether the body carried a signature.
pub(super) fn classify(answer: &Answer, signed: bool) -> Result<(), DestError> {
    let reply = serde_json::from_slice::<Reply>(&answer.body).ok();
    let found = reply.and_then(|r| match (r.code, r.status_code) {
        (Some(code), _) => Some((code, r.msg)),
        (None, Some(code)) => Some((code, r.status_message)),
        (None, None) => None,
    });
    match found {
        Some((0, _)) => Ok(()),
        Some((code, message)) => Err(explain(code, &message, signed)),
        None => Err(status_error(
            LABEL,
            answer,
            "check [destinations] feishu_base",
        )),
    }
}

fn explain(code: i64, message: &str, signed: bool) -> DestError {
    let code_text = code.to_string();
    let permanent =
        |hint: &str| DestError::permanent(refusal(LABEL, "refused", &code_text, message, hint));
    match code {
        19021 => permanent(if signed {
            "the signature does not match, or its timestamp is more than an hour off: give pushbot the bot's secret exactly as shown (bot settings → 安全设置 → 签名校验), and check this server's clock (NTP, `date -u`)"
        } else {
            "the bot requires 签名校验 (signing): add the destination again with its secret (bot settings → 安全设置 → 签名校验)"
        }),
        19022 => permanent(
            "the bot's IP whitelist (安全设置 → IP 白名单) does not include this server's address: add it, or use 签名校验 instead",
        ),
        19024 => permanent(
            "the bot's security setting 自定义关键词 requires one of its keywords in every message: put one in the title, or switch the bot to 签名校验",
        ),
        19001 => permanent(
            "the hook is not valid (the bot was removed, or the URL is wrong): copy the bot's webhook URL again and add it again",
        ),
        9499 | 19002 => permanent("Feishu could not read the message (a pushbot bug)"),
        11232 => DestError::transient(
            refusal(
                LABEL,
                "refused for now",
                &code_text,
                message,
                "Feishu is throttling the bot (100 a minute, 5 a second, or busy on the hour): will retry",
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
    let body = body(envelope, secret, UnixMillis::now().as_secs());
    let request = http
        .post(endpoint.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
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

    fn value(envelope: &Envelope<'_>, secret: Option<&str>) -> serde_json::Value {
        serde_json::from_slice(&body(envelope, secret, 1_700_000_000)).unwrap()
    }

    /// channels.md V7 (self-computed from Feishu's documented algorithm and official
    /// samples, recomputed with Python's hmac): no official vector is published.
    #[test]
    fn signature_vector_v7() {
        assert_eq!(
            sign("demo-secret", 1_700_000_000),
            "mYHw2R2SOm8Rw/sne3lQdmz4sOfntKR+1P/8RKKTwmA="
        );
        let m = outbound(None, Some("hi"));
        let v = value(&envelope(&m), Some("demo-secret"));
        assert_eq!(v["timestamp"], "1700000000");
        assert_eq!(v["sign"], "mYHw2R2SOm8Rw/sne3lQdmz4sOfntKR+1P/8RKKTwmA=");
        let v = value(&envelope(&m), None);
        assert!(v.get("sign").is_none() && v.get("timestamp").is_none());
    }

    #[test]
    fn plain_text_is_text_anything_more_a_post() {
        let m = outbound(None, Some("磁盘 91%"));
        assert_eq!(
            value(&envelope(&m), None),
            json!({"msg_type": "text", "content": {"text": "磁盘 91%"}})
        );
        let mut m = outbound(
            Some("告警"),
            Some("see https://grafana.example.com/d/1, now\nline 2"),
        );
        m.url = Some("https://ci.example.com/7".into());
        assert_eq!(
            value(&envelope(&m), None),
            json!({"msg_type": "post", "content": {"post": {"zh_cn": {
                "title": "告警",
                "content": [
                    [
                        {"tag": "text", "text": "see "},
                        {"tag": "a", "text": "https://grafana.example.com/d/1", "href": "https://grafana.example.com/d/1"},
                        {"tag": "text", "text": ", now"}
                    ],
                    [{"tag": "text", "text": "line 2"}],
                    [{"tag": "text", "text": ""}],
                    [{"tag": "a", "text": "详情", "href": "https://ci.example.com/7"}]
                ]
            }}}})
        );
    }

    #[test]
    fn markdown_is_made_readable_with_links_kept() {
        let mut m = outbound(
            None,
            Some("**CPU** 95% on [web-1](https://grafana.example.com/h/web-1)"),
        );
        m.format = Format::Markdown;
        let v = value(&envelope(&m), None);
        assert_eq!(v["msg_type"], "post");
        let post = &v["content"]["post"]["zh_cn"];
        assert!(post.get("title").is_none());
        assert_eq!(
            post["content"],
            json!([[
                {"tag": "text", "text": "CPU 95% on web-1 ("},
                {"tag": "a", "text": "https://grafana.example.com/h/web-1", "href": "https://grafana.example.com/h/web-1"},
                {"tag": "text", "text": ")"}
            ]])
        );
    }

    #[test]
    fn linkify_edges() {
        assert_eq!(
            linkify(""),
            vec![Element::Text {
                text: String::new()
            }]
        );
        assert_eq!(
            linkify("http:// nothing"),
            vec![Element::Text {
                text: "http:// nothing".into()
            }]
        );
        assert_eq!(
            linkify("（https://a.example/x）。"),
            vec![
                Element::Text { text: "（".into() },
                Element::A {
                    text: "https://a.example/x".into(),
                    href: "https://a.example/x".into()
                },
                Element::Text {
                    text: "）。".into()
                },
            ]
        );
    }

    #[test]
    fn long_messages_fit_and_link_the_page() {
        let long = "\"磁盘\"\n".repeat(3000);
        let m = outbound(Some("告警"), Some(&long));
        let json = body(&envelope(&m), Some("s"), 1);
        assert!(json.len() <= MAX_BODY_BYTES, "{}", json.len());
        // Cut no more than needed.
        assert!(json.len() > MAX_BODY_BYTES * 3 / 4, "{}", json.len());
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let lines = v["content"]["post"]["zh_cn"]["content"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"));
        assert_eq!(
            lines.last().unwrap_or_else(|| panic!("{v}")),
            &json!([{"tag": "a", "text": "阅读全文", "href": PAGE}])
        );
        // A huge title is cut too.
        let m = outbound(Some(&"标题".repeat(5000)), Some("C"));
        let v = value(&envelope(&m), None);
        let title = v["content"]["post"]["zh_cn"]["title"].as_str().unwrap();
        assert!(title.len() <= MAX_TITLE_BYTES && title.ends_with('…'));
        // Plain text that must be cut becomes a post, for its link.
        let m = outbound(None, Some(&"x".repeat(30_000)));
        let v = value(&envelope(&m), None);
        assert_eq!(v["msg_type"], "post");
    }

    #[test]
    fn classification_of_feishus_answers() {
        assert_eq!(
            classify(
                &answer(
                    r#"{"code":0,"msg":"success","data":{},"Extra":null,"StatusCode":0,"StatusMessage":"success"}"#
                ),
                true
            ),
            Ok(())
        );
        // The older answer, with only StatusCode.
        assert_eq!(
            classify(
                &answer(r#"{"Extra":null,"StatusCode":0,"StatusMessage":"success"}"#),
                true
            ),
            Ok(())
        );
        let e = classify(
            &answer(r#"{"code":19021,"msg":"sign match fail or timestamp is not within one hour from current time","data":{}}"#),
            true,
        )
        .unwrap_err();
        assert!(
            !e.is_transient() && e.reason().contains("签名校验") && e.reason().contains("clock")
        );
        let e = classify(&answer(r#"{"code":19021,"msg":"sign match fail"}"#), false).unwrap_err();
        assert!(e.reason().contains("requires 签名校验"), "{}", e.reason());
        let e = classify(&answer(r#"{"code":19022,"msg":"Ip Not Allowed"}"#), false).unwrap_err();
        assert!(e.reason().contains("whitelist"));
        let e = classify(
            &answer(r#"{"code":19024,"msg":"Key Words Not Found"}"#),
            false,
        )
        .unwrap_err();
        assert!(e.reason().contains("自定义关键词"));
        assert!(
            !classify(&answer(r#"{"code":9499,"msg":"Bad Request"}"#), false)
                .unwrap_err()
                .is_transient()
        );
        let e = classify(
            &answer(r#"{"code":11232,"msg":"frequency limited"}"#),
            false,
        )
        .unwrap_err();
        assert!(matches!(
            e,
            DestError::Transient {
                unreachable: true,
                ..
            }
        ));
        // `code` is authoritative over a stale StatusCode.
        assert!(classify(&answer(r#"{"code":19024,"msg":"x","StatusCode":0}"#), false).is_err());
        // An old-format error.
        assert!(
            classify(
                &answer(r#"{"StatusCode":19022,"StatusMessage":"Ip Not Allowed"}"#),
                false
            )
            .is_err()
        );
        // Neither: by HTTP status.
        assert!(
            classify(
                &Answer {
                    status: 503,
                    body: b"".to_vec(),
                    retry_after: None
                },
                false
            )
            .unwrap_err()
            .is_transient()
        );
    }

    #[tokio::test]
    async fn a_round_trip_against_a_mock_that_checks_the_signature() {
        const SECRET: &str = "qpL7l7UaQ9vQXcJ0GZv3Bf";
        let mock = mock(|r| {
            let v = r.json();
            let ok = v["msg_type"].is_string()
                && match (v["timestamp"].as_str(), v["sign"].as_str()) {
                    (Some(t), Some(s)) => {
                        let t: i64 = t.parse().unwrap();
                        (UnixMillis::now().as_secs() - t).abs() < 3600 && s == sign(SECRET, t)
                    }
                    _ => false,
                };
            if ok {
                (200, r#"{"code":0,"msg":"success","data":{}}"#.into())
            } else {
                (
                    200,
                    r#"{"code":19021,"msg":"sign match fail or timestamp is not within one hour from current time","data":{}}"#
                        .into(),
                )
            }
        })
        .await;
        let bases = bases_at(&mock);
        let url = format!("{}/open-apis/bot/v2/hook/0a1b2c3d-4e5f", mock.base);
        let m = outbound(Some("T"), Some("C"));
        let settings = Settings::default();
        let d =
            Destination::from_config(Kind::Feishu, Some(&url), None, Some(SECRET), &bases).unwrap();
        assert_eq!(
            d.send(&client(), &settings, &envelope(&m)).await,
            Ok(Delivered::Sent)
        );
        let d = Destination::from_config(Kind::Feishu, Some(&url), None, Some("wrong"), &bases)
            .unwrap();
        let e = d
            .send(&client(), &settings, &envelope(&m))
            .await
            .unwrap_err();
        assert!(!e.is_transient(), "{e:?}");
        let first = &mock.requests()[0];
        assert_eq!(first.path, "/open-apis/bot/v2/hook/0a1b2c3d-4e5f");
        assert_eq!(first.json()["content"]["post"]["zh_cn"]["title"], "T");
    }
}
