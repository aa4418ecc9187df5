//! The decision core: every failover decision is made here, from
//! `(state, input, now)`, and nothing here does IO.
//!
//! The engine turns inputs (session events, heartbeats, hook results, admin
//! commands, the passage of time) into [`Effects`]: durable writes, messages
//! to agents, sessions to close and replies to admin calls. The runtime
//! applies the writes and makes them durable *before* it sends any message
//! or reply of the same batch; that ordering is what makes "an epoch is
//! durable before any agent hears of it" and "a change is acknowledged only
//! once durable" true.
//!
//! **Architecture invariant:** the engine never reads a clock; time comes in
//! as [`Now`].

mod admin;
mod decide;
#[cfg(test)]
mod model_tests;
mod sessions;
#[cfg(test)]
mod tests;
mod views;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use thiserror::Error;
use tokio::time::Instant;

use crate::model::{CheckStatus, EventKind, EventRecord, GroupRecord, HookOutcome, Phase, Role};
use crate::policy::{Policy, PolicyPatch};

pub use views::{GroupView, MemberView, NodeView};

/// Identifies one agent session (one gRPC stream); assigned by the runtime.
pub type SessionId = u64;
/// Identifies one pending admin call; assigned by the runtime.
pub type ReplyId = u64;

/// The current time, in both forms the engine needs.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic: every lease and timeout is measured on it.
    pub mono: Instant,
    /// Wall clock, Unix milliseconds: only for display and the event log.
    pub wall_ms: u64,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Named in the Welcome message, so operators can tell coordinators apart.
    pub coordinator_id: String,
    /// Bound `rho` on how much slower an agent's clock may run than the
    /// coordinator's; leases are waited out for `ttl * (1 + rho)`.
    pub clock_drift: f64,
    /// Used for a node that belongs to no group.
    pub default_heartbeat_interval: Duration,
    /// Settings of a new group where the operator gave none.
    pub default_policy: Policy,
}

/// What an agent said when its session opened.
#[derive(Debug, Clone)]
pub struct Hello {
    pub node: String,
    /// Random per agent process: leases and confirmations are bound to it.
    pub instance: String,
    /// Persistent per installation of the agent.
    pub node_uuid: String,
    pub agent_version: String,
    pub address: String,
    pub roles: Vec<ClaimedRole>,
}

/// A role an agent says it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedRole {
    pub group: String,
    pub role: Role,
    pub epoch: u64,
}

/// An agent's report that a hook finished.
#[derive(Debug, Clone)]
pub struct HookReport {
    pub group: String,
    pub epoch: u64,
    pub role: Role,
    pub outcome: HookOutcome,
    pub exit_code: Option<i32>,
    pub detail: String,
}

#[derive(Debug)]
pub enum Input {
    SessionOpened {
        session: SessionId,
        hello: Hello,
    },
    Heartbeat {
        session: SessionId,
        seq: u64,
        /// When the session received it: the coordinator's lower bound for
        /// when the agent sent it.
        received: Instant,
        checks: Vec<CheckStatus>,
        /// The roles the agent says it holds right now.
        roles: Vec<ClaimedRole>,
    },
    HookResult {
        session: SessionId,
        report: HookReport,
    },
    Goodbye {
        session: SessionId,
        reason: String,
    },
    SessionClosed {
        session: SessionId,
    },
    Admin {
        reply: ReplyId,
        /// Who asked, for the event log.
        actor: String,
        command: AdminCommand,
    },
}

