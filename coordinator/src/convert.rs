//! Conversions between the wire types of `failover.v1` and the domain
//! types of the engine, in both directions, in one place.

use std::time::Duration;

use proto::v1 as pb;

use crate::engine::{AdminError, GroupView, NodeView, ToAgent};
use crate::model::{CheckStatus, EventRecord};
use crate::policy::{Failback, Fencing, Policy, PolicyPatch, StandbyMode, TimeWindow};

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

pub fn to_proto(message: ToAgent) -> pb::CoordinatorMessage {
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
pub fn checks_from_proto(checks: Vec<pb::CheckStatus>) -> Vec<CheckStatus> {
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

/// Reads a requested policy change, refusing unknown enum values.
pub fn policy_patch_from_proto(p: Option<pb::Policy>) -> Result<PolicyPatch, AdminError> {
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
    })
}

pub fn policy_to_proto(p: &Policy) -> pb::Policy {
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
    }
}

pub fn group_to_proto(v: GroupView) -> pb::GroupStatus {
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
            })
            .collect(),
        policy: Some(policy_to_proto(&v.policy)),
        alarm: v.alarm.unwrap_or_default(),
    }
}

pub fn node_to_proto(v: NodeView) -> pb::NodeStatus {
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

pub fn event_to_proto(e: EventRecord) -> pb::Event {
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
    }
}
