//! The agent's role table: its role, epoch and lease in each group, and the
//! rules for accepting commands. Pure: time comes in as an argument
//! (boot-clock `Duration`s, see `clock.rs`), nothing here does IO.
//!
//! **Architecture invariant (epochs):** a command whose epoch is lower than
//! the highest this agent has seen for the group is refused. At an equal
//! epoch only a step-down, or a fenced primary resuming, is accepted.
//!
//! **Architecture invariant (lease):** the agent acts as primary only while
//! `now < lease_until`; a grant for heartbeat `seq` sets `lease_until` to
//! `sent(seq) + ttl`, and only a grant for the current epoch counts.

use std::collections::BTreeMap;
use std::time::Duration;

use thiserror::Error;

/// Allowed transitions: `Secondary -> Primary` (higher epoch),
/// `Primary -> Secondary` (step-down), `Primary -> Fenced` (lease ran out),
/// `Fenced -> Primary` (same or higher epoch, or a valid grant of the same
/// epoch), `Fenced -> Secondary`.
pub use proto::vocab::{Assignment, Fencing, Role, StandbyMode};

/// This node's state in one group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupState {
    pub role: Role,
    /// The epoch of the current assignment: the highest seen for the group.
    pub epoch: u64,
    pub primary: Option<String>,
    pub standby_mode: StandbyMode,
    pub fencing: Fencing,
    pub shutdown_grace: Duration,
    /// Where the primary serves its synced paths, if known.
    pub primary_peer: Option<String>,
    /// While primary: until when (boot clock) the lease lets it act.
    pub lease_until: Option<Duration>,
    /// The node was released from the group while primary: it steps down,
    /// and the group is forgotten once its hook has run.
    pub released: bool,
}

/// How long before its lease ends the agent stops acting: a tenth of the
/// lease, at most 200 ms. The lease arithmetic already guarantees the lease
/// ends before the coordinator's wait; this margin absorbs the agent's own
/// scheduling delay (a timer that fires late on a loaded machine).
pub fn fence_margin(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_millis(200))
}

#[derive(Debug, Error, PartialEq)]
pub enum Refusal {
    #[error("group {group}: epoch {got} is older than epoch {seen} already seen")]
    StaleEpoch { group: String, got: u64, seen: u64 },
    #[error(
        "group {group}: cannot become primary at epoch {epoch} as a secondary of that same epoch"
    )]
    SameEpochPromotion { group: String, epoch: u64 },
}

#[derive(Debug, Default)]
pub struct Roles {
    groups: BTreeMap<String, GroupState>,
}

impl Roles {
    pub fn get(&self, group: &str) -> Option<&GroupState> {
        self.groups.get(group)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &GroupState)> {
        self.groups.iter()
    }

    /// Applies an assignment. `Ok(true)` when something changed.
    pub fn assign(&mut self, a: Assignment) -> Result<bool, Refusal> {
        let Some(current) = self.groups.get_mut(&a.group) else {
            self.groups.insert(
                a.group.clone(),
                GroupState {
                    role: a.role,
                    epoch: a.epoch,
                    primary: a.primary,
                    standby_mode: a.standby_mode,
                    fencing: a.fencing,
                    shutdown_grace: a.shutdown_grace,
                    primary_peer: a.primary_peer,
                    lease_until: None,
                    released: false,
                },
            );
            return Ok(true);
        };
        if a.epoch < current.epoch {
            return Err(Refusal::StaleEpoch {
                group: a.group,
                got: a.epoch,
                seen: current.epoch,
            });
        }
        let same_epoch = a.epoch == current.epoch;
        if same_epoch && a.role == Role::Primary && current.role == Role::Secondary {
            return Err(Refusal::SameEpochPromotion {
                group: a.group,
                epoch: a.epoch,
            });
        }
        // A lease belongs to one epoch; it survives only an identical
        // re-assignment (e.g. after reconnecting to a restarted coordinator).
        let keeps_lease = same_epoch && a.role == Role::Primary && current.role == Role::Primary;
        let next = GroupState {
            role: a.role,
            epoch: a.epoch,
            primary: a.primary,
            standby_mode: a.standby_mode,
            fencing: a.fencing,
            shutdown_grace: a.shutdown_grace,
            primary_peer: a.primary_peer,
            lease_until: if keeps_lease {
                current.lease_until
            } else {
                None
            },
            released: false,
        };
        let changed = *current != next;
        *current = next;
        Ok(changed)
    }

