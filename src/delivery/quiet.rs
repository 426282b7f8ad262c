//! Quiet hours (免打扰): a daily window, at a member's offset from UTC, during which
//! messages wait instead of arriving; they arrive when it ends (as one digest when several
//! waited). Urgent messages go through unless the member chose `strict`.
//!
//! Pure: the clock is an argument ([`UnixMillis`]), so every rule — inside the window or
//! not, when it ends, across midnight or not — is tested at any instant without sleeping.
//! What is read here is what people type: `23:00-07:00`, `23-7`, `2300-0700`, `11pm-7am`,
//! `23：00～07：00`, `23点至7点`; offsets as `+08:00`, `UTC+8`, `-05:30`.
//!
//! A window is `[start, end)`: quiet from its start (inclusive) to its end (exclusive), so
//! at the end instant it is over. A window of zero length (or of the whole day, which would
//! hold everything for ever) is refused.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use unicode_normalization::UnicodeNormalization;

use crate::time::UnixMillis;

/// Minutes in a day.
const DAY_MINUTES: u16 = 24 * 60;
/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;
/// The largest offset from UTC there is (Kiribati, +14:00; -12:00 is the other end, but a
/// symmetric bound is what the config has always taken).
const MAX_OFFSET_SECS: i32 = 14 * 3600;

/// Why a text is not quiet hours or an offset. The text says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuietError {
    #[error("「{0}」不是时间段 is not a window: write it like 23:00-07:00 (or 23-7, 2300-0700)")]
    NotAWindow(String),
    #[error("「{0}」不是时间 is not a time of day: write it like 23:00, 7 or 0730")]
    NotATime(String),
    #[error(
        "开始和结束相同，时间段为空或全天 start and end are the same time: quiet hours need a length shorter than a day"
    )]
    Empty,
    #[error("「{0}」不是时区 is not a UTC offset: write it like +08:00, UTC+8 or -05:30")]
    NotAnOffset(String),
}

/// A daily window, in minutes after local midnight: `[start, end)`, crossing midnight when
/// `start > end`. Never empty, never the whole day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    start: u16,
    end: u16,
}

impl Window {
    /// From minutes after midnight (`24:00` = 1440 is midnight too); `None` for a window of
    /// no length or of the whole day.
    pub fn new(start: u16, end: u16) -> Option<Self> {
        if start > DAY_MINUTES || end > DAY_MINUTES {
            return None;
        }
        let (start, end) = (start % DAY_MINUTES, end % DAY_MINUTES);
        (start != end).then_some(Self { start, end })
    }

    /// Minutes after midnight it starts at.
    pub fn start(self) -> u16 {
        self.start
    }

    /// Minutes after midnight it ends at (its first minute that is not quiet).
    pub fn end(self) -> u16 {
        self.end
    }

    /// Whether it runs past midnight (`23:00-07:00`).
    pub fn crosses_midnight(self) -> bool {
        self.start > self.end
    }

    /// How long it lasts.
    pub fn length(self) -> Duration {
        let minutes = (self.end + DAY_MINUTES - self.start) % DAY_MINUTES;
        Duration::from_secs(u64::from(minutes) * 60)
    }

    /// Whether a time of day (since local midnight) falls inside.
    fn contains(self, of_day: Duration) -> bool {
        let (start, end) = (minutes_ms(self.start), minutes_ms(self.end));
        let t = i64::try_from(of_day.as_millis()).unwrap_or(i64::MAX);
        if self.start < self.end {
            start <= t && t < end
        } else {
            t >= start || t < end
        }
    }
}

fn minutes_ms(minutes: u16) -> i64 {
    i64::from(minutes) * 60_000
}

/// `HH:MM`, of minutes after midnight.
pub fn clock(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", clock(self.start), clock(self.end))
    }
}

impl FromStr for Window {
    type Err = QuietError;

