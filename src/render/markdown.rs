//! Markdown for the two places a message is read: WeCom text (no markdown at all) and the
//! message page (HTML we serve ourselves).
//!
//! Both parse with the same dialect: CommonMark plus GFM tables, strikethrough and task lists.
//! The HTML side is a security boundary: message content comes from whoever holds a push
//! token, and the page (and the mail) is read on the member's device, so nothing the author
//! writes may become markup of its own (raw HTML, `javascript:` links) or make the reader's
//! device fetch anything by itself (images: a tracking pixel tells its author when, and from
//! which address, the message was read).

use pulldown_cmark::{CowStr, Event, LinkType, Options, Parser, Tag, TagEnd, html};

/// The dialect both renderers parse. Footnotes, heading attributes, math and the rest stay
/// off: they add markup (ids, classes, `href="#…"`) the page has no use for.
fn options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS
}

/// Readable plain text for a chat client that shows markdown source as it is.
///
/// Markup the reader would have to decode is dropped (`#`, `*`, `~~`, backticks, fences) and
/// structure that carries meaning is spelled out in text: "• " and "1. " for list items,
/// "☐ "/"☑ " for tasks, "> " for quotes, "text (url)" for links, "a | b" for table rows.
/// Line breaks are kept as the author wrote them (a chat bubble wraps by itself, and authors
/// of pushed messages mean their newlines); raw HTML is shown as the text it is. Leading blank
/// lines, trailing whitespace and runs of blank lines are removed.
pub fn to_plain_text(markdown: &str) -> String {
    let mut writer = PlainWriter::default();
    for event in Parser::new_ext(markdown, options()) {
        writer.event(event);
    }
    writer.finish()
}

/// HTML for the message page, safe to embed in a page of our own origin.
///
/// - Raw HTML (blocks and inline) is turned into text, so it shows escaped, never as markup.
/// - Links keep their `<a>` only for `http:`, `https:` and `mailto:` destinations, decided
///   case-insensitively on the destination as parsed (entities and escapes already resolved)
///   with surrounding whitespace and control characters trimmed. Anything else — `javascript:`,
///   `data:`, relative paths, `#fragments` (the page has nowhere to go) — keeps its text and
///   loses the link. Kept links get `rel="noopener noreferrer nofollow" target="_blank"`.
/// - Images are never loaded: an image becomes a link to its address, reading "🖼 " and its
///   alt text (or "🖼 image"), with the same schemes and attributes as any link. A sender
///   cannot learn when or from where the message was read, and the reader still can open the
///   picture, by choice. Inside a kept link (a badge linking elsewhere) or with a source that
///   may not be linked, only the text is shown.
/// - Everything else is pulldown-cmark's own rendering, which escapes all text and attributes.
pub fn to_safe_html(markdown: &str) -> String {
    let mut filter = SafeEvents::default();
    let events = Parser::new_ext(markdown, options()).filter_map(|event| filter.map(event));
    let mut out = String::with_capacity(markdown.len() + markdown.len() / 2);
    html::push_html(&mut out, events);
    cell_alignment_as_attributes(out)
}

/// pulldown-cmark aligns table cells with `style="text-align: …"`, which the page's CSP
/// blocks (a console error per cell); the old `align` attribute means the same to browsers
/// and mail clients and is not governed by CSP. Text is escaped (`"` is `&quot;`), so the
/// pattern can only be pulldown-cmark's own attribute.
fn cell_alignment_as_attributes(html: String) -> String {
    if !html.contains(" style=\"text-align: ") {
        return html;
    }
    html.replace(" style=\"text-align: left\"", " align=\"left\"")
        .replace(" style=\"text-align: center\"", " align=\"center\"")
        .replace(" style=\"text-align: right\"", " align=\"right\"")
}

/// Escapes `& < > " '` so `text` can go into HTML text or a double-quoted attribute value.
///
/// pulldown-cmark 0.13 does not re-export its escaping functions, and this is all the page
/// needs: with quotes escaped nothing can leave an attribute, with `<` escaped nothing can
/// open a tag.
pub(crate) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// `dest` without surrounding whitespace and control characters (browsers ignore them too, so
/// they must not hide a scheme from us), if its scheme is one the page may link to.
fn allowed_link(dest: &str) -> Option<&str> {
    let dest = trim_url(dest);
    let allowed = ["http://", "https://", "mailto:"]
        .iter()
        .any(|scheme| starts_with_ignore_case(dest, scheme));
    allowed.then_some(dest)
}

