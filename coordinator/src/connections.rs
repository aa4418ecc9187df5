//! The connections one listener keeps: at most a cap, none that sends
//! nothing in its first seconds, none silent for the idle timeout; when
//! the cap is reached (or the process runs out of file descriptors) the
//! connection that has been silent longest makes room. Every accepted
//! socket is wrapped in [`Tracked`], which notes when its client last sent
//! anything and ends the connection when told to.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::limits::Counted;

/// How long a new connection has to send its first bytes (a TLS
/// ClientHello, the HTTP/2 preface, a request line).
pub(crate) const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the timeouts are checked.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Lines about refused or closed connections (anyone can cause them) are
/// written at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What a connection proved of who it is, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Trust {
    /// No client certificate.
    Anonymous = 0,
    /// A certificate that allows only reading (a viewer), or names nobody.
    Reader = 1,
    /// An agent's certificate, an operator's or an admin's; and every
    /// connection in plaintext, where nothing tells them apart.
    Trusted = 2,
}

impl Trust {
    /// How firmly a caller with `access` (its certificate's or token's
    /// role) holds.
    pub(crate) fn of_access(access: crate::auth::Access) -> Trust {
        match access {
            crate::auth::Access::Viewer => Trust::Reader,
            crate::auth::Access::Operator | crate::auth::Access::Admin => Trust::Trusted,
        }
    }
}

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Open connections at most.
    pub(crate) max: usize,
    /// A connection from which nothing was read for this long is closed.
    pub(crate) idle: Duration,
    /// When full, a trusted connection silent for at least this long is
    /// closed to make room (gRPC: longer than the longest heartbeat
    /// interval, so a live agent never is; HTTP: none, since a probe's
    /// request is over in milliseconds and must get in).
    pub(crate) evictable_after: Duration,
    /// Whether a connection is trusted from the start (plaintext: nothing
    /// to tell them apart), or only once it shows its certificate.
    pub(crate) trust_all: bool,
}

/// The open connections of one listener.
pub(crate) struct Connections {
    /// "gRPC" or "HTTP", for the log.
    name: &'static str,
    bounds: Bounds,
    started: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    /// The same connections by client address, to find the one a call
    /// came on (a connection closed to make room stays here until its
    /// socket is dropped).
    by_peer: Mutex<HashMap<std::net::SocketAddr, Arc<Conn>>>,
    refused: Counted,
    closed: Counted,
}

/// What the registry knows of one connection.
struct Conn {
    /// The client's address, to find the connection a call came on.
    peer: Option<std::net::SocketAddr>,
    /// Milliseconds since the registry started.
    opened: u64,
    /// When bytes were last read from the client, in the same unit; 0 if
    /// never.
    last_read: AtomicU64,
    closing: AtomicBool,
    /// How much it proved of who it is ([`Trust`]); when the listener is
    /// full, the least trusted make room first.
    trust: AtomicU8,
    /// Calls whose request is still arriving, and agent sessions waiting
    /// for their Hello, on this connection ([`Slot`]).
    arriving: AtomicU32,
    hellos: AtomicU32,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Conn {
    fn last_heard(&self) -> u64 {
        self.last_read.load(Ordering::Relaxed).max(self.opened)
    }

    fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.reader.wake();
        self.writer.wake();
    }
}

impl Connections {
    pub(crate) fn new(name: &'static str, bounds: Bounds) -> Arc<Connections> {
        Arc::new(Connections {
            name,
            bounds,
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            open: Mutex::new(HashMap::new()),
            by_peer: Mutex::new(HashMap::new()),
            refused: Counted::new(LOG_EVERY),
            closed: Counted::new(LOG_EVERY),
        })
    }

