//! The WeCom app channel: one `message/send` per message, as text, markdown or a card.
//!
//! WeCom cuts `text` and `markdown` content beyond 2048 bytes without an error, `markdown`
//! does not render at all for members who receive through WeChat, and a `textcard` holds a
//! 128-byte title and a 512-byte description but shows everywhere. So
//! ([`compose`]): a message that fits goes out as it is — plain text by default, WeCom
//! markdown for members who chose it — and one that does not fit becomes a card with an
//! excerpt and a link to its page (`/m/{id}?k=…`), where the whole message is readable.
//! A sender's `url` always makes a card that opens that link.
//!
//! Images and files go after the text, one message each ([`Attachments::Separate`]: the
//! scheduler hands each over as a [`Part`] of its own). Each is uploaded once per content
//! (`media/upload`, streamed from the stored blob) and its `media_id` kept, by SHA-256 and
//! kind, for [`MEDIA_ID_REUSE`](crate::store::MEDIA_ID_REUSE); a send WeCom answers 40007
//! (it forgot the id) forgets it, uploads again and sends once more.
//!
//! Copies of one group message that have the same body and go out at about the same
//! time share one `message/send` (`touser=a|b|c`; see [`super::batch`]); each member's
//! outcome is still their own.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::batch::{Coalescer, Lost, SendFn};
use super::limits::RateWindow;
use super::{Attachments, Capabilities, Channel, ChannelError, CheckError};
use crate::domain::{ChannelName, Format, Look, Outbound, OutboundAttachment, Part};
use crate::render::cut::{cut, excerpt};
use crate::render::markdown::to_plain_text;
use crate::store::{MediaKind, Store, StoreError};
use crate::time::UnixMillis;
use crate::wecom::client::{AppMessage, Content, MediaRef, TextCard, WeComClient, WeComError};

/// WeCom's limit for `text` and `markdown` content, in bytes.
pub const MAX_TEXT_BYTES: usize = 2048;
/// A card's title and description limits, in bytes.
pub const CARD_TITLE_BYTES: usize = 128;
pub const CARD_DESCRIPTION_BYTES: usize = 512;
/// Only for messages without a page (accepted before pages existed): cut, and say so.
const TRUNCATION_MARK: &str = "\n…(truncated)";
/// The card's button (WeCom allows 4 characters).
const READ_MORE: &str = "阅读全文";
const OPEN_LINK: &str = "详情";

pub struct WeComChannel {
    client: Arc<WeComClient>,
    /// `server.public_url`, for page links.
    public_base: Arc<str>,
    /// `wecom.member_limits`: beyond them WeCom drops messages while reporting success.
    limits: Vec<RateWindow>,
    /// Where attachments' bytes and the `media_id` cache are.
    store: Store,
    /// Gathers copies of a group message into shared calls.
    batches: Coalescer,
}

impl WeComChannel {
    pub fn new(
        client: Arc<WeComClient>,
        public_base: Arc<str>,
        limits: Vec<RateWindow>,
        store: Store,
    ) -> Self {
        let sender = client.clone();
        let send: SendFn = Arc::new(move |tousers: Vec<String>, message: AppMessage| {
            let client = sender.clone();
            Box::pin(async move {
                let tousers: Vec<&str> = tousers.iter().map(String::as_str).collect();
                client.send_many(&tousers, &message).await
            })
        });
        Self {
            client,
            public_base,
            limits,
            store,
            batches: Coalescer::new(send),
        }
    }

