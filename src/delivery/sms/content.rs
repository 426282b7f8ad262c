//! What goes into an SMS: template variables for the template providers (Aliyun, Tencent
//! Cloud), a free-text body cut to a number of segments for Twilio. Pure functions.

use unicode_segmentation::UnicodeSegmentation;

use super::SmsText;

/// What a template provider gets for an empty variable: both refuse empty values.
pub const EMPTY_VARIABLE: &str = "-";

/// The variables of one templated SMS, in the template's order: `title`, `content`, `link`
/// for messages, `code` for verification codes (Aliyun names them, Tencent Cloud numbers
/// them `{1}`, `{2}`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateVariables {
    /// The template for codes (`sms.code_template`) rather than for messages.
    pub is_code: bool,
    pub values: Vec<(&'static str, String)>,
}

impl TemplateVariables {
    /// Aliyun's `TemplateParam`: a JSON object of string values, `{"title":"…",…}`.
    pub fn to_json_object(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .values
            .iter()
            .map(|(name, value)| ((*name).to_owned(), serde_json::Value::from(value.as_str())))
            .collect();
        serde_json::Value::Object(map).to_string()
    }

    /// Tencent Cloud's `TemplateParamSet`: the values in order.
    pub fn positional(&self) -> Vec<String> {
        self.values.iter().map(|(_, v)| v.clone()).collect()
    }
}

/// The variables for `text`: title and content on one line each (runs of white space,
/// line breaks included, become one space) and cut on a grapheme boundary to
/// `max_chars` characters (with `…`); the link is never cut; an empty variable is `-`.
pub fn template_variables(text: &SmsText, max_chars: usize) -> TemplateVariables {
    match text {
        SmsText::Code(code) => TemplateVariables {
            is_code: true,
            values: vec![("code", code.trim().to_owned())],
        },
        SmsText::Message {
            title,
            excerpt,
            link,
        } => {
            let variable = |value: &Option<String>, cut: bool| {
                let line = one_line(value.as_deref().unwrap_or_default());
                match (line.is_empty(), cut) {
                    (true, _) => EMPTY_VARIABLE.to_owned(),
                    (false, true) => cut_chars(&line, max_chars, "…"),
                    (false, false) => line,
                }
            };
            TemplateVariables {
                is_code: false,
                values: vec![
                    ("title", variable(title, true)),
                    ("content", variable(excerpt, true)),
                    ("link", variable(link, false)),
                ],
            }
        }
    }
}

/// Runs of white space (line breaks included) as one space, trimmed.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Length as the providers may count it: UTF-16 code units, so an emoji counts twice
/// (never less than the count of characters, whichever way a provider counts).
fn units(text: &str) -> usize {
    text.encode_utf16().count()
}

/// `text` if it has at most `max` UTF-16 units, else its longest grapheme prefix that
/// fits with `ellipsis` appended, then the ellipsis.
fn cut_chars(text: &str, max: usize, ellipsis: &str) -> String {
    if units(text) <= max {
        return text.to_owned();
    }
    let room = max.saturating_sub(units(ellipsis));
    let mut kept = 0;
    let mut end = 0;
    for (at, grapheme) in text.grapheme_indices(true) {
        kept += units(grapheme);
        if kept > room {
            break;
        }
        end = at + grapheme.len();
    }
    format!("{}{ellipsis}", text[..end].trim_end())
}

/// How an SMS is encoded, which decides how many characters fit in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The GSM 03.38 alphabet, 7 bits: 160 characters alone, 153 per part of a longer text;
    /// the extension characters (`^{}\[~]|€` and form feed) take two.
    Gsm7,
    /// Anything else: UCS-2, 70 UTF-16 units alone, 67 per part.
    Ucs2,
}

/// The GSM 03.38 default alphabet (without the escape code).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
    ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The GSM 03.38 extension table: an escape code and the character, two septets.
const GSM7_EXTENDED: &str = "\u{c}^{}\\[~]|€";

