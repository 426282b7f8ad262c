//! The e-mail channel: one mail per message over SMTP (lettre, with its connection pool and
//! rustls), `text/plain` with an HTML alternative.
//!
//! Failures are classified the way the scheduler needs them: a 5xx reply is permanent for
//! this message; a 4xx reply is transient (the server answered: it is up); no connection,
//! a timeout, a TLS failure or a broken session is transient *and* unreachable, so the
//! scheduler probes the server instead of sending it the whole queue.
//!
//! A message's images and files are attached to its mail ([`Attachments::Bundled`]):
//! `multipart/mixed`, the text and HTML first, then each file under its sniffed content
//! type and its name (RFC 2231-encoded where it is not ASCII, as lettre writes it). Each
//! file is read whole from the store for the mail (at most `media.max_files` of
//! `media.max_bytes`).

use std::time::Duration;

use futures_util::future::BoxFuture;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::{PoolConfig, client::Tls, client::TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret as _;

use super::{Attachments, BadAddress, Binding, Capabilities, Channel, ChannelError, CheckError};
use crate::config::{EmailSettings, SmtpSecurity};
use crate::domain::{ChannelName, EmailAddress, Format, Outbound, OutboundAttachment};
use crate::render::markdown::{escape_html as escape, to_plain_text, to_safe_html};
use crate::store::Store;

/// Longest subject line, in characters (a first line of content can be anything).
const MAX_SUBJECT_CHARS: usize = 120;
/// A mail carries the whole message (the scheduler never cuts for e-mail).
const MAX_MAIL_BYTES: usize = 16 * 1024 * 1024;
/// SMTP connections kept open at most.
const POOL_SIZE: u32 = 4;
/// An idle pooled connection is closed after this (servers drop idle sessions anyway).
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Why the SMTP transport could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up SMTP for {host}: {source}")]
pub struct SetupError {
    host: String,
    #[source]
    source: lettre::transport::smtp::Error,
}

pub struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `host:port`, for log lines.
    server: String,
    binding: Binding,
    /// Where attachments' bytes are (`None`: a channel built only to check the server).
    store: Option<Store>,
}

/// An address as typed, checked and trimmed.
fn parse_address(typed: &str) -> Result<String, BadAddress> {
    EmailAddress::parse(typed)
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| BadAddress::Email {
            typed: typed.to_owned(),
        })
}

fn mask_address(stored: &str) -> String {
    EmailAddress::parse(stored).map_or_else(|| "***".to_owned(), |a| a.masked())
}

/// The verification mail: subject and body (its text is the bot's).
fn code_mail(code: &str, ttl_minutes: u64) -> (Option<String>, String) {
    let (subject, body) = crate::bot::verification_mail(code, ttl_minutes);
    (Some(subject), body)
}

impl EmailChannel {
    pub fn new(settings: &EmailSettings) -> Result<Self, SetupError> {
        let host = settings.host.as_str();
        let setup = |source| SetupError {
            host: host.to_owned(),
            source,
        };
        let tls = || TlsParameters::new(host.to_owned()).map_err(setup);
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(settings.port())
            .timeout(Some(settings.timeout))
            .pool_config(
                PoolConfig::new()
                    .max_size(POOL_SIZE)
                    .idle_timeout(POOL_IDLE),
            );
        builder = match settings.security {
            SmtpSecurity::Tls => builder.tls(Tls::Wrapper(tls()?)),
            SmtpSecurity::StartTls => builder.tls(Tls::Required(tls()?)),
            SmtpSecurity::None => builder.tls(Tls::None),
        };
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            ));
        }
        Ok(Self {
            transport: builder.build(),
            from: settings.from.mailbox().clone(),
            server: format!("{host}:{}", settings.port()),
            binding: Binding {
                code_ttl: settings.code_ttl,
                codes_per_hour: settings.codes_per_hour,
                command: "email",
                example: "you@example.com",
                noun: ("邮箱", "e-mail address"),
                parse: parse_address,
                mask: mask_address,
                code_message: code_mail,
            },
            store: None,
        })
    }

    /// The channel that delivers: it reads attachments from `store`.
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Each attachment of `message` with its bytes, read whole from the store.
    async fn files<'m>(
        &self,
        message: &'m Outbound,
    ) -> Result<Vec<(&'m OutboundAttachment, Vec<u8>)>, ChannelError> {
        if message.attachments.is_empty() {
            return Ok(Vec::new());
        }
        let Some(store) = &self.store else {
            return Err(ChannelError::Permanent {
                reason: "this e-mail channel cannot read attachments".to_owned(),
            });
        };
        let mut files = Vec::with_capacity(message.attachments.len());
        for attachment in &message.attachments {
            let bytes = store.blob_bytes(&attachment.blob_id).await.map_err(|e| {
                ChannelError::Transient {
                    reason: format!(
                        "could not read the attachment {}: {}",
                        attachment.filename,
                        crate::error::chain(&e)
                    ),
                    unreachable: false,
                }
            })?;
            files.push((attachment, bytes));
        }
        Ok(files)
    }
}

