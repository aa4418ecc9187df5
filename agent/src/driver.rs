//! The role and hook driver: the one owner of this node's role table and of
//! its hook slots. It applies what the coordinator said (assignments,
//! grants, releases), fences expired leases, and decides which hook runs
//! when; it knows nothing of connections.
//!
//! **Architecture invariant (fence first):** the agent's loop calls
//! [`Driver::fence_expired`] at the top of every turn, before any message,
//! timer or hook result is handled; so an agent that wakes from SIGSTOP or
//! suspend fences itself before it does anything else as primary. A
//! primary's hook starts only while its lease is valid, checked at the
//! moment it starts.

use std::collections::HashMap;
use std::time::Duration;

use proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::config::HooksConfig;
use crate::hooks::{self, HookEnv, HookRun, Outcome};
use crate::role_log::RoleLog;
use crate::roles::{Assignment, Role, Roles, StandbyMode, fence_margin};
use crate::sync::{RoleBoard, RoleView, SyncBoard};

/// The longest lease a grant may carry (the longest failover timeout a
/// group may have); a longer one is refused as corrupt.
const MAX_LEASE: Duration = Duration::from_secs(600);

/// What a hook run is about: a new value means a new hook must run.
#[derive(Debug, Clone, PartialEq)]
enum HookKey {
    Primary {
        epoch: u64,
    },
    /// A secondary's hook runs again when the primary it follows changes,
    /// or how it should stand by (hot, warm, cold).
    Secondary {
        primary: Option<String>,
        standby_mode: StandbyMode,
    },
    Fenced {
        epoch: u64,
    },
}

impl HookKey {
    fn role(&self) -> Role {
        match self {
            HookKey::Primary { .. } => Role::Primary,
            HookKey::Secondary { .. } => Role::Secondary,
            HookKey::Fenced { .. } => Role::Fenced,
        }
    }
}

/// The hook state of one group.
#[derive(Default)]
struct HookSlot {
    last_started: Option<HookKey>,
    /// Cancels the running hook, if one runs.
    running: Option<CancellationToken>,
}

/// A hook that finished, as its task reports it.
pub struct HookDone {
    group: String,
    env: HookEnv,
    run: HookRun,
}

pub struct Driver {
    node_id: String,
    /// State syncs: FAILOVER_SYNC_STATE, and the gate that keeps a fetched
    /// copy from replacing this node's while it acts as primary.
    syncs: SyncBoard,
    hooks: HooksConfig,
    roles: Roles,
    role_log: RoleLog,
    slots: HashMap<String, HookSlot>,
    done_tx: mpsc::UnboundedSender<HookDone>,
    done_rx: mpsc::UnboundedReceiver<HookDone>,
    /// Hook results waiting to be sent to the coordinator.
    reports: Vec<pb::HookResult>,
    /// The shortest lease this node was granted lately: how fast it must
    /// reconnect after losing its session.
    shortest_lease: Option<Duration>,
}

impl Driver {
    pub fn new(node_id: String, hooks: HooksConfig, role_log: RoleLog, syncs: SyncBoard) -> Driver {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Driver {
            syncs,
            node_id,
            hooks,
            roles: Roles::default(),
            role_log,
            slots: HashMap::new(),
            done_tx,
            done_rx,
            reports: Vec::new(),
            shortest_lease: None,
        }
    }

    /// The hook results produced since the last call, to send.
    pub fn take_reports(&mut self) -> Vec<pb::HookResult> {
        std::mem::take(&mut self.reports)
    }

    /// The shortest lease granted to this node so far, if any.
    pub fn shortest_lease(&self) -> Option<Duration> {
        self.shortest_lease
    }

    /// How long until the earliest lease ends (to fence it on time).
    pub fn until_lease_end(&self) -> Option<Duration> {
        self.roles
            .next_lease_end()
            .map(|end| end.saturating_sub(clock::now()))
    }

    /// The next hook that finished.
    pub async fn hook_done(&mut self) -> Option<HookDone> {
        self.done_rx.recv().await
    }

    /// Hooks started from now on run this way (a running one finishes as
    /// it began).
    pub fn set_hooks(&mut self, hooks: HooksConfig) {
        self.hooks = hooks;
    }

    /// Whether any hook is still running.
    pub fn hooks_running(&self) -> bool {
        self.slots.values().any(|s| s.running.is_some())
    }

    /// Kills every running hook.
    pub fn cancel_hooks(&self) {
        for slot in self.slots.values() {
            if let Some(running) = &slot.running {
                running.cancel();
            }
        }
    }

