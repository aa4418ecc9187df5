//! The peer service on the agent: a group's primary serves the snapshots
//! it published — the manifest and the files' content — to the other
//! members, and only while it is that group's primary and may act. Every
//! transfer goes through the sync's rate limit; a reader that stops
//! reading is dropped; connections and streams are capped.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use proto::v1 as pb;
use proto::v1::peer_service_server::{PeerService, PeerServiceServer};
use proto::vocab::Role;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Response, Status};

use super::board::RoleBoard;
use super::config::SyncConfig;
use super::manifest::{Manifest, Stat};
use super::rate::RateLimit;
use crate::clock;

/// Connections the peer service holds at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Transfers it serves at once (beyond: RESOURCE_EXHAUSTED).
const MAX_TRANSFERS: usize = 32;
const MAX_STREAMS_PER_CONNECTION: u32 = 8;
/// A reader that takes nothing for this long is dropped.
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// Entries per manifest page, and bytes per file chunk.
const PAGE: usize = 1000;
pub const CHUNK: usize = 64 * 1024;
/// The largest message either side of the peer service accepts.
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// A snapshot the primary published, and each file's stat when hashed:
/// a file is served only while it still has it.
pub struct Published {
    pub manifest: Manifest,
    pub stats: HashMap<String, Stat>,
    pub root: PathBuf,
    index: HashMap<String, usize>,
}

impl Published {
    pub fn new(manifest: Manifest, stats: HashMap<String, Stat>, root: PathBuf) -> Published {
        let index = manifest
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.path.clone(), i))
            .collect();
        Published {
            manifest,
            stats,
            root,
            index,
        }
    }
}

/// One sync as the peer service knows it.
pub struct Served {
    pub config: SyncConfig,
    pub limit: Option<Arc<RateLimit>>,
    /// Bytes of content sent since the agent started.
    pub sent: Arc<AtomicU64>,
    published: Mutex<Option<Arc<Published>>>,
    /// The sync's last failure (empty after a success): what standbys
    /// asking for a snapshot are told, and what the member reports.
    problem: Mutex<String>,
}

impl Served {
    pub fn new(config: SyncConfig, limit: Option<Arc<RateLimit>>) -> Served {
        Served {
            config,
            limit,
            sent: Arc::default(),
            published: Mutex::default(),
            problem: Mutex::default(),
        }
    }

    /// Serves `snapshot` from now on (none: serves nothing).
    pub fn publish(&self, snapshot: Option<Published>) {
        *self.published.lock().unwrap_or_else(|e| e.into_inner()) = snapshot.map(Arc::new);
    }