impl Channel for EmailChannel {
    fn name(&self) -> ChannelName {
        ChannelName::Email
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_text_bytes: MAX_MAIL_BYTES,
            digests: false,
            attachments: Attachments::Bundled,
        }
    }

    fn binding(&self) -> Option<&Binding> {
        Some(&self.binding)
    }

    /// Connects (and logs in, if configured) once.
    fn check(&self) -> BoxFuture<'_, Result<String, CheckError>> {
        Box::pin(async move {
            match self.transport.test_connection().await {
                Ok(true) => Ok(format!("SMTP {}", self.server)),
                Ok(false) => Err(CheckError::SmtpRefused {
                    server: self.server.clone(),
                }),
                Err(error) => Err(CheckError::Smtp {
                    server: self.server.clone(),
                    error,
                }),
            }
        })
    }

    fn deliver<'a>(&'a self, message: &'a Outbound) -> BoxFuture<'a, Result<(), ChannelError>> {
        Box::pin(async move {
            let files = self.files(message).await?;
            let mail = render(message, &self.from, files)?;
            self.transport.send(mail).await.map(drop).map_err(classify)
        })
    }
}

/// The mail for a message, with `files` attached. Fails (permanently) only without an
/// address.
fn render(
    message: &Outbound,
    from: &Mailbox,
    files: Vec<(&OutboundAttachment, Vec<u8>)>,
) -> Result<Message, ChannelError> {
    let permanent = |reason: String| ChannelError::Permanent { reason };
    let Some(address) = &message.address else {
        return Err(permanent("no e-mail address to send to".to_owned()));
    };
    let to: Mailbox = address
        .parse()
        .map_err(|e| permanent(format!("{address} is not a usable address: {e}")))?;
    let (text, html) = bodies(message);
    let alternative = MultiPart::alternative_plain_html(text, html);
    let body = if files.is_empty() {
        alternative
    } else {
        files.into_iter().fold(
            MultiPart::mixed().multipart(alternative),
            |mixed, (attachment, bytes)| {
                let file = Attachment::new(attachment.filename.clone());
                mixed.singlepart(file.body(bytes, attachment_type(&attachment.mime)))
            },
        )
    };
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject(
            message.title.as_deref(),
            message.content.as_deref(),
        ))
        // The message id, so that a copy sent twice across a crash is recognisable (and
        // threads in mail clients stay one per message).
        .message_id(Some(format!("<{}@pushbot>", message.id)))
        .multipart(body)
        .map_err(|e| permanent(format!("cannot build the mail: {e}")))
}

/// An attachment's content type: the sniffed one (always a valid type; anything else
/// goes as bytes).
fn attachment_type(mime: &str) -> ContentType {
    ContentType::parse(mime)
        .or_else(|_| ContentType::parse("application/octet-stream"))
        .unwrap_or(ContentType::TEXT_PLAIN)
}

/// The plain-text and HTML bodies: markdown content as readable text and rendered
/// (sanitised) HTML; plain content as it is, escaped in the HTML; a sender's link last.
///
/// Nothing in the mail loads by itself: a markdown image is a link to its address (see
/// [`to_safe_html`]), so a sender cannot learn from a pixel when or where the mail was read.
fn bodies(message: &Outbound) -> (String, String) {
    let content = message.content.as_deref().filter(|c| !c.trim().is_empty());
    let link = message
        .url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    match (message.format, content) {
        (Format::Markdown, Some(markdown)) => {
            let mut text = to_plain_text(markdown);
            let mut fragment = to_safe_html(markdown);
            if let Some(link) = link {
                text.push_str(&format!("\n\n{link}"));
                // A link the sender chose: shown as text too, and only http(s) (checked
                // when it was accepted).
                fragment.push_str(&format!("<p><a href=\"{0}\">{0}</a></p>", escape(link)));
            }
            let html = format!(
                "<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body>\
                 <div style=\"font-family:-apple-system,'PingFang SC','Microsoft YaHei',sans-serif\">\
                 {fragment}</div></body></html>"
            );
            (text, html)
        }
        _ => {
            let mut text = body_text(message.title.as_deref(), content);
            if let Some(link) = link {
                text.push_str(&format!("\n\n{link}"));
            }
            let html = html(&text);
            (text, html)
        }
    }
}

