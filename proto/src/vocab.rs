//! The product's vocabulary, defined once for the coordinator, the agent,
//! failoverctl, the tests and the benches: roles, standby modes, fencing,
//! failback, phases, hook outcomes and role assignments — with their names
//! (as configuration, JSON and hooks spell them) and their wire forms.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::v1 as pb;

/// A wire value or a name that is not part of the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{kind} must be one of {allowed}, got {got}")]
pub struct Unknown {
    pub kind: &'static str,
    pub allowed: &'static str,
    pub got: String,
}

/// One of the vocabulary's closed sets of names.
pub trait Named: Copy + Send + Sync + FromStr<Err = Unknown> + 'static {
    /// Every value, in declaration order.
    fn all() -> &'static [Self];
    fn name(self) -> &'static str;
}

/// Declares a closed set of names with its wire enum: `as_str`, `Display`,
/// `FromStr` (the names), `From<Self>` for the wire enum and
/// `TryFrom<i32>` from the wire's integer.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident: $kind:literal, $wire:ty $(, derive($($extra:ident),+))? {
        $($(#[$vmeta:meta])* $variant:ident = $text:literal => $wire_variant:ident,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize $($(, $extra)+)?)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            fn allowed() -> &'static str {
                concat!($($text, ", "),+)
            }
        }

        impl Named for $name {
            fn all() -> &'static [Self] {
                $name::ALL
            }

            fn name(self) -> &'static str {
                self.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = Unknown;

            fn from_str(s: &str) -> Result<Self, Unknown> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(Unknown {
                        kind: $kind,
                        allowed: $name::allowed().trim_end_matches(", "),
                        got: format!("{s:?}"),
                    }),
                }
            }
        }

        impl From<$name> for $wire {
            fn from(value: $name) -> $wire {
                match value {
                    $($name::$variant => <$wire>::$wire_variant,)+
                }
            }
        }

        impl TryFrom<i32> for $name {
            type Error = Unknown;

            fn try_from(value: i32) -> Result<Self, Unknown> {
                match <$wire>::try_from(value) {
                    $(Ok(<$wire>::$wire_variant) => Ok($name::$variant),)+
                    _ => Err(Unknown {
                        kind: $kind,
                        allowed: $name::allowed().trim_end_matches(", "),
                        got: value.to_string(),
                    }),
                }
            }
        }
    };
}

vocabulary! {
    /// A node's role in one group.
    Role: "role", pb::Role {
        /// Acting for the group while its lease is valid.
        Primary = "primary" => Primary,
        /// Standing by.
        Secondary = "secondary" => Secondary,
        /// Agent-side: was primary, its lease ran out; waits for a new
        /// assignment.
        Fenced = "fenced" => Fenced,
    }
}

vocabulary! {
    /// What a secondary's application does while standing by; passed to
    /// hooks.
    StandbyMode: "standby mode", pb::StandbyMode, derive(Default) {
        /// Running and ready to serve.
        #[default]
        Hot = "hot" => Hot,
        /// Started but not serving.
        Warm = "warm" => Warm,
        /// Stopped until promoted.
        Cold = "cold" => Cold,
    }
}

vocabulary! {
    /// What a primary does when its lease runs out.
    Fencing: "fencing", pb::Fencing, derive(Default) {
        /// It fences itself: safety first.
        #[default]
        Strict = "strict" => Strict,
        /// It keeps its role while cut off: availability first, at the
        /// documented risk of two primaries.
        None = "none" => None,
    }
}

vocabulary! {
    /// Whether the role goes back to a higher-priority member by itself.
    Failback: "failback", pb::Failback, derive(Default) {
        /// The role stays where it is until an operator moves it.
        #[default]
        Never = "never" => Never,
        /// Once a higher-priority member has been healthy for
        /// `failback_delay` (and, if set, inside `failback_window`).
        Delayed = "delayed" => Delayed,
    }
}

vocabulary! {
    /// What a group is doing, derived from its state (never stored).
    Phase: "phase", pb::Phase {
        /// A primary holds the role and is connected.
        Active = "active" => Active,
        /// The primary is silent, stepping down, or its lease is being
        /// waited out.
        FailingOver = "failing_over" => FailingOver,
        /// Nobody holds the role and nobody can serve: an alarm.
        NoPrimary = "no_primary" => NoPrimary,
        /// Every member is drained.
        Maintenance = "maintenance" => Maintenance,
    }
}

