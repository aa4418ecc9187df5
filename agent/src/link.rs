//! The agent's link with the coordinator: opening (and reopening) the
//! session, the Hello, heartbeats and the acknowledgements that answer
//! them, delivering hook results, and giving up when another agent process
//! holds this node id. It knows nothing of roles or hooks: the driver says
//! what to claim and report, and hears of grants and assignments.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use proto::v1 as pb;
use proto::v1::agent_message::Kind as Out;
use proto::v1::coordinator_message::Kind as In;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::clock;
use crate::connection::{self, Connection};
use crate::identity::Identity;
use crate::sync::SyncBoard;
use proto::client::ClientTls;

/// Heartbeats remembered for matching acknowledgements. An acknowledgement
/// of an older one is too stale to matter.
const SENT_WINDOW: usize = 256;
/// Hook results kept for a coordinator that is unreachable right now.
const MAX_PENDING_REPORTS: usize = 256;
/// A session that lasted this long was healthy: reconnect at once.
const STABLE_SESSION: Duration = Duration::from_secs(5);
/// The heartbeat interval the coordinator may set, clamped to this range.
const HEARTBEAT_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(60));
/// A duplicate is refused this long at least before the agent gives up.
const MIN_DUPLICATE_PATIENCE: Duration = Duration::from_secs(10);
/// While refused as a duplicate: how often to try again, and to say so.
const DUPLICATE_RETRY: Duration = Duration::from_secs(1);
const DUPLICATE_LOG_EVERY: Duration = Duration::from_secs(5);
/// While refused as not allowed to speak for this node: how often to try
/// again (a fixed certificate is read at the next attempt).
const FORBIDDEN_RETRY: Duration = Duration::from_secs(5);
/// The fastest reconnect backoff bound, whatever the leases.
const MIN_RETRY_BOUND: Duration = Duration::from_millis(50);

/// The exit status of an agent that gave up because another agent process
/// holds its node id (systemd: `RestartPreventExitStatus=3`).
pub const DUPLICATE_EXIT_STATUS: u8 = 3;

/// Another agent process is connected under this node id; this one stops.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DuplicateNode(pub String);

/// What the link has for the agent.
pub enum LinkEvent {
    /// A session opened: say Hello (with [`Link::hello`]).
    Opened,
    /// Time for a heartbeat (with [`Link::heartbeat`]).
    HeartbeatDue,
    /// Grants answering a heartbeat sent at `sent_at` (boot clock).
    Grants {
        sent_at: Duration,
        grants: Vec<pb::LeaseGrant>,
    },
    Assignment(pb::Assignment),
    Release(pb::Release),
    /// Nothing for the agent (a Welcome, settings, a lost session).
    Nothing,
}

type Connecting = Pin<Box<dyn Future<Output = Connection> + Send>>;

pub struct Link {
    /// The state syncs, reported in every heartbeat.
    syncs: SyncBoard,
    peer: PeerAdvert,
    urls: Vec<String>,
    tls: ClientTls,
    node_id: String,
    identity: Identity,
    conn: Option<Connection>,
    connecting: Option<Connecting>,
    /// When the last session opened (`None` before the first).
    connected_at: Option<Instant>,
    /// When the coordinator last said anything on this session.
    last_inbound: Instant,
    heartbeat_interval: Duration,
    heartbeats: Interval,
    next_seq: u64,
    /// `(seq, sent at on the boot clock)` of recent heartbeats.
    sent: VecDeque<(u64, Duration)>,
    /// Hook results not yet delivered.
    pending_reports: VecDeque<pb::HookResult>,
    /// Since when every session was refused as a duplicate, how long to
    /// keep trying, and when it was last said.
    refused: Option<Refusals>,
    /// The longest wait between reconnect attempts.
    max_retry: Duration,
    /// The last session was refused as not allowed to speak for this node.
    forbidden: bool,
    forbidden_logged: Option<Instant>,
    /// A coordinator has accepted a session of this process.
    welcomed: bool,
}

/// What this agent tells the coordinator about its peer service.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerAdvert {
    /// It syncs nothing.
    None,
    /// This port, at the local address of the connection to the
    /// coordinator.
    Port(u16),
    /// `peer_advertise`, as configured (behind NAT).
    Fixed(String),
}

struct Refusals {
    since: Instant,
    patience: Duration,
    logged: Option<Instant>,
}

impl Link {
    pub fn new(
        urls: Vec<String>,
        tls: ClientTls,
        node_id: String,
        identity: Identity,
        syncs: SyncBoard,
    ) -> Link {
        let interval = Duration::from_millis(500);
        Link {
            syncs,
            peer: PeerAdvert::None,
            urls,
            tls,
            node_id,
            identity,
            conn: None,
            connecting: None,
            connected_at: None,
            last_inbound: Instant::now(),
            heartbeat_interval: interval,
            heartbeats: heartbeat_timer(interval),
            next_seq: 1,
            sent: VecDeque::new(),
            pending_reports: VecDeque::new(),
            refused: None,
            max_retry: connection::MAX_RETRY,
            forbidden: false,
            forbidden_logged: None,
            welcomed: false,
        }
    }

