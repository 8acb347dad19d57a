//! Login throttling: a rate limit per client address (governor's keyed GCRA limiter) and a
//! lockout per account after repeated failures.
//!
//! Both answer with how long to wait, which becomes `429` + `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Accounts whose failure counters are kept before old ones are pruned.
const MAX_TRACKED_ACCOUNTS: usize = 100_000;

/// The login throttle of one node.
pub struct LoginLimiter {
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    lockout_after: u32,
    lockout_for: Duration,
    failures: HashMap<String, Failures>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

impl LoginLimiter {
    /// `per_minute` attempts per address (bursting up to that many), and a lock of
    /// `lockout_for` after `lockout_after` failures in a row on one account.
    pub fn new(per_minute: u32, lockout_after: u32, lockout_for: Duration) -> Self {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        LoginLimiter {
            per_address: RateLimiter::keyed(Quota::per_minute(per_minute)),
            clock: DefaultClock::default(),
            lockout_after: lockout_after.max(1),
            lockout_for,
            failures: HashMap::new(),
        }
    }

    /// Takes one attempt from `client`'s budget and checks `account`'s lock. `Err` holds how
    /// long to wait.
    pub fn check(&mut self, client: IpAddr, account: &str) -> Result<(), Duration> {
        if let Some(until) = self.failures.get(account).and_then(|f| f.locked_until) {
            let now = Instant::now();
            if until > now {
                return Err(until - now);
            }
        }
        self.per_address
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Records a failed password for `account`; locks it after too many in a row.
    pub fn failed(&mut self, account: &str) {
        let now = Instant::now();
        if self.failures.len() >= MAX_TRACKED_ACCOUNTS {
            let horizon = self.lockout_for;
            self.failures.retain(|_, f| now.duration_since(f.last) < horizon);
            self.per_address.retain_recent();
        }
        let entry = self.failures.entry(account.to_string()).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        // An expired lock starts a fresh count.
        if entry.locked_until.is_some_and(|until| until <= now) {
            *entry = Failures {
                count: 0,
                last: now,
                locked_until: None,
            };
        }
        entry.count += 1;
        entry.last = now;
        if entry.count >= self.lockout_after {
            entry.locked_until = Some(now + self.lockout_for);
        }
    }

    /// A successful login clears the account's failures.
    pub fn succeeded(&mut self, account: &str) {
        self.failures.remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const AWAY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn each_address_has_its_own_budget() {
        let mut limiter = LoginLimiter::new(3, 100, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(limiter.check(HOME, "a@x").is_ok());
        }
        let wait = limiter.check(HOME, "a@x").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(20), "{wait:?}");
        assert!(limiter.check(AWAY, "a@x").is_ok());
    }

    #[test]
    fn an_account_locks_after_repeated_failures_and_success_resets() {
        let mut limiter = LoginLimiter::new(1000, 3, Duration::from_secs(300));
        limiter.failed("a@x");
        limiter.failed("a@x");
        limiter.succeeded("a@x");
        limiter.failed("a@x");
        limiter.failed("a@x");
        assert!(limiter.check(HOME, "a@x").is_ok(), "the success reset the count");
        limiter.failed("a@x");
        let wait = limiter.check(AWAY, "a@x").unwrap_err();
        assert!(wait > Duration::from_secs(290), "{wait:?}");
        assert!(limiter.check(HOME, "b@x").is_ok(), "other accounts are not locked");
    }
}
