//! What the sync tasks and the rest of the agent share: this node's roles
//! as the sync tasks need them (`RoleBoard`, from the driver), and each
//! sync's state (`SyncBoard`: reported in heartbeats, passed to hooks as
//! FAILOVER_SYNC_STATE) with the gate that keeps a standby's copy from
//! being replaced once the node acts as primary.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::v1 as pb;
use proto::vocab::{Role, SyncState};

/// This node's role in one group, as the sync tasks see it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleView {
    pub role: Role,
    pub epoch: u64,
    pub primary: Option<String>,
    pub primary_peer: Option<String>,
    /// While primary: until when (boot clock) it may act.
    pub acting_until: Option<Duration>,
}

impl RoleView {
    pub fn may_act(&self, now: Duration) -> bool {
        self.role == Role::Primary && self.acting_until.is_some_and(|until| now < until)
    }
}

/// Every group's role view, by group.
pub type RoleBoard = BTreeMap<String, RoleView>;

/// What a status reads at the moment it is sent.
#[derive(Clone, Default)]
pub struct Live {
    /// When the copy was last known to be the latest (its age).
    pub confirmed: Option<Instant>,
    /// The bytes of content sent (as primary) and received (as standby)
    /// so far.
    pub sent: Arc<AtomicU64>,
    pub received: Arc<AtomicU64>,
}

#[derive(Clone, Default)]
pub struct SyncBoard(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    /// By (sync, group), with what is counted when a heartbeat goes out.
    statuses: BTreeMap<(String, String), (pb::SyncStatus, Live)>,
    /// Each sync's groups (empty: all) and state, for a group it has not
    /// reported on yet (a hook that runs before the sync's first round).
    defaults: BTreeMap<String, (Vec<String>, SyncState)>,
    /// Groups in which this node started acting as primary.
    acting: HashSet<String>,
}

impl SyncBoard {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panicking holder leaves plain data behind: keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every sync's state, for a heartbeat.
    pub fn statuses(&self) -> Vec<pb::SyncStatus> {
        self.inner()
            .statuses
            .values()
            .map(|(status, live)| {
                let mut status = status.clone();
                status.bytes = live
                    .sent
                    .load(Ordering::Relaxed)
                    .saturating_add(live.received.load(Ordering::Relaxed));
                status.age_ms = if status.state == pb::SyncState::Source as i32 {
                    Some(0)
                } else if status.snapshot.is_empty() {
                    None
                } else {
                    live.confirmed
                        .map(|at| proto::duration::to_ms(at.elapsed()))
                };
                status
            })
            .collect()
    }

    /// Replaces what `sync` reports; `state` stands for it in groups it
    /// has not reported on.
    pub fn set(
        &self,
        sync: &str,
        groups: &[String],
        state: SyncState,
        statuses: Vec<(pb::SyncStatus, Live)>,
    ) {
        let mut inner = self.inner();
        inner
            .defaults
            .insert(sync.to_owned(), (groups.to_vec(), state));
        inner.statuses.retain(|(name, _), _| name != sync);
        for (s, live) in statuses {
            inner
                .statuses
                .insert((sync.to_owned(), s.group.clone()), (s, live));
        }
    }

    /// FAILOVER_SYNC_STATE for `group`: the worst of its syncs (`none`,
    /// then `stale`, then `fresh`; the source counts as fresh), or `None`
    /// when no sync follows the group.
    pub fn hook_state(&self, group: &str) -> Option<&'static str> {
        let inner = self.inner();
        let rank = |state: SyncState| match state {
            SyncState::Source | SyncState::Fresh => 2,
            SyncState::Stale => 1,
            SyncState::None => 0,
        };
        let worst = inner
            .defaults
            .iter()
            .filter(|(_, (groups, _))| groups.is_empty() || groups.iter().any(|g| g == group))
            .map(
                |(sync, (_, state))| match inner.statuses.get(&(sync.clone(), group.to_owned())) {
                    Some((s, _)) => rank(SyncState::try_from(s.state).unwrap_or(SyncState::None)),
                    None => rank(*state),
                },
            )
            .min()?;
        Some(match worst {
            2 => "fresh",
            1 => "stale",
            _ => "none",
        })
    }

    /// The node starts (or stops) acting as primary of `group`: from now
    /// on no fetched snapshot replaces its copy.
    pub fn set_acting(&self, group: &str, acting: bool) {
        let mut inner = self.inner();
        if acting {
            inner.acting.insert(group.to_owned());
        } else {
            inner.acting.remove(group);
        }
    }

    /// Runs `replace` (a copy's swap) unless the node acts as primary of
    /// one of `groups`; the gate stays closed meanwhile, so a primary's
    /// hook starts either before (and nothing is replaced) or after it.
    pub fn unless_acting<R>(&self, groups: &[String], replace: impl FnOnce() -> R) -> Option<R> {
        let inner = self.inner();
        if groups.iter().any(|g| inner.acting.contains(g)) {
            return None;
        }
        let result = replace();
        drop(inner);
        Some(result)
    }
}
