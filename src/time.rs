//! Points in time as pushbot keeps them: [`UnixMillis`], milliseconds since the Unix epoch.
//!
//! It is what the database stores (its BIGINT time columns), what the scheduler plans with
//! and what the pure decisions (`delivery::decide`, `limits`, `health`, `next_step`) are
//! given as their clock. A span between two times is a [`std::time::Duration`]: adding one
//! gives a time, [`UnixMillis::since`] gives one back. Arithmetic saturates at the ends of
//! the range instead of panicking, so no configured duration, however large, can overflow
//! a deadline.

use std::ops::{Add, Sub};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time, in whole milliseconds since 1970-01-01T00:00:00Z (negative before).
///
/// Stored and read as the plain `i64` column value on both engines (`sqlx(transparent)`;
/// the group-commit writer converts it to its own bound values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, sqlx::Type)]
#[sqlx(transparent)]
pub struct UnixMillis(i64);

const DAY: i64 = 86_400_000;

/// `d` in whole milliseconds, `i64::MAX` when it does not fit.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl UnixMillis {
    /// The latest time there is: "not before the end of time" (a window that allows
    /// nothing; a channel whose probe's outcome decides).
    pub const MAX: Self = Self(i64::MAX);

    /// Now, by the system clock (the epoch itself if the clock is set before it).
    pub fn now() -> Self {
        Self(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, millis),
        )
    }

    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch (rounded down), as signed requests and some APIs
    /// give their timestamps.
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn since(self, earlier: Self) -> Duration {
        let ms = self.0.saturating_sub(earlier.0);
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    /// As a [`SystemTime`], for formatting; a time before the epoch gives the epoch.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(u64::try_from(self.0).unwrap_or(0))
    }

    /// How far into its day this is, in the time zone `utc_offset_secs` east of UTC.
    pub fn time_of_day(self, utc_offset_secs: i32) -> Duration {
        let local = self.0.saturating_add(i64::from(utc_offset_secs) * 1000);
        Duration::from_millis(local.rem_euclid(DAY).unsigned_abs())
    }

    /// The start of this time's day in the time zone `utc_offset_secs` east of UTC.
    pub fn start_of_day(self, utc_offset_secs: i32) -> Self {
        self - self.time_of_day(utc_offset_secs)
    }
}

/// Later by `d`; [`UnixMillis::MAX`] at the most (never a panic).
impl Add<Duration> for UnixMillis {
    type Output = Self;

    fn add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(millis(d)))
    }
}

/// Earlier by `d`; the earliest representable time at the least (never a panic).
impl Sub<Duration> for UnixMillis {
    type Output = Self;

    fn sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(millis(d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: UnixMillis = UnixMillis::from_millis(1_795_500_120_000);

    #[test]
    fn a_duration_moves_a_time_by_whole_milliseconds() {
        assert_eq!(
            (T + Duration::from_millis(1_500)).as_millis(),
            1_795_500_121_500
        );
        assert_eq!((T - Duration::from_secs(60)).as_millis(), 1_795_500_060_000);
        // Below a millisecond counts as nothing (as the stored times do).
        assert_eq!(T + Duration::from_micros(999), T);
    }

    #[test]
    fn adding_or_subtracting_saturates_instead_of_overflowing() {
        assert_eq!(T + Duration::MAX, UnixMillis::MAX);
        assert_eq!(UnixMillis::MAX + Duration::from_millis(1), UnixMillis::MAX);
        assert_eq!(
            T - Duration::MAX,
            UnixMillis::from_millis(T.as_millis() - i64::MAX),
            "a duration beyond i64 milliseconds counts as i64::MAX of them"
        );
        assert_eq!(
            UnixMillis::from_millis(-5) - Duration::MAX,
            UnixMillis::from_millis(i64::MIN),
            "the earliest time"
        );
        assert_eq!(
            UnixMillis::from_millis(i64::MIN) - Duration::from_millis(1),
            UnixMillis::from_millis(i64::MIN)
        );
    }

    #[test]
    fn since_is_the_span_between_and_zero_when_not_after() {
        let later = T + Duration::from_secs(3);
        assert_eq!(later.since(T), Duration::from_secs(3));
        assert_eq!(T.since(later), Duration::ZERO);
        assert_eq!(T.since(T), Duration::ZERO);
        assert_eq!(
            UnixMillis::MAX.since(UnixMillis::from_millis(i64::MIN)),
            Duration::from_millis(u64::try_from(i64::MAX).unwrap())
        );
    }

    #[test]
    fn times_order_by_the_clock() {
        let mut times = vec![T + Duration::from_millis(1), UnixMillis::MAX, T];
        times.sort();
        assert_eq!(times, [T, T + Duration::from_millis(1), UnixMillis::MAX]);
        assert!(UnixMillis::from_millis(-1) < UnixMillis::from_millis(0));
        assert!(UnixMillis::now() > T - Duration::from_secs(365 * 86_400 * 2));
    }

    #[test]
    fn seconds_round_down_also_before_the_epoch() {
        assert_eq!(UnixMillis::from_millis(1_999).as_secs(), 1);
        assert_eq!(UnixMillis::from_millis(-1).as_secs(), -1);
        assert_eq!(
            UnixMillis::from_millis(-1).to_system_time(),
            UNIX_EPOCH,
            "before the epoch: the epoch"
        );
        assert_eq!(
            T.to_system_time(),
            UNIX_EPOCH + Duration::from_millis(1_795_500_120_000)
        );
    }

    #[test]
    fn days_start_at_local_midnight() {
        // 2026-11-26 06:02:00 UTC = 14:02 in Beijing, 01:02 in New York (UTC-5).
        let beijing = 8 * 3600;
        assert_eq!(T.time_of_day(0), Duration::from_secs(6 * 3600 + 120));
        assert_eq!(T.time_of_day(beijing), Duration::from_secs(14 * 3600 + 120));
        assert_eq!(T.time_of_day(-5 * 3600), Duration::from_secs(3600 + 120));
        // Beijing's midnight is 16:00 UTC the day before.
        assert_eq!(
            T.start_of_day(beijing),
            T - Duration::from_secs(14 * 3600 + 120)
        );
        assert_eq!(T.start_of_day(beijing).time_of_day(beijing), Duration::ZERO);
        // Before the epoch, too.
        assert_eq!(
            UnixMillis::from_millis(0).time_of_day(-3600),
            Duration::from_secs(23 * 3600)
        );
        // The ends of the range do not panic.
        let _ = UnixMillis::MAX.start_of_day(14 * 3600);
        let _ = UnixMillis::from_millis(i64::MIN).start_of_day(-12 * 3600);
    }
}
