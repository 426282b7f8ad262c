//! The message page: one self-contained HTML document per message, for reading long messages
//! on a phone (WeCom's in-app browser, an old WebKit/X5) — and per digest, listing every
//! message the digest carried in full, each as the message page shows it.
//!
//! The page fetches nothing from elsewhere: style and script are inline and carry the
//! response's CSP nonce, fonts are the system's, and the only outside references are the links
//! the author put in the message (an image in markdown is one too: a link the reader may open,
//! never loaded by itself). So the page works behind any firewall, tells no sender or third
//! party when or from where it was read, and a strict policy (`default-src 'none'`) costs
//! nothing. The one exception is the message's own images and files (issue 20), served by this
//! server under the page's address: a page showing images allows `img-src 'self'` and nothing
//! more ([`content_security_policy_with_images`]).

use std::fmt::Write as _;

use super::markdown::{escape_html, to_safe_html};
use crate::time::UnixMillis;

/// What the page shows.
pub struct Page<'a> {
    /// Shown as the heading and the document title; `None` or blank shows no heading.
    pub title: Option<&'a str>,
    pub content: &'a str,
    /// Whether `content` is markdown (rendered through [`to_safe_html`]) or plain text.
    pub markdown: bool,
    /// When the message was sent.
    pub created_at_ms: UnixMillis,
    /// The response's CSP nonce, as also passed to [`content_security_policy`].
    pub nonce: &'a str,
    /// The message's images and files, in the order they were sent.
    pub files: &'a [PageFile<'a>],
}

impl Page<'_> {
    /// Whether the page shows an image inline: then its policy must be
    /// [`content_security_policy_with_images`], else [`content_security_policy`].
    pub fn shows_images(&self) -> bool {
        self.files.iter().any(|f| f.image)
    }
}

/// One image or file of a message, as its page shows it.
pub struct PageFile<'a> {
    /// The name it was sent under (escaped here).
    pub name: &'a str,
    /// In bytes.
    pub size: u64,
    /// A JPEG, PNG, GIF or WebP by its content (the file route serves it as one): shown in
    /// the page as well as offered for download.
    pub image: bool,
    /// Where the file is served, relative to the page (`{id}/files/{idx}?k=KEY`); escaped
    /// here.
    pub href: &'a str,
}

/// The complete HTML document for `page`.
///
/// Everything from the message (title, content) is escaped or goes through [`to_safe_html`];
/// the rest is fixed text of ours. The sent time is written in UTC, which an inline script
/// rewrites into the reader's own zone (readers without script still see a correct time).
pub fn render(page: &Page<'_>) -> String {
    let title = page.title.map(str::trim).filter(|t| !t.is_empty());
    let (class, body) = content_html(page.content, page.markdown);
    let mut out = String::with_capacity(STYLE.len() + SCRIPT.len() + body.len() + 1024);
    let nonce = start_document(&mut out, title.unwrap_or("pushbot"), page.nonce);
    out.push_str("<header>\n");
    if let Some(title) = title {
        let _ = writeln!(out, "<h1>{}</h1>", escape_html(title));
    }
    let _ = writeln!(
        out,
        "<p class=\"sent\">{}</p>",
        time_html(page.created_at_ms, Some("sent"))
    );
    out.push_str("</header>\n");
    let _ = writeln!(out, "<div class=\"content {class}\">{body}</div>");
    files_html(&mut out, page.files);
    end_document(&mut out, &nonce);
    out
}

