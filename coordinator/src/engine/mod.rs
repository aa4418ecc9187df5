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
mod contact;
mod decide;
mod durable;
mod group;
mod lease;
#[cfg(test)]
mod model_tests;
mod node;
mod sessions;
mod sync_lag;
#[cfg(test)]
mod tests;
mod views;

pub(crate) use admin::MAX_MEMBERS;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use thiserror::Error;
use tokio::time::Instant;

use crate::model::{
    CheckStatus, EventKind, EventRecord, GroupRecord, HookOutcome, Phase, Role, SyncReport,
};
use crate::policy::{Policy, PolicyPatch};
use group::Group;
use lease::Leases;
use node::{Node, Nodes};

pub use durable::Durable;
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
    /// Among replicas, how long the previous leader may still act after
    /// this one took over (one leader lease): added to every wait after a
    /// start. Zero for a single coordinator.
    pub takeover_wait: Duration,
}

/// What an agent said when its session opened.
#[derive(Debug, Clone)]
pub struct Hello {
    pub node: String,
    /// Random per agent process: leases and confirmations are bound to it.
    pub instance: String,
    /// Persistent per installation of the agent.
    pub node_uuid: String,
    /// The agent process that stopped cleanly before this one, on the same
    /// installation (kept secret in its state directory).
    pub previous_instance: Option<String>,
    pub agent_version: String,
    pub address: String,
    /// Where the agent serves its synced paths (host:port), if it does.
    pub peer_address: Option<String>,
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
        /// Its state syncs.
        syncs: Vec<SyncReport>,
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
    /// A session was refused because its certificate does not name the
    /// node its Hello claims (it never reached the engine as a session).
    IdentityRefused {
        node: String,
        address: String,
        reason: String,
    },
    Admin {
        reply: ReplyId,
        /// Who asked, for the event log.
        actor: String,
        command: AdminCommand,
    },
    /// The configuration was reloaded: new groups take these settings, and
    /// nodes in no group this heartbeat interval.
    Defaults {
        policy: Policy,
    },
}

#[derive(Debug, Clone)]
pub enum AdminCommand {
    CreateGroup {
        name: String,
        members: Vec<String>,
        policy: PolicyPatch,
    },
    /// A page of groups in name order: those after `after`, at most
    /// `limit`.
    ListGroups {
        after: Option<String>,
        limit: usize,
    },
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
    /// A page of nodes in name order (as for groups).
    ListNodes {
        after: Option<String>,
        limit: usize,
    },
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
    /// The store cannot write right now; nothing was changed.
    #[error("{0}")]
    Unavailable(String),
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
    /// How far a notification sink has delivered the event log (written
    /// by the notifier, never by the engine).
    Cursor {
        sink: String,
        seq: u64,
    },
}

/// Why a new session was turned away after its Hello.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRefusal {
    pub message: String,
    /// Another instance of its node is connected and alive: how long that
    /// one may stay silent before it counts as gone (the refused agent keeps
    /// trying at least twice this long). `None`: no room for a node that is
    /// in no group (`MAX_UNASSIGNED_SESSIONS`); try again later.
    pub silence_limit: Option<Duration>,
}

/// Everything the runtime must do after one step of the engine, in order:
/// writes (made durable first), then sends, closes and replies.
#[derive(Debug, Default)]
pub struct Effects {
    pub writes: Vec<Write>,
    pub sends: Vec<(SessionId, ToAgent)>,
    pub closes: Vec<SessionId>,
    /// Sessions refused after their Hello: ended with this error.
    pub refusals: Vec<(SessionId, SessionRefusal)>,
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
    leases: Leases,
    groups: BTreeMap<String, Group>,
    nodes: Nodes,
    /// Which node each live session belongs to.
    sessions: HashMap<SessionId, String>,
    /// When a Hello was last refused for want of room for nodes in no
    /// group (logged at most once per `REFUSAL_MEMORY`).
    unassigned_refusal_logged: Option<Instant>,
    /// `(instant, group)` for every group with a deadline ahead (a lease
    /// end or a wake-up): the only moments at which time alone can change
    /// a decision.
    timers: BTreeSet<(Instant, String)>,
    /// `(deadline, session)`, one per live session: its startup timeout
    /// until its first heartbeat, then the instant it would have been
    /// silent for too long (checked lazily: heartbeats do not move it).
    session_timers: BTreeSet<(Instant, SessionId)>,
    epoch_floors: HashMap<String, u64>,
    /// Deleted groups whose primary may still hold a lease: a group
    /// re-created under the same name promotes nobody before it ends
    /// (unless its holder confirms its release).
    deleted_leases: HashMap<String, DeletedLease>,
    events: EventLog,
    /// Groups touched in the current step, whose changed records are
    /// written at its end.
    touched: BTreeSet<String>,
    /// The lease assumed for a deleted group whose record does not say:
    /// the longest default failover timeout of this run, so a reload that
    /// shortens the default never shortens a wait.
    lease_fallback: Duration,
}

