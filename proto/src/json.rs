//! The JSON contract of what a coordinator answers — groups, nodes,
//! events, settings — as `failoverctl ... -o json` prints it and the REST
//! API (`/api/v1`) serves it: one definition, so the two never differ.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::v1 as pb;
use crate::vocab::{Failback, Fencing, Phase, Role, StandbyMode, SyncState};

/// A wire enum value by its name, or `unknown`.
pub fn name<T: TryFrom<i32> + Copy + std::fmt::Display>(value: i32) -> String {
    T::try_from(value).map_or_else(|_| "unknown".into(), |v| v.to_string())
}

pub fn role_name(role: i32) -> String {
    name::<Role>(role)
}

pub fn non_empty(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { json!(s) }
}

pub fn time(unix_ms: u64) -> Value {
    if unix_ms == 0 {
        Value::Null
    } else {
        json!(
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms))
                .to_string()
        )
    }
}

pub fn group_json(g: &pb::GroupStatus) -> Value {
    json!({
        "name": g.name,
        "epoch": g.epoch,
        "primary": non_empty(&g.primary),
        "phase": name::<Phase>(g.phase),
        "phase_since": time(g.phase_since_unix_ms),
        "alarm": non_empty(&g.alarm),
        "members": g.members.iter().enumerate().map(|(i, m)| json!({
            "node": m.node,
            "position": i,
            "role": role_name(m.role),
            "connected": m.connected,
            "healthy": m.healthy,
            "maintenance": m.maintenance,
            "recently_failed": m.recently_failed,
            "qualifies": m.qualifies,
            "why_not": non_empty(&m.why_not),
            "duplicate": non_empty(&m.duplicate),
            "last_contact": time(m.last_contact_unix_ms),
            "syncs": m.syncs.iter().map(sync_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "policy": policy_json(&g.policy.clone().unwrap_or_default()),
    })
}

/// One member's state sync: `name`, `state`, `snapshot` (hex or null),
/// `epoch`, `age_ms` (null without a copy), `bytes`, `error`.
pub fn sync_json(s: &pb::SyncStatus) -> Value {
    json!({
        "name": s.name,
        "state": name::<SyncState>(s.state),
        "snapshot": non_empty(&s.snapshot),
        "epoch": s.epoch,
        "age_ms": s.age_ms,
        "bytes": s.bytes,
        "error": non_empty(&s.error),
    })
}

pub fn groups_json(groups: &[pb::GroupStatus]) -> Value {
    Value::Array(groups.iter().map(group_json).collect())
}

pub fn nodes_json(nodes: &[pb::NodeStatus]) -> Value {
    Value::Array(
        nodes
            .iter()
            .map(|n| {
                json!({
                    "node": n.node,
                    "connected": n.connected,
                    "healthy": n.healthy,
                    "last_contact": time(n.last_contact_unix_ms),
                    "address": non_empty(&n.address),
                    "agent_version": non_empty(&n.agent_version),
                    "instance": non_empty(&n.instance),
                    "node_uuid": non_empty(&n.node_uuid),
                    "duplicate": non_empty(&n.duplicate),
                    "groups": n.groups.iter().map(|g| json!({
                        "group": g.group,
                        "role": role_name(g.role),
                        "epoch": g.epoch,
                    })).collect::<Vec<_>>(),
                    "checks": n.checks.iter().map(|c| json!({
                        "name": c.name,
                        "passing": c.passing,
                        "groups": c.groups,
                        "detail": c.detail,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

pub fn event_json(e: &pb::Event) -> Value {
    json!({
        "seq": e.seq,
        "time": time(e.unix_ms),
        "group": e.group,
        "kind": e.kind,
        "epoch": e.epoch,
        "old_primary": non_empty(&e.old_primary),
        "new_primary": non_empty(&e.new_primary),
        "reason": e.reason,
        "actor": e.actor,
        "node": non_empty(&e.node),
    })
}

/// A setting's name; an absent one reads as its default.
fn setting<T: TryFrom<i32> + Default + std::fmt::Display>(value: Option<i32>) -> String {
    value
        .and_then(|v| T::try_from(v).ok())
        .unwrap_or_default()
        .to_string()
}

fn duration_ms(ms: Option<u64>) -> String {
    humantime::format_duration(Duration::from_millis(ms.unwrap_or(0))).to_string()
}

/// Every setting, by its documented name, as printed by `group show`.
pub fn policy_json(p: &pb::Policy) -> Value {
    json!({
        "heartbeat_interval": duration_ms(p.heartbeat_interval_ms),
        "failover_timeout": duration_ms(p.failover_timeout_ms),
        "connect_timeout": duration_ms(p.connect_timeout_ms),
        "startup_timeout": duration_ms(p.startup_timeout_ms),
        "shutdown_grace": duration_ms(p.shutdown_grace_ms),
        "abnormal_timeout": duration_ms(p.abnormal_timeout_ms),
        "auto_failover": p.auto_failover.unwrap_or(true),
        "failback": setting::<Failback>(p.failback),
        "failback_delay": duration_ms(p.failback_delay_ms),
        "failback_window": p.failback_window.clone(),
        "min_failover_interval": duration_ms(p.min_failover_interval_ms),
        "standby_mode": setting::<StandbyMode>(p.standby_mode),
        "fencing": setting::<Fencing>(p.fencing),
        "max_sync_lag": duration_ms(p.max_sync_lag_ms),
    })
}

/// `cluster status -o json`: `store`, `leader` (its address, or null),
/// `replicas` (`id`, `address`, `role`), `endpoints` (etcd members).
pub fn cluster_json(s: &pb::ClusterStatusResponse) -> Value {
    json!({
        "store": s.store,
        "leader": s.leader.as_ref().map(|l| l.url.clone()),
        "leader_id": s.leader.as_ref().map(|l| l.id.clone()),
        "answered_by": s.answered_by.as_ref().map(|r| r.url.clone()),
        "replicas": s.replicas.iter().map(|r| json!({
            "id": r.id,
            "address": r.url,
            "role": if r.leader { "leader" } else { "follower" },
        })).collect::<Vec<_>>(),
        "endpoints": s.endpoints.iter().map(|e| json!({
            "url": e.url,
            "healthy": e.healthy,
            "version": e.version,
            "leader": e.leader,
            "error": e.error,
        })).collect::<Vec<_>>(),
    })
}
