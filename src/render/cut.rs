//! Cutting text to a byte budget without breaking what the reader sees as one character.
//!
//! WeCom limits messages in bytes, not characters, and the text we cut is Chinese, emoji and
//! accented names as often as ASCII. Cutting on a `char` boundary is not enough: a cut between
//! `e` and its combining accent, between the two halves of a flag or inside an emoji ZWJ
//! sequence (👩‍👩‍👧‍👦) leaves a visibly different or broken character at the end. So we cut on
//! extended grapheme cluster boundaries (UAX #29), the unit a reader perceives as one character.

use unicode_segmentation::UnicodeSegmentation;

/// What [`excerpt`] appends when it shortens text: one character, three bytes in UTF-8.
const ELLIPSIS: &str = "…";

/// The longest prefix of `text` that is at most `max_bytes` bytes long and ends on an extended
/// grapheme cluster boundary.
///
/// Returns `text` itself when it fits. A single grapheme larger than `max_bytes` at the start
/// (a long ZWJ sequence in a tiny budget) gives an empty prefix rather than half a character.
pub fn cut(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    for (start, grapheme) in text.grapheme_indices(true) {
        if start + grapheme.len() > max_bytes {
            return &text[..start];
        }
    }
    // Unreachable in practice: the clusters cover the whole text, which does not fit.
    text
}

