//! When a sender wants a message delivered (issue 21): `/send`'s `delay` and `at`, and
//! ntfy's `X-Delay`/`X-At`/`X-In`. A value is read into a [`When`] as the request is read
//! (one that is not a time is a 400 naming the field and the forms it takes), then
//! resolved against the clock, the member's time zone and `delivery.max_delay`
//! ([`When::resolve`]) once the sender is known. Pure: the clock is an argument.
//!
//! - `delay`: a duration — `30m`, `2h`, `1h30m`, `2 days` (humantime's forms) — or whole
//!   seconds (`90`).
//! - `at`: RFC 3339 with a time zone (`2025-06-01T09:00:00+08:00`, `…Z`) or unix seconds.
//! - ntfy (`X-Delay`, `X-At`, `X-In` and their other names): unix seconds, a duration
//!   (`30m`, `1d`, `2 days`, `10 seconds`), RFC 3339, or a clock time in the member's time
//!   zone (`10am`, `8:30pm`, `10:30`, `tomorrow 10am`, `tomorrow, 10:30`, `tomorrow`): today
//!   if it is still to come, else tomorrow — as ntfy reads them.

use std::time::Duration;

use crate::time::UnixMillis;

/// A time up to this far in the past is "now" (a sender's clock a little behind ours);
/// further back is refused.
pub const PAST_TOLERANCE: Duration = Duration::from_secs(60);

const DAY: Duration = Duration::from_secs(24 * 3600);

/// When to deliver, as the sender wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// This long after acceptance.
    In(Duration),
    /// At this time.
    At(UnixMillis),
    /// At this time of day in the member's time zone (`secs` after midnight): today if it
    /// is still to come, else tomorrow; with `tomorrow`, tomorrow in any case.
    Clock { secs: u32, tomorrow: bool },
}

/// `/send`'s `delay`: a duration (`30m`, `2h`, `1h30m`, `2 days`) or whole seconds (`90`).
pub fn delay(text: &str) -> Result<When, String> {
    let text = text.trim();
    duration(text).map(When::In).ok_or_else(|| {
        format!(
            "delay {:?} is not a duration: write it like \"30m\", \"2h\", \"1h30m\" or a \
             number of seconds (\"90\")",
            shown(text)
        )
    })
}

/// `/send`'s `at`: RFC 3339 with a time zone, or unix seconds.
pub fn at(text: &str) -> Result<When, String> {
    let text = text.trim();
    if let Some(secs) = unix_seconds(text) {
        return Ok(When::At(secs));
    }
    match rfc3339(text) {
        Ok(at) => Ok(When::At(at)),
        Err(Rfc3339::NoZone) => Err(format!(
            "at {:?} has no time zone: add one, like \"2025-06-01T09:00:00+08:00\" or \
             \"2025-06-01T01:00:00Z\"",
            shown(text)
        )),
        Err(Rfc3339::Invalid) => Err(format!(
            "at {:?} is not a time: write it as RFC 3339 (\"2025-06-01T09:00:00+08:00\") or \
             as unix seconds (\"1748739600\")",
            shown(text)
        )),
    }
}

/// ntfy's `X-Delay`/`X-At`/`X-In` (all three take the same forms): unix seconds, a
/// duration, RFC 3339, or a clock time (see the module's documentation). `name` is the
/// header or parameter as given, for the error.
pub fn ntfy(name: &str, text: &str) -> Result<When, String> {
    let text = text.trim();
    if let Some(at) = unix_seconds(text) {
        return Ok(When::At(at));
    }
    if let Some(d) = duration(text) {
        return Ok(When::In(d));
    }
    if let Ok(at) = rfc3339(text) {
        return Ok(When::At(at));
    }
    clock(text).ok_or_else(|| {
        format!(
            "{name} {:?} is not a time: write a duration (\"30m\", \"2h\", \"1 day\"), a time \
             of day (\"10am\", \"8:30pm\", \"tomorrow 10am\"), RFC 3339 or unix seconds",
            shown(text)
        )
    })
}

