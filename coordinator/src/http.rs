//! The HTTP listener: liveness and readiness probes, Prometheus metrics
//! (OpenMetrics when the scraper asks for it, else the classic format).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::admin::AdminApi;
use crate::group_metrics::GroupGauges;
use crate::metrics::Metrics;
use crate::metrics_format::{CLASSIC, OPEN_METRICS, to_classic, wants_open_metrics};
use crate::rest::{Caller, can_view};

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

pub(crate) fn router(
    readiness: Readiness,
    metrics: Arc<Metrics>,
    gauges: GroupGauges,
    admin: Arc<AdminApi>,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
        .route("/metrics", get(render).with_state((metrics, gauges, admin)))
}

async fn render(
    State((metrics, gauges, admin)): State<(Arc<Metrics>, GroupGauges, Arc<AdminApi>)>,
    caller: Caller,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    // Group and node names only for those who may see them (anyone while
    // authentication is off).
    let named = if can_view(&admin, &caller) {
        gauges.text().await
    } else {
        String::new()
    };
    let text = metrics.render(&named);
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