    /// `23:00-07:00`, `23-7`, `2300-0700`, `11pm-7am`, `23:00 ~ 07:00`, `23：00～07：00`,
    /// `23点至7点`, `23:00 07:00`.
    fn from_str(typed: &str) -> Result<Self, QuietError> {
        let text = normalize(typed);
        let not_a_window = || QuietError::NotAWindow(shown(typed));
        let (start, end) = match text.split_once(['-', '~']) {
            Some((start, end)) => (start.trim(), end.trim()),
            // Two times with a space between them.
            // Two times with a space between them (anything else with a space is no window).
            None => match text.split_whitespace().collect::<Vec<_>>()[..] {
                [start, end] => {
                    return Self::new(
                        time_of_day(start).map_err(|_| not_a_window())?,
                        time_of_day(end).map_err(|_| not_a_window())?,
                    )
                    .ok_or(QuietError::Empty);
                }
                _ => return Err(not_a_window()),
            },
        };
        if start.is_empty() || end.is_empty() || end.contains(['-', '~']) {
            return Err(not_a_window());
        }
        Self::new(time_of_day(start)?, time_of_day(end)?).ok_or(QuietError::Empty)
    }
}

/// What the reader folds before reading a window or an offset: full-width and other
/// compatibility forms (NFKC: `：` → `:`, `～` → `~`, `－` → `-`, `１` → `1`), the dashes and
/// waves people put between two times (`–`, `—`, `〜`, `至`, `到`), lower case.
fn normalize(typed: &str) -> String {
    typed
        .nfkc()
        .map(|c| match c {
            '\u{2010}'..='\u{2015}' | '\u{2212}' | '至' | '到' => '-',
            '\u{301c}' | '\u{3030}' => '~',
            c => c,
        })
        .collect::<String>()
        .trim()
        .to_lowercase()
}

/// At most 40 characters of what was typed, for an error.
fn shown(typed: &str) -> String {
    typed.trim().chars().take(40).collect()
}

/// `23:00`, `7`, `0730`, `730`, `23:`, `23点`, `23点30`, `11pm`, `7:30am` → minutes after
/// midnight (`24:00` → 1440).
fn time_of_day(typed: &str) -> Result<u16, QuietError> {
    let not_a_time = || QuietError::NotATime(shown(typed));
    let text = typed.trim();
    let (text, half) = if let Some(t) = text.strip_suffix("am") {
        (t.trim_end(), Some(false))
    } else if let Some(t) = text.strip_suffix("pm") {
        (t.trim_end(), Some(true))
    } else {
        (text, None)
    };
    let text = text.trim_end_matches('分').replace(['点', '时', '時'], ":");
    let (hour, minute) = match text.split_once(':') {
        Some((h, m)) => (h, if m.is_empty() { "0" } else { m }),
        None if text.len() > 2 => text
            .split_at_checked(text.len() - 2)
            .ok_or_else(not_a_time)?,
        None => (text.as_str(), "0"),
    };
    let digits = |s: &str, most: usize| {
        (!s.is_empty() && s.len() <= most && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u16>().ok())
            .flatten()
    };
    let (Some(mut hour), Some(minute)) = (digits(hour, 2), digits(minute, 2)) else {
        return Err(not_a_time());
    };
    if minute >= 60 {
        return Err(not_a_time());
    }
    match half {
        Some(pm) => {
            if !(1..=12).contains(&hour) {
                return Err(not_a_time());
            }
            hour %= 12;
            if pm {
                hour += 12;
            }
        }
        None if hour > 24 || (hour == 24 && minute > 0) => return Err(not_a_time()),
        None => {}
    }
    Ok(hour * 60 + minute)
}

/// Quiet hours as set: the window, and whether urgent messages wait too (`strict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub window: Window,
    /// Urgent messages wait too.
    pub strict: bool,
}

/// Words that make quiet hours strict.
const STRICT: [&str; 3] = ["strict", "严格", "嚴格"];

impl QuietHours {
    /// Whether a message of this urgency waits during the window.
    pub fn holds(self, urgent: bool) -> bool {
        self.strict || !urgent
    }

    /// When a message (`urgent` or not) that would go out `now` is to go out instead:
    /// the window's end, if `now` is inside it and the message waits; `None`: now.
    pub fn hold_until(self, now: UnixMillis, utc_offset: i32, urgent: bool) -> Option<UnixMillis> {
        (self.holds(urgent) && is_quiet(now, self.window, utc_offset))
            .then(|| ends_at(now, self.window, utc_offset))
    }
}

impl fmt::Display for QuietHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.window)?;
        if self.strict {
            f.write_str(" strict")?;
        }
        Ok(())
    }
}

impl FromStr for QuietHours {
    type Err = QuietError;

