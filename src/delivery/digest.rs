//! Digests: many waiting messages of one member coalesced into one WeCom message, so a
//! burst arrives as a summary instead of being held back for a long time (or silently
//! dropped by WeCom's per-member limit). Pure text work, tested without I/O.

/// One waiting message as the digest shows it.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    pub created_at: i64,
    pub title: Option<&'a str>,
    pub content: Option<&'a str>,
}

/// Longest line kept per message (bytes, cut on a character boundary).
const LINE_BYTES: usize = 120;

/// The first digest for `items` (lane order): its text, at most `max_bytes` long, and how
/// many of the items it carries (at least one when `items` is not empty). The rest go
/// into the next digest. `utc_offset_secs` is the time zone the times are shown in.
pub fn first_digest(items: &[Item<'_>], max_bytes: usize, utc_offset_secs: i32) -> (String, usize) {
    let mut lines: Vec<String> = Vec::new();
    let mut body_len = 0;
    for (n, item) in items.iter().enumerate() {
        let line = format!(
            "{}. {} {}",
            n + 1,
            clock(item.created_at, utc_offset_secs),
            cut(summary(item), LINE_BYTES)
        );
        let header = headline(&items[..=n], utc_offset_secs);
        // header + "\n" + each line + "\n"
        let total = header.len() + 1 + body_len + line.len() + lines.len();
        if total > max_bytes && !lines.is_empty() {
            break;
        }
        body_len += line.len();
        lines.push(line);
    }
    let taken = lines.len();
    let mut text = headline(&items[..taken], utc_offset_secs);
    for line in &lines {
        text.push('\n');
        text.push_str(line);
    }
    (cut(&text, max_bytes).to_owned(), taken)
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

/// The title, else the first non-empty line of the content.
fn summary<'a>(item: &Item<'a>) -> &'a str {
    item.title
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .or_else(|| {
            item.content
                .and_then(|c| c.lines().map(str::trim).find(|l| !l.is_empty()))
        })
        .unwrap_or("")
}

/// `HH:MM` of a unix-millisecond time in the given offset from UTC.
pub fn clock(unix_ms: i64, utc_offset_secs: i32) -> String {
    let secs = unix_ms.div_euclid(1000) + i64::from(utc_offset_secs);
    let of_day = secs.rem_euclid(86_400);
    format!("{:02}:{:02}", of_day / 3600, (of_day % 3600) / 60)
}

/// At most `max` bytes of `text`, cut on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEIJING: i32 = 8 * 3600;
    // 2026-11-26 06:02:00 UTC = 14:02 in Beijing.
    const T0: i64 = 1_795_500_120_000;

    fn item(at: i64, title: &'static str) -> Item<'static> {
        Item {
            created_at: at,
            title: Some(title),
            content: None,
        }
    }

    #[test]
    fn clock_shows_local_hours_and_minutes() {
        assert_eq!(clock(T0, BEIJING), "14:02");
        assert_eq!(clock(T0, 0), "06:02");
        assert_eq!(clock(0, -3600), "23:00");
    }

    #[test]
    fn a_digest_lists_each_message_in_order() {
        let items = [
            item(T0, "disk full"),
            item(T0 + 60_000, "disk ok"),
            Item {
                created_at: T0 + 7 * 60_000,
                title: None,
                content: Some("\n  backup done\nsecond line"),
            },
        ];
        let (text, n) = first_digest(&items, 2048, BEIJING);
        assert_eq!(n, 3);
        assert_eq!(
            text,
            "3 条消息 · 3 messages, 14:02–14:09\n\
             1. 14:02 disk full\n\
             2. 14:03 disk ok\n\
             3. 14:09 backup done"
        );
    }

    #[test]
    fn as_many_as_fit_and_the_rest_waits_for_the_next() {
        let items: Vec<Item<'_>> = (0..300)
            .map(|i| item(T0 + i, "告警：磁盘使用率超过 90%"))
            .collect();
        let (text, n) = first_digest(&items, 2048, BEIJING);
        assert!(text.len() <= 2048, "{}", text.len());
        assert!(n > 10 && n < 300, "{n}");
        assert!(
            text.starts_with(&format!("{n} 条消息 · {n} messages, 14:02")),
            "{text}"
        );
        let (rest, m) = first_digest(&items[n..], 2048, BEIJING);
        assert!(m > 0 && rest.len() <= 2048);
    }

    #[test]
    fn a_digest_that_fits_exactly_is_not_split() {
        let items = [item(T0, "a"), item(T0, "b")];
        let (full, n) = first_digest(&items, 4096, BEIJING);
        assert_eq!(n, 2);
        // Exactly as long as allowed: both still go in one digest.
        assert_eq!(first_digest(&items, full.len(), BEIJING), (full.clone(), 2));
        // One byte less: the second waits for the next digest.
        assert_eq!(first_digest(&items, full.len() - 1, BEIJING).1, 1);
    }

    #[test]
    fn one_huge_message_is_cut_not_dropped() {
        let huge = "长".repeat(5000);
        let items = [Item {
            created_at: T0,
            title: None,
            content: Some(&huge),
        }];
        let (text, n) = first_digest(&items, 100, BEIJING);
        assert_eq!(n, 1);
        assert!(text.len() <= 100);
        assert!(text.is_char_boundary(text.len()));
    }
}
