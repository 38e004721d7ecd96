//! Retry backoff: exponential with jitter (SPEC §5).
//!
//! The delay after the `n`-th failed attempt is `base · factorⁿ⁻¹`, capped at
//! `max`, then shortened by a random fraction up to `jitter` so that jobs that
//! failed together do not retry together.

use std::time::Duration;

use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::time::human_duration;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(with = "human_duration", default = "RetryPolicy::default_base")]
    pub base: Duration,
    #[serde(default = "RetryPolicy::default_factor")]
    pub factor: f64,
    #[serde(with = "human_duration", default = "RetryPolicy::default_max")]
    pub max: Duration,
    /// Fraction of the delay that may be taken off at random, in `[0, 1]`.
    #[serde(default = "RetryPolicy::default_jitter")]
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Self::default_base(),
            factor: Self::default_factor(),
            max: Self::default_max(),
            jitter: Self::default_jitter(),
        }
    }
}

impl RetryPolicy {
    fn default_base() -> Duration {
        Duration::from_secs(15)
    }
    fn default_factor() -> f64 {
        2.0
    }
    fn default_max() -> Duration {
        Duration::from_secs(3600)
    }
    fn default_jitter() -> f64 {
        0.2
    }

    /// Checks the policy; the error names the offending key.
    pub fn validate(&self) -> Result<(), crate::InputError> {
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(crate::InputError::new(
                "retry.factor",
                "must be a number >= 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(crate::InputError::new(
                "retry.jitter",
                "must be between 0 and 1",
            ));
        }
        if self.max < self.base {
            return Err(crate::InputError::new(
                "retry.max",
                "must be at least retry.base",
            ));
        }
        Ok(())
    }

    /// The delay before the next attempt, after `attempt` attempts (≥ 1).
    pub fn delay_after(&self, attempt: i32) -> Duration {
        let exponent = attempt.saturating_sub(1).clamp(0, 62);
        let raw = self.base.as_secs_f64() * self.factor.powi(exponent);
        let capped = raw.min(self.max.as_secs_f64());
        let cut = if self.jitter > 0.0 {
            rand::rng().random_range(0.0..=self.jitter)
        } else {
            0.0
        };
        Duration::from_secs_f64((capped * (1.0 - cut)).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_caps() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        assert_eq!(p.delay_after(1), Duration::from_secs(15));
        assert_eq!(p.delay_after(2), Duration::from_secs(30));
        assert_eq!(p.delay_after(3), Duration::from_secs(60));
        assert_eq!(p.delay_after(30), Duration::from_secs(3600));
        assert_eq!(p.delay_after(i32::MAX), Duration::from_secs(3600));
    }

    #[test]
    fn jitter_only_shortens_within_bounds() {
        let p = RetryPolicy::default();
        for _ in 0..200 {
            let d = p.delay_after(2).as_secs_f64();
            assert!((30.0 * 0.8 - 1e-9..=30.0 + 1e-9).contains(&d), "{d}");
        }
    }

    #[test]
    fn rejects_nonsense() {
        assert_eq!(
            RetryPolicy {
                factor: 0.5,
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .field,
            "retry.factor"
        );
        assert_eq!(
            RetryPolicy {
                jitter: 2.0,
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .field,
            "retry.jitter"
        );
    }
}