#[derive(Debug, Clone)]
pub enum AdminCommand {
    CreateGroup {
        name: String,
        members: Vec<String>,
        policy: PolicyPatch,
    },
    ListGroups,
    GetGroup {
        name: String,
    },
    DeleteGroup {
        name: String,
    },
    AddMember {
        group: String,
        node: String,
        position: Option<usize>,
    },
    RemoveMember {
        group: String,
        node: String,
    },
    MoveMember {
        group: String,
        node: String,
        position: usize,
    },
    Promote {
        group: String,
        to: String,
    },
    /// Changes settings of an existing group.
    UpdatePolicy {
        group: String,
        policy: PolicyPatch,
    },
    /// Forced takeover: move the role to `to`, or to the best other member,
    /// whatever the current primary's state.
    Takeover {
        group: String,
        to: Option<String>,
    },
    /// Hand the role back to the highest-priority healthy member.
    Restore {
        group: String,
    },
    /// Put a member in maintenance; a draining primary is switched over
    /// first.
    Drain {
        group: String,
        node: String,
    },
    Undrain {
        group: String,
        node: String,
    },
    ListNodes,
}

// One reply per admin call: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum AdminReply {
    Group(GroupView),
    Groups(Vec<GroupView>),
    Nodes(Vec<NodeView>),
    Deleted,
}

/// Why an admin command was refused. Each variant maps to one gRPC code.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum AdminError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Aborted(String),
}

pub type AdminResult = Result<AdminReply, AdminError>;

/// A message for one agent.
#[derive(Debug, Clone, PartialEq)]
pub enum ToAgent {
    Welcome {
        coordinator_id: String,
        heartbeat_interval: Duration,
    },
    Settings {
        heartbeat_interval: Duration,
    },
    Ack {
        seq: u64,
        grants: Vec<LeaseGrant>,
    },
    Assignment(Assignment),
    Release {
        group: String,
        epoch: u64,
        reason: String,
    },
}

/// Permission to act as primary of `group` at `epoch` for `ttl`, counted
/// from when the agent sent the acknowledged heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseGrant {
    pub group: String,
    pub epoch: u64,
    pub ttl: Duration,
}

pub use proto::vocab::Assignment;

/// A change to the durable store.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    PutGroup(GroupRecord),
    /// Deletes a group and remembers its epoch, so that a group created
    /// later under the same name starts above it (agents that missed the
    /// deletion still hold the old epochs).
    DeleteGroup {
        name: String,
        epoch_floor: u64,
        /// The longest lease its primary may still hold: a group created
        /// under the same name after a restart waits for it.
        lease_ttl: Duration,
    },
    Event(EventRecord),
}

/// Why a new session was turned away: another instance of its node is
/// connected and alive.
#[derive(Debug, Clone, PartialEq)]
pub struct DuplicateRefusal {
    pub message: String,
    /// How long the connected instance may stay silent before it counts as
    /// gone (the refused agent keeps trying at least twice this long).
    pub silence_limit: Duration,
}

/// Everything the runtime must do after one step of the engine, in order:
/// writes (made durable first), then sends, closes and replies.
#[derive(Debug, Default)]
pub struct Effects {
    pub writes: Vec<Write>,
    pub sends: Vec<(SessionId, ToAgent)>,
    pub closes: Vec<SessionId>,
    /// Sessions refused after their Hello: ended with this error.
    pub refusals: Vec<(SessionId, DuplicateRefusal)>,
    pub replies: Vec<(ReplyId, AdminResult)>,
    /// Promotions made in this step, for the failover-time metrics.
    pub promotions: Vec<PromotionNote>,
}

/// A promotion, as the metrics see it.
#[derive(Debug, Clone, PartialEq)]
pub struct PromotionNote {
    pub group: String,
    /// For a promotion that replaces a lapsed primary: the instant its
    /// lease had certainly run out.
    pub lapsed_at: Option<Instant>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.sends.is_empty()
            && self.closes.is_empty()
            && self.refusals.is_empty()
            && self.replies.is_empty()
            && self.promotions.is_empty()
    }
}

/// What the store held at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    pub groups: Vec<GroupRecord>,
    pub epoch_floors: HashMap<String, u64>,
    /// The longest lease each deleted group's primary may have held.
    pub deleted_ttls: HashMap<String, Duration>,
    pub next_event_seq: u64,
}

