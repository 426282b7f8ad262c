//! A file's name as recipients see it: from the server's `Content-Disposition` or the
//! URL's last path segment (never its query), made safe to show and to save.

use percent_encoding::percent_decode_str;
use url::Url;

/// The longest name kept, in bytes (a file name on most file systems).
pub const MAX_FILENAME_BYTES: usize = 255;

/// Longest extension kept when a long name is shortened (`.verylongextension` is cut
/// like the rest).
const MAX_KEPT_EXTENSION_BYTES: usize = 16;

/// A name safe to show, attach and save: only what follows the last `/` or `\`; no
/// control or bidirectional-override characters (which can make `exe.png` of `gnp.exe`);
/// characters Windows refuses (`:*?"<>|`) as `_`; no leading or trailing spaces or dots
/// (`..`, hidden files, names Windows trims); at most [`MAX_FILENAME_BYTES`] bytes,
/// shortened before the extension. `None` when nothing is left.
pub fn sanitize_filename(raw: &str) -> Option<String> {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or(raw);
    let cleaned: String = last
        .chars()
        .filter(|&c| !c.is_control() && !is_bidi_control(c))
        .map(|c| match c {
            ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c => c,
        })
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| c.is_whitespace() || c == '.');
    if trimmed.is_empty() {
        return None;
    }
    Some(shorten(trimmed, MAX_FILENAME_BYTES))
}

/// The name a server gives in `Content-Disposition` (`filename*=UTF-8''…` preferred over
/// `filename=`), sanitised. Takes the raw header bytes: some servers send UTF-8 unencoded.
pub fn from_content_disposition(header: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(header);
    let params = mailparse::parse_content_disposition(&text).params;
    // Given both, mailparse keeps `filename` and leaves `filename*` undecoded; RFC 6266
    // prefers `filename*`, so it is decoded on its own.
    let extended = params.get("filename*").and_then(|value| {
        let alone = format!("attachment; filename*={value}");
        mailparse::parse_content_disposition(&alone)
            .params
            .remove("filename")
    });
    extended
        .as_deref()
        .or(params.get("filename").map(String::as_str))
        .and_then(sanitize_filename)
}

/// The URL's last non-empty path segment, percent-decoded and sanitised.
pub fn from_url(url: &Url) -> Option<String> {
    let segment = url.path_segments()?.rfind(|s| !s.is_empty())?;
    let decoded = percent_decode_str(segment).decode_utf8_lossy();
    sanitize_filename(&decoded)
}

fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// `name` cut to at most `max` bytes on a character boundary, keeping a short extension.
fn shorten(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let extension = name
        .rfind('.')
        .map(|dot| &name[dot..])
        .filter(|ext| ext.len() <= MAX_KEPT_EXTENSION_BYTES && ext.len() < name.len())
        .unwrap_or("");
    let stem = &name[..name.len() - extension.len()];
    let mut end = max - extension.len();
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{extension}", &stem[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitises() {
        let cases = [
            ("chart.png", Some("chart.png")),
            ("图表 2026.png", Some("图表 2026.png")),
            ("../../etc/passwd", Some("passwd")),
            ("C:\\Users\\me\\report.pdf", Some("report.pdf")),
            ("dir/", None),
            ("..", None),
            ("...", None),
            (".hidden", Some("hidden")),
            ("  spaced.txt  ", Some("spaced.txt")),
            ("name.", Some("name")),
            ("a\nb\r\t\0c.txt", Some("abc.txt")),
            ("invoice\u{202E}gnp.exe", Some("invoicegnp.exe")),
            ("\u{2067}x\u{2069}.png", Some("x.png")),
            ("what?<is>:this|\"*.txt", Some("what__is__this___.txt")),
            ("", None),
            ("\u{7f}\u{1b}", None),
        ];
        for (raw, want) in cases {
            assert_eq!(sanitize_filename(raw).as_deref(), want, "{raw:?}");
        }
    }

    #[test]
    fn long_names_are_cut_before_the_extension_on_a_char_boundary() {
        let long = format!("{}.png", "a".repeat(300));
        let cut = sanitize_filename(&long).unwrap();
        assert_eq!(cut.len(), MAX_FILENAME_BYTES);
        assert!(cut.ends_with("aaa.png"));

        let chinese = format!("{}.pdf", "图".repeat(200)); // 3 bytes each
        let cut = sanitize_filename(&chinese).unwrap();
        assert!(
            cut.len() <= MAX_FILENAME_BYTES && cut.ends_with("图.pdf"),
            "{cut}"
        );

        let odd_extension = format!("x.{}", "e".repeat(300));
        let cut = sanitize_filename(&odd_extension).unwrap();
        assert_eq!(cut.len(), MAX_FILENAME_BYTES);
        assert!(cut.starts_with("x.eee"));
    }

    #[test]
    fn content_disposition() {
        let cases: [(&[u8], Option<&str>); 9] = [
            (b"attachment; filename=\"chart.png\"", Some("chart.png")),
            (b"inline; filename=plain.txt", Some("plain.txt")),
            (
                b"attachment; filename=\"fallback.png\"; filename*=UTF-8''%E5%9B%BE%E8%A1%A8.png",
                Some("图表.png"),
            ),
            (b"attachment; filename=\"../../../etc/cron.d/x\"", Some("x")),
            (
                "attachment; filename=\"报告.pdf\"".as_bytes(),
                Some("报告.pdf"),
            ),
            (
                b"attachment; filename*=UTF-8''%E5%9B%BE.png; filename=\"fallback.png\"",
                Some("图.png"),
            ),
            (
                b"attachment; filename=\"fallback.png\"; filename*=x-unknown''abc.png",
                Some("fallback.png"),
            ),
            (b"attachment", None),
            (b"attachment; filename=\"\"", None),
        ];
        for (header, want) in cases {
            assert_eq!(
                from_content_disposition(header).as_deref(),
                want,
                "{}",
                String::from_utf8_lossy(header)
            );
        }
    }

    #[test]
    fn from_the_url_path_never_the_query() {
        let cases = [
            (
                "https://img.example/a/b/chart.png?token=SECRET",
                Some("chart.png"),
            ),
            ("https://img.example/a/b/", Some("b")),
            ("https://img.example/%E5%9B%BE.png", Some("图.png")),
            ("https://img.example/a%2F..%2Fb.png", Some("b.png")),
            ("https://img.example/?file=x.png", None),
            ("https://img.example", None),
        ];
        for (url, want) in cases {
            let url = Url::parse(url).unwrap();
            assert_eq!(from_url(&url).as_deref(), want, "{url}");
        }
    }
}
