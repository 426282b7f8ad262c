//! Digests: many waiting messages of one member coalesced into one WeCom message, so a
//! burst arrives as a summary instead of being held back for a long time (or silently
//! dropped by WeCom's per-member limit). Pure text work, tested without I/O.
//!
//! A digest *carries* every message it is given (all of them are delivered by it) and
//! *shows* one compact line per message — time, title and content — as far as WeCom's
//! 2048 bytes allow. Whenever it shows less than everything (messages without a line, or a
//! line cut short), it says how many more it carries and links its page
//! (`/m/{digest id}?k=…`), which lists every carried message in full. So nothing a digest
//! carries is reachable only as a title or an excerpt.

use crate::render::cut::cut;
use crate::time::UnixMillis;

/// One carried message as the digest shows it.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    pub created_at: UnixMillis,
    pub title: Option<&'a str>,
    /// The content as readable text (markdown already made plain), or its start.
    pub content: Option<&'a str>,
    /// `content` is only the start of the message's content.
    pub partial: bool,
}

/// A digest's text and how many of its messages (the first ones) have a line in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    pub text: String,
    pub shown: usize,
}

/// Longest line per message in bytes, its number and time included (cut on a grapheme
/// boundary): a compact line, and still a dozen of them when the content is long.
const LINE_BYTES: usize = 140;
/// Between a message's title and its content on its line.
const SEPARATOR: &str = " — ";
/// Ends a line that was cut short.
const ELLIPSIS: &str = "…";