pub struct Engine {
    config: EngineConfig,
    groups: BTreeMap<String, Group>,
    /// Every node that is a member of a group or has a session.
    nodes: BTreeMap<String, Node>,
    /// Which node each live session belongs to.
    sessions: HashMap<SessionId, String>,
    /// `(instant, group)` for every group with a deadline ahead (its
    /// `lease_until` or `wake`): the only moments at which time alone can
    /// change a decision.
    timers: BTreeSet<(Instant, String)>,
    /// `(deadline, session)`, one per live session: its startup timeout
    /// until its first heartbeat, then the instant it would have been
    /// silent for too long (checked lazily: heartbeats do not move it).
    session_timers: BTreeSet<(Instant, SessionId)>,
    epoch_floors: HashMap<String, u64>,
    /// Deleted groups whose primary may still hold a lease, and until
    /// when: a group re-created under the same name promotes nobody
    /// before then. After a start, every deleted group's name waits a
    /// full lease of the longest one it may have granted.
    deleted_leases: HashMap<String, DeletedLease>,
    next_event_seq: u64,
}

/// The lease a deleted group's primary may still hold.
struct DeletedLease {
    until: Instant,
    /// The released primary's node and agent instance: its step-down
    /// hook result (at `epoch_floor`) ends the wait.
    holder: Option<(String, String)>,
    epoch_floor: u64,
}

/// One group: its durable record plus what the running coordinator knows.
struct Group {
    record: GroupRecord,
    /// Until when a node that held this group's lease may still be acting
    /// as primary, as far as the coordinator can tell (drift margin
    /// included). Nobody else is promoted before this instant passes,
    /// unless the holder confirmed that it stepped down.
    lease_until: Option<Instant>,
    /// The earliest future instant, other than `lease_until`, at which the
    /// last decision would come out differently (a grace or delay ending).
    wake: Option<Instant>,
    /// The instant registered in `Engine::timers` for this group, if any.
    timer: Option<Instant>,
    /// A former primary told to step down at the current epoch, whose
    /// confirmation (or lease expiry) is awaited: its node, and the agent
    /// instance that held the lease (only that instance can confirm).
    stepping_down: Option<(String, Option<String>)>,
    /// A planned switchover in progress.
    switchover: Option<Switchover>,
    /// The last node that held the role, for the event log.
    last_primary: Option<String>,
    /// Since when the primary has been reporting itself fenced at the
    /// current epoch: its grants do not reach it in time.
    primary_fenced_since: Option<Instant>,
    /// The primary's promote hook failed or timed out at this epoch.
    promote_failed: bool,
    /// When the role last moved away from a live primary (a step-down),
    /// for `min_failover_interval`.
    last_move_away: Option<Instant>,
    /// Members that failed here (lapsed, promote hook failed, service
    /// died) and when: ranked below the others and not the target of a
    /// voluntary move until healthy for `failback_delay` since.
    failed: HashMap<String, Instant>,
    /// Members whose promote hook failed, for the retry backoff.
    hook_failures: HashMap<String, HookFailures>,
    /// The alarm raised for the current situation, raised once.
    alarm: Option<String>,
    phase: Phase,
    phase_since_ms: u64,
}

/// A member's failed promote hooks in one group.
#[derive(Debug, Clone, Copy)]
struct HookFailures {
    /// In a row, since its last promote hook that succeeded.
    count: u32,
    last: Instant,
}

/// A move of the role to `target`: requested by an operator (with a reply
/// to send), or decided by the engine (failback, failing primary).
struct Switchover {
    target: String,
    reply: Option<ReplyId>,
    actor: String,
    reason: String,
}