/// The message's images (each shown, and a link to it at full size) and a list of all its
/// files, each a download link with its name and size. Nothing when there are none.
///
/// Names are the sender's: escaped, as everything from a message. An image has no size in
/// the markup (unknown without decoding it); the style keeps it within the page's width at its
/// own aspect ratio.
fn files_html(out: &mut String, files: &[PageFile<'_>]) {
    if files.is_empty() {
        return;
    }
    out.push_str("<section class=\"files\">\n");
    for file in files.iter().filter(|f| f.image) {
        let (href, name) = (escape_html(file.href), escape_html(file.name));
        let _ = writeln!(
            out,
            "<p class=\"image\"><a href=\"{href}\"><img src=\"{href}\" alt=\"{name}\" \
             loading=\"lazy\" decoding=\"async\"></a></p>"
        );
    }
    out.push_str("<h2>附件 · Attachments</h2>\n<ul class=\"downloads\">\n");
    for file in files {
        let (href, name) = (escape_html(file.href), escape_html(file.name));
        let _ = writeln!(
            out,
            "<li><a href=\"{href}\" download=\"{name}\">{name}</a> \
             <span class=\"size\">{}</span></li>",
            human_size(file.size)
        );
    }
    out.push_str("</ul>\n</section>\n");
}

/// A file's size for readers: bytes below 1 KiB, else KiB, MiB or GiB with one decimal
/// (`834 B`, `12.5 KiB`, `3.0 MiB`), binary units as in the limits (`media.max_bytes`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Tenths of the unit, rounded, in integers: no float rounding at the edges, and a size
    // that rounds to 1024 of a unit is shown in the next one.
    let bytes = u128::from(bytes);
    let tenths_of = |divisor: u128| (bytes * 10 + divisor / 2) / divisor;
    let (mut unit, mut divisor) = (0, 1024);
    while tenths_of(divisor) >= 10 * 1024 && unit + 1 < UNITS.len() {
        unit += 1;
        divisor *= 1024;
    }
    let tenths = tenths_of(divisor);
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

/// One message on a digest's page.
pub struct Entry<'a> {
    /// Shown as the message's heading; `None` or blank shows none.
    pub title: Option<&'a str>,
    pub content: &'a str,
    /// Whether `content` is markdown (rendered through [`to_safe_html`]) or plain text.
    pub markdown: bool,
    /// When the message was accepted.
    pub created_at_ms: UnixMillis,
}

/// What a digest's page shows: every message the digest carried, in full.
pub struct DigestPage<'a> {
    /// In acceptance order.
    pub entries: &'a [Entry<'a>],
    /// Messages the digest carried that are no longer kept (older than the retention).
    pub missing: usize,
    /// When the digest was sent.
    pub sent_at_ms: UnixMillis,
    /// The response's CSP nonce, as also passed to [`content_security_policy`].
    pub nonce: &'a str,
}

/// The complete HTML document for a digest's page: a heading with the count and the time
/// the digest was sent, then each message as the single-message page shows it (number and
/// time, title, content), in order.
pub fn render_digest(page: &DigestPage<'_>) -> String {
    let n = page.entries.len() + page.missing;
    let heading = format!("{n} 条消息 · {n} messages");
    let bodies: Vec<(&str, String)> = page
        .entries
        .iter()
        .map(|e| content_html(e.content, e.markdown))
        .collect();
    let mut out = String::with_capacity(
        STYLE.len() + SCRIPT.len() + bodies.iter().map(|(_, b)| b.len() + 256).sum::<usize>(),
    );
    let nonce = start_document(&mut out, &heading, page.nonce);
    let _ = writeln!(
        out,
        "<header>\n<h1>{heading}</h1>\n<p class=\"sent\">{}</p>\n</header>",
        time_html(page.sent_at_ms, None)
    );
    for (i, (entry, (class, body))) in page.entries.iter().zip(&bodies).enumerate() {
        out.push_str("<article class=\"message\">\n");
        let _ = writeln!(
            out,
            "<p class=\"sent\">{}. {}</p>",
            i + 1,
            time_html(entry.created_at_ms, None)
        );
        if let Some(title) = entry.title.map(str::trim).filter(|t| !t.is_empty()) {
            let _ = writeln!(out, "<h2>{}</h2>", escape_html(title));
        }
        let _ = writeln!(out, "<div class=\"content {class}\">{body}</div>");
        out.push_str("</article>\n");
    }
    if page.missing > 0 {
        let _ = writeln!(
            out,
            "<p class=\"sent\">另有 {0} 条已超过保存期限并被删除。<br>{0} more were older than \
             the server keeps messages and have been deleted.</p>",
            page.missing
        );
    }
    end_document(&mut out, &nonce);
    out
}

/// The document up to the start of its body's content (`<div class="page">`), titled
/// `title` (escaped here). Returns the nonce as written into the document.
fn start_document(out: &mut String, title: &str, nonce: &str) -> String {
    let nonce = escape_html(&nonce_token(nonce));
    out.push_str(
        "<!DOCTYPE html>\n\
         <html lang=\"zh-CN\">\n\
         <head>\n\
         <meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"color-scheme\" content=\"light dark\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <meta name=\"robots\" content=\"noindex, nofollow\">\n\
         <meta name=\"format-detection\" content=\"telephone=no\">\n",
    );
    let _ = writeln!(out, "<title>{}</title>", escape_html(title));
    let _ = writeln!(out, "<style nonce=\"{nonce}\">{STYLE}</style>");
    out.push_str("</head>\n<body>\n<div class=\"page\">\n");
    nonce
}

