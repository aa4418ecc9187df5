//! A deadline and a budget on receiving requests: a call whose request has
//! not fully arrived within [`REQUEST_TIMEOUT`] of its start fails, and
//! what was buffered of it is dropped; at most [`MAX_REQUESTS_ARRIVING`]
//! requests of each rank of caller ([`Trust`]: no certificate, a viewer's,
//! an operator's or node's) and [`MAX_ARRIVING_PER_CONNECTION`] per
//! connection may be arriving at once — so clients that send large
//! messages halfway cannot make the coordinator hold them, for long or in
//! number, and callers without credentials cannot take operators' places.
//! At shutdown, requests still arriving fail at once (a restart must not
//! wait for them). Reflection, whose answers are large, needs a
//! certificate (or a token seen on the connection) when TLS is on.
//! Agent sessions, whose request lasts as long as the call, are bounded in
//! `session.rs` instead (their Hello). Answers may take as long as they
//! need (a switchover waits for hooks).

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::connections::{Connections, MAX_ARRIVING_PER_CONNECTION, Slot, SlotKind, Trust};
use crate::limits::{MAX_REQUESTS_ARRIVING, REQUEST_TIMEOUT};

/// Requests to this path stream for the whole call.
const SESSION: &str = "/failover.v1.AgentService/Session";
/// Paths of gRPC reflection.
const REFLECTION: &str = "/grpc.reflection.";

/// Calls whose answer the client has not taken yet (open streams
/// included), per rank of caller — no certificate (callers without
/// one get only short refusals), a viewer's, an operator's, admin's or node's. The
/// server buffers at most 64 KiB of each (`listener.rs::serve_grpc`); an
/// answer larger than that (a page of events, ~150 KB) waits, whole, for
/// a reader, holding its place here.
const MAX_ANSWERING: [usize; 3] = [256, 256, 512];

/// The budget: one pool per rank of caller.
#[derive(Clone)]
pub(crate) struct RequestDeadlineLayer {
    pools: [Arc<Semaphore>; 3],
    /// Calls whose answer the client has not taken yet, per rank.
    answering: [Arc<Semaphore>; 3],
    connections: Arc<Connections>,
    auth: Arc<crate::auth::Auth>,
    shutdown: CancellationToken,
}

impl RequestDeadlineLayer {
    pub(crate) fn new(
        connections: Arc<Connections>,
        auth: Arc<crate::auth::Auth>,
        shutdown: CancellationToken,
    ) -> RequestDeadlineLayer {
        RequestDeadlineLayer {
            pools: std::array::from_fn(|_| Arc::new(Semaphore::new(MAX_REQUESTS_ARRIVING))),
            answering: MAX_ANSWERING.map(|n| Arc::new(Semaphore::new(n))),
            connections,
            auth,
            shutdown,
        }
    }
}

