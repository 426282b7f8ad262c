//! What follows a failed try: retry on the same channel, go on to the route's next channel,
//! or end. One rule for the lane worker (its head's own try) and for the overdue pass (the
//! messages waiting for a channel that is down, judged by the channel's latest failed try).
//! Pure, tested without I/O.
//!
//! The rule: a message moves on only after a failed try. A permanent failure moves it on at
//! once. A transient one moves it on only if the try *started* at or after the end of the
//! message's retry window (`deadline_at`); otherwise it is tried again at the backoff time,
//! but never later than the window's end — so the last try is made at the end of the
//! window, never skipped because the next backoff would have landed after it.

use crate::domain::Route;
use crate::time::UnixMillis;

/// The message a try failed for, as far as the next step depends on it.
#[derive(Debug, Clone, Copy)]
pub struct Tried<'a> {
    /// The channels it still has to try, the one that failed first.
    pub route: &'a Route,
    /// An earlier channel delivered it (a `deliver_all` message).
    pub delivered_before: bool,
    /// The end of its retry window on the channel that failed.
    pub deadline_at: UnixMillis,
}

/// How the try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Retrying cannot help.
    Permanent,
    /// Retrying later may help; by backoff the next try would be at `retry_at`.
    Transient { retry_at: UnixMillis },
}

/// The next step of a message whose try failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// Try the same channel again at `at`.
    Retry { at: UnixMillis },
    /// Go on with `route`: the rest of the route, its next channel first.
    Fallback { route: Route },
    /// No channel is left: the message is done — `failed`, unless an earlier channel
    /// delivered it (a `deliver_all` message), when it ends delivered.
    End { failed: bool },
}

impl NextStep {
    /// Whether the message leaves the channel that failed (goes on, or ends).
    pub fn moves_on(&self) -> bool {
        !matches!(self, Self::Retry { .. })
    }
}

/// The next step of `message` after a try that started at `started_at` failed.
pub fn after_failure(message: Tried<'_>, started_at: UnixMillis, failure: Failure) -> NextStep {
    match failure {
        Failure::Transient { retry_at } if started_at < message.deadline_at => NextStep::Retry {
            at: retry_at.min(message.deadline_at),
        },
        Failure::Transient { .. } | Failure::Permanent => match message.route.rest() {
            Some(route) => NextStep::Fallback { route },
            None => NextStep::End {
                failed: !message.delivered_before,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(text: &str) -> Route {
        Route::parse(text).unwrap()
    }

    /// The time `ms` milliseconds after the epoch (the tests' clock starts there).
    fn t(ms: i64) -> UnixMillis {
        UnixMillis::from_millis(ms)
    }

    fn transient(retry_at: i64) -> Failure {
        Failure::Transient {
            retry_at: t(retry_at),
        }
    }

    fn tried(route: &Route, delivered_before: bool) -> Tried<'_> {
        Tried {
            route,
            delivered_before,
            deadline_at: t(10_000),
        }
    }

    #[test]
    fn a_transient_failure_within_the_window_is_retried_at_the_backoff_time() {
        let r = route("wecom,email");
        assert_eq!(
            after_failure(tried(&r, false), t(4_000), transient(6_000)),
            NextStep::Retry { at: t(6_000) }
        );
    }

    #[test]
    fn a_backoff_past_the_windows_end_retries_at_its_end_instead_of_giving_up() {
        let r = route("wecom,email");
        let step = after_failure(tried(&r, false), t(9_000), transient(20_000));
        assert_eq!(step, NextStep::Retry { at: t(10_000) });
        assert!(!step.moves_on());
        // A try that started a moment before the end is not the last one either.
        assert_eq!(
            after_failure(tried(&r, false), t(9_999), transient(12_000)),
            NextStep::Retry { at: t(10_000) }
        );
    }

    #[test]
    fn a_transient_failure_of_a_try_started_at_or_after_the_windows_end_moves_on() {
        let r = route("wecom,email");
        for started_at in [10_000, 10_001, 50_000] {
            let step = after_failure(tried(&r, false), t(started_at), transient(60_000));
            assert_eq!(
                step,
                NextStep::Fallback {
                    route: route("email")
                },
                "started at {started_at}"
            );
            assert!(step.moves_on());
        }
    }

    #[test]
    fn a_permanent_failure_moves_on_at_once_whatever_the_window() {
        let r = route("wecom,email");
        assert_eq!(
            after_failure(tried(&r, false), t(0), Failure::Permanent),
            NextStep::Fallback {
                route: route("email")
            }
        );
        let last = route("email");
        assert_eq!(
            after_failure(tried(&last, false), t(0), Failure::Permanent),
            NextStep::End { failed: true }
        );
    }

    #[test]
    fn with_no_channel_left_it_ends_failed_unless_an_earlier_channel_delivered_it() {
        let last = route("email");
        let late = transient(99_000);
        assert_eq!(
            after_failure(tried(&last, false), t(10_000), late),
            NextStep::End { failed: true }
        );
        assert_eq!(
            after_failure(tried(&last, true), t(10_000), late),
            NextStep::End { failed: false },
            "a deliver_all message WeCom delivered ends delivered"
        );
        assert_eq!(
            after_failure(tried(&last, true), t(10_000), Failure::Permanent),
            NextStep::End { failed: false }
        );
    }
}