/// The footer, the script and the end of the document.
fn end_document(out: &mut String, nonce: &str) {
    out.push_str("<footer>pushbot</footer>\n</div>\n");
    let _ = writeln!(out, "<script nonce=\"{nonce}\">{SCRIPT}</script>");
    out.push_str("</body>\n</html>\n");
}

/// The content's class and HTML: markdown through [`to_safe_html`], plain text escaped.
fn content_html(content: &str, markdown: bool) -> (&'static str, String) {
    if markdown {
        ("markdown", to_safe_html(content))
    } else {
        ("text", plain_text_html(content))
    }
}

/// A `<time>` in UTC that the script rewrites into the reader's zone.
fn time_html(at: UnixMillis, id: Option<&str>) -> String {
    let unix_ms = at.as_millis();
    let time = UtcTime::from_unix_ms(unix_ms);
    let id = id.map(|id| format!(" id=\"{id}\"")).unwrap_or_default();
    format!(
        "<time{id} datetime=\"{}\" data-ms=\"{unix_ms}\">{}</time>",
        time.iso8601(),
        time.readable()
    )
}

/// The `Content-Security-Policy` to send with [`render`]'s page, for the same nonce.
///
/// Only our own nonce'd style and script run; no image loads from anywhere ([`to_safe_html`]
/// makes images links, and the policy holds should anything else ever add one); no frames,
/// forms, base URL or embedding in other sites.
pub fn content_security_policy(nonce: &str) -> String {
    policy(nonce, "'none'")
}

/// [`content_security_policy`] for a page that [shows images](Page::shows_images): the same,
/// but images may load from this server (`img-src 'self'`), where the file route serves the
/// message's own. Still none from anywhere else: a sender's link never loads by itself.
pub fn content_security_policy_with_images(nonce: &str) -> String {
    policy(nonce, "'self'")
}

/// The console's pages (`/console`): [`content_security_policy`]'s rules, plus what the
/// console does with this server alone — forms posted to it (`form-action 'self'`), the
/// timeline's live update fetched from it (`connect-src 'self'`), images from it.
pub fn console_security_policy(nonce: &str) -> String {
    let nonce = nonce_token(nonce);
    format!(
        "default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; \
         img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'"
    )
}

fn policy(nonce: &str, images: &str) -> String {
    let nonce = nonce_token(nonce);
    format!(
        "default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; \
         img-src {images}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// The nonce reduced to base64/base64url characters, the only ones a CSP nonce may have.
///
/// A nonce is ours (random, base64), so this changes nothing in practice; it makes sure a bad
/// one can never add a directive to the policy (`abc'; script-src *`).
fn nonce_token(nonce: &str) -> String {
    nonce
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_'))
        .collect()
}

/// Plain text as HTML: escaped, with `http(s)://` addresses made links.
///
/// Plain-text messages are mostly alerts and logs with a URL in them; a tap is nicer than
/// copying. Only `http://` and `https://` are recognised, so no other scheme can become a
/// link. Layout (newlines, spaces) is kept by the `.text` style, not by markup.
fn plain_text_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let mut rest = text;
    while let Some((start, end)) = find_url(rest) {
        out.push_str(&escape_html(&rest[..start]));
        let url = escape_html(&rest[start..end]);
        let _ = write!(
            out,
            "<a href=\"{url}\" rel=\"noopener noreferrer nofollow\" target=\"_blank\">{url}</a>"
        );
        rest = &rest[end..];
    }
    out.push_str(&escape_html(rest));
    out
}

/// The byte range of the first `http://` or `https://` address in `text`.
///
/// An address runs over printable ASCII except quotes and angle brackets: it ends at a space,
/// at a quote around it, and at the first non-ASCII character, which in Chinese text is
/// usually the punctuation right after it (`详见https://example.com/a，谢谢`). Punctuation at
/// its end belongs to the sentence, and a closing bracket only to the address if it opened one
/// (`(see https://en.wikipedia.org/wiki/Rust_(language))`).
fn find_url(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(offset) = bytes[from..]
        .iter()
        .position(|b| b.eq_ignore_ascii_case(&b'h'))
    {
        let start = from + offset;
        let rest = &bytes[start..];
        let scheme_len = if starts_with_ignore_case(rest, b"https://") {
            8
        } else if starts_with_ignore_case(rest, b"http://") {
            7
        } else {
            from = start + 1;
            continue;
        };
        let body = start + scheme_len;
        let len = bytes[body..]
            .iter()
            .take_while(|&&b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'"' | b'\''))
            .count();
        let end = trim_url_end(&bytes[body..body + len]) + body;
        if end > body {
            return Some((start, end));
        }
        from = body;
    }
    None
}

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The length of `url` without the sentence punctuation and unbalanced brackets at its end.
fn trim_url_end(url: &[u8]) -> usize {
    let mut end = url.len();
    while let Some(&last) = url[..end].last() {
        let unbalanced = |open: u8, close: u8| {
            let url = &url[..end];
            let count = |c: u8| url.iter().filter(|&&b| b == c).count();
            count(close) > count(open)
        };
        let trailing = match last {
            b'.' | b',' | b':' | b';' | b'!' | b'?' | b'*' => true,
            b')' => unbalanced(b'(', b')'),
            b']' => unbalanced(b'[', b']'),
            b'}' => unbalanced(b'{', b'}'),
            _ => false,
        };
        if !trailing {
            break;
        }
        end -= 1;
    }
    end
}