    /// Closes connections past their timeouts every second until
    /// `shutdown`.
    pub(crate) fn sweep(self: &Arc<Self>, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => this.close_expired(),
                }
            }
        });
    }

    /// The number of open connections.
    pub(crate) fn open(&self) -> usize {
        self.lock().len()
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close_expired(&self) {
        let now = self.now();
        let first = millis(FIRST_BYTES_TIMEOUT);
        let idle = millis(self.bounds.idle);
        let mut closed = 0u64;
        self.lock().retain(|_, conn| {
            let never_spoke = conn.last_read.load(Ordering::Relaxed) == 0
                && now.saturating_sub(conn.opened) >= first;
            let silent = now.saturating_sub(conn.last_heard()) >= idle;
            if never_spoke || silent {
                conn.close();
                closed = closed.saturating_add(1);
                false
            } else {
                true
            }
        });
        if closed > 0
            && let Some(total) = self.closed.add(closed)
        {
            tracing::info!(
                listener = self.name,
                closed = total,
                "closed {total} {} connections that sent nothing within {FIRST_BYTES_TIMEOUT:?} \
                     of opening or for {:?} (since the last such line)",
                self.name,
                self.bounds.idle
            );
        }
    }

    /// A call on the connection from `peer` proved this much of who its
    /// client is (a bearer token): the connection holds at least as
    /// firmly from now on.
    pub(crate) fn trust_peer(&self, peer: std::net::SocketAddr, trust: Trust) {
        if let Some(conn) = self.conn_of(peer) {
            conn.trust.fetch_max(trust as u8, Ordering::Relaxed);
        }
    }

    fn conn_of(&self, peer: std::net::SocketAddr) -> Option<Arc<Conn>> {
        self.by_peer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .cloned()
    }

    /// How much the connection from `peer` proved of who its client is
    /// (anonymous if it is not known).
    pub(crate) fn trust_of(&self, peer: Option<std::net::SocketAddr>) -> Trust {
        if self.bounds.trust_all {
            return Trust::Trusted;
        }
        match peer
            .and_then(|p| self.conn_of(p))
            .map(|c| c.trust.load(Ordering::Relaxed))
        {
            Some(t) if t == Trust::Trusted as u8 => Trust::Trusted,
            Some(t) if t == Trust::Reader as u8 => Trust::Reader,
            _ => Trust::Anonymous,
        }
    }

    /// One of the `kind` places of the connection from `peer`, if it has
    /// one free: held until the [`Slot`] is dropped. A call from an
    /// address that is no connection of this listener gets one (tests
    /// call services directly).
    pub(crate) fn slot(&self, peer: Option<std::net::SocketAddr>, kind: SlotKind) -> Option<Slot> {
        let Some(conn) = peer.and_then(|p| self.conn_of(p)) else {
            return Some(Slot { held: None });
        };
        let (counter, max) = match kind {
            SlotKind::Arriving => (&conn.arriving, MAX_ARRIVING_PER_CONNECTION),
            SlotKind::Hello => (&conn.hellos, MAX_HELLOS_PER_CONNECTION),
        };
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot {
            held: Some((conn.clone(), kind)),
        })
    }

    /// Closes the connection silent longest, if it has been silent long
    /// enough that it cannot be a live agent. Whether one was closed.
    pub(crate) fn make_room(&self) -> bool {
        let mut open = self.lock();
        self.evict_idlest(&mut open, self.now())
    }

    /// Makes room: the idlest of the least trusted connections, except
    /// that a trusted one goes only when silent for `evictable_after`.
    fn evict_idlest(&self, open: &mut HashMap<u64, Arc<Conn>>, now: u64) -> bool {
        let idlest = |trust: Trust| {
            open.iter()
                .filter(|(_, c)| c.trust.load(Ordering::Relaxed) == trust as u8)
                .min_by_key(|(_, c)| c.last_heard())
                .map(|(id, c)| (*id, c.last_heard()))
        };
        let victim = idlest(Trust::Anonymous)
            .or_else(|| idlest(Trust::Reader))
            .map(|(id, _)| id)
            .or_else(|| {
                idlest(Trust::Trusted)
                    .filter(|(_, heard)| {
                        now.saturating_sub(*heard) >= millis(self.bounds.evictable_after)
                    })
                    .map(|(id, _)| id)
            });
        match victim.and_then(|id| open.remove(&id)) {
            Some(conn) => {
                conn.close();
                true
            }
            None => false,
        }
    }

    /// Takes `tcp` in, making room if the listener is full; `None` (the
    /// socket is dropped, so closed) when it is full of connections that
    /// all spoke recently.
    pub(crate) fn admit(self: &Arc<Self>, tcp: TcpStream) -> Option<Tracked<TcpStream>> {
        let now = self.now();
        let mut open = self.lock();
        if open.len() >= self.bounds.max && !self.evict_idlest(&mut open, now) {
            drop(open);
            if let Some(refused) = self.refused.add(1) {
                tracing::warn!(
                    listener = self.name,
                    max = self.bounds.max,
                    refused,
                    "{} listener full ({} connections, all active): refused {refused} \
                     connections since the last such line (raise [limits] or find the client)",
                    self.name,
                    self.bounds.max
                );
            }
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            peer: tcp.peer_addr().ok(),
            opened: now,
            last_read: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            trust: AtomicU8::new(if self.bounds.trust_all {
                Trust::Trusted as u8
            } else {
                Trust::Anonymous as u8
            }),
            arriving: AtomicU32::new(0),
            hellos: AtomicU32::new(0),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
        });
        open.insert(id, conn.clone());
        drop(open);
        if let Some(peer) = conn.peer {
            self.by_peer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(peer, conn.clone());
        }
        Some(Tracked {
            inner: tcp,
            conn,
            id,
            registry: self.clone(),
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A connection the registry watches: reads note the time, and once the
/// registry closes it, reads see the end of the stream and writes fail,
/// so the server drops it (and its socket).
pub(crate) struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
    id: u64,
    registry: Arc<Connections>,
}

impl<S> Tracked<S> {
    /// What the client proved of who it is (its verified certificate).
    pub(crate) fn trust(&self, trust: Trust) {
        self.conn.trust.store(trust as u8, Ordering::Relaxed);
    }
}

impl<S> Drop for Tracked<S> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
        if let Some(peer) = self.conn.peer {
            let mut by_peer = self
                .registry
                .by_peer
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if by_peer
                .get(&peer)
                .is_some_and(|c| Arc::ptr_eq(c, &self.conn))
            {
                by_peer.remove(&peer);
            }
        }
    }
}

