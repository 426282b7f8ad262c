//! Exponential backoff with jitter, as a pure function so it can be tested exactly.

use std::time::Duration;

/// Delay before retry number `attempt` (1 = after the first failure).
///
/// The base doubles from `initial` up to `max`; "equal jitter" then picks uniformly from
/// `[base/2, base]`, so retries of many messages failing together spread out while the
/// delay still grows. `jitter` is a uniform sample from `[0, 1)`.
pub fn delay(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    let base = initial.saturating_mul(1u32 << exp.min(31)).min(max);
    let half = base / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_then_caps() {
        let max = Duration::from_secs(300);
        assert_eq!(delay(1, S, max, 1.0), S);
        assert_eq!(delay(2, S, max, 1.0), 2 * S);
        assert_eq!(delay(5, S, max, 1.0), 16 * S);
        assert_eq!(delay(30, S, max, 1.0), max);
        assert_eq!(delay(u32::MAX, S, max, 1.0), max);
    }

    #[test]
    fn jitter_stays_within_half_and_full() {
        let max = Duration::from_secs(300);
        assert_eq!(delay(3, S, max, 0.0), 2 * S);
        let d = delay(3, S, max, 0.5);
        assert!(d > 2 * S && d < 4 * S);
    }
}
