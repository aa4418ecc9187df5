//! The agent-facing gRPC service: one task per `Session` stream that reads
//! the agent's Hello, then relays heartbeats, hook results and goodbye to
//! the runtime until the stream ends.
//!
//! This file owns the protocol rules of a session (Hello first, within
//! `connect_timeout`; one Hello per session); the engine owns what the
//! messages mean.

use std::net::SocketAddr;
use std::time::Duration;

use proto::names;
use proto::v1 as pb;
use proto::v1::agent_message::Kind;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use std::sync::Arc;

use crate::auth::Auth;
use crate::connections::{Connections, SlotKind};
use crate::convert::checks_from_proto;
use crate::engine::{ClaimedRole, Hello, HookReport, Input};
use crate::leadership::Leadership;
use crate::limits::{
    LogEvery, MAX_CLAIMS, MAX_DETAIL, MAX_LABEL, MAX_REASON, MAX_SESSIONS_STARTING, Pace,
    SESSION_MESSAGES_PER_SECOND, clip,
};
use crate::runtime::Handle;
use proto::identity::{NODE_URI, Named, named_by};
use proto::vocab::{HookOutcome, Role};

/// Messages buffered per agent before the runtime gives up on it.
const OUTBOUND_CAPACITY: usize = 1024;

pub(crate) struct AgentSessions {
    leadership: Leadership,
    /// Cancelled at shutdown; each session's token is a child of it.
    shutdown: CancellationToken,
    auth: Arc<Auth>,
    /// Refusals a client can cause at will are logged at most this often.
    refusals: Arc<LogEvery>,
    /// Sessions waiting for their Hello: each may hold a partial message,
    /// so their number is bounded, and one connection or one certified
    /// node may hold only one of them (an agent opens one session at a
    /// time), so nobody can keep the others out.
    starting: Arc<tokio::sync::Semaphore>,
    waiting_nodes: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    connections: Arc<Connections>,
}

/// A certified node's place among the sessions waiting for their Hello.
struct NodeWaiting {
    node: String,
    waiting: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Drop for NodeWaiting {
    fn drop(&mut self) {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.node);
    }
}

