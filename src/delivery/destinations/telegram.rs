//! Telegram through the server's bot (`[destinations] telegram_bot_token`):
//! `POST {base}/bot{TOKEN}/sendMessage` with `chat_id`, `text` and `parse_mode: HTML`,
//! answered `{"ok":true,"result":{…}}` or `{"ok":false,"error_code":…,"description":…,
//! "parameters":{"retry_after":…,"migrate_to_chat_id":…}}` with the HTTP status of the
//! error.
//!
//! Rendering ([`render`]): Telegram's HTML subset — every `<`, `>` and `&` of the text
//! escaped; markdown content rendered to `<b>`, `<i>`, `<s>`, `<code>`, `<pre>`,
//! `<blockquote>` and `<a href>` (only `http(s)` links), lists and tables as text. A message
//! longer than 4096 characters (counted in UTF-16 units, as Telegram counts; tags do not
//! count) goes as escaped plain text cut on grapheme boundaries, with the page linked.
//! Should Telegram still refuse the markup (`can't parse entities`), the message is sent
//! again as plain text without a parse mode.
//!
//! A group that became a supergroup answers with `migrate_to_chat_id`: the message is sent
//! there, and [`Delivered::ChatMoved`] tells the caller to store the new id. `429` carries
//! `retry_after` (seconds). Limits: about one message a second in one chat, 20 a minute in a
//! group.
//!
//! `api.telegram.org` is not reachable from mainland China: give the client a proxy, or
//! point `[destinations] telegram_base` at a reverse proxy.

use std::time::Duration;

use pulldown_cmark::{CodeBlockKind, Event, LinkType, Options, Parser, Tag, TagEnd};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::http::{Answer, call, status_error};
use super::text::{EMPTY, Link, Measure, Shown, clickable, fit, join};
use super::{Check, Delivered, DestError, Envelope, quote, refusal};

const LABEL: &str = "Telegram";
/// A message's text, in UTF-16 code units after entity parsing.
pub const MAX_TEXT_UNITS: usize = 4096;
/// A title longer than this is cut (it would leave no room for the content).
const MAX_TITLE_UNITS: usize = 1024;

/// `sendMessage`'s parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SendMessage {
    pub chat_id: String,
    pub text: String,
    /// `HTML`, or none for the plain-text fallback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parse_mode: Option<&'static str>,
    /// Previews off: a page link would otherwise be fetched by Telegram.
    pub link_preview_options: LinkPreviewOptions,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkPreviewOptions {
    pub is_disabled: bool,
}

/// `{base}/bot{token}/{method}`: holds the token, never log it.
pub fn method_url(base: &Url, token: &str, method: &str) -> Url {
    super::at(base, &format!("/bot{token}/{method}"))
}

/// The message for `envelope` in `parse_mode: HTML` (see the module documentation).
pub fn render(envelope: &Envelope<'_>, chat_id: &str) -> SendMessage {
    let shown = Shown::of(envelope);
    let title = shown
        .title
        .map(|t| Measure::Utf16.excerpt(t, MAX_TITLE_UNITS));
    let units = |s: &str| Measure::Utf16.len(s);
    let link_units = |link: &Link| {
        if link.clickable {
            units(link.label)
        } else {
            units(&link.plain())
        }
    };
    if let (true, Some(content)) = (shown.markdown, shown.content) {
        let (html, visible) = markdown_to_html(content);
        let links: Vec<Link> = shown.url_link().into_iter().collect();
        let title_units = title.as_deref().map_or(0, |t| units(t) + 2);
        let links_units = if links.is_empty() {
            0
        } else {
            2 + links.iter().map(link_units).sum::<usize>() + links.len() - 1
        };
        if visible > 0 && title_units + visible + links_units <= MAX_TEXT_UNITS {
            let mut text = String::new();
            if let Some(title) = &title {
                text.push_str(&format!("<b>{}</b>\n\n", escape(title)));
            }
            text.push_str(&html);
            push_links(&mut text, &links);
            return html_message(chat_id, text);
        }
    }
    // Plain text, escaped: the title in bold, then the content, cut when needed.
    let content = shown.plain_content();
    let body = match (&title, content) {
        (_, Some(content)) => content,
        (Some(_), None) => String::new(),
        (None, None) => EMPTY.to_owned(),
    };
    let title_units = title.as_deref().map_or(0, |t| units(t) + 2);
    let fitted = fit(
        &shown,
        body,
        MAX_TEXT_UNITS - title_units,
        Measure::Utf16,
        link_units,
    );
    let mut text = String::new();
    if let Some(title) = &title {
        text.push_str(&format!("<b>{}</b>", escape(title)));
        if !fitted.body.is_empty() {
            text.push_str("\n\n");
        }
    }
    text.push_str(&escape(&fitted.body));
    push_links(&mut text, &fitted.links);
    html_message(chat_id, text)
}

