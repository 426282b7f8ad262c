//! Per-member send limits as pure arithmetic over send times (unix milliseconds), with the
//! clock passed in, so every rule is tested without sleeping.
//!
//! WeCom silently drops messages beyond 30 a minute or 1000 an hour from one app to one
//! member while answering `errcode 0`. The scheduler therefore never sends a member more
//! than `count` messages in any sliding window of length `per`, counted on the messages it
//! actually sent, and plans a digest when a lane would otherwise wait too long.

use std::time::Duration;

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
    pub fn enforced_ms(&self) -> i64 {
        let per = ms(self.per);
        per + (per / 20).max(250)
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The longest window, as enforced: how much send history the rules need.
pub fn history_span_ms(windows: &[RateWindow]) -> i64 {
    windows
        .iter()
        .map(RateWindow::enforced_ms)
        .max()
        .unwrap_or(0)
}

/// Earliest time at or after `now` when one more send keeps every window within its
/// count. `sent` holds earlier send times in ascending order (older ones may be missing
/// only if they are outside every window).
pub fn next_slot(now: i64, sent: &[i64], windows: &[RateWindow]) -> i64 {
    let mut at = now;
    for w in windows {
        let count = usize::try_from(w.count).unwrap_or(usize::MAX);
        if count == 0 {
            // A window that allows nothing: never (the config refuses count = 0).
            return i64::MAX;
        }
        // The `count`-th most recent send must be a whole window before the new one.
        if let Some(&oldest) = sent.len().checked_sub(count).and_then(|i| sent.get(i)) {
            at = at.max(oldest.saturating_add(w.enforced_ms()));
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
    WaitUntil(i64),
}

/// Decides the next step of a lane. `waiting` are the acceptance times of the lane's
/// queued messages in lane order (head first; a prefix is enough). A digest is planned
/// when, sending one message per allowed slot from now on, some waiting message would be
/// sent more than `digest_after` after it was accepted.
pub fn plan(
    now: i64,
    sent: &[i64],
    windows: &[RateWindow],
    waiting: &[i64],
    digest_after: Option<Duration>,
) -> Plan {
    let first = next_slot(now, sent, windows);
    if first > now {
        return Plan::WaitUntil(first);
    }
    let Some(limit) = digest_after.map(ms) else {
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
        if slot.saturating_sub(accepted) > limit {
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
        let sent: Vec<i64> = (0..29).map(|i| i * 10).collect();
        assert_eq!(next_slot(1_000, &sent, &windows), 1_000);
        let sent: Vec<i64> = (0..30).map(|i| i * 10).collect();
        // The 31st waits until the first send is a whole (enforced) minute old.
        assert_eq!(next_slot(1_000, &sent, &windows), windows[0].enforced_ms());
    }

    #[test]
    fn every_window_counts_and_the_longest_wins() {
        let windows = wecom();
        // 1000 sends spread so that no minute holds 30: the hour is what blocks.
        let sent: Vec<i64> = (0..1000).map(|i| i * 3_000).collect();
        let now = 3_000_000;
        assert_eq!(next_slot(now, &sent, &windows), windows[1].enforced_ms());
    }

    #[test]
    fn no_window_is_ever_exceeded_by_following_the_slots() {
        let windows = vec![RateWindow {
            count: 5,
            per: Duration::from_secs(2),
        }];
        let mut sent = Vec::new();
        let mut now = 0;
        for _ in 0..200 {
            now = next_slot(now, &sent, &windows);
            sent.push(now);
        }
        // Any interval of length `per` holds at most `count` sends.
        for (i, &start) in sent.iter().enumerate() {
            let inside = sent[i..].iter().take_while(|&&t| t < start + 2_000).count();
            assert!(inside <= 5, "{inside} sends within 2 s from {start}");
        }
        // …and the limit is used, not wasted: ~5 per enforced window.
        let span = sent[199] - sent[0];
        assert!(span < 41 * windows[0].enforced_ms(), "{span}");
    }

    #[test]
    fn a_short_lane_is_sent_one_by_one() {
        let windows = wecom();
        let waiting = [0, 1, 2];
        assert_eq!(
            plan(10, &[], &windows, &waiting, Some(Duration::from_secs(600))),
            Plan::Send
        );
    }

    #[test]
    fn a_lane_that_would_wait_too_long_becomes_a_digest() {
        let windows = wecom();
        // 400 messages accepted at once; 30 a minute would take thirteen minutes.
        let waiting = vec![0; 400];
        let ten_minutes = Some(Duration::from_secs(600));
        assert_eq!(plan(0, &[], &windows, &waiting, ten_minutes), Plan::Digest);
        // Off: sent one by one, however long it takes.
        assert_eq!(plan(0, &[], &windows, &waiting, None), Plan::Send);
        // 300 go out within ten minutes (30 per enforced minute): no digest.
        let waiting = vec![0; 300];
        assert_eq!(plan(0, &[], &windows, &waiting, ten_minutes), Plan::Send);
    }

    #[test]
    fn digest_boundaries() {
        let windows = vec![RateWindow {
            count: 1,
            per: Duration::from_secs(10),
        }];
        let slot = windows[0].enforced_ms();
        let after = Some(Duration::from_millis(u64::try_from(slot).unwrap()));
        // One message, however old: sent as it is (a digest of one is no digest).
        assert_eq!(
            plan(1_000_000, &[], &windows, &[0], Some(Duration::from_secs(1))),
            Plan::Send
        );
        // Two: the second goes out one slot later. Waiting exactly `digest_after` is fine…
        assert_eq!(plan(0, &[], &windows, &[0, 0], after), Plan::Send);
        // …a millisecond more is not.
        let after = Some(Duration::from_millis(u64::try_from(slot - 1).unwrap()));
        assert_eq!(plan(0, &[], &windows, &[0, 0], after), Plan::Digest);
    }

    #[test]
    fn a_member_at_the_limit_waits_for_the_next_slot() {
        let windows = wecom();
        let sent: Vec<i64> = (0..30).collect();
        let waiting = vec![10; 3];
        assert_eq!(
            plan(
                MIN / 2,
                &sent,
                &windows,
                &waiting,
                Some(Duration::from_secs(600))
            ),
            Plan::WaitUntil(windows[0].enforced_ms())
        );
    }

    #[test]
    fn history_span_covers_the_longest_window() {
        assert_eq!(history_span_ms(&wecom()), 3_600_000 + 180_000);
        assert_eq!(history_span_ms(&[]), 0);
    }
}