    /// A window ([`Window::from_str`]), then optionally `strict` (`严格`).
    fn from_str(typed: &str) -> Result<Self, QuietError> {
        let text = normalize(typed);
        let (window, strict) = match STRICT.iter().find_map(|s| text.strip_suffix(s)) {
            Some(rest) => (rest.trim_end(), true),
            None => (text.as_str(), false),
        };
        let window = window.parse::<Window>().map_err(|e| match e {
            // Name what was typed, not what was left of it.
            QuietError::NotAWindow(_) => QuietError::NotAWindow(shown(typed)),
            other => other,
        })?;
        Ok(Self { window, strict })
    }
}

/// A member's own choice: quiet hours, or none even where the server has a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuietSetting {
    Off,
    On(QuietHours),
}

/// What turns quiet hours off.
const OFF: [&str; 8] = ["off", "none", "no", "关", "关闭", "關", "關閉", "取消"];

impl QuietSetting {
    /// As `members.quiet` keeps it: `"off"`, `"23:00-07:00"`, `"23:00-07:00 strict"`.
    pub fn to_stored(self) -> String {
        match self {
            Self::Off => "off".to_owned(),
            Self::On(hours) => hours.to_string(),
        }
    }

    /// A stored value; anything unreadable is `None` (the server's default), not an error:
    /// a member's setting never stops their messages.
    pub fn from_stored(stored: &str) -> Option<Self> {
        stored.parse().ok()
    }

    /// The quiet hours that apply: the member's own (`own`; `Off`: none), else the
    /// server's `default`.
    pub fn effective(own: Option<Self>, default: Option<QuietHours>) -> Option<QuietHours> {
        match own {
            Some(Self::Off) => None,
            Some(Self::On(hours)) => Some(hours),
            None => default,
        }
    }
}

impl FromStr for QuietSetting {
    type Err = QuietError;

    /// `off` (`关`, `关闭`, `none`), or quiet hours ([`QuietHours::from_str`]).
    fn from_str(typed: &str) -> Result<Self, QuietError> {
        if OFF.contains(&normalize(typed).as_str()) {
            return Ok(Self::Off);
        }
        typed.parse().map(Self::On)
    }
}

/// Quiet hours as they apply to one member: their own or the server's, at their own offset
/// or the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberHours {
    /// `None`: the member has no quiet hours.
    pub hours: Option<QuietHours>,
    /// Seconds east of UTC.
    pub utc_offset: i32,
}

impl MemberHours {
    /// From the member's own settings (`None`: not set) and the server's defaults
    /// (`delivery.quiet_hours`, `delivery.utc_offset`).
    pub fn of(
        own: Option<QuietSetting>,
        own_offset: Option<i32>,
        default: Option<QuietHours>,
        default_offset: i32,
    ) -> Self {
        Self {
            hours: QuietSetting::effective(own, default),
            utc_offset: own_offset.unwrap_or(default_offset),
        }
    }

    /// Whether the member's window is on `now` (whatever a message's urgency).
    pub fn is_quiet(&self, now: UnixMillis) -> bool {
        self.hours
            .is_some_and(|h| is_quiet(now, h.window, self.utc_offset))
    }

    /// Until when a message (`urgent` or not) that would go out `now` waits: the end of the
    /// window it is in, if the member's quiet hours hold it; `None`: it goes now.
    pub fn hold_until(&self, now: UnixMillis, urgent: bool) -> Option<UnixMillis> {
        self.hours?.hold_until(now, self.utc_offset, urgent)
    }
}

/// Whether `now` is inside `window` at `utc_offset` seconds east of UTC.
pub fn is_quiet(now: UnixMillis, window: Window, utc_offset: i32) -> bool {
    window.contains(now.time_of_day(utc_offset))
}

/// The first time after `now` at which `window` ends (at `utc_offset` seconds east of
/// UTC): within a day, never `now` itself, and outside the window. Inside the window, that
/// is when it is over.
pub fn ends_at(now: UnixMillis, window: Window, utc_offset: i32) -> UnixMillis {
    let of_day = i64::try_from(now.time_of_day(utc_offset).as_millis()).unwrap_or(0);
    let mut ahead = (minutes_ms(window.end) - of_day).rem_euclid(DAY_MS);
    if ahead == 0 {
        ahead = DAY_MS;
    }
    now + Duration::from_millis(ahead.unsigned_abs())
}

