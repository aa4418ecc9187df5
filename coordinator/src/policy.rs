//! Per-group settings: their defaults, their allowed ranges, and how a
//! partial update from an operator is merged and checked.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use proto::v1 as pb;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::engine::AdminError;

pub use proto::vocab::{Failback, Fencing, StandbyMode};

/// A daily time window in UTC, `HH:MM-HH:MM`; it may wrap past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeWindow {
    /// Minutes after midnight UTC.
    start: u16,
    end: u16,
}

impl TimeWindow {
    /// Whether `unix_ms` falls inside the window.
    pub fn contains(&self, unix_ms: u64) -> bool {
        let minute = ((unix_ms / 60_000) % (24 * 60)) as u16;
        if self.start <= self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

impl TimeWindow {
    /// Milliseconds from `unix_ms` until the window next opens (0 inside).
    pub fn until_open(&self, unix_ms: u64) -> u64 {
        if self.contains(unix_ms) {
            return 0;
        }
        let day = 24 * 60 * 60_000;
        let into_day = unix_ms % day;
        let start = u64::from(self.start) * 60_000;
        (start + day - into_day) % day
    }
}

impl FromStr for TimeWindow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Shown cut: the text comes from a client and may be any size.
        let shown = crate::limits::clip(s.to_owned(), 32);
        let bad = || format!("failback-window {shown:?} must look like 02:00-04:00 (UTC)");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let minutes = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (start, end) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!("failback-window {shown:?} is empty"));
        }
        Ok(TimeWindow { start, end })
    }
}

impl fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

impl TryFrom<String> for TimeWindow {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TimeWindow> for String {
    fn from(w: TimeWindow) -> String {
        w.to_string()
    }
}

/// Every setting of a group, defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// How often agents report. An agent uses the smallest among its groups.
    #[serde(with = "proto::duration::serde")]
    pub heartbeat_interval: Duration,
    /// Keep-alive: how long a primary may be silent before it is replaced;
    /// also the length of its lease.
    #[serde(with = "proto::duration::serde")]
    pub failover_timeout: Duration,
    /// A session that sent no Hello within this long is closed.
    #[serde(with = "proto::duration::serde")]
    pub connect_timeout: Duration,
    /// A session that sent its Hello but no first heartbeat within this
    /// long is closed.
    #[serde(with = "proto::duration::serde")]
    pub startup_timeout: Duration,
    /// A primary whose agent said goodbye is waited for this long before
    /// it is replaced (0: at once; its agent steps down when it stops).
    #[serde(with = "proto::duration::serde")]
    pub shutdown_grace: Duration,
    /// A primary whose health checks fail (its service died) is replaced
    /// once they have failed for this long.
    #[serde(with = "proto::duration::serde")]
    pub abnormal_timeout: Duration,
    /// Off: a failed primary only raises an alarm; an operator moves the
    /// role (takeover/restore/promote).
    pub auto_failover: bool,
    pub failback: Failback,
    /// How long a member must have been healthy before the role goes back
    /// to it (failback), and before a member that failed is promoted again.
    #[serde(with = "proto::duration::serde")]
    pub failback_delay: Duration,
    /// Failback happens only inside this daily window (UTC), if set.
    pub failback_window: Option<TimeWindow>,
    /// The role does not move away from a live primary automatically (bad
    /// health, failback) more often than this.
    #[serde(with = "proto::duration::serde")]
    pub min_failover_interval: Duration,
    pub standby_mode: StandbyMode,
    pub fencing: Fencing,
    /// Automatic promotion skips a member whose synced copy is older than
    /// this while a fresher member can serve (zero: off).
    #[serde(with = "proto::duration::serde")]
    pub max_sync_lag: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            heartbeat_interval: Duration::from_millis(500),
            failover_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::ZERO,
            abnormal_timeout: Duration::ZERO,
            auto_failover: true,
            failback: Failback::Never,
            failback_delay: Duration::from_secs(60),
            failback_window: None,
            min_failover_interval: Duration::from_secs(10),
            standby_mode: StandbyMode::Hot,
            fencing: Fencing::Strict,
            max_sync_lag: Duration::ZERO,
        }
    }
}

const MS: fn(u64) -> Duration = Duration::from_millis;
const S: fn(u64) -> Duration = Duration::from_secs;