    /// Extends the lease of `group` to `until` if this node is its primary
    /// at `epoch`. A grant that is still valid at `now` also lets a fenced
    /// primary of that epoch resume: the coordinator still counts it as the
    /// primary and accounts for exactly this lease. Returns whether the
    /// grant was used.
    pub fn grant(&mut self, group: &str, epoch: u64, until: Duration, now: Duration) -> bool {
        let Some(g) = self.groups.get_mut(group) else {
            return false;
        };
        if g.epoch != epoch {
            return false;
        }
        match g.role {
            Role::Primary => {
                if g.lease_until.is_none_or(|u| u < until) {
                    g.lease_until = Some(until);
                }
                true
            }
            Role::Fenced if until > now => {
                g.role = Role::Primary;
                g.lease_until = Some(until);
                true
            }
            _ => false,
        }
    }

    /// The node is no longer a member of `group`. A primary steps down
    /// first (its group is forgotten by [`Roles::forget_released`]).
    pub fn release(&mut self, group: &str, epoch: u64) -> Result<(), Refusal> {
        let Some(g) = self.groups.get_mut(group) else {
            return Ok(());
        };
        if epoch < g.epoch {
            return Err(Refusal::StaleEpoch {
                group: group.to_owned(),
                got: epoch,
                seen: g.epoch,
            });
        }
        if g.role == Role::Primary {
            g.role = Role::Secondary;
            g.epoch = epoch;
            g.primary = None;
            g.primary_peer = None;
            g.lease_until = None;
            g.released = true;
        } else {
            self.groups.remove(group);
        }
        Ok(())
    }

    /// The agent is stopping: it steps down, at the same epoch, in every
    /// group where it is primary and the group wants no shutdown grace (so
    /// the role can move at once). Returns those groups.
    pub fn step_down_for_shutdown(&mut self) -> Vec<String> {
        let mut stepped = Vec::new();
        for (name, g) in &mut self.groups {
            if g.role == Role::Primary && g.shutdown_grace.is_zero() {
                g.role = Role::Secondary;
                g.primary = None;
                g.primary_peer = None;
                g.lease_until = None;
                stepped.push(name.clone());
            }
        }
        stepped
    }

    /// Forgets a released group once its step-down has run.
    pub fn forget_released(&mut self, group: &str) {
        if self.groups.get(group).is_some_and(|g| g.released) {
            self.groups.remove(group);
        }
    }

    /// Fences every strict primary whose lease has ended; returns them.
    pub fn fence_expired(&mut self, now: Duration) -> Vec<String> {
        let mut fenced = Vec::new();
        for (name, g) in &mut self.groups {
            let expired = g.lease_until.is_some_and(|until| until <= now);
            if g.role == Role::Primary && g.fencing == Fencing::Strict && expired {
                g.role = Role::Fenced;
                g.lease_until = None;
                fenced.push(name.clone());
            }
        }
        fenced
    }

    /// Whether this node may act as primary of `group` now.
    pub fn may_act(&self, group: &str, now: Duration) -> bool {
        self.groups.get(group).is_some_and(|g| {
            g.role == Role::Primary
                && match g.lease_until {
                    Some(until) => now < until || g.fencing == Fencing::None,
                    None => false,
                }
        })
    }