/// The digest carrying all of `items` (lane order): at most `max_bytes` of text, linking
/// `page_url` (the page listing every item in full) whenever it does not show every item
/// whole. `utc_offset_secs` is the time zone the times are shown in.
pub fn compose(
    items: &[Item<'_>],
    max_bytes: usize,
    utc_offset_secs: i32,
    page_url: &str,
) -> Composed {
    let head = headline(items, utc_offset_secs);
    let lines: Vec<(String, bool)> = items
        .iter()
        .enumerate()
        .map(|(i, item)| line(i + 1, item, utc_offset_secs))
        .collect();
    let whole = lines.iter().all(|(_, cut_short)| !cut_short);
    let all = head.len() + lines.iter().map(|(l, _)| 1 + l.len()).sum::<usize>();
    if whole && all <= max_bytes {
        return Composed {
            text: assemble(&head, &lines, ""),
            shown: items.len(),
        };
    }
    // As many lines as fit together with the footer that links the page.
    let mut shown = 0;
    let mut used = head.len();
    for (k, (line, _)) in lines.iter().enumerate() {
        used += 1 + line.len();
        if used > max_bytes {
            break;
        }
        if used + footer(items.len() - (k + 1), page_url).len() <= max_bytes {
            shown = k + 1;
        }
    }
    let text = assemble(
        &head,
        &lines[..shown],
        &footer(items.len() - shown, page_url),
    );
    // Only a link longer than WeCom's limit (a misconfigured `server.public_url`) can
    // leave the text too long here.
    Composed {
        text: cut(&text, max_bytes).to_owned(),
        shown,
    }
}

fn assemble(head: &str, lines: &[(String, bool)], footer: &str) -> String {
    let mut text = head.to_owned();
    for (line, _) in lines {
        text.push('\n');
        text.push_str(line);
    }
    text.push_str(footer);
    text
}

/// Says how many carried messages have no line and where all of them are in full.
fn footer(hidden: usize, page_url: &str) -> String {
    if hidden == 0 {
        format!("\n全文 · in full: {page_url}")
    } else {
        format!("\n…还有 {hidden} 条 · and {hidden} more\n全文 · in full: {page_url}")
    }
}

/// "12 条消息 · 12 messages, 14:02–14:09".
fn headline(items: &[Item<'_>], utc_offset_secs: i32) -> String {
    let (Some(first), Some(last)) = (items.first(), items.last()) else {
        return String::new();
    };
    let n = items.len();
    let (from, to) = (
        clock(first.created_at, utc_offset_secs),
        clock(last.created_at, utc_offset_secs),
    );
    let range = if from == to {
        from
    } else {
        format!("{from}–{to}")
    };
    format!("{n} 条消息 · {n} messages, {range}")
}

/// "3. 05:18 Disk full — host-07: /var 100%": the title and the content on one line
/// (either alone when the other is missing), at most [`LINE_BYTES`]. The bool: the line
/// does not show the whole message.
fn line(n: usize, item: &Item<'_>, utc_offset_secs: i32) -> (String, bool) {
    let title = item.title.map(one_line).filter(|t| !t.is_empty());
    let content = item.content.map(one_line).filter(|c| !c.is_empty());
    let summary = match (title, content) {
        (Some(t), Some(c)) => format!("{t}{SEPARATOR}{c}"),
        (Some(t), None) => t,
        (None, Some(c)) => c,
        (None, None) => String::new(),
    };
    let mut line = format!("{n}. {}", clock(item.created_at, utc_offset_secs));
    if summary.is_empty() && !item.partial {
        return (line, false);
    }
    line.push(' ');
    let budget = LINE_BYTES.saturating_sub(line.len());
    if summary.len() <= budget && !item.partial {
        line.push_str(&summary);
        return (line, false);
    }
    line.push_str(cut(&summary, budget.saturating_sub(ELLIPSIS.len())).trim_end());
    line.push_str(ELLIPSIS);
    (line, true)
}

/// `text` on one line: every run of whitespace (line breaks included) becomes one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `HH:MM` of a time in the given offset from UTC.
pub fn clock(at: UnixMillis, utc_offset_secs: i32) -> String {
    let of_day = at.time_of_day(utc_offset_secs).as_secs();
    format!("{:02}:{:02}", of_day / 3600, (of_day % 3600) / 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;
    use unicode_segmentation::UnicodeSegmentation;

    const BEIJING: i32 = 8 * 3600;
    // 2026-11-26 06:02:00 UTC = 14:02 in Beijing.
    const T0: UnixMillis = UnixMillis::from_millis(1_795_500_120_000);
    const PAGE: &str = "https://push.example.com/m/0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b?k=\
                        AAAAAAAAAAAAAAAAAAAAAA";
    const FAMILY: &str = "👩\u{200d}👩\u{200d}👧\u{200d}👦"; // 25 bytes, one grapheme

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn item<'a>(at: UnixMillis, title: Option<&'a str>, content: Option<&'a str>) -> Item<'a> {
        Item {
            created_at: at,
            title,
            content,
            partial: false,
        }
    }

    /// The message lines of a digest (between the headline and any footer).
    fn lines_of(text: &str) -> Vec<&str> {
        text.lines()
            .skip(1)
            .take_while(|l| !l.starts_with("…还有") && !l.starts_with("全文"))
            .collect()
    }

    #[test]
    fn clock_shows_local_hours_and_minutes() {
        assert_eq!(clock(T0, BEIJING), "14:02");
        assert_eq!(clock(T0, 0), "06:02");
        assert_eq!(clock(UnixMillis::from_millis(0), -3600), "23:00");
    }

    #[test]
    fn each_line_shows_the_title_and_the_content() {
        let items = [
            item(T0, Some("Disk full"), Some("host-07: /var 100%")),
            item(T0 + ms(60_000), Some("disk ok"), None),
            item(
                T0 + ms(7 * 60_000),
                None,
                Some("\n  backup done\nsecond   line\n"),
            ),
            item(T0 + ms(7 * 60_000), Some("  "), Some("only content")),
        ];
        let digest = compose(&items, 2048, BEIJING, PAGE);
        assert_eq!(digest.shown, 4);
        assert_eq!(
            digest.text,
            "4 条消息 · 4 messages, 14:02–14:09\n\
             1. 14:02 Disk full — host-07: /var 100%\n\
             2. 14:03 disk ok\n\
             3. 14:09 backup done second line\n\
             4. 14:09 only content"
        );
    }

    #[test]
    fn a_burst_with_one_title_keeps_every_content_apart() {
        let contents: Vec<String> = (0..30).map(|i| format!("dg-{i:02}")).collect();
        let items: Vec<Item<'_>> = contents
            .iter()
            .map(|c| item(T0, Some("burst"), Some(c)))
            .collect();
        let digest = compose(&items, 2048, BEIJING, PAGE);
        assert_eq!(digest.shown, 30);
        let lines = lines_of(&digest.text);
        assert_eq!(lines.len(), 30);
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(*line, format!("{}. 14:02 burst — dg-{i:02}", i + 1));
        }
        assert!(
            !digest.text.contains(PAGE),
            "all shown whole: no link needed"
        );
    }

    #[test]
    fn what_does_not_fit_is_counted_and_linked() {
        let items: Vec<Item<'_>> = (0..300)
            .map(|i| {
                item(
                    T0 + ms(i),
                    Some("告警：磁盘使用率超过 90%"),
                    Some("host-07"),
                )
            })
            .collect();
        let digest = compose(&items, 2048, BEIJING, PAGE);
        assert!(digest.text.len() <= 2048, "{}", digest.text.len());
        let n = digest.shown;
        assert!(n > 10 && n < 300, "{n}");
        assert!(
            digest
                .text
                .starts_with("300 条消息 · 300 messages, 14:02\n"),
            "the headline counts every carried message: {}",
            digest.text
        );
        assert_eq!(lines_of(&digest.text).len(), n);
        let hidden = 300 - n;
        assert!(
            digest.text.ends_with(&format!(
                "\n…还有 {hidden} 条 · and {hidden} more\n全文 · in full: {PAGE}"
            )),
            "{}",
            digest.text
        );
        // As full as it gets: one line more would not have fitted.
        let roomy = compose(&items, 9999, BEIJING, PAGE).text;
        let next = lines_of(&roomy)[n];
        let with_next = digest.text.len() + 1 + next.len() + footer(hidden - 1, PAGE).len()
            - footer(hidden, PAGE).len();
        assert!(with_next > 2048, "{with_next}");
    }

    #[test]
    fn a_cut_line_links_the_page_even_when_every_message_has_a_line() {
        let long = "x".repeat(500);
        let items = [
            item(T0, Some("log"), Some(&long)),
            item(T0, Some("ok"), None),
        ];
        let digest = compose(&items, 2048, BEIJING, PAGE);
        assert_eq!(digest.shown, 2);
        let lines = lines_of(&digest.text);
        assert!(
            lines[0].len() <= LINE_BYTES && lines[0].ends_with("xx…"),
            "{}",
            lines[0]
        );
        assert!(lines[0].starts_with("1. 14:02 log — xxx"), "{}", lines[0]);
        assert!(
            digest
                .text
                .ends_with(&format!("\n2. 14:02 ok\n全文 · in full: {PAGE}")),
            "{}",
            digest.text
        );
    }

    #[test]
    fn content_known_only_in_part_is_marked_and_linked() {
        // The excerpt fits a line, but the message goes on: the line says so.
        let items = [
            Item {
                partial: true,
                ..item(T0, Some("report"), Some("first part"))
            },
            item(T0, Some("b"), None),
        ];
        let digest = compose(&items, 2048, BEIJING, PAGE);
        assert!(
            digest.text.contains("\n1. 14:02 report — first part…\n"),
            "{}",
            digest.text
        );
        assert!(digest.text.ends_with(PAGE));
    }

    #[test]
    fn lines_are_cut_between_graphemes() {
        for pad in 0..40 {
            let content = format!(
                "{}{}",
                "p".repeat(pad),
                format!("{FAMILY}e\u{301}🇨🇳推").repeat(20)
            );
            let items = [item(T0, Some("t"), Some(&content)), item(T0, None, None)];
            let digest = compose(&items, 2048, BEIJING, PAGE);
            let first = lines_of(&digest.text)[0];
            let shown = first
                .strip_prefix("1. 14:02 t — ")
                .and_then(|l| l.strip_suffix(ELLIPSIS))
                .unwrap_or_else(|| panic!("{first}"));
            assert!(first.len() <= LINE_BYTES);
            let whole: Vec<&str> = content.graphemes(true).collect();
            let part: Vec<&str> = shown.graphemes(true).collect();
            assert_eq!(whole[..part.len()], part[..], "pad {pad}: {shown:?}");
        }
    }

    #[test]
    fn a_digest_that_fits_exactly_needs_no_link() {
        let titles: Vec<String> = (0..20).map(|i| format!("message {i}")).collect();
        let items: Vec<Item<'_>> = titles.iter().map(|t| item(T0, Some(t), None)).collect();
        let full = compose(&items, 4096, BEIJING, PAGE).text;
        assert!(!full.contains(PAGE));
        // Exactly as long as allowed: all shown whole, no link.
        assert_eq!(
            compose(&items, full.len(), BEIJING, PAGE),
            Composed {
                text: full.clone(),
                shown: 20
            }
        );
        // One byte less: the footer counts and links what no longer has a line.
        let short = compose(&items, full.len() - 1, BEIJING, PAGE);
        assert!(short.shown < 20 && short.shown > 5, "{}", short.shown);
        let hidden = 20 - short.shown;
        assert!(short.text.len() < full.len());
        assert!(
            short.text.ends_with(&format!(
                "\n{}. 14:02 message {}\n…还有 {hidden} 条 · and {hidden} more\n全文 · in full: {PAGE}",
                short.shown,
                short.shown - 1
            )),
            "{}",
            short.text
        );
    }

    #[test]
    fn one_huge_message_is_cut_not_dropped() {
        let huge = "长".repeat(5000);
        let items = [item(T0, None, Some(&huge)), item(T0, None, Some("x"))];
        let digest = compose(&items, 600, BEIJING, PAGE);
        assert_eq!(digest.shown, 2);
        assert!(digest.text.len() <= 600);
        assert!(digest.text.contains("1. 14:02 长长"));
        assert!(digest.text.ends_with(PAGE));
    }

    fn any_item() -> impl Strategy<Value = (Option<String>, Option<String>, bool)> {
        let text = prop::collection::vec(
            prop::sample::select(vec![
                "a", " ", "\n", "推", "e\u{301}", FAMILY, "🇨🇳", "dg-07", "\u{200d}", "x",
            ]),
            0..80,
        )
        .prop_map(|v| v.concat());
        (
            prop::option::of(text.clone()),
            prop::option::of(text),
            any::<bool>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the burst and the budget: the text fits; every message has its line or
        /// is counted as "more"; whatever is not shown whole is on the linked page.
        #[test]
        fn a_digest_fits_and_loses_nothing(
            raw in prop::collection::vec(any_item(), 2..60),
            max in 200usize..3000,
        ) {
            let items: Vec<Item<'_>> = raw
                .iter()
                .enumerate()
                .map(|(i, (t, c, partial))| Item {
                    created_at: T0 + Duration::from_secs(u64::try_from(i).unwrap_or(0)),
                    title: t.as_deref(),
                    content: c.as_deref(),
                    partial: *partial && c.is_some(),
                })
                .collect();
            let digest = compose(&items, max, BEIJING, PAGE);
            prop_assert!(digest.text.len() <= max, "{} > {max}", digest.text.len());
            let n = items.len();
            let headline = format!("{n} 条消息 · {n} messages, ");
            prop_assert!(digest.text.starts_with(&headline), "{}", digest.text);
            let lines = lines_of(&digest.text);
            prop_assert_eq!(lines.len(), digest.shown);
            let all_whole = lines.iter().all(|l| !l.ends_with(ELLIPSIS))
                && items.iter().all(|i| !i.partial);
            if digest.shown < n || !all_whole {
                prop_assert!(digest.text.ends_with(PAGE), "{}", digest.text);
            }
            if digest.shown < n {
                let hidden = n - digest.shown;
                let more = format!("…还有 {hidden} 条 · and {hidden} more");
                prop_assert!(digest.text.contains(&more), "{}", digest.text);
            }
            for (i, line) in lines.iter().enumerate() {
                prop_assert!(line.len() <= LINE_BYTES);
                prop_assert!(line.starts_with(&format!("{}. ", i + 1)), "{}", line);
                if !line.ends_with(ELLIPSIS) {
                    // A whole line shows the title and the content.
                    for part in [items[i].title, items[i].content].into_iter().flatten() {
                        prop_assert!(line.contains(&one_line(part)), "{line} lacks {part:?}");
                    }
                }
            }
        }
    }
}
