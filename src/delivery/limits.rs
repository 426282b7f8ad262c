//! Per-member send limits as pure arithmetic over send times, with the clock passed in, so
//! every rule is tested without sleeping.
//!
//! WeCom silently drops messages beyond 30 a minute or 1000 an hour from one app to one
//! member while answering `errcode 0`. The scheduler therefore never sends a member more
//! than `count` messages in any sliding window of length `per`, counted on the messages it
//! actually sent, and plans a digest when a lane would otherwise wait too long.

use std::time::Duration;

use crate::time::UnixMillis;

/// At most `count` sends in any window of length `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindow {
    pub count: u32,
    pub per: Duration,
}

impl RateWindow {
    /// The window as enforced: a little longer than configured, because the member's
    /// phone (and WeCom's counter) sees our sends after a network delay that varies; two
    /// sends exactly `per` apart on our clock could land inside one window on theirs.
    pub fn enforced(&self) -> Duration {
        self.per
            .saturating_add((self.per / 20).max(Duration::from_millis(250)))
    }
}

/// The longest window, as enforced: how much send history the rules need.
pub fn history_span(windows: &[RateWindow]) -> Duration {
    windows
        .iter()
        .map(RateWindow::enforced)
        .max()
        .unwrap_or_default()
}

/// Earliest time at or after `now` when one more send keeps every window within its
/// count. `sent` holds earlier send times in ascending order (older ones may be missing
/// only if they are outside every window).
pub fn next_slot(now: UnixMillis, sent: &[UnixMillis], windows: &[RateWindow]) -> UnixMillis {
    let mut at = now;
    for w in windows {
        let count = usize::try_from(w.count).unwrap_or(usize::MAX);
        if count == 0 {
            // A window that allows nothing: never (the config refuses count = 0).
            return UnixMillis::MAX;
        }
        // The `count`-th most recent send must be a whole window before the new one.
        if let Some(&oldest) = sent.len().checked_sub(count).and_then(|i| sent.get(i)) {
            at = at.max(oldest + w.enforced());
        }
    }
    at
}

/// What a lane should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Send the head message now.
    Send,
    /// Send now one digest carrying as many waiting messages as fit.
    Digest,
    /// Nothing may be sent before this time.
    WaitUntil(UnixMillis),
}

