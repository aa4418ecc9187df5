//! Raw gRPC agent sessions for tests that speak the protocol themselves:
//! hostile clients, impostors, duplicates and load generators.

use proto::client::ClientTls;
use proto::v1 as pb;

/// Where a raw session connects, and with which TLS files (none for a
/// plaintext coordinator).
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub tls: ClientTls,
}

/// A fresh random instance id, as an agent makes one at every start.
pub fn new_instance() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A Hello for `node` from a new agent instance.
pub fn hello(node: &str, roles: Vec<pb::GroupRole>) -> pb::Hello {
    hello_as(node, &new_instance(), roles)
}

/// A Hello for `node` from the given agent instance.
pub fn hello_as(node: &str, instance: &str, roles: Vec<pb::GroupRole>) -> pb::Hello {
    pb::Hello {
        peer_address: String::new(),
        node_id: node.to_owned(),
        agent_version: "raw".into(),
        roles,
        instance_id: instance.to_owned(),
        node_uuid: "00000000-0000-4000-8000-0000000000aa".into(),
        previous_instance: String::new(),
    }
}

/// The Hello message itself, ready to send on a session stream.
pub fn hello_message(hello: pb::Hello) -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(hello)),
    }
}

/// One raw agent session: whatever a test sends, in any order.
pub struct RawSession {
    pub tx: tokio::sync::mpsc::Sender<pb::AgentMessage>,
    pub inbound: tonic::Streaming<pb::CoordinatorMessage>,
    next_seq: u64,
}

impl RawSession {
    /// Opens a session with `hello` and waits for the coordinator's first
    /// answer: the Welcome, or the status that refused it.
    pub async fn open(to: &Target, hello: pb::Hello) -> Result<RawSession, tonic::Status> {
        use proto::v1::agent_service_client::AgentServiceClient;
        let endpoint = proto::client::endpoint(&to.url, &to.tls, std::time::Duration::from_secs(5))
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
        let mut client = AgentServiceClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let _ = tx.send(hello_message(hello)).await;
        let mut inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        match inbound.message().await? {
            Some(_) => Ok(RawSession {
                tx,
                inbound,
                next_seq: 1,
            }),
            None => Err(tonic::Status::cancelled("closed before the Welcome")),
        }
    }

    pub async fn send(&self, kind: pb::agent_message::Kind) -> bool {
        self.tx
            .send(pb::AgentMessage { kind: Some(kind) })
            .await
            .is_ok()
    }

    /// A heartbeat with the next sequence number.
    pub async fn heartbeat(&mut self, roles: Vec<pb::GroupRole>) -> bool {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.send(pb::agent_message::Kind::Heartbeat(pb::Heartbeat {
            syncs: Vec::new(),
            seq,
            checks: vec![],
            roles,
        }))
        .await
    }

    pub async fn hook_result(&self, group: &str, epoch: u64, role: pb::Role) -> bool {
        self.send(pb::agent_message::Kind::HookResult(pb::HookResult {
            group: group.to_owned(),
            epoch,
            role: role as i32,
            outcome: pb::HookOutcome::Succeeded as i32,
            exit_code: Some(0),
            detail: String::new(),
        }))
        .await
    }

    /// Reads whatever the coordinator sent until `within` passes or the
    /// stream ends; returns how many lease grants it carried.
    pub async fn drain(&mut self, within: std::time::Duration) -> usize {
        let mut grants = 0;
        let _ = tokio::time::timeout(within, async {
            while let Ok(Some(m)) = self.inbound.message().await {
                if let Some(pb::coordinator_message::Kind::Ack(ack)) = m.kind {
                    grants += ack.grants.len();
                }
            }
        })
        .await;
        grants
    }
}

/// A claim for `group` as `role` at `epoch`.
pub fn claim(group: &str, role: pb::Role, epoch: u64) -> pb::GroupRole {
    pb::GroupRole {
        group: group.to_owned(),
        role: role as i32,
        epoch,
    }
}

