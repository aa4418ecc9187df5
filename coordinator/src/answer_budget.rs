//! A bound on the HTTP answers the coordinator holds for clients that do
//! not read them: every answer of known size (REST, metrics, the status
//! page) takes its size from one budget until it is sent or dropped; when
//! the budget is spent, the call is answered 429 at once. Event streams
//! have no size; their number is bounded by `max_watchers`.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{Semaphore, SemaphorePermit};

/// All answers held at once, in KiB: 64 MiB.
const BUDGET_KIB: usize = 64 * 1024;

static BUDGET: Semaphore = Semaphore::const_new(BUDGET_KIB);

/// Middleware: takes each answer's size from the budget, or answers 429.
pub(crate) async fn hold(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let Some(bytes) = response.body().size_hint().exact() else {
        return response;
    };
    let kib = u32::try_from(bytes / 1024 + 1).unwrap_or(u32::MAX);
    match BUDGET.try_acquire_many(kib) {
        Ok(permit) => response.map(|body| Body::new(Held { body, _permit: permit })),
        Err(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(serde_json::json!({
                "error": "answers that clients have not read yet fill the coordinator's budget: try again",
                "code": "resource_exhausted",
            })),
        )
            .into_response(),
    }
}

/// An answer's body with its share of the budget, given back when the
/// body is dropped (sent, or its connection gone).
struct Held {
    body: Body,
    _permit: SemaphorePermit<'static>,
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt;

    fn router() -> axum::Router {
        axum::Router::new()
            .route("/small", get(|| async { "a small answer" }))
            .route(
                "/huge",
                get(|| async { vec![b'x'; (BUDGET_KIB + 1) * 1024] }),
            )
            .layer(axum::middleware::from_fn(hold))
    }

    async fn status(path: &str) -> StatusCode {
        let request = http::Request::get(path).body(Body::empty()).unwrap();
        router().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn an_answer_larger_than_the_budget_is_refused_and_the_budget_comes_back() {
        assert_eq!(status("/huge").await, StatusCode::TOO_MANY_REQUESTS);
        // Held while the answer lives, given back when it is dropped.
        let request = http::Request::get("/small").body(Body::empty()).unwrap();
        let held = router().oneshot(request).await.unwrap();
        assert_eq!(held.status(), StatusCode::OK);
        assert!(BUDGET.available_permits() < BUDGET_KIB);
        drop(held);
        assert_eq!(BUDGET.available_permits(), BUDGET_KIB);
        assert_eq!(status("/small").await, StatusCode::OK);
    }
}