struct Node {
    /// Groups this node is a member of.
    groups: BTreeSet<String>,
    session: Option<Session>,
    /// Last message from the node (wall clock); 0 = not since start.
    last_contact_ms: u64,
    address: String,
    agent_version: String,
    checks: Vec<CheckStatus>,
    /// Per group: whether the node is connected and passes that group's
    /// checks, and since when (for failback and failed members).
    health: HashMap<String, (bool, Instant)>,
    /// When its agent said goodbye (stopped cleanly), and which instance,
    /// until a new session.
    goodbye: Option<(Instant, String)>,
    /// The installation UUID its agent last reported.
    node_uuid: Option<String>,
    /// Another agent process claiming this node id while it is connected.
    duplicate: Option<Duplicate>,
    /// Epoch claims refused per group, so each is recorded once.
    refused_claims: HashMap<String, u64>,
}

/// Refused sessions of another agent instance claiming a connected node.
struct Duplicate {
    instance: String,
    address: String,
    node_uuid: String,
    /// When this run of refusals began and when the last one came.
    first_refused: Instant,
    last_refused: Instant,
    /// The `duplicate_node` event was recorded.
    reported: bool,
}

/// One open agent session.
struct Session {
    id: SessionId,
    /// The agent process behind it.
    instance: String,
    /// When its Hello arrived.
    opened: Instant,
    /// The instant registered in `Engine::session_timers` for it.
    timer: Instant,
    /// It said goodbye: whatever it sends now earns nothing, and it is
    /// not promoted.
    leaving: bool,
    /// The latest heartbeat: its sequence number and when it arrived.
    last_heartbeat: Option<(u64, Instant)>,
    /// The last assignment sent per group, so unchanged ones are not resent.
    sent: HashMap<String, Assignment>,
    /// The heartbeat interval last sent to the agent.
    heartbeat_interval: Duration,
    /// Until its first heartbeat: when the startup timeout closes it.
    startup_deadline: Option<Instant>,
}

impl Node {
    fn new() -> Self {
        Node {
            groups: BTreeSet::new(),
            session: None,
            last_contact_ms: 0,
            address: String::new(),
            agent_version: String::new(),
            checks: Vec::new(),
            health: HashMap::new(),
            goodbye: None,
            node_uuid: None,
            duplicate: None,
            refused_claims: HashMap::new(),
        }
    }

    /// When the node's session was last heard from (its Hello or its
    /// latest heartbeat).
    fn last_heard(&self) -> Option<Instant> {
        self.session.as_ref().map(|s| {
            s.last_heartbeat
                .map_or(s.opened, |(_, at)| at.max(s.opened))
        })
    }

    /// The instance of its open session, if any.
    fn instance(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.instance.as_str())
    }

    /// Since when the node has been healthy for `group`, if it is now.
    fn healthy_since(&self, group: &str) -> Option<Instant> {
        match self.health.get(group) {
            Some(&(true, since)) if self.session.is_some() => Some(since),
            _ => None,
        }
    }

    /// Since when the node has been failing `group`'s checks, if it is now.
    fn unhealthy_since(&self, group: &str) -> Option<Instant> {
        match self.health.get(group) {
            Some(&(false, since)) if self.session.is_some() => Some(since),
            _ => None,
        }
    }

    /// Whether the node passes every check that applies to `group`.
    fn passes_checks(&self, group: &str) -> bool {
        self.checks
            .iter()
            .filter(|c| c.applies_to(group))
            .all(|c| c.passing)
    }

    /// Connected: a session is open, has heartbeated within `within`, and
    /// has not said goodbye.
    fn heard_within(&self, now: Instant, within: Duration) -> bool {
        self.session
            .as_ref()
            .filter(|s| !s.leaving)
            .and_then(|s| s.last_heartbeat)
            .is_some_and(|(_, at)| now.saturating_duration_since(at) < within)
    }
}