/// Allowed range of every duration setting: `(name, min, max)`.
pub fn ranges() -> [(&'static str, Duration, Duration); 9] {
    [
        ("heartbeat-interval", MS(10), S(60)),
        ("failover-timeout", MS(50), S(600)),
        ("connect-timeout", S(1), S(3600)),
        ("startup-timeout", S(1), S(3600)),
        ("shutdown-grace", Duration::ZERO, S(3600)),
        ("abnormal-timeout", Duration::ZERO, S(3600)),
        ("failback-delay", S(1), S(86_400)),
        ("min-failover-interval", Duration::ZERO, S(3600)),
        ("max-sync-lag", Duration::ZERO, S(86_400)),
    ]
}

/// A partial update: `None` keeps the current (or default) value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyPatch {
    pub heartbeat_interval: Option<Duration>,
    pub failover_timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub startup_timeout: Option<Duration>,
    pub shutdown_grace: Option<Duration>,
    pub abnormal_timeout: Option<Duration>,
    pub auto_failover: Option<bool>,
    pub failback: Option<Failback>,
    pub failback_delay: Option<Duration>,
    /// `Some(None)` clears the window.
    pub failback_window: Option<Option<TimeWindow>>,
    pub min_failover_interval: Option<Duration>,
    pub standby_mode: Option<StandbyMode>,
    pub fencing: Option<Fencing>,
    pub max_sync_lag: Option<Duration>,
}

impl PolicyPatch {
    pub fn is_empty(&self) -> bool {
        *self == PolicyPatch::default()
    }
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
    #[error("failback-window is set but failback is never: set --failback delayed too")]
    WindowWithoutFailback,
}