fn trim_url(dest: &str) -> &str {
    dest.trim_matches(|c: char| c.is_whitespace() || c.is_control())
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// What an image is shown as: "🖼 " and its alt text, or this when it has none.
const IMAGE_MARK: &str = "🖼 ";
const IMAGE_WITHOUT_ALT: &str = "image";

/// The event filter behind [`to_safe_html`]: remembers, for each open link and image, whether
/// its start became an `<a>`, so the matching end closes it or not.
#[derive(Default)]
struct SafeEvents {
    links: Vec<bool>,
    images: Vec<OpenImage>,
}

struct OpenImage {
    /// Shown as a link to its address.
    anchored: bool,
    /// Whether any alt text came yet (none: [`IMAGE_WITHOUT_ALT`] is shown).
    has_text: bool,
}

impl SafeEvents {
    /// Whether an `<a>` is open: a link or image inside it gets none of its own (nested
    /// anchors are invalid HTML, and the outer one decides where a tap goes).
    fn inside_anchor(&self) -> bool {
        self.links.iter().any(|&kept| kept) || self.images.iter().any(|i| i.anchored)
    }

    fn map<'a>(&mut self, event: Event<'a>) -> Option<Event<'a>> {
        if matches!(
            event,
            Event::Text(_) | Event::Code(_) | Event::InlineHtml(_)
        ) {
            for image in &mut self.images {
                image.has_text = true;
            }
        }
        match event {
            Event::Html(raw) | Event::InlineHtml(raw) => Some(Event::Text(raw)),
            // The raw block's lines become text; a paragraph keeps them a block of their own.
            Event::Start(Tag::HtmlBlock) => Some(Event::Start(Tag::Paragraph)),
            Event::End(TagEnd::HtmlBlock) => Some(Event::End(TagEnd::Paragraph)),
            Event::Start(Tag::Link {
                link_type,
                dest_url,
                title,
                ..
            }) => {
                let dest = if link_type == LinkType::Email {
                    // an autolinked address (<me@example.com>) comes without its scheme
                    format!("mailto:{}", trim_url(&dest_url))
                } else {
                    dest_url.into_string()
                };
                match allowed_link(&dest).filter(|_| !self.inside_anchor()) {
                    Some(href) => {
                        self.links.push(true);
                        Some(Event::InlineHtml(CowStr::from(anchor(href, &title))))
                    }
                    None => {
                        self.links.push(false);
                        None
                    }
                }
            }
            Event::End(TagEnd::Link) => match self.links.pop() {
                Some(true) => Some(Event::InlineHtml(CowStr::Borrowed("</a>"))),
                _ => None,
            },
            // Never an <img>: the reader's device would fetch whatever the sender chose.
            Event::Start(Tag::Image {
                dest_url, title, ..
            }) => {
                let href = allowed_link(&dest_url).filter(|_| !self.inside_anchor());
                self.images.push(OpenImage {
                    anchored: href.is_some(),
                    has_text: false,
                });
                Some(match href {
                    Some(href) => Event::InlineHtml(CowStr::from(format!(
                        "{}{IMAGE_MARK}",
                        anchor(href, &title)
                    ))),
                    None => Event::Text(CowStr::Borrowed(IMAGE_MARK)),
                })
            }
            Event::End(TagEnd::Image) => {
                let image = self.images.pop()?;
                let alt = if image.has_text {
                    ""
                } else {
                    IMAGE_WITHOUT_ALT
                };
                match (image.anchored, alt.is_empty()) {
                    (true, _) => Some(Event::InlineHtml(CowStr::from(format!("{alt}</a>")))),
                    (false, false) => Some(Event::Text(CowStr::Borrowed(alt))),
                    (false, true) => None,
                }
            }
            other => Some(other),
        }
    }
}

/// The opening tag of a kept link. pulldown-cmark cannot add attributes to the links it
/// renders, so we write the tag ourselves.
fn anchor(href: &str, title: &str) -> String {
    let title = if title.is_empty() {
        String::new()
    } else {
        format!(" title=\"{}\"", escape_html(title))
    };
    format!(
        "<a href=\"{}\" rel=\"noopener noreferrer nofollow\" target=\"_blank\"{title}>",
        escape_html(href)
    )
}

/// A block that prefixes the lines inside it.
enum Container {
    /// "> " on every line.
    Quote,
    /// The marker ("• ", "3. ", "☐ ") on the item's first line, two spaces on the others.
    Item { marker: String, shown: bool },
}

/// Inline text collected instead of written, because what is written depends on all of it.
enum Capture {
    Link { dest: String },
    Image { dest: String },
    Cell,
}