    /// This node's roles as the state syncs need them.
    pub fn role_board(&self) -> RoleBoard {
        self.roles
            .iter()
            .map(|(group, g)| {
                let acting_until = match (g.role, g.lease_until) {
                    (Role::Primary, Some(_)) if g.fencing == crate::roles::Fencing::None => {
                        Some(Duration::MAX)
                    }
                    (Role::Primary, Some(until)) => Some(until),
                    _ => None,
                };
                (
                    group.clone(),
                    RoleView {
                        role: g.role,
                        epoch: g.epoch,
                        primary: g.primary.clone(),
                        primary_peer: g.primary_peer.clone(),
                        acting_until,
                    },
                )
            })
            .collect()
    }

    /// The roles this agent holds, as told to the coordinator.
    pub fn claims(&self) -> Vec<pb::GroupRole> {
        self.roles
            .iter()
            .map(|(group, g)| pb::GroupRole {
                group: group.clone(),
                role: pb::Role::from(g.role) as i32,
                epoch: g.epoch,
            })
            .collect()
    }

    /// Fences every strict primary whose lease has ended.
    pub fn fence_expired(&mut self) {
        for group in self.roles.fence_expired(clock::now()) {
            let epoch = self.roles.get(&group).map_or(0, |g| g.epoch);
            tracing::warn!(%group, epoch, role = "fenced", "lease expired without renewal: fenced");
            self.role_log
                .record("lease_expired", &group, epoch, "fenced", "");
        }
    }

    /// The agent is stopping: steps down where the group wants no shutdown
    /// grace (so the role can move at once).
    pub fn step_down_for_shutdown(&mut self) {
        for group in self.roles.step_down_for_shutdown() {
            let epoch = self.roles.get(&group).map_or(0, |g| g.epoch);
            tracing::info!(%group, epoch, role = "secondary", "stepping down before stopping");
        }
    }

    /// Starts the hook each group needs, one at a time per group.
    pub fn drive_hooks(&mut self) {
        let now = clock::now();
        let mut starts = Vec::new();
        for (group, state) in self.roles.iter() {
            let desired = match state.role {
                Role::Primary if self.roles.may_act(group, now) => {
                    HookKey::Primary { epoch: state.epoch }
                }
                // Assigned but not yet granted a lease: nothing to run yet.
                Role::Primary => continue,
                Role::Secondary => HookKey::Secondary {
                    primary: state.primary.clone(),
                    standby_mode: state.standby_mode,
                },
                Role::Fenced => HookKey::Fenced { epoch: state.epoch },
            };
            let slot = self.slots.entry(group.clone()).or_default();
            if slot.last_started.as_ref() == Some(&desired) {
                continue;
            }
            if let Some(running) = &slot.running {
                // Hooks of one group never overlap: the new one starts when
                // the running one has exited. A promotion that is no longer
                // wanted is stopped at once, and so is whatever runs when
                // the node must become primary; a demotion (fenced) followed
                // by another (secondary) runs to its end, so the service is
                // surely stopped before the next hook starts.
                let demoting = |k: &HookKey| k.role() != Role::Primary;
                if !(slot.last_started.as_ref().is_some_and(demoting) && demoting(&desired)) {
                    running.cancel();
                }
                continue;
            }
            let previous = slot
                .last_started
                .as_ref()
                .map_or("none", |k| k.role().as_str());
            let env = HookEnv {
                group: group.clone(),
                node: self.node_id.clone(),
                role: desired.role().as_str(),
                previous_role: previous,
                epoch: state.epoch,
                primary: state.primary.clone().unwrap_or_default(),
                standby_mode: state.standby_mode.as_str(),
                sync_state: self.syncs.hook_state(group),
            };
            if desired.role() == Role::Primary {
                // From now on no fetched copy replaces this node's.
                self.syncs.set_acting(group, true);
            }
            slot.last_started = Some(desired);
            starts.push(env);
        }
        for env in starts {
            self.start_hook(env);
        }
    }