    /// Sends one attachment as an image or file message: with the cached `media_id` of its
    /// content when there is one, else uploaded first. A cached id WeCom no longer knows
    /// (40007) is forgotten, and the file uploaded and sent once more.
    async fn send_attachment(
        &self,
        message: &Outbound,
        attachment: &OutboundAttachment,
    ) -> Result<(), ChannelError> {
        let touser = message.userid.as_str();
        let cached = self
            .store
            .cached_wecom_media(&attachment.sha256, attachment.kind, UnixMillis::now())
            .await
            .map_err(|e| store_failed("read the WeCom media cache", &e))?;
        let (media_id, fresh) = match cached {
            Some(id) => (id, false),
            None => (self.upload(attachment).await?, true),
        };
        match self
            .client
            .send(touser, &media_message(attachment.kind, media_id.clone()))
            .await
        {
            Err(e) if e.is_invalid_media() && !fresh => {
                tracing::info!(sha256 = %attachment.sha256, kind = %attachment.kind, "WeCom no longer knows a cached media_id (40007); uploading the file again");
                self.store
                    .forget_wecom_media(&attachment.sha256, attachment.kind, &media_id)
                    .await
                    .map_err(|e| store_failed("update the WeCom media cache", &e))?;
                let media_id = self.upload(attachment).await?;
                self.client
                    .send(touser, &media_message(attachment.kind, media_id))
                    .await
                    .map_err(classify)
            }
            other => other.map_err(classify),
        }
    }

    /// Uploads an attachment (streamed from its blob, a chunk at a time) and keeps its
    /// `media_id` for the next message with the same content.
    async fn upload(&self, attachment: &OutboundAttachment) -> Result<String, ChannelError> {
        let blob = attachment.blob_id.clone();
        let media_id = self
            .client
            .upload_media(
                attachment.kind,
                &attachment.filename,
                &attachment.mime,
                attachment.size,
                || self.store.blob_stream(&blob),
            )
            .await
            .map_err(|e| {
                let error = classify(e);
                let reason = format!("media/upload: {}", error.reason());
                match error {
                    ChannelError::Transient { unreachable, .. } => ChannelError::Transient {
                        reason,
                        unreachable,
                    },
                    _ => ChannelError::Permanent { reason },
                }
            })?;
        // Not kept: the next message uploads again — never a reason to fail this one.
        if let Err(err) = self
            .store
            .remember_wecom_media(
                &attachment.sha256,
                attachment.kind,
                &media_id,
                UnixMillis::now(),
            )
            .await
        {
            tracing::warn!(error = %crate::error::chain(&err), "could not keep a WeCom media_id; the next message with this file uploads it again");
        }
        Ok(media_id)
    }
}

/// An image or file message naming `media_id`.
fn media_message(kind: MediaKind, media_id: String) -> AppMessage {
    let media = MediaRef { media_id };
    match kind {
        MediaKind::Image => AppMessage::Image { image: media },
        MediaKind::File => AppMessage::File { file: media },
    }
}

/// WeCom's answer as the scheduler's classes: transient (and whether WeCom did not
/// answer at all) or permanent. Upload refusals of a file's type or size (40004–40006,
/// 40009, 44001) are permanent: sending it again cannot help.
fn classify(e: WeComError) -> ChannelError {
    if e.is_transient() {
        ChannelError::Transient {
            unreachable: e.is_unreachable(),
            reason: e.to_string(),
        }
    } else {
        ChannelError::Permanent {
            reason: e.to_string(),
        }
    }
}

/// Whether copies of a group message with this body may share a call: text, markdown
/// and cards; images and files go one per member.
fn coalesces(body: &AppMessage) -> bool {
    match body {
        AppMessage::Text { .. } | AppMessage::Markdown { .. } | AppMessage::Textcard { .. } => true,
        AppMessage::Image { .. } | AppMessage::File { .. } => false,
    }
}

/// The batch a copy waited in ended without an answer for it: WeCom may or may not have
/// it; try again (transient, and not a sign that WeCom is down).
fn lost() -> ChannelError {
    ChannelError::Transient {
        reason: "the batched WeCom call ended without an answer for this member (batch lost); \
                 will retry"
            .to_owned(),
        unreachable: false,
    }
}

/// The database failed around a send: try again later (WeCom itself answered nothing).
fn store_failed(what: &str, err: &StoreError) -> ChannelError {
    ChannelError::Transient {
        reason: format!("could not {what}: {}", crate::error::chain(err)),
        unreachable: false,
    }
}