/// The message as plain text without a parse mode (when Telegram refuses the markup).
pub fn render_plain(envelope: &Envelope<'_>, chat_id: &str) -> SendMessage {
    let shown = Shown::of(envelope);
    let body = join(shown.title, shown.plain_content().as_deref());
    let fitted = fit(&shown, body, MAX_TEXT_UNITS, Measure::Utf16, |link| {
        Measure::Utf16.len(&link.plain())
    });
    SendMessage {
        chat_id: chat_id.to_owned(),
        text: fitted.plain(),
        parse_mode: None,
        link_preview_options: LinkPreviewOptions { is_disabled: true },
    }
}

fn html_message(chat_id: &str, text: String) -> SendMessage {
    SendMessage {
        chat_id: chat_id.to_owned(),
        text,
        parse_mode: Some("HTML"),
        link_preview_options: LinkPreviewOptions { is_disabled: true },
    }
}

/// A blank line and the links, one per line, as `<a href>` when they can be.
fn push_links(text: &mut String, links: &[Link]) {
    if links.is_empty() {
        return;
    }
    if !text.is_empty() {
        text.push_str("\n\n");
    }
    let rendered: Vec<String> = links
        .iter()
        .map(|link| {
            if link.clickable {
                format!(
                    "<a href=\"{}\">{}</a>",
                    escape_attribute(&link.href),
                    link.label
                )
            } else {
                escape(&link.plain())
            }
        })
        .collect();
    text.push_str(&rendered.join("\n"));
}

/// `&`, `<` and `>` as the entities Telegram knows.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

/// [`escape`] and `"`, for a double-quoted attribute.
fn escape_attribute(text: &str) -> String {
    escape(text).replace('"', "&quot;")
}

/// Markdown as Telegram HTML, and how many UTF-16 units of it Telegram shows.
pub fn markdown_to_html(markdown: &str) -> (String, usize) {
    let options =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    let mut writer = HtmlWriter::default();
    for event in Parser::new_ext(markdown, options) {
        writer.event(event);
    }
    (writer.out, writer.visible)
}

/// Streams pulldown-cmark events into Telegram's HTML subset. Blocks ask for a gap (one or
/// two line breaks) before the next text, the largest request winning; lines inside lists
/// get the item's marker or indentation.
#[derive(Default)]
struct HtmlWriter {
    out: String,
    /// UTF-16 units of text written (what Telegram counts).
    visible: usize,
    /// Line breaks owed before the next text.
    owed: usize,
    /// Whether anything was written (no leading line breaks).
    started: bool,
    /// Whether the current line has its prefix.
    in_line: bool,
    /// Each open list's next number (`None`: bullets).
    lists: Vec<Option<u64>>,
    /// The marker the current item's first line still needs.
    marker: Option<String>,
    quotes: usize,
    /// Per open link or image: whether an `<a>` was written for it.
    anchors: Vec<bool>,
    code_block: bool,
    /// What closes the open code block.
    pre_close: &'static str,
    /// Cells so far in the current table row.
    cells: usize,
}

