//! Accepting connections for the gRPC and HTTP servers, with or without
//! TLS. Every socket is admitted through the listener's [`Connections`]
//! (a cap, first-bytes and idle timeouts); with TLS each handshake runs in
//! its own task with a time limit, so a client that sends garbage or
//! nothing holds up nobody else. Errors from `accept` (out of file
//! descriptors, say) close the idlest connection, are logged and backed
//! off, never spun on. HTTP requests must send their headers within
//! [`HEADER_TIMEOUT`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::connections::{Connections, FIRST_BYTES_TIMEOUT, Tracked, Trust};
use crate::limits::Counted;
use crate::tls::TlsState;

/// Ready connections waiting for the server to take them.
const BACKLOG: usize = 128;
/// Requests at once on one HTTP/2 connection of the HTTP listener.
const HTTP2_STREAMS: u32 = 4;
/// Bytes of an answer buffered per HTTP/2 stream for a client that does
/// not read (both listeners): the rest waits in the answer itself, and an
/// answer the client never takes holds no more than this.
const HTTP2_SEND_BUFFER: usize = 64 * 1024;
/// The pause after `accept` fails before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Lines anyone can cause (failed handshakes, accept errors) are summed up
/// in the log at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long an HTTP client has to send a request's headers.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open HTTP connections get to finish at shutdown.
const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A plaintext connection.
pub(crate) type Plain = Tracked<TcpStream>;
/// A TLS connection.
pub(crate) type Secure = TlsStream<Tracked<TcpStream>>;

/// Connections ready for a server.
pub(crate) type Incoming<T> = ReceiverStream<Result<T, io::Error>>;

/// Which server a listener feeds (they offer different ALPN protocols).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Grpc,
    Http,
}

/// Plaintext connections accepted on `listener`.
pub(crate) fn plain_incoming(
    listener: TcpListener,
    connections: Arc<Connections>,
    shutdown: CancellationToken,
) -> Incoming<Plain> {
    incoming(listener, connections, shutdown, |tcp, _| async move {
        Some(tcp)
    })
}

