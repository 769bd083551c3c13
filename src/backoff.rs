//! The retry delay policy: exponential, capped.
//!
//! One policy for every place the worker waits before trying again — handing a message back to
//! JetStream after a transient failure ([`crate::delivery`]), retrying a Kubernetes API call
//! within a deploy's time budget, reconnecting the shared watch, throttling repairs when
//! following endpoints after Ready. Each caller picks its own base and cap; the shape is the
//! same, so a reader learns it once.

use std::time::Duration;

/// Exponentially growing delays between attempts, from `base` up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub base: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
}

impl Backoff {
    /// Exponential delay for the `delivered`-th attempt (1-based), capped at `max`.
    pub fn delay(&self, delivered: i64) -> Duration {
        let exponent = u32::try_from(delivered.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        self.base.saturating_mul(1 << exponent).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let backoff = Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        };
        assert_eq!(backoff.delay(1), Duration::from_millis(500));
        assert_eq!(backoff.delay(2), Duration::from_secs(1));
        assert_eq!(backoff.delay(4), Duration::from_secs(4));
        assert_eq!(backoff.delay(8), Duration::from_secs(30));
        assert_eq!(backoff.delay(i64::MAX), Duration::from_secs(30));
        assert_eq!(backoff.delay(0), Duration::from_millis(500));
    }
}
