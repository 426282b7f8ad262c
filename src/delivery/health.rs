//! Channel health: when a channel is unreachable (connection refused, timeouts, HTTP 5xx,
//! WeCom busy), the whole queue stops being sent to it; one probe at a time is let
//! through, at growing intervals, until it answers — and, so that no message moves on
//! without a try at the end of its retry window, no later than the end of the earliest
//! window still waiting for it ([`Health::probe_by`]). Pure state with the clock passed in.

use std::time::Duration;

use crate::time::UnixMillis;

/// A probe brought forward to a waiting message's window end starts at least this long
/// after the latest failed try started. Messages whose windows end within this of each
/// other share one probe (each moves on at most this late), so a steady stream of
/// messages during a long outage costs the channel a probe a second, not one per message.
pub const DEADLINE_PROBE_GAP: Duration = Duration::from_secs(1);

/// What the health state lets a sender do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The channel is up: go.
    Open,
    /// The channel is down and a probe is due: go, as the one probe.
    Probe,
    /// Down: nothing may be sent before this time.
    Closed(UnixMillis),
}

/// A change worth one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    WentDown,
    CameBack { down_for: Duration },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Up,
    Down {
        since: UnixMillis,
        /// When the next probe may start.
        next_probe: UnixMillis,
        /// The interval after the next failed probe.
        interval: Duration,
        /// A probe is in flight.
        probing: bool,
        /// Why it is down, for messages that give up meanwhile.
        reason: String,
        /// When the latest failed try started: a message whose retry window had ended by
        /// then has had its last try.
        tried_at: UnixMillis,
        /// Tries before this time would be answered with a failure already seen, without
        /// reaching the channel (see [`Health::quiet_until`]): no probe before then.
        quiet_until: UnixMillis,
    },
}

/// What the operators' page shows of a channel's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub up: bool,
    /// When it went down or came back last; `None`: up since the process started.
    pub since: Option<UnixMillis>,
    /// Why it is down, or why it was down the last time (kept after it came back).
    pub last_error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Health {
    state: State,
    /// When it last came back, while up (`None`: up since it was made).
    came_back: Option<UnixMillis>,
    /// Why it was down the last time, once it is up again.
    last_reason: Option<String>,
    /// First probe interval; doubles up to `probe_max`.
    probe_min: Duration,
    probe_max: Duration,
}

/// The shortest probe interval (and wait while a probe is out).
const MIN_INTERVAL: Duration = Duration::from_millis(1);