/// TLS connections accepted on `listener`, once their handshake is done.
pub(crate) fn tls_incoming(
    listener: TcpListener,
    connections: Arc<Connections>,
    tls: Arc<TlsState>,
    kind: Kind,
    shutdown: CancellationToken,
) -> Incoming<Secure> {
    let failures = Arc::new(Counted::new(LOG_EVERY));
    incoming(listener, connections, shutdown, move |tcp, peer| {
        let config = match kind {
            Kind::Grpc => tls.grpc(),
            Kind::Http => tls.http(),
        };
        let failures = failures.clone();
        async move {
            let handshake =
                tokio::time::timeout(FIRST_BYTES_TIMEOUT, TlsAcceptor::from(config).accept(tcp));
            let why = match handshake.await {
                Ok(Ok(stream)) => {
                    let (tracked, session) = stream.get_ref();
                    if let Some(cert) = session.peer_certificates().and_then(|c| c.first()) {
                        tracked.trust(trust_of(cert));
                    }
                    return Some(stream);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no handshake within {FIRST_BYTES_TIMEOUT:?}"),
            };
            if let Some(failed) = failures.add(1) {
                tracing::warn!(
                    %peer,
                    failed,
                    "TLS handshake failed: {why} ({failed} failed since the last such line; a \
                     client with another CA's or an expired certificate, a plaintext client, or a \
                     scan)"
                );
            }
            None
        }
    })
}

fn incoming<T, F, Fut>(
    listener: TcpListener,
    connections: Arc<Connections>,
    shutdown: CancellationToken,
    prepare: F,
) -> Incoming<T>
where
    T: Send + 'static,
    F: Fn(Plain, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<T>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(BACKLOG);
    connections.sweep(shutdown.clone());
    tokio::spawn(async move {
        let errors = Counted::new(LOG_EVERY);
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors: the idlest connection makes room
                    // for the ones that matter (agents, operators, probes).
                    let made_room = out_of_descriptors(&e) && connections.make_room();
                    if let Some(failed) = errors.add(1) {
                        tracing::warn!(
                            error = %e,
                            failed,
                            open = connections.open(),
                            made_room,
                            "cannot accept connections ({failed} failures since the last such \
                             line); pausing {ACCEPT_BACKOFF:?} each time"
                        );
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(tracked) = connections.admit(tcp) else {
                continue;
            };
            let ready = prepare(tracked, peer);
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(io) = ready.await {
                    let _ = tx.send(Ok(io)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// How far a verified client certificate is trusted to hold a connection:
/// agents, operators and admins fully; viewers and certificates that name
/// nobody less (a crowd of them must not keep agents out).
fn trust_of(cert: &[u8]) -> Trust {
    use proto::identity::{Named, named_by};
    match named_by(cert) {
        Ok(Some(Named::Node(_))) => Trust::Trusted,
        Ok(Some(Named::Operator { role, .. })) if role == "operator" || role == "admin" => {
            Trust::Trusted
        }
        _ => Trust::Reader,
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE (24): this process; ENFILE (23): the whole system.
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// The next connection `incoming` yields, or `None` once it ends or
/// `shutdown` is cancelled (a connection that failed to set up is
/// skipped).
async fn next_connection<T>(incoming: &mut Incoming<T>, shutdown: &CancellationToken) -> Option<T> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            next = incoming.next() => match next {
                Some(Ok(io)) => return Some(io),
                Some(Err(_)) => continue,
                None => return None,
            },
        }
    }
}

/// Serves `router` on the connections of `incoming` until `shutdown`:
/// HTTP/1.1 and HTTP/2, headers within [`HEADER_TIMEOUT`].
pub(crate) async fn serve_http<T>(
    mut incoming: Incoming<T>,
    router: axum::Router,
    shutdown: CancellationToken,
) where
    T: AsyncRead + AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    T::ConnectInfo: Clone + Send + Sync + 'static,
{
    while let Some(io) = next_connection(&mut incoming, &shutdown).await {
        // Each request knows its connection (address, client certificate):
        // the REST API names its caller from it.
        let info = io.connect_info();
        let routes = router.clone();
        let with_info =
            tower::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(info.clone());
                tower::ServiceExt::oneshot(routes.clone(), request)
            });
        let service = TowerToHyperService::new(with_info);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            // A client that asks and never reads holds the answers: few
            // at a time per connection, and little of each buffered.
            builder
                .http2()
                .max_concurrent_streams(HTTP2_STREAMS)
                .max_send_buf_size(HTTP2_SEND_BUFFER);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HTTP_SHUTDOWN_GRACE, conn).await;
                }
            }
        });
    }
}

/// Serves gRPC (`service`: the routes and their layers) on the
/// connections `incoming` yields, over HTTP/2 only, until `shutdown`.
/// Each request carries its connection's `ConnectInfo` (the peer's
/// address, its TLS certificates), as tonic's own server would; unlike
/// tonic's, this one bounds what each stream buffers for a client that
/// does not read ([`HTTP2_SEND_BUFFER`]).
pub(crate) async fn serve_grpc<T, S>(
    mut incoming: Incoming<T>,
    service: S,
    shutdown: CancellationToken,
) where
    T: AsyncRead + AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    T::ConnectInfo: Clone + Send + Sync + 'static,
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    while let Some(io) = next_connection(&mut incoming, &shutdown).await {
        let info = io.connect_info();
        let routes = service.clone();
        let with_info = tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let mut request = request.map(tonic::body::Body::new);
            request.extensions_mut().insert(info.clone());
            tower::ServiceExt::oneshot(routes.clone(), request)
        });
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new()).http2_only();
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(crate::limits::MAX_STREAMS_PER_CONNECTION)
                .max_send_buf_size(HTTP2_SEND_BUFFER);
            let conn =
                builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(with_info));
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HTTP_SHUTDOWN_GRACE, conn).await;
                }
            }
        });
    }
}