impl AgentSessions {
    pub(crate) fn new(
        leadership: Leadership,
        shutdown: CancellationToken,
        auth: Arc<Auth>,
        connections: Arc<Connections>,
    ) -> Self {
        AgentSessions {
            leadership,
            shutdown,
            auth,
            refusals: Arc::new(LogEvery::new(Duration::from_secs(1))),
            starting: Arc::new(tokio::sync::Semaphore::new(MAX_SESSIONS_STARTING)),
            waiting_nodes: Arc::default(),
            connections,
        }
    }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentSessions {
    type SessionStream = ReceiverStream<Result<pb::CoordinatorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let address = request
            .remote_addr()
            .map_or_else(String::new, |a: SocketAddr| a.to_string());
        // With client certificates, a session speaks for the node its
        // certificate names, and for no other. A certificate that names no
        // node is refused at once, before any Hello is waited for.
        let certified = if self.auth.client_certs {
            let cert = request
                .peer_certs()
                .and_then(|certs| certs.first().cloned());
            let node = match cert.as_deref().map(named_by) {
                Some(Ok(Some(Named::Node(node)))) => Ok(node),
                Some(Ok(Some(other))) => Err(format!(
                    "this certificate names {other}, not a node: an agent presents a certificate \
                     naming its node ({NODE_URI}NODE)"
                )),
                Some(Ok(None)) => Err(format!(
                    "this certificate names no node: an agent presents a certificate naming its \
                     node ({NODE_URI}NODE)"
                )),
                Some(Err(why)) => Err(format!("this certificate names no node: {why}")),
                None => Err(format!(
                    "no client certificate: an agent presents a certificate naming its node \
                     ({NODE_URI}NODE)"
                )),
            };
            match node {
                Ok(node) => Some(node),
                Err(reason) => {
                    if self.refusals.due() {
                        tracing::warn!(%address, "agent session refused: {reason}");
                    }
                    return Err(Status::permission_denied(reason));
                }
            }
        } else {
            None
        };
        let handle = self
            .leadership
            .handle()
            .map_err(|e| crate::error::not_leader_status(&e))?;
        let Some(on_connection) = self
            .connections
            .slot(request.remote_addr(), SlotKind::Hello)
        else {
            return Err(Status::resource_exhausted(
                "an agent session is already waiting for its Hello on this connection",
            ));
        };
        let node_waiting = match &certified {
            Some(node) => {
                let mut waiting = self
                    .waiting_nodes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !waiting.insert(node.clone()) {
                    return Err(Status::resource_exhausted(format!(
                        "a session of node {node} is already waiting for its Hello: try again"
                    )));
                }
                Some(NodeWaiting {
                    node: node.clone(),
                    waiting: self.waiting_nodes.clone(),
                })
            }
            None => None,
        };
        let Ok(starting) = self.starting.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "{MAX_SESSIONS_STARTING} agent sessions are waiting for their Hello: try again"
            )));
        };
        let inbound = request.into_inner();
        let (outbound, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        // Answer with the response stream at once: the agent's call returns
        // on our response headers, and only then does it send its Hello.
        let opening = Opening {
            address,
            certified,
            connect_timeout: handle.connect_timeout(),
            refusals: self.refusals.clone(),
            starting: (starting, on_connection, node_waiting),
        };
        tokio::spawn(run_session(
            handle,
            inbound,
            outbound,
            opening,
            self.shutdown.child_token(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// What is known of a session before its Hello.
struct Opening {
    address: String,
    /// The node its certificate names (with client certificates on).
    certified: Option<String>,
    connect_timeout: Duration,
    refusals: Arc<LogEvery>,
    /// Held until the Hello has arrived: the place among all sessions
    /// waiting, the connection's, the certified node's.
    starting: (
        tokio::sync::OwnedSemaphorePermit,
        crate::connections::Slot,
        Option<NodeWaiting>,
    ),
}

async fn run_session(
    handle: Handle,
    mut inbound: Streaming<pb::AgentMessage>,
    outbound: crate::runtime::Outbound,
    opening: Opening,
    cancel: CancellationToken,
) {
    let Opening {
        address,
        certified,
        connect_timeout,
        refusals,
        starting,
    } = opening;
    let hello = read_hello(&mut inbound, connect_timeout).await;
    drop(starting);
    let hello = match hello {
        Ok(hello) => hello,
        Err(status) => {
            if refusals.due() {
                tracing::warn!(%address, error = %status.message(), "agent session refused");
            }
            let _ = outbound.send(Err(status)).await;
            return;
        }
    };
    if let Some(named) = certified
        && named != hello.node_id
    {
        let reason = format!(
            "this agent's certificate names node {named}, not {}: an agent speaks only for the \
             node its certificate names",
            hello.node_id
        );
        if refusals.due() {
            tracing::warn!(%address, node = %hello.node_id, "agent session refused: {reason}");
        }
        handle
            .input(Input::IdentityRefused {
                node: hello.node_id,
                address,
                reason: reason.clone(),
            })
            .await;
        let _ = outbound.send(Err(Status::permission_denied(reason))).await;
        return;
    }
    let session = handle.new_session_id();
    let node = hello.node_id.clone();
    let claims = claims_from_proto(hello.roles);
    let input = Input::SessionOpened {
        session,
        hello: Hello {
            node: node.clone(),
            instance: hello.instance_id,
            // One spelling, so the same installation always compares equal.
            node_uuid: hello.node_uuid.to_ascii_lowercase(),
            previous_instance: (!hello.previous_instance.is_empty())
                .then_some(hello.previous_instance),
            agent_version: clip(hello.agent_version, MAX_LABEL),
            address,
            peer_address: peer_address(hello.peer_address),
            roles: claims,
        },
    };
    // Everything this session logs carries its node and session id.
    let span = tracing::info_span!("session", %node, session);
    relay(handle, inbound, outbound, cancel, input, session, node)
        .instrument(span)
        .await;
}

/// A Hello's peer address, if it is one: `host:port` with a port, within
/// `MAX_PEER_ADDRESS` characters and without spaces or controls (it is
/// handed to other agents to connect to; anything else is dropped).
fn peer_address(text: String) -> Option<String> {
    let fits = !text.is_empty()
        && text.len() <= crate::limits::MAX_PEER_ADDRESS
        && text.bytes().all(|b| b.is_ascii_graphic());
    let port_ok = text
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    (fits && port_ok).then_some(text)
}

/// Registers the session and relays what the agent sends until the stream
/// ends or the session is cancelled.
async fn relay(
    handle: Handle,
    mut inbound: Streaming<pb::AgentMessage>,
    outbound: crate::runtime::Outbound,
    cancel: CancellationToken,
    input: Input,
    session: u64,
    node: String,
) {
    // From here on only the runtime holds the outbound sender, so the
    // response stream ends when the runtime drops the session.
    handle.open_session(input, outbound, cancel.clone()).await;

    let mut pace = Pace::new(SESSION_MESSAGES_PER_SECOND);
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => break,
            message = async {
                pace.wait().await;
                inbound.message().await
            } => message,
        };
        let kind = match message {
            Ok(Some(pb::AgentMessage { kind: Some(kind) })) => kind,
            Ok(Some(pb::AgentMessage { kind: None })) => continue,
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(%node, session, error = %status, "agent stream broke");
                break;
            }
        };
        let input = match input_of(session, kind) {
            Ok(Some(input)) => input,
            Ok(None) => continue,
            Err(SecondHello) => {
                tracing::warn!(%node, session, "second Hello on one session; closing it");
                break;
            }
        };
        handle.input(input).await;
    }
    handle.input(Input::SessionClosed { session }).await;
}

/// A Hello after the first: the session is closed.
#[derive(Debug)]
pub(crate) struct SecondHello;

/// What one message of an established session means to the engine, with
/// every text cut to its bound; `None` for one to skip (unreadable).
pub(crate) fn input_of(session: u64, kind: Kind) -> Result<Option<Input>, SecondHello> {
    Ok(Some(match kind {
        Kind::Heartbeat(hb) => Input::Heartbeat {
            session,
            seq: hb.seq,
            received: Instant::now(),
            checks: checks_from_proto(hb.checks),
            roles: claims_from_proto(hb.roles),
            syncs: crate::convert::syncs_from_proto(hb.syncs),
        },
        Kind::HookResult(r) => {
            let Ok(role) = Role::try_from(r.role) else {
                return Ok(None);
            };
            Input::HookResult {
                session,
                report: HookReport {
                    group: r.group,
                    epoch: r.epoch,
                    role,
                    outcome: HookOutcome::from_wire(r.outcome),
                    exit_code: r.exit_code,
                    detail: clip(r.detail, MAX_DETAIL),
                },
            }
        }
        Kind::Goodbye(g) => Input::Goodbye {
            session,
            reason: clip(g.reason, MAX_REASON),
        },
        Kind::Hello(_) => return Err(SecondHello),
    }))
}

/// Roles an agent claims; unreadable entries are dropped.
fn claims_from_proto(roles: Vec<pb::GroupRole>) -> Vec<ClaimedRole> {
    roles
        .into_iter()
        .take(MAX_CLAIMS)
        .filter(|r| names::validate_group_name(&r.group).is_ok())
        .filter_map(|r| {
            Some(ClaimedRole {
                role: Role::try_from(r.role).ok()?,
                group: r.group,
                epoch: r.epoch,
            })
        })
        .collect()
}

/// Waits for the first message, which must be a valid Hello.
async fn read_hello(
    inbound: &mut Streaming<pb::AgentMessage>,
    connect_timeout: Duration,
) -> Result<pb::Hello, Status> {
    let first = tokio::time::timeout(connect_timeout, inbound.message())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "no Hello within the connect timeout of {}",
                humantime::format_duration(connect_timeout)
            ))
        })??;
    match first {
        Some(pb::AgentMessage {
            kind: Some(Kind::Hello(hello)),
        }) => checked_hello(hello),
        Some(_) => Err(Status::failed_precondition(
            "the first message of a session must be a Hello",
        )),
        None => Err(Status::cancelled(
            "the agent closed the stream before its Hello",
        )),
    }
}