impl HtmlWriter {
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(text) => self.text(&text),
            Event::Html(raw) | Event::InlineHtml(raw) => self.text(&raw),
            Event::Code(code) => {
                self.open("<code>");
                self.visible(&code);
                self.out.push_str("</code>");
            }
            Event::InlineMath(text) | Event::DisplayMath(text) => self.visible(&text),
            Event::FootnoteReference(name) => self.visible(&format!("[{name}]")),
            Event::SoftBreak | Event::HardBreak => self.line_break(),
            Event::Rule => {
                self.gap(2);
                self.visible("——————");
                self.gap(1);
            }
            Event::TaskListMarker(done) => {
                let checkbox = if done { "☑ " } else { "☐ " };
                match &mut self.marker {
                    Some(marker) if marker == "• " => *marker = checkbox.to_owned(),
                    Some(marker) => marker.push_str(checkbox),
                    None => self.visible(checkbox),
                }
            }
        }
    }

    fn start(&mut self, tag: Tag<'_>) {
        match tag {
            Tag::Paragraph | Tag::HtmlBlock | Tag::Table(_) => self.gap(2),
            Tag::Heading { .. } => {
                self.gap(2);
                self.open("<b>");
            }
            Tag::BlockQuote(_) => {
                self.gap(2);
                if self.quotes == 0 {
                    self.flush_breaks();
                    self.out.push_str("<blockquote>");
                }
                self.quotes += 1;
            }
            Tag::CodeBlock(kind) => {
                self.gap(2);
                self.flush_breaks();
                self.started = true;
                self.code_block = true;
                let language = match kind {
                    CodeBlockKind::Fenced(info) => info
                        .split_whitespace()
                        .next()
                        .filter(|l| {
                            l.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"+#-_.".contains(&b))
                        })
                        .map(str::to_owned),
                    CodeBlockKind::Indented => None,
                };
                match language {
                    Some(language) => {
                        self.out
                            .push_str(&format!("<pre><code class=\"language-{language}\">"));
                        self.pre_close = "</code></pre>";
                    }
                    None => {
                        self.out.push_str("<pre>");
                        self.pre_close = "</pre>";
                    }
                }
            }
            Tag::List(start) => {
                let nested = self.marker.is_some() || !self.lists.is_empty();
                self.gap(if nested { 1 } else { 2 });
                self.lists.push(start);
            }
            Tag::Item => {
                self.gap(1);
                let marker = match self.lists.last_mut() {
                    Some(Some(number)) => {
                        let marker = format!("{number}. ");
                        *number = number.saturating_add(1);
                        marker
                    }
                    _ => "• ".to_owned(),
                };
                self.marker = Some(marker);
            }
            Tag::Emphasis => self.open("<i>"),
            Tag::Strong => self.open("<b>"),
            Tag::Strikethrough => self.open("<s>"),
            Tag::Link {
                link_type,
                dest_url,
                ..
            } => {
                let dest = if link_type == LinkType::Email {
                    format!("mailto:{dest_url}")
                } else {
                    dest_url.trim().to_owned()
                };
                self.anchor(&dest);
            }
            Tag::Image { dest_url, .. } => {
                self.anchor(dest_url.trim());
                self.visible("🖼 ");
            }
            Tag::TableHead | Tag::TableRow => self.cells = 0,
            Tag::TableCell => {
                if self.cells > 0 {
                    self.visible(" | ");
                }
                self.cells += 1;
            }
            _ => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Paragraph | TagEnd::HtmlBlock | TagEnd::Table => self.gap(1),
            TagEnd::Heading(_) => {
                self.out.push_str("</b>");
                self.gap(1);
            }
            TagEnd::BlockQuote(_) => {
                self.quotes = self.quotes.saturating_sub(1);
                if self.quotes == 0 {
                    self.out.push_str("</blockquote>");
                }
                self.gap(1);
            }
            TagEnd::CodeBlock => {
                // The block's text ends with its last line break: not shown.
                if self.out.ends_with('\n') {
                    self.out.pop();
                    self.visible = self.visible.saturating_sub(1);
                }
                self.out.push_str(self.pre_close);
                self.code_block = false;
                self.in_line = false;
                self.gap(1);
            }
            TagEnd::List(_) => {
                self.lists.pop();
                self.gap(1);
            }
            TagEnd::Item => {
                if self.marker.is_some() {
                    // An empty item still shows its marker.
                    self.begin_line();
                }
                self.gap(1);
            }
            TagEnd::Emphasis => self.out.push_str("</i>"),
            TagEnd::Strong => self.out.push_str("</b>"),
            TagEnd::Strikethrough => self.out.push_str("</s>"),
            TagEnd::Link | TagEnd::Image => {
                let anchored = self.anchors.pop() == Some(true);
                if anchored {
                    self.out.push_str("</a>");
                }
            }
            TagEnd::TableHead | TagEnd::TableRow => self.gap(1),
            _ => {}
        }
    }

    /// An `<a>` for a link or image to `dest` when it may be one (http(s), not inside
    /// another).
    fn anchor(&mut self, dest: &str) {
        let linked = clickable(dest) && !self.anchors.iter().any(|&a| a);
        if linked {
            self.open(&format!("<a href=\"{}\">", escape_attribute(dest)));
        }
        self.anchors.push(linked);
    }

    /// Text that may span lines.
    fn text(&mut self, text: &str) {
        if self.code_block {
            self.out.push_str(&escape(text));
            self.visible += Measure::Utf16.len(text);
            return;
        }
        for (i, line) in text.split('\n').enumerate() {
            if i > 0 {
                self.line_break();
            }
            if !line.is_empty() {
                self.visible(line);
            }
        }
    }

    /// Text within the current line, escaped.
    fn visible(&mut self, text: &str) {
        self.begin_line();
        self.out.push_str(&escape(text));
        self.visible += Measure::Utf16.len(text);
    }

    /// An opening tag, on a begun line.
    fn open(&mut self, tag: &str) {
        self.begin_line();
        self.out.push_str(tag);
    }

    fn line_break(&mut self) {
        self.owed += 1;
        self.in_line = false;
    }

    fn gap(&mut self, breaks: usize) {
        self.owed = self.owed.max(breaks);
        self.in_line = false;
    }

    /// Writes the owed line breaks (none before the first text).
    fn flush_breaks(&mut self) {
        if self.started {
            for _ in 0..self.owed {
                self.out.push('\n');
                self.visible += 1;
            }
        }
        self.owed = 0;
    }

    /// The owed line breaks and the line's prefix (list indentation or marker), once per
    /// line.
    fn begin_line(&mut self) {
        if self.in_line || self.code_block {
            return;
        }
        self.flush_breaks();
        let depth = self.lists.len();
        let indent = "  ".repeat(depth.saturating_sub(1));
        let prefix = match self.marker.take() {
            Some(marker) => format!("{indent}{marker}"),
            None if depth > 0 => format!("{indent}  "),
            None => String::new(),
        };
        self.out.push_str(&prefix);
        self.visible += Measure::Utf16.len(&prefix);
        self.in_line = true;
        self.started = true;
    }
}