impl Engine {
    /// Builds the engine from what the store held. Every group that has ever
    /// had a primary starts with its lease assumed live for a full
    /// `ttl * (1 + rho)`: the previous run may have granted one just before
    /// it stopped, and nothing says when (invariant 1).
    pub fn new(config: EngineConfig, recovered: Recovered, now: Now) -> Self {
        let mut engine = Engine {
            config,
            groups: BTreeMap::new(),
            nodes: BTreeMap::new(),
            sessions: HashMap::new(),
            timers: BTreeSet::new(),
            session_timers: BTreeSet::new(),
            deleted_leases: HashMap::new(),
            epoch_floors: recovered.epoch_floors,
            next_event_seq: recovered.next_event_seq,
        };
        let drift = engine.config.clock_drift;
        let default_ttl = engine.config.default_policy.failover_timeout;
        engine.deleted_leases = engine
            .epoch_floors
            .iter()
            .map(|(name, floor)| {
                let ttl = recovered
                    .deleted_ttls
                    .get(name)
                    .copied()
                    .unwrap_or(default_ttl);
                let lease = DeletedLease {
                    until: now.mono + ttl.mul_f64(1.0 + drift),
                    holder: None,
                    epoch_floor: *floor,
                };
                (name.clone(), lease)
            })
            .collect();
        for record in recovered.groups {
            let name = record.name.clone();
            for member in &record.members {
                engine
                    .nodes
                    .entry(member.clone())
                    .or_insert_with(Node::new)
                    .groups
                    .insert(name.clone());
            }
            let wait = record.lease_ttl_bound().mul_f64(1.0 + drift);
            let had_primary = record.epoch > 0;
            engine.groups.insert(name.clone(), Group::new(record, now));
            if had_primary {
                engine.set_lease_until(&name, Some(now.mono + wait));
            }
            let phase = engine.compute_phase(&name, now);
            engine.groups.get_mut(&name).expect("just inserted").phase = phase;
        }
        engine
    }

    /// Feeds one input to the engine.
    pub fn handle(&mut self, input: Input, now: Now, out: &mut Effects) {
        match input {
            Input::SessionOpened { session, hello } => {
                self.on_session_opened(session, hello, now, out)
            }
            Input::Heartbeat {
                session,
                seq,
                received,
                checks,
                roles,
            } => self.on_heartbeat(
                session,
                Beat {
                    seq,
                    received,
                    checks,
                    roles,
                },
                now,
                out,
            ),
            Input::HookResult { session, report } => self.on_hook_result(session, report, now, out),
            Input::Goodbye { session, reason } => self.on_goodbye(session, &reason, now, out),
            Input::SessionClosed { session } => self.on_session_closed(session, now, out),
            Input::Admin {
                reply,
                actor,
                command,
            } => self.on_admin(reply, &actor, command, now, out),
        }
    }

    /// Acts on every deadline that has passed.
    pub fn tick(&mut self, now: Now, out: &mut Effects) {
        while let Some(&(at, session)) = self.session_timers.first() {
            if at > now.mono {
                break;
            }
            self.session_timers.pop_first();
            self.check_session_timer(session, now, out);
        }
        while let Some((at, name)) = self.timers.first().cloned() {
            if at > now.mono {
                break;
            }
            self.timers.pop_first();
            if let Some(g) = self.groups.get_mut(&name) {
                g.timer = None;
            }
            self.reconcile(&name, now, out);
        }
    }

