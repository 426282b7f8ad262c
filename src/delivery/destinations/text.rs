//! Readable text shared by every kind: the title and content as plain text, cut to a budget
//! on grapheme boundaries, followed by the links that go with the message (the sender's
//! `url`, and the message's page when the text had to be cut).

use unicode_segmentation::UnicodeSegmentation;

use super::Envelope;
use crate::domain::Format;
use crate::render::markdown::to_plain_text;

/// The label of the sender's link.
pub(super) const OPEN_LINK: &str = "详情";
/// The label of the link to the whole message.
pub(super) const READ_MORE: &str = "阅读全文";
/// What a message with neither title nor content shows.
pub(super) const EMPTY: &str = "（无内容）";
/// Ends a text that was cut.
const ELLIPSIS: &str = "…";

/// How a service counts a message's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Measure {
    /// UTF-8 bytes (WeCom, DingTalk, Feishu).
    Bytes,
    /// UTF-16 code units (Telegram counts characters so; never fewer than code points).
    Utf16,
}

impl Measure {
    pub fn len(self, text: &str) -> usize {
        match self {
            Self::Bytes => text.len(),
            Self::Utf16 => text.encode_utf16().count(),
        }
    }

    /// The longest prefix of `text` within `max` that ends on a grapheme boundary.
    pub fn cut(self, text: &str, max: usize) -> &str {
        match self {
            Self::Bytes => crate::render::cut::cut(text, max),
            Self::Utf16 => {
                let mut used = 0;
                for (start, grapheme) in text.grapheme_indices(true) {
                    used += self.len(grapheme);
                    if used > max {
                        return &text[..start];
                    }
                }
                text
            }
        }
    }

    /// `text` if it fits in `max`, else a cut prefix (trailing whitespace dropped) and "…",
    /// all within `max`.
    pub fn excerpt(self, text: &str, max: usize) -> String {
        if self.len(text) <= max {
            return text.to_owned();
        }
        let marker = self.len(ELLIPSIS);
        if max < marker {
            return self.cut(text, max).to_owned();
        }
        format!("{}{ELLIPSIS}", self.cut(text, max - marker).trim_end())
    }
}

/// A link shown after the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Link {
    pub label: &'static str,
    pub href: String,
    /// An `http(s)` URL without spaces: safe to make a link of (else shown as text).
    pub clickable: bool,
}

impl Link {
    fn new(label: &'static str, href: &str) -> Self {
        Self {
            label,
            href: href.to_owned(),
            clickable: clickable(href),
        }
    }

    /// `详情: https://…` (plain text).
    pub fn plain(&self) -> String {
        format!("{}: {}", self.label, self.href)
    }

    /// `[详情](https://…)` (markdown), or the plain form when it cannot be a link.
    pub fn markdown(&self) -> String {
        if self.clickable {
            format!("[{}]({})", self.label, markdown_href(&self.href))
        } else {
            self.plain()
        }
    }
}

/// Whether `href` may become a link: `http`/`https`, nothing a renderer could misread.
pub(super) fn clickable(href: &str) -> bool {
    let lower = href.get(..8).unwrap_or(href).to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://"))
        && !href.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// An URL inside markdown's `(…)`: parentheses and `<>` percent-encoded.
fn markdown_href(href: &str) -> String {
    href.replace('(', "%28")
        .replace(')', "%29")
        .replace('<', "%3C")
        .replace('>', "%3E")
}

/// What a message shows, whatever the kind.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shown<'a> {
    pub title: Option<&'a str>,
    /// As the sender wrote it.
    pub content: Option<&'a str>,
    pub markdown: bool,
    /// The sender's link.
    pub url: Option<&'a str>,
    /// The message's page.
    pub page: Option<&'a str>,
}

impl<'a> Shown<'a> {
    pub fn of(envelope: &Envelope<'a>) -> Self {
        let message = envelope.message;
        let present = |s: &'a Option<String>| s.as_deref().map(str::trim).filter(|s| !s.is_empty());
        Self {
            title: present(&message.title),
            content: message
                .content
                .as_deref()
                .map(str::trim_end)
                .filter(|c| !c.trim().is_empty()),
            markdown: message.format == Format::Markdown,
            url: present(&message.url),
            page: envelope.page_url.map(str::trim).filter(|p| !p.is_empty()),
        }
    }

    /// The content as readable text (markdown made plain).
    pub fn plain_content(&self) -> Option<String> {
        self.content.map(|c| {
            if self.markdown {
                to_plain_text(c)
            } else {
                c.to_owned()
            }
        })
    }

    /// Title, a blank line, content — or whichever is present, or [`EMPTY`].
    pub fn plain_body(&self) -> String {
        join(self.title, self.plain_content().as_deref())
    }

    pub fn url_link(&self) -> Option<Link> {
        self.url.map(|url| Link::new(OPEN_LINK, url))
    }

    pub fn page_link(&self) -> Option<Link> {
        self.page.map(|page| Link::new(READ_MORE, page))
    }
}

/// `title`, a blank line, `content` — or whichever of the two is present, or [`EMPTY`].
pub(super) fn join(title: Option<&str>, content: Option<&str>) -> String {
    match (title, content) {
        (Some(t), Some(c)) => format!("{t}\n\n{c}"),
        (Some(t), None) => t.to_owned(),
        (None, Some(c)) => c.to_owned(),
        (None, None) => EMPTY.to_owned(),
    }
}