impl When {
    /// The time to deliver at: `None` when that is now (no delay, or a time that has come
    /// within [`PAST_TOLERANCE`]). `Err` says why not: further back than the tolerance, or
    /// further ahead than `max_delay`. `utc_offset_secs`: the member's time zone, for clock
    /// times.
    pub fn resolve(
        self,
        now: UnixMillis,
        utc_offset_secs: i32,
        max_delay: Duration,
    ) -> Result<Option<UnixMillis>, String> {
        let at = match self {
            Self::In(d) if d > max_delay => return Err(too_far(max_delay)),
            Self::In(d) => now + d,
            Self::At(at) => at,
            Self::Clock { secs, tomorrow } => {
                let today = now.start_of_day(utc_offset_secs) + Duration::from_secs(secs.into());
                if tomorrow || today <= now {
                    today + DAY
                } else {
                    today
                }
            }
        };
        if at < now - PAST_TOLERANCE {
            return Err(format!(
                "{} is in the past: give a time still to come (or no delay to send at once)",
                humantime::format_rfc3339_seconds(at.to_system_time())
            ));
        }
        if at.since(now) > max_delay {
            return Err(too_far(max_delay));
        }
        Ok((at > now).then_some(at))
    }
}

fn too_far(max_delay: Duration) -> String {
    format!(
        "that is further ahead than this server schedules messages (delivery.max_delay: {})",
        humantime::format_duration(max_delay)
    )
}

/// At most 64 characters of what the sender wrote, for an error.
fn shown(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Whole seconds (`90`), or humantime's durations (`30m`, `1h30m`, `2 days`).
pub fn duration(text: &str) -> Option<Duration> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Duration::from_secs);
    }
    // humantime reads a bare unit ("m") as nothing at all: a duration needs a number.
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    humantime::parse_duration(text).ok()
}

/// Unix seconds: digits only (at most 12: the year 33658), read as a time.
fn unix_seconds(text: &str) -> Option<UnixMillis> {
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = text.parse().ok()?;
    Some(UnixMillis::from_millis(secs.checked_mul(1000)?))
}

enum Rfc3339 {
    /// A date and time without `Z` or an offset.
    NoZone,
    Invalid,
}

/// `2025-06-01T09:00:00+08:00`, `2025-06-01T01:00:00Z`, `2025-06-01 09:00:00.250+08:00`
/// (seconds required, fractions allowed, `T` or a space): a time zone is required.
fn rfc3339(text: &str) -> Result<UnixMillis, Rfc3339> {
    let (local, offset_secs) = if let Some(local) = text.strip_suffix(['Z', 'z']) {
        (local, 0i64)
    } else {
        let split = text.len().checked_sub(6).ok_or(Rfc3339::Invalid)?;
        match (text.get(..split), text.get(split..)) {
            (Some(local), Some(zone)) if zone_shaped(zone) => {
                let sign = if zone.starts_with('-') { -1 } else { 1 };
                let hours: i64 = zone
                    .get(1..3)
                    .and_then(|h| h.parse().ok())
                    .ok_or(Rfc3339::Invalid)?;
                let minutes: i64 = zone
                    .get(4..6)
                    .and_then(|m| m.parse().ok())
                    .ok_or(Rfc3339::Invalid)?;
                if hours > 23 || minutes > 59 {
                    return Err(Rfc3339::Invalid);
                }
                (local, sign * (hours * 3600 + minutes * 60))
            }
            _ => {
                return Err(if humantime::parse_rfc3339_weak(text).is_ok() {
                    Rfc3339::NoZone
                } else {
                    Rfc3339::Invalid
                });
            }
        }
    };
    // humantime takes a zone-less stamp as UTC; the zone is applied here.
    if local.ends_with(['Z', 'z']) {
        return Err(Rfc3339::Invalid);
    }
    let utc = humantime::parse_rfc3339_weak(local).map_err(|_| Rfc3339::Invalid)?;
    let ms = utc
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| Rfc3339::Invalid)?
        .as_millis();
    let ms = i64::try_from(ms).map_err(|_| Rfc3339::Invalid)?;
    Ok(UnixMillis::from_millis(ms - offset_secs * 1000))
}

/// `+08:00`, `-05:30`.
fn zone_shaped(zone: &str) -> bool {
    let b = zone.as_bytes();
    b.len() == 6
        && (b[0] == b'+' || b[0] == b'-')
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && b[3] == b':'
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
}