impl Channel for WeComChannel {
    fn name(&self) -> ChannelName {
        ChannelName::WeCom
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_text_bytes: MAX_TEXT_BYTES,
            digests: true,
            attachments: Attachments::Separate,
        }
    }

    fn rate_windows(&self) -> &[RateWindow] {
        &self.limits
    }

    fn check(&self) -> BoxFuture<'_, Result<String, CheckError>> {
        Box::pin(async move {
            self.client
                .access_token()
                .await
                .map(|_| "gettoken accepted the corp id and secret".to_owned())
                .map_err(CheckError::from)
        })
    }

    fn deliver<'a>(&'a self, message: &'a Outbound) -> BoxFuture<'a, Result<(), ChannelError>> {
        Box::pin(async move {
            if let Part::Attachment(i) = message.part {
                let Some(attachment) = message.attachments.get(i) else {
                    return Err(ChannelError::Permanent {
                        reason: format!("the message has no attachment {}", i + 1),
                    });
                };
                return self.send_attachment(message, attachment).await;
            }
            let body = compose(message, &self.public_base);
            let touser = message.userid.as_str();
            match &message.group_send {
                Some(group_send) if coalesces(&body) && !message.verification => self
                    .batches
                    .send(group_send, touser, body)
                    .await
                    .map(|outcome| outcome.map_err(classify))
                    .unwrap_or_else(|Lost| Err(lost())),
                _ => self.client.send(touser, &body).await.map_err(classify),
            }
        })
    }

    fn cooldown(&self) -> Option<std::time::Duration> {
        self.client.token_cooldown()
    }
}

/// The WeCom message for `message` (see the module documentation).
pub fn compose(message: &Outbound, public_base: &str) -> AppMessage {
    let title = message
        .title
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let content = message.content.as_deref().filter(|c| !c.trim().is_empty());
    // What a reader without markdown sees.
    let plain = content.map(|c| match message.format {
        Format::Markdown => to_plain_text(c),
        Format::Text => c.to_owned(),
    });
    if let Some(url) = message.url.as_deref().filter(|u| !u.trim().is_empty()) {
        return card(title, plain.as_deref(), url.trim(), OPEN_LINK);
    }
    let page = message
        .page_key
        .as_deref()
        .map(|key| message.id.page_url(public_base, key));
    if let (Look::Card, Some(page)) = (message.look, &page) {
        return card(title, plain.as_deref(), page, READ_MORE);
    }
    if let (Look::Markdown, Format::Markdown, Some(content)) =
        (message.look, message.format, content)
    {
        let markdown = match title {
            Some(t) => format!("### {t}\n\n{content}"),
            None => content.to_owned(),
        };
        if markdown.len() <= MAX_TEXT_BYTES {
            return AppMessage::Markdown {
                markdown: Content { content: markdown },
            };
        }
    }
    let text = join(title, plain.as_deref());
    match page {
        _ if text.len() <= MAX_TEXT_BYTES => AppMessage::Text {
            text: Content { content: text },
        },
        Some(page) => card(title, plain.as_deref(), &page, READ_MORE),
        None => AppMessage::Text {
            text: Content {
                content: format!(
                    "{}{TRUNCATION_MARK}",
                    cut(&text, MAX_TEXT_BYTES - TRUNCATION_MARK.len())
                ),
            },
        },
    }
}

/// `title`, a blank line, `content` — or whichever of the two is present.
fn join(title: Option<&str>, content: Option<&str>) -> String {
    match (title, content) {
        (Some(t), Some(c)) => format!("{t}\n\n{c}"),
        (Some(t), None) => t.to_owned(),
        (None, Some(c)) => c.to_owned(),
        (None, None) => String::new(),
    }
}