    /// The next instant at which [`Engine::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let group = self.timers.first().map(|(at, _)| *at);
        let startup = self.session_timers.first().map(|(at, _)| *at);
        group.into_iter().chain(startup).min()
    }

    /// How long a new session may take to send its Hello: the smallest
    /// `connect_timeout` of any group (the node is unknown until then).
    pub fn connect_timeout(&self) -> Duration {
        self.groups
            .values()
            .map(|g| g.record.policy.connect_timeout)
            .min()
            .unwrap_or(self.config.default_policy.connect_timeout)
    }

    /// How long the coordinator waits out a lease of `policy`'s length.
    fn lease_wait(&self, policy: &Policy) -> Duration {
        lease_wait(self.config.clock_drift, policy)
    }

    /// Sets a group's `lease_until` and keeps `timers` in step with it.
    fn set_lease_until(&mut self, name: &str, until: Option<Instant>) {
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        g.lease_until = until;
        update_timer(&mut self.timers, name, g);
    }

    /// Appends an event to the log (as a durable write).
    fn record_event(&mut self, event: NewEvent<'_>, now: Now, out: &mut Effects) {
        let seq = self.next_event_seq;
        self.next_event_seq = self.next_event_seq.saturating_add(1);
        tracing::info!(
            group = event.group,
            epoch = event.epoch,
            kind = event.kind.as_str(),
            old_primary = event.old_primary.unwrap_or("-"),
            new_primary = event.new_primary.unwrap_or("-"),
            actor = event.actor,
            "{}",
            event.reason
        );
        out.writes.push(Write::Event(EventRecord {
            seq,
            unix_ms: now.wall_ms,
            group: event.group.to_owned(),
            kind: event.kind,
            epoch: event.epoch,
            old_primary: event.old_primary.map(str::to_owned),
            new_primary: event.new_primary.map(str::to_owned),
            reason: event.reason,
            actor: event.actor.to_owned(),
        }));
    }
}

/// Moves the group's entry in `timers` to its earliest deadline.
fn update_timer(timers: &mut BTreeSet<(Instant, String)>, name: &str, g: &mut Group) {
    let due = g.lease_until.into_iter().chain(g.wake).min();
    if g.timer == due {
        return;
    }
    if let Some(old) = g.timer.take() {
        timers.remove(&(old, name.to_owned()));
    }
    if let Some(at) = due {
        timers.insert((at, name.to_owned()));
        g.timer = Some(at);
    }
}

/// The earliest of the future instants a decision is waiting for.
#[derive(Default)]
struct Wake(Option<Instant>);

impl Wake {
    fn at(&mut self, at: Instant) {
        self.0 = Some(self.0.map_or(at, |w| w.min(at)));
    }
}

/// `ttl * (1 + rho)`: how long after a grant the coordinator must assume
/// the grantee may still be acting as primary.
fn lease_wait(clock_drift: f64, policy: &Policy) -> Duration {
    policy.failover_timeout.mul_f64(1.0 + clock_drift)
}

/// One heartbeat, as the session received it.
pub(super) struct Beat {
    seq: u64,
    received: Instant,
    checks: Vec<CheckStatus>,
    roles: Vec<ClaimedRole>,
}

/// The parts of an event the caller supplies.
struct NewEvent<'a> {
    group: &'a str,
    kind: EventKind,
    epoch: u64,
    old_primary: Option<&'a str>,
    new_primary: Option<&'a str>,
    reason: String,
    actor: &'a str,
}

/// The actor name of automatic decisions.
const COORDINATOR: &str = "coordinator";

/// How far above the stored epoch an agent's claim may be and still be
/// adopted. Only a coordinator whose store went back in time (restored from
/// an old backup) sees an honest claim above its epoch, and then by at most
/// two epochs per role change since the backup; anything further is a
/// corrupt or hostile agent, and adopting it could run the epoch out.
const MAX_EPOCH_CLAIM_AHEAD: u64 = 1 << 20;

/// The shortest wait before a member whose promote hook failed is tried
/// again, whatever `min_failover_interval` says.
const MIN_HOOK_RETRY: Duration = Duration::from_secs(1);

/// A duplicate agent that has not been refused for this long is forgotten
/// (its alarm clears).
const DUPLICATE_MEMORY: Duration = Duration::from_secs(60);

impl Group {
    fn new(record: GroupRecord, now: Now) -> Self {
        Group {
            last_primary: record.primary.clone(),
            record,
            lease_until: None,
            wake: None,
            timer: None,
            stepping_down: None,
            switchover: None,
            primary_fenced_since: None,
            promote_failed: false,
            last_move_away: None,
            failed: HashMap::new(),
            hook_failures: HashMap::new(),
            alarm: None,
            phase: Phase::NoPrimary,
            phase_since_ms: now.wall_ms,
        }
    }
}