impl<S> tower::Layer<S> for RequestDeadlineLayer {
    type Service = RequestDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestDeadline {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct RequestDeadline<S> {
    inner: S,
    layer: RequestDeadlineLayer,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for RequestDeadline<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let path = request.uri().path();
        if path == SESSION {
            return Box::pin(self.inner.call(request));
        }
        let peer = request
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|i| i.remote_addr())
            .or_else(|| {
                request
                    .extensions()
                    .get::<tonic::transport::server::TlsConnectInfo<
                        tonic::transport::server::TcpConnectInfo,
                    >>()
                    .and_then(|i| i.get_ref().remote_addr())
            });
        let layer = &self.layer;
        let mut trust = layer.connections.trust_of(peer);
        if trust == Trust::Anonymous
            && let Some(access) = crate::admin::bearer_access(&request, &layer.auth)
        {
            // A valid bearer token ranks the call like the certificate of
            // that role would (the connection itself is raised by the call).
            trust = crate::connections::Trust::of_access(access);
        }
        // Refused before anything is read or answered at length.
        let refuse = |status: tonic::Status| -> Self::Future {
            Box::pin(std::future::ready(Ok(status.into_http())))
        };
        if path.starts_with(REFLECTION) && trust == Trust::Anonymous {
            return refuse(tonic::Status::unauthenticated(
                "reflection needs a client certificate (or a bearer token used on this connection)",
            ));
        }
        let Some(slot) = layer.connections.slot(peer, SlotKind::Arriving) else {
            return refuse(tonic::Status::resource_exhausted(format!(
                "{MAX_ARRIVING_PER_CONNECTION} requests are arriving on this connection: wait for them"
            )));
        };
        let Ok(permit) = layer.pools[trust as usize].clone().try_acquire_owned() else {
            return refuse(tonic::Status::resource_exhausted(format!(
                "{MAX_REQUESTS_ARRIVING} requests of callers like you are arriving at once: try again"
            )));
        };
        let Ok(answering) = layer.answering[trust as usize].clone().try_acquire_owned() else {
            return refuse(tonic::Status::resource_exhausted(format!(
                "{} answers to callers like you wait to be read: read them, or try again",
                MAX_ANSWERING[trust as usize]
            )));
        };
        let stopping = Box::pin(layer.shutdown.clone().cancelled_owned());
        let request = request.map(|body| {
            tonic::body::Body::new(Deadline {
                inner: body,
                sleep: Box::pin(tokio::time::sleep(REQUEST_TIMEOUT)),
                stopping,
                done: false,
                held: Some((permit, slot)),
            })
        });
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| {
                tonic::body::Body::new(Answering {
                    inner: body,
                    _place: answering,
                })
            }))
        })
    }
}

/// An answer holding its place among those waiting to be read until the
/// server has sent all of it (or the client is gone).
struct Answering {
    inner: tonic::body::Body,
    _place: OwnedSemaphorePermit,
}

impl Body for Answering {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails if it has not ended by its deadline (or the
/// coordinator stops first), holding its places in the budget until it
/// ends.
struct Deadline {
    inner: tonic::body::Body,
    sleep: Pin<Box<Sleep>>,
    stopping: Pin<Box<WaitForCancellationFutureOwned>>,
    done: bool,
    held: Option<(OwnedSemaphorePermit, Slot)>,
}

impl Body for Deadline {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if !self.done && self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            self.held = None;
            return Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(format!(
                "the request did not arrive within {REQUEST_TIMEOUT:?}"
            )))));
        }
        if !self.done && self.stopping.as_mut().poll(cx).is_ready() {
            self.done = true;
            self.held = None;
            return Poll::Ready(Some(Err(tonic::Status::unavailable(
                "the coordinator is shutting down",
            ))));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = polled {
            self.done = true;
            self.held = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_that_stops_halfway_fails_at_its_deadline() {
        use http_body_util::BodyExt;
        // A request body that sends one frame of a message, then nothing.
        let half = futures::stream::iter([Ok::<_, tonic::Status>(Frame::data(
            bytes::Bytes::from_static(b"\0\0\x10\0\0"),
        ))])
        .chain(futures::stream::pending());
        let mut body = Deadline {
            inner: tonic::body::Body::new(http_body_util::StreamBody::new(half)),
            sleep: Box::pin(tokio::time::sleep(REQUEST_TIMEOUT)),
            stopping: Box::pin(CancellationToken::new().cancelled_owned()),
            done: false,
            held: None,
        };
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn a_request_still_arriving_fails_at_once_when_the_coordinator_stops() {
        use http_body_util::BodyExt;
        let stop = CancellationToken::new();
        let mut body = Deadline {
            inner: tonic::body::Body::new(http_body_util::StreamBody::new(
                futures::stream::pending::<Result<Frame<bytes::Bytes>, tonic::Status>>(),
            )),
            sleep: Box::pin(tokio::time::sleep(REQUEST_TIMEOUT)),
            stopping: Box::pin(stop.clone().cancelled_owned()),
            done: false,
            held: None,
        };
        stop.cancel();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
}