/// A card: the title (else the content's first line) and an excerpt of the content, both
/// cut to WeCom's limits on grapheme boundaries, opening `url`.
fn card(title: Option<&str>, plain: Option<&str>, url: &str, button: &str) -> AppMessage {
    let plain = plain.unwrap_or("").trim();
    let (title, rest) = match title {
        Some(t) => (t, plain),
        None => {
            let (first, rest) = plain.split_once('\n').unwrap_or((plain, ""));
            (first.trim(), rest.trim())
        }
    };
    let title = if title.is_empty() { "pushbot" } else { title };
    // Blank lines waste a card's few bytes: one line break between paragraphs.
    let compact: String = rest
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    // WeCom wants a description; a title-only message has nothing more to say.
    let description = if compact.is_empty() { "…" } else { &compact };
    AppMessage::Textcard {
        textcard: TextCard {
            title: excerpt(title, CARD_TITLE_BYTES),
            description: excerpt(description, CARD_DESCRIPTION_BYTES),
            url: url.to_owned(),
            btntxt: button.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageId, UserId};

    const BASE: &str = "https://push.example.com";

    fn outbound(title: Option<&str>, content: Option<&str>) -> Outbound {
        Outbound {
            id: MessageId::from_stored("m1".into()),
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

    fn text_of(m: &AppMessage) -> &str {
        match m {
            AppMessage::Text { text } => &text.content,
            other => panic!("not text: {other:?}"),
        }
    }

    fn card_of(m: &AppMessage) -> &TextCard {
        match m {
            AppMessage::Textcard { textcard } => textcard,
            other => panic!("not a card: {other:?}"),
        }
    }

    #[test]
    fn a_short_message_is_text_title_then_content() {
        assert_eq!(
            text_of(&compose(&outbound(Some("T"), Some("C")), BASE)),
            "T\n\nC"
        );
        assert_eq!(text_of(&compose(&outbound(Some("T"), None), BASE)), "T");
        assert_eq!(text_of(&compose(&outbound(None, Some("C")), BASE)), "C");
    }

    #[test]
    fn exactly_the_limit_is_still_text_one_byte_more_is_a_card() {
        let fits = "x".repeat(MAX_TEXT_BYTES);
        assert_eq!(text_of(&compose(&outbound(None, Some(&fits)), BASE)), fits);
        let over = "x".repeat(MAX_TEXT_BYTES + 1);
        let card = card_of(&compose(&outbound(None, Some(&over)), BASE)).clone();
        assert_eq!(card.url, "https://push.example.com/m/m1?k=KEY");
        assert_eq!(card.btntxt, READ_MORE);
        assert!(card.title.len() <= CARD_TITLE_BYTES);
    }

    #[test]
    fn a_long_chinese_message_becomes_a_card_with_an_excerpt_on_character_boundaries() {
        let long = "磁盘使用率超过阈值。".repeat(100); // 3000 bytes
        let m = compose(
            &outbound(Some("告警 ".repeat(40).as_str()), Some(&long)),
            BASE,
        );
        let card = card_of(&m);
        assert!(card.title.len() <= CARD_TITLE_BYTES, "{}", card.title.len());
        assert!(card.description.len() <= CARD_DESCRIPTION_BYTES);
        assert!(card.description.len() > CARD_DESCRIPTION_BYTES - 10);
        assert!(card.description.starts_with("磁盘使用率超过阈值。"));
        assert!(card.description.ends_with('…'));
    }

    #[test]
    fn without_a_title_the_card_takes_the_first_line() {
        let long = format!("first line\n{}", "y".repeat(3000));
        let card = card_of(&compose(&outbound(None, Some(&long)), BASE)).clone();
        assert_eq!(card.title, "first line");
        assert!(card.description.starts_with("yyy"));
    }

    #[test]
    fn a_card_description_has_no_blank_lines() {
        let long = format!("a\n\n\nb  \n\nc\n{}", "z".repeat(3000));
        let card = card_of(&compose(&outbound(Some("T"), Some(&long)), BASE)).clone();
        assert!(
            card.description.starts_with("a\nb\nc\nzzz"),
            "{}",
            card.description
        );
    }

    #[test]
    fn a_sender_url_makes_a_card_that_opens_it() {
        let mut m = outbound(Some("Deploy"), Some("v1.2.3"));
        m.url = Some(" https://ci.example.com/run/7 ".into());
        let card = card_of(&compose(&m, BASE)).clone();
        assert_eq!(card.url, "https://ci.example.com/run/7");
        assert_eq!(
            (card.title.as_str(), card.description.as_str()),
            ("Deploy", "v1.2.3")
        );
        assert_eq!(card.btntxt, OPEN_LINK);
    }

    #[test]
    fn look_card_always_links_the_page() {
        let mut m = outbound(Some("T"), Some("short"));
        m.look = Look::Card;
        assert_eq!(
            card_of(&compose(&m, BASE)).url,
            "https://push.example.com/m/m1?k=KEY"
        );
    }

    #[test]
    fn markdown_is_sent_as_markdown_only_to_members_who_chose_it() {
        let mut m = outbound(Some("Report"), Some("**bold** and [link](https://x.org)"));
        m.format = Format::Markdown;
        // Default look: readable plain text.
        assert_eq!(
            text_of(&compose(&m, BASE)),
            "Report\n\nbold and link (https://x.org)"
        );
        m.look = Look::Markdown;
        match compose(&m, BASE) {
            AppMessage::Markdown { markdown } => assert_eq!(
                markdown.content,
                "### Report\n\n**bold** and [link](https://x.org)"
            ),
            other => panic!("{other:?}"),
        }
        // Plain text stays text even for a markdown member.
        m.format = Format::Text;
        assert!(matches!(compose(&m, BASE), AppMessage::Text { .. }));
    }

    #[test]
    fn an_attachment_goes_as_an_image_or_a_file_message_naming_its_media_id() {
        let json = |m: AppMessage| serde_json::to_value(m).unwrap();
        assert_eq!(
            json(media_message(MediaKind::Image, "M1".into())),
            serde_json::json!({"msgtype": "image", "image": {"media_id": "M1"}})
        );
        assert_eq!(
            json(media_message(MediaKind::File, "M2".into())),
            serde_json::json!({"msgtype": "file", "file": {"media_id": "M2"}})
        );
        // A refused type or size is for good; WeCom busy or down is worth a retry.
        for code in [40004, 40005, 40006, 40009, 44001, 40007] {
            let err = classify(WeComError::Api {
                errcode: code,
                message: "x".into(),
            });
            assert!(matches!(err, ChannelError::Permanent { .. }), "{code}");
        }
        assert!(matches!(
            classify(WeComError::Http(502)),
            ChannelError::Transient {
                unreachable: true,
                ..
            }
        ));
    }

    #[test]
    fn only_text_markdown_and_cards_are_sent_in_shared_calls() {
        let mut m = outbound(Some("T"), Some("C"));
        assert!(coalesces(&compose(&m, BASE)));
        m.look = Look::Card;
        assert!(coalesces(&compose(&m, BASE)));
        for kind in [MediaKind::Image, MediaKind::File] {
            assert!(!coalesces(&media_message(kind, "M".into())));
        }
        // A lost batch is retried, and does not make WeCom look down.
        assert!(matches!(
            lost(),
            ChannelError::Transient {
                unreachable: false,
                ..
            }
        ));
    }

    #[test]
    fn a_long_message_without_a_page_is_cut_and_says_so() {
        let mut m = outbound(None, Some(&"磁盘".repeat(1000)));
        m.page_key = None;
        let text = text_of(&compose(&m, BASE)).to_owned();
        assert!(text.len() <= MAX_TEXT_BYTES);
        assert!(text.len() > MAX_TEXT_BYTES - TRUNCATION_MARK.len() - 3);
        assert!(text.ends_with("(truncated)"));
    }
}