/// The lease a deleted group's primary may still hold.
struct DeletedLease {
    until: Instant,
    /// The released primary's node and agent instance: its step-down
    /// hook result (at `epoch_floor`) ends the wait.
    holder: Option<(String, String)>,
    epoch_floor: u64,
}

/// Numbers events and turns them into durable writes.
struct EventLog {
    next_seq: u64,
}

impl EventLog {
    /// Appends an event to the log (as a durable write).
    fn record(&mut self, event: NewEvent<'_>, now: Now, out: &mut Effects) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        // Logged by the runtime once written: a batch the store refuses
        // never happened.
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
            node: None,
        }));
    }

    /// Appends an event about `node` to the log.
    fn record_about(&mut self, node: &str, event: NewEvent<'_>, now: Now, out: &mut Effects) {
        self.record(event, now, out);
        if let Some(Write::Event(recorded)) = out.writes.last_mut() {
            recorded.node = Some(node.to_owned());
        }
    }
}

/// What decision code works with besides the group it decides for: the
/// nodes (sessions, health), the rules, the event log, the time and the
/// effects being built.
struct Ctx<'a> {
    nodes: &'a mut Nodes,
    leases: Leases,
    events: &'a mut EventLog,
    now: Now,
    out: &'a mut Effects,
}

impl Ctx<'_> {
    fn event(&mut self, event: NewEvent<'_>) {
        self.events.record(event, self.now, self.out);
    }
}