/// ntfy's clock times: `10am`, `10 am`, `8:30pm`, `10:30`, `22:00`, each optionally after
/// `tomorrow` (with or without a comma), and `tomorrow` alone (this time tomorrow).
fn clock(text: &str) -> Option<When> {
    let lower = text.to_ascii_lowercase();
    let (tomorrow, rest) = match lower.strip_prefix("tomorrow") {
        Some(rest) => (true, rest.trim_start_matches(',').trim()),
        None => (false, lower.trim()),
    };
    if rest.is_empty() {
        return tomorrow.then_some(When::In(DAY));
    }
    let (digits, meridiem) = if let Some(d) = rest.strip_suffix("am") {
        (d.trim_end(), Some(false))
    } else if let Some(d) = rest.strip_suffix("pm") {
        (d.trim_end(), Some(true))
    } else {
        (rest, None)
    };
    let (hour, minute) = match digits.split_once(':') {
        Some((h, m)) if m.len() == 2 => (number(h)?, number(m)?),
        Some(_) => return None,
        // "10" alone is unix seconds; a bare hour needs am or pm.
        None if meridiem.is_some() => (number(digits)?, 0),
        None => return None,
    };
    if minute > 59 {
        return None;
    }
    let hour = match meridiem {
        Some(pm) if (1..=12).contains(&hour) => hour % 12 + if pm { 12 } else { 0 },
        Some(_) => return None,
        None if hour <= 23 => hour,
        None => return None,
    };
    Some(When::Clock {
        secs: hour * 3600 + minute * 60,
        tomorrow,
    })
}

