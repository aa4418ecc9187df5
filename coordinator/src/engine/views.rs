//! Read-only views of groups and nodes, as the admin API and the status
//! page show them.

use serde::Serialize;

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupView {
    pub name: String,
    pub epoch: u64,
    pub primary: Option<String>,
    pub phase: Phase,
    pub phase_since_unix_ms: u64,
    /// In priority order.
    pub members: Vec<MemberView>,
    pub policy: Policy,
    /// What needs an operator, if anything.
    pub alarm: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberView {
    pub node: String,
    pub role: Role,
    pub connected: bool,
    pub healthy: bool,
    pub last_contact_unix_ms: u64,
    pub maintenance: bool,
    /// Failed here and not yet healthy for `failback_delay` since.
    pub recently_failed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView {
    pub node: String,
    pub connected: bool,
    pub healthy: bool,
    pub last_contact_unix_ms: u64,
    pub address: String,
    pub agent_version: String,
    /// `(group, role, epoch)` for every group the node is a member of.
    pub groups: Vec<(String, Role, u64)>,
    pub checks: Vec<CheckView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckView {
    pub name: String,
    pub passing: bool,
    pub groups: Vec<String>,
    pub detail: String,
}

impl Engine {
    pub fn group_view(&self, name: &str, now: Now) -> GroupView {
        let g = &self.groups[name];
        let ttl = g.record.policy.failover_timeout;
        let members = g
            .record
            .members
            .iter()
            .map(|m| {
                let node = self.nodes.get(m);
                let connected = node.is_some_and(|n| n.heard_within(now.mono, ttl));
                MemberView {
                    node: m.clone(),
                    role: if g.record.primary.as_ref() == Some(m) {
                        Role::Primary
                    } else {
                        Role::Secondary
                    },
                    connected,
                    healthy: connected && node.is_some_and(|n| n.passes_checks(name)),
                    last_contact_unix_ms: node.map_or(0, |n| n.last_contact_ms),
                    maintenance: g.record.in_maintenance(m),
                    recently_failed: self.recently_failed(name, m, now),
                }
            })
            .collect();
        GroupView {
            name: name.to_owned(),
            epoch: g.record.epoch,
            primary: g.record.primary.clone(),
            phase: g.phase,
            phase_since_unix_ms: g.phase_since_ms,
            members,
            policy: g.record.policy.clone(),
            alarm: g.alarm.clone(),
        }
    }

    pub fn node_views(&self, _now: Now) -> Vec<NodeView> {
        self.nodes
            .iter()
            .map(|(id, n)| {
                let connected = n.session.is_some();
                NodeView {
                    node: id.clone(),
                    connected,
                    healthy: connected && n.checks.iter().all(|c| c.passing),
                    last_contact_unix_ms: n.last_contact_ms,
                    address: n.address.clone(),
                    agent_version: n.agent_version.clone(),
                    groups: n
                        .groups
                        .iter()
                        .map(|g| {
                            let a = self.assignment_for(g, id);
                            (g.clone(), a.role, a.epoch)
                        })
                        .collect(),
                    checks: n
                        .checks
                        .iter()
                        .map(|c| CheckView {
                            name: c.name.clone(),
                            passing: c.passing,
                            groups: c.groups.clone(),
                            detail: c.detail.clone(),
                        })
                        .collect(),
                }
            })
            .collect()
    }
}
