//! The live status page at `/` on the HTTP listener: plain HTML, CSS and
//! JavaScript built into the binary (no build step, nothing fetched from
//! elsewhere, so it works on an air-gapped site). The page reads the REST
//! API (`rest.rs`) and follows its event stream.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("status_page/index.html");
const SCRIPT: &str = include_str!("status_page/status.js");
const STYLE: &str = include_str!("status_page/status.css");

pub(crate) fn router() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/status.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/status.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        // Browsers ask for one; there is none.
        .route(
            "/favicon.ico",
            get(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
}

/// One file of the page, with headers that keep it to its own origin.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, "default-src 'self'"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}