/// `hello`, if every identifier in it has its form.
pub(crate) fn checked_hello(hello: pb::Hello) -> Result<pb::Hello, Status> {
    names::validate_node_id(&hello.node_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
    validate_instance("instance_id", &hello.instance_id)?;
    validate_node_uuid(&hello.node_uuid)?;
    if !hello.previous_instance.is_empty() {
        validate_instance("previous_instance", &hello.previous_instance)?;
    }
    Ok(hello)
}

/// An instance id is 32 lowercase hex digits (128 random bits): hard to
/// guess, and short enough to keep and compare.
fn validate_instance(field: &str, id: &str) -> Result<(), Status> {
    let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    if id.len() == 32 && id.bytes().all(hex) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "the Hello's {field} must be 32 lowercase hex digits (agents from before \
             instance ids existed must be upgraded)"
        )))
    }
}

/// A node UUID in its usual text form: 8-4-4-4-12 hex digits.
fn validate_node_uuid(id: &str) -> Result<(), Status> {
    let parts: Vec<&str> = id.split('-').collect();
    let lengths: Vec<usize> = parts.iter().map(|p| p.len()).collect();
    let hex = parts
        .iter()
        .all(|p| p.bytes().all(|c| c.is_ascii_hexdigit()));
    if lengths == [8, 4, 4, 4, 12] && hex {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "the Hello's node_uuid must be a UUID like 0f8fad5b-d9cb-469f-a165-70867728950e",
        ))
    }
}
