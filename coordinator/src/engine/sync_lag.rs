//! How old each member's synced copy is, and the `max_sync_lag` rule:
//! automatic promotion skips a member whose copy is older than the group's
//! `max_sync_lag` while a fresher member can serve — so the freshest member
//! that can serve is never skipped, and no vacancy stays open for it.
//!
//! Ages come from the agents (each measures, on its own clock, how long
//! since its copy was last the primary's latest) and grow here from the
//! moment their heartbeat arrived; nothing of it is stored.

use std::collections::BTreeSet;
use std::time::Duration;

use super::Now;
use super::decide::eligible;
use super::group::Group;
use super::node::Nodes;
use crate::model::SyncReport;
use proto::vocab::SyncState;

/// The names of the syncs any member reports for group `g`.
fn sync_names<'a>(g: &Group, nodes: &'a Nodes) -> BTreeSet<&'a str> {
    g.members()
        .iter()
        .filter_map(|m| nodes.get(m))
        .flat_map(|n| n.syncs.iter())
        .filter(|r| r.group == g.name())
        .map(|r| r.name.as_str())
        .collect()
}

/// The reports of `node` for group `g` with their ages at `now`.
pub(super) fn reports_at<'a>(
    g: &Group,
    nodes: &'a Nodes,
    node: &str,
    now: Now,
) -> Vec<(&'a SyncReport, Option<Duration>)> {
    let Some(n) = nodes.get(node) else {
        return Vec::new();
    };
    let since = n
        .syncs_at
        .map_or(Duration::ZERO, |at| now.mono.saturating_duration_since(at));
    n.syncs
        .iter()
        .filter(|r| r.group == g.name())
        .map(|r| match r.state {
            // The primary's own copy is the latest by definition.
            SyncState::Source => (r, Some(Duration::ZERO)),
            _ => (r, r.age.map(|a| a.saturating_add(since))),
        })
        .collect()
}

/// How old `node`'s copy is at `now`: the oldest over every sync of the
/// group; `None` when it holds no copy of one of them (or reports none
/// that another member reports). Zero when the group syncs nothing.
pub(super) fn copy_age(g: &Group, nodes: &Nodes, node: &str, now: Now) -> Option<Duration> {
    let names = sync_names(g, nodes);
    let reports = reports_at(g, nodes, node, now);
    let mut oldest = Duration::ZERO;
    for name in names {
        let age = reports
            .iter()
            .find(|(r, _)| r.name == name)
            .and_then(|(_, age)| *age)?;
        oldest = oldest.max(age);
    }
    Some(oldest)
}

/// A copy's age as an order: no copy is the oldest of all.
fn rank(age: Option<Duration>) -> Duration {
    age.unwrap_or(Duration::MAX)
}

/// Whether automatic promotion must skip `node`: `max_sync_lag` is set,
/// its copy is older than that, and another member that can serve (not
/// the primary being replaced, `exclude`) holds a fresher one.
pub(super) fn too_stale(
    g: &Group,
    nodes: &Nodes,
    node: &str,
    exclude: Option<&str>,
    now: Now,
) -> bool {
    let limit = g.policy().max_sync_lag;
    if limit.is_zero() {
        return false;
    }
    let age = rank(copy_age(g, nodes, node, now));
    if age <= limit {
        return false;
    }
    g.members()
        .iter()
        .filter(|m| m.as_str() != node && Some(m.as_str()) != exclude)
        .filter(|m| g.primary() != Some(m.as_str()))
        .filter(|m| eligible(g, nodes, m, now))
        .any(|m| rank(copy_age(g, nodes, m, now)) < age)
}

/// Whether `node`'s copy is within `max_sync_lag` (always, when it is
/// off): a voluntary move (failback) waits for that.
pub(super) fn within_lag(g: &Group, nodes: &Nodes, node: &str, now: Now) -> bool {
    let limit = g.policy().max_sync_lag;
    limit.is_zero() || rank(copy_age(g, nodes, node, now)) <= limit
}

/// Why `node` is skipped, in words, if it is.
pub(super) fn why_stale(g: &Group, nodes: &Nodes, node: &str, now: Now) -> Option<String> {
    if !too_stale(g, nodes, node, None, now) {
        return None;
    }
    let limit = humantime::format_duration(g.policy().max_sync_lag);
    Some(match copy_age(g, nodes, node, now) {
        Some(age) => format!(
            "its synced copy is {} old, more than max_sync_lag ({limit}), and a fresher member can serve",
            humantime::format_duration(Duration::from_secs(age.as_secs()))
        ),
        None => format!(
            "it holds no synced copy (max_sync_lag {limit}) and a member with one can serve"
        ),
    })
}
