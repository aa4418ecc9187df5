//! The HTTP listener: liveness and readiness probes, Prometheus metrics
//! (OpenMetrics when the scraper asks for it, else the classic format).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::group_metrics::GroupGauges;
use crate::metrics::Metrics;
use crate::metrics_format::{CLASSIC, OPEN_METRICS, to_classic, wants_open_metrics};

/// Whether the coordinator serves agents and operators (store loaded,
/// listeners bound, not shutting down).
#[derive(Clone, Default)]
pub(crate) struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub(crate) fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

pub(crate) fn router(readiness: Readiness, metrics: Arc<Metrics>, gauges: GroupGauges) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
        .route("/metrics", get(render).with_state((metrics, gauges)))
}

async fn render(
    State((metrics, gauges)): State<(Arc<Metrics>, GroupGauges)>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let text = metrics.render(&gauges.text().await);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if wants_open_metrics(accept) {
        ([(header::CONTENT_TYPE, OPEN_METRICS)], text)
    } else {
        ([(header::CONTENT_TYPE, CLASSIC)], to_classic(&text))
    }
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, &'static str) {
    if readiness.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
