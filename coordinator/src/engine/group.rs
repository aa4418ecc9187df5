//! One failover group: its durable record and what the running coordinator
//! knows about it. The role is an explicit state — held by a primary (with
//! its lease deadline), stepping down from a former primary, or vacant
//! since some moment for a reason — and every change of role, epoch,
//! membership or settings is a method here. Each keeps the record in step
//! with the state and marks the group changed, so the engine derives
//! exactly one durable write per changed group and step.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::ReplyId;
use crate::model::{GroupRecord, Phase};
use crate::policy::Policy;

/// Who holds the role of a group.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum RoleState {
    /// `node`'s agent `instance` holds the role. It may act until
    /// `lease_until` (as far as this coordinator can tell); nobody else is
    /// promoted before then.
    Held {
        node: String,
        /// `None` only for a record written before instances existed,
        /// until the primary's session claims the role.
        instance: Option<String>,
        lease_until: Option<Instant>,
        /// Since when it has been reporting itself fenced at this epoch:
        /// our grants do not reach it in time.
        fenced_since: Option<Instant>,
        /// Its promote hook failed or timed out at this epoch.
        promote_failed: bool,
    },
    /// `from` was told to step down at the current epoch. Its confirmation
    /// (from `instance`) or the end of its lease ends the wait.
    SteppingDown {
        from: String,
        instance: Option<String>,
        lease_until: Option<Instant>,
    },
    /// Nobody holds the role, since `since_ms` (wall clock), for `reason`.
    /// A lease may still be waited out (after a start, or for a deleted
    /// group of the same name whose holder is unknown).
    Vacant {
        since_ms: u64,
        reason: String,
        lease_until: Option<Instant>,
    },
}

/// A move of the role to `target`: requested by an operator (with a reply
/// to send), or decided by the engine (failback, failing primary).
pub(super) struct Switchover {
    pub(super) target: String,
    pub(super) reply: Option<ReplyId>,
    pub(super) actor: String,
    pub(super) reason: String,
}

/// A member's failed promote hooks in one group.
#[derive(Debug, Clone, Copy)]
pub(super) struct HookFailures {
    /// In a row, since its last promote hook that succeeded.
    pub(super) count: u32,
    pub(super) last: Instant,
}

pub(super) struct Group {
    /// The durable part. Private: only the methods below change it, each
    /// marking the group `changed`.
    record: GroupRecord,
    role: RoleState,
    changed: bool,
    /// The earliest future instant, other than a lease end, at which the
    /// last decision would come out differently (a grace or delay ending).
    pub(super) wake: Option<Instant>,
    /// The instant registered in `Engine::timers` for this group, if any.
    pub(super) timer: Option<Instant>,
    /// A switchover in progress.
    pub(super) switchover: Option<Switchover>,
    /// The last node that held the role, for the event log.
    pub(super) last_primary: Option<String>,
    /// When the role last moved away from a live primary (a step-down),
    /// for `min_failover_interval`.
    pub(super) last_move_away: Option<Instant>,
    /// Members that failed here (lapsed, promote hook failed, service
    /// died) and when: ranked below the others and not the target of a
    /// voluntary move until healthy for `failback_delay` since.
    pub(super) failed: HashMap<String, Instant>,
    /// Members whose promote hook failed, for the retry backoff.
    pub(super) hook_failures: HashMap<String, HookFailures>,
    /// When an agent's claim last raised the epoch.
    pub(super) last_raise: Option<Instant>,
    /// The alarm raised for the current situation, raised once.
    pub(super) alarm: Option<String>,
    pub(super) phase: Phase,
    pub(super) phase_since_ms: u64,
}

/// A role change refused because the epoch cannot grow any further.
#[derive(Debug)]
pub(super) struct EpochExhausted;

impl Group {
    /// A group just created: nobody has held its role.
    pub(super) fn created(record: GroupRecord, now_ms: u64) -> Group {
        Group::with_role(
            record,
            RoleState::Vacant {
                since_ms: now_ms,
                reason: "created".into(),
                lease_until: None,
            },
            now_ms,
        )
    }