    fn start_hook(&mut self, env: HookEnv) {
        self.role_log.record(
            "effective",
            &env.group,
            env.epoch,
            env.role,
            env.previous_role,
        );
        let Some(command) = self.hooks.on_role_change.clone() else {
            tracing::info!(group = %env.group, epoch = env.epoch, role = env.role, previous_role = env.previous_role, "role change (no hook configured)");
            self.report(&env, Outcome::NotConfigured, None, String::new());
            return;
        };
        let cancel = CancellationToken::new();
        self.slots.entry(env.group.clone()).or_default().running = Some(cancel.clone());
        let timeout = self.hooks.timeout;
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let run = hooks::run(&command, &env, timeout, cancel).await;
            let _ = done.send(HookDone {
                group: env.group.clone(),
                env,
                run,
            });
        });
    }

    pub fn on_hook_done(&mut self, done: HookDone) {
        if let Some(slot) = self.slots.get_mut(&done.group) {
            slot.running = None;
        }
        let HookRun {
            outcome,
            exit_code,
            detail,
        } = done.run;
        if outcome == Outcome::Succeeded {
            tracing::info!(group = %done.group, epoch = done.env.epoch, role = done.env.role, "hook succeeded");
        } else if outcome == Outcome::Superseded {
            // Expected: a newer role change needs its own hook at once.
            tracing::info!(group = %done.group, epoch = done.env.epoch, role = done.env.role, "hook stopped: a newer role change superseded it");
        } else {
            tracing::warn!(group = %done.group, epoch = done.env.epoch, role = done.env.role, ?outcome, %detail, "hook did not succeed");
        }
        self.role_log.record(
            "hook_done",
            &done.group,
            done.env.epoch,
            done.env.role,
            outcome.as_str(),
        );
        self.report(&done.env, outcome, exit_code, detail);
        if done.env.role == Role::Secondary.as_str() {
            self.roles.forget_released(&done.group);
            if self.roles.get(&done.group).is_none() {
                self.slots.remove(&done.group);
            }
        }
    }

    /// Queues a hook result for the coordinator.
    fn report(&mut self, env: &HookEnv, outcome: Outcome, exit_code: Option<i32>, detail: String) {
        let role = env.role.parse().unwrap_or(Role::Fenced);
        if role != Role::Primary && outcome.took_effect() {
            // The service stood down: the copy may be replaced again.
            self.syncs.set_acting(&env.group, false);
        }
        self.reports.push(pb::HookResult {
            group: env.group.clone(),
            epoch: env.epoch,
            role: pb::Role::from(role) as i32,
            outcome: pb::HookOutcome::from(outcome) as i32,
            exit_code,
            detail,
        });
    }

    /// Lease grants acknowledging a heartbeat sent at `sent_at` (boot
    /// clock): each extends the lease of its group, counted from then.
    pub fn on_grants(&mut self, sent_at: Duration, grants: Vec<pb::LeaseGrant>) {
        let now = clock::now();
        for grant in grants {
            let ttl = Duration::from_millis(grant.lease_ttl_ms);
            if ttl > MAX_LEASE || ttl.is_zero() {
                tracing::warn!(group = %grant.group, ?ttl, "refused a lease grant outside any failover timeout");
                continue;
            }
            let Some(until) = sent_at.checked_add(ttl - fence_margin(ttl)) else {
                continue;
            };
            self.shortest_lease = Some(self.shortest_lease.map_or(ttl, |s| s.min(ttl)));
            let was_fenced = self
                .roles
                .get(&grant.group)
                .is_some_and(|g| g.role == Role::Fenced);
            if self.roles.grant(&grant.group, grant.epoch, until, now) && was_fenced {
                tracing::info!(group = %grant.group, epoch = grant.epoch, role = "primary", "lease renewed: resuming as primary");
                self.role_log.record(
                    "assigned",
                    &grant.group,
                    grant.epoch,
                    "primary",
                    "lease renewed",
                );
            }
        }
    }

    pub fn on_assignment(&mut self, a: pb::Assignment) {
        let assignment = match Assignment::try_from(a) {
            Ok(assignment) => assignment,
            Err(e) => {
                tracing::warn!("assignment ignored: {e}");
                return;
            }
        };
        let role = assignment.role;
        let group = assignment.group.clone();
        let epoch = assignment.epoch;
        let previous = self.roles.get(&group).map(|g| (g.role, g.epoch));
        let primary = assignment.primary.clone().unwrap_or_default();
        match self.roles.assign(assignment) {
            Ok(true) => {
                tracing::info!(%group, epoch, role = role.as_str(), previous = ?previous, primary, "role assigned");
                self.role_log
                    .record("assigned", &group, epoch, role.as_str(), &primary);
            }
            Ok(false) => {}
            Err(refusal) => {
                tracing::warn!(%refusal, "assignment refused");
                self.role_log.record(
                    "refused",
                    &group,
                    epoch,
                    role.as_str(),
                    &refusal.to_string(),
                );
            }
        }
    }

    pub fn on_release(&mut self, r: pb::Release) {
        match self.roles.release(&r.group, r.epoch) {
            Ok(()) => {
                tracing::info!(group = %r.group, epoch = r.epoch, reason = %r.reason, "released from the group")
            }
            Err(refusal) => tracing::warn!(%refusal, "release refused"),
        }
    }
}
