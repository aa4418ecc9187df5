//! The REST/JSON API under `/api/v1`, on the HTTP listener. Every call is
//! the operators' gRPC call of the same name (`admin.rs`) with the HTTP
//! request's caller (client certificate, `Authorization: Bearer`, address),
//! so it has the same checks, roles, errors and event records; answers are
//! the JSON `failoverctl ... -o json` prints (`proto::json`). The OpenAPI
//! document is served at `/api/v1/openapi.json`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use proto::json;
use proto::pages::all_pages;
use proto::v1 as pb;
use proto::v1::admin_service_server::AdminService;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admin::AdminApi;

/// The largest request body taken.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The OpenAPI 3 description of everything below.
const OPENAPI: &str = include_str!("rest_openapi.json");

pub(crate) fn router(admin: Arc<AdminApi>) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/groups", get(list_groups).post(create_group))
        .route("/api/v1/groups/{name}", get(get_group).delete(delete_group))
        .route("/api/v1/groups/{name}/members", post(add_member))
        .route(
            "/api/v1/groups/{name}/members/{node}",
            axum::routing::delete(remove_member).put(move_member),
        )
        .route(
            "/api/v1/groups/{name}/settings",
            axum::routing::patch(update_settings),
        )
        .route("/api/v1/groups/{name}/promote", post(promote))
        .route("/api/v1/groups/{name}/takeover", post(takeover))
        .route("/api/v1/groups/{name}/restore", post(restore))
        .route("/api/v1/groups/{name}/drain", post(drain))
        .route("/api/v1/groups/{name}/undrain", post(undrain))
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/stream", get(stream_events))
        .route("/api/v1/cluster", get(cluster))
        // Only where a route and method match: anything else is 404 or
        // 405 as it is.
        .route_layer(axum::middleware::from_fn(at_the_edge))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(admin)
}

/// REST calls being answered at once (event streams aside: they count as
/// watches). Building a large answer takes CPU the runtime needs for
/// heartbeats, so however many callers come, a few are served at a time.
const MAX_CALLS: usize = 8;

static CALLS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CALLS);

/// What is refused before any call: a body announced larger than any
/// call takes (at once, without waiting for it); a group or node name in
/// the path that is no name (its message never echoes more than 63
/// characters of it); and more calls at once than [`MAX_CALLS`]. (Every
/// POST needs `Content-Type: application/json`, which a page on another
/// site can send only after asking, and asking is refused: no page
/// elsewhere can act through an operator's browser.)
async fn at_the_edge(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    // Only POST can come from a form on another site without asking.

    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return ApiFailure {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "invalid_argument",
            message: format!("a request body may be at most {MAX_BODY_BYTES} bytes"),
            leader: None,
        }
        .into_response();
    }
    let segments: Vec<&str> = request.uri().path().split('/').collect();
    // "", "api", "v1", "groups", NAME, "members", NODE
    if segments.get(1..4) == Some(&["api", "v1", "groups"][..]) {
        let checked = segments
            .get(4)
            .map_or(Ok(()), |name| proto::names::validate_group_name(name))
            .and_then(|()| match (segments.get(5), segments.get(6)) {
                (Some(&"members"), Some(node)) => proto::names::validate_node_id(node),
                _ => Ok(()),
            });
        if let Err(e) = checked {
            return bad_request(e.to_string()).into_response();
        }
    }
    if request.uri().path() == "/api/v1/events/stream" {
        return next.run(request).await;
    }
    let Ok(_turn) = CALLS.try_acquire() else {
        return ApiFailure {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "resource_exhausted",
            message: format!("{MAX_CALLS} REST calls are being answered: try again"),
            leader: None,
        }
        .into_response();
    };
    next.run(request).await
}

/// A refusal: the HTTP status of the gRPC code, and `{"error", "code"}`.
pub(crate) struct ApiFailure {
    status: StatusCode,
    code: &'static str,
    message: String,
    leader: Option<String>,
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "code": self.code});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(leader) = self.leader.and_then(|l| l.parse().ok()) {
            response.headers_mut().insert("failover-leader", leader);
        }
        response
    }
}

