//! Per-group settings: their defaults, their allowed ranges, and how a
//! partial update from an operator is merged and checked.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What a secondary's application does while standing by; passed to hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StandbyMode {
    /// Running and ready to serve.
    #[default]
    Hot,
    /// Started but not serving.
    Warm,
    /// Stopped until promoted.
    Cold,
}

impl StandbyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StandbyMode::Hot => "hot",
            StandbyMode::Warm => "warm",
            StandbyMode::Cold => "cold",
        }
    }
}

/// What a primary does when its lease runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Fencing {
    /// It fences itself: safety first.
    #[default]
    Strict,
    /// It keeps its role while cut off: availability first, at the
    /// documented risk of two primaries.
    None,
}

impl Fencing {
    pub fn as_str(self) -> &'static str {
        match self {
            Fencing::Strict => "strict",
            Fencing::None => "none",
        }
    }
}

/// Every setting of a group, defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// How often agents report. An agent uses the smallest among its groups.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long a primary may be silent before it is replaced; also the
    /// length of its lease.
    #[serde(with = "humantime_serde")]
    pub failover_timeout: Duration,
    pub standby_mode: StandbyMode,
    pub fencing: Fencing,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            heartbeat_interval: Duration::from_millis(500),
            failover_timeout: Duration::from_secs(3),
            standby_mode: StandbyMode::Hot,
            fencing: Fencing::Strict,
        }
    }
}

/// Allowed range of each duration setting.
pub const HEARTBEAT_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(60));
pub const FAILOVER_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_secs(600));

/// A partial update: `None` keeps the current (or default) value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyPatch {
    pub heartbeat_interval: Option<Duration>,
    pub failover_timeout: Option<Duration>,
    pub standby_mode: Option<StandbyMode>,
    pub fencing: Option<Fencing>,
}

#[derive(Debug, Error, PartialEq)]
pub enum PolicyError {
    #[error("{setting} must be between {} and {}, got {}", fmt(*min), fmt(*max), fmt(*got))]
    OutOfRange {
        setting: &'static str,
        min: Duration,
        max: Duration,
        got: Duration,
    },
    #[error(
        "failover-timeout ({}) must be at least twice heartbeat-interval ({}), \
         or one late heartbeat would cost the primary its lease",
        fmt(*failover_timeout), fmt(*heartbeat_interval)
    )]
    TimeoutTooShortForHeartbeat {
        failover_timeout: Duration,
        heartbeat_interval: Duration,
    },
}

fn fmt(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

impl Policy {
    /// Applies `patch` to a copy of `self` and checks the result.
    pub fn merged(&self, patch: &PolicyPatch) -> Result<Policy, PolicyError> {
        let mut p = self.clone();
        if let Some(v) = patch.heartbeat_interval {
            p.heartbeat_interval = v;
        }
        if let Some(v) = patch.failover_timeout {
            p.failover_timeout = v;
        }
        if let Some(v) = patch.standby_mode {
            p.standby_mode = v;
        }
        if let Some(v) = patch.fencing {
            p.fencing = v;
        }
        p.validate()?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<(), PolicyError> {
        check_range(
            "heartbeat-interval",
            self.heartbeat_interval,
            HEARTBEAT_INTERVAL_RANGE,
        )?;
        check_range(
            "failover-timeout",
            self.failover_timeout,
            FAILOVER_TIMEOUT_RANGE,
        )?;
        if self.failover_timeout < self.heartbeat_interval * 2 {
            return Err(PolicyError::TimeoutTooShortForHeartbeat {
                failover_timeout: self.failover_timeout,
                heartbeat_interval: self.heartbeat_interval,
            });
        }
        Ok(())
    }
}

fn check_range(
    setting: &'static str,
    got: Duration,
    (min, max): (Duration, Duration),
) -> Result<(), PolicyError> {
    if got < min || got > max {
        return Err(PolicyError::OutOfRange {
            setting,
            min,
            max,
            got,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Policy::default().validate(), Ok(()));
    }

    #[test]
    fn zero_and_out_of_range_durations_are_refused() {
        let base = Policy::default();
        for patch in [
            PolicyPatch {
                failover_timeout: Some(Duration::ZERO),
                ..Default::default()
            },
            PolicyPatch {
                heartbeat_interval: Some(Duration::ZERO),
                ..Default::default()
            },
            PolicyPatch {
                failover_timeout: Some(Duration::from_secs(3600)),
                ..Default::default()
            },
        ] {
            assert!(base.merged(&patch).is_err(), "{patch:?} was accepted");
        }
    }

    #[test]
    fn timeout_must_cover_two_heartbeats() {
        let patch = PolicyPatch {
            heartbeat_interval: Some(Duration::from_millis(400)),
            failover_timeout: Some(Duration::from_millis(500)),
            ..Default::default()
        };
        let err = Policy::default().merged(&patch).unwrap_err();
        assert!(err.to_string().contains("at least twice"), "{err}");
    }

    #[test]
    fn stored_form_reads_back() {
        let p = Policy {
            heartbeat_interval: Duration::from_millis(100),
            ..Default::default()
        };
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"100ms\""), "{json}");
        assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), p);
    }
}