    fn published(&self) -> Option<Arc<Published>> {
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn problem(&self) -> String {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_problem(&self, problem: String) {
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }
}

/// Requests under way on each connection (by the client's address) and
/// when the last one began or ended: a connection is idle only when none
/// runs and none came for a while — bytes alone (pings) do not count.
#[derive(Default)]
pub struct Activity(Mutex<HashMap<std::net::SocketAddr, (usize, tokio::time::Instant)>>);

impl Activity {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<std::net::SocketAddr, (usize, tokio::time::Instant)>>
    {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request begins; the guard ends it.
    fn begin(self: &Arc<Self>, addr: std::net::SocketAddr) -> Active {
        let mut map = self.lock();
        let entry = map.entry(addr).or_insert((0, tokio::time::Instant::now()));
        entry.0 += 1;
        entry.1 = tokio::time::Instant::now();
        Active {
            activity: self.clone(),
            addr,
        }
    }

    /// Whether the connection from `addr` runs a request, or began or
    /// ended one within `within`.
    fn busy(&self, addr: std::net::SocketAddr, within: Duration) -> bool {
        self.lock()
            .get(&addr)
            .is_some_and(|(running, last)| *running > 0 || last.elapsed() < within)
    }

    fn forget(&self, addr: std::net::SocketAddr) {
        self.lock().remove(&addr);
    }
}

/// A request under way (see [`Activity`]).
struct Active {
    activity: Arc<Activity>,
    addr: std::net::SocketAddr,
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(entry) = self.activity.lock().get_mut(&self.addr) {
            entry.0 = entry.0.saturating_sub(1);
            entry.1 = tokio::time::Instant::now();
        }
    }
}

pub struct PeerState {
    activity: Arc<Activity>,
    pub node_id: String,
    /// Clients present certificates (TLS): each must name a node.
    pub tls: bool,
    pub roles: watch::Receiver<RoleBoard>,
    pub syncs: HashMap<String, Arc<Served>>,
    transfers: Arc<Semaphore>,
}

impl PeerState {
    pub fn new(
        node_id: String,
        tls: bool,
        roles: watch::Receiver<RoleBoard>,
        syncs: HashMap<String, Arc<Served>>,
    ) -> PeerState {
        PeerState {
            activity: Arc::default(),
            node_id,
            tls,
            roles,
            syncs,
            transfers: Arc::new(Semaphore::new(MAX_TRANSFERS)),
        }
    }

    /// The sync, its published snapshot and this node's epoch, if it may
    /// serve `group` now.
    fn source(
        &self,
        group: &str,
        sync: &str,
        asked_epoch: u64,
    ) -> Result<(Arc<Served>, Arc<Published>, u64), Status> {
        let served = self
            .syncs
            .get(sync)
            .filter(|s| s.config.covers(group))
            .ok_or_else(|| {
                Status::not_found(format!(
                    "{}: no sync {:?} for group {:?} here",
                    self.node_id,
                    clip(sync),
                    clip(group)
                ))
            })?;
        let epoch = {
            let roles = self.roles.borrow();
            match roles.get(group) {
                Some(view) if view.role == Role::Primary && view.may_act(clock::now()) => {
                    view.epoch
                }
                _ => {
                    return Err(Status::failed_precondition(format!(
                        "{} is not the primary of group {} now",
                        self.node_id,
                        clip(group)
                    )));
                }
            }
        };
        if asked_epoch > epoch {
            return Err(Status::failed_precondition(format!(
                "group {} is at epoch {asked_epoch} for the asking member, this primary holds epoch {epoch}",
                clip(group)
            )));
        }
        let published = served.published().ok_or_else(|| {
            let problem = served.problem();
            if problem.is_empty() {
                Status::unavailable(format!("{} has no snapshot of {sync} yet", self.node_id))
            } else {
                Status::unavailable(format!(
                    "{} has no snapshot of {sync}: {problem}",
                    self.node_id
                ))
            }
        })?;
        Ok((served.clone(), published, epoch))
    }

    /// Whether this node is `group`'s primary and may act, now.
    fn may_serve(&self, group: &str) -> bool {
        self.roles
            .borrow()
            .get(group)
            .is_some_and(|v| v.role == Role::Primary && v.may_act(clock::now()))
    }

    /// With TLS, only an agent (a node certificate) may fetch copies.
    fn check_caller<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if !self.tls {
            return Ok(());
        }
        let named = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| proto::identity::named_by(c.as_ref())));
        match named {
            Some(Ok(Some(proto::identity::Named::Node(_)))) => Ok(()),
            _ => Err(Status::permission_denied(
                "only a node's agent (a node certificate) may fetch synced copies",
            )),
        }
    }

    fn permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.transfers
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("too many transfers at once: try again"))
    }
}

fn clip(s: &str) -> String {
    s.chars().take(63).collect()
}

/// Sends `item` unless the reader has not taken anything for
/// [`STALL_LIMIT`]; false when the transfer is over.
async fn send<T>(tx: &mpsc::Sender<Result<T, Status>>, item: Result<T, Status>) -> bool {
    matches!(
        tokio::time::timeout(STALL_LIMIT, tx.send(item)).await,
        Ok(Ok(()))
    )
}

pub struct Peer(pub Arc<PeerState>);

#[tonic::async_trait]
impl PeerService for Peer {
    type GetManifestStream = ReceiverStream<Result<pb::ManifestPart, Status>>;
    type ReadFileStream = ReceiverStream<Result<pb::FileChunk, Status>>;

