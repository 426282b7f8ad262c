//! Channel health: when a channel is unreachable (connection refused, timeouts, HTTP 5xx,
//! WeCom busy), the whole queue stops being sent to it; one probe at a time is let
//! through, at growing intervals, until it answers. Pure state with the clock passed in.

use std::time::Duration;

/// What the health state lets a sender do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The channel is up: go.
    Open,
    /// The channel is down and a probe is due: go, as the one probe.
    Probe,
    /// Down: nothing may be sent before this time (unix ms).
    Closed(i64),
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
        since: i64,
        /// When the next probe may start.
        next_probe: i64,
        /// The interval after the next failed probe.
        interval: i64,
        /// A probe is in flight.
        probing: bool,
        /// Why it is down, for messages that give up meanwhile.
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct Health {
    state: State,
    /// First probe interval; doubles up to `probe_max`.
    probe_min: i64,
    probe_max: i64,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Health {
    pub fn new(probe_min: Duration, probe_max: Duration) -> Self {
        let probe_max = ms(probe_max).max(1);
        Self {
            state: State::Up,
            probe_min: ms(probe_min).clamp(1, probe_max),
            probe_max,
        }
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Since when and why the channel is down.
    pub fn down_since(&self) -> Option<(i64, &str)> {
        match &self.state {
            State::Up => None,
            State::Down { since, reason, .. } => Some((*since, reason)),
        }
    }

    /// The current probe interval while down.
    pub fn probe_interval(&self) -> Option<Duration> {
        match &self.state {
            State::Up => None,
            State::Down { interval, .. } => {
                Some(Duration::from_millis(u64::try_from(*interval).unwrap_or(0)))
            }
        }
    }

    /// Asks to send now. `Probe` marks the probe as in flight: its outcome must be reported
    /// (or [`Health::probe_abandoned`] called).
    pub fn gate(&mut self, now: i64) -> Gate {
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
                    Gate::Closed(now + (*interval).max(1))
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
    /// before the returned time (`i64::MAX` while a probe is out: its outcome decides).
    pub fn admits(&self, now: i64) -> Result<Option<usize>, i64> {
        match &self.state {
            State::Up => Ok(None),
            State::Down { probing: true, .. } => Err(i64::MAX),
            State::Down { next_probe, .. } if now < *next_probe => Err(*next_probe),
            State::Down { .. } => Ok(Some(1)),
        }
    }

    /// The channel answered (delivered, or refused for a reason of the message's own).
    pub fn reachable(&mut self, now: i64) -> Option<Change> {
        match std::mem::replace(&mut self.state, State::Up) {
            State::Up => None,
            State::Down { since, .. } => Some(Change::CameBack {
                down_for: Duration::from_millis(u64::try_from(now - since).unwrap_or(0)),
            }),
        }
    }

    /// The channel could not be reached.
    pub fn unreachable(&mut self, now: i64, reason: &str) -> Option<Change> {
        match &mut self.state {
            State::Up => {
                self.state = State::Down {
                    since: now,
                    next_probe: now + self.probe_min,
                    interval: (self.probe_min * 2).min(self.probe_max),
                    probing: false,
                    reason: reason.to_owned(),
                };
                Some(Change::WentDown)
            }
            State::Down {
                next_probe,
                interval,
                probing,
                reason: why,
                ..
            } => {
                // A failed probe (or a straggler that was in flight when it went down).
                if *probing {
                    *probing = false;
                    *next_probe = now + *interval;
                    *interval = (*interval * 2).min(self.probe_max);
                }
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

    fn health() -> Health {
        Health::new(Duration::from_secs(1), Duration::from_secs(30))
    }

    #[test]
    fn up_lets_everyone_through() {
        let mut h = health();
        assert_eq!(h.gate(0), Gate::Open);
        assert_eq!(h.admits(0), Ok(None));
    }

    #[test]
    fn down_lets_one_probe_through_at_growing_intervals() {
        let mut h = health();
        assert_eq!(h.unreachable(0, "refused"), Some(Change::WentDown));
        assert_eq!(h.gate(10), Gate::Closed(1_000));
        assert_eq!(h.admits(10), Err(1_000));
        // The first probe at 1 s; only one at a time.
        assert_eq!(h.gate(1_000), Gate::Probe);
        // While it is out, lanes look again after the current interval (2 s) at the latest.
        assert_eq!(h.gate(1_001), Gate::Closed(3_001));
        assert_eq!(
            h.admits(1_001),
            Err(i64::MAX),
            "the probe's outcome decides"
        );
        // It fails: next in 2 s, then 4, 8, 16, 30, 30.
        assert_eq!(h.unreachable(1_100, "refused"), None);
        let mut at = 1_100;
        for wait in [2_000, 4_000, 8_000, 16_000, 30_000, 30_000] {
            assert_eq!(h.gate(at + wait - 1), Gate::Closed(at + wait));
            assert_eq!(h.gate(at + wait), Gate::Probe);
            at += wait;
            h.unreachable(at, "refused");
        }
        // Stragglers failing while no probe is out do not push the next probe out.
        let before = h.gate(at);
        h.unreachable(at + 5, "refused");
        assert_eq!(h.gate(at), before);
    }

    #[test]
    fn an_answer_brings_it_back() {
        let mut h = health();
        h.unreachable(3_000, "timed out");
        assert_eq!(h.down_since(), Some((3_000, "timed out")));
        assert_eq!(h.gate(4_000), Gate::Probe);
        assert_eq!(
            h.reachable(7_000),
            Some(Change::CameBack {
                down_for: Duration::from_secs(4)
            })
        );
        assert!(h.is_up());
        assert_eq!(h.gate(7_001), Gate::Open);
        assert_eq!(h.reachable(8_000), None);
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let mut h = health();
        h.unreachable(0, "x");
        assert_eq!(h.gate(1_000), Gate::Probe);
        h.probe_abandoned();
        assert_eq!(h.gate(1_000), Gate::Probe);
    }
}