    /// The earliest moment a strict primary's lease ends.
    pub fn next_lease_end(&self) -> Option<Duration> {
        self.groups
            .values()
            .filter(|g| g.role == Role::Primary && g.fencing == Fencing::Strict)
            .filter_map(|g| g.lease_until)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(epoch: u64, role: Role) -> Assignment {
        Assignment {
            group: "g".into(),
            epoch,
            role,
            primary: (role == Role::Primary).then(|| "me".into()),
            standby_mode: StandbyMode::Hot,
            fencing: Fencing::Strict,
            shutdown_grace: Duration::ZERO,
            primary_peer: None,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn lower_epochs_are_refused() {
        let mut roles = Roles::default();
        roles.assign(assignment(5, Role::Secondary)).unwrap();
        let err = roles.assign(assignment(4, Role::Primary)).unwrap_err();
        assert!(matches!(
            err,
            Refusal::StaleEpoch {
                got: 4,
                seen: 5,
                ..
            }
        ));
        assert_eq!(roles.get("g").unwrap().role, Role::Secondary);
        assert!(roles.release("g", 3).is_err());
    }

    #[test]
    fn a_secondary_is_not_promoted_at_its_own_epoch() {
        let mut roles = Roles::default();
        roles.assign(assignment(5, Role::Secondary)).unwrap();
        assert!(roles.assign(assignment(5, Role::Primary)).is_err());
        assert!(roles.assign(assignment(6, Role::Primary)).unwrap());
    }

    #[test]
    fn no_lease_no_acting_and_grants_only_for_the_current_epoch() {
        let mut roles = Roles::default();
        roles.assign(assignment(2, Role::Primary)).unwrap();
        assert!(!roles.may_act("g", secs(0)), "assigned but not yet granted");
        assert!(
            !roles.grant("g", 1, secs(10), secs(0)),
            "grant of an older epoch"
        );
        assert!(roles.grant("g", 2, secs(10), secs(0)));
        assert!(roles.may_act("g", secs(9)));
        assert!(!roles.may_act("g", secs(10)));
    }

    #[test]
    fn an_expired_lease_fences_a_strict_primary() {
        let mut roles = Roles::default();
        roles.assign(assignment(2, Role::Primary)).unwrap();
        roles.grant("g", 2, secs(10), secs(0));
        assert!(roles.fence_expired(secs(9)).is_empty());
        assert_eq!(roles.fence_expired(secs(10)), ["g"]);
        assert_eq!(roles.get("g").unwrap().role, Role::Fenced);
        assert!(!roles.may_act("g", secs(10)));
        // A late grant whose lease already ended cannot revive it.
        assert!(!roles.grant("g", 2, secs(10), secs(11)));
        assert_eq!(roles.get("g").unwrap().role, Role::Fenced);
    }

    #[test]
    fn a_valid_grant_of_the_same_epoch_lets_a_fenced_primary_resume() {
        let mut roles = Roles::default();
        roles.assign(assignment(2, Role::Primary)).unwrap();
        roles.grant("g", 2, secs(10), secs(0));
        roles.fence_expired(secs(10));
        assert!(roles.grant("g", 2, secs(15), secs(11)));
        assert!(roles.may_act("g", secs(12)));
        // Not a grant of another epoch.
        roles.fence_expired(secs(15));
        assert!(!roles.grant("g", 3, secs(20), secs(16)));
    }

    #[test]
    fn fencing_none_keeps_acting_past_the_lease() {
        let mut roles = Roles::default();
        let mut a = assignment(2, Role::Primary);
        a.fencing = Fencing::None;
        roles.assign(a).unwrap();
        roles.grant("g", 2, secs(10), secs(0));
        assert!(roles.fence_expired(secs(11)).is_empty());
        assert!(roles.may_act("g", secs(11)));
    }

    #[test]
    fn a_fenced_primary_may_resume_at_the_same_epoch_after_a_new_grant() {
        let mut roles = Roles::default();
        roles.assign(assignment(2, Role::Primary)).unwrap();
        roles.grant("g", 2, secs(10), secs(0));
        roles.fence_expired(secs(10));
        assert!(roles.assign(assignment(2, Role::Primary)).unwrap());
        assert!(!roles.may_act("g", secs(11)));
        roles.grant("g", 2, secs(20), secs(11));
        assert!(roles.may_act("g", secs(11)));
    }

    #[test]
    fn an_identical_reassignment_keeps_the_lease() {
        let mut roles = Roles::default();
        roles.assign(assignment(2, Role::Primary)).unwrap();
        roles.grant("g", 2, secs(10), secs(0));
        assert!(!roles.assign(assignment(2, Role::Primary)).unwrap());
        assert!(roles.may_act("g", secs(5)));
    }

    #[test]
    fn a_released_primary_steps_down_then_forgets_the_group() {
        let mut roles = Roles::default();
        roles.assign(assignment(2, Role::Primary)).unwrap();
        roles.grant("g", 2, secs(10), secs(0));
        roles.release("g", 3).unwrap();
        let g = roles.get("g").unwrap();
        assert_eq!((g.role, g.released), (Role::Secondary, true));
        roles.forget_released("g");
        assert!(roles.get("g").is_none());
    }

    #[test]
    fn the_fence_margin_is_a_tenth_of_the_lease_at_most_200ms() {
        assert_eq!(
            fence_margin(Duration::from_secs(1)),
            Duration::from_millis(100)
        );
        assert_eq!(
            fence_margin(Duration::from_secs(3)),
            Duration::from_millis(200)
        );
        assert_eq!(
            fence_margin(Duration::from_millis(50)),
            Duration::from_millis(5)
        );
    }

    #[test]
    fn stopping_steps_down_only_where_the_group_wants_no_grace() {
        let mut roles = Roles::default();
        roles.assign(assignment(2, Role::Primary)).unwrap();
        let mut held = assignment(4, Role::Primary);
        held.group = "h".into();
        held.shutdown_grace = secs(60);
        roles.assign(held).unwrap();
        assert_eq!(roles.step_down_for_shutdown(), ["g"]);
        assert_eq!(roles.get("g").unwrap().role, Role::Secondary);
        assert_eq!(roles.get("g").unwrap().epoch, 2);
        assert_eq!(roles.get("h").unwrap().role, Role::Primary);
    }

    #[test]
    fn next_lease_end_is_the_earliest_strict_primary() {
        let mut roles = Roles::default();
        roles.assign(assignment(2, Role::Primary)).unwrap();
        roles.grant("g", 2, secs(10), secs(0));
        let mut other = assignment(1, Role::Primary);
        other.group = "h".into();
        roles.assign(other).unwrap();
        roles.grant("h", 1, secs(7), secs(0));
        assert_eq!(roles.next_lease_end(), Some(secs(7)));
    }
}