/// A moment in UTC, broken down for display; computed here so the page needs no date crate.
#[derive(Debug, PartialEq)]
struct UtcTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl UtcTime {
    fn from_unix_ms(ms: i64) -> Self {
        const DAY_MS: i64 = 86_400_000;
        let days = ms.div_euclid(DAY_MS);
        let seconds_of_day = ms.rem_euclid(DAY_MS) / 1000;
        let (year, month, day) = civil_from_days(days);
        UtcTime {
            year,
            month,
            day,
            hour: (seconds_of_day / 3600) as u32,
            minute: (seconds_of_day / 60 % 60) as u32,
            second: (seconds_of_day % 60) as u32,
        }
    }

    /// For `<time datetime>`: "2026-11-27T02:08:05Z".
    fn iso8601(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// What readers without script see: "2026-11-27 02:08 UTC".
    fn readable(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            self.year, self.month, self.day, self.hour, self.minute
        )
    }
}

/// Year, month (1–12) and day (1–31) of the proleptic Gregorian calendar for a count of days
/// since 1970-01-01 (Howard Hinnant's `civil_from_days`, exact for every `i64` day we meet).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The page's only script: shows each time (the message's, or each of a digest's) in the
/// reader's zone and locale, keeping the UTC text as a tooltip. Plain ES5 for old in-app
/// browsers; any failure leaves the UTC text.
const SCRIPT: &str = r#"
(function () {
  var times = document.getElementsByTagName("time");
  for (var i = 0; i < times.length; i++) {
    var el = times[i];
    var ms = parseInt(el.getAttribute("data-ms"), 10);
    if (isNaN(ms)) { continue; }
    var date = new Date(ms);
    if (isNaN(date.getTime())) { continue; }
    try {
      var local = date.toLocaleString();
      if (local && local !== "Invalid Date") {
        el.setAttribute("title", el.textContent);
        el.textContent = local;
      }
    } catch (e) {}
  }
})();
"#;