/// One or two digits.
fn number(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 2 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-03-01T10:00:00Z (18:00 at +08:00).
    const NOW: UnixMillis = UnixMillis::from_millis(1_772_359_200_000);
    const CST: i32 = 8 * 3600;
    const MAX: Duration = Duration::from_secs(30 * 24 * 3600);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn resolve(when: When) -> Result<Option<UnixMillis>, String> {
        when.resolve(NOW, CST, MAX)
    }

    #[test]
    fn delays_are_durations_or_seconds() {
        assert_eq!(delay("30m"), Ok(When::In(secs(1800))));
        assert_eq!(delay(" 2h "), Ok(When::In(secs(7200))));
        assert_eq!(delay("1h30m"), Ok(When::In(secs(5400))));
        assert_eq!(delay("2 days"), Ok(When::In(secs(2 * 86_400))));
        assert_eq!(delay("90"), Ok(When::In(secs(90))));
        assert_eq!(delay("0"), Ok(When::In(secs(0))));
        for bad in [
            "-1",
            "",
            "m",
            "soon",
            "1 fortnight",
            "99999999999999999999",
            "1e3",
            "+5",
        ] {
            let err = delay(bad).unwrap_err();
            assert!(err.contains("is not a duration"), "{bad}: {err}");
        }
        assert_eq!(resolve(delay("90").unwrap()), Ok(Some(NOW + secs(90))));
        assert_eq!(resolve(delay("0").unwrap()), Ok(None), "no delay: now");
        let err = resolve(delay("999999d").unwrap()).unwrap_err();
        assert!(err.contains("delivery.max_delay: 30days"), "{err}");
        assert_eq!(resolve(delay("30d").unwrap()), Ok(Some(NOW + MAX)));
        assert!(resolve(delay("30d 1s").unwrap()).is_err());
    }

    #[test]
    fn at_is_rfc3339_with_a_zone_or_unix_seconds() {
        let in_an_hour = NOW + secs(3600);
        assert_eq!(at("1772362800"), Ok(When::At(in_an_hour)));
        assert_eq!(at("2026-03-01T11:00:00Z"), Ok(When::At(in_an_hour)));
        assert_eq!(at("2026-03-01T19:00:00+08:00"), Ok(When::At(in_an_hour)));
        assert_eq!(at("2026-03-01 06:00:00-05:00"), Ok(When::At(in_an_hour)));
        assert_eq!(
            at("2026-03-01T11:00:00.250Z"),
            Ok(When::At(in_an_hour + Duration::from_millis(250)))
        );
        let err = at("2026-03-01T19:00:00").unwrap_err();
        assert!(err.contains("no time zone"), "{err}");
        for bad in [
            "garbage",
            "",
            "tomorrow",
            "2026-13-01T00:00:00Z",
            "2026-03-01T19:00:00+25:00",
            "2026-03-01T19:00+08:00",
            "-5",
            "1772362800000000",
            "2026-03-01T19:00:00ZZ",
        ] {
            let err = at(bad).unwrap_err();
            assert!(err.contains("is not a time"), "{bad}: {err}");
        }
        assert_eq!(resolve(at("1772362800").unwrap()), Ok(Some(in_an_hour)));
        // A little behind our clock: now. Further back: refused.
        assert_eq!(resolve(When::At(NOW - secs(30))), Ok(None));
        let err = resolve(When::At(NOW - secs(3600))).unwrap_err();
        assert!(err.contains("2026-03-01T09:00:00Z is in the past"), "{err}");
        assert!(resolve(When::At(NOW + MAX + secs(1))).is_err());
        assert!(resolve(When::At(UnixMillis::MAX)).is_err());
    }

    #[test]
    fn ntfy_reads_its_own_forms() {
        let n = |text: &str| ntfy("X-Delay", text).and_then(resolve);
        assert_eq!(n("30m"), Ok(Some(NOW + secs(1800))));
        assert_eq!(n("1 day"), Ok(Some(NOW + secs(86_400))));
        assert_eq!(n("2 days"), Ok(Some(NOW + secs(2 * 86_400))));
        assert_eq!(n("10 seconds"), Ok(Some(NOW + secs(10))));
        assert_eq!(n("1772362800"), Ok(Some(NOW + secs(3600))));
        assert_eq!(n("2026-03-01T19:00:00+08:00"), Ok(Some(NOW + secs(3600))));
        // It is 18:00 at +08:00: 8:30pm is today, 10am tomorrow.
        assert_eq!(n("8:30pm"), Ok(Some(NOW + secs(2 * 3600 + 1800))));
        assert_eq!(n("20:30"), Ok(Some(NOW + secs(2 * 3600 + 1800))));
        assert_eq!(n("10am"), Ok(Some(NOW + secs(16 * 3600))));
        assert_eq!(n("10 AM"), Ok(Some(NOW + secs(16 * 3600))));
        assert_eq!(n("tomorrow, 10am"), Ok(Some(NOW + secs(16 * 3600))));
        assert_eq!(n("tomorrow 8:30pm"), Ok(Some(NOW + secs(26 * 3600 + 1800))));
        assert_eq!(n("Tomorrow"), Ok(Some(NOW + secs(86_400))));
        assert_eq!(n("12am"), Ok(Some(NOW + secs(6 * 3600))), "midnight");
        assert_eq!(n("12pm"), Ok(Some(NOW + secs(18 * 3600))), "noon tomorrow");
        assert_eq!(n("18:00"), Ok(Some(NOW + secs(86_400))), "now: tomorrow");
        // The member's time zone decides what 10am is.
        assert_eq!(
            ntfy("At", "10am").unwrap().resolve(NOW, 0, MAX),
            Ok(Some(NOW + secs(24 * 3600)))
        );
        for bad in [
            "garbage", "13pm", "0am", "25:00", "10:60", "10:5", "tuesday", "-1", "in 5", "10",
        ] {
            let result = n(bad);
            assert!(result.is_err(), "{bad}: {result:?}");
        }
        let err = ntfy("X-In", "soonish").unwrap_err();
        assert!(err.starts_with("X-In \"soonish\" is not a time"), "{err}");
        // "10" is a unix time, long gone.
        assert!(n("10").unwrap_err().contains("in the past"));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Pieces times are made of, so that the parsers meet near misses, not only noise.
        fn timeish() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                prop::sample::select(vec![
                    "tomorrow",
                    ",",
                    " ",
                    ":",
                    "am",
                    "pm",
                    "T",
                    "Z",
                    "+08:00",
                    "-",
                    "d",
                    "h",
                    "m",
                    "s",
                    "days",
                    "min",
                    "1",
                    "12",
                    "99",
                    "2026-03-01",
                    "00:00:00",
                    ".5",
                    "999999999999",
                    "\u{0}",
                    "你好",
                ])
                .prop_map(str::to_owned),
                "[0-9]{1,25}",
                any::<String>(),
            ];
            prop::collection::vec(piece, 0..6).prop_map(|p| p.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            /// Any text is a time or a sentence saying why not; any time resolves to one
            /// within the limits or to a sentence — never a panic, never a time outside.
            #[test]
            fn any_text_is_a_time_within_limits_or_a_reason(
                text in timeish(),
                now_ms in 0i64..4_000_000_000_000,
                offset in -50_400i32..=50_400,
            ) {
                let now = UnixMillis::from_millis(now_ms);
                for parsed in [delay(&text), at(&text), ntfy("X-Delay", &text)] {
                    let Ok(when) = parsed else { continue };
                    if let Ok(Some(at)) = when.resolve(now, offset, MAX) {
                        prop_assert!(at > now && at.since(now) <= MAX, "{text:?}: {at:?}");
                    }
                }
            }
        }
    }
}
