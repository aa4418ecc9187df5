//! A deadline and a budget on receiving requests: a call whose request has
//! not fully arrived within [`REQUEST_TIMEOUT`] of its start fails, and
//! what was buffered of it is dropped; at most [`MAX_REQUESTS_ARRIVING`]
//! requests may be arriving at once — so clients that send large messages
//! halfway cannot make the coordinator hold them, for long or in number.
//! Agent sessions, whose request lasts as long as the call, are bounded in
//! `session.rs` instead (their Hello). Answers may take as long as they
//! need (a switchover waits for hooks).

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits::{MAX_REQUESTS_ARRIVING, REQUEST_TIMEOUT};

/// Requests to this path stream for the whole call.
const SESSION: &str = "/failover.v1.AgentService/Session";

#[derive(Debug, Clone)]
pub(crate) struct RequestDeadlineLayer {
    arriving: Arc<Semaphore>,
}

impl RequestDeadlineLayer {
    pub(crate) fn new() -> RequestDeadlineLayer {
        RequestDeadlineLayer {
            arriving: Arc::new(Semaphore::new(MAX_REQUESTS_ARRIVING)),
        }
    }
}

impl<S> tower::Layer<S> for RequestDeadlineLayer {
    type Service = RequestDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestDeadline {
            inner,
            arriving: self.arriving.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RequestDeadline<S> {
    inner: S,
    arriving: Arc<Semaphore>,
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
        if request.uri().path() == SESSION {
            return self.inner.call(request);
        }
        let permit = self.arriving.clone().try_acquire_owned().ok();
        let request = request.map(|body| {
            tonic::body::Body::new(Deadline {
                inner: body,
                sleep: Box::pin(tokio::time::sleep(REQUEST_TIMEOUT)),
                done: false,
                refused: permit.is_none(),
                permit,
            })
        });
        self.inner.call(request)
    }
}

/// A request body that fails if it has not ended by its deadline, holding
/// its place in the budget until it ends.
struct Deadline {
    inner: tonic::body::Body,
    sleep: Pin<Box<Sleep>>,
    done: bool,
    /// No place in the budget was free: the request fails at once.
    refused: bool,
    permit: Option<OwnedSemaphorePermit>,
}

impl Body for Deadline {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.refused {
            self.refused = false;
            self.done = true;
            return Poll::Ready(Some(Err(tonic::Status::resource_exhausted(format!(
                "{MAX_REQUESTS_ARRIVING} requests are arriving at once: try again"
            )))));
        }
        if !self.done && self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            self.permit = None;
            return Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(format!(
                "the request did not arrive within {REQUEST_TIMEOUT:?}"
            )))));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = polled {
            self.done = true;
            self.permit = None;
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
            refused: false,
            permit: None,
        };
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    }
}