    /// What to advertise for the peer service from the next Hello on.
    pub fn advertise_peer(&mut self, peer: PeerAdvert) {
        self.peer = peer;
    }

    /// The peer address for a Hello on the current connection.
    fn peer_address(&self) -> String {
        match &self.peer {
            PeerAdvert::None => String::new(),
            PeerAdvert::Fixed(address) => address.clone(),
            PeerAdvert::Port(port) => match self.conn.as_ref().and_then(|c| c.local_ip) {
                Some(ip) => std::net::SocketAddr::new(ip, *port).to_string(),
                None => String::new(),
            },
        }
    }

    /// Whether a coordinator ever accepted a session of this process (a
    /// refused duplicate never was).
    pub fn was_welcomed(&self) -> bool {
        self.welcomed
    }

    /// A lease of `ttl` was granted: after losing the session, the agent
    /// must be back well within it — a restarted coordinator waits only
    /// one lease for its primaries to return.
    pub fn fit_retry_to_lease(&mut self, ttl: Duration) {
        self.max_retry = (ttl / 4).max(MIN_RETRY_BOUND).min(connection::MAX_RETRY);
    }

    fn reconnect(&mut self, delay: Duration) {
        self.connecting = Some(Box::pin(connection::connect(
            self.urls.clone(),
            self.tls.clone(),
            delay,
            self.max_retry,
        )));
    }

    /// The next thing the link has for the agent; `Err` when this agent
    /// must stop because another process holds its node id.
    pub async fn next(&mut self) -> Result<LinkEvent, DuplicateNode> {
        // No session and no attempt under way (it ended, here or while
        // sending): start the next attempt.
        if self.conn.is_none() && self.connecting.is_none() {
            let delay = if self.forbidden {
                FORBIDDEN_RETRY
            } else if self.refused.is_some() {
                DUPLICATE_RETRY
            } else if self
                .connected_at
                .is_none_or(|at| at.elapsed() >= STABLE_SESSION)
            {
                Duration::ZERO
            } else {
                Duration::from_millis(250)
            };
            self.reconnect(delay);
        }
        let event = tokio::select! {
            message = next_message(&mut self.conn), if self.conn.is_some() => match message {
                Ok(message) => self.on_message(message),
                Err(end) => {
                    self.session_ended(end)?;
                    LinkEvent::Nothing
                }
            },
            _ = self.heartbeats.tick(), if self.conn.is_some() => LinkEvent::HeartbeatDue,
            conn = async {
                match self.connecting.as_mut() {
                    Some(connecting) => connecting.await,
                    None => std::future::pending().await,
                }
            }, if self.connecting.is_some() => {
                self.connecting = None;
                tracing::info!(url = %conn.url, "session open");
                self.conn = Some(conn);
                self.connected_at = Some(Instant::now());
                self.last_inbound = Instant::now();
                LinkEvent::Opened
            }
        };
        Ok(event)
    }

    /// Says Hello on a new session with the roles the agent holds, sends a
    /// first heartbeat at once (a lease can only answer one), and delivers
    /// hook results that were waiting.
    pub fn hello(
        &mut self,
        roles: Vec<pb::GroupRole>,
        checks: Vec<pb::CheckStatus>,
        previous_instance: Option<String>,
    ) {
        self.send(Out::Hello(pb::Hello {
            node_id: self.node_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            roles: roles.clone(),
            instance_id: self.identity.instance.clone(),
            node_uuid: self.identity.node_uuid.clone(),
            previous_instance: previous_instance.unwrap_or_default(),
            peer_address: self.peer_address(),
        }));
        self.heartbeat(roles, checks);
        self.heartbeats.reset();
        while let Some(result) = self.pending_reports.pop_front() {
            if !self.send(Out::HookResult(result.clone())) {
                self.pending_reports.push_front(result);
                break;
            }
        }
    }

