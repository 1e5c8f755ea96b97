//! Admission rate limits (governor): per customer and global. Checked before
//! Redis is touched; a refusal carries an honest wait from the limiter.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

pub struct RateLimits {
    /// `None` when DROPGATE_CUSTOMER_RPS is 0.
    customer: Option<DefaultKeyedRateLimiter<String>>,
    /// `None` when DROPGATE_GLOBAL_RPS is 0 (the default).
    global: Option<DefaultDirectRateLimiter>,
    clock: DefaultClock,
}

impl RateLimits {
    /// Limits of `per_second`, with a burst of the same size.
    pub fn new(customer_rps: u32, global_rps: u32) -> Self {
        let quota = |rps: u32| NonZeroU32::new(rps).map(Quota::per_second);
        Self {
            customer: quota(customer_rps).map(RateLimiter::keyed),
            global: quota(global_rps).map(RateLimiter::direct),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(wait)` when the request must be refused. The customer's limit is
    /// checked first, so one noisy customer does not eat the global budget.
    pub fn check(&self, customer_id: &str) -> Result<(), Duration> {
        if let Some(limiter) = &self.customer {
            // The key is cloned only on this path; governor needs ownership.
            limiter
                .check_key(&customer_id.to_owned())
                .map_err(|not_until| not_until.wait_time_from(self.clock.now()))?;
        }
        if let Some(limiter) = &self.global {
            limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(self.clock.now()))?;
        }
        Ok(())
    }

    /// Forgets customers whose cells are full again, bounding memory to the
    /// customers active in the last second or so.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.customer {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Whole seconds to wait, rounded up, at least 1 (Retry-After).
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    ms.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customers_are_limited_separately_and_waits_are_honest() {
        let limits = RateLimits::new(3, 0);
        for _ in 0..3 {
            assert!(limits.check("a").is_ok());
        }
        let wait = limits.check("a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(334),
            "{wait:?}"
        );
        assert_eq!(retry_after_seconds(wait), 1);
        assert!(limits.check("b").is_ok());
    }

    #[test]
    fn the_global_limit_caps_everyone() {
        let limits = RateLimits::new(0, 2);
        assert!(limits.check("a").is_ok());
        assert!(limits.check("b").is_ok());
        assert!(limits.check("c").is_err());
    }
}