/// The title, else the first non-empty line of the content, cut to a readable length.
pub fn subject(title: Option<&str>, content: Option<&str>) -> String {
    let line = title
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .or_else(|| {
            content
                .unwrap_or("")
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
        })
        .unwrap_or("pushbot");
    // Subjects are one line.
    let line: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match line.char_indices().nth(MAX_SUBJECT_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// The plain-text body: the content (the title when there is no content).
pub fn body_text(title: Option<&str>, content: Option<&str>) -> String {
    match (title, content) {
        (_, Some(c)) if !c.is_empty() => c.to_owned(),
        (Some(t), _) => t.to_owned(),
        _ => String::new(),
    }
}

/// The HTML alternative: the text, escaped, line breaks kept.
pub fn html(text: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body>\
         <div style=\"white-space:pre-wrap;font-family:-apple-system,'PingFang SC','Microsoft YaHei',sans-serif\">\
         {}</div></body></html>",
        escape(text)
    )
}

/// 5xx: permanent for this message. 4xx: the server is up but not now. No answer at all
/// (connection, timeout, TLS, a broken session): the server is unreachable.
fn classify(err: lettre::transport::smtp::Error) -> ChannelError {
    let reason = format!("SMTP: {}", crate::error::chain(&err));
    if err.is_permanent() || err.is_client() {
        ChannelError::Permanent { reason }
    } else if err.is_transient() {
        ChannelError::Transient {
            reason,
            unreachable: false,
        }
    } else {
        ChannelError::Transient {
            reason,
            unreachable: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Look, MessageId, UserId};

    #[test]
    fn subject_is_the_title_or_the_first_line() {
        assert_eq!(subject(Some("Disk full"), Some("sda1")), "Disk full");
        assert_eq!(subject(None, Some("\n  first line \nsecond")), "first line");
        assert_eq!(subject(Some("  "), Some("c")), "c");
        assert_eq!(subject(None, None), "pushbot");
        assert_eq!(subject(Some("a\rb"), None), "a b");
        let long = "磁".repeat(200);
        let cut = subject(Some(&long), None);
        assert_eq!(cut.chars().count(), MAX_SUBJECT_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn html_is_escaped() {
        let h = html("<script>alert('x')</script> & \"q\"");
        assert!(h.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"));
        assert!(!h.contains("<script>"));
    }

    #[test]
    fn markdown_is_readable_text_and_rendered_safe_html_and_the_link_comes_last() {
        let outbound = Outbound {
            id: MessageId::generate(),
            userid: UserId::new("alice"),
            title: Some("Report".into()),
            content: Some("## 结果\n**ok** <script>x</script> [log](javascript:alert(1))".into()),
            address: Some("alice@example.com".to_owned()),
            format: Format::Markdown,
            look: Look::Text,
            url: Some("https://ci.example.com/7?a=1&b=2".into()),
            page_key: None,
            verification: false,
            attachments: Vec::new(),
            part: crate::domain::Part::Whole,
            group_send: None,
        };
        let (text, html) = bodies(&outbound);
        assert_eq!(
            text,
            "结果\n\nok <script>x</script> log (javascript:alert(1))\n\nhttps://ci.example.com/7?a=1&b=2"
        );
        assert!(html.contains("<h2>结果</h2>"), "{html}");
        assert!(html.contains("<strong>ok</strong>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(
            !html.contains("<script>") && !html.contains("javascript:"),
            "{html}"
        );
        assert!(
            html.contains("<a href=\"https://ci.example.com/7?a=1&amp;b=2\">"),
            "{html}"
        );
        // Plain text stays as it is.
        let plain = Outbound {
            format: Format::Text,
            url: None,
            ..outbound
        };
        let (text, html) = bodies(&plain);
        assert_eq!(
            text,
            "## 结果\n**ok** <script>x</script> [log](javascript:alert(1))"
        );
        assert!(html.contains("## 结果"), "{html}");
    }

    #[test]
    fn markdown_images_are_links_in_the_mail_never_loaded() {
        let outbound = Outbound {
            id: MessageId::generate(),
            userid: UserId::new("alice"),
            title: Some("Alert".into()),
            content: Some("![graph](https://tracker.example/p.png?u=alice) done".into()),
            address: Some("alice@example.com".to_owned()),
            format: Format::Markdown,
            look: Look::Text,
            url: None,
            page_key: None,
            verification: false,
            attachments: Vec::new(),
            part: crate::domain::Part::Whole,
            group_send: None,
        };
        let (text, html) = bodies(&outbound);
        assert_eq!(
            text,
            "[image: graph] https://tracker.example/p.png?u=alice done"
        );
        assert!(!html.contains("<img") && !html.contains("src="), "{html}");
        assert!(
            html.contains(
                "<a href=\"https://tracker.example/p.png?u=alice\" \
                 rel=\"noopener noreferrer nofollow\" target=\"_blank\">🖼 graph</a> done"
            ),
            "{html}"
        );
    }

    #[test]
    fn the_mail_carries_subject_both_parts_and_the_message_id() {
        let id = MessageId::generate();
        let outbound = Outbound {
            id: id.clone(),
            userid: UserId::new("alice"),
            title: Some("Backup <done>".into()),
            content: Some("42 GB 已完成".into()),
            address: Some("alice@example.com".to_owned()),
            format: Format::Text,
            look: Look::Text,
            url: None,
            page_key: None,
            verification: false,
            attachments: Vec::new(),
            part: crate::domain::Part::Whole,
            group_send: None,
        };
        let from: Mailbox = "pushbot <bot@example.com>".parse().unwrap();
        let mail = render(&outbound, &from, Vec::new()).unwrap();
        let raw = String::from_utf8(mail.formatted()).unwrap();
        assert!(
            raw.contains(&format!("Message-ID: <{id}@pushbot>")),
            "{raw}"
        );
        assert!(raw.contains("To: alice@example.com"), "{raw}");
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("text/plain"), "{raw}");
        assert!(raw.contains("text/html"), "{raw}");
        let no_address = Outbound {
            address: None,
            ..outbound
        };
        assert!(matches!(
            render(&no_address, &from, Vec::new()),
            Err(ChannelError::Permanent { .. })
        ));
    }

    #[test]
    fn files_are_attached_as_they_are_under_their_names_and_types() {
        let file = |name: &str, mime: &str| OutboundAttachment {
            filename: name.into(),
            kind: crate::media::MediaKind::File,
            mime: mime.into(),
            size: 0,
            sha256: String::new(),
            blob_id: crate::store::BlobId::from_stored("b".into()),
        };
        let png = file("图表 chart.png", "image/png");
        let bin = file("dump.bin", "not a type");
        let outbound = Outbound {
            id: MessageId::generate(),
            userid: UserId::new("alice"),
            title: Some("Report".into()),
            content: Some("see attached".into()),
            address: Some("alice@example.com".to_owned()),
            format: Format::Text,
            look: Look::Text,
            url: None,
            page_key: None,
            verification: false,
            attachments: vec![png.clone(), bin.clone()],
            part: crate::domain::Part::Whole,
            group_send: None,
        };
        let from: Mailbox = "pushbot <bot@example.com>".parse().unwrap();
        let png_bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let mail = render(
            &outbound,
            &from,
            vec![(&png, png_bytes.clone()), (&bin, vec![0, 1, 2, 0xff])],
        )
        .unwrap();
        let raw = mail.formatted();
        let parsed = mailparse::parse_mail(&raw).unwrap();
        assert_eq!(parsed.ctype.mimetype, "multipart/mixed");
        assert_eq!(parsed.subparts.len(), 3);
        assert_eq!(parsed.subparts[0].ctype.mimetype, "multipart/alternative");
        let attached: Vec<(String, String, Vec<u8>)> = parsed.subparts[1..]
            .iter()
            .map(|p| {
                let disposition = p.get_content_disposition();
                (
                    disposition.params["filename"].clone(),
                    p.ctype.mimetype.clone(),
                    p.get_body_raw().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            attached,
            [
                (
                    "图表 chart.png".to_owned(),
                    "image/png".to_owned(),
                    png_bytes
                ),
                (
                    "dump.bin".to_owned(),
                    "application/octet-stream".to_owned(),
                    vec![0, 1, 2, 0xff]
                ),
            ]
        );
        // The name is RFC 2231-encoded, not raw UTF-8 in the header.
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("filename*"), "{text}");
    }
}