/// Streams pulldown-cmark events into plain text.
///
/// Text is written line by line; each new line first gets the prefix of the open containers
/// (quote markers, list indentation or the item's marker). Blocks do not write their own
/// newlines: they ask for a gap before the next text (one newline, or two for a blank line)
/// and the largest request wins, so nested block ends and starts never stack blank lines.
#[derive(Default)]
struct PlainWriter {
    out: String,
    containers: Vec<Container>,
    /// The next number of each open list; `None` for bullet lists.
    lists: Vec<Option<u64>>,
    /// Newlines owed before the next text.
    owed: usize,
    /// Whether the current line has its prefix already.
    in_line: bool,
    /// How many containers stayed open since the last written line: a blank line between two
    /// blocks belongs to the containers both share, so a quote that just ended or just began
    /// does not put its ">" on it.
    shared_depth: usize,
    captures: Vec<(Capture, String)>,
    row: Vec<String>,
}

impl PlainWriter {
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(text) | Event::Html(text) => self.text(&text),
            Event::Code(text)
            | Event::InlineHtml(text)
            | Event::InlineMath(text)
            | Event::DisplayMath(text) => self.inline(&text),
            Event::SoftBreak | Event::HardBreak => self.line_break(),
            Event::Rule => {
                self.gap(2);
                self.inline("——————");
                self.gap(1);
            }
            Event::TaskListMarker(done) => self.task(done),
            Event::FootnoteReference(name) => self.inline(&format!("[{name}]")),
        }
    }

    fn start(&mut self, tag: Tag<'_>) {
        match tag {
            Tag::Paragraph
            | Tag::Heading { .. }
            | Tag::CodeBlock(_)
            | Tag::HtmlBlock
            | Tag::Table(_) => self.gap(2),
            Tag::BlockQuote(_) => {
                self.gap(2);
                self.containers.push(Container::Quote);
            }
            Tag::List(start) => {
                // a list nested right in an item continues it; elsewhere it is a new block
                let nested = matches!(self.containers.last(), Some(Container::Item { .. }));
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
                self.containers.push(Container::Item {
                    marker,
                    shown: false,
                });
            }
            Tag::TableHead | Tag::TableRow => self.row.clear(),
            Tag::TableCell => self.captures.push((Capture::Cell, String::new())),
            Tag::Link { dest_url, .. } => {
                let dest = dest_url.into_string();
                self.captures.push((Capture::Link { dest }, String::new()));
            }
            Tag::Image { dest_url, .. } => {
                let dest = dest_url.into_string();
                self.captures.push((Capture::Image { dest }, String::new()));
            }
            _ => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Paragraph
            | TagEnd::Heading(_)
            | TagEnd::CodeBlock
            | TagEnd::HtmlBlock
            | TagEnd::Table => self.gap(1),
            TagEnd::BlockQuote(_) => {
                self.gap(1);
                self.pop_container();
            }
            TagEnd::List(_) => {
                self.gap(1);
                self.lists.pop();
            }
            TagEnd::Item => {
                if let Some(Container::Item { shown: false, .. }) = self.containers.last() {
                    // an empty item still shows its marker
                    self.begin_line();
                }
                self.gap(1);
                self.pop_container();
            }
            TagEnd::TableCell => {
                if let Some((_, cell)) = self.captures.pop() {
                    self.row.push(cell.trim().to_owned());
                }
            }
            TagEnd::TableHead | TagEnd::TableRow => {
                let row = self.row.join(" | ");
                self.row.clear();
                self.inline(row.trim_end());
                self.gap(1);
            }
            TagEnd::Link | TagEnd::Image => {
                if let Some((capture, text)) = self.captures.pop() {
                    let shown = match capture {
                        Capture::Link { dest } => link_text(text.trim(), &dest),
                        Capture::Image { dest } => image_text(text.trim(), &dest),
                        Capture::Cell => text,
                    };
                    self.inline(&shown);
                }
            }
            _ => {}
        }
    }

    /// Text that may span lines (code blocks, raw HTML blocks).
    fn text(&mut self, text: &str) {
        for (i, line) in text.split('\n').enumerate() {
            if i > 0 {
                self.line_break();
            }
            self.inline(line);
        }
    }

    /// Text within the current line.
    fn inline(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if let Some((_, captured)) = self.captures.last_mut() {
            captured.push_str(text);
            return;
        }
        self.begin_line();
        self.out.push_str(text);
    }

    fn line_break(&mut self) {
        if let Some((_, captured)) = self.captures.last_mut() {
            captured.push(' ');
            return;
        }
        self.owed += 1;
        self.in_line = false;
    }

    /// Asks for at least `newlines` newlines before the next text.
    fn gap(&mut self, newlines: usize) {
        if !self.captures.is_empty() {
            return;
        }
        self.owed = self.owed.max(newlines);
        self.in_line = false;
    }

    fn task(&mut self, done: bool) {
        let checkbox = if done { "☑ " } else { "☐ " };
        if let Some(Container::Item {
            marker,
            shown: false,
        }) = self.containers.last_mut()
        {
            if marker == "• " {
                // the checkbox is the bullet
                *marker = checkbox.to_owned();
            } else {
                marker.push_str(checkbox);
            }
            return;
        }
        self.inline(checkbox);
    }

    fn pop_container(&mut self) {
        self.containers.pop();
        self.shared_depth = self.shared_depth.min(self.containers.len());
    }

    /// Writes the owed newlines and the prefix of a new line, unless the line is begun.
    fn begin_line(&mut self) {
        if self.in_line {
            return;
        }
        if !self.out.is_empty() {
            for i in 0..self.owed {
                self.out.push('\n');
                if i + 1 < self.owed {
                    let blank = self.blank_prefix();
                    self.out.push_str(&blank);
                }
            }
        }
        self.owed = 0;
        let mut prefix = String::new();
        for container in &mut self.containers {
            match container {
                Container::Quote => prefix.push_str("> "),
                Container::Item { marker, shown } if !*shown => {
                    prefix.push_str(marker);
                    *shown = true;
                }
                Container::Item { .. } => prefix.push_str("  "),
            }
        }
        self.out.push_str(&prefix);
        self.in_line = true;
        self.shared_depth = self.containers.len();
    }

    /// The prefix of a blank line: quote markers of the containers that stay open around it.
    fn blank_prefix(&self) -> String {
        let mut prefix = String::new();
        for container in &self.containers[..self.shared_depth.min(self.containers.len())] {
            match container {
                Container::Quote => prefix.push_str("> "),
                Container::Item { .. } => prefix.push_str("  "),
            }
        }
        prefix.trim_end().to_owned()
    }

    /// Trims line ends, collapses runs of blank lines (a code block may hold several) and
    /// drops blank lines at both ends. Leading spaces of the first line stay: they may be the
    /// indentation of code.
    fn finish(self) -> String {
        let mut result = String::with_capacity(self.out.len());
        let mut blank_before = true;
        for line in self.out.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                if !blank_before {
                    result.push('\n');
                }
                blank_before = true;
                continue;
            }
            result.push_str(line);
            result.push('\n');
            blank_before = false;
        }
        let trimmed = result.trim_end().len();
        result.truncate(trimmed);
        result
    }
}