/// `text` if it fits in `max_bytes`, else a [`cut`] prefix followed by "…", all within
/// `max_bytes`.
///
/// Trailing whitespace before the marker is dropped so the reader sees "word…", not
/// "word …". With a budget below the marker's three bytes there is no room for it, and the
/// bare cut prefix is returned.
pub fn excerpt(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    if max_bytes < ELLIPSIS.len() {
        return cut(text, max_bytes).to_owned();
    }
    let prefix = cut(text, max_bytes - ELLIPSIS.len()).trim_end();
    let mut out = String::with_capacity(prefix.len() + ELLIPSIS.len());
    out.push_str(prefix);
    out.push_str(ELLIPSIS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FAMILY: &str = "👩\u{200d}👩\u{200d}👧\u{200d}👦"; // 25 bytes, one grapheme
    const FLAG_CN: &str = "🇨🇳"; // two regional indicators, 8 bytes
    const E_ACUTE: &str = "e\u{301}"; // decomposed é, 3 bytes

    #[test]
    fn cut_table() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 0, ""),
            ("", 5, ""),
            ("hello", 0, ""),
            ("hello", 3, "hel"),
            ("hello", 5, "hello"),
            ("hello", 99, "hello"),
            // CJK: three bytes each
            ("推送消息", 2, ""),
            ("推送消息", 3, "推"),
            ("推送消息", 5, "推"),
            ("推送消息", 6, "推送"),
            ("推送消息", 11, "推送消"),
            ("推送消息", 12, "推送消息"),
            // four-byte emoji
            ("a😀b", 4, "a"),
            ("a😀b", 5, "a😀"),
            // decomposed é is one grapheme of three bytes: never split from its accent
            ("cafe\u{301}!", 4, "caf"),
            ("cafe\u{301}!", 5, "caf"),
            ("cafe\u{301}!", 6, "cafe\u{301}"),
            // the ZWJ family is one grapheme
            (FAMILY, 24, ""),
            (FAMILY, 25, FAMILY),
            ("hi👩\u{200d}👩\u{200d}👧\u{200d}👦!", 26, "hi"),
            (
                "hi👩\u{200d}👩\u{200d}👧\u{200d}👦!",
                27,
                "hi👩\u{200d}👩\u{200d}👧\u{200d}👦",
            ),
            // a flag is two regional indicators that only make sense together
            ("🇨🇳🇫🇷", 4, ""),
            ("🇨🇳🇫🇷", 7, ""),
            ("🇨🇳🇫🇷", 8, FLAG_CN),
            ("🇨🇳🇫🇷", 15, FLAG_CN),
            // CRLF is one grapheme
            ("a\r\nb", 2, "a"),
            ("a\r\nb", 3, "a\r\n"),
        ];
        for &(text, max, want) in cases {
            assert_eq!(cut(text, max), want, "cut({text:?}, {max})");
        }
        assert_eq!(E_ACUTE.len(), 3);
        assert_eq!(cut(E_ACUTE, 2), "");
        assert_eq!(FAMILY.len(), 25);
    }

    #[test]
    fn excerpt_table() {
        let cases: &[(&str, usize, &str)] = &[
            ("hello", 5, "hello"),
            ("hello world", 11, "hello world"),
            ("hello world", 10, "hello w…"),
            ("hello world", 9, "hello…"),
            ("hello world", 8, "hello…"),
            ("hello world", 3, "…"),
            ("hello world", 2, "he"),
            ("hello world", 0, ""),
            ("推送消息", 11, "推送…"),
            ("推送消息", 9, "推送…"),
            ("推送消息", 8, "推…"),
            ("推送消息", 5, "…"),
            ("cafe\u{301} au lait", 8, "caf…"),
            ("cafe\u{301} au lait", 9, "cafe\u{301}…"),
            ("😀😀", 7, "😀…"),
            ("😀😀", 6, "…"),
            ("😀😀", 2, ""),
            ("🇨🇳🇫🇷", 11, "🇨🇳…"),
        ];
        for &(text, max, want) in cases {
            let got = excerpt(text, max);
            assert_eq!(got, want, "excerpt({text:?}, {max})");
            assert!(got.len() <= max);
        }
    }

    /// Text that exercises grapheme rules: ASCII, CJK, combining marks, emoji with skin tones,
    /// ZWJ joiners (also dangling ones), regional indicators, CRLF and whitespace.
    fn tricky_text() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            "a",
            "Z",
            " ",
            "\n",
            "\r\n",
            "\r",
            "\t",
            "推",
            "送",
            "。",
            "\u{301}",
            "\u{308}",
            "\u{200d}",
            "\u{fe0f}",
            "😀",
            "👩",
            "👍🏽",
            "🇨",
            "🇳",
            "🇫🇷",
            "👩\u{200d}👩\u{200d}👧\u{200d}👦",
            "ก\u{e33}",
            "\u{1100}\u{1161}\u{11a8}",
        ]);
        prop::collection::vec(pieces, 0..24).prop_map(|v| v.concat())
    }

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![tricky_text(), any::<String>()]
    }

    /// `prefix` is `text` cut after its first k graphemes, for some k.
    fn ends_on_boundary(text: &str, prefix: &str) -> bool {
        let whole: Vec<&str> = text.graphemes(true).collect();
        let part: Vec<&str> = prefix.graphemes(true).collect();
        part.len() <= whole.len() && whole[..part.len()] == part[..]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn cut_is_the_longest_fitting_grapheme_prefix(text in any_text(), max in 0usize..64) {
            let got = cut(&text, max);
            prop_assert!(text.starts_with(got));
            prop_assert!(got.len() <= max);
            prop_assert!(ends_on_boundary(&text, got));
            if got.len() < text.len() {
                // maximal: the next grapheme would not have fitted
                let next = text[got.len()..].graphemes(true).next().unwrap_or("");
                prop_assert!(!next.is_empty());
                prop_assert!(got.len() + next.len() > max);
            } else {
                prop_assert!(text.len() <= max);
            }
        }

        #[test]
        fn excerpt_fits_and_starts_with_a_cut_prefix(text in any_text(), max in 0usize..64) {
            let got = excerpt(&text, max);
            if text.len() <= max {
                prop_assert_eq!(&got, &text);
            } else {
                prop_assert!(got.len() <= max);
                let body = got.strip_suffix(ELLIPSIS).unwrap_or(&got);
                prop_assert_eq!(got.ends_with(ELLIPSIS), max >= ELLIPSIS.len());
                prop_assert!(text.starts_with(body));
                prop_assert!(ends_on_boundary(&text, body));
                prop_assert!(body.len() <= cut(&text, max).len());
            }
        }
    }
}