    /// A group loaded at start-up. If it ever had a primary, a lease of
    /// up to `lease_until` may be outstanding: the primary keeps the role
    /// until then, or (with none recorded) nobody is promoted before.
    pub(super) fn recovered(record: GroupRecord, lease_until: Instant, now_ms: u64) -> Group {
        let role = match (&record.primary, record.epoch) {
            (Some(node), _) => RoleState::Held {
                node: node.clone(),
                instance: record.primary_instance.clone(),
                lease_until: Some(lease_until),
                fenced_since: None,
                promote_failed: false,
            },
            (None, 0) => RoleState::Vacant {
                since_ms: now_ms,
                reason: "never had a primary".into(),
                lease_until: None,
            },
            (None, _) => RoleState::Vacant {
                since_ms: now_ms,
                reason: "coordinator started".into(),
                lease_until: Some(lease_until),
            },
        };
        let mut g = Group::with_role(record, role, now_ms);
        g.last_primary = g.record.primary.clone();
        g
    }

    fn with_role(record: GroupRecord, role: RoleState, now_ms: u64) -> Group {
        Group {
            record,
            role,
            changed: false,
            wake: None,
            timer: None,
            switchover: None,
            last_primary: None,
            last_move_away: None,
            failed: HashMap::new(),
            hook_failures: HashMap::new(),
            last_raise: None,
            alarm: None,
            phase: Phase::NoPrimary,
            phase_since_ms: now_ms,
        }
    }

    // --- reading ---

    pub(super) fn name(&self) -> &str {
        &self.record.name
    }

    pub(super) fn record(&self) -> &GroupRecord {
        &self.record
    }

    pub(super) fn role(&self) -> &RoleState {
        &self.role
    }

    pub(super) fn epoch(&self) -> u64 {
        self.record.epoch
    }

    pub(super) fn policy(&self) -> &Policy {
        &self.record.policy
    }

    pub(super) fn members(&self) -> &[String] {
        &self.record.members
    }

    pub(super) fn is_member(&self, node: &str) -> bool {
        self.record.position(node).is_some()
    }

    pub(super) fn in_maintenance(&self, node: &str) -> bool {
        self.record.in_maintenance(node)
    }

    /// The primary, if the role is held.
    pub(super) fn primary(&self) -> Option<&str> {
        match &self.role {
            RoleState::Held { node, .. } => Some(node),
            _ => None,
        }
    }

    /// Whether `node`'s agent `instance` holds the role.
    pub(super) fn held_by(&self, node: &str, instance: &str) -> bool {
        matches!(&self.role, RoleState::Held { node: n, instance: Some(i), .. }
            if n == node && i == instance)
    }

    /// Whether `node`'s agent `instance` is the one stepping down.
    pub(super) fn stepping_down_by(&self, node: &str, instance: &str) -> bool {
        matches!(&self.role, RoleState::SteppingDown { from, instance: Some(i), .. }
            if from == node && i == instance)
    }

    /// The node stepping down, if one is.
    pub(super) fn stepping_down(&self) -> Option<&str> {
        match &self.role {
            RoleState::SteppingDown { from, .. } => Some(from),
            _ => None,
        }
    }

    /// The holder's agent instance, while the role is held.
    pub(super) fn holder_instance(&self) -> Option<&str> {
        match &self.role {
            RoleState::Held { instance, .. } => instance.as_deref(),
            _ => None,
        }
    }

    /// Until when someone who held this group's lease may still act.
    pub(super) fn lease_until(&self) -> Option<Instant> {
        match &self.role {
            RoleState::Held { lease_until, .. }
            | RoleState::SteppingDown { lease_until, .. }
            | RoleState::Vacant { lease_until, .. } => *lease_until,
        }
    }

    pub(super) fn lease_live(&self, now: Instant) -> bool {
        self.lease_until().is_some_and(|t| t > now)
    }