/// How a link reads in plain text: "text (url)", or just one of them when the other adds
/// nothing (an autolink, a mailto of the address shown, a link to nowhere).
fn link_text(text: &str, dest: &str) -> String {
    let dest = dest.trim();
    if dest.is_empty() || dest == "#" {
        return text.to_owned();
    }
    if text.is_empty() || text == dest {
        return dest.to_owned();
    }
    if dest.strip_prefix("mailto:") == Some(text) {
        return text.to_owned();
    }
    format!("{text} ({dest})")
}

/// How an image reads in plain text: the reader cannot see it, but can open its address.
fn image_text(alt: &str, dest: &str) -> String {
    let dest = dest.trim();
    let label = if alt.is_empty() {
        "[image]".to_owned()
    } else {
        format!("[image: {alt}]")
    };
    if dest.is_empty() {
        label
    } else {
        format!("{label} {dest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_text_table() {
        let cases: &[(&str, &str, &str)] = &[
            ("empty", "", ""),
            ("paragraphs", "one\n\n\n\ntwo", "one\n\ntwo"),
            (
                "soft breaks keep lines",
                "line one\nline two",
                "line one\nline two",
            ),
            ("hard break", "a  \nb\\\nc", "a\nb\nc"),
            ("heading", "# Title\ntext", "Title\n\ntext"),
            ("setext heading", "Title\n=====\n\ntext", "Title\n\ntext"),
            ("emphasis dropped", "*a* **b** ~~c~~ ***d***", "a b c d"),
            ("inline code", "run `cargo test` now", "run cargo test now"),
            (
                "fenced code verbatim",
                "before\n\n```rust\nfn main() {\n    let x = 1;\n\n    x\n}\n```\nafter",
                "before\n\nfn main() {\n    let x = 1;\n\n    x\n}\n\nafter",
            ),
            ("indented code", "    a\n      b", "a\n  b"),
            ("bullet list", "- a\n- b\n* c", "• a\n• b\n\n• c"),
            (
                "nested lists",
                "- a\n  - b\n    - c\n- d",
                "• a\n  • b\n    • c\n• d",
            ),
            ("ordered list", "1. a\n2. b", "1. a\n2. b"),
            ("ordered start", "3. a\n1. b\n7. c", "3. a\n4. b\n5. c"),
            (
                "ordered with nested bullets",
                "1. a\n   - x\n2. b",
                "1. a\n  • x\n2. b",
            ),
            (
                "loose list",
                "- a\n\n- b\n\n  more b",
                "• a\n\n• b\n\n  more b",
            ),
            ("task list", "- [ ] todo\n- [x] done", "☐ todo\n☑ done"),
            ("ordered task list", "1. [x] done", "1. ☑ done"),
            ("empty item", "- a\n-\n- c", "• a\n•\n• c"),
            (
                "link",
                "see [the docs](https://example.com/docs) now",
                "see the docs (https://example.com/docs) now",
            ),
            ("autolink", "<https://example.com>", "https://example.com"),
            (
                "link whose text is the url",
                "[https://example.com](https://example.com)",
                "https://example.com",
            ),
            ("email autolink", "<me@example.com>", "me@example.com"),
            (
                "mailto of the address shown",
                "[me@example.com](mailto:me@example.com)",
                "me@example.com",
            ),
            ("link to nowhere", "[text](#) and [more]()", "text and more"),
            (
                "reference link",
                "[a][r]\n\n[r]: https://x.y",
                "a (https://x.y)",
            ),
            (
                "formatted link text",
                "[**bold** `c`](https://x.y)",
                "bold c (https://x.y)",
            ),
            (
                "image",
                "![a cat](https://x.y/cat.png)",
                "[image: a cat] https://x.y/cat.png",
            ),
            (
                "image without alt",
                "![](https://x.y/i.png)",
                "[image] https://x.y/i.png",
            ),
            (
                "block quote",
                "> one\n> two\n>\n> three\n\nafter",
                "> one\n> two\n>\n> three\n\nafter",
            ),
            ("nested quote", "> a\n>> b", "> a\n>\n> > b"),
            ("list in quote", "> - a\n> - b", "> • a\n> • b"),
            ("quote in list", "- > q", "• > q"),
            ("two quotes", "> a\n\n---\n\n> b", "> a\n\n——————\n\n> b"),
            (
                "table",
                "| Name | Qty |\n|:-----|----:|\n| apple | 3 |\n| `pear` | |\n\nafter",
                "Name | Qty\napple | 3\npear |\n\nafter",
            ),
            ("rule", "a\n\n***\n\nb", "a\n\n——————\n\nb"),
            (
                "raw html kept as text",
                "<div onclick=\"x\">\nhi\n</div>\n\na <b>bold</b> word",
                "<div onclick=\"x\">\nhi\n</div>\n\na <b>bold</b> word",
            ),
            (
                "escapes resolved",
                "1\\. not a list \\*x\\*",
                "1. not a list *x*",
            ),
            ("entities resolved", "&amp; &lt; &copy;", "& < ©"),
            ("trimmed", "\n\n   text   \n\n", "text"),
            (
                "code with blank lines collapsed",
                "```\na\n\n\n\nb\n```",
                "a\n\nb",
            ),
        ];
        for &(name, markdown, want) in cases {
            assert_eq!(to_plain_text(markdown), want, "{name}: {markdown:?}");
        }
    }

    #[test]
    fn plain_text_of_a_chinese_report() {
        let markdown = "\
# 部署报告

**服务**：`pushbot` 已上线，详见[发布说明](https://example.com/r/1)。

## 检查项

- [x] 数据库迁移
- [ ] 回滚演练
  1. 停止服务
  2. 恢复备份

> 注意：*周五*之后不再发布。

| 环境 | 状态 |
|------|------|
| 生产 | ✅ 正常 |
| 测试 | ~~故障~~ 已修复 |

```bash
systemctl restart pushbot
```
";
        let want = "\
部署报告

服务：pushbot 已上线，详见发布说明 (https://example.com/r/1)。

检查项

☑ 数据库迁移
☐ 回滚演练
  1. 停止服务
  2. 恢复备份

> 注意：周五之后不再发布。

环境 | 状态
生产 | ✅ 正常
测试 | 故障 已修复

systemctl restart pushbot";
        assert_eq!(to_plain_text(markdown), want);
    }

    #[test]
    fn plain_text_has_no_triple_newlines() {
        for markdown in [
            "a\n\n\n\n\nb",
            "```\n\n\n\nx\n\n\n\n```",
            "- a\n\n\n- b\n\n\n> c\n\n\n\n# d",
            "<div>\n\n\n\n</div>",
        ] {
            let text = to_plain_text(markdown);
            assert!(!text.contains("\n\n\n"), "{markdown:?} gave {text:?}");
            assert_eq!(text.trim_end(), text);
        }
    }

    const TAGS: &[&str] = &[
        "p",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "em",
        "strong",
        "del",
        "code",
        "pre",
        "ul",
        "ol",
        "li",
        "blockquote",
        "a",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "hr",
        "br",
        "input",
    ];
    const ATTRIBUTES: &[&str] = &[
        "href", "rel", "target", "title", "class", "type", "checked", "disabled", "start", "align",
    ];

    /// Scans every `<` of `html` as a tag and checks its name and attributes against the
    /// allow-lists above: text escaping means a `<` can only come from a tag we allow.
    fn assert_only_allowed_markup(html: &str) {
        let mut rest = html;
        while let Some(open) = rest.find('<') {
            rest = &rest[open + 1..];
            let close = rest
                .find('>')
                .unwrap_or_else(|| panic!("unclosed tag in {html}"));
            let tag = &rest[..close];
            rest = &rest[close + 1..];
            let tag = tag.strip_prefix('/').unwrap_or(tag);
            let tag = tag.strip_suffix('/').unwrap_or(tag).trim_end();
            let name_end = tag
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(tag.len());
            let name = &tag[..name_end];
            assert!(TAGS.contains(&name), "tag <{name}> in {html}");
            let mut attrs = tag[name_end..].trim_start();
            while !attrs.is_empty() {
                let eq = attrs
                    .find("=\"")
                    .unwrap_or_else(|| panic!("attribute without quoted value in <{tag}>"));
                let attr = &attrs[..eq];
                let value_and_rest = &attrs[eq + 2..];
                let end = value_and_rest
                    .find('"')
                    .unwrap_or_else(|| panic!("unterminated value in <{tag}>"));
                let value = &value_and_rest[..end];
                assert!(ATTRIBUTES.contains(&attr), "attribute {attr} in <{tag}>");
                match attr {
                    "href" => assert!(
                        ["http://", "https://", "mailto:"]
                            .iter()
                            .any(|s| value.to_ascii_lowercase().starts_with(s)),
                        "href {value}"
                    ),
                    "align" => assert!(
                        ["left", "center", "right"].contains(&value),
                        "align {value}"
                    ),
                    "rel" => assert_eq!(value, "noopener noreferrer nofollow"),
                    "target" => assert_eq!(value, "_blank"),
                    _ => {}
                }
                assert!(!value.contains('<') && !value.contains('>'));
                attrs = value_and_rest[end + 1..].trim_start();
            }
        }
    }

    #[test]
    #[should_panic(expected = "tag <script>")]
    fn checker_rejects_other_tags() {
        assert_only_allowed_markup("<p>ok</p><script>alert(1)</script>");
    }

    #[test]
    #[should_panic(expected = "attribute onclick")]
    fn checker_rejects_other_attributes() {
        assert_only_allowed_markup("<a href=\"https://i.example/\" onclick=\"x\">x</a>");
    }

    #[test]
    #[should_panic(expected = "tag <img>")]
    fn checker_rejects_images() {
        assert_only_allowed_markup("<img src=\"https://i.example/a.png\" />");
    }

    #[test]
    #[should_panic(expected = "href javascript:")]
    fn checker_rejects_other_schemes() {
        assert_only_allowed_markup("<a href=\"javascript:alert(1)\">x</a>");
    }

    #[test]
    fn hostile_markdown_is_neutralised() {
        let hostile = [
            "<script>alert(1)</script>",
            "text <script>alert(1)</script> inline",
            "<img src=x onerror=alert(1)>",
            "a <img src=x onerror=alert(1)> b",
            "[x](javascript:alert(1))",
            "[x](JaVaScRiPt:alert(1))",
            "[x]( javascript:alert(1))",
            "[x](<javascript:alert(1)>)",
            "[x](&#106;avascript:alert(1))",
            "[x](java&#x09;script:alert(1))",
            "[x](\\javascript:alert(1))",
            "[x][r]\n\n[r]: javascript:alert(1)",
            "<javascript:alert(1)>",
            "<a href=\"javascript:alert(1)\">x</a>",
            "<iframe src=\"https://evil.example\"></iframe>",
            "![a](http://insecure.example/x.png)",
            "![a](data:image/png;base64,iVBORw0KGgo=)",
            "![a](javascript:alert(1))",
            "[x](data:text/html,<script>alert(1)</script>)",
            "[x](vbscript:msgbox(1))",
            "[x](file:///etc/passwd)",
            "[x](/relative/path) [y](#top) [z](?q=1)",
            "<div onclick=\"alert(1)\">click</div>",
            "<svg onload=alert(1)>",
            "<style>body{display:none}</style>",
            "[x](https://ok.example \"a\\\" onmouseover=\\\"alert(1)\")",
            "[x](https://ok.example/\"onmouseover=\"alert(1))",
            "![a\" onerror=\"alert(1)](https://ok.example/i.png)",
            "```\"><script>alert(1)</script>\nx\n```",
            "| <script>x</script> | b |\n|---|---|\n| <img src=x onerror=y> | [l](javascript:x) |",
            "- [ ] <b onmouseover=x>task</b>",
            "![![in](https://i.example/a.png)](https://i.example/b.png)",
            "![[link](https://x.example)](https://i.example/b.png)",
            "[![img](http://insecure.example/i.png)](javascript:alert(1))",
            "<!-- comment --> <?php echo 1; ?> <![CDATA[x]]>",
        ];
        for markdown in hostile {
            let html = to_safe_html(markdown);
            assert_only_allowed_markup(&html);
            let lower = html.to_ascii_lowercase();
            assert!(!lower.contains("<script"), "{markdown:?} gave {html}");
            assert!(!lower.contains("<iframe"), "{markdown:?} gave {html}");
            assert!(!lower.contains("<img"), "{markdown:?} gave {html}");
            assert!(
                !lower.contains("<a href=\"javascript"),
                "{markdown:?} gave {html}"
            );
        }
    }

    /// Markdown and HTML fragments that, shuffled together, make links, images, raw HTML,
    /// entities, tables, lists and code in every combination.
    fn hostile_text() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            "<",
            ">",
            "</",
            "/>",
            "<script>",
            "<img src=x onerror=y>",
            "<a href=\"",
            "\"",
            "'",
            "=",
            "[",
            "]",
            "(",
            ")",
            "](",
            "![",
            "<https://a.example>",
            "javascript:",
            "JaVaScRiPt:",
            "data:",
            "http://",
            "https://",
            "mailto:",
            "#",
            "&#106;",
            "&amp;",
            "&",
            "\\",
            "`",
            "```",
            "~~",
            "*",
            "_",
            "|",
            "---",
            "- ",
            "1. ",
            "[ ] ",
            "> ",
            " ",
            "  ",
            "\n",
            "\n\n",
            "\t",
            "x",
            "推送",
            "\u{301}",
        ]);
        prop::collection::vec(pieces, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn safe_html_only_ever_has_allowed_markup(
            markdown in prop_oneof![hostile_text(), any::<String>()]
        ) {
            let html = to_safe_html(&markdown);
            assert_only_allowed_markup(&html);
            let text = to_plain_text(&markdown);
            prop_assert!(!text.contains("\n\n\n"));
            prop_assert_eq!(text.trim_end(), text.as_str());
        }
    }

    #[test]
    fn raw_html_shows_as_text() {
        assert_eq!(
            to_safe_html("<script>alert(1)</script>"),
            "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>\n"
        );
        assert_eq!(
            to_safe_html("a <img src=x onerror=alert(1)> b"),
            "<p>a &lt;img src=x onerror=alert(1)&gt; b</p>\n"
        );
    }

    #[test]
    fn unsafe_links_keep_their_text() {
        for markdown in [
            "[x](javascript:alert(1))",
            "[x](JaVaScRiPt:alert(1))",
            "[x]( javascript:alert(1))",
            "[x](data:text/html,hi)",
            "[x](/relative)",
            "[x](#top)",
        ] {
            assert_eq!(to_safe_html(markdown), "<p>x</p>\n", "{markdown:?}");
        }
    }

    #[test]
    fn safe_links_get_rel_and_target() {
        assert_eq!(
            to_safe_html("[docs](https://example.com/a?b=1&c=\"2\" \"T&C\")"),
            "<p><a href=\"https://example.com/a?b=1&amp;c=&quot;2&quot;\" \
             rel=\"noopener noreferrer nofollow\" target=\"_blank\" title=\"T&amp;C\">docs</a></p>\n"
        );
        assert_eq!(
            to_safe_html("[x](HTTP://EXAMPLE.COM)"),
            "<p><a href=\"HTTP://EXAMPLE.COM\" rel=\"noopener noreferrer nofollow\" \
             target=\"_blank\">x</a></p>\n"
        );
        assert_eq!(
            to_safe_html("<me@example.com> [m](mailto:a@b.c)"),
            "<p><a href=\"mailto:me@example.com\" rel=\"noopener noreferrer nofollow\" \
             target=\"_blank\">me@example.com</a> <a href=\"mailto:a@b.c\" \
             rel=\"noopener noreferrer nofollow\" target=\"_blank\">m</a></p>\n"
        );
    }

    #[test]
    fn images_are_links_never_loaded() {
        assert_eq!(
            to_safe_html("![a cat](https://example.com/cat.png \"Tom\")"),
            "<p><a href=\"https://example.com/cat.png\" rel=\"noopener noreferrer nofollow\" \
             target=\"_blank\" title=\"Tom\">🖼 a cat</a></p>\n"
        );
        assert_eq!(
            to_safe_html("![a *cat*](http://example.com/cat.png)"),
            "<p><a href=\"http://example.com/cat.png\" rel=\"noopener noreferrer nofollow\" \
             target=\"_blank\">🖼 a <em>cat</em></a></p>\n"
        );
        assert_eq!(
            to_safe_html("![](https://t.example/p.png)"),
            "<p><a href=\"https://t.example/p.png\" rel=\"noopener noreferrer nofollow\" \
             target=\"_blank\">🖼 image</a></p>\n"
        );
        // A source that may not be linked: only the text.
        assert_eq!(
            to_safe_html("![a *cat*](data:image/png;base64,AAAA)"),
            "<p>🖼 a <em>cat</em></p>\n"
        );
        assert_eq!(to_safe_html("![](javascript:x)"), "<p>🖼 image</p>\n");
        // A badge linking elsewhere: one link (the outer one), the image as its text.
        assert_eq!(
            to_safe_html("[![build](https://ci.example/badge.svg)](https://ci.example/run/7)"),
            "<p><a href=\"https://ci.example/run/7\" rel=\"noopener noreferrer nofollow\" \
             target=\"_blank\">🖼 build</a></p>\n"
        );
        // A link or an image in an image's alt text: no anchor inside the anchor.
        assert_eq!(
            to_safe_html(
                "![[l](https://x.example) ![i](https://i.example/a.png)](https://i.example/b.png)"
            ),
            "<p><a href=\"https://i.example/b.png\" rel=\"noopener noreferrer nofollow\" \
             target=\"_blank\">🖼 l 🖼 i</a></p>\n"
        );
        // Raw HTML cannot bring one in either.
        assert_eq!(
            to_safe_html(
                "<img src=\"https://t.example/p.png\">\n\nx <img src=https://t.example/q.png> y"
            ),
            "<p>&lt;img src=\"https://t.example/p.png\"&gt;\n</p>\n\
             <p>x &lt;img src=https://t.example/q.png&gt; y</p>\n"
        );
    }

    #[test]
    fn ordinary_markdown_renders() {
        let html = to_safe_html(
            "# T\n\n- [x] done\n- [ ] todo\n\n3. three\n\n| a | b |\n|:-|:-:|\n| 1 | 2 |\n\n\
             ```rust\nlet x = 1 < 2;\n```\n\n> q\n\n~~old~~ *em* **strong** `c`\n\n---\n",
        );
        assert_only_allowed_markup(&html);
        for fragment in [
            "<h1>T</h1>",
            "<input disabled=\"\" type=\"checkbox\" checked=\"\"/>",
            "<ol start=\"3\">",
            "<th align=\"left\">a</th>",
            "<th align=\"center\">b</th>",
            "<pre><code class=\"language-rust\">let x = 1 &lt; 2;\n</code></pre>",
            "<blockquote>",
            "<del>old</del> <em>em</em> <strong>strong</strong> <code>c</code>",
            "<hr />",
        ] {
            assert!(html.contains(fragment), "{fragment} missing from {html}");
        }
    }

    #[test]
    fn escape_html_escapes_the_five() {
        assert_eq!(
            escape_html("<a href=\"x\" title='y'>&amp;</a>"),
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;"
        );
        assert_eq!(escape_html("推送 ✅"), "推送 ✅");
    }
}
