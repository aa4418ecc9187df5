//! Conversions between the wire types of `failover.v1` and the domain
//! types of the engine, in both directions, in one place.

use std::time::Duration;

use proto::v1 as pb;

use crate::engine::{AdminCommand, AdminError, GroupView, NodeView, ToAgent};
use crate::model::{CheckStatus, EventRecord, SyncReport};
use crate::policy::{policy_patch_from_proto, policy_to_proto};

fn millis(d: Duration) -> u64 {
    proto::duration::to_ms(d)
}

pub(crate) fn to_proto(message: ToAgent) -> pb::CoordinatorMessage {
    use pb::coordinator_message::Kind;
    let kind = match message {
        ToAgent::Welcome {
            coordinator_id,
            heartbeat_interval,
        } => Kind::Welcome(pb::Welcome {
            coordinator_id,
            settings: Some(pb::Settings {
                heartbeat_interval_ms: millis(heartbeat_interval),
            }),
        }),
        ToAgent::Settings { heartbeat_interval } => Kind::Settings(pb::Settings {
            heartbeat_interval_ms: millis(heartbeat_interval),
        }),
        ToAgent::Ack { seq, grants } => Kind::Ack(pb::HeartbeatAck {
            seq,
            grants: grants
                .into_iter()
                .map(|g| pb::LeaseGrant {
                    group: g.group,
                    epoch: g.epoch,
                    lease_ttl_ms: millis(g.ttl),
                })
                .collect(),
        }),
        ToAgent::Assignment(a) => Kind::Assignment(a.into()),
        ToAgent::Release {
            group,
            epoch,
            reason,
        } => Kind::Release(pb::Release {
            group,
            epoch,
            reason,
        }),
    };
    pb::CoordinatorMessage { kind: Some(kind) }
}

/// An agent's health checks, bounded in number and in every text.
pub(crate) fn checks_from_proto(checks: Vec<pb::CheckStatus>) -> Vec<CheckStatus> {
    use crate::limits::{MAX_CHECKS, MAX_DETAIL, MAX_LABEL, clip};
    checks
        .into_iter()
        .take(MAX_CHECKS)
        .map(|c| CheckStatus {
            name: clip(c.name, MAX_LABEL),
            passing: c.passing,
            groups: c
                .groups
                .into_iter()
                .take(MAX_CHECKS)
                .filter(|g| proto::names::validate_group_name(g).is_ok())
                .collect(),
            detail: clip(c.detail, MAX_DETAIL),
        })
        .collect()
}

/// An agent's sync reports, bounded and checked: at most `MAX_SYNCS`, each
/// for a well-named group and sync, a snapshot that is 64 hex digits (or
/// none), an unknown state read as none; texts cut to their bounds.
pub(crate) fn syncs_from_proto(syncs: Vec<pb::SyncStatus>) -> Vec<SyncReport> {
    use crate::limits::{MAX_DETAIL, MAX_SYNCS, clip};
    use proto::vocab::SyncState;
    syncs
        .into_iter()
        .take(MAX_SYNCS)
        .filter(|s| proto::names::validate_group_name(&s.group).is_ok())
        .filter(|s| proto::names::validate_node_id(&s.name).is_ok())
        .map(|s| {
            let snapshot_ok =
                s.snapshot.len() == 64 && s.snapshot.bytes().all(|b| b.is_ascii_hexdigit());
            let state = SyncState::try_from(s.state).unwrap_or(SyncState::None);
            SyncReport {
                group: s.group,
                name: s.name,
                snapshot: if snapshot_ok {
                    s.snapshot.to_ascii_lowercase()
                } else {
                    String::new()
                },
                epoch: s.epoch,
                age: s
                    .age_ms
                    .filter(|_| snapshot_ok)
                    .map(|ms| Duration::from_millis(ms.min(crate::limits::MAX_SYNC_AGE_MS))),
                bytes: s.bytes,
                state: if snapshot_ok || state == SyncState::None {
                    state
                } else {
                    SyncState::None
                },
                error: clip(s.error, MAX_DETAIL),
            }
        })
        .collect()
}

pub(crate) fn group_to_proto(v: GroupView) -> pb::GroupStatus {
    pb::GroupStatus {
        name: v.name,
        epoch: v.epoch,
        primary: v.primary.unwrap_or_default(),
        phase: pb::Phase::from(v.phase) as i32,
        phase_since_unix_ms: v.phase_since_unix_ms,
        members: v
            .members
            .into_iter()
            .map(|m| pb::MemberStatus {
                node: m.node,
                role: pb::Role::from(m.role) as i32,
                connected: m.connected,
                healthy: m.healthy,
                last_contact_unix_ms: m.last_contact_unix_ms,
                maintenance: m.maintenance,
                recently_failed: m.recently_failed,
                duplicate: m.duplicate.unwrap_or_default(),
                qualifies: m.qualifies,
                why_not: m.why_not.unwrap_or_default(),
                syncs: m
                    .syncs
                    .into_iter()
                    .map(|s| pb::SyncStatus {
                        group: String::new(),
                        name: s.name,
                        snapshot: s.snapshot,
                        epoch: s.epoch,
                        age_ms: s.age.map(proto::duration::to_ms),
                        bytes: s.bytes,
                        state: pb::SyncState::from(s.state) as i32,
                        error: s.error,
                    })
                    .collect(),
            })
            .collect(),
        policy: Some(policy_to_proto(&v.policy)),
        alarm: v.alarm.unwrap_or_default(),
    }
}

