//! The coordinator's domain types: roles, phases, the durable group and
//! event records. Plain data; the wire types live in `proto`.

use serde::{Deserialize, Serialize};

use crate::policy::Policy;

pub use proto::vocab::{HookOutcome, Phase, Role};

/// A group as it is stored: everything that must survive a restart.
///
/// Phase, leases and sessions are not here on purpose: they describe the
/// running coordinator, and a restarted one rebuilds them (waiting out any
/// lease it may have granted before it stopped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: String,
    /// Member node ids in priority order (index 0 = highest priority).
    pub members: Vec<String>,
    pub policy: Policy,
    pub primary: Option<String>,
    /// The agent instance (one process of `primary`'s agent) the role was
    /// given to: only it may renew the lease or confirm a step-down. Kept
    /// across restarts so a restarted coordinator binds the role to the
    /// same process; `None` in records written before instances existed
    /// (then the primary's first session that claims the role binds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_instance: Option<String>,
    /// The longest lease that may have been granted at the current epoch:
    /// a shorter `failover_timeout` set since does not shorten a lease
    /// already granted, so a restarted coordinator waits this long.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub granted_ttl_max: Option<std::time::Duration>,
    /// The fencing token: grows by one on every change of `primary`.
    pub epoch: u64,
    /// The epoch the group was created with: while `epoch` is still this,
    /// the group has never had a primary (its first election is automatic
    /// even with auto-failover off).
    #[serde(default)]
    pub first_epoch: u64,
    /// Members in maintenance (drained): never promoted.
    #[serde(default)]
    pub maintenance: Vec<String>,
    pub created_unix_ms: u64,
}

impl GroupRecord {
    /// The longest lease that may be outstanding at the current epoch.
    pub fn lease_ttl_bound(&self) -> std::time::Duration {
        self.granted_ttl_max
            .unwrap_or_default()
            .max(self.policy.failover_timeout)
    }

    pub fn in_maintenance(&self, node: &str) -> bool {
        self.maintenance.iter().any(|m| m == node)
    }

    pub fn position(&self, node: &str) -> Option<usize> {
        self.members.iter().position(|m| m == node)
    }
}

/// One entry of the append-only event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub unix_ms: u64,
    pub group: String,
    pub kind: EventKind,
    pub epoch: u64,
    pub old_primary: Option<String>,
    pub new_primary: Option<String>,
    pub reason: String,
    /// `coordinator` for automatic decisions, otherwise the admin client.
    pub actor: String,
    /// The node the event is about, when it is about one node that is not
    /// the primary (contact lost or regained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    GroupCreated,
    GroupDeleted,
    MemberAdded,
    MemberRemoved,
    MemberMoved,
    /// A member became primary (with a new epoch).
    Promoted,
    /// The primary's lease ran out without a heartbeat: it is replaced.
    /// (A crash, a freeze or a partition; clean stops have their own kinds.)
    PrimaryLapsed,
    /// The primary's agent stopped cleanly and stepped down first; the
    /// role moves at once.
    PrimarySteppedDown,
    /// The primary's agent stopped cleanly and did not come back within
    /// the group's shutdown grace.
    ShutdownGraceExpired,
    /// A second agent process claimed a node id that is connected; it was
    /// refused.
    DuplicateNode,
    /// An agent claimed an epoch too far above the stored one; refused.
    EpochClaimRefused,
    /// A session's certificate did not name the node its Hello claimed.
    IdentityRefused,
    /// A planned switchover told the primary to step down (new epoch).
    SteppingDown,
    /// The stepping-down primary confirmed that it stopped acting.
    StepDownConfirmed,
    /// Nobody qualifies to be primary.
    NoPrimary,
    /// An agent reported an epoch above the stored one; the epoch was raised.
    EpochRaised,
    /// The group's settings changed.
    PolicyChanged,
    MemberDrained,
    MemberUndrained,
    /// The primary's promote hook failed or timed out: it is marked failed.
    PromoteFailed,
    /// The primary's health checks fail.
    PrimaryUnhealthy,
    /// The primary's agent said goodbye (stopped cleanly).
    PrimaryLeft,
    /// The primary's agent came back within the shutdown grace and kept
    /// the role.
    PrimaryReturned,
    /// Something needs an operator: auto-failover is off, or nobody can
    /// take over from a failing primary.
    Alarm,
    /// A new primary took over: the group's alarm is over.
    AlarmCleared,
    /// A member's agent session ended (it stopped, crashed, or was cut
    /// off): recorded once per group it is a member of.
    NodeLost,
    /// A member that was lost heartbeats again.
    NodeRegained,
}