#[derive(Debug, Deserialize)]
struct Reply {
    ok: bool,
    error_code: Option<i64>,
    #[serde(default)]
    description: String,
    parameters: Option<Parameters>,
    result: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Parameters {
    retry_after: Option<u64>,
    migrate_to_chat_id: Option<i64>,
}

/// Why Telegram did not take a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    Error(DestError),
    /// The group moved to this chat id.
    Moved(String),
    /// The markup was refused (`can't parse entities`).
    Markup(DestError),
}

/// A call's outcome from Telegram's answer: `result` when `ok`.
pub(super) fn classify(answer: &Answer) -> Result<serde_json::Value, Refusal> {
    let Ok(reply) = serde_json::from_slice::<Reply>(&answer.body) else {
        return Err(Refusal::Error(status_error(
            LABEL,
            answer,
            "check [destinations] telegram_base",
        )));
    };
    if reply.ok {
        return Ok(reply.result.unwrap_or_default());
    }
    let code = reply.error_code.unwrap_or(i64::from(answer.status));
    let description = reply.description;
    let parameters = reply.parameters;
    if let Some(chat) = parameters.as_ref().and_then(|p| p.migrate_to_chat_id) {
        return Err(Refusal::Moved(chat.to_string()));
    }
    let code_text = code.to_string();
    let permanent = |hint: &str| {
        Refusal::Error(DestError::permanent(refusal(
            LABEL,
            "refused",
            &code_text,
            &description,
            hint,
        )))
    };
    let lower = description.to_lowercase();
    let retry_after = parameters.and_then(|p| p.retry_after);
    if code == 429 || retry_after.is_some() {
        let wait = retry_after.map(Duration::from_secs);
        let hint = match wait {
            Some(wait) => format!("flood control: will retry after {} s", wait.as_secs()),
            None => "flood control: will retry".to_owned(),
        };
        return Err(Refusal::Error(DestError::transient(
            refusal(LABEL, "refused for now", &code_text, &description, &hint),
            true,
            wait,
        )));
    }
    Err(match code {
        400 if lower.contains("can't parse entities") => {
            Refusal::Markup(DestError::permanent(refusal(
                LABEL,
                "refused",
                &code_text,
                &description,
                "the message's markup (a pushbot bug)",
            )))
        }
        400 if lower.contains("chat not found") => permanent(
            "the chat id is wrong, or the bot is not in the chat: add the server's bot to the group, then check the id",
        ),
        403 => permanent(
            "the bot was removed from the chat, or blocked: add the server's bot to the chat again (in a channel, as an administrator)",
        ),
        401 | 404 => permanent(
            "the bot token ([destinations] telegram_bot_token) is wrong or was revoked: copy it again from @BotFather",
        ),
        500..=599 => Refusal::Error(DestError::transient(
            refusal(
                LABEL,
                "failed",
                &code_text,
                &description,
                "Telegram is unavailable: will retry",
            ),
            true,
            None,
        )),
        _ => permanent(""),
    })
}

