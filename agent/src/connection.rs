//! Opening a session stream to a coordinator: each configured address in
//! turn, with exponential backoff and jitter, until one answers.

use std::time::Duration;

use proto::client::{ClientTls, endpoint};
use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// Messages the agent may queue for the coordinator before the connection
/// counts as stuck.
pub const OUTBOUND_CAPACITY: usize = 256;
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// The longest wait between attempts when no lease says otherwise.
pub const MAX_RETRY: Duration = Duration::from_secs(5);
/// The longest a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest opening a session may take in all (connect, HTTP/2
/// handshake, the coordinator's answer): a peer that accepts the
/// connection and then says nothing (a partition behind a proxy or a load
/// balancer) must not hold the agent forever.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// The same for the leader a replica named: other replicas have just
/// answered, so one that takes longer is frozen or gone (its followers
/// name it until its leadership lapses), and the agent moves on.
const LEADER_OPEN_TIMEOUT: Duration = Duration::from_secs(1);

/// How long to wait after the coordinator refused this agent's identity.
const REFUSED_RETRY: Duration = Duration::from_secs(5);

fn is_refusal(e: &anyhow::Error) -> bool {
    e.downcast_ref::<tonic::Status>()
        .is_some_and(|s| s.code() == tonic::Code::PermissionDenied)
}

/// The leader a coordinator replica that does not lead sent us to, if it
/// is reached the same way (`https://` stays `https://`).
fn leader_hint(e: &anyhow::Error, url: &str) -> Option<String> {
    let status = e.downcast_ref::<tonic::Status>()?;
    let leader = status
        .metadata()
        .get(proto::LEADER_METADATA)?
        .to_str()
        .ok()?;
    let scheme = |u: &str| u.split_once("://").map(|(s, _)| s.to_owned());
    (leader != url && scheme(leader) == scheme(url)).then(|| leader.to_owned())
}

fn refusal_message(e: &anyhow::Error) -> String {
    e.downcast_ref::<tonic::Status>()
        .map_or_else(|| format!("{e:#}"), |s| s.message().to_owned())
}

/// One open session stream.
pub struct Connection {
    pub url: String,
    /// This host's address on the route to the coordinator: what other
    /// agents of the fleet reach it by (advertised for the peer service).
    pub local_ip: Option<std::net::IpAddr>,
    pub outbound: mpsc::Sender<pb::AgentMessage>,
    pub inbound: Streaming<pb::CoordinatorMessage>,
}

/// Connects to the first coordinator that answers, waiting `delay` first
/// and at most `max_retry` between attempts. Never gives up: an agent keeps
/// trying for as long as it runs.
pub async fn connect(
    urls: Vec<String>,
    tls: ClientTls,
    delay: Duration,
    max_retry: Duration,
) -> Connection {
    tokio::time::sleep(delay).await;
    let mut retry = FIRST_RETRY.min(max_retry);
    loop {
        // Whether this pass over the list slept at all: replicas that
        // point elsewhere are passed by at once, but a whole pass of them
        // (views out of step during an election) waits like a failure.
        let mut waited = false;
        for url in &urls {
            let opened = open_within(url, &tls, OPEN_TIMEOUT).await;
            let hint = opened.as_ref().err().and_then(|e| leader_hint(e, url));
            let opened = match hint {
                // Its only URL (a Service name, a load balancer), or one
                // of its own: go to the leader at once. Any other address
                // is not trusted blindly: the next URL of the list is.
                Some(leader) if urls.len() == 1 || urls.contains(&leader) => {
                    tracing::info!(%url, %leader, "this coordinator replica does not lead: going to the leader");
                    open_within(&leader, &tls, LEADER_OPEN_TIMEOUT)
                        .await
                        .map_err(|e| e.context(format!("the leader {leader} (named by {url})")))
                }
                Some(leader) => {
                    tracing::info!(%url, %leader, "this coordinator replica does not lead: trying the next address");
                    continue;
                }
                None => opened,
            };
            match opened {
                Ok(connection) => return connection,
                Err(e) if is_refusal(&e) => {
                    // The coordinator answered and will not take this
                    // agent (its certificate): no point hurrying back.
                    tracing::error!(%url, "refused by the coordinator: {} (trying again in {REFUSED_RETRY:?})", refusal_message(&e));
                    tokio::time::sleep(REFUSED_RETRY).await;
                    waited = true;
                }
                Err(e) => {
                    // Full jitter keeps a fleet of agents from reconnecting
                    // in step.
                    let wait = rand::rng().random_range(Duration::ZERO..=retry);
                    let error = proto::client::explain(url, &format!("{e:#}"));
                    tracing::warn!(%url, error, retry_in = ?wait, "cannot open a session with the coordinator");
                    tokio::time::sleep(wait).await;
                    waited = true;
                    retry = retry.saturating_mul(2).min(max_retry);
                }
            }
        }
        if urls.is_empty() {
            std::future::pending::<()>().await;
        }
        if !waited {
            let wait = rand::rng().random_range(Duration::ZERO..=retry);
            tokio::time::sleep(wait).await;
            retry = retry.saturating_mul(2).min(max_retry);
        }
    }
}

/// Opens a session with `url`, giving up after `within`.
async fn open_within(url: &str, tls: &ClientTls, within: Duration) -> anyhow::Result<Connection> {
    tokio::time::timeout(within, open(url, tls))
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "no answer within {within:?} (the connection was accepted, nothing more)"
            ))
        })
}

async fn open(url: &str, tls: &ClientTls) -> anyhow::Result<Connection> {
    let channel = endpoint(url, tls, CONNECT_TIMEOUT)?.connect().await?;
    let (outbound, rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let response = AgentServiceClient::new(channel)
        .session(ReceiverStream::new(rx))
        .await?;
    Ok(Connection {
        url: url.to_owned(),
        local_ip: local_ip_towards(url).await,
        outbound,
        inbound: response.into_inner(),
    })
}

/// The local address the kernel would send from to reach `url`'s host: a
/// UDP socket "connected" there (which sends nothing) reports it.
async fn local_ip_towards(url: &str) -> Option<std::net::IpAddr> {
    let uri: tonic::transport::Uri = url.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let target = tokio::net::lookup_host((host, port)).await.ok()?.next()?;
    let bind: std::net::SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
    socket.connect(target).await.ok()?;
    Some(socket.local_addr().ok()?.ip())
}