/// Opens sessions as `node` from new instances until one is accepted (the
/// node's own session went silent or closed), or `within` passes.
pub async fn open_when_accepted(
    to: &Target,
    node: &str,
    roles: Vec<pb::GroupRole>,
    within: std::time::Duration,
) -> Option<RawSession> {
    let deadline = tokio::time::Instant::now() + within;
    let instance = new_instance();
    while tokio::time::Instant::now() < deadline {
        if let Ok(s) = RawSession::open(to, hello_as(node, &instance, roles.clone())).await {
            return Some(s);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    None
}

/// A hostile client, for `length`: sessions as `node` (from one instance or
/// many) that claim any role at wild or plausible epochs, confirm
/// step-downs they never made, report failed promote hooks, replay
/// heartbeats and say goodbye. `groups` are the groups and epochs it
/// aims at. Blocking: runs its own small runtime.
pub fn hostile(
    to: &Target,
    node: &str,
    groups: &[(String, u64)],
    length: std::time::Duration,
    seed: u64,
) {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::time::Duration;

    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let mut rng = StdRng::seed_from_u64(seed);
        let end = tokio::time::Instant::now() + length;
        let steady = new_instance();
        while tokio::time::Instant::now() < end {
            let (group, epoch) = groups[rng.random_range(0..groups.len())].clone();
            let epoch = match rng.random_range(0..6) {
                0 => u64::MAX,
                1 => epoch.saturating_add(rng.random_range(1..4)),
                _ => epoch,
            };
            let role =
                [pb::Role::Primary, pb::Role::Secondary, pb::Role::Fenced][rng.random_range(0..3)];
            let claims = vec![claim(&group, role, epoch)];
            let instance = if rng.random_bool(0.5) {
                steady.clone()
            } else {
                new_instance()
            };
            let opened = tokio::time::timeout(
                Duration::from_secs(1),
                RawSession::open(to, hello_as(node, &instance, claims.clone())),
            )
            .await;
            let Ok(Ok(mut s)) = opened else {
                // Refused (the node is connected) or unreachable: again.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            for _ in 0..rng.random_range(3..30) {
                let sent = match rng.random_range(0..7) {
                    0 | 1 => s.heartbeat(claims.clone()).await,
                    2 => s.hook_result(&group, epoch, pb::Role::Secondary).await,
                    3 => {
                        s.hook_result(&group, epoch.saturating_add(1), pb::Role::Secondary)
                            .await
                    }
                    4 => {
                        s.send(pb::agent_message::Kind::HookResult(pb::HookResult {
                            group: group.clone(),
                            epoch,
                            role: pb::Role::Primary as i32,
                            outcome: pb::HookOutcome::Failed as i32,
                            exit_code: Some(1),
                            detail: "hostile".into(),
                        }))
                        .await
                    }
                    5 => {
                        s.send(pb::agent_message::Kind::Heartbeat(pb::Heartbeat {
                            syncs: Vec::new(),
                            seq: 1,
                            checks: vec![],
                            roles: claims.clone(),
                        }))
                        .await
                    }
                    _ => {
                        s.send(pb::agent_message::Kind::Goodbye(pb::Goodbye {
                            reason: "hostile".into(),
                        }))
                        .await
                    }
                };
                if !sent {
                    break;
                }
                s.drain(Duration::from_millis(rng.random_range(20..80)))
                    .await;
            }
        }
    });
}

/// An impostor, for `length`: sessions claiming `node` with credentials
/// that do not prove it (`credentials`: a label and where and how to
/// connect — another node's certificate, none, a foreign CA's). Returns
/// the labels of the attempts that were accepted (none may be). Blocking:
/// runs its own small runtime.
pub fn impostor(
    credentials: &[(String, Target)],
    node: &str,
    groups: &[(String, u64)],
    length: std::time::Duration,
) -> Vec<String> {
    use std::time::Duration;
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    rt.block_on(async {
        let mut accepted = Vec::new();
        let end = tokio::time::Instant::now() + length;
        let mut turn = 0usize;
        while tokio::time::Instant::now() < end && !credentials.is_empty() {
            let (label, to) = &credentials[turn % credentials.len()];
            let (group, epoch) = &groups[turn % groups.len()];
            turn += 1;
            let claims = vec![claim(group, pb::Role::Primary, *epoch)];
            let opened = tokio::time::timeout(
                Duration::from_secs(2),
                RawSession::open(to, hello(node, claims.clone())),
            )
            .await;
            if let Ok(Ok(mut s)) = opened {
                accepted.push(label.clone());
                // Try to do harm with it, as a real attacker would.
                s.heartbeat(claims).await;
                s.hook_result(group, *epoch, pb::Role::Secondary).await;
                s.drain(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        accepted
    })
}