impl Engine {
    /// Builds the engine from what the store held. Every group that has ever
    /// had a primary starts with its lease assumed live for a full lease
    /// wait: the previous run may have granted one just before it stopped,
    /// and nothing says when (invariant 1).
    pub fn new(config: EngineConfig, recovered: Recovered, now: Now) -> Self {
        let leases = Leases::new(config.clock_drift, config.takeover_wait);
        let default_ttl = config.default_policy.failover_timeout;
        let deleted_leases = recovered
            .epoch_floors
            .iter()
            .map(|(name, floor)| {
                let ttl = recovered
                    .deleted_ttls
                    .get(name)
                    .copied()
                    .unwrap_or(default_ttl);
                let lease = DeletedLease {
                    until: leases.after_start(ttl, now.mono),
                    holder: None,
                    epoch_floor: *floor,
                };
                (name.clone(), lease)
            })
            .collect();
        let mut engine = Engine {
            config,
            leases,
            groups: BTreeMap::new(),
            nodes: Nodes::new(),
            sessions: HashMap::new(),
            unassigned_refusal_logged: None,
            timers: BTreeSet::new(),
            session_timers: BTreeSet::new(),
            epoch_floors: recovered.epoch_floors,
            deleted_leases,
            events: EventLog {
                next_seq: recovered.next_event_seq,
            },
            touched: BTreeSet::new(),
            lease_fallback: default_ttl,
        };
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
            let until = leases.after_start(record.lease_ttl_bound(), now.mono);
            let mut g = Group::recovered(record, until, now.wall_ms);
            g.phase = decide::compute_phase(&g, &engine.nodes, now);
            update_timer(&mut engine.timers, &mut g);
            engine.groups.insert(name, g);
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
                syncs,
            } => self.on_heartbeat(
                session,
                Beat {
                    seq,
                    received,
                    checks,
                    syncs,
                    roles,
                },
                now,
                out,
            ),
            Input::HookResult { session, report } => self.on_hook_result(session, report, now, out),
            Input::Goodbye { session, reason } => self.on_goodbye(session, &reason, now, out),
            Input::SessionClosed { session } => self.on_session_closed(session, now, out),
            Input::IdentityRefused {
                node,
                address,
                reason,
            } => self.on_identity_refused(&node, &address, reason, now, out),
            Input::Admin {
                reply,
                actor,
                command,
            } => self.on_admin(reply, &actor, command, now, out),
            Input::Defaults { policy } => self.set_defaults(policy),
        }
        self.write_changed(out);
    }

    /// Settings for what is created from now on; nothing that exists
    /// changes.
    fn set_defaults(&mut self, policy: Policy) {
        self.lease_fallback = self.lease_fallback.max(policy.failover_timeout);
        self.config.default_heartbeat_interval = policy.heartbeat_interval;
        self.config.default_policy = policy;
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
        self.write_changed(out);
    }

    /// The next instant at which [`Engine::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let group = self.timers.first().map(|(at, _)| *at);
        let session = self.session_timers.first().map(|(at, _)| *at);
        group.into_iter().chain(session).min()
    }

    /// How long a new session may take to send its Hello: the smallest
    /// `connect_timeout` of any group (the node is unknown until then).
    pub fn connect_timeout(&self) -> Duration {
        self.groups
            .values()
            .map(|g| g.policy().connect_timeout)
            .min()
            .unwrap_or(self.config.default_policy.connect_timeout)
    }

    /// Derived writes: one `PutGroup` for every group this step changed.
    fn write_changed(&mut self, out: &mut Effects) {
        for name in std::mem::take(&mut self.touched) {
            if let Some(record) = self.groups.get_mut(&name).and_then(Group::take_write) {
                out.writes.push(Write::PutGroup(record));
            }
        }
    }

    /// Runs `f` on group `name` with the rest of the engine as context,
    /// then keeps the group's timer in step with its deadlines.
    fn with_group<T>(
        &mut self,
        name: &str,
        now: Now,
        out: &mut Effects,
        f: impl FnOnce(&mut Group, &mut Ctx<'_>) -> T,
    ) -> Option<T> {
        let g = self.groups.get_mut(name)?;
        let _span = tracing::debug_span!("group", group = %name).entered();
        self.touched.insert(name.to_owned());
        let mut ctx = Ctx {
            nodes: &mut self.nodes,
            leases: self.leases,
            events: &mut self.events,
            now,
            out,
        };
        let result = f(g, &mut ctx);
        update_timer(&mut self.timers, g);
        Some(result)
    }

    /// Brings one group forward after anything that may change who should
    /// be primary, then tells members, refreshes its phase and its timer.
    fn reconcile(&mut self, name: &str, now: Now, out: &mut Effects) {
        self.with_group(name, now, out, decide::reconcile);
    }

    /// Appends an event to the log (as a durable write).
    fn record_event(&mut self, event: NewEvent<'_>, now: Now, out: &mut Effects) {
        self.events.record(event, now, out);
    }
}

/// Moves the group's entry in `timers` to its earliest deadline.
fn update_timer(timers: &mut BTreeSet<(Instant, String)>, g: &mut Group) {
    let due = g.deadline();
    if g.timer == due {
        return;
    }
    if let Some(old) = g.timer.take() {
        timers.remove(&(old, g.name().to_owned()));
    }
    if let Some(at) = due {
        timers.insert((at, g.name().to_owned()));
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

/// One heartbeat, as the session received it.
struct Beat {
    seq: u64,
    received: Instant,
    checks: Vec<CheckStatus>,
    roles: Vec<ClaimedRole>,
    syncs: Vec<SyncReport>,
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
pub(crate) const COORDINATOR: &str = "coordinator";

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
const DUPLICATE_MEMORY: Duration = Duration::from_secs(15);

/// Sessions of nodes that are in no group, at most: an agent may connect
/// before an operator adds its node, but nobody needs thousands of those,
/// while a peer without credentials could otherwise open a session per
/// made-up node id on every stream it may open. Members' sessions are
/// bounded by the members (one session per node).
pub(crate) const MAX_UNASSIGNED_SESSIONS: usize = 256;

/// Refusals (identities, epoch claims) are recorded at most this often per
/// node (and group), so a hostile peer cannot flood the event log.
const REFUSAL_MEMORY: Duration = Duration::from_secs(60);