/// Text and links within a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fitted {
    /// Title and content as plain text, cut when needed (then ending in "…").
    pub body: String,
    pub links: Vec<Link>,
    pub cut: bool,
}

/// Between the body and the links.
pub(super) const LINKS_GAP: &str = "\n\n";

/// The message as plain text with its links, all within `max` (as `measure` counts) when
/// rendered as the body, [`LINKS_GAP`] and the links one per line, each costing
/// `link_cost`. A message that does not fit is cut, and its page linked.
pub(super) fn fit(
    shown: &Shown<'_>,
    body: String,
    max: usize,
    measure: Measure,
    link_cost: impl Fn(&Link) -> usize,
) -> Fitted {
    let cost = |links: &[Link]| -> usize {
        if links.is_empty() {
            0
        } else {
            measure.len(LINKS_GAP) + links.iter().map(&link_cost).sum::<usize>() + links.len() - 1
        }
    };
    let mut links: Vec<Link> = shown.url_link().into_iter().collect();
    if measure.len(&body) + cost(&links) <= max {
        return Fitted {
            body,
            links,
            cut: false,
        };
    }
    links.extend(shown.page_link());
    // Links too long for the budget (a huge sender URL): the page first, then nothing.
    while cost(&links) + measure.len(ELLIPSIS) > max && !links.is_empty() {
        links.remove(0);
    }
    let budget = max - cost(&links);
    Fitted {
        body: measure.excerpt(&body, budget),
        links,
        cut: true,
    }
}

impl Fitted {
    /// Body, gap, links as `label: url` lines.
    pub fn plain(&self) -> String {
        self.render(Link::plain)
    }

    /// Body, gap, links rendered by `link`.
    pub fn render(&self, link: impl Fn(&Link) -> String) -> String {
        if self.links.is_empty() {
            return self.body.clone();
        }
        let links: Vec<String> = self.links.iter().map(link).collect();
        format!("{}{LINKS_GAP}{}", self.body, links.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::destinations::tests::{PAGE, envelope, outbound};

    #[test]
    fn measures_cut_on_graphemes() {
        let family = "👩\u{200d}👩\u{200d}👧\u{200d}👦"; // 25 bytes, 11 UTF-16 units
        assert_eq!(Measure::Utf16.len(family), 11);
        assert_eq!(Measure::Utf16.cut(&format!("ab{family}"), 12), "ab");
        assert_eq!(
            Measure::Utf16.cut(&format!("ab{family}"), 13),
            format!("ab{family}")
        );
        assert_eq!(Measure::Bytes.cut("磁盘", 5), "磁");
        assert_eq!(Measure::Utf16.excerpt("磁盘使用率", 3), "磁盘…");
        assert_eq!(Measure::Bytes.excerpt("磁盘使用率", 9), "磁盘…");
        assert_eq!(Measure::Bytes.excerpt("ab", 2), "ab");
    }

    #[test]
    fn short_messages_are_whole_and_keep_the_sender_link() {
        let mut m = outbound(Some(" T "), Some("C\n\n"));
        m.url = Some("https://ci.example.com/1".into());
        let env = envelope(&m);
        let shown = Shown::of(&env);
        let fitted = fit(&shown, shown.plain_body(), 2048, Measure::Bytes, |l| {
            l.plain().len()
        });
        assert!(!fitted.cut);
        assert_eq!(fitted.plain(), "T\n\nC\n\n详情: https://ci.example.com/1");
    }

    #[test]
    fn long_messages_are_cut_and_link_their_page_within_the_budget() {
        let long = "磁盘使用率超过阈值。".repeat(300);
        let m = outbound(Some("告警"), Some(&long));
        let env = envelope(&m);
        let shown = Shown::of(&env);
        for max in [100, 500, 2048] {
            let fitted = fit(&shown, shown.plain_body(), max, Measure::Bytes, |l| {
                l.plain().len()
            });
            let text = fitted.plain();
            assert!(text.len() <= max, "{max}: {}", text.len());
            assert!(text.len() > max - 40, "{max}: {}", text.len());
            assert!(text.starts_with("告警\n\n磁盘"));
            assert!(text.ends_with(&format!("…\n\n阅读全文: {PAGE}")), "{text}");
        }
    }

    #[test]
    fn markdown_is_made_plain_and_empty_messages_say_so() {
        let mut m = outbound(None, Some("**bold** [x](https://x.org)"));
        m.format = Format::Markdown;
        let env = envelope(&m);
        assert_eq!(Shown::of(&env).plain_body(), "bold x (https://x.org)");
        let m = outbound(Some("  "), Some(" \n"));
        let env = envelope(&m);
        assert_eq!(Shown::of(&env).plain_body(), EMPTY);
    }

    #[test]
    fn links_are_clickable_only_for_http() {
        assert!(clickable("https://a.example/x?y=1"));
        assert!(clickable("HTTP://a.example"));
        assert!(!clickable("javascript:alert(1)"));
        assert!(!clickable("https://a.example/x y"));
        assert_eq!(
            Link::new(OPEN_LINK, "https://a.example/(x)").markdown(),
            "[详情](https://a.example/%28x%29)"
        );
        assert_eq!(Link::new(OPEN_LINK, "ftp://x").markdown(), "详情: ftp://x");
    }
}
