//! Per-member rate limit on creating messages (`server.send_rate`).
//!
//! Every route that creates messages gets its member (or group) through
//! [`authorized_sender`], which authenticates the token and then takes one unit from the
//! sender's budget, so a new send-like route cannot forget the limit. The budget is keyed
//! by the member's userid (or the group's id), not the token: rotating the token does not
//! reset it.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::{AppState, auth};
use crate::config::SendRate;
use crate::error::ApiError;
use crate::metrics::{Endpoint, TokenRoute};

/// How often members whose budget is full again are forgotten, so memory follows the
/// number of recently active members, not all members ever seen.
const EVICT_EVERY: Duration = Duration::from_secs(60);

/// A GCRA limiter per member: a burst of `count`, refilled evenly at `count` per `per`.
pub struct SendLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    rate: SendRate,
}

impl SendLimiter {
    /// Builds the limiter and, inside a Tokio runtime, a task that evicts idle members
    /// periodically; the task ends once the limiter is dropped.
    pub fn new(rate: SendRate) -> Arc<Self> {
        let count = NonZeroU32::new(rate.count).unwrap_or(NonZeroU32::MIN);
        let interval = (rate.per / count.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(count))
            .allow_burst(count);
        let limiter = Arc::new(Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            rate,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // A panic (a bug) costs one pass: memory is bounded again at the next.
            runtime.spawn(crate::supervise::every(
                "the rate-limiter evictor",
                EVICT_EVERY,
                Arc::downgrade(&limiter),
                SendLimiter::evict,
            ));
        }
        limiter
    }

    /// Takes one message from `userid`'s budget, or says when the next one fits.
    pub fn check(&self, userid: &str) -> Result<(), ApiError> {
        self.check_key(userid.to_owned(), "member")
    }

    /// Takes one message from a group token's budget (its own, apart from every member's:
    /// keyed on the group, so rotating its token does not reset it either).
    pub fn check_group(&self, group_id: &str) -> Result<(), ApiError> {
        // `:` is never in a WeCom userid, so no member's key can be a group's.
        self.check_key(format!("group:{group_id}"), "group")
    }

    fn check_key(&self, key: String, whose: &str) -> Result<(), ApiError> {
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::TooManyRequests {
                message: format!(
                    "too many messages: at most {} per {} for each {whose}; retry in {} s",
                    self.rate.count,
                    humantime::format_duration(self.rate.per),
                    secs.max(1)
                ),
                retry_after: wait,
            }
        })
    }

    /// Members currently tracked (tests and diagnostics).
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }

    fn evict(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The member or group owning a send token (see `auth::sender`), once authenticated and
/// within its send budget (a refused token counts for `endpoint`): the one gate for every
/// route that creates messages. A group token has a budget of its own
/// (`server.send_rate`, keyed on the group).
pub async fn authorized_sender(
    state: &AppState,
    token: Option<String>,
    endpoint: Endpoint,
) -> Result<auth::Sender, ApiError> {
    let sender = auth::sender(state, token, TokenRoute::Send(endpoint)).await?;
    match &sender {
        auth::Sender::Member(userid, ..) => state.send_limiter.check(userid.as_str())?,
        auth::Sender::Group(group) => state.send_limiter.check_group(&group.id)?,
    }
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn limiter(count: u32, per: Duration) -> Arc<SendLimiter> {
        SendLimiter::new(SendRate { count, per })
    }

    #[test]
    fn burst_then_refused_with_a_wait() {
        let l = limiter(3, Duration::from_secs(60));
        for _ in 0..3 {
            l.check("alice").unwrap();
        }
        let err = l.check("alice").unwrap_err();
        assert_eq!(err.status(), StatusCode::TOO_MANY_REQUESTS);
        let ApiError::TooManyRequests { retry_after, .. } = err else {
            panic!("expected 429");
        };
        // One message refills every 20 s.
        assert!(retry_after > Duration::from_secs(15), "{retry_after:?}");
        assert!(retry_after <= Duration::from_secs(20), "{retry_after:?}");
        // Another member has their own budget.
        l.check("bob").unwrap();
    }

    #[test]
    fn budget_refills() {
        let l = limiter(2, Duration::from_millis(100));
        l.check("a").unwrap();
        l.check("a").unwrap();
        assert!(l.check("a").is_err());
        std::thread::sleep(Duration::from_millis(120));
        l.check("a").unwrap();
    }

    #[test]
    fn idle_members_are_forgotten() {
        let l = limiter(1, Duration::from_millis(20));
        l.check("a").unwrap();
        l.check("b").unwrap();
        assert_eq!(l.tracked(), 2);
        std::thread::sleep(Duration::from_millis(40));
        l.evict();
        assert_eq!(l.tracked(), 0);
    }
}