pub(crate) fn node_to_proto(v: NodeView) -> pb::NodeStatus {
    pb::NodeStatus {
        node: v.node,
        connected: v.connected,
        healthy: v.healthy,
        last_contact_unix_ms: v.last_contact_unix_ms,
        address: v.address,
        agent_version: v.agent_version,
        groups: v
            .groups
            .into_iter()
            .map(|(group, role, epoch)| pb::GroupRole {
                group,
                role: pb::Role::from(role) as i32,
                epoch,
            })
            .collect(),
        checks: v
            .checks
            .into_iter()
            .map(|c| pb::CheckStatus {
                name: c.name,
                passing: c.passing,
                groups: c.groups,
                detail: c.detail,
            })
            .collect(),
        duplicate: v.duplicate.unwrap_or_default(),
        instance: v.instance.unwrap_or_default(),
        node_uuid: v.node_uuid.unwrap_or_default(),
    }
}

pub(crate) fn event_to_proto(e: EventRecord) -> pb::Event {
    pb::Event {
        seq: e.seq,
        unix_ms: e.unix_ms,
        group: e.group,
        kind: e.kind.as_str().to_owned(),
        epoch: e.epoch,
        old_primary: e.old_primary.unwrap_or_default(),
        new_primary: e.new_primary.unwrap_or_default(),
        reason: e.reason,
        actor: e.actor,
        node: e.node.unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------
// Admin requests: one conversion per request, into the engine's command.
// ---------------------------------------------------------------------------

fn position(p: u32) -> usize {
    usize::try_from(p).unwrap_or(usize::MAX)
}

impl TryFrom<pb::CreateGroupRequest> for AdminCommand {
    type Error = AdminError;
    fn try_from(r: pb::CreateGroupRequest) -> Result<Self, AdminError> {
        Ok(AdminCommand::CreateGroup {
            name: r.name,
            members: r.members,
            policy: policy_patch_from_proto(r.policy)?,
        })
    }
}

impl TryFrom<pb::GetGroupRequest> for AdminCommand {
    type Error = AdminError;
    fn try_from(r: pb::GetGroupRequest) -> Result<Self, AdminError> {
        Ok(AdminCommand::GetGroup { name: r.name })
    }
}

impl TryFrom<pb::DeleteGroupRequest> for AdminCommand {
    type Error = AdminError;
    fn try_from(r: pb::DeleteGroupRequest) -> Result<Self, AdminError> {
        Ok(AdminCommand::DeleteGroup { name: r.name })
    }
}

impl TryFrom<pb::AddMemberRequest> for AdminCommand {
    type Error = AdminError;
    fn try_from(r: pb::AddMemberRequest) -> Result<Self, AdminError> {
        Ok(AdminCommand::AddMember {
            group: r.group,
            node: r.node,
            position: r.position.map(position),
        })
    }
}

impl TryFrom<pb::RemoveMemberRequest> for AdminCommand {
    type Error = AdminError;
    fn try_from(r: pb::RemoveMemberRequest) -> Result<Self, AdminError> {
        Ok(AdminCommand::RemoveMember {
            group: r.group,
            node: r.node,
        })
    }
}

impl TryFrom<pb::MoveMemberRequest> for AdminCommand {
    type Error = AdminError;
    fn try_from(r: pb::MoveMemberRequest) -> Result<Self, AdminError> {
        Ok(AdminCommand::MoveMember {
            group: r.group,
            node: r.node,
            position: position(r.position),
        })
    }
}

impl TryFrom<pb::UpdateGroupRequest> for AdminCommand {
    type Error = AdminError;
    fn try_from(r: pb::UpdateGroupRequest) -> Result<Self, AdminError> {
        Ok(AdminCommand::UpdatePolicy {
            group: r.name,
            policy: policy_patch_from_proto(r.policy)?,
        })
    }
}

impl TryFrom<pb::PromoteRequest> for AdminCommand {
    type Error = AdminError;
    fn try_from(r: pb::PromoteRequest) -> Result<Self, AdminError> {
        Ok(AdminCommand::Promote {
            group: r.group,
            to: r.to,
        })
    }
}

impl TryFrom<pb::TakeoverRequest> for AdminCommand {
    type Error = AdminError;
    fn try_from(r: pb::TakeoverRequest) -> Result<Self, AdminError> {
        Ok(AdminCommand::Takeover {
            group: r.group,
            to: (!r.to.is_empty()).then_some(r.to),
        })
    }
}

impl TryFrom<pb::RestoreRequest> for AdminCommand {
    type Error = AdminError;
    fn try_from(r: pb::RestoreRequest) -> Result<Self, AdminError> {
        Ok(AdminCommand::Restore { group: r.group })
    }
}

/// `DrainMember` and `UndrainMember` share a request message.
pub struct Drain(pub pb::DrainMemberRequest);
pub struct Undrain(pub pb::DrainMemberRequest);

impl TryFrom<Drain> for AdminCommand {
    type Error = AdminError;
    fn try_from(Drain(r): Drain) -> Result<Self, AdminError> {
        Ok(AdminCommand::Drain {
            group: r.group,
            node: r.node,
        })
    }
}

impl TryFrom<Undrain> for AdminCommand {
    type Error = AdminError;
    fn try_from(Undrain(r): Undrain) -> Result<Self, AdminError> {
        Ok(AdminCommand::Undrain {
            group: r.group,
            node: r.node,
        })
    }
}