/// Decides the next step of a lane. `waiting` are the acceptance times of the lane's
/// queued messages in lane order (head first; a prefix is enough). A digest is planned
/// when, sending one message per allowed slot from now on, some waiting message would be
/// sent more than `digest_after` after it was accepted.
pub fn plan(
    now: UnixMillis,
    sent: &[UnixMillis],
    windows: &[RateWindow],
    waiting: &[UnixMillis],
    digest_after: Option<Duration>,
) -> Plan {
    let first = next_slot(now, sent, windows);
    if first > now {
        return Plan::WaitUntil(first);
    }
    let Some(limit) = digest_after else {
        return Plan::Send;
    };
    if waiting.len() < 2 {
        return Plan::Send;
    }
    // Simulate one send per slot: history plus the planned sends.
    let mut simulated = sent.to_vec();
    let mut slot = first;
    for (k, &accepted) in waiting.iter().enumerate() {
        if k > 0 {
            slot = next_slot(slot, &simulated, windows);
        }
        if slot.since(accepted) > limit {
            return Plan::Digest;
        }
        simulated.push(slot);
    }
    Plan::Send
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    /// The time `ms` milliseconds after the epoch (the tests' clock starts there).
    fn t(ms: i64) -> UnixMillis {
        UnixMillis::from_millis(ms)
    }

    /// Times at these milliseconds.
    fn times(ms: impl IntoIterator<Item = i64>) -> Vec<UnixMillis> {
        ms.into_iter().map(t).collect()
    }

    /// When a send is allowed again, the `count`-th send back having been made at `at`.
    fn after_window(at: UnixMillis, window: &RateWindow) -> UnixMillis {
        at + window.enforced()
    }

    fn wecom() -> Vec<RateWindow> {
        vec![
            RateWindow {
                count: 30,
                per: Duration::from_secs(60),
            },
            RateWindow {
                count: 1000,
                per: Duration::from_secs(3600),
            },
        ]
    }

    #[test]
    fn free_until_the_count_is_reached() {
        let windows = wecom();
        let sent = times((0..29).map(|i| i * 10));
        assert_eq!(next_slot(t(1_000), &sent, &windows), t(1_000));
        let sent = times((0..30).map(|i| i * 10));
        // The 31st waits until the first send is a whole (enforced) minute old.
        assert_eq!(
            next_slot(t(1_000), &sent, &windows),
            after_window(t(0), &windows[0])
        );
    }

    #[test]
    fn every_window_counts_and_the_longest_wins() {
        let windows = wecom();
        // 1000 sends spread so that no minute holds 30: the hour is what blocks.
        let sent = times((0..1000).map(|i| i * 3_000));
        let now = t(3_000_000);
        assert_eq!(
            next_slot(now, &sent, &windows),
            after_window(t(0), &windows[1])
        );
    }

    #[test]
    fn no_window_is_ever_exceeded_by_following_the_slots() {
        let windows = vec![RateWindow {
            count: 5,
            per: Duration::from_secs(2),
        }];
        let mut sent = Vec::new();
        let mut now = t(0);
        for _ in 0..200 {
            now = next_slot(now, &sent, &windows);
            sent.push(now);
        }
        // Any interval of length `per` holds at most `count` sends.
        for (i, &start) in sent.iter().enumerate() {
            let end = start + Duration::from_secs(2);
            let inside = sent[i..].iter().take_while(|&&at| at < end).count();
            assert!(inside <= 5, "{inside} sends within 2 s from {start:?}");
        }
        // …and the limit is used, not wasted: ~5 per enforced window.
        let span = sent[199].since(sent[0]);
        assert!(span < windows[0].enforced() * 41, "{span:?}");
    }

    #[test]
    fn a_short_lane_is_sent_one_by_one() {
        let windows = wecom();
        let waiting = times([0, 1, 2]);
        assert_eq!(
            plan(
                t(10),
                &[],
                &windows,
                &waiting,
                Some(Duration::from_secs(600))
            ),
            Plan::Send
        );
    }

    #[test]
    fn a_lane_that_would_wait_too_long_becomes_a_digest() {
        let windows = wecom();
        // 400 messages accepted at once; 30 a minute would take thirteen minutes.
        let waiting = vec![t(0); 400];
        let ten_minutes = Some(Duration::from_secs(600));
        assert_eq!(
            plan(t(0), &[], &windows, &waiting, ten_minutes),
            Plan::Digest
        );
        // Off: sent one by one, however long it takes.
        assert_eq!(plan(t(0), &[], &windows, &waiting, None), Plan::Send);
        // 300 go out within ten minutes (30 per enforced minute): no digest.
        let waiting = vec![t(0); 300];
        assert_eq!(plan(t(0), &[], &windows, &waiting, ten_minutes), Plan::Send);
    }

    #[test]
    fn digest_boundaries() {
        let windows = vec![RateWindow {
            count: 1,
            per: Duration::from_secs(10),
        }];
        let slot = windows[0].enforced();
        let after = Some(slot);
        // One message, however old: sent as it is (a digest of one is no digest).
        assert_eq!(
            plan(
                t(1_000_000),
                &[],
                &windows,
                &[t(0)],
                Some(Duration::from_secs(1))
            ),
            Plan::Send
        );
        // Two: the second goes out one slot later. Waiting exactly `digest_after` is fine…
        assert_eq!(plan(t(0), &[], &windows, &[t(0), t(0)], after), Plan::Send);
        // …a millisecond more is not.
        let after = Some(slot - Duration::from_millis(1));
        assert_eq!(
            plan(t(0), &[], &windows, &[t(0), t(0)], after),
            Plan::Digest
        );
    }

    #[test]
    fn a_member_at_the_limit_waits_for_the_next_slot() {
        let windows = wecom();
        let sent = times(0..30);
        let waiting = vec![t(10); 3];
        assert_eq!(
            plan(
                t(MIN / 2),
                &sent,
                &windows,
                &waiting,
                Some(Duration::from_secs(600))
            ),
            Plan::WaitUntil(after_window(t(0), &windows[0]))
        );
    }

    #[test]
    fn history_span_covers_the_longest_window() {
        assert_eq!(
            history_span(&wecom()),
            Duration::from_millis(3_600_000 + 180_000)
        );
        assert_eq!(history_span(&[]), Duration::ZERO);
    }
}
