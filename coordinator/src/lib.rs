//! The failover coordinator: keeps failover groups in an embedded store,
//! holds one session per agent, decides promotions and serves the admin API.
//!
//! [`run`] wires the parts together: store → engine → runtime actor, then
//! the gRPC listener (agent sessions, admin, health, reflection) and the
//! HTTP listener. See ARCHITECTURE.md for the map.

mod admin;
pub mod api;
mod auth;
pub mod config;
mod connections;
mod convert;
pub mod engine;
mod error;
#[cfg(test)]
mod fuzz_tests;
mod http;
mod limits;
mod listener;
mod metrics;
pub mod model;
pub mod policy;
mod reload;
mod request_deadline;
mod runtime;
mod session;
mod store;
mod tls;

pub use auth::Access;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use proto::v1::admin_service_server::AdminServiceServer;
use proto::v1::agent_service_server::AgentServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::{Engine, EngineConfig};
use crate::runtime::Runtime;
use crate::store::{SledStore, Store};

/// How long shutdown waits for open streams to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The coordinator's two listening sockets, bound before it runs (so a
/// caller can bind port 0 and learn the ports).
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let grpc = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (gRPC)", config.listen))?;
        let http = TcpListener::bind(config.http_listen)
            .await
            .with_context(|| format!("cannot listen on {} (HTTP)", config.http_listen))?;
        Ok(Listeners { grpc, http })
    }
}

/// Runs the coordinator on `listeners` until `shutdown` is cancelled (or the
/// store fails).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The store first: a second coordinator on the same data directory
    // stops here, before it says anything else.
    let data_dir = config.data_dir.clone();
    let retention = config.event_retention;
    let store = tokio::task::spawn_blocking(move || SledStore::open(&data_dir, retention))
        .await
        .context("store open panicked")??;
    // One TLS crypto provider for everything: ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = match config.tls_files() {
        Some(files) => Some(tls::TlsState::load(files).context("TLS")?),
        None => None,
    };
    let auth = Arc::new(auth::Auth {
        client_certs: config.tls_files().is_some_and(|f| f.client_ca.is_some()),
        tokens: match &config.auth.tokens {
            Some(path) => Some(auth::TokenFile::load(path)?),
            None => None,
        },
    });
    if tls.is_none() {
        tracing::warn!(
            "serving PLAINTEXT: anyone on the network path can read and forge every message (configure [tls] for production)"
        );
    }
    // Certificates, keys and tokens are re-read when they change and on
    // SIGHUP.
    let mut reloadable: Vec<Arc<dyn reload::Reload>> = Vec::new();
    if let Some(tls) = &tls {
        reloadable.push(tls.clone());
    }
    if let Some(tokens) = &auth.tokens {
        reloadable.push(tokens.clone());
    }
    tokio::spawn(reload::watch(reloadable, shutdown.clone()));
    if tls.is_some() && !auth.client_certs {
        tracing::warn!(
            "no client CA ([tls] client_ca): agent sessions are not authenticated, anyone who reaches this coordinator may act as any node"
        );
    }
    if auth.is_off() {
        tracing::warn!(
            "authentication is OFF: anyone who reaches this coordinator may act as any node and as an admin (configure [tls] client_ca and/or [auth] tokens)"
        );
    }
    let store: Arc<dyn Store> = Arc::new(store);
    let recovered = store.load()?;
    let fence = store.fence()?;
    let groups = recovered.groups.len();
    let durable = engine::Durable::of(&recovered);
    let engine = Engine::new(
        EngineConfig {
            coordinator_id: coordinator_id(),
            clock_drift: config.clock_drift,
            default_heartbeat_interval: config.defaults.heartbeat_interval,
            default_policy: config.defaults.clone(),
        },
        recovered,
        runtime::now(),
    );

    let Listeners {
        grpc: grpc_listener,
        http: http_listener,
    } = listeners;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let metrics = metrics::Metrics::new();
    let (runtime, handle) = Runtime::new(engine, durable, store, fence, metrics.clone());
    // The runtime stops last: open sessions still need it to close.
    let runtime_stop = CancellationToken::new();
    let runtime_task = tokio::spawn(runtime.run(runtime_stop.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AgentServiceServer<session::AgentSessions>>()
        .await;
    health
        .set_serving::<AdminServiceServer<admin::AdminApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;

    let (grpc_bounds, http_bounds) = fit_descriptors(&config.limits, tls.is_none());
    let grpc_connections = connections::Connections::new("gRPC", grpc_bounds);
    let http_connections = connections::Connections::new("HTTP", http_bounds);
    let sessions = session::AgentSessions::new(handle.clone(), shutdown.clone(), auth.clone());
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(limits::MAX_STREAMS_PER_CONNECTION))
        .layer(request_deadline::RequestDeadlineLayer::new())
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            AgentServiceServer::new(sessions).max_decoding_message_size(limits::MAX_MESSAGE_BYTES),
        )
        .add_service(
            AdminServiceServer::new(admin::AdminApi::new(
                api::Api::new(handle, config.limits.max_watchers),
                shutdown.clone(),
                auth,
                grpc_connections.clone(),
            ))
            .max_decoding_message_size(limits::MAX_MESSAGE_BYTES),
        );
    let readiness = http::Readiness::default();
    let routes = http::router(readiness.clone(), metrics);
    let stopped = shutdown.clone();
    let (grpc_task, http_task) = match &tls {
        Some(tls) => {
            let incoming = listener::tls_incoming(
                grpc_listener,
                grpc_connections,
                tls.clone(),
                listener::Kind::Grpc,
                shutdown.clone(),
            );
            let grpc =
                router.serve_with_incoming_shutdown(incoming, stopped.clone().cancelled_owned());
            let https = listener::tls_incoming(
                http_listener,
                http_connections,
                tls.clone(),
                listener::Kind::Http,
                shutdown.clone(),
            );
            (
                tokio::spawn(async move { grpc.await.map_err(anyhow::Error::from) }),
                tokio::spawn(listener::serve_http(https, routes, stopped)),
            )
        }
        None => {
            let incoming =
                listener::plain_incoming(grpc_listener, grpc_connections, shutdown.clone());
            let grpc =
                router.serve_with_incoming_shutdown(incoming, stopped.clone().cancelled_owned());
            let http = listener::plain_incoming(http_listener, http_connections, shutdown.clone());
            (
                tokio::spawn(async move { grpc.await.map_err(anyhow::Error::from) }),
                tokio::spawn(listener::serve_http(http, routes, stopped)),
            )
        }
    };

    // Its own target, so a quiet log level can still show where it serves
    // (RUST_LOG=warn,failover::serving=info).
    tracing::info!(
        target: "failover::serving",
        grpc = %grpc_addr,
        http = %http_addr,
        tls = tls.is_some(),
        data_dir = %config.data_dir.display(),
        groups,
        "coordinator serving"
    );
    readiness.set(true);

    let mut runtime_task = runtime_task;
    let failure = tokio::select! {
        _ = shutdown.cancelled() => None,
        result = &mut runtime_task => Some(result),
    };
    readiness.set(false);
    health
        .set_not_serving::<AgentServiceServer<session::AgentSessions>>()
        .await;
    shutdown.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, async {
        let _ = grpc_task.await;
        let _ = http_task.await;
    })
    .await
    .is_err()
    {
        tracing::warn!("open streams did not finish within {SHUTDOWN_GRACE:?}; stopping anyway");
    }
    runtime_stop.cancel();
    let result = match failure {
        Some(result) => result,
        None => runtime_task.await,
    };
    result.context("coordinator runtime panicked")??;
    tracing::info!("coordinator stopped");
    Ok(())
}