/// Septets a character takes in GSM-7, `None` outside the alphabet.
fn gsm7_septets(c: char) -> Option<usize> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENDED.contains(c) {
        Some(2)
    } else {
        None
    }
}

pub fn encoding(text: &str) -> Encoding {
    if text.chars().all(|c| gsm7_septets(c).is_some()) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

/// How many SMS segments `text` is sent as (0 for an empty text). A character is never
/// split between two parts: an extension character (two septets) or a surrogate pair
/// (two UTF-16 units) that does not fit at the end of a part starts the next.
pub fn segments(text: &str) -> usize {
    if text.is_empty() {
        return 0;
    }
    let (single, part, cost): (usize, usize, fn(char) -> usize) = match encoding(text) {
        Encoding::Gsm7 => (160, 153, |c| gsm7_septets(c).unwrap_or(2)),
        Encoding::Ucs2 => (70, 67, char::len_utf16),
    };
    if text.chars().map(cost).sum::<usize>() <= single {
        return 1;
    }
    let mut parts = 1;
    let mut used = 0;
    for c in text.chars() {
        let c = cost(c);
        if used + c > part {
            parts += 1;
            used = 0;
        }
        used += c;
    }
    parts
}

/// Twilio's `Body`: title, content and link on their own lines, cut (title and content,
/// on a grapheme boundary, with an ellipsis) so that the whole fits in `max_segments`
/// segments, always keeping the link whole at the end. A link alone longer than that is
/// still sent whole. A code is `482913 is your pushbot verification code`.
pub fn free_text(text: &SmsText, max_segments: usize) -> String {
    let (head, link) = match text {
        SmsText::Code(code) => (
            format!("{} is your pushbot verification code", code.trim()),
            String::new(),
        ),
        SmsText::Message {
            title,
            excerpt,
            link,
        } => {
            let head: Vec<&str> = [title, excerpt]
                .into_iter()
                .filter_map(|part| part.as_deref().map(str::trim))
                .filter(|part| !part.is_empty())
                .collect();
            let link = link.as_deref().map(str::trim).unwrap_or_default();
            (head.join("\n"), link.to_owned())
        }
    };
    let join = |head: &str| match (head.is_empty(), link.is_empty()) {
        (_, true) => head.to_owned(),
        (true, false) => link.clone(),
        (false, false) => format!("{head}\n{link}"),
    };
    let whole = join(&head);
    if whole.is_empty() {
        return EMPTY_VARIABLE.to_owned();
    }
    let max_segments = max_segments.max(1);
    if segments(&whole) <= max_segments {
        return whole;
    }
    // "…" is not in GSM-7: a GSM-7 text would double in segments with it.
    let ellipsis = match encoding(&whole) {
        Encoding::Gsm7 => "...",
        Encoding::Ucs2 => "…",
    };
    let graphemes: Vec<(usize, &str)> = head.grapheme_indices(true).collect();
    let with = |n: usize| {
        let end = graphemes.get(n).map_or(head.len(), |(at, _)| *at);
        join(&format!("{}{ellipsis}", head[..end].trim_end()))
    };
    // The longest grapheme prefix that fits: segments only grow with the prefix.
    let (mut fits, mut too_long) = (0usize, graphemes.len());
    if segments(&with(0)) > max_segments {
        return link;
    }
    while too_long - fits > 1 {
        let mid = fits + (too_long - fits) / 2;
        if segments(&with(mid)) <= max_segments {
            fits = mid;
        } else {
            too_long = mid;
        }
    }
    with(fits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(title: Option<&str>, excerpt: Option<&str>, link: Option<&str>) -> SmsText {
        SmsText::Message {
            title: title.map(str::to_owned),
            excerpt: excerpt.map(str::to_owned),
            link: link.map(str::to_owned),
        }
    }

    #[test]
    fn the_gsm_alphabet_is_complete() {
        assert_eq!(GSM7_BASIC.chars().count(), 127);
        assert_eq!(GSM7_EXTENDED.chars().count(), 10);
        assert!(GSM7_BASIC.chars().all(|c| !GSM7_EXTENDED.contains(c)));
        assert_eq!(encoding("Disk full on db-1 (98%) @ 03:00"), Encoding::Gsm7);
        assert_eq!(encoding("price: 5€ {ok} [x] ~y | ^z \\"), Encoding::Gsm7);
        assert_eq!(encoding("磁盘已满"), Encoding::Ucs2);
        assert_eq!(encoding("naïve"), Encoding::Ucs2);
        assert_eq!(encoding("done…"), Encoding::Ucs2);
        assert_eq!(encoding("`code`"), Encoding::Ucs2);
    }

    #[test]
    fn segment_counting() {
        let a = |n: usize| "a".repeat(n);
        let han = |n: usize| "警".repeat(n);
        assert_eq!(segments(""), 0);
        assert_eq!(segments(&a(1)), 1);
        assert_eq!(segments(&a(160)), 1);
        assert_eq!(segments(&a(161)), 2);
        assert_eq!(segments(&a(306)), 2);
        assert_eq!(segments(&a(307)), 3);
        assert_eq!(segments(&a(459)), 3);
        // Extension characters take two septets.
        assert_eq!(segments(&"€".repeat(80)), 1);
        assert_eq!(segments(&"€".repeat(81)), 2);
        // ... and are not split between parts: 152 + € does not fit in the first part.
        // (Without that rule, 152 + 2 + 152 = 306 septets would be two parts.)
        assert_eq!(segments(&(a(152) + "€" + &a(151))), 2);
        assert_eq!(segments(&(a(152) + "€" + &a(152))), 3);
        assert_eq!(segments(&han(70)), 1);
        assert_eq!(segments(&han(71)), 2);
        assert_eq!(segments(&han(134)), 2);
        assert_eq!(segments(&han(135)), 3);
        // One character outside GSM-7 makes the whole text UCS-2.
        assert_eq!(segments(&(a(69) + "警")), 1);
        assert_eq!(segments(&(a(70) + "警")), 2);
        // Emoji are surrogate pairs: two units, never split.
        assert_eq!(segments(&"😀".repeat(35)), 1);
        assert_eq!(segments(&"😀".repeat(36)), 2);
        assert_eq!(segments(&(han(66) + "😀" + &han(65))), 2);
        assert_eq!(segments(&(han(66) + "😀" + &han(66))), 3);
    }

    #[test]
    fn template_variables_are_cut_and_never_empty() {
        let text = message(
            Some("Disk almost full on db-1"),
            Some("  /var is at 98%\n\nclean up   the WAL  "),
            Some("https://push.example.com/m/0190a1b2"),
        );
        let vars = template_variables(&text, 35);
        assert!(!vars.is_code);
        assert_eq!(
            vars.values,
            [
                ("title", "Disk almost full on db-1".to_owned()),
                ("content", "/var is at 98% clean up the WAL".to_owned()),
                ("link", "https://push.example.com/m/0190a1b2".to_owned()),
            ]
        );
        let vars = template_variables(&text, 12);
        assert_eq!(vars.values[0].1, "Disk almost…");
        assert_eq!(vars.values[1].1, "/var is at…");
        // The link is never cut.
        assert_eq!(vars.values[2].1, "https://push.example.com/m/0190a1b2");
        for (_, value) in &vars.values[..2] {
            assert!(value.encode_utf16().count() <= 12, "{value}");
        }

        let vars = template_variables(&message(None, Some("   "), None), 12);
        assert_eq!(
            vars.positional(),
            [EMPTY_VARIABLE, EMPTY_VARIABLE, EMPTY_VARIABLE]
        );

        // Graphemes are never split: a flag or a family emoji stays whole or goes.
        let vars = template_variables(&message(Some("告警🇨🇳磁盘已满请尽快处理"), None, None), 5);
        assert_eq!(vars.values[0].1, "告警…");
        let vars = template_variables(&message(Some("磁盘👨‍👩‍👧满了满了"), None, None), 4);
        assert_eq!(vars.values[0].1, "磁盘…");
        let vars = template_variables(&message(Some("磁盘已满请处理"), None, None), 7);
        assert_eq!(vars.values[0].1, "磁盘已满请处理");
    }

    #[test]
    fn codes_fill_the_code_template() {
        let vars = template_variables(&SmsText::Code("482913".into()), 12);
        assert!(vars.is_code);
        assert_eq!(vars.to_json_object(), r#"{"code":"482913"}"#);
        assert_eq!(vars.positional(), ["482913"]);
    }

    #[test]
    fn aliyun_params_are_a_json_object_of_strings() {
        let vars = template_variables(&message(Some("a \"quoted\" title"), Some("50%"), None), 35);
        let json: serde_json::Value = serde_json::from_str(&vars.to_json_object()).unwrap();
        assert_eq!(json["title"], "a \"quoted\" title");
        assert_eq!(json["content"], "50%");
        assert_eq!(json["link"], "-");
        assert!(json.as_object().unwrap().values().all(|v| v.is_string()));
    }

    #[test]
    fn free_text_fits_and_keeps_the_link() {
        let link = "https://push.example.com/m/0190a1b2c3d4";
        let short = message(Some("Disk full"), Some("db-1 /var 98%"), Some(link));
        assert_eq!(
            free_text(&short, 1),
            format!("Disk full\ndb-1 /var 98%\n{link}")
        );
        let no_title = message(None, Some("db-1 /var 98%"), None);
        assert_eq!(free_text(&no_title, 1), "db-1 /var 98%");
        assert_eq!(free_text(&message(None, None, Some(link)), 1), link);
        assert_eq!(free_text(&message(None, Some(" "), None), 1), "-");
        assert_eq!(
            free_text(&SmsText::Code(" 482913 ".into()), 1),
            "482913 is your pushbot verification code"
        );

        for max in 1..=4 {
            // GSM-7: cut with "...", not "…" (which would make it UCS-2).
            let long = message(
                Some("Backup report"),
                Some(&"all good. ".repeat(200)),
                Some(link),
            );
            let body = free_text(&long, max);
            assert!(segments(&body) <= max, "{max}: {body}");
            assert!(body.ends_with(&format!("...\n{link}")), "{body}");
            assert_eq!(encoding(&body), Encoding::Gsm7);
            assert!(body.starts_with("Backup report\nall good."));
            // As long as possible: one more character would not fit.
            let capacity = if max == 1 { 160 } else { 153 * max };
            assert!(
                body.chars().count() > capacity - 12,
                "{max}: {}",
                body.len()
            );

            // UCS-2.
            let long = message(
                Some("备份报告"),
                Some(&"一切正常。".repeat(200)),
                Some(link),
            );
            let body = free_text(&long, max);
            assert!(segments(&body) <= max, "{max}: {body}");
            assert!(body.ends_with(&format!("…\n{link}")), "{body}");
            let capacity = if max == 1 { 70 } else { 67 * max };
            assert!(body.encode_utf16().count() > capacity - 3, "{max}");
        }

        // Emoji and combining sequences are not split.
        let long = message(None, Some(&"👨‍👩‍👧".repeat(100)), None);
        let body = free_text(&long, 2);
        assert!(segments(&body) <= 2);
        let kept = body.trim_end_matches('…');
        assert!(kept.graphemes(true).all(|g| g == "👨‍👩‍👧"), "{body}");

        // A link longer than the budget is still sent whole, alone.
        let huge = format!("https://push.example.com/{}", "x".repeat(400));
        let body = free_text(&message(Some("t"), Some("c"), Some(&huge)), 1);
        assert_eq!(body, huge);
    }
}