    /// The earliest deadline the group waits for: a lease end or a wake-up.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.lease_until().into_iter().chain(self.wake).min()
    }

    pub(super) fn promote_failed(&self) -> bool {
        matches!(
            self.role,
            RoleState::Held {
                promote_failed: true,
                ..
            }
        )
    }

    pub(super) fn fenced_since(&self) -> Option<Instant> {
        match self.role {
            RoleState::Held { fenced_since, .. } => fenced_since,
            _ => None,
        }
    }

    /// The record to write if anything durable changed since the last
    /// call: the engine's one write per changed group.
    pub(super) fn take_write(&mut self) -> Option<GroupRecord> {
        std::mem::take(&mut self.changed).then(|| self.record.clone())
    }

    // --- the role ---

    /// Makes `node`'s agent `instance` primary with a new epoch.
    pub(super) fn promote(&mut self, node: &str, instance: &str) -> Result<u64, EpochExhausted> {
        let epoch = self.next_epoch()?;
        self.record.epoch = epoch;
        self.record.primary = Some(node.to_owned());
        self.record.primary_instance = Some(instance.to_owned());
        // Every earlier lease has ended: only this one's length counts.
        self.record.granted_ttl_max = Some(self.record.policy.failover_timeout);
        self.role = RoleState::Held {
            node: node.to_owned(),
            instance: Some(instance.to_owned()),
            lease_until: None,
            fenced_since: None,
            promote_failed: false,
        };
        self.alarm = None;
        self.failed.remove(node);
        self.last_primary = Some(node.to_owned());
        self.changed = true;
        Ok(epoch)
    }

    /// Tells the primary to step down: a new epoch, no primary, and its
    /// lease waited out unless it confirms. Returns the former primary.
    pub(super) fn step_down(&mut self, now: Instant) -> Result<(String, u64), EpochExhausted> {
        let RoleState::Held {
            node,
            instance,
            lease_until,
            ..
        } = self.role.clone()
        else {
            return Err(EpochExhausted);
        };
        let epoch = self.next_epoch()?;
        self.record.epoch = epoch;
        self.record.primary = None;
        self.record.primary_instance = None;
        self.role = RoleState::SteppingDown {
            from: node.clone(),
            instance,
            lease_until,
        };
        self.last_move_away = Some(now);
        self.last_primary = Some(node.clone());
        self.changed = true;
        Ok((node, epoch))
    }

    /// The primary is gone (lease over, or it stepped down by itself) and
    /// nobody takes over: a new epoch with no primary.
    pub(super) fn vacate(&mut self, reason: String, now_ms: u64) -> Result<u64, EpochExhausted> {
        let epoch = self.next_epoch()?;
        if let Some(node) = self.primary() {
            self.last_primary = Some(node.to_owned());
        }
        self.record.epoch = epoch;
        self.record.primary = None;
        self.record.primary_instance = None;
        self.role = RoleState::Vacant {
            since_ms: now_ms,
            reason,
            lease_until: None,
        };
        self.changed = true;
        Ok(epoch)
    }

    /// The step-down is over (confirmed, or its lease ran out): the role
    /// is vacant and no lease is outstanding.
    pub(super) fn end_step_down(&mut self, reason: String, now_ms: u64) {
        if let RoleState::SteppingDown { .. } = &self.role {
            self.role = RoleState::Vacant {
                since_ms: now_ms,
                reason,
                lease_until: None,
            };
        }
    }

    /// The primary gave the role up itself (its agent is stopping): its
    /// lease no longer matters.
    pub(super) fn release_lease(&mut self) {
        if let RoleState::Held { lease_until, .. } = &mut self.role {
            *lease_until = None;
        }
    }

    /// A lease may still be held by `holder` (a deleted group of the same
    /// name): nobody is promoted before `until` unless it confirms.
    pub(super) fn await_release(&mut self, holder: Option<(String, String)>, until: Instant) {
        self.role = match holder {
            Some((from, instance)) => RoleState::SteppingDown {
                from,
                instance: Some(instance),
                lease_until: Some(until),
            },
            None => RoleState::Vacant {
                since_ms: self.phase_since_ms,
                reason: "waiting out the lease of a deleted group of this name".into(),
                lease_until: Some(until),
            },
        };
    }

    /// A vacancy that may not be filled before `until`: after a batch the
    /// store could not write, so the next attempt waits instead of
    /// spinning.
    pub(super) fn hold_vacancy(&mut self, until: Instant, why: &str) {
        if let RoleState::Vacant {
            lease_until: held @ None,
            reason,
            ..
        } = &mut self.role
        {
            *held = Some(until);
            *reason = why.to_owned();
        }
    }

    /// A grant was made to the holder: it may act until `until`.
    pub(super) fn extend_lease(&mut self, until: Instant) {
        if let RoleState::Held { lease_until, .. } = &mut self.role
            && lease_until.is_none_or(|current| current < until)
        {
            *lease_until = Some(until);
        }
    }

    /// A lease that has run out means the same as none: forget it, so the
    /// timer only ever holds future instants.
    pub(super) fn forget_expired_lease(&mut self, now: Instant) {
        match &mut self.role {
            RoleState::Held { lease_until, .. }
            | RoleState::SteppingDown { lease_until, .. }
            | RoleState::Vacant { lease_until, .. } => {
                if lease_until.is_some_and(|t| t <= now) {
                    *lease_until = None;
                }
            }
        }
    }

    /// The holder reports itself fenced (or not) at the current epoch.
    pub(super) fn note_fenced(&mut self, fenced: bool, at: Instant) {
        if let RoleState::Held { fenced_since, .. } = &mut self.role {
            match (fenced, *fenced_since) {
                (false, _) => *fenced_since = None,
                (true, None) => *fenced_since = Some(at),
                (true, Some(_)) => {}
            }
        }
    }

    /// The holder's promote hook failed at the current epoch.
    pub(super) fn note_promote_failed(&mut self, now: Instant) {
        if let RoleState::Held {
            node,
            promote_failed,
            ..
        } = &mut self.role
        {
            *promote_failed = true;
            let failures = self
                .hook_failures
                .entry(node.clone())
                .or_insert(HookFailures {
                    count: 0,
                    last: now,
                });
            failures.count = failures.count.saturating_add(1);
            failures.last = now;
            let node = node.clone();
            self.failed.insert(node, now);
        }
    }

    /// Binds the role to `instance`: the primary's session of a record
    /// written before instances existed, or a new process of the same
    /// installation taking over within the shutdown grace.
    pub(super) fn bind_instance(&mut self, new: &str) {
        if let RoleState::Held { instance, .. } = &mut self.role {
            *instance = Some(new.to_owned());
            self.record.primary_instance = Some(new.to_owned());
            self.changed = true;
        }
    }

    /// Moves the epoch up to `epoch` (past an agent's claim).
    pub(super) fn raise_epoch(&mut self, epoch: u64) {
        if epoch > self.record.epoch {
            self.record.epoch = epoch;
            self.changed = true;
        }
    }

    fn next_epoch(&self) -> Result<u64, EpochExhausted> {
        self.record.epoch.checked_add(1).ok_or(EpochExhausted)
    }

    // --- membership and settings (the operators' changes) ---

    pub(super) fn insert_member(&mut self, position: usize, node: &str) {
        let position = position.min(self.record.members.len());
        self.record.members.insert(position, node.to_owned());
        self.changed = true;
    }

    pub(super) fn remove_member(&mut self, node: &str) {
        self.record.members.retain(|m| m != node);
        self.record.maintenance.retain(|m| m != node);
        self.failed.remove(node);
        self.hook_failures.remove(node);
        self.changed = true;
    }

    pub(super) fn move_member(&mut self, node: &str, position: usize) {
        self.record.members.retain(|m| m != node);
        let position = position.min(self.record.members.len());
        self.record.members.insert(position, node.to_owned());
        self.changed = true;
    }

    pub(super) fn set_maintenance(&mut self, node: &str, on: bool) {
        let was = self.record.in_maintenance(node);
        if on && !was {
            self.record.maintenance.push(node.to_owned());
        } else if !on && was {
            self.record.maintenance.retain(|m| m != node);
        }
        self.changed |= on != was;
    }

    /// New settings. A lease granted under the old timeout keeps its
    /// length, so the longest one is remembered for a restart.
    pub(super) fn set_policy(&mut self, policy: Policy) {
        self.record.granted_ttl_max =
            Some(self.record.lease_ttl_bound().max(policy.failover_timeout));
        self.record.policy = policy;
        self.changed = true;
    }

    // --- what decisions ask ---

    /// Whether a planned move or a failing primary waits for
    /// `min_failover_interval` since the last move away from a live
    /// primary; if so, when it may happen.
    pub(super) fn rate_limited_until(&self, now: Instant) -> Option<Instant> {
        let allowed = self.last_move_away? + self.record.policy.min_failover_interval;
        (now < allowed).then_some(allowed)
    }

    /// For a member whose promote hook failed: when it may be tried again
    /// (while nobody else can serve). The backoff starts at
    /// `min_failover_interval` (at least `floor`), doubles with every
    /// failure and is capped at `failback_delay`.
    pub(super) fn hook_retry_at(&self, node: &str, floor: Duration) -> Option<Instant> {
        let f = self.hook_failures.get(node)?;
        let policy = &self.record.policy;
        let base = policy.min_failover_interval.max(floor);
        let doublings = f.count.saturating_sub(1).min(31);
        let backoff = base
            .checked_mul(1u32 << doublings)
            .unwrap_or(policy.failback_delay)
            .min(policy.failback_delay.max(base));
        Some(f.last + backoff)
    }
}