impl From<tonic::Status> for ApiFailure {
    fn from(s: tonic::Status) -> ApiFailure {
        use tonic::Code;
        let (status, code) = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => {
                (StatusCode::BAD_REQUEST, "invalid_argument")
            }
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            Code::FailedPrecondition | Code::Aborted => {
                (StatusCode::CONFLICT, "failed_precondition")
            }
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            Code::DataLoss => (StatusCode::GONE, "data_loss"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let leader = s
            .metadata()
            .get("failover-leader")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        ApiFailure {
            status,
            code,
            message: s.message().to_owned(),
            leader,
        }
    }
}

impl From<JsonRejection> for ApiFailure {
    fn from(r: JsonRejection) -> ApiFailure {
        if matches!(r, JsonRejection::MissingJsonContentType(_)) {
            return not_json();
        }
        ApiFailure {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_argument",
            message: format!("the request body: {}", r.body_text()),
            leader: None,
        }
    }
}

type Answer = Result<axum::Json<Value>, ApiFailure>;
type Admin = State<Arc<AdminApi>>;

/// The gRPC request of `message`, made by whoever made the HTTP request.
fn call<T>(caller: &Caller, message: T) -> tonic::Request<T> {
    let mut request = http::Request::new(message);
    *request.headers_mut() = caller.headers.clone();
    *request.extensions_mut() = caller.extensions.clone();
    tonic::Request::from_http(request)
}

/// Whether the caller of an HTTP request may see groups and nodes.
pub(crate) fn can_view(admin: &AdminApi, caller: &Caller) -> bool {
    admin.actor(&call(caller, ())).can_view()
}

/// Who made an HTTP request: its headers (`Authorization`) and what the
/// listener knows of its connection (address, client certificate).
pub(crate) struct Caller {
    headers: HeaderMap,
    extensions: http::Extensions,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Caller, Infallible> {
        Ok(Caller {
            headers: parts.headers.clone(),
            extensions: parts.extensions.clone(),
        })
    }
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// An unknown path; a gRPC call (failoverctl or an agent given this
/// port) gets a gRPC status that says where to go instead.
async fn not_found(headers: HeaderMap) -> Response {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/grpc"));
    if grpc {
        let message = "this is the coordinator's HTTP listener (status page, REST API, metrics): \
                       gRPC clients use its gRPC listener (--listen, port 7400 by default)";
        return (
            [
                (header::CONTENT_TYPE, "application/grpc"),
                (header::HeaderName::from_static("grpc-status"), "12"),
                (header::HeaderName::from_static("grpc-message"), message),
            ],
            "",
        )
            .into_response();
    }
    ApiFailure {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such path: see /api/v1/openapi.json".into(),
        leader: None,
    }
    .into_response()
}

fn group_answer(answer: Result<tonic::Response<pb::GroupStatus>, tonic::Status>) -> Answer {
    Ok(axum::Json(json::group_json(&answer?.into_inner())))
}

async fn list_groups(State(admin): Admin, caller: Caller) -> Answer {
    let groups = all_pages(|page_token| {
        let request = call(
            &caller,
            pb::ListGroupsRequest {
                page_size: 0,
                page_token,
            },
        );
        let admin = admin.clone();
        async move {
            let page = admin.list_groups(request).await?.into_inner();
            Ok((page.groups, page.next_page_token))
        }
    })
    .await?;
    Ok(axum::Json(json::groups_json(&groups)))
}

/// `POST /api/v1/groups`: `{"name", "members", "settings"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    name: String,
    #[serde(default)]
    members: Vec<String>,
    settings: Option<Settings>,
}

/// Group settings by the names `group show` prints them under; absent
/// ones stay as they are (or take the defaults).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Settings {
    heartbeat_interval: Option<String>,
    failover_timeout: Option<String>,
    connect_timeout: Option<String>,
    startup_timeout: Option<String>,
    shutdown_grace: Option<String>,
    abnormal_timeout: Option<String>,
    auto_failover: Option<bool>,
    failback: Option<String>,
    failback_delay: Option<String>,
    /// "HH:MM-HH:MM" in UTC; "" clears it.
    failback_window: Option<String>,
    min_failover_interval: Option<String>,
    standby_mode: Option<String>,
    fencing: Option<String>,
    max_sync_lag: Option<String>,
}