fn fmt(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

impl Policy {
    /// Applies `patch` to a copy of `self` and checks the result.
    pub fn merged(&self, patch: &PolicyPatch) -> Result<Policy, PolicyError> {
        let mut p = self.clone();
        macro_rules! apply {
            ($($field:ident),*) => {$(
                if let Some(v) = patch.$field {
                    p.$field = v;
                }
            )*};
        }
        apply!(
            heartbeat_interval,
            failover_timeout,
            connect_timeout,
            startup_timeout,
            shutdown_grace,
            abnormal_timeout,
            auto_failover,
            failback,
            failback_delay,
            failback_window,
            min_failover_interval,
            standby_mode,
            fencing,
            max_sync_lag
        );
        p.validate()?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<(), PolicyError> {
        let values = [
            self.heartbeat_interval,
            self.failover_timeout,
            self.connect_timeout,
            self.startup_timeout,
            self.shutdown_grace,
            self.abnormal_timeout,
            self.failback_delay,
            self.min_failover_interval,
            self.max_sync_lag,
        ];
        for ((setting, min, max), got) in ranges().into_iter().zip(values) {
            if got < min || got > max {
                return Err(PolicyError::OutOfRange {
                    setting,
                    min,
                    max,
                    got,
                });
            }
        }
        if self.failover_timeout < self.heartbeat_interval * 2 {
            return Err(PolicyError::TimeoutTooShortForHeartbeat {
                failover_timeout: self.failover_timeout,
                heartbeat_interval: self.heartbeat_interval,
            });
        }
        if self.failback_window.is_some() && self.failback == Failback::Never {
            return Err(PolicyError::WindowWithoutFailback);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The wire form (`failover.v1.Policy`): requests carry a partial change,
// answers every setting.
// ---------------------------------------------------------------------------

/// Reads a requested policy change, refusing unknown enum values.
pub(crate) fn policy_patch_from_proto(p: Option<pb::Policy>) -> Result<PolicyPatch, AdminError> {
    let Some(p) = p else {
        return Ok(PolicyPatch::default());
    };
    let unknown = |e: proto::vocab::Unknown| AdminError::InvalidArgument(e.to_string());
    let standby_mode = p
        .standby_mode
        .map(StandbyMode::try_from)
        .transpose()
        .map_err(unknown)?;
    let fencing = p
        .fencing
        .map(Fencing::try_from)
        .transpose()
        .map_err(unknown)?;
    let failback = p
        .failback
        .map(Failback::try_from)
        .transpose()
        .map_err(unknown)?;
    let failback_window = match p.failback_window.as_deref() {
        None => None,
        Some("") | Some("none") => Some(None),
        Some(w) => Some(Some(
            w.parse::<TimeWindow>()
                .map_err(AdminError::InvalidArgument)?,
        )),
    };
    let ms = |v: Option<u64>| v.map(Duration::from_millis);
    Ok(PolicyPatch {
        heartbeat_interval: ms(p.heartbeat_interval_ms),
        failover_timeout: ms(p.failover_timeout_ms),
        connect_timeout: ms(p.connect_timeout_ms),
        startup_timeout: ms(p.startup_timeout_ms),
        shutdown_grace: ms(p.shutdown_grace_ms),
        abnormal_timeout: ms(p.abnormal_timeout_ms),
        auto_failover: p.auto_failover,
        failback,
        failback_delay: ms(p.failback_delay_ms),
        failback_window,
        min_failover_interval: ms(p.min_failover_interval_ms),
        standby_mode,
        fencing,
        max_sync_lag: ms(p.max_sync_lag_ms),
    })
}

pub(crate) fn policy_to_proto(p: &Policy) -> pb::Policy {
    pb::Policy {
        heartbeat_interval_ms: Some(millis(p.heartbeat_interval)),
        failover_timeout_ms: Some(millis(p.failover_timeout)),
        standby_mode: Some(pb::StandbyMode::from(p.standby_mode) as i32),
        fencing: Some(pb::Fencing::from(p.fencing) as i32),
        connect_timeout_ms: Some(millis(p.connect_timeout)),
        startup_timeout_ms: Some(millis(p.startup_timeout)),
        shutdown_grace_ms: Some(millis(p.shutdown_grace)),
        abnormal_timeout_ms: Some(millis(p.abnormal_timeout)),
        auto_failover: Some(p.auto_failover),
        failback: Some(pb::Failback::from(p.failback) as i32),
        failback_delay_ms: Some(millis(p.failback_delay)),
        failback_window: p.failback_window.map(|w| w.to_string()),
        min_failover_interval_ms: Some(millis(p.min_failover_interval)),
        max_sync_lag_ms: Some(millis(p.max_sync_lag)),
    }
}

/// A duration in whole milliseconds, as the wire carries it.
fn millis(d: Duration) -> u64 {
    proto::duration::to_ms(d)
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
            PolicyPatch {
                failback_delay: Some(Duration::ZERO),
                ..Default::default()
            },
            PolicyPatch {
                startup_timeout: Some(Duration::from_secs(7200)),
                ..Default::default()
            },
        ] {
            assert!(base.merged(&patch).is_err(), "{patch:?} was accepted");
        }
        let zero_grace = PolicyPatch {
            shutdown_grace: Some(Duration::ZERO),
            abnormal_timeout: Some(Duration::ZERO),
            ..Default::default()
        };
        assert!(base.merged(&zero_grace).is_ok(), "0 means at once");
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
    fn windows_parse_wrap_and_need_failback() {
        let w: TimeWindow = "22:30-02:00".parse().unwrap();
        assert_eq!(w.to_string(), "22:30-02:00");
        let at = |h: u64, m: u64| (h * 60 + m) * 60_000 + 5 * 86_400_000;
        assert!(w.contains(at(23, 0)) && w.contains(at(1, 59)));
        assert!(!w.contains(at(2, 0)) && !w.contains(at(12, 0)));
        assert_eq!(w.until_open(at(22, 0)), 30 * 60_000);
        assert_eq!(w.until_open(at(23, 0)), 0);
        for bad in ["2-4", "25:00-01:00", "02:00-02:00", "02:00"] {
            assert!(bad.parse::<TimeWindow>().is_err(), "{bad}");
        }
        let patch = PolicyPatch {
            failback_window: Some(Some(w)),
            ..Default::default()
        };
        assert_eq!(
            Policy::default().merged(&patch),
            Err(PolicyError::WindowWithoutFailback)
        );
    }

    #[test]
    fn stored_form_reads_back() {
        let p = Policy {
            heartbeat_interval: Duration::from_millis(100),
            failback: Failback::Delayed,
            failback_window: Some("02:00-04:00".parse().unwrap()),
            ..Default::default()
        };
        let json = serde_json::to_string(&p).unwrap();
        assert!(
            json.contains("\"100ms\"") && json.contains("\"02:00-04:00\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), p);
    }
}
