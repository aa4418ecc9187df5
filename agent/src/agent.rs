//! The agent's main loop: the one owner of the role table, the hook slots
//! and the connection. It sends heartbeats, applies what the coordinator
//! says, fences expired leases, and decides which hook runs when.
//!
//! **Architecture invariant (fence first):** every turn of the loop starts
//! by fencing expired leases, before any message, timer or hook result is
//! handled; so an agent that wakes from SIGSTOP or suspend fences itself
//! before it does anything else as primary. A primary's hook starts only
//! while its lease is valid, checked at the moment it starts.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use proto::v1 as pb;
use proto::v1::agent_message::Kind as Out;
use proto::v1::coordinator_message::Kind as In;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::checks::{self, CheckBoard};
use crate::clock;
use crate::config::AgentConfig;
use crate::connection::{self, Connection};
use crate::hooks::{self, HookEnv, HookRun, Outcome};
use crate::identity::Identity;
use crate::role_log::RoleLog;
use crate::roles::{Assignment, Role, Roles, StandbyMode, fence_margin};

/// Heartbeats remembered for matching acknowledgements. An acknowledgement
/// of an older one is too stale to matter.
const SENT_WINDOW: usize = 256;
/// Hook results kept for a coordinator that is unreachable right now.
const MAX_PENDING_REPORTS: usize = 256;
/// Running hooks get this long to finish when the agent stops.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A session that lasted this long was healthy: reconnect at once.
const STABLE_SESSION: Duration = Duration::from_secs(5);
/// How long a stopping agent waits for the coordinator to take its last
/// messages (hook results, goodbye).
const FLUSH_GRACE: Duration = Duration::from_secs(2);
/// The longest lease a grant may carry (the longest failover timeout a
/// group may have); a longer one is refused as corrupt.
const MAX_LEASE: Duration = Duration::from_secs(600);
/// The heartbeat interval the coordinator may set, clamped to this range.
const HEARTBEAT_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(60));
/// A duplicate is refused this long at least before the agent gives up.
const MIN_DUPLICATE_PATIENCE: Duration = Duration::from_secs(10);

/// The exit status of an agent that gave up because another agent process
/// holds its node id (systemd: `RestartPreventExitStatus=3`).
pub const DUPLICATE_EXIT_STATUS: u8 = 3;

/// Another agent process is connected under this node id; this one stops.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DuplicateNode(pub String);

/// Why a session ended.
struct SessionEnd {
    reason: String,
    /// Refused because another instance of this node is connected; with
    /// the coordinator's silence limit for that instance.
    duplicate: Option<Duration>,
}

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

struct HookDone {
    group: String,
    env: HookEnv,
    run: HookRun,
}

pub struct Agent {
    config: AgentConfig,
    identity: Identity,
    /// Since when every session was refused as a duplicate, and how long
    /// to keep trying.
    refused_as_duplicate: Option<(Instant, Duration, String)>,
    roles: Roles,
    role_log: RoleLog,
    slots: HashMap<String, HookSlot>,
    done_tx: mpsc::UnboundedSender<HookDone>,
    done_rx: mpsc::UnboundedReceiver<HookDone>,
    conn: Option<Connection>,
    connected_at: Instant,
    /// When the coordinator last said anything on this connection.
    last_inbound: Instant,
    heartbeat_interval: Duration,
    heartbeats: Interval,
    next_seq: u64,
    /// `(seq, sent at on the boot clock)` of recent heartbeats.
    sent: VecDeque<(u64, Duration)>,
    /// Hook results not yet delivered.
    pending_reports: VecDeque<pb::HookResult>,
    /// Latest verdicts of the health checks.
    checks: CheckBoard,
}