/// What a connection's places are for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SlotKind {
    /// A call whose request is still arriving.
    Arriving,
    /// An agent session waiting for its Hello.
    Hello,
}

/// Calls still arriving on one connection at most: a client that wants
/// more sends them on more connections, which it must then keep alive
/// (and which the cap bounds).
pub(crate) const MAX_ARRIVING_PER_CONNECTION: u32 = 4;
/// Agent sessions waiting for their Hello on one connection at most (an
/// agent opens one session per connection).
pub(crate) const MAX_HELLOS_PER_CONNECTION: u32 = 1;

/// A place held on a connection ([`Connections::slot`]), given back when
/// dropped.
pub(crate) struct Slot {
    held: Option<(Arc<Conn>, SlotKind)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((conn, kind)) = &self.held {
            let counter = match kind {
                SlotKind::Arriving => &conn.arriving,
                SlotKind::Hello => &conn.hellos,
            };
            counter.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.conn.reader.register(cx.waker());
        if self.conn.closing.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = self.registry.now();
            self.conn.last_read.store(now, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.conn.writer.register(cx.waker());
        if self.conn.closing.load(Ordering::Relaxed) {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn.writer.register(cx.waker());
        if self.conn.closing.load(Ordering::Relaxed) {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "closed by the coordinator (idle, or room was needed)",
    )
}

impl tonic::transport::server::Connected for Tracked<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