fn bad_request(message: String) -> ApiFailure {
    ApiFailure {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_argument",
        message,
        leader: None,
    }
}

impl Settings {
    /// The settings as the admin API takes them; a malformed value is
    /// refused naming the key.
    fn to_proto(&self) -> Result<pb::Policy, ApiFailure> {
        let ms = |key: &str, value: &Option<String>| -> Result<Option<u64>, ApiFailure> {
            value
                .as_deref()
                .map(|text| {
                    proto::duration::parse(text)
                        .map(proto::duration::to_ms)
                        .map_err(|e| bad_request(format!("{key}: {e}")))
                })
                .transpose()
        };
        fn named<T: std::str::FromStr<Err = E>, E: std::fmt::Display, W: From<T> + Into<i32>>(
            value: &Option<String>,
        ) -> Result<Option<i32>, ApiFailure> {
            value
                .as_deref()
                .map(|text| {
                    text.parse::<T>()
                        .map(|v| W::from(v).into())
                        .map_err(|e| bad_request(e.to_string()))
                })
                .transpose()
        }
        use proto::vocab::{Failback, Fencing, StandbyMode};
        Ok(pb::Policy {
            heartbeat_interval_ms: ms("heartbeat_interval", &self.heartbeat_interval)?,
            failover_timeout_ms: ms("failover_timeout", &self.failover_timeout)?,
            connect_timeout_ms: ms("connect_timeout", &self.connect_timeout)?,
            startup_timeout_ms: ms("startup_timeout", &self.startup_timeout)?,
            shutdown_grace_ms: ms("shutdown_grace", &self.shutdown_grace)?,
            abnormal_timeout_ms: ms("abnormal_timeout", &self.abnormal_timeout)?,
            auto_failover: self.auto_failover,
            failback: named::<Failback, _, pb::Failback>(&self.failback)?,
            failback_delay_ms: ms("failback_delay", &self.failback_delay)?,
            failback_window: self.failback_window.clone(),
            min_failover_interval_ms: ms("min_failover_interval", &self.min_failover_interval)?,
            standby_mode: named::<StandbyMode, _, pb::StandbyMode>(&self.standby_mode)?,
            fencing: named::<Fencing, _, pb::Fencing>(&self.fencing)?,
            max_sync_lag_ms: ms("max_sync_lag", &self.max_sync_lag)?,
        })
    }
}

async fn create_group(
    State(admin): Admin,
    caller: Caller,
    body: Result<axum::Json<NewGroup>, JsonRejection>,
) -> Result<(StatusCode, axum::Json<Value>), ApiFailure> {
    let axum::Json(g) = body?;
    let request = pb::CreateGroupRequest {
        name: g.name,
        members: g.members,
        policy: g.settings.map(|s| s.to_proto()).transpose()?,
    };
    let group = admin.create_group(call(&caller, request)).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json::group_json(&group.into_inner())),
    ))
}

async fn get_group(State(admin): Admin, caller: Caller, Path(name): Path<String>) -> Answer {
    group_answer(
        admin
            .get_group(call(&caller, pb::GetGroupRequest { name }))
            .await,
    )
}

