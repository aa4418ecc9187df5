//! Accepting connections for the gRPC and HTTP servers. With TLS, each
//! handshake runs in its own task with a time limit, so a client that
//! sends garbage or nothing cannot hold up anyone else; only connections
//! that completed a handshake reach the servers. Errors from `accept`
//! (out of file descriptors, say) are logged and backed off, never spun on.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::limits::LogEvery;
use crate::tls::TlsState;

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const BACKLOG: usize = 128;
/// The pause after `accept` fails before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Failed handshakes are summed up in the log at most this often (anyone
/// can cause them).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Handshakes that failed since the last log line, and when to write one.
struct Failures {
    count: std::sync::atomic::AtomicU64,
    log: LogEvery,
}

impl Failures {
    fn record(&self, peer: SocketAddr, why: &str) {
        use std::sync::atomic::Ordering;
        let count = self.count.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if self.log.due() {
            self.count.store(0, Ordering::Relaxed);
            tracing::warn!(
                %peer,
                failed = count,
                "TLS handshake failed: {why} ({count} failed since the last such line; a client \
                 with another CA's or an expired certificate, a plaintext client, or a scan)"
            );
        }
    }
}

/// Which server a listener feeds (they offer different ALPN protocols).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Grpc,
    Http,
}

/// TLS connections accepted on `listener`, as a stream for tonic.
pub(crate) fn tls_incoming(
    listener: TcpListener,
    tls: Arc<TlsState>,
    kind: Kind,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(accept_loop(listener, tls, kind, shutdown, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<TlsState>,
    kind: Kind,
    shutdown: CancellationToken,
    tx: mpsc::Sender<Result<TlsStream<TcpStream>, io::Error>>,
) {
    let failures = Arc::new(Failures {
        count: std::sync::atomic::AtomicU64::new(0),
        log: LogEvery::new(FAILURE_LOG_EVERY),
    });
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, ?kind, "cannot accept a connection; pausing");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let config = match kind {
            Kind::Grpc => tls.grpc(),
            Kind::Http => tls.http(),
        };
        let tx = tx.clone();
        let failures = failures.clone();
        tokio::spawn(async move {
            match handshake(tcp, config).await {
                Ok(stream) => {
                    let _ = tx.send(Ok(stream)).await;
                }
                Err(why) => failures.record(peer, &why),
            }
        });
    }
}

async fn handshake(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> Result<TlsStream<TcpStream>, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
    }
}

/// TLS connections for axum's server.
pub(crate) struct HttpsListener {
    incoming: ReceiverStream<Result<TlsStream<TcpStream>, io::Error>>,
    local: SocketAddr,
}

impl HttpsListener {
    pub(crate) fn new(
        listener: TcpListener,
        tls: Arc<TlsState>,
        shutdown: CancellationToken,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(HttpsListener {
            incoming: tls_incoming(listener, tls, Kind::Http, shutdown),
            local,
        })
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt;
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => {
                    let peer = stream.get_ref().0.peer_addr().unwrap_or(self.local);
                    return (stream, peer);
                }
                Some(Err(_)) => continue,
                // The accept loop stopped (shutdown): accept nothing more.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