/// The page's only style sheet. System fonts; colours spelled out twice (light, then dark)
/// rather than through custom properties, which old in-app browsers may lack. Declarations
/// an old engine does not know (`overflow-wrap: anywhere`) follow a fallback it does know.
/// Table cells never break inside a word (the table scrolls sideways instead: numbers split
/// mid-digit are unreadable); header cells stay on one line.
const STYLE: &str = r#"
html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
body {
  margin: 0; background: #ffffff; color: #1f2328;
  font-family: -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", "Noto Sans CJK SC", sans-serif;
  font-size: 17px; line-height: 1.6;
}
.page { max-width: 46rem; margin: 0 auto; padding: 20px 16px 32px; }
header, footer { display: block; }
header { margin-bottom: 20px; border-bottom: 1px solid #d8dee4; padding-bottom: 12px; }
header h1 { font-size: 1.4em; line-height: 1.3; margin: 0 0 6px; }
article { display: block; margin-bottom: 24px; padding-bottom: 8px; border-bottom: 1px solid #d8dee4; }
article h2 { font-size: 1.2em; margin: 4px 0 8px; }
.sent { margin: 0; color: #656d76; font-size: 14px; }
.content { word-wrap: break-word; overflow-wrap: break-word; overflow-wrap: anywhere; }
.text { white-space: pre-wrap; }
.content > :first-child { margin-top: 0; }
p, ul, ol, pre, blockquote, table { margin: 0 0 1em; }
h1, h2, h3, h4, h5, h6 { line-height: 1.3; margin: 1.4em 0 0.6em; }
.content h1 { font-size: 1.35em; }
.content h2 { font-size: 1.25em; }
.content h3 { font-size: 1.12em; }
.content h4, .content h5, .content h6 { font-size: 1em; }
ul, ol { padding-left: 1.6em; }
li + li { margin-top: 0.25em; }
li > input[type="checkbox"] { margin: 0 0.4em 0 0; vertical-align: middle; }
a { color: #0969da; text-decoration: underline; }
hr { border: 0; border-top: 1px solid #d8dee4; margin: 1.5em 0; }
blockquote { margin-left: 0; margin-right: 0; padding: 0 1em; color: #59636e;
  border-left: 4px solid #d0d7de; }
code, pre {
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  font-size: 0.88em;
}
code { background: #eff2f5; border-radius: 4px; padding: 0.15em 0.35em; }
pre { background: #f3f5f7; border-radius: 6px; padding: 12px 14px; line-height: 1.45;
  overflow-x: auto; -webkit-overflow-scrolling: touch; }
pre code { background: none; padding: 0; font-size: 1em; white-space: pre;
  word-wrap: normal; overflow-wrap: normal; }
table { display: block; max-width: 100%; overflow-x: auto; -webkit-overflow-scrolling: touch;
  border-collapse: collapse; }
.content table { word-wrap: normal; overflow-wrap: normal; }
th, td { border: 1px solid #d0d7de; padding: 6px 12px; text-align: left; }
th { background: #f3f5f7; white-space: nowrap; }
td { min-width: 4em; }
th[align="center"], td[align="center"] { text-align: center; }
th[align="right"], td[align="right"] { text-align: right; }
footer { margin-top: 32px; color: #8c959f; font-size: 13px; text-align: center; }
.files { display: block; margin-top: 24px; }
.files h2 { font-size: 1em; margin: 16px 0 8px; color: #656d76; }
.image { margin: 0 0 16px; }
.image img { display: block; max-width: 100%; width: auto; height: auto; border-radius: 4px;
  border: 1px solid #d8dee4; background: #f3f5f7; }
.downloads { list-style: none; padding: 0; }
.downloads li { word-wrap: break-word; overflow-wrap: break-word; overflow-wrap: anywhere; }
.size { color: #656d76; font-size: 14px; white-space: nowrap; }
@media (prefers-color-scheme: dark) {
  body { background: #16181c; color: #e6edf3; }
  header, hr, article { border-color: #30363d; }
  .sent { color: #9198a1; }
  a { color: #58a6ff; }
  blockquote { color: #9198a1; border-left-color: #3d444d; }
  code { background: #262c36; }
  pre, th { background: #1f242c; }
  th, td { border-color: #3d444d; }
  footer { color: #6e7681; }
  .files h2, .size { color: #9198a1; }
  .image img { border-color: #30363d; background: #1f242c; }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn page<'a>(title: Option<&'a str>, content: &'a str, markdown: bool) -> Page<'a> {
        Page {
            title,
            content,
            markdown,
            created_at_ms: UnixMillis::from_millis(1_795_745_285_000),
            nonce: "bm9uY2UxMjM0NTY3ODkw",
            files: &[],
        }
    }

    #[test]
    fn is_a_complete_self_contained_document() {
        let html = render(&page(Some("Backup done"), "all good\nsee the log", false));
        assert!(html.starts_with("<!DOCTYPE html>\n<html"));
        assert!(html.ends_with("</html>\n"));
        for needle in [
            "<meta charset=\"utf-8\">",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            "<meta name=\"referrer\" content=\"no-referrer\">",
            "<meta name=\"color-scheme\" content=\"light dark\">",
            "<title>Backup done</title>",
            "<h1>Backup done</h1>",
            "<footer>pushbot</footer>",
            "@media (prefers-color-scheme: dark)",
            "white-space: pre-wrap",
            "overflow-wrap: anywhere",
            "max-width: 46rem",
        ] {
            assert!(html.contains(needle), "{needle} missing");
        }
        // nothing fetched: no address of any kind outside the user's content
        assert!(!html.contains("http://"));
        assert!(!html.contains("https://"));
        assert!(
            !html.contains("//"),
            "no protocol-relative references either"
        );
        assert!(!html.contains("@import") && !html.contains("url("));
        assert!(!html.contains(" src=") && !html.contains(" href="));
    }

    #[test]
    fn nonce_is_on_the_only_style_and_script() {
        let html = render(&page(None, "x", true));
        assert_eq!(html.matches("<style").count(), 1);
        assert_eq!(html.matches("<script").count(), 1);
        assert!(html.contains("<style nonce=\"bm9uY2UxMjM0NTY3ODkw\">"));
        assert!(html.contains("<script nonce=\"bm9uY2UxMjM0NTY3ODkw\">"));
    }

    #[test]
    fn title_is_escaped_and_optional() {
        let html = render(&page(Some("<script>alert(1)</script> & \"q\""), "x", false));
        assert!(
            html.contains(
                "<title>&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;q&quot;</title>"
            )
        );
        assert!(
            html.contains("<h1>&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;q&quot;</h1>")
        );
        assert_eq!(html.matches("<script").count(), 1);

        for title in [None, Some(""), Some("   ")] {
            let html = render(&page(title, "x", false));
            assert!(html.contains("<title>pushbot</title>"));
            assert!(!html.contains("<h1"));
        }
    }

    #[test]
    fn markdown_goes_through_safe_html() {
        let hostile = "# Hi\n\n<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n\
                       [x](javascript:alert(1)) ![a](http://insecure.example/a.png)";
        let html = render(&page(None, hostile, true));
        assert_eq!(html.matches("<script").count(), 1);
        assert!(!html.contains("<img"));
        assert!(!html.contains("javascript:alert(1)\""));
        assert!(html.contains(
            "<a href=\"http://insecure.example/a.png\" rel=\"noopener noreferrer nofollow\" \
             target=\"_blank\">🖼 a</a>"
        ));
        assert!(html.contains("<div class=\"content markdown\"><h1>Hi</h1>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn plain_text_is_escaped_with_links() {
        let html = render(&page(
            None,
            "<b>bold</b> & <script>x</script>\n  indented",
            false,
        ));
        assert!(html.contains(
            "<div class=\"content text\">&lt;b&gt;bold&lt;/b&gt; &amp; \
             &lt;script&gt;x&lt;/script&gt;\n  indented</div>"
        ));
        assert_eq!(html.matches("<script").count(), 1);
    }

    #[test]
    fn plain_text_links() {
        let link = |url: &str| {
            format!(
                "<a href=\"{url}\" rel=\"noopener noreferrer nofollow\" target=\"_blank\">{url}</a>"
            )
        };
        let cases: &[(&str, String)] = &[
            ("no links here", "no links here".to_owned()),
            (
                "see https://example.com/a?b=1&c=2.",
                format!("see {}.", link("https://example.com/a?b=1&amp;c=2")),
            ),
            (
                "详见https://example.com/r/1，谢谢",
                format!("详见{}，谢谢", link("https://example.com/r/1")),
            ),
            (
                "(see https://en.wikipedia.org/wiki/Rust_(language))",
                format!(
                    "(see {})",
                    link("https://en.wikipedia.org/wiki/Rust_(language)")
                ),
            ),
            (
                "\"http://x.example/\"><script>",
                format!(
                    "&quot;{}&quot;&gt;&lt;script&gt;",
                    link("http://x.example/")
                ),
            ),
            ("HTTPS://X.EXAMPLE", link("HTTPS://X.EXAMPLE")),
            ("http:// and https://", "http:// and https://".to_owned()),
            (
                "javascript:alert(1) ftp://x data:text/html,x",
                "javascript:alert(1) ftp://x data:text/html,x".to_owned(),
            ),
            (
                "a http://1.example\nb https://2.example/x_y-z~",
                format!(
                    "a {}\nb {}",
                    link("http://1.example"),
                    link("https://2.example/x_y-z~")
                ),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&plain_text_html(text), want, "{text:?}");
        }
    }

    #[test]
    fn sent_time_in_utc_with_script_for_local_time() {
        let html = render(&page(None, "x", false));
        assert!(html.contains(
            "<time id=\"sent\" datetime=\"2026-11-27T02:08:05Z\" data-ms=\"1795745285000\">\
             2026-11-27 02:08 UTC</time>"
        ));
        assert!(SCRIPT.contains("toLocaleString()"));
        // plain ES5 for old in-app browsers
        for modern in ["=>", "let ", "const ", "?.", "??", "`", "class "] {
            assert!(!SCRIPT.contains(modern), "{modern} in script");
        }
        assert!(!STYLE.contains("var(--"));
    }

    #[test]
    fn utc_time_breakdown() {
        let cases: &[(i64, &str)] = &[
            (0, "1970-01-01T00:00:00Z"),
            (999, "1970-01-01T00:00:00Z"),
            (-1, "1969-12-31T23:59:59Z"),
            (1_795_745_285_000, "2026-11-27T02:08:05Z"),
            (1_709_251_199_000, "2024-02-29T23:59:59Z"),
            (1_709_251_200_000, "2024-03-01T00:00:00Z"),
            (951_782_400_000, "2000-02-29T00:00:00Z"),
            (-2_203_848_000_000, "1900-03-01T12:00:00Z"),
            (253_402_300_799_000, "9999-12-31T23:59:59Z"),
        ];
        for &(ms, want) in cases {
            assert_eq!(UtcTime::from_unix_ms(ms).iso8601(), want, "{ms}");
        }
        assert_eq!(
            UtcTime::from_unix_ms(1_795_745_285_000).readable(),
            "2026-11-27 02:08 UTC"
        );
        // extremes do not panic
        let _ = UtcTime::from_unix_ms(i64::MAX).iso8601();
        let _ = UtcTime::from_unix_ms(i64::MIN).iso8601();
    }

    #[test]
    fn a_digest_page_lists_every_message_in_full_in_order() {
        let long = "第一行\n".repeat(400);
        let entries = [
            Entry {
                title: Some("Disk <full>"),
                content: &long,
                markdown: false,
                created_at_ms: UnixMillis::from_millis(1_795_745_285_000),
            },
            Entry {
                title: None,
                content: "**bold** see https://x.example/a",
                markdown: true,
                created_at_ms: UnixMillis::from_millis(1_795_745_345_000),
            },
        ];
        let html = render_digest(&DigestPage {
            entries: &entries,
            missing: 0,
            sent_at_ms: UnixMillis::from_millis(1_795_745_400_000),
            nonce: "bm9uY2UxMjM0NTY3ODkw",
        });
        assert!(html.starts_with("<!DOCTYPE html>\n<html") && html.ends_with("</html>\n"));
        assert!(html.contains("<title>2 条消息 · 2 messages</title>"));
        assert!(html.contains("<h1>2 条消息 · 2 messages</h1>"));
        assert!(html.contains("<h2>Disk &lt;full&gt;</h2>"));
        assert!(html.contains(&format!("<div class=\"content text\">{long}</div>")));
        assert!(html.contains("<div class=\"content markdown\"><p><strong>bold</strong>"));
        assert!(html.contains(
            "<p class=\"sent\">1. <time datetime=\"2026-11-27T02:08:05Z\" \
             data-ms=\"1795745285000\">2026-11-27 02:08 UTC</time></p>"
        ));
        assert!(html.contains("<p class=\"sent\">2. <time datetime=\"2026-11-27T02:09:05Z\""));
        let first = html.find("Disk &lt;full&gt;").unwrap_or(usize::MAX);
        let second = html.find("<strong>bold</strong>").unwrap_or(0);
        assert!(first < second, "in acceptance order");
        assert_eq!(html.matches("<article").count(), 2);
        assert_eq!(html.matches("<script").count(), 1);
        assert!(!html.contains("deleted"));
        assert!(!html.contains("id=\"sent\""), "no single-message time id");
    }

    #[test]
    fn a_digest_page_says_how_many_messages_are_gone() {
        let entries = [Entry {
            title: Some("kept"),
            content: "",
            markdown: false,
            created_at_ms: UnixMillis::from_millis(0),
        }];
        let html = render_digest(&DigestPage {
            entries: &entries,
            missing: 2,
            sent_at_ms: UnixMillis::from_millis(0),
            nonce: "n",
        });
        assert!(html.contains("<h1>3 条消息 · 3 messages</h1>"));
        assert!(html.contains("另有 2 条已超过保存期限并被删除。<br>2 more were older"));
    }

    fn with_files<'a>(files: &'a [PageFile<'a>]) -> Page<'a> {
        Page {
            files,
            ..page(Some("t"), "x", false)
        }
    }

    #[test]
    fn images_are_shown_and_every_file_is_a_download_link_with_its_size() {
        let files = [
            PageFile {
                name: "chart.png",
                size: 48_213,
                image: true,
                href: "0190/files/0?k=abc",
            },
            PageFile {
                name: "report.pdf",
                size: 3 * 1024 * 1024,
                image: false,
                href: "0190/files/1?k=abc",
            },
        ];
        let page = with_files(&files);
        assert!(page.shows_images());
        let html = render(&page);
        assert!(html.contains(
            "<p class=\"image\"><a href=\"0190/files/0?k=abc\"><img src=\"0190/files/0?k=abc\" \
             alt=\"chart.png\" loading=\"lazy\" decoding=\"async\"></a></p>"
        ));
        assert_eq!(html.matches("<img").count(), 1, "only the image is shown");
        assert!(html.contains(
            "<li><a href=\"0190/files/0?k=abc\" download=\"chart.png\">chart.png</a> \
             <span class=\"size\">47.1 KiB</span></li>"
        ));
        assert!(html.contains(
            "<li><a href=\"0190/files/1?k=abc\" download=\"report.pdf\">report.pdf</a> \
             <span class=\"size\">3.0 MiB</span></li>"
        ));
        assert_eq!(html.matches("<li>").count(), 2, "every file listed");
        // after the content, in the order sent
        let (content, image, pdf) = (
            html.find("<div class=\"content").unwrap_or(usize::MAX),
            html.find("download=\"chart.png\"").unwrap_or(0),
            html.find("download=\"report.pdf\"").unwrap_or(0),
        );
        assert!(content < image && image < pdf, "{html}");
        // the style keeps an image within the page, at its own aspect ratio
        assert!(STYLE.contains("max-width: 100%; width: auto; height: auto;"));
    }

    #[test]
    fn a_hostile_file_name_is_escaped_in_alt_and_link_text() {
        let files = [PageFile {
            name: "\"><script>alert(1)</script><img src=x onerror=alert(1)>.png",
            size: 10,
            image: true,
            href: "id/files/0?k=a\"b&c",
        }];
        let html = render(&with_files(&files));
        let escaped = "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x \
                       onerror=alert(1)&gt;.png";
        assert!(html.contains(&format!("alt=\"{escaped}\"")), "{html}");
        assert!(
            html.contains(&format!("download=\"{escaped}\">{escaped}</a>")),
            "{html}"
        );
        assert!(
            html.contains("href=\"id/files/0?k=a&quot;b&amp;c\""),
            "{html}"
        );
        assert_eq!(html.matches("<script").count(), 1, "only ours");
        assert_eq!(html.matches("<img").count(), 1, "only the one shown");
        assert!(!html.contains("onerror=alert(1)>"));
    }

    #[test]
    fn files_only_no_images_and_no_files() {
        let files = [PageFile {
            name: "drawing.svg",
            size: 0,
            image: false,
            href: "id/files/0?k=a",
        }];
        let page = with_files(&files);
        assert!(!page.shows_images(), "an SVG is a file");
        let html = render(&page);
        assert!(!html.contains("<img"));
        assert!(html.contains(">drawing.svg</a> <span class=\"size\">0 B</span>"));

        let html = render(&with_files(&[]));
        assert!(!html.contains("class=\"files\"") && !html.contains("<li>"));
        assert!(!with_files(&[]).shows_images());
    }

    #[test]
    fn sizes_for_readers() {
        let cases: &[(u64, &str)] = &[
            (0, "0 B"),
            (6, "6 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (48_213, "47.1 KiB"),
            (1024 * 1024 - 52, "1023.9 KiB"),
            (1024 * 1024 - 51, "1.0 MiB"),
            (10 * 1024 * 1024, "10.0 MiB"),
            (20 * 1024 * 1024 - 1, "20.0 MiB"),
            (1024 * 1024 * 1024, "1.0 GiB"),
            (5 * 1024 * 1024 * 1024 * 1024, "5120.0 GiB"),
            (u64::MAX, "17179869184.0 GiB"),
        ];
        for &(bytes, want) in cases {
            assert_eq!(human_size(bytes), want, "{bytes}");
        }
    }

    #[test]
    fn images_allow_this_server_and_nothing_more() {
        let strict = content_security_policy("bm9uY2U=");
        let images = content_security_policy_with_images("bm9uY2U=");
        assert_eq!(images, strict.replace("img-src 'none'", "img-src 'self'"));
        assert_ne!(images, strict);
    }

    #[test]
    fn csp_is_strict_and_matches_the_nonce() {
        assert_eq!(
            content_security_policy("bm9uY2U="),
            "default-src 'none'; style-src 'nonce-bm9uY2U='; script-src 'nonce-bm9uY2U='; \
             img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        );
        // a nonce can never add a directive
        let csp = content_security_policy("abc'; script-src * 'unsafe-inline");
        assert_eq!(csp.matches(';').count(), 6);
        assert_eq!(csp.matches('\'').count(), 14);
        assert!(!csp.contains('*'));
        // and the page carries the same reduced nonce, so the two still match
        let html = render(&Page {
            nonce: "ab\"c d",
            ..page(None, "x", false)
        });
        assert!(html.contains("<style nonce=\"abcd\">"));
        assert!(content_security_policy("ab\"c d").contains("'nonce-abcd'"));
    }
}
