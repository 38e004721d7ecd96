//! The closed set of failure reasons (SPEC §5).
//!
//! Executors name the reason at the terminal transition. Classifying an error
//! message's text ([`FailureReason::classify`]) is only a fallback for an
//! executor that gave none.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a run ended unsuccessfully.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    Error,
    ExitCode,
    Timeout,
    HeartbeatLost,
    TurnLimitExceeded,
    BudgetExceeded,
    RateLimited,
    AuthFailed,
    Cancelled,
    SpawnFailed,
    WorkerShutdown,
}

impl FailureReason {
    pub const ALL: [FailureReason; 11] = [
        FailureReason::Error,
        FailureReason::ExitCode,
        FailureReason::Timeout,
        FailureReason::HeartbeatLost,
        FailureReason::TurnLimitExceeded,
        FailureReason::BudgetExceeded,
        FailureReason::RateLimited,
        FailureReason::AuthFailed,
        FailureReason::Cancelled,
        FailureReason::SpawnFailed,
        FailureReason::WorkerShutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Error => "error",
            FailureReason::ExitCode => "exit_code",
            FailureReason::Timeout => "timeout",
            FailureReason::HeartbeatLost => "heartbeat_lost",
            FailureReason::TurnLimitExceeded => "turn_limit_exceeded",
            FailureReason::BudgetExceeded => "budget_exceeded",
            FailureReason::RateLimited => "rate_limited",
            FailureReason::AuthFailed => "auth_failed",
            FailureReason::Cancelled => "cancelled",
            FailureReason::SpawnFailed => "spawn_failed",
            FailureReason::WorkerShutdown => "worker_shutdown",
        }
    }

    /// Whether a failure for this reason is retried when a job does not say
    /// otherwise. Budget and auth failures repeat identically on retry, and a
    /// cancel is an operator's decision, so those are final.
    pub fn retried_by_default(self) -> bool {
        !matches!(
            self,
            FailureReason::TurnLimitExceeded
                | FailureReason::BudgetExceeded
                | FailureReason::AuthFailed
                | FailureReason::Cancelled
        )
    }

    /// Fallback classification of an error text, for executors that report a
    /// message but no reason. Conservative: anything unrecognised is `error`.
    pub fn classify(message: &str) -> FailureReason {
        let m = message.to_ascii_lowercase();
        let has = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
        if has(&[
            "rate limit",
            "rate-limit",
            "ratelimit",
            "too many requests",
            "429",
        ]) {
            FailureReason::RateLimited
        } else if has(&[
            "unauthorized",
            "forbidden",
            "401",
            "403",
            "invalid api key",
            "authentication",
        ]) {
            FailureReason::AuthFailed
        } else if has(&["turn limit", "max turns", "max_turns"]) {
            FailureReason::TurnLimitExceeded
        } else if has(&["budget"]) {
            FailureReason::BudgetExceeded
        } else if has(&["timed out", "timeout", "deadline exceeded"]) {
            FailureReason::Timeout
        } else {
            FailureReason::Error
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FailureReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FailureReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = FailureReason::ALL.iter().map(|r| r.as_str()).collect();
                format!(
                    "unknown failure reason {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in FailureReason::ALL {
            assert_eq!(r.as_str().parse::<FailureReason>().unwrap(), r);
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        assert!("exploded".parse::<FailureReason>().is_err());
    }

    #[test]
    fn default_retry_set_matches_spec() {
        let retried: Vec<_> = FailureReason::ALL
            .into_iter()
            .filter(|r| r.retried_by_default())
            .collect();
        assert_eq!(
            retried,
            [
                FailureReason::Error,
                FailureReason::ExitCode,
                FailureReason::Timeout,
                FailureReason::HeartbeatLost,
                FailureReason::RateLimited,
                FailureReason::SpawnFailed,
                FailureReason::WorkerShutdown
            ]
        );
    }

    #[test]
    fn classification_is_a_fallback() {
        assert_eq!(
            FailureReason::classify("HTTP 429 Too Many Requests"),
            FailureReason::RateLimited
        );
        assert_eq!(
            FailureReason::classify("401 Unauthorized"),
            FailureReason::AuthFailed
        );
        assert_eq!(
            FailureReason::classify("connection timed out"),
            FailureReason::Timeout
        );
        assert_eq!(FailureReason::classify("segfault"), FailureReason::Error);
    }
}
