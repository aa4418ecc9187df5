//! A node as the engine knows it: its groups, its one agent session (and
//! the agent instance behind it), its health per group, and the duplicate
//! agents that tried to claim its id.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::{Assignment, SessionId};
use crate::model::{CheckStatus, SyncReport};

/// Every node that is a member of a group or has a session, by id.
pub(super) type Nodes = BTreeMap<String, Node>;

pub(super) struct Node {
    /// Groups this node is a member of.
    pub(super) groups: BTreeSet<String>,
    pub(super) session: Option<Session>,
    /// Last message from the node (wall clock); 0 = not since start.
    pub(super) last_contact_ms: u64,
    pub(super) address: String,
    /// Where its agent serves its synced paths (from its Hello).
    pub(super) peer_address: Option<String>,
    pub(super) agent_version: String,
    pub(super) checks: Vec<CheckStatus>,
    /// Its state syncs as last reported, and when that heartbeat arrived.
    pub(super) syncs: Vec<SyncReport>,
    pub(super) syncs_at: Option<Instant>,
    /// Per group: whether the node is connected and passes that group's
    /// checks, and since when (for failback and failed members).
    pub(super) health: HashMap<String, (bool, Instant)>,
    /// When its agent said goodbye (stopped cleanly), and which instance,
    /// until a new session.
    pub(super) goodbye: Option<(Instant, String)>,
    /// The installation UUID its agent last reported.
    pub(super) node_uuid: Option<String>,
    /// Another agent process claiming this node id while it is connected.
    pub(super) duplicate: Option<Duplicate>,
    /// Per group: when a refused epoch claim was last recorded, so a
    /// flood of claims makes one event a minute, not one per heartbeat.
    pub(super) refused_claims: HashMap<String, Instant>,
    /// Groups whose epoch this node's claim raised in this coordinator's
    /// run: each node may do that once per group (a store restored from a
    /// backup), never again — so no member can keep re-running hooks.
    pub(super) raised: HashSet<String>,
    /// When an `identity_refused` event was last recorded for this node.
    pub(super) identity_refused_at: Option<Instant>,
    /// What the event log last said of its contact (`contact.rs`).
    pub(super) contact: super::contact::ContactReport,
}

/// Refused sessions of another agent instance claiming a connected node.
pub(super) struct Duplicate {
    pub(super) instance: String,
    pub(super) address: String,
    pub(super) node_uuid: String,
    /// When this run of refusals began and when the last one came.
    pub(super) first_refused: Instant,
    pub(super) last_refused: Instant,
    /// When a refusal was last logged (at most once a minute).
    pub(super) last_logged: Instant,
    /// The `duplicate_node` event was recorded.
    pub(super) reported: bool,
}

/// One open agent session.
pub(super) struct Session {
    pub(super) id: SessionId,
    /// The agent process behind it.
    pub(super) instance: String,
    /// When its Hello arrived.
    pub(super) opened: Instant,
    /// The instant registered in `Engine::session_timers` for it.
    pub(super) timer: Instant,
    /// It said goodbye: whatever it sends now earns nothing, and it is
    /// not promoted.
    pub(super) leaving: bool,
    /// The latest heartbeat: its sequence number and when it arrived.
    pub(super) last_heartbeat: Option<(u64, Instant)>,
    /// The last assignment sent per group, so unchanged ones are not resent.
    pub(super) sent: HashMap<String, Assignment>,
    /// The heartbeat interval last sent to the agent.
    pub(super) heartbeat_interval: Duration,
    /// Until its first heartbeat: when the startup timeout closes it.
    pub(super) startup_deadline: Option<Instant>,
}

impl Node {
    pub(super) fn new() -> Self {
        Node {
            groups: BTreeSet::new(),
            session: None,
            last_contact_ms: 0,
            address: String::new(),
            peer_address: None,
            agent_version: String::new(),
            checks: Vec::new(),
            syncs: Vec::new(),
            syncs_at: None,
            health: HashMap::new(),
            goodbye: None,
            node_uuid: None,
            duplicate: None,
            refused_claims: HashMap::new(),
            raised: HashSet::new(),
            identity_refused_at: None,
            contact: Default::default(),
        }
    }

    /// When the node's session was last heard from (its Hello or its
    /// latest heartbeat).
    pub(super) fn last_heard(&self) -> Option<Instant> {
        self.session.as_ref().map(|s| {
            s.last_heartbeat
                .map_or(s.opened, |(_, at)| at.max(s.opened))
        })
    }

    /// The instance of its open session, if any.
    pub(super) fn instance(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.instance.as_str())
    }

    /// Since when the node has been healthy for `group`, if it is now.
    pub(super) fn healthy_since(&self, group: &str) -> Option<Instant> {
        match self.health.get(group) {
            Some(&(true, since)) if self.session.is_some() => Some(since),
            _ => None,
        }
    }

    /// Since when the node has been failing `group`'s checks, if it is now.
    pub(super) fn unhealthy_since(&self, group: &str) -> Option<Instant> {
        match self.health.get(group) {
            Some(&(false, since)) if self.session.is_some() => Some(since),
            _ => None,
        }
    }

    /// Whether the node passes every check that applies to `group`.
    pub(super) fn passes_checks(&self, group: &str) -> bool {
        self.checks
            .iter()
            .filter(|c| c.applies_to(group))
            .all(|c| c.passing)
    }

    /// Connected: a session is open, has heartbeated within `within`, and
    /// has not said goodbye.
    pub(super) fn heard_within(&self, now: Instant, within: Duration) -> bool {
        self.session
            .as_ref()
            .filter(|s| !s.leaving)
            .and_then(|s| s.last_heartbeat)
            .is_some_and(|(_, at)| now.saturating_duration_since(at) < within)
    }
}
