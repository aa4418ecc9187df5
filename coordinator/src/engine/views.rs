//! Read-only views of groups and nodes, as the admin API and the status
//! page show them.

use serde::Serialize;

use super::decide;
use super::group::Group;
use super::node::{Node, Nodes};
use super::sessions;
use super::*;
use proto::vocab::SyncState;

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
    /// Whether it could be promoted automatically right now.
    pub qualifies: bool,
    /// Why not, in words (for a member that is not primary).
    pub why_not: Option<String>,
    /// Another agent process claims this node id while it is connected.
    pub duplicate: Option<String>,
    /// Its state syncs for this group, ages counted to the view's moment.
    pub syncs: Vec<SyncView>,
}

/// One member's copy of one synced path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncView {
    pub name: String,
    pub state: proto::vocab::SyncState,
    pub snapshot: String,
    pub epoch: u64,
    pub age: Option<Duration>,
    pub bytes: u64,
    pub error: String,
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
    /// Another agent process claims this node id while it is connected.
    pub duplicate: Option<String>,
    /// The first 8 hex digits of the connected agent's instance id.
    pub instance: Option<String>,
    /// The connected agent's installation UUID.
    pub node_uuid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckView {
    pub name: String,
    pub passing: bool,
    pub groups: Vec<String>,
    pub detail: String,
}

impl Engine {
    /// The view of group `name`, if it exists.
    pub fn group_view(&self, name: &str, now: Now) -> Option<GroupView> {
        self.groups
            .get(name)
            .map(|g| group_view(g, &self.nodes, now))
    }

    /// A page of node views in name order: after `after`, at most `limit`.
    pub fn node_views(&self, after: Option<&String>, limit: usize, now: Now) -> Vec<NodeView> {
        self.nodes
            .range::<String, _>(super::admin::after_bound(after))
            .take(limit)
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
                        .filter_map(|g| self.groups.get(g))
                        .map(|g| {
                            let a = decide::assignment_for(g, &self.nodes, id);
                            (g.name().to_owned(), a.role, a.epoch)
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
                    duplicate: duplicate_text(id, n, now),
                    instance: n.instance().map(|i| sessions::short(i).to_owned()),
                    node_uuid: n.node_uuid.clone(),
                }
            })
            .collect()
    }
}

/// What `failoverctl group show` and the status page show of one group.
pub(super) fn group_view(g: &Group, nodes: &Nodes, now: Now) -> GroupView {
    let ttl = g.policy().failover_timeout;
    let members: Vec<MemberView> = g
        .members()
        .iter()
        .map(|m| {
            let node = nodes.get(m);
            let connected = node.is_some_and(|n| n.heard_within(now.mono, ttl));
            let is_primary = g.primary() == Some(m.as_str());
            let why_not = why_not(g, nodes, m, now);
            MemberView {
                node: m.clone(),
                role: if is_primary {
                    Role::Primary
                } else {
                    Role::Secondary
                },
                connected,
                healthy: connected && node.is_some_and(|n| n.passes_checks(g.name())),
                last_contact_unix_ms: node.map_or(0, |n| n.last_contact_ms),
                maintenance: g.in_maintenance(m),
                recently_failed: decide::recently_failed(g, nodes, m, now),
                qualifies: why_not.is_none(),
                why_not: if is_primary { None } else { why_not },
                duplicate: node.and_then(|n| duplicate_text(m, n, now)),
                syncs: super::sync_lag::reports_at(g, nodes, m, now)
                    .into_iter()
                    .map(|(r, age)| SyncView {
                        name: r.name.clone(),
                        // A former primary out of reach publishes nothing.
                        state: match r.state {
                            SyncState::Source if node.is_none_or(|n| n.session.is_none()) => {
                                SyncState::Stale
                            }
                            state => state,
                        },
                        snapshot: r.snapshot.clone(),
                        epoch: r.epoch,
                        age,
                        bytes: r.bytes,
                        error: r.error.clone(),
                    })
                    .collect(),
            }
        })
        .collect();
    let duplicate_alarm = members
        .iter()
        .find_map(|m| m.duplicate.clone())
        .map(|d| format!("duplicate agent: {d}"));
    GroupView {
        name: g.name().to_owned(),
        epoch: g.epoch(),
        primary: g.primary().map(str::to_owned),
        phase: g.phase,
        phase_since_unix_ms: g.phase_since_ms,
        members,
        policy: g.policy().clone(),
        alarm: g.alarm.clone().or(duplicate_alarm),
    }
}

/// Why `node` would not be promoted automatically right now, in the words
/// an operator needs; `None` if it would.
fn why_not(g: &Group, nodes: &Nodes, node: &str, now: Now) -> Option<String> {
    let Some(n) = nodes.get(node) else {
        return Some("never connected to this coordinator".into());
    };
    if g.in_maintenance(node) {
        return Some("in maintenance (failoverctl group member undrain to end it)".into());
    }
    if !n.heard_within(now.mono, g.policy().failover_timeout) {
        return Some(match &n.session {
            Some(s) if s.leaving => "its agent is stopping".into(),
            Some(s) if s.last_heartbeat.is_none() => {
                "connected, waiting for its first heartbeat".into()
            }
            Some(_) => "connected but silent for longer than the failover timeout".into(),
            None => "disconnected".into(),
        });
    }
    let failing: Vec<String> = n
        .checks
        .iter()
        .filter(|c| c.applies_to(g.name()) && !c.passing)
        .map(|c| {
            if c.detail.is_empty() {
                format!("failing check {}", c.name)
            } else {
                format!("failing check {} ({})", c.name, c.detail)
            }
        })
        .collect();
    if !failing.is_empty() {
        return Some(failing.join(", "));
    }
    if let Some(f) = g.hook_failures.get(node) {
        let retry = g
            .hook_retry_at(node, MIN_HOOK_RETRY)
            .map(|at| wall(now, at))
            .unwrap_or_default();
        return Some(format!(
            "promote hook failed {} time{}; retried at {} if nobody else can serve",
            f.count,
            if f.count == 1 { "" } else { "s" },
            retry
        ));
    }
    if let Some(stale) = super::sync_lag::why_stale(g, nodes, node, now) {
        return Some(stale);
    }
    match decide::requalifies_at(g, nodes, node, now) {
        Some(at) if now.mono < at => Some(format!(
            "recently failed: ranked last, and no failback or restore to it, until {} \
             (promoted at once if nobody else can serve)",
            wall(now, at)
        )),
        _ => None,
    }
}

/// The `duplicate_node` situation of `id`, if one is current.
fn duplicate_text(id: &str, n: &Node, now: Now) -> Option<String> {
    let d = n.duplicate.as_ref()?;
    if !d.reported || now.mono.saturating_duration_since(d.last_refused) >= DUPLICATE_MEMORY {
        return None;
    }
    let install = if n.node_uuid.as_deref() == Some(d.node_uuid.as_str()) {
        "same installation"
    } else {
        "another installation"
    };
    Some(format!(
        "another agent (instance {}, {install}) from {} claims {id}, which is connected from {}",
        sessions::short(&d.instance),
        d.address,
        n.address
    ))
}

/// An instant on the monotonic clock as a UTC wall-clock time.
fn wall(now: Now, at: Instant) -> String {
    let ms = if at >= now.mono {
        now.wall_ms
            .saturating_add(at.duration_since(now.mono).as_millis() as u64)
    } else {
        now.wall_ms
            .saturating_sub(now.mono.duration_since(at).as_millis() as u64)
    };
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