impl Health {
    pub fn new(probe_min: Duration, probe_max: Duration) -> Self {
        let probe_max = probe_max.max(MIN_INTERVAL);
        Self {
            state: State::Up,
            came_back: None,
            last_reason: None,
            probe_min: probe_min.clamp(MIN_INTERVAL, probe_max),
            probe_max,
        }
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Up or down, since when, and the latest reason it was down.
    pub fn snapshot(&self) -> Snapshot {
        match &self.state {
            State::Up => Snapshot {
                up: true,
                since: self.came_back,
                last_error: self.last_reason.clone(),
            },
            State::Down { since, reason, .. } => Snapshot {
                up: false,
                since: Some(*since),
                last_error: Some(reason.clone()),
            },
        }
    }

    /// Since when and why the channel is down.
    pub fn down_since(&self) -> Option<(UnixMillis, &str)> {
        match &self.state {
            State::Up => None,
            State::Down { since, reason, .. } => Some((*since, reason)),
        }
    }

    /// When the latest failed try on the channel started, while it is down.
    pub fn failed_try_at(&self) -> Option<UnixMillis> {
        match &self.state {
            State::Up => None,
            State::Down { tried_at, .. } => Some(*tried_at),
        }
    }

    /// A message waiting for the channel has its retry window end at `deadline_at`: the
    /// next probe starts no later than that (nor sooner than [`DEADLINE_PROBE_GAP`] after
    /// the latest failed try started), so that the message moves on only if a try at the
    /// end of its window fails. Answers when the next probe may start; `None` while the
    /// channel is up or a probe is out (its outcome decides; ask again after it).
    pub fn probe_by(&mut self, deadline_at: UnixMillis) -> Option<UnixMillis> {
        match &mut self.state {
            State::Up | State::Down { probing: true, .. } => None,
            State::Down {
                next_probe,
                tried_at,
                quiet_until,
                ..
            } => {
                let earliest = (*tried_at + DEADLINE_PROBE_GAP).max(*quiet_until);
                *next_probe = (*next_probe).min(deadline_at.max(earliest));
                Some(*next_probe)
            }
        }
    }

    /// Until `until`, every try would be answered at once with a failure already seen,
    /// without reaching the channel (WeCom's `gettoken` cooldown): such an answer is not a
    /// try, so no probe starts before then.
    pub fn quiet_until(&mut self, until: UnixMillis) {
        if let State::Down {
            next_probe,
            probing,
            quiet_until,
            ..
        } = &mut self.state
        {
            *quiet_until = (*quiet_until).max(until);
            if !*probing {
                *next_probe = (*next_probe).max(until);
            }
        }
    }

    /// The current probe interval while down.
    pub fn probe_interval(&self) -> Option<Duration> {
        match &self.state {
            State::Up => None,
            State::Down { interval, .. } => Some(*interval),
        }
    }

    /// Asks to send now. `Probe` marks the probe as in flight: its outcome must be reported
    /// (or [`Health::probe_abandoned`] called).
    pub fn gate(&mut self, now: UnixMillis) -> Gate {
        match &mut self.state {
            State::Up => Gate::Open,
            State::Down {
                next_probe,
                probing,
                interval,
                ..
            } => {
                if *probing {
                    // While a probe is out its outcome decides; look again after the
                    // current interval at the latest (the scheduler is woken by the
                    // outcome, and a channel that comes back brings its lanes forward).
                    Gate::Closed(now + (*interval).max(MIN_INTERVAL))
                } else if now < *next_probe {
                    Gate::Closed(*next_probe)
                } else {
                    *probing = true;
                    Gate::Probe
                }
            }
        }
    }

    /// How many senders the scheduler may start now: all (`None`), one probe, or none
    /// before the returned time ([`UnixMillis::MAX`] while a probe is out: its outcome
    /// decides).
    pub fn admits(&self, now: UnixMillis) -> Result<Option<usize>, UnixMillis> {
        match &self.state {
            State::Up => Ok(None),
            State::Down { probing: true, .. } => Err(UnixMillis::MAX),
            State::Down { next_probe, .. } if now < *next_probe => Err(*next_probe),
            State::Down { .. } => Ok(Some(1)),
        }
    }

    /// The channel answered (delivered, or refused for a reason of the message's own).
    pub fn reachable(&mut self, now: UnixMillis) -> Option<Change> {
        match std::mem::replace(&mut self.state, State::Up) {
            State::Up => None,
            State::Down { since, reason, .. } => {
                self.came_back = Some(now);
                self.last_reason = Some(reason);
                Some(Change::CameBack {
                    down_for: now.since(since),
                })
            }
        }
    }

    /// The channel could not be reached, by a try that started at `started_at`.
    pub fn unreachable(
        &mut self,
        now: UnixMillis,
        started_at: UnixMillis,
        reason: &str,
    ) -> Option<Change> {
        match &mut self.state {
            State::Up => {
                self.state = State::Down {
                    since: now,
                    next_probe: now + self.probe_min,
                    interval: self.probe_min.saturating_mul(2).min(self.probe_max),
                    probing: false,
                    reason: reason.to_owned(),
                    tried_at: started_at,
                    quiet_until: UnixMillis::from_millis(0),
                };
                Some(Change::WentDown)
            }
            State::Down {
                next_probe,
                interval,
                probing,
                reason: why,
                tried_at,
                quiet_until,
                ..
            } => {
                // A failed probe (or a straggler that was in flight when it went down).
                if *probing {
                    *probing = false;
                    *next_probe = (now + *interval).max(*quiet_until);
                    *interval = interval.saturating_mul(2).min(self.probe_max);
                }
                *tried_at = (*tried_at).max(started_at);
                reason.clone_into(why);
                None
            }
        }
    }

    /// A probe ended without an answer either way (cancelled): let the next one go.
    pub fn probe_abandoned(&mut self) {
        if let State::Down { probing, .. } = &mut self.state {
            *probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The time `ms` milliseconds after the epoch (the tests' clock starts there).
    fn t(ms: i64) -> UnixMillis {
        UnixMillis::from_millis(ms)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn health() -> Health {
        Health::new(Duration::from_secs(1), Duration::from_secs(30))
    }

    #[test]
    fn up_lets_everyone_through() {
        let mut h = health();
        assert_eq!(h.gate(t(0)), Gate::Open);
        assert_eq!(h.admits(t(0)), Ok(None));
    }

    #[test]
    fn down_lets_one_probe_through_at_growing_intervals() {
        let mut h = health();
        assert_eq!(h.unreachable(t(0), t(0), "refused"), Some(Change::WentDown));
        assert_eq!(h.gate(t(10)), Gate::Closed(t(1_000)));
        assert_eq!(h.admits(t(10)), Err(t(1_000)));
        // The first probe at 1 s; only one at a time.
        assert_eq!(h.gate(t(1_000)), Gate::Probe);
        // While it is out, lanes look again after the current interval (2 s) at the latest.
        assert_eq!(h.gate(t(1_001)), Gate::Closed(t(3_001)));
        assert_eq!(
            h.admits(t(1_001)),
            Err(UnixMillis::MAX),
            "the probe's outcome decides"
        );
        // It fails: next in 2 s, then 4, 8, 16, 30, 30.
        assert_eq!(h.unreachable(t(1_100), t(1_000), "refused"), None);
        let mut at = t(1_100);
        for wait in [2_000, 4_000, 8_000, 16_000, 30_000, 30_000] {
            assert_eq!(h.gate(at + ms(wait - 1)), Gate::Closed(at + ms(wait)));
            assert_eq!(h.gate(at + ms(wait)), Gate::Probe);
            at = at + ms(wait);
            h.unreachable(at, at, "refused");
        }
        // Stragglers failing while no probe is out do not push the next probe out.
        let before = h.gate(at);
        h.unreachable(at + ms(5), at - ms(100), "refused");
        assert_eq!(h.gate(at), before);
    }

    #[test]
    fn an_answer_brings_it_back() {
        let mut h = health();
        h.unreachable(t(3_000), t(2_000), "timed out");
        assert_eq!(h.down_since(), Some((t(3_000), "timed out")));
        assert_eq!(h.gate(t(4_000)), Gate::Probe);
        assert_eq!(
            h.reachable(t(7_000)),
            Some(Change::CameBack {
                down_for: Duration::from_secs(4)
            })
        );
        assert!(h.is_up());
        assert_eq!(h.gate(t(7_001)), Gate::Open);
        assert_eq!(h.reachable(t(8_000)), None);
    }

    #[test]
    fn the_snapshot_says_since_when_and_keeps_the_last_reason() {
        let mut h = health();
        let up = Snapshot {
            up: true,
            since: None,
            last_error: None,
        };
        assert_eq!(h.snapshot(), up);
        h.unreachable(t(3_000), t(2_000), "connection refused");
        h.unreachable(t(3_500), t(3_400), "timed out");
        assert_eq!(
            h.snapshot(),
            Snapshot {
                up: false,
                since: Some(t(3_000)),
                last_error: Some("timed out".into()),
            }
        );
        h.reachable(t(9_000));
        assert_eq!(
            h.snapshot(),
            Snapshot {
                up: true,
                since: Some(t(9_000)),
                last_error: Some("timed out".into()),
            }
        );
        // Answers while up change nothing.
        h.reachable(t(9_500));
        assert_eq!(h.snapshot().since, Some(t(9_000)));
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let mut h = health();
        h.unreachable(t(0), t(0), "x");
        assert_eq!(h.gate(t(1_000)), Gate::Probe);
        h.probe_abandoned();
        assert_eq!(h.gate(t(1_000)), Gate::Probe);
    }

    #[test]
    fn the_latest_failed_try_is_remembered_by_when_it_started() {
        let mut h = health();
        assert_eq!(h.failed_try_at(), None);
        h.unreachable(t(500), t(200), "refused");
        assert_eq!(h.failed_try_at(), Some(t(200)));
        // A straggler that started earlier but failed later does not move it back.
        h.unreachable(t(700), t(100), "refused");
        assert_eq!(h.failed_try_at(), Some(t(200)));
        assert_eq!(h.gate(t(1_500)), Gate::Probe);
        h.unreachable(t(1_600), t(1_500), "refused");
        assert_eq!(h.failed_try_at(), Some(t(1_500)));
        h.reachable(t(5_000));
        assert_eq!(h.failed_try_at(), None);
    }

    #[test]
    fn a_waiting_window_brings_the_next_probe_forward_to_its_end() {
        let mut h = Health::new(Duration::from_secs(1), Duration::from_secs(30));
        h.unreachable(t(0), t(0), "refused");
        // Probes at 1 s, then 2 s later, 4 s, …: push them out to 30 s apart.
        let mut at = t(0);
        for _ in 0..6 {
            let next = match h.gate(at) {
                Gate::Closed(next) => next,
                other => panic!("{other:?}"),
            };
            assert_eq!(h.gate(next), Gate::Probe);
            h.unreachable(next + ms(10), next, "refused");
            at = next + ms(10);
        }
        assert_eq!(h.probe_interval(), Some(Duration::from_secs(30)));
        let tried = h.failed_try_at().unwrap();
        assert_eq!(h.gate(at), Gate::Closed(at + ms(30_000)));
        // A message's window ends 4 s from now: the probe comes then, not 30 s later.
        let deadline = at + ms(4_000);
        assert_eq!(h.probe_by(deadline), Some(deadline));
        assert_eq!(h.gate(deadline - ms(1)), Gate::Closed(deadline));
        assert_eq!(h.admits(deadline - ms(1)), Err(deadline));
        // A later window does not push it back out.
        assert_eq!(h.probe_by(deadline + ms(9_000)), Some(deadline));
        // Nor past the regular schedule.
        let mut fresh = health();
        fresh.unreachable(t(0), t(0), "refused");
        assert_eq!(fresh.probe_by(t(60_000)), Some(t(1_000)));
        // The probe goes at the window's end, and only one.
        assert_eq!(h.gate(deadline), Gate::Probe);
        assert_eq!(h.probe_by(deadline), None, "while the probe is out");
        assert!(tried < deadline);
    }

    #[test]
    fn probes_for_windows_come_at_least_a_gap_after_the_latest_failed_try() {
        let mut h = Health::new(Duration::from_secs(5), Duration::from_secs(30));
        h.unreachable(t(100), t(0), "refused");
        let gap = t(0) + DEADLINE_PROBE_GAP;
        // A window that ended before the latest failed try plus the gap: probed at the gap.
        assert_eq!(h.probe_by(t(300)), Some(gap));
        assert_eq!(h.gate(gap - ms(1)), Gate::Closed(gap));
        assert_eq!(h.gate(gap), Gate::Probe);
        h.unreachable(gap + ms(5), gap, "refused");
        // The next failed probe pushes the regular schedule out; the next window, already
        // over, is probed a gap after this probe started.
        let two_gaps = gap + DEADLINE_PROBE_GAP;
        assert_eq!(h.probe_by(gap + ms(2)), Some(two_gaps));
        assert_eq!(h.admits(two_gaps), Ok(Some(1)));
    }

    #[test]
    fn no_probe_while_the_channel_would_answer_without_trying() {
        let mut h = Health::new(Duration::from_millis(50), Duration::from_secs(30));
        // A failed gettoken at 1 s; sends are answered with it until 3 s.
        h.unreachable(t(1_000), t(1_000), "gettoken refused");
        h.quiet_until(t(3_000));
        assert_eq!(
            h.gate(t(1_100)),
            Gate::Closed(t(3_000)),
            "the regular probe waits"
        );
        // A window ending at 2 s is probed when a probe reaches the channel again.
        assert_eq!(h.probe_by(t(2_000)), Some(t(3_000)));
        assert_eq!(h.gate(t(3_000)), Gate::Probe);
        // Learnt while a probe is out: the next probe waits for it too.
        h.quiet_until(t(5_000));
        h.unreachable(t(3_010), t(3_000), "refused");
        assert_eq!(h.gate(t(3_010)), Gate::Closed(t(5_000)));
        h.quiet_until(t(5_010));
        assert_eq!(h.gate(t(3_010)), Gate::Closed(t(5_010)));
        // Once it has passed, the regular schedule again.
        assert_eq!(h.gate(t(5_010)), Gate::Probe);
        h.unreachable(t(5_020), t(5_010), "refused");
        assert_eq!(h.gate(t(5_020)), Gate::Closed(t(5_220)));
        // An up channel has nothing to wait for.
        h.reachable(t(6_000));
        h.quiet_until(t(9_000));
        assert_eq!(h.gate(t(6_000)), Gate::Open);
    }

    #[test]
    fn an_up_channel_needs_no_probe() {
        let mut h = health();
        assert_eq!(h.probe_by(t(1_000)), None);
        assert_eq!(h.gate(t(0)), Gate::Open);
    }
}