    /// Sends a heartbeat with the agent's roles and check results, and
    /// remembers when: the lease of its acknowledgement counts from then.
    pub fn heartbeat(&mut self, roles: Vec<pb::GroupRole>, checks: Vec<pb::CheckStatus>) {
        if self.conn.is_none() {
            return;
        }
        let silent = self.last_inbound.elapsed();
        if silent > ack_timeout(self.heartbeat_interval) {
            self.disconnected(&format!("no word from the coordinator for {silent:?}"));
            return;
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        // The lease is counted from this instant, taken before sending.
        let sent_at = clock::now();
        let syncs = self.syncs.statuses();
        if self.send(Out::Heartbeat(pb::Heartbeat {
            seq,
            checks,
            roles,
            syncs,
        })) {
            if self.sent.len() == SENT_WINDOW {
                self.sent.pop_front();
            }
            self.sent.push_back((seq, sent_at));
        }
    }

    /// Sends a hook result, or keeps it for the next session.
    pub fn report(&mut self, result: pb::HookResult) {
        if !self.send(Out::HookResult(result.clone())) {
            if self.pending_reports.len() == MAX_PENDING_REPORTS {
                self.pending_reports.pop_front();
            }
            self.pending_reports.push_back(result);
        }
    }

    /// Says goodbye and waits (up to `grace`) for the coordinator to take
    /// everything queued before and close its half.
    pub async fn goodbye(&mut self, grace: Duration) {
        self.send(Out::Goodbye(pb::Goodbye {
            reason: "agent stopping".into(),
        }));
        if let Some(Connection {
            outbound,
            mut inbound,
            ..
        }) = self.conn.take()
        {
            drop(outbound);
            let _ = tokio::time::timeout(grace, async {
                while let Ok(Some(_)) = inbound.message().await {}
            })
            .await;
        }
    }

    fn on_message(&mut self, message: pb::CoordinatorMessage) -> LinkEvent {
        self.last_inbound = Instant::now();
        let Some(kind) = message.kind else {
            return LinkEvent::Nothing;
        };
        match kind {
            In::Welcome(w) => {
                tracing::info!(coordinator = %w.coordinator_id, "welcomed");
                self.refused = None;
                self.forbidden = false;
                self.welcomed = true;
                if let Some(settings) = w.settings {
                    self.apply_settings(settings);
                }
                LinkEvent::Nothing
            }
            In::Settings(settings) => {
                self.apply_settings(settings);
                LinkEvent::Nothing
            }
            In::Ack(ack) => match self.sent.iter().find(|(seq, _)| *seq == ack.seq) {
                Some(&(_, sent_at)) => LinkEvent::Grants {
                    sent_at,
                    grants: ack.grants,
                },
                None => LinkEvent::Nothing,
            },
            In::Assignment(a) => LinkEvent::Assignment(a),
            In::Release(r) => LinkEvent::Release(r),
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

    /// The session ended. A refusal as a duplicate is kept track of: once
    /// refused for twice the time the connected instance may stay silent
    /// (at least 10 s), this process is the duplicate and stops.
    fn session_ended(&mut self, end: SessionEnd) -> Result<(), DuplicateNode> {
        if end.forbidden {
            self.conn = None;
            self.forbidden = true;
            if self
                .forbidden_logged
                .is_none_or(|at| at.elapsed() >= DUPLICATE_LOG_EVERY)
            {
                self.forbidden_logged = Some(Instant::now());
                tracing::error!(node = %self.node_id, "refused by the coordinator: {} (trying again every {FORBIDDEN_RETRY:?})", end.reason);
            }
            return Ok(());
        }
        let Some(limit) = end.duplicate else {
            self.disconnected(&end.reason);
            return Ok(());
        };
        self.conn = None;
        let patience = limit.saturating_mul(2).max(MIN_DUPLICATE_PATIENCE);
        let r = self.refused.get_or_insert(Refusals {
            since: Instant::now(),
            patience,
            logged: None,
        });
        if r.since.elapsed() >= r.patience {
            return Err(DuplicateNode(format!(
                "another agent holds node id {}: {} — this agent stops (exit status {DUPLICATE_EXIT_STATUS})",
                self.node_id, end.reason
            )));
        }
        if r.logged
            .is_none_or(|at| at.elapsed() >= DUPLICATE_LOG_EVERY)
        {
            r.logged = Some(Instant::now());
            tracing::error!(
                node = %self.node_id,
                "refused: {} (trying again every {DUPLICATE_RETRY:?}; giving up in {:?})",
                end.reason,
                r.patience.saturating_sub(r.since.elapsed())
            );
        }
        Ok(())
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
}

/// Why a session ended.
struct SessionEnd {
    reason: String,
    /// Refused because another instance of this node is connected; with
    /// the coordinator's silence limit for that instance.
    duplicate: Option<Duration>,
    /// Refused because this agent may not speak for its node id (its
    /// certificate names another node, or it has none): a configuration
    /// error that only an operator can fix.
    forbidden: bool,
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
            forbidden: false,
        }),
        Err(status) if status.code() == tonic::Code::PermissionDenied => Err(SessionEnd {
            reason: status.message().to_owned(),
            duplicate: None,
            forbidden: true,
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
                forbidden: false,
            })
        }
        Err(status) => Err(SessionEnd {
            reason: format!("session failed: {}", status.message()),
            duplicate: None,
            forbidden: false,
        }),
    }
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