impl Agent {
    pub fn new(config: AgentConfig) -> anyhow::Result<Agent> {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let interval = Duration::from_millis(500);
        let identity = Identity::load(&config.state_dir)?;
        let role_log = RoleLog::open(
            config.role_log.as_deref(),
            &config.node_id,
            &identity.instance,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot open the role log {}: {e}",
                config
                    .role_log
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display()
            )
        })?;
        Ok(Agent {
            config,
            identity,
            refused_as_duplicate: None,
            roles: Roles::default(),
            role_log,
            slots: HashMap::new(),
            done_tx,
            done_rx,
            conn: None,
            connected_at: Instant::now(),
            last_inbound: Instant::now(),
            heartbeat_interval: interval,
            heartbeats: heartbeat_timer(interval),
            next_seq: 1,
            sent: VecDeque::new(),
            pending_reports: VecDeque::new(),
            checks: CheckBoard::default(),
        })
    }

    /// Runs until `shutdown` is cancelled, or until another agent process
    /// has held this node id for long enough that this one is surely the
    /// duplicate ([`DuplicateNode`]).
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(node = %self.config.node_id, instance = %self.identity.instance, node_uuid = %self.identity.node_uuid, coordinators = ?self.config.coordinators, "agent starting");
        let mut outcome = Ok(());
        let stop_checks = CancellationToken::new();
        self.checks = checks::start(&self.config.checks, &stop_checks);
        let check_changed = self.checks.changed.clone();
        let mut connecting = Some(Box::pin(connection::connect(
            self.config.coordinators.clone(),
            Duration::ZERO,
        )));
        loop {
            self.fence_expired();
            self.drive_hooks();

            let lease_wake = self
                .roles
                .next_lease_end()
                .map(|end| end.saturating_sub(clock::now()));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = sleep_for(lease_wake), if lease_wake.is_some() => {}
                Some(done) = self.done_rx.recv() => self.on_hook_done(done),
                message = next_message(&mut self.conn), if self.conn.is_some() => match message {
                    Ok(message) => self.on_message(message),
                    Err(end) => {
                        if let Err(e) = self.session_ended(end) {
                            outcome = Err(e);
                            break;
                        }
                    }
                },
                _ = self.heartbeats.tick(), if self.conn.is_some() => self.heartbeat(),
                // A check flipped: tell the coordinator now.
                _ = check_changed.notified(), if self.conn.is_some() => self.heartbeat(),
                conn = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                    connecting = None;
                    self.connected(conn);
                }
            }
            if self.conn.is_none() && connecting.is_none() {
                let delay = if self.connected_at.elapsed() >= STABLE_SESSION {
                    Duration::ZERO
                } else {
                    Duration::from_millis(250)
                };
                connecting = Some(Box::pin(connection::connect(
                    self.config.coordinators.clone(),
                    delay,
                )));
            }
        }
        self.stop().await;
        stop_checks.cancel();
        outcome
    }

    /// The session ended. A refusal as a duplicate is kept track of: once
    /// refused for twice the time the connected instance may stay silent
    /// (at least 10 s), this process is the duplicate and stops.
    fn session_ended(&mut self, end: SessionEnd) -> anyhow::Result<()> {
        let Some(limit) = end.duplicate else {
            self.disconnected(&end.reason);
            return Ok(());
        };
        self.conn = None;
        let patience = limit.saturating_mul(2).max(MIN_DUPLICATE_PATIENCE);
        let (since, patience, _) =
            self.refused_as_duplicate
                .get_or_insert((Instant::now(), patience, end.reason.clone()));
        tracing::error!(
            node = %self.config.node_id,
            instance = %self.identity.instance,
            "refused: {} (giving up in {:?})",
            end.reason,
            patience.saturating_sub(since.elapsed())
        );
        if since.elapsed() >= *patience {
            return Err(DuplicateNode(format!(
                "another agent holds node id {}: {} — this agent stops (exit status {DUPLICATE_EXIT_STATUS})",
                self.config.node_id, end.reason
            ))
            .into());
        }
        Ok(())
    }

    /// Fences every strict primary whose lease has ended.
    fn fence_expired(&mut self) {
        for group in self.roles.fence_expired(clock::now()) {
            let epoch = self.roles.get(&group).map_or(0, |g| g.epoch);
            tracing::warn!(%group, epoch, role = "fenced", "lease expired without renewal: fenced");
            self.role_log
                .record("lease_expired", &group, epoch, "fenced", "");
        }
    }

    /// Starts the hook each group needs, one at a time per group.
    fn drive_hooks(&mut self) {
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
                // Hooks of one group never overlap: stop the outdated one;
                // the new one starts when it has exited.
                running.cancel();
                continue;
            }
            let previous = slot
                .last_started
                .as_ref()
                .map_or("none", |k| k.role().as_str());
            let env = HookEnv {
                group: group.clone(),
                node: self.config.node_id.clone(),
                role: desired.role().as_str(),
                previous_role: previous,
                epoch: state.epoch,
                primary: state.primary.clone().unwrap_or_default(),
                standby_mode: state.standby_mode.as_str(),
            };
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
        let Some(command) = self.config.hooks.on_role_change.clone() else {
            tracing::info!(group = %env.group, epoch = env.epoch, role = env.role, previous_role = env.previous_role, "role change (no hook configured)");
            self.report(&env, Outcome::NotConfigured, None, String::new());
            return;
        };
        let cancel = CancellationToken::new();
        self.slots.get_mut(&env.group).expect("slot exists").running = Some(cancel.clone());
        let timeout = self.config.hooks.timeout;
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

    fn on_hook_done(&mut self, done: HookDone) {
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

    /// Sends a hook result, or keeps it for the next session.
    fn report(&mut self, env: &HookEnv, outcome: Outcome, exit_code: Option<i32>, detail: String) {
        let role = env.role.parse().unwrap_or(Role::Fenced);
        let result = pb::HookResult {
            group: env.group.clone(),
            epoch: env.epoch,
            role: pb::Role::from(role) as i32,
            outcome: pb::HookOutcome::from(outcome) as i32,
            exit_code,
            detail,
        };
        if !self.send(Out::HookResult(result.clone())) {
            if self.pending_reports.len() == MAX_PENDING_REPORTS {
                self.pending_reports.pop_front();
            }
            self.pending_reports.push_back(result);
        }
    }

    fn connected(&mut self, conn: Connection) {
        tracing::info!(url = %conn.url, "session open");
        self.conn = Some(conn);
        self.connected_at = Instant::now();
        self.last_inbound = Instant::now();
        self.send(Out::Hello(pb::Hello {
            node_id: self.config.node_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            roles: self.claims(),
            instance_id: self.identity.instance.clone(),
            node_uuid: self.identity.node_uuid.clone(),
        }));
        // A first heartbeat at once: the coordinator can grant a lease only
        // in answer to one.
        self.heartbeat();
        self.heartbeats.reset();
        while let Some(result) = self.pending_reports.pop_front() {
            if !self.send(Out::HookResult(result.clone())) {
                self.pending_reports.push_front(result);
                break;
            }
        }
    }

    fn disconnected(&mut self, reason: &str) {
        if self.conn.take().is_some() {
            tracing::warn!(reason, "session with the coordinator lost; reconnecting");
        }
    }

    /// Queues a message on the session. False when there is no usable one.
    fn send(&mut self, kind: Out) -> bool {
        let Some(conn) = &self.conn else {
            return false;
        };
        match conn
            .outbound
            .try_send(pb::AgentMessage { kind: Some(kind) })
        {
            Ok(()) => true,
            Err(e) => {
                self.disconnected(&format!("cannot queue a message: {e}"));
                false
            }
        }
    }

    fn heartbeat(&mut self) {
        let silent = self.last_inbound.elapsed();
        if silent > ack_timeout(self.heartbeat_interval) {
            self.disconnected(&format!("no word from the coordinator for {silent:?}"));
            return;
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        // The lease is counted from this instant, taken before sending.
        let sent_at = clock::now();
        let roles = self.claims();
        if self.send(Out::Heartbeat(pb::Heartbeat {
            seq,
            checks: self.checks.snapshot(),
            roles,
        })) {
            if self.sent.len() == SENT_WINDOW {
                self.sent.pop_front();
            }
            self.sent.push_back((seq, sent_at));
        }
    }

    /// The roles this agent holds, as told to the coordinator.
    fn claims(&self) -> Vec<pb::GroupRole> {
        self.roles
            .iter()
            .map(|(group, g)| pb::GroupRole {
                group: group.clone(),
                role: pb::Role::from(g.role) as i32,
                epoch: g.epoch,
            })
            .collect()
    }

    fn on_message(&mut self, message: pb::CoordinatorMessage) {
        self.last_inbound = Instant::now();
        let Some(kind) = message.kind else {
            return;
        };
        match kind {
            In::Welcome(w) => {
                tracing::info!(coordinator = %w.coordinator_id, "welcomed");
                self.refused_as_duplicate = None;
                if let Some(settings) = w.settings {
                    self.apply_settings(settings);
                }
            }
            In::Settings(settings) => self.apply_settings(settings),
            In::Ack(ack) => self.on_ack(ack),
            In::Assignment(a) => self.on_assignment(a),
            In::Release(r) => match self.roles.release(&r.group, r.epoch) {
                Ok(()) => {
                    tracing::info!(group = %r.group, epoch = r.epoch, reason = %r.reason, "released from the group")
                }
                Err(refusal) => tracing::warn!(%refusal, "release refused"),
            },
        }
    }

    fn apply_settings(&mut self, settings: pb::Settings) {
        let (min, max) = HEARTBEAT_RANGE;
        let interval = Duration::from_millis(settings.heartbeat_interval_ms).clamp(min, max);
        if interval != self.heartbeat_interval {
            tracing::info!(?interval, "heartbeat interval set");
            self.heartbeat_interval = interval;
            self.heartbeats = heartbeat_timer(interval);
        }
    }

    fn on_ack(&mut self, ack: pb::HeartbeatAck) {
        let Some(&(_, sent_at)) = self.sent.iter().find(|(seq, _)| *seq == ack.seq) else {
            return;
        };
        let now = clock::now();
        for grant in ack.grants {
            let ttl = Duration::from_millis(grant.lease_ttl_ms);
            if ttl > MAX_LEASE {
                tracing::warn!(group = %grant.group, ?ttl, "refused a lease grant longer than any failover timeout");
                continue;
            }
            let Some(until) = sent_at.checked_add(ttl - fence_margin(ttl)) else {
                continue;
            };
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

    fn on_assignment(&mut self, a: pb::Assignment) {
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
        let primary = assignment.primary.clone();
        let primary = primary.as_deref().unwrap_or("");
        match self.roles.assign(assignment) {
            Ok(true) => {
                tracing::info!(
                    %group,
                    epoch,
                    role = role.as_str(),
                    previous = ?previous,
                    primary,
                    "role assigned"
                );
                self.role_log
                    .record("assigned", &group, epoch, role.as_str(), primary);
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

    /// Stops cleanly: steps down where the group wants no shutdown grace
    /// (so the role moves at once), gives hooks a moment to finish, reports
    /// them, says goodbye, and waits for the coordinator to take it all.
    async fn stop(&mut self) {
        tracing::info!("agent stopping");
        for group in self.roles.step_down_for_shutdown() {
            let epoch = self.roles.get(&group).map_or(0, |g| g.epoch);
            tracing::info!(%group, epoch, role = "secondary", "stepping down before stopping");
        }
        self.drive_hooks();
        let deadline = Instant::now() + STOP_GRACE;
        while self.slots.values().any(|s| s.running.is_some()) {
            match tokio::time::timeout_at(deadline, self.done_rx.recv()).await {
                Ok(Some(done)) => {
                    self.on_hook_done(done);
                    // A step-down may still be queued behind a hook.
                    self.drive_hooks();
                }
                _ => break,
            }
        }
        for slot in self.slots.values() {
            if let Some(running) = &slot.running {
                running.cancel();
            }
        }
        self.send(Out::Goodbye(pb::Goodbye {
            reason: "agent stopping".into(),
        }));
        // Close our half of the stream and wait for the coordinator to
        // close its half: everything queued before has been delivered.
        if let Some(Connection {
            outbound,
            mut inbound,
            ..
        }) = self.conn.take()
        {
            drop(outbound);
            let _ = tokio::time::timeout(FLUSH_GRACE, async {
                while let Ok(Some(_)) = inbound.message().await {}
            })
            .await;
        }
    }
}

/// The next message of the open session, or why there is none.
async fn next_message(conn: &mut Option<Connection>) -> Result<pb::CoordinatorMessage, SessionEnd> {
    let Some(conn) = conn.as_mut() else {
        return std::future::pending().await;
    };
    match conn.inbound.message().await {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(SessionEnd {
            reason: "the coordinator ended the session".into(),
            duplicate: None,
        }),
        Err(status) if status.code() == tonic::Code::AlreadyExists => {
            let limit = status
                .metadata()
                .get(proto::SILENCE_LIMIT_METADATA)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(Duration::ZERO, Duration::from_millis);
            Err(SessionEnd {
                reason: status.message().to_owned(),
                duplicate: Some(limit),
            })
        }
        Err(status) => Err(SessionEnd {
            reason: format!("session failed: {}", status.message()),
            duplicate: None,
        }),
    }
}

async fn sleep_for(d: Option<Duration>) {
    tokio::time::sleep(d.unwrap_or_default()).await
}

fn heartbeat_timer(interval: Duration) -> Interval {
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// How long the coordinator may stay silent before the session counts as
/// dead (a half-open TCP connection never reports an error by itself).
fn ack_timeout(heartbeat_interval: Duration) -> Duration {
    (heartbeat_interval * 6).max(Duration::from_secs(2))
}