async fn delete_group(
    State(admin): Admin,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    admin
        .delete_group(call(&caller, pb::DeleteGroupRequest { name }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST .../members`: `{"node", "position"}` (position: 0 = first;
/// default last).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMember {
    node: String,
    position: Option<u32>,
}

async fn add_member(
    State(admin): Admin,
    caller: Caller,
    Path(group): Path<String>,
    body: Result<axum::Json<NewMember>, JsonRejection>,
) -> Answer {
    let axum::Json(m) = body?;
    let request = pb::AddMemberRequest {
        group,
        node: m.node,
        position: m.position,
    };
    group_answer(admin.add_member(call(&caller, request)).await)
}

async fn remove_member(
    State(admin): Admin,
    caller: Caller,
    Path((group, node)): Path<(String, String)>,
) -> Answer {
    let request = pb::RemoveMemberRequest { group, node };
    group_answer(admin.remove_member(call(&caller, request)).await)
}

/// `PUT .../members/{node}`: `{"position": N}` (0 = first).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Position {
    position: u32,
}

async fn move_member(
    State(admin): Admin,
    caller: Caller,
    Path((group, node)): Path<(String, String)>,
    body: Result<axum::Json<Position>, JsonRejection>,
) -> Answer {
    let axum::Json(Position { position }) = body?;
    let request = pb::MoveMemberRequest {
        group,
        node,
        position,
    };
    group_answer(admin.move_member(call(&caller, request)).await)
}

async fn update_settings(
    State(admin): Admin,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<axum::Json<Settings>, JsonRejection>,
) -> Answer {
    let axum::Json(settings) = body?;
    let request = pb::UpdateGroupRequest {
        name,
        policy: Some(settings.to_proto()?),
    };
    group_answer(admin.update_group(call(&caller, request)).await)
}

/// `POST .../promote` and `.../takeover`: `{"to": NODE}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct To {
    to: String,
}

async fn promote(
    State(admin): Admin,
    caller: Caller,
    Path(group): Path<String>,
    body: Result<axum::Json<To>, JsonRejection>,
) -> Answer {
    let axum::Json(To { to }) = body?;
    let request = pb::PromoteRequest { group, to };
    group_answer(admin.promote(call(&caller, request)).await)
}

async fn takeover(
    State(admin): Admin,
    caller: Caller,
    Path(group): Path<String>,
    body: Result<axum::Json<To>, JsonRejection>,
) -> Answer {
    let axum::Json(To { to }) = body?;
    let request = pb::TakeoverRequest { group, to };
    group_answer(admin.takeover(call(&caller, request)).await)
}

/// A POST without a JSON body declared.
fn not_json() -> ApiFailure {
    ApiFailure {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code: "invalid_argument",
        message:
            "a POST needs Content-Type: application/json (with a body of {} where none is needed)"
                .into(),
        leader: None,
    }
}

/// Nothing: the body of a call that needs none (`{}` or empty).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Nothing {}

async fn restore(
    State(admin): Admin,
    caller: Caller,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Answer {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !json {
        return Err(not_json());
    }
    if !body.is_empty() {
        serde_json::from_slice::<Nothing>(&body)
            .map_err(|e| bad_request(format!("the request body: {e}")))?;
    }
    let request = pb::RestoreRequest { group };
    group_answer(admin.restore(call(&caller, request)).await)
}

/// `POST .../drain` and `.../undrain`: `{"node": NODE}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Node {
    node: String,
}

async fn drain(
    State(admin): Admin,
    caller: Caller,
    Path(group): Path<String>,
    body: Result<axum::Json<Node>, JsonRejection>,
) -> Answer {
    let axum::Json(Node { node }) = body?;
    let request = pb::DrainMemberRequest { group, node };
    group_answer(admin.drain_member(call(&caller, request)).await)
}

async fn undrain(
    State(admin): Admin,
    caller: Caller,
    Path(group): Path<String>,
    body: Result<axum::Json<Node>, JsonRejection>,
) -> Answer {
    let axum::Json(Node { node }) = body?;
    let request = pb::DrainMemberRequest { group, node };
    group_answer(admin.undrain_member(call(&caller, request)).await)
}

async fn list_nodes(State(admin): Admin, caller: Caller) -> Answer {
    let nodes = all_pages(|page_token| {
        let request = call(
            &caller,
            pb::ListNodesRequest {
                page_size: 0,
                page_token,
            },
        );
        let admin = admin.clone();
        async move {
            let page = admin.list_nodes(request).await?.into_inner();
            Ok((page.nodes, page.next_page_token))
        }
    })
    .await?;
    Ok(axum::Json(json::nodes_json(&nodes)))
}

/// `?group=NAME&limit=N` (the most recent N; 0 or none = as many as one
/// answer holds).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    group: Option<String>,
    limit: Option<u32>,
    /// Only events since then: an RFC 3339 time or a duration ago.
    since: Option<String>,
}

impl EventQuery {
    /// `since` as Unix milliseconds (0: no bound).
    fn since_ms(&self) -> Result<u64, ApiFailure> {
        let Some(text) = &self.since else {
            return Ok(0);
        };
        let at = match humantime::parse_rfc3339_weak(text) {
            Ok(at) => at,
            Err(_) => {
                let ago = proto::duration::parse(text).map_err(|_| {
                    bad_request(format!(
                        "since {text:?} is neither a time (2026-11-24T04:00:00Z) nor a duration (10m, 2h)"
                    ))
                })?;
                std::time::SystemTime::now()
                    .checked_sub(ago)
                    .unwrap_or(std::time::UNIX_EPOCH)
            }
        };
        Ok(at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }

    fn request(self) -> Result<pb::ListEventsRequest, ApiFailure> {
        if let Some(group) = &self.group {
            proto::names::validate_group_name(group).map_err(|e| bad_request(e.to_string()))?;
        }
        Ok(pb::ListEventsRequest {
            group: self.group.unwrap_or_default(),
            limit: self.limit.unwrap_or(0),
        })
    }
}

fn query_failure(e: axum::extract::rejection::QueryRejection) -> ApiFailure {
    ApiFailure {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_argument",
        message: format!("the query: {}", e.body_text()),
        leader: None,
    }
}

async fn list_events(
    State(admin): Admin,
    caller: Caller,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(query) = query.map_err(query_failure)?;
    let since = query.since_ms()?;
    let events = admin
        .list_events(call(&caller, query.request()?))
        .await?
        .into_inner();
    Ok(axum::Json(Value::Array(
        events
            .events
            .iter()
            .filter(|e| e.unix_ms >= since)
            .map(json::event_json)
            .collect(),
    )))
}

/// How many past events a stream starts with unless asked.
const STREAM_BACKLOG: u32 = 10;

/// Server-Sent Events: the most recent `limit` events (default 10; 0 =
/// every retained one), then each new one as it is recorded — `id:` its number,
/// `event: event`, `data:` its JSON. A watch that fell behind, or that
/// the coordinator ends, gets `event: error` with the reason, then ends.
async fn stream_events(
    State(admin): Admin,
    caller: Caller,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiFailure> {
    let Query(query) = query.map_err(query_failure)?;
    let since = query.since_ms()?;
    let absent = query.limit.is_none();
    let mut request = query.request()?;
    if absent {
        request.limit = STREAM_BACKLOG;
    }
    let watching = admin
        .watch_events(call(&caller, request))
        .await?
        .into_inner();
    let events = watching
        .scan(false, move |ended, item| {
            if *ended {
                return futures::future::ready(None);
            }
            let sse = match item {
                Ok(event) if event.unix_ms < since => {
                    return futures::future::ready(Some(Ok(SseEvent::default().comment(""))));
                }
                Ok(event) => SseEvent::default()
                    .id(event.seq.to_string())
                    .event("event")
                    .data(json::event_json(&event).to_string()),
                Err(status) => {
                    *ended = true;
                    SseEvent::default()
                        .event("error")
                        .data(json!({"error": status.message()}).to_string())
                }
            };
            futures::future::ready(Some(Ok(sse)))
        })
        .boxed();
    Ok(Sse::new(events).keep_alive(axum::response::sse::KeepAlive::default()))
}

async fn cluster(State(admin): Admin, caller: Caller) -> Answer {
    let status = admin
        .cluster_status(call(&caller, pb::ClusterStatusRequest {}))
        .await?
        .into_inner();
    Ok(axum::Json(json::cluster_json(&status)))
}