vocabulary! {
    /// How a hook run ended.
    HookOutcome: "hook outcome", pb::HookOutcome {
        /// The hook exited with status 0.
        Succeeded = "succeeded" => Succeeded,
        /// A non-zero status, or it could not be started.
        Failed = "failed" => Failed,
        /// It ran past its timeout and was killed.
        TimedOut = "timed_out" => TimedOut,
        /// A newer role change for the group killed it.
        Superseded = "superseded" => Superseded,
        /// No hook is configured: the change took effect at once.
        NotConfigured = "not_configured" => NotConfigured,
    }
}

vocabulary! {
    /// How a member's copy of a synced path stands (FAILOVER_SYNC_STATE
    /// passes the last three to hooks).
    SyncState: "sync state", pb::SyncState {
        /// The group's primary: it publishes its copy.
        Source = "source" => Source,
        /// Its copy was the primary's latest snapshot when last compared.
        Fresh = "fresh" => Fresh,
        /// It holds a copy that is not, or not known to be, the latest.
        Stale = "stale" => Stale,
        /// It holds no copy.
        None = "none" => None,
    }
}

impl HookOutcome {
    /// The role change took effect on the node (the application was told).
    pub fn took_effect(self) -> bool {
        matches!(self, HookOutcome::Succeeded | HookOutcome::NotConfigured)
    }

    /// A reported outcome as the coordinator reads it: anything unknown
    /// counts as a failure, so it never confirms anything.
    pub fn from_wire(value: i32) -> HookOutcome {
        HookOutcome::try_from(value).unwrap_or(HookOutcome::Failed)
    }
}

/// A role assignment from the coordinator to one agent for one group. It
/// carries the group's epoch: agents refuse one older than they have seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub group: String,
    pub epoch: u64,
    pub role: Role,
    /// The group's primary, if it has one.
    pub primary: Option<String>,
    pub standby_mode: StandbyMode,
    pub fencing: Fencing,
    /// Zero: a primary whose agent stops steps down first.
    pub shutdown_grace: Duration,
    /// Where the primary serves its synced paths (host:port), if known.
    pub primary_peer: Option<String>,
}

impl From<Assignment> for pb::Assignment {
    fn from(a: Assignment) -> pb::Assignment {
        pb::Assignment {
            group: a.group,
            epoch: a.epoch,
            role: pb::Role::from(a.role) as i32,
            primary: a.primary.unwrap_or_default(),
            standby_mode: pb::StandbyMode::from(a.standby_mode) as i32,
            fencing: pb::Fencing::from(a.fencing) as i32,
            shutdown_grace_ms: u64::try_from(a.shutdown_grace.as_millis()).unwrap_or(u64::MAX),
            primary_peer: a.primary_peer.unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::Assignment> for Assignment {
    type Error = Unknown;

    /// A role the agent does not know is refused. Unknown standby modes
    /// and fencing read as the defaults (hot, strict: the safe side).
    fn try_from(a: pb::Assignment) -> Result<Assignment, Unknown> {
        Ok(Assignment {
            role: Role::try_from(a.role)?,
            standby_mode: StandbyMode::try_from(a.standby_mode).unwrap_or_default(),
            fencing: Fencing::try_from(a.fencing).unwrap_or_default(),
            shutdown_grace: Duration::from_millis(a.shutdown_grace_ms),
            primary: (!a.primary.is_empty()).then_some(a.primary),
            primary_peer: (!a.primary_peer.is_empty()).then_some(a.primary_peer),
            group: a.group,
            epoch: a.epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_wire_forms_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(*role));
            assert_eq!(Role::try_from(pb::Role::from(*role) as i32), Ok(*role));
        }
        for mode in StandbyMode::ALL {
            assert_eq!(mode.to_string().parse::<StandbyMode>(), Ok(*mode));
        }
        assert_eq!(
            serde_json::to_string(&Phase::FailingOver).unwrap(),
            "\"failing_over\""
        );
    }

    #[test]
    fn unknown_values_are_named_errors() {
        let err = "lukewarm".parse::<StandbyMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "standby mode must be one of hot, warm, cold, got \"lukewarm\""
        );
        assert!(Role::try_from(0).is_err(), "unspecified is no role");
        assert_eq!(HookOutcome::from_wire(99), HookOutcome::Failed);
    }

    #[test]
    fn assignments_cross_the_wire_unchanged() {
        let a = Assignment {
            group: "g".into(),
            epoch: 7,
            role: Role::Primary,
            primary: Some("n1".into()),
            standby_mode: StandbyMode::Warm,
            fencing: Fencing::None,
            shutdown_grace: Duration::from_secs(3),
            primary_peer: Some("127.0.0.1:7500".into()),
        };
        assert_eq!(Assignment::try_from(pb::Assignment::from(a.clone())), Ok(a));
    }
}