/// What `--check-config` finds wrong with the files the configuration
/// names: TLS material that does not load (or a key that is not the
/// certificate's), a token file that does not parse. Empty when all is
/// well.
pub fn check_files(config: &config::Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(files) = config.tls_files()
        && let Err(e) = tls::TlsState::load(files)
    {
        problems.push(format!("[tls]: {e:#}"));
    }
    if let Some(path) = &config.auth.tokens
        && let Err(e) = auth::Tokens::load(path)
    {
        problems.push(format!("[auth] tokens: {e:#}"));
    }
    problems
}

/// File descriptors kept back from both listeners: the store, the log,
/// reloads, and accepting one more connection to make room.
const DESCRIPTOR_RESERVE: u64 = 64;

/// The listeners' bounds from `[limits]`, with the gRPC cap lowered (and a
/// warning) when the process may not open that many files. The soft limit
/// on open files is raised to the hard one first.
fn fit_descriptors(
    limits: &config::LimitsConfig,
    plaintext: bool,
) -> (connections::Bounds, connections::Bounds) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let allowed = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => u64::MAX,
    };
    // Probes get up to a quarter of what is left, agents and operators
    // the rest.
    let available = allowed.saturating_sub(DESCRIPTOR_RESERVE).max(2);
    let http = (limits.max_http_connections as u64)
        .min(available / 4)
        .max(1);
    let grpc = (limits.max_connections as u64)
        .min(available.saturating_sub(http))
        .max(1);
    if grpc < limits.max_connections as u64 || http < limits.max_http_connections as u64 {
        tracing::warn!(
            open_files = allowed,
            max_connections = grpc,
            max_http_connections = http,
            "this process may open only {allowed} files: at most {grpc} gRPC and {http} HTTP \
             connections instead of [limits] max_connections = {} and max_http_connections = {} \
             (raise the open-files limit, e.g. LimitNOFILE= in systemd)",
            limits.max_connections,
            limits.max_http_connections
        );
    }
    let bounds = |max: u64, evictable_after: Duration| connections::Bounds {
        max: usize::try_from(max).unwrap_or(usize::MAX),
        idle: limits.idle_timeout,
        evictable_after,
        trust_all: plaintext,
    };
    (
        // Longer than the longest heartbeat interval (60 s).
        bounds(grpc, Duration::from_secs(65)),
        bounds(http, Duration::ZERO),
    )
}

/// Names this coordinator process in Welcome messages and logs.
fn coordinator_id() -> String {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("coordinator-{}-{started}", std::process::id())
}