/// The reason when no bot is configured.
const NO_BOT: &str = "no Telegram bot is configured: set [destinations] telegram_bot_token (a token from @BotFather)";

pub(super) async fn send(
    http: &reqwest::Client,
    base: &Url,
    token: Option<&SecretString>,
    chat_id: &str,
    envelope: &Envelope<'_>,
    timeout: Duration,
) -> Result<Delivered, DestError> {
    let token = token.ok_or_else(|| DestError::permanent(NO_BOT.to_owned()))?;
    let url = method_url(base, token.expose_secret(), "sendMessage");
    let mut chat = chat_id.to_owned();
    let (mut moved, mut plain) = (false, false);
    let moved_note = |chat: &str| format!("; the group is now chat {chat}: update the destination");
    loop {
        let message = if plain {
            render_plain(envelope, &chat)
        } else {
            render(envelope, &chat)
        };
        let request = http.post(url.clone()).json(&message);
        let outcome = match call(request, timeout).await {
            Ok(answer) => classify(&answer),
            Err(e) => Err(Refusal::Error(e.into_error(LABEL))),
        };
        let error = match outcome {
            Ok(_) if moved => return Ok(Delivered::ChatMoved { chat_id: chat }),
            Ok(_) => return Ok(Delivered::Sent),
            Err(Refusal::Moved(new)) if !moved && new != chat => {
                chat = new;
                moved = true;
                continue;
            }
            Err(Refusal::Markup(_)) if !plain => {
                plain = true;
                continue;
            }
            Err(Refusal::Moved(new)) => {
                DestError::permanent(format!("{LABEL} says the group moved to chat {new} again"))
            }
            Err(Refusal::Markup(e) | Refusal::Error(e)) => e,
        };
        return Err(if moved {
            error.map_reason(|r| format!("{r}{}", moved_note(&chat)))
        } else {
            error
        });
    }
}