impl EventKind {
    /// Every kind, in the order the README lists them.
    pub const ALL: [EventKind; 27] = [
        EventKind::GroupCreated,
        EventKind::GroupDeleted,
        EventKind::MemberAdded,
        EventKind::MemberRemoved,
        EventKind::MemberMoved,
        EventKind::Promoted,
        EventKind::PrimaryLapsed,
        EventKind::PrimarySteppedDown,
        EventKind::ShutdownGraceExpired,
        EventKind::DuplicateNode,
        EventKind::EpochClaimRefused,
        EventKind::IdentityRefused,
        EventKind::SteppingDown,
        EventKind::StepDownConfirmed,
        EventKind::NoPrimary,
        EventKind::EpochRaised,
        EventKind::PolicyChanged,
        EventKind::MemberDrained,
        EventKind::MemberUndrained,
        EventKind::PromoteFailed,
        EventKind::PrimaryUnhealthy,
        EventKind::PrimaryLeft,
        EventKind::PrimaryReturned,
        EventKind::Alarm,
        EventKind::AlarmCleared,
        EventKind::NodeLost,
        EventKind::NodeRegained,
    ];

    /// The kind a name (as [`EventKind::as_str`] writes it) stands for.
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::GroupCreated => "group_created",
            EventKind::GroupDeleted => "group_deleted",
            EventKind::MemberAdded => "member_added",
            EventKind::MemberRemoved => "member_removed",
            EventKind::MemberMoved => "member_moved",
            EventKind::Promoted => "promoted",
            EventKind::PrimaryLapsed => "primary_lapsed",
            EventKind::PrimarySteppedDown => "primary_stepped_down",
            EventKind::ShutdownGraceExpired => "shutdown_grace_expired",
            EventKind::DuplicateNode => "duplicate_node",
            EventKind::EpochClaimRefused => "epoch_claim_refused",
            EventKind::IdentityRefused => "identity_refused",
            EventKind::SteppingDown => "stepping_down",
            EventKind::StepDownConfirmed => "step_down_confirmed",
            EventKind::NoPrimary => "no_primary",
            EventKind::EpochRaised => "epoch_raised",
            EventKind::PolicyChanged => "policy_changed",
            EventKind::MemberDrained => "member_drained",
            EventKind::MemberUndrained => "member_undrained",
            EventKind::PromoteFailed => "promote_failed",
            EventKind::PrimaryUnhealthy => "primary_unhealthy",
            EventKind::PrimaryLeft => "primary_left",
            EventKind::PrimaryReturned => "primary_returned",
            EventKind::Alarm => "alarm",
            EventKind::AlarmCleared => "alarm_cleared",
            EventKind::NodeLost => "node_lost",
            EventKind::NodeRegained => "node_regained",
        }
    }
}

/// One health check's latest result, as reported by an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckStatus {
    pub name: String,
    pub passing: bool,
    /// Groups the check applies to; empty = all of the node's groups.
    pub groups: Vec<String>,
    pub detail: String,
}

/// One state sync of one group, as a member's agent last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub group: String,
    pub name: String,
    /// The snapshot it holds (SHA-256 hex of its manifest); empty: none.
    pub snapshot: String,
    /// The epoch at which the snapshot's publisher was primary.
    pub epoch: u64,
    /// How long since its copy was last known to be the primary's latest,
    /// when the report was sent; `None` without a copy.
    pub age: Option<std::time::Duration>,
    pub bytes: u64,
    pub state: proto::vocab::SyncState,
    pub error: String,
}

impl CheckStatus {
    pub fn applies_to(&self, group: &str) -> bool {
        self.groups.is_empty() || self.groups.iter().any(|g| g == group)
    }
}