    async fn get_manifest(
        &self,
        request: Request<pb::ManifestRequest>,
    ) -> Result<Response<Self::GetManifestStream>, Status> {
        let active = request.remote_addr().map(|a| self.0.activity.begin(a));
        self.0.check_caller(&request)?;
        let r = request.into_inner();
        let (_, published, epoch) = self.0.source(&r.group, &r.sync, r.epoch)?;
        let permit = self.0.permit()?;
        let manifest = &published.manifest;
        let unchanged = r.have == manifest.id;
        let header = pb::ManifestHeader {
            node: self.0.node_id.clone(),
            epoch,
            snapshot: manifest.id.clone(),
            entries: manifest.entries.len() as u64,
            bytes: manifest.bytes,
            unchanged,
        };
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let _permit = permit;
            let _active = active;
            let part = |part| pb::ManifestPart { part: Some(part) };
            if !send(&tx, Ok(part(pb::manifest_part::Part::Header(header)))).await || unchanged {
                return;
            }
            for page in published.manifest.entries.chunks(PAGE) {
                let entries = pb::ManifestEntries {
                    entries: page.to_vec(),
                };
                if !send(&tx, Ok(part(pb::manifest_part::Part::Entries(entries)))).await {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn read_file(
        &self,
        request: Request<pb::ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        let active = request.remote_addr().map(|a| self.0.activity.begin(a));
        self.0.check_caller(&request)?;
        let r = request.into_inner();
        let (served, published, _) = self.0.source(&r.group, &r.sync, r.epoch)?;
        let entry = published
            .index
            .get(&r.path)
            .map(|&i| &published.manifest.entries[i])
            .filter(|e| e.kind == pb::EntryKind::File as i32 && e.sha256 == r.sha256)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "{:?} with that content is not in the current snapshot",
                    clip(&r.path)
                ))
            })?;
        let size = entry.size;
        let stat = published.stats.get(&r.path).copied();
        let path = if r.path.is_empty() {
            published.root.clone()
        } else {
            published.root.join(&r.path)
        };
        let permit = self.0.permit()?;
        let mut file = open_unchanged(&path, stat)
            .await
            .map_err(|e| Status::aborted(format!("{}: {e}", clip(&r.path))))?;
        let (tx, rx) = mpsc::channel(2);
        let state = self.0.clone();
        let group = r.group.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _active = active;
            let mut left = size;
            let mut buffer = vec![0u8; CHUNK];
            while left > 0 {
                if !state.may_serve(&group) {
                    // Demoted while sending: the new primary's copy is the
                    // one to fetch now.
                    let _ = send(&tx, Err(Status::aborted("no longer the group's primary"))).await;
                    return;
                }
                let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
                let n = match file.read(&mut buffer[..want]).await {
                    Ok(0) => {
                        let _ = send(
                            &tx,
                            Err(Status::aborted("the file shrank while it was sent")),
                        )
                        .await;
                        return;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        let _ =
                            send(&tx, Err(Status::aborted(format!("reading failed: {e}")))).await;
                        return;
                    }
                };
                if let Some(limit) = &served.limit {
                    limit.take(n).await;
                }
                left -= n as u64;
                served.sent.fetch_add(n as u64, Ordering::Relaxed);
                let chunk = pb::FileChunk {
                    data: buffer[..n].to_vec(),
                };
                if !send(&tx, Ok(chunk)).await {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Opens `path` without following a link, if it still has `stat`.
async fn open_unchanged(
    path: &std::path::Path,
    stat: Option<Stat>,
) -> std::io::Result<tokio::fs::File> {
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .await?;
    let now = Stat::of(&file.metadata().await?);
    if Some(now) != stat {
        return Err(std::io::Error::other(
            "changed since the snapshot: a newer one follows",
        ));
    }
    Ok(file)
}

/// A connection that starts no request within this long is closed.
const FIRST_REQUEST: Duration = Duration::from_secs(10);
/// A connection that runs no request and starts none for this long is
/// closed (an agent fetching polls every `interval`, and reconnects when
/// it needs to).
const IDLE: Duration = Duration::from_secs(60);

/// A connection, holding its place among [`MAX_CONNECTIONS`], closed when
/// its client asks for nothing for a while — answering pings is not
/// asking — so idle connections cannot keep the places from the members
/// that need them.
struct Conn {
    io: TcpStream,
    _place: OwnedSemaphorePermit,
    addr: std::net::SocketAddr,
    activity: Arc<Activity>,
    check_at: Pin<Box<tokio::time::Sleep>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.activity.forget(self.addr);
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Pending => loop {
                match self.check_at.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) if self.activity.busy(self.addr, IDLE) => {
                        let next = tokio::time::Instant::now() + IDLE;
                        self.check_at.as_mut().reset(next);
                    }
                    Poll::Ready(()) => {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the peer asked for nothing for too long",
                        )));
                    }
                }
            },
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

/// Serves the peer service on `listener` until `shutdown`, with TLS
/// (client certificates required) when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    state: Arc<PeerState>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let activity = state.activity.clone();
    let incoming = futures::stream::unfold((listener, places), move |(listener, places)| {
        let activity = activity.clone();
        async move {
            loop {
                match listener.accept().await {
                    Ok((io, _)) => {
                        let Ok(place) = places.clone().try_acquire_owned() else {
                            // Full: this one is closed at once (dropped).
                            continue;
                        };
                        let _ = io.set_nodelay(true);
                        let Ok(addr) = io.peer_addr() else {
                            continue;
                        };
                        let conn = Conn {
                            io,
                            _place: place,
                            addr,
                            activity: activity.clone(),
                            check_at: Box::pin(tokio::time::sleep(FIRST_REQUEST)),
                        };
                        return Some((Ok::<_, std::io::Error>(conn), (listener, places)));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "peer service: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    });
    let service = PeerServiceServer::new(Peer(state))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_when_it_asks_for_nothing() {
        let activity = Arc::new(Activity::default());
        let addr: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
        // Never asked: idle at once (answering pings is not asking).
        assert!(!activity.busy(addr, IDLE));
        let transfer = activity.begin(addr);
        tokio::time::advance(IDLE * 10).await;
        assert!(activity.busy(addr, IDLE), "a long transfer keeps it");
        drop(transfer);
        tokio::time::advance(IDLE / 2).await;
        assert!(activity.busy(addr, IDLE));
        tokio::time::advance(IDLE).await;
        assert!(!activity.busy(addr, IDLE));
        activity.forget(addr);
        assert!(activity.lock().is_empty());
    }
}