/// `getMe` (the token works) and `getChat` (the bot can see the chat).
pub(super) async fn check(
    http: &reqwest::Client,
    base: &Url,
    token: Option<&SecretString>,
    chat_id: &str,
    timeout: Duration,
) -> Check {
    let Some(token) = token else {
        return Check::Failed(NO_BOT.to_owned());
    };
    let ask = |method: &'static str, body: serde_json::Value| {
        let request = http
            .post(method_url(base, token.expose_secret(), method))
            .json(&body);
        async move {
            match call(request, timeout).await {
                Ok(answer) => classify(&answer).map_err(|r| match r {
                    Refusal::Moved(new) => Check::Failed(format!(
                        "the group is now chat {new}: update the destination"
                    )),
                    Refusal::Error(e) | Refusal::Markup(e) if e.is_transient() => {
                        Check::Unavailable(e.reason().to_owned())
                    }
                    Refusal::Error(e) | Refusal::Markup(e) => Check::Failed(e.reason().to_owned()),
                }),
                Err(e) => Err(Check::Unavailable(e.into_error(LABEL).reason().to_owned())),
            }
        }
    };
    let me = match ask("getMe", serde_json::json!({})).await {
        Ok(me) => me,
        Err(check) => return check,
    };
    let chat = match ask("getChat", serde_json::json!({ "chat_id": chat_id })).await {
        Ok(chat) => chat,
        Err(check) => return check,
    };
    let bot = me["username"].as_str().unwrap_or("?");
    let kind = chat["type"].as_str().unwrap_or("chat");
    let name = chat["title"]
        .as_str()
        .or_else(|| chat["username"].as_str())
        .or_else(|| chat["first_name"].as_str())
        .unwrap_or_default();
    Check::Ok(format!(
        "Telegram bot @{bot} can reach {kind} {:?} ({chat_id})",
        quote(name)
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::prelude::*;

    use super::*;
    use crate::delivery::destinations::tests::{PAGE, bases_at, client, envelope, mock, outbound};
    use crate::delivery::destinations::{Destination, Kind, Settings, parse_chat_url};
    use crate::domain::Format;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.as_bytes().to_vec(),
            retry_after: None,
        }
    }

    /// Checks `html` as Telegram's parser would: only known tags, properly nested, and
    /// every `&` an entity; returns the visible text.
    fn check_html(html: &str) -> Result<String, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut visible = String::new();
        let mut rest = html;
        while let Some(c) = rest.chars().next() {
            match c {
                '<' => {
                    let end = rest.find('>').ok_or("unclosed <")?;
                    let tag = &rest[1..end];
                    if let Some(name) = tag.strip_prefix('/') {
                        let open = stack.pop().ok_or(format!("stray </{name}>"))?;
                        if open != name {
                            return Err(format!("<{open}> closed by </{name}>"));
                        }
                    } else {
                        let name = tag.split(' ').next().unwrap_or_default().to_owned();
                        if !["b", "i", "s", "code", "pre", "a", "blockquote"]
                            .contains(&name.as_str())
                        {
                            return Err(format!("unknown tag <{tag}>"));
                        }
                        if name == "a" && !tag.starts_with("a href=\"") {
                            return Err(format!("bad anchor <{tag}>"));
                        }
                        stack.push(name);
                    }
                    rest = &rest[end + 1..];
                }
                '>' => return Err("a bare >".into()),
                '&' => {
                    let entity = ["&lt;", "&gt;", "&amp;", "&quot;"]
                        .into_iter()
                        .find(|e| rest.starts_with(e))
                        .ok_or(format!(
                            "a bare & at {:?}",
                            rest.chars().take(10).collect::<String>()
                        ))?;
                    visible.push(match entity {
                        "&lt;" => '<',
                        "&gt;" => '>',
                        "&amp;" => '&',
                        _ => '"',
                    });
                    rest = &rest[entity.len()..];
                }
                c => {
                    visible.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        if let Some(open) = stack.pop() {
            return Err(format!("<{open}> never closed"));
        }
        Ok(visible)
    }

    fn md(markdown: &str) -> String {
        let (html, visible) = markdown_to_html(markdown);
        let shown = check_html(&html).unwrap_or_else(|e| panic!("{e}: {html}"));
        assert_eq!(Measure::Utf16.len(&shown), visible, "{html}");
        html
    }

    #[test]
    fn text_is_escaped() {
        let m = outbound(
            Some("a < b & c"),
            Some("x > y; <script>alert(1)</script> &amp;"),
        );
        let msg = render(&envelope(&m), "-100123");
        assert_eq!(
            msg.text,
            "<b>a &lt; b &amp; c</b>\n\nx &gt; y; &lt;script&gt;alert(1)&lt;/script&gt; &amp;amp;"
        );
        assert_eq!(msg.parse_mode, Some("HTML"));
        assert_eq!(
            serde_json::to_value(&msg).unwrap()["link_preview_options"],
            serde_json::json!({"is_disabled": true})
        );
        assert_eq!(msg.chat_id, "-100123");
    }

    #[test]
    fn markdown_becomes_telegrams_html() {
        assert_eq!(
            md("# Disk\n\n**91%** on *web-1*, ~~old~~ `df -h`"),
            "<b>Disk</b>\n\n<b>91%</b> on <i>web-1</i>, <s>old</s> <code>df -h</code>"
        );
        assert_eq!(
            md("see [graph](https://g.example.com/d?a=1&b=\"2\")"),
            "see <a href=\"https://g.example.com/d?a=1&amp;b=&quot;2&quot;\">graph</a>"
        );
        assert_eq!(md("[x](javascript:alert(1))"), "x");
        assert_eq!(
            md("- a\n- b\n  - c\n\n1. one\n2. two"),
            "• a\n• b\n  • c\n\n1. one\n2. two"
        );
        assert_eq!(md("- [x] done\n- [ ] todo"), "☑ done\n☐ todo");
        assert_eq!(
            md("> quoted\n> more\n\nafter"),
            "<blockquote>quoted\nmore</blockquote>\n\nafter"
        );
        assert_eq!(
            md("```rust\nfn main() { a < b }\n```"),
            "<pre><code class=\"language-rust\">fn main() { a &lt; b }</code></pre>"
        );
        assert_eq!(md("    indented\n    code"), "<pre>indented\ncode</pre>");
        assert_eq!(md("<b>raw</b> & co"), "&lt;b&gt;raw&lt;/b&gt; &amp; co");
        assert_eq!(md("| a | b |\n|---|---|\n| 1 | 2 |"), "a | b\n1 | 2");
        assert_eq!(
            md("![cat](https://img.example.com/c.png)"),
            "<a href=\"https://img.example.com/c.png\">🖼 cat</a>"
        );
        assert_eq!(md("a\n\n---\n\nb"), "a\n\n——————\n\nb");
    }

    #[test]
    fn markdown_messages_have_a_bold_title_and_links() {
        let mut m = outbound(Some("Report"), Some("**ok**"));
        m.format = Format::Markdown;
        m.url = Some("https://ci.example.com/7?a=1&b=2".into());
        assert_eq!(
            render(&envelope(&m), "1").text,
            "<b>Report</b>\n\n<b>ok</b>\n\n<a href=\"https://ci.example.com/7?a=1&amp;b=2\">详情</a>"
        );
    }

    #[test]
    fn long_messages_are_plain_cut_within_4096_with_the_page() {
        // Chinese: 4096 characters would be 12 KB; Telegram counts characters.
        let long = "磁盘使用率超过阈值。".repeat(500);
        let mut m = outbound(Some("告警"), Some(&long));
        m.format = Format::Markdown;
        let msg = render(&envelope(&m), "1");
        let shown = check_html(&msg.text).unwrap();
        let units = Measure::Utf16.len(&shown);
        assert!(
            units <= MAX_TEXT_UNITS && units > MAX_TEXT_UNITS - 20,
            "{units}"
        );
        assert!(msg.text.starts_with("<b>告警</b>\n\n磁盘"));
        assert!(
            msg.text.ends_with(&format!(
                "…\n\n<a href=\"{}\">阅读全文</a>",
                PAGE.replace('&', "&amp;")
            )),
            "{}",
            &msg.text[msg.text.len() - 200..]
        );
        // Emoji count two units each.
        let m = outbound(None, Some(&"😀".repeat(3000)));
        let shown = check_html(&render(&envelope(&m), "1").text).unwrap();
        assert!(Measure::Utf16.len(&shown) <= MAX_TEXT_UNITS);
        // Exactly 4096 plain units fit whole.
        let m = outbound(None, Some(&"x".repeat(MAX_TEXT_UNITS)));
        assert_eq!(render(&envelope(&m), "1").text.len(), MAX_TEXT_UNITS);
        // The plain fallback also fits.
        let m = outbound(Some("告警"), Some(&long));
        let msg = render_plain(&envelope(&m), "1");
        assert!(Measure::Utf16.len(&msg.text) <= MAX_TEXT_UNITS);
        assert!(msg.parse_mode.is_none());
        assert!(msg.text.ends_with(&format!("阅读全文: {PAGE}")));
    }

    proptest! {
        #[test]
        fn any_markdown_gives_balanced_escaped_html(
            text in proptest::collection::vec(
                prop_oneof![
                    Just("*"), Just("**"), Just("_"), Just("~~"), Just("`"), Just("```\n"),
                    Just("<"), Just(">"), Just("&"), Just("\""), Just("["), Just("]("),
                    Just(")"), Just("https://x.example/?a=1&b=2"), Just("\n"), Just("\n\n"),
                    Just("> "), Just("- "), Just("1. "), Just("# "), Just("|"), Just("---"),
                    Just("![i]("), Just("<b>"), Just("</i>"), Just("磁盘"), Just("😀"), Just(" "),
                    Just("    "), Just("- [x] "), Just("\\"), Just("<https://a.example>"),
                ],
                0..40,
            )
        ) {
            let markdown = text.concat();
            let (html, visible) = markdown_to_html(&markdown);
            let shown = check_html(&html).map_err(|e| TestCaseError::fail(format!("{e}: {markdown:?} → {html:?}")))?;
            prop_assert_eq!(Measure::Utf16.len(&shown), visible, "{:?} → {:?}", markdown, html);
        }
    }

    #[test]
    fn classification_of_telegrams_answers() {
        assert!(classify(&answer(200, r#"{"ok":true,"result":{"message_id":1}}"#)).is_ok());
        match classify(&answer(
            429,
            r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 5","parameters":{"retry_after":5}}"#,
        )) {
            Err(Refusal::Error(e)) => {
                assert!(matches!(
                    e,
                    DestError::Transient {
                        unreachable: true,
                        ..
                    }
                ));
                assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
                assert!(e.reason().contains("after 5 s"), "{}", e.reason());
            }
            other => panic!("{other:?}"),
        }
        match classify(&answer(
            400,
            r#"{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001234567890}}"#,
        )) {
            Err(Refusal::Moved(chat)) => assert_eq!(chat, "-1001234567890"),
            other => panic!("{other:?}"),
        }
        let permanent = |status: u16, body: &str, says: &str| match classify(&answer(status, body))
        {
            Err(Refusal::Error(e)) => {
                assert!(!e.is_transient(), "{body}");
                assert!(e.reason().contains(says), "{}", e.reason());
            }
            other => panic!("{other:?}"),
        };
        permanent(
            400,
            r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
            "add the server's bot",
        );
        permanent(
            403,
            r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was kicked from the group chat"}"#,
            "add the server's bot to the chat again",
        );
        permanent(
            403,
            r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#,
            "blocked",
        );
        permanent(
            401,
            r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#,
            "@BotFather",
        );
        permanent(
            404,
            r#"{"ok":false,"error_code":404,"description":"Not Found"}"#,
            "telegram_bot_token",
        );
        assert!(matches!(
            classify(&answer(
                400,
                r#"{"ok":false,"error_code":400,"description":"Bad Request: can't parse entities: Unsupported start tag \"x\" at byte offset 0"}"#
            )),
            Err(Refusal::Markup(_))
        ));
        match classify(&answer(502, "<html>Bad Gateway</html>")) {
            Err(Refusal::Error(e)) => assert!(e.is_transient()),
            other => panic!("{other:?}"),
        }
        match classify(&answer(
            500,
            r#"{"ok":false,"error_code":500,"description":"Internal Server Error"}"#,
        )) {
            Err(Refusal::Error(e)) => assert!(e.is_transient()),
            other => panic!("{other:?}"),
        }
    }

    const TOKEN: &str = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11";

    fn settings() -> Settings {
        Settings {
            telegram_bot_token: Some(SecretString::from(TOKEN)),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn sends_follow_a_moved_group_and_fall_back_to_plain_text() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let mock = mock(move |r| {
            counter.fetch_add(1, Ordering::SeqCst);
            assert_eq!(r.path, format!("/bot{TOKEN}/sendMessage"));
            let v = r.json();
            match v["chat_id"].as_str().unwrap() {
                "-42" => (
                    400,
                    r#"{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1009}}"#.into(),
                ),
                "-1009" if v.get("parse_mode").is_some() => (
                    400,
                    r#"{"ok":false,"error_code":400,"description":"Bad Request: can't parse entities: x"}"#.into(),
                ),
                "-1009" => (200, r#"{"ok":true,"result":{"message_id":7}}"#.into()),
                _ => (
                    400,
                    r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#.into(),
                ),
            }
        })
        .await;
        let bases = bases_at(&mock);
        let m = outbound(Some("T"), Some("C"));
        let d = parse_chat_url(Some(Kind::Telegram), "-42", &bases).unwrap();
        assert_eq!(
            d.send(&client(), &settings(), &envelope(&m)).await,
            Ok(Delivered::ChatMoved {
                chat_id: "-1009".into()
            })
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let requests = mock.requests();
        assert_eq!(requests[2].json()["text"], "T\n\nC");
        let d = parse_chat_url(Some(Kind::Telegram), "-7", &bases).unwrap();
        let e = d
            .send(&client(), &settings(), &envelope(&m))
            .await
            .unwrap_err();
        assert!(!e.is_transient());
        // Without a bot.
        let e = d
            .send(&client(), &Settings::default(), &envelope(&m))
            .await
            .unwrap_err();
        assert!(e.reason().contains("telegram_bot_token"));
    }

    #[tokio::test]
    async fn check_asks_get_me_and_get_chat_and_never_shows_the_token() {
        let mock = mock(|r| {
            if r.path.ends_with("/getMe") {
                (200, r#"{"ok":true,"result":{"id":1,"is_bot":true,"username":"pushbot_bot"}}"#.into())
            } else if r.json()["chat_id"] == "-1001" {
                (200, r#"{"ok":true,"result":{"id":-1001,"type":"supergroup","title":"运维"}}"#.into())
            } else {
                (400, format!(r#"{{"ok":false,"error_code":400,"description":"Bad Request: chat not found for {TOKEN}"}}"#))
            }
        })
        .await;
        let bases = bases_at(&mock);
        let d =
            Destination::from_config(Kind::Telegram, None, Some("-1001"), None, &bases).unwrap();
        assert_eq!(
            d.check(&client(), &settings()).await,
            Check::Ok("Telegram bot @pushbot_bot can reach supergroup \"运维\" (-1001)".into())
        );
        let d = Destination::from_config(Kind::Telegram, None, Some("-2"), None, &bases).unwrap();
        match d.check(&client(), &settings()).await {
            Check::Failed(text) => {
                assert!(text.contains("chat not found"), "{text}");
                assert!(!text.contains("ABC-DEF"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            d.check(&client(), &Settings::default()).await,
            Check::Failed(_)
        ));
    }
}