/// `+08:00`, `UTC+8`, `GMT-5`, `-05:30`, `+0800`, `+8`, `UTC`, `Z`, `0` → seconds east of
/// UTC, at most 14 hours either way. A bare number other than 0 is refused: `8` could be
/// either side. Seconds may follow (`+00:19:32`, as local mean time had them): the members'
/// offsets are kept in seconds, and only so can a test put a window's end seconds away.
pub fn parse_offset(typed: &str) -> Result<i32, QuietError> {
    let not_an_offset = || QuietError::NotAnOffset(shown(typed));
    let text = normalize(typed);
    if text.is_empty() {
        return Err(not_an_offset());
    }
    let text = ["utc", "gmt"]
        .iter()
        .find_map(|p| text.strip_prefix(p))
        .unwrap_or(&text)
        .trim();
    if text.is_empty() || text == "z" || text == "0" {
        return Ok(0);
    }
    let (sign, rest) = match text.split_at_checked(1) {
        Some(("+", rest)) => (1, rest.trim()),
        Some(("-", rest)) => (-1, rest.trim()),
        _ => return Err(not_an_offset()),
    };
    let parts: Vec<&str> = match rest.split(':').collect::<Vec<_>>()[..] {
        [hhmm] if hhmm.len() == 4 => match hhmm.split_at_checked(2) {
            Some((hours, minutes)) => vec![hours, minutes],
            None => return Err(not_an_offset()),
        },
        [hours] => vec![hours, "0"],
        ref parts => parts.to_vec(),
    };
    let number = |s: &str| {
        (!s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<i32>().ok())
            .flatten()
    };
    let (hours, minutes, seconds) = match parts[..] {
        [h, m] => (number(h), number(m), Some(0)),
        [h, m, s] => (number(h), number(m), number(s)),
        _ => return Err(not_an_offset()),
    };
    let (Some(hours), Some(minutes), Some(seconds)) = (hours, minutes, seconds) else {
        return Err(not_an_offset());
    };
    let secs = hours * 3600 + minutes * 60 + seconds;
    if minutes >= 60 || seconds >= 60 || secs > MAX_OFFSET_SECS {
        return Err(not_an_offset());
    }
    Ok(sign * secs)
}

/// Whether an offset in seconds is one [`parse_offset`] could have read.
pub fn offset_in_range(utc_offset: i32) -> bool {
    (-MAX_OFFSET_SECS..=MAX_OFFSET_SECS).contains(&utc_offset)
}

