//! A deadline on receiving a request: a call whose request message has not
//! fully arrived within [`REQUEST_TIMEOUT`] of its start fails, and what
//! was buffered of it is dropped — so a client that sends large messages
//! halfway and stops cannot make the coordinator hold them. Streams whose
//! requests last as long as the call (agent sessions, reflection) are not
//! bounded here; a session must send its Hello within `connect_timeout`.
//! Answers may take as long as they need (a switchover waits for hooks).

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::limits::REQUEST_TIMEOUT;

/// Requests to these paths stream for the whole call.
const STREAMING: [&str; 2] = [
    "/failover.v1.AgentService/Session",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
];

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RequestDeadlineLayer;

impl<S> tower::Layer<S> for RequestDeadlineLayer {
    type Service = RequestDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestDeadline { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RequestDeadline<S> {
    inner: S,
}

impl<S, ResBody> tower::Service<http::Request<tonic::body::Body>> for RequestDeadline<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if STREAMING.contains(&request.uri().path()) {
            return self.inner.call(request);
        }
        let request = request.map(|body| {
            tonic::body::Body::new(Deadline {
                inner: body,
                sleep: Box::pin(tokio::time::sleep(REQUEST_TIMEOUT)),
                done: false,
            })
        });
        self.inner.call(request)
    }
}

/// A request body that fails if it has not ended by its deadline.
struct Deadline {
    inner: tonic::body::Body,
    sleep: Pin<Box<Sleep>>,
    done: bool,
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
            return Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(format!(
                "the request did not arrive within {REQUEST_TIMEOUT:?}"
            )))));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.done = true;
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
            done: false,
        };
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    }
}
