//! How old each member's synced copy is, and the `max_sync_lag` rule:
//! automatic promotion skips a member whose copy is older than the group's
//! `max_sync_lag` while a fresher member can serve — so the freshest member
//! that can serve is never skipped, and no vacancy stays open for it.
//!
//! Ages come from the agents (each measures, on its own clock, how long
//! since its copy was last the primary's latest) and grow here from the
//! moment their heartbeat arrived; nothing of it is stored.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Now;
use super::decide::eligible;
use super::group::Group;
use super::node::Nodes;
use crate::model::SyncReport;
use proto::vocab::SyncState;

/// The syncs of group `g`: those its primary (or, while it has none, the
/// last one) reports publishing, each with the snapshot it published. A
/// name only some standby knows (a configuration out of step), or that a
/// member which never held the role claims to publish, counts for nothing.
fn published<'a>(g: &Group, nodes: &'a Nodes) -> BTreeMap<&'a str, &'a str> {
    let Some(source) = g
        .primary()
        .or(g.last_primary.as_deref())
        .and_then(|p| nodes.get(p))
    else {
        return BTreeMap::new();
    };
    source
        .syncs
        .iter()
        .filter(|r| r.group == g.name() && r.state == SyncState::Source)
        .map(|r| (r.name.as_str(), r.snapshot.as_str()))
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
            // The primary's own copy is the latest while it publishes.
            SyncState::Source if n.session.is_some() => (r, Some(Duration::ZERO)),
            SyncState::Source => (r, Some(since)),
            _ => (r, r.age.map(|a| a.saturating_add(since))),
        })
        .collect()
}

/// How fresh one member's copy is.
struct Freshness {
    /// How many published snapshots it does not hold.
    missing: usize,
    /// The oldest of its copies of the published syncs; `None` when it
    /// holds no copy of one of them. Zero when the group syncs nothing.
    age: Option<Duration>,
}

impl Freshness {
    fn of(
        g: &Group,
        nodes: &Nodes,
        published: &BTreeMap<&str, &str>,
        node: &str,
        now: Now,
    ) -> Freshness {
        let reports = reports_at(g, nodes, node, now);
        let mut missing = 0;
        let mut age = Some(Duration::ZERO);
        for (name, snapshot) in published {
            let copy = reports.iter().find(|(r, _)| r.name == *name);
            if !copy.is_some_and(|(r, _)| !snapshot.is_empty() && r.snapshot == *snapshot) {
                missing += 1;
            }
            age = match (age, copy.and_then(|(_, a)| *a)) {
                (Some(oldest), Some(a)) => Some(oldest.max(a)),
                _ => None,
            };
        }
        Freshness { missing, age }
    }

    /// As an order, smaller fresher: a member holding what the primary
    /// last published beats any that does not, whatever ages they claim;
    /// then the age, no copy the oldest of all.
    fn rank(&self) -> (usize, Duration) {
        (self.missing, self.age.unwrap_or(Duration::MAX))
    }
}

/// How old `node`'s copy is at `now` (see [`Freshness::age`]).
pub(super) fn copy_age(g: &Group, nodes: &Nodes, node: &str, now: Now) -> Option<Duration> {
    Freshness::of(g, nodes, &published(g, nodes), node, now).age
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
    let published = published(g, nodes);
    let mine = Freshness::of(g, nodes, &published, node, now);
    if mine.age.is_some_and(|age| age <= limit) {
        return false;
    }
    g.members()
        .iter()
        .filter(|m| m.as_str() != node && Some(m.as_str()) != exclude)
        .filter(|m| g.primary() != Some(m.as_str()))
        .filter(|m| eligible(g, nodes, m, now))
        .any(|m| Freshness::of(g, nodes, &published, m, now).rank() < mine.rank())
}

/// Whether `node`'s copy is within `max_sync_lag` (always, when it is
/// off): a voluntary move (failback) waits for that.
pub(super) fn within_lag(g: &Group, nodes: &Nodes, node: &str, now: Now) -> bool {
    let limit = g.policy().max_sync_lag;
    limit.is_zero() || copy_age(g, nodes, node, now).is_some_and(|age| age <= limit)
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