/// `+08:00`, `-05:30`, `+00:00` (`+00:19:32` with seconds).
pub fn offset_text(utc_offset: i32) -> String {
    let sign = if utc_offset < 0 { '-' } else { '+' };
    let secs = utc_offset.unsigned_abs();
    let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
    if seconds == 0 {
        format!("{sign}{hours:02}:{minutes:02}")
    } else {
        format!("{sign}{hours:02}:{minutes:02}:{seconds:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i32 = 3600;
    const CST: i32 = 8 * HOUR;

    /// 2026-03-02T00:00:00Z, a Monday.
    const MIDNIGHT_UTC: i64 = 1_772_409_600_000;

    /// `hh:mm` local time at `offset` on the day of [`MIDNIGHT_UTC`] (in UTC).
    fn at(hh: i64, mm: i64, offset: i32) -> UnixMillis {
        UnixMillis::from_millis(MIDNIGHT_UTC + (hh * 60 + mm) * 60_000 - i64::from(offset) * 1000)
    }

    fn window(text: &str) -> Window {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn the_test_clock_is_midnight_utc() {
        assert_eq!(
            UnixMillis::from_millis(MIDNIGHT_UTC).time_of_day(0),
            Duration::ZERO
        );
        assert_eq!(
            at(23, 0, CST).time_of_day(CST),
            Duration::from_secs(23 * 3600)
        );
    }

    #[test]
    fn windows_are_read_as_people_type_them() {
        let night = Window::new(23 * 60, 7 * 60).unwrap();
        for typed in [
            "23:00-07:00",
            "23-7",
            "23 - 7",
            "2300-0700",
            "23:00~07:00",
            "23:00～07:00",
            "23：00－07：00",
            "２３：００～０７：００",
            "23:00〜07:00",
            "23:00–07:00",
            "23:00—07:00",
            "23:00至07:00",
            "23点到7点",
            "23点至7点",
            "23:00 07:00",
            "11pm-7am",
            "11 PM - 7 AM",
            " 23:00-07:00 ",
            "23:-7:",
        ] {
            assert_eq!(typed.parse::<Window>(), Ok(night), "{typed:?}");
        }
        assert_eq!(
            window("22:30-6:45"),
            Window::new(22 * 60 + 30, 6 * 60 + 45).unwrap()
        );
        assert_eq!(
            window("730-1215"),
            Window::new(7 * 60 + 30, 12 * 60 + 15).unwrap()
        );
        assert_eq!(window("12am-6am"), Window::new(0, 6 * 60).unwrap());
        assert_eq!(window("12pm-1pm"), Window::new(12 * 60, 13 * 60).unwrap());
        assert_eq!(
            window("7:30am-9:15pm"),
            Window::new(450, 21 * 60 + 15).unwrap()
        );
        assert_eq!(
            window("23点30-7点"),
            Window::new(23 * 60 + 30, 7 * 60).unwrap()
        );
        assert_eq!(window("22:00-24:00"), Window::new(22 * 60, 0).unwrap());
        assert_eq!(window("0-6"), Window::new(0, 360).unwrap());
    }

    #[test]
    fn what_is_not_a_window_is_refused_saying_why() {
        for typed in [
            "",
            "-",
            "23",
            "23-",
            "-7",
            "tonight",
            "23-7-9",
            "23~7~9",
            "23:00 07:00 09:00",
            "tonight please",
        ] {
            assert!(
                matches!(typed.parse::<Window>(), Err(QuietError::NotAWindow(_))),
                "{typed:?}: {:?}",
                typed.parse::<Window>()
            );
        }
        for typed in [
            "25-7", "23:60-7", "24:30-7", "23-7:5x", "123456-7", "13pm-7", "0am-7", "23:0:0-7",
            "+3-7", "23.5-7", "٢٣-٧", "a-b",
        ] {
            assert!(
                matches!(typed.parse::<Window>(), Err(QuietError::NotATime(_))),
                "{typed:?}: {:?}",
                typed.parse::<Window>()
            );
        }
        for typed in ["7-7", "07:00-7", "0-24", "00:00-24:00", "24-0", "12am-0"] {
            assert_eq!(typed.parse::<Window>(), Err(QuietError::Empty), "{typed:?}");
        }
        let e = "tonight please".parse::<Window>().unwrap_err().to_string();
        assert!(
            e.contains("tonight please") && e.contains("23:00-07:00"),
            "{e}"
        );
    }

    #[test]
    fn a_window_is_written_as_it_is_read() {
        for (typed, written) in [
            ("23-7", "23:00-07:00"),
            ("2330-0705", "23:30-07:05"),
            ("9am-5pm", "09:00-17:00"),
            ("22-24", "22:00-00:00"),
        ] {
            let w = window(typed);
            assert_eq!(w.to_string(), written);
            assert_eq!(window(written), w);
        }
    }

    #[test]
    fn a_window_knows_its_length_and_whether_it_crosses_midnight() {
        let night = window("23:00-07:00");
        assert!(night.crosses_midnight());
        assert_eq!(night.length(), Duration::from_secs(8 * 3600));
        let day = window("09:00-17:30");
        assert!(!day.crosses_midnight());
        assert_eq!(day.length(), Duration::from_secs(8 * 3600 + 1800));
        assert_eq!(window("22-24").length(), Duration::from_secs(2 * 3600));
        assert_eq!((night.start(), night.end()), (23 * 60, 7 * 60));
        assert_eq!(Window::new(1441, 0), None);
        assert_eq!(Window::new(0, 1440), None);
    }

    #[test]
    fn across_midnight_the_window_holds_from_its_start_to_its_end() {
        let night = window("23:00-07:00");
        for (hh, mm, quiet) in [
            (22, 59, false),
            (23, 0, true),
            (23, 59, true),
            (0, 0, true),
            (3, 0, true),
            (6, 59, true),
            (7, 0, false),
            (12, 0, false),
        ] {
            let now = at(hh, mm, CST);
            assert_eq!(is_quiet(now, night, CST), quiet, "{hh}:{mm:02}");
            // The same instant at another offset is another time of day.
            // The same instant at UTC-4 is 12 hours earlier there.
            let there = (hh + 12) % 24;
            assert_eq!(
                is_quiet(now, night, CST - 12 * HOUR),
                !(7..23).contains(&there),
                "{hh}:{mm:02} at UTC-4"
            );
        }
        // The last millisecond is quiet, the end is not.
        let end = at(7, 0, CST);
        assert!(is_quiet(end - Duration::from_millis(1), night, CST));
        assert!(!is_quiet(end, night, CST));
    }

    #[test]
    fn a_window_within_a_day_holds_only_inside_it() {
        let lunch = window("12:00-13:30");
        for (hh, mm, quiet) in [
            (11, 59, false),
            (12, 0, true),
            (13, 29, true),
            (13, 30, false),
            (0, 0, false),
            (23, 59, false),
        ] {
            assert_eq!(
                is_quiet(at(hh, mm, -5 * HOUR), lunch, -5 * HOUR),
                quiet,
                "{hh}:{mm:02}"
            );
        }
    }

    #[test]
    fn the_end_is_the_next_end_of_the_window_in_the_members_time() {
        let night = window("23:00-07:00");
        // Inside, before midnight: tomorrow 07:00.
        assert_eq!(ends_at(at(23, 30, CST), night, CST), at(31, 0, CST));
        // Inside, after midnight: today 07:00.
        assert_eq!(ends_at(at(2, 15, CST), night, CST), at(7, 0, CST));
        // At its start: 8 hours on.
        assert_eq!(ends_at(at(23, 0, CST), night, CST), at(31, 0, CST));
        // A millisecond before its end: that end.
        let end = at(7, 0, CST);
        assert_eq!(ends_at(end - Duration::from_millis(1), night, CST), end);
        // At its end, it is over; the next end is a day later.
        assert_eq!(ends_at(end, night, CST), end + Duration::from_secs(86_400));
        // At a half-hour offset.
        let india = 5 * HOUR + 1800;
        assert_eq!(ends_at(at(6, 0, india), night, india), at(7, 0, india));
        // West of UTC, the local day differs from UTC's.
        let ny = -5 * HOUR;
        assert_eq!(ends_at(at(23, 59, ny), night, ny), at(31, 0, ny));
        // Within a day.
        let lunch = window("12:00-13:30");
        assert_eq!(ends_at(at(12, 10, CST), lunch, CST), at(13, 30, CST));
        // Seconds and milliseconds of `now` do not shift the end.
        let now = at(3, 0, CST) + Duration::from_millis(12_345);
        assert_eq!(ends_at(now, night, CST), at(7, 0, CST));
    }

    #[test]
    fn urgent_messages_go_through_unless_strict() {
        let night = QuietHours {
            window: window("23-7"),
            strict: false,
        };
        let now = at(1, 0, CST);
        assert_eq!(night.hold_until(now, CST, false), Some(at(7, 0, CST)));
        assert_eq!(night.hold_until(now, CST, true), None);
        let strict = QuietHours {
            strict: true,
            ..night
        };
        assert_eq!(strict.hold_until(now, CST, true), Some(at(7, 0, CST)));
        // Outside the window nothing waits.
        assert_eq!(strict.hold_until(at(12, 0, CST), CST, false), None);
        assert!(night.holds(false) && !night.holds(true));
        assert!(strict.holds(true) && strict.holds(false));
    }

    #[test]
    fn settings_are_read_written_and_stored() {
        let night = window("23:00-07:00");
        for (typed, want) in [
            (
                "23:00-07:00",
                QuietSetting::On(QuietHours {
                    window: night,
                    strict: false,
                }),
            ),
            (
                "23-7 strict",
                QuietSetting::On(QuietHours {
                    window: night,
                    strict: true,
                }),
            ),
            (
                "23:00-07:00 STRICT",
                QuietSetting::On(QuietHours {
                    window: night,
                    strict: true,
                }),
            ),
            (
                "23-7严格",
                QuietSetting::On(QuietHours {
                    window: night,
                    strict: true,
                }),
            ),
            (
                "23：00～07：00 严格",
                QuietSetting::On(QuietHours {
                    window: night,
                    strict: true,
                }),
            ),
            ("off", QuietSetting::Off),
            ("OFF", QuietSetting::Off),
            ("关", QuietSetting::Off),
            ("关闭", QuietSetting::Off),
            ("none", QuietSetting::Off),
        ] {
            assert_eq!(typed.parse::<QuietSetting>(), Ok(want), "{typed:?}");
            assert_eq!(QuietSetting::from_stored(&want.to_stored()), Some(want));
        }
        assert_eq!(
            QuietSetting::On(QuietHours {
                window: night,
                strict: true
            })
            .to_stored(),
            "23:00-07:00 strict"
        );
        assert_eq!(QuietSetting::Off.to_stored(), "off");
        assert_eq!(QuietSetting::from_stored("garbage"), None);
        assert!(matches!(
            "strict".parse::<QuietSetting>(),
            Err(QuietError::NotAWindow(ref t)) if t == "strict"
        ));
        assert_eq!("7-7 strict".parse::<QuietSetting>(), Err(QuietError::Empty));
    }

    #[test]
    fn the_members_choice_wins_over_the_servers_default() {
        let server = QuietHours {
            window: window("22-6"),
            strict: false,
        };
        let own = QuietHours {
            window: window("1-5"),
            strict: true,
        };
        assert_eq!(QuietSetting::effective(None, Some(server)), Some(server));
        assert_eq!(QuietSetting::effective(None, None), None);
        assert_eq!(
            QuietSetting::effective(Some(QuietSetting::Off), Some(server)),
            None
        );
        assert_eq!(
            QuietSetting::effective(Some(QuietSetting::On(own)), Some(server)),
            Some(own)
        );
        assert_eq!(
            QuietSetting::effective(Some(QuietSetting::On(own)), None),
            Some(own)
        );
    }

    #[test]
    fn a_member_keeps_their_own_hours_at_their_own_offset_else_the_servers() {
        let server = QuietHours {
            window: window("23-7"),
            strict: false,
        };
        let own: QuietSetting = "12-13 strict".parse().unwrap();
        let at_server = MemberHours::of(None, None, Some(server), CST);
        assert_eq!(
            at_server,
            MemberHours {
                hours: Some(server),
                utc_offset: CST
            }
        );
        let now = at(1, 0, CST);
        assert!(at_server.is_quiet(now));
        assert_eq!(at_server.hold_until(now, false), Some(at(7, 0, CST)));
        assert_eq!(at_server.hold_until(now, true), None);
        // 01:00 in Beijing is 12:00 in New York... at UTC-5 it is 12:00 the day before.
        let mine = MemberHours::of(Some(own), Some(-5 * HOUR), Some(server), CST);
        assert!(mine.is_quiet(now));
        assert_eq!(
            mine.hold_until(now, true),
            Some(at(13, 0, -5 * HOUR) - Duration::from_secs(86_400))
        );
        let off = MemberHours::of(Some(QuietSetting::Off), None, Some(server), CST);
        assert!(!off.is_quiet(now));
        assert_eq!(off.hold_until(now, false), None);
        assert_eq!(
            MemberHours::of(None, None, None, CST).hold_until(now, false),
            None
        );
    }

    #[test]
    fn offsets_are_read_as_people_type_them() {
        for (typed, secs) in [
            ("+08:00", CST),
            ("+8", CST),
            ("+08", CST),
            ("+0800", CST),
            ("UTC+8", CST),
            ("utc+08:00", CST),
            ("GMT+8", CST),
            ("UTC +8", CST),
            ("＋０８：００", CST),
            ("-05:30", -(5 * HOUR + 1800)),
            ("-5:30", -(5 * HOUR + 1800)),
            ("UTC-5", -5 * HOUR),
            ("−05:00", -5 * HOUR),
            ("+05:45", 5 * HOUR + 45 * 60),
            ("+14:00", 14 * HOUR),
            ("-12:00", -12 * HOUR),
            ("-00:45", -45 * 60),
            ("UTC", 0),
            ("Z", 0),
            ("0", 0),
            ("+00:00", 0),
            ("+08:00:00", CST),
            ("+00:19:32", 19 * 60 + 32),
            ("-03:00:07", -(3 * HOUR + 7)),
        ] {
            assert_eq!(parse_offset(typed), Ok(secs), "{typed:?}");
        }
        for typed in [
            "",
            "8",
            "08:00",
            "+15",
            "+14:01",
            "-14:30",
            "+8:60",
            "+123",
            "+08:00:60",
            "+08:00:1x",
            "+08:00:00:00",
            "+14:00:01",
            "+0800:00",
            "CST",
            "utc+",
            "+",
            "++8",
            "+8h",
            "Asia/Shanghai",
        ] {
            assert!(
                matches!(parse_offset(typed), Err(QuietError::NotAnOffset(_))),
                "{typed:?}: {:?}",
                parse_offset(typed)
            );
        }
        // `UTC` alone is UTC; nothing at all is no offset.
        assert_eq!(parse_offset("utc"), Ok(0));
        assert!(parse_offset("  ").is_err());
    }

    #[test]
    fn offsets_are_written_as_they_are_read() {
        for (secs, text) in [
            (CST, "+08:00"),
            (-(5 * HOUR + 1800), "-05:30"),
            (0, "+00:00"),
            (-45 * 60, "-00:45"),
            (14 * HOUR, "+14:00"),
            (-(19 * 60 + 32), "-00:19:32"),
        ] {
            assert_eq!(offset_text(secs), text);
            assert_eq!(parse_offset(text), Ok(secs));
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        fn windows() -> impl Strategy<Value = Window> {
            (0..DAY_MINUTES, 1..DAY_MINUTES)
                .prop_map(|(start, length)| Window::new(start, (start + length) % DAY_MINUTES))
                .prop_filter_map("a window", |w| w)
        }

        fn offsets() -> impl Strategy<Value = i32> {
            (-MAX_OFFSET_SECS / 60..=MAX_OFFSET_SECS / 60).prop_map(|m| m * 60)
        }

        /// 1970 to 2200, to the millisecond.
        fn instants() -> impl Strategy<Value = UnixMillis> {
            (0..7_258_118_400_000_i64).prop_map(UnixMillis::from_millis)
        }

        proptest! {
            /// The end is in the future, outside the window, at most a day away; inside the
            /// window every instant up to it is quiet (it is the window's end, not a later
            /// one), and it falls on the window's end minute, on the minute.
            #[test]
            fn the_end_is_the_first_instant_after_the_window(
                now in instants(),
                w in windows(),
                offset in offsets(),
                permille in 0..1000_u128,
            ) {
                let end = ends_at(now, w, offset);
                prop_assert!(end > now);
                prop_assert!(!is_quiet(end, w, offset));
                prop_assert!(end.since(now) <= Duration::from_secs(86_400));
                prop_assert_eq!(end.time_of_day(offset), Duration::from_secs(u64::from(w.end()) * 60));
                if is_quiet(now, w, offset) {
                    prop_assert!(end.since(now) <= w.length());
                    prop_assert!(is_quiet(end - Duration::from_millis(1), w, offset));
                    let part = end.since(now).as_millis() * permille / 1000;
                    let between = now + Duration::from_millis(u64::try_from(part).unwrap_or(0));
                    prop_assert!(is_quiet(between, w, offset));
                }
            }

            /// Holding: only inside the window, only what the setting holds, until its end.
            #[test]
            fn a_message_waits_only_inside_the_window_until_its_end(
                now in instants(),
                w in windows(),
                offset in offsets(),
                strict in any::<bool>(),
                urgent in any::<bool>(),
            ) {
                let hours = QuietHours { window: w, strict };
                match hours.hold_until(now, offset, urgent) {
                    Some(until) => {
                        prop_assert!(is_quiet(now, w, offset));
                        prop_assert!(strict || !urgent);
                        prop_assert_eq!(until, ends_at(now, w, offset));
                    }
                    None => prop_assert!(!is_quiet(now, w, offset) || (urgent && !strict)),
                }
            }

            /// Any text: a setting or an error, never a panic; what is read is written back
            /// as text that reads the same.
            #[test]
            fn any_text_reads_as_a_setting_or_an_error(
                typed in any::<String>(),
                piece in "[0-9:：~～\\- ]{0,12}(strict)?",
                signed in "(utc)?[+-]\\PC{0,6}",
            ) {
                for text in [typed.as_str(), piece.as_str(), signed.as_str()] {
                    if let Ok(setting) = text.parse::<QuietSetting>() {
                        prop_assert_eq!(QuietSetting::from_stored(&setting.to_stored()), Some(setting));
                    }
                    if let Ok(offset) = parse_offset(text) {
                        prop_assert!(offset.abs() <= MAX_OFFSET_SECS);
                        prop_assert_eq!(parse_offset(&offset_text(offset)), Ok(offset));
                    }
                }
            }
        }
    }
}
