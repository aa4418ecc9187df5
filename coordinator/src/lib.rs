//! The failover coordinator: keeps failover groups in an embedded store,
//! holds one session per agent, decides promotions and serves the admin API.
//!
//! [`run`] wires the parts together: store → engine → runtime actor, then
//! the gRPC listener (agent sessions, admin, health, reflection) and the
//! HTTP listener. See ARCHITECTURE.md for the map.

mod admin;
mod answer_budget;
pub mod api;
mod auth;
pub mod backup;
mod cluster;
pub mod config;
mod config_reload;
mod connections;
mod convert;
mod election;
pub mod engine;
mod error;
mod etcd;
#[cfg(test)]
mod fuzz_tests;
mod group_metrics;
mod http;
mod leadership;
mod limits;
mod listener;
mod metrics;
mod metrics_format;
pub mod model;
pub mod notify;
pub mod policy;
mod reload;
mod request_deadline;
mod rest;
mod runtime;
mod session;
mod status_page;
mod store;
mod tls;

pub use auth::Access;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use proto::client::ClientTls;
use proto::v1::admin_service_server::AdminServiceServer;
use proto::v1::agent_service_server::AgentServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StoreKind};
use crate::engine::{Engine, EngineConfig};
use crate::policy::Policy;
use crate::runtime::Runtime;
use crate::store::{EtcdLocation, EtcdStore, SledStore, Store, StoreError};

/// How long shutdown waits for open streams to finish (the runtime has
/// stopped already: what is left is sending answers), so that a client
/// that never reads cannot hold a restart past the agents' leases.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

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
    let opened = open_store(&config).await?;
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
    let Listeners {
        grpc: grpc_listener,
        http: http_listener,
    } = listeners;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let notifier = notify::Notifier::new(notify::Sinks::build(&config.notify)?);
    let (defaults_tx, defaults_rx) = watch::channel(config.defaults.clone());
    if !notifier.names().is_empty() {
        tracing::info!(sinks = ?notifier.names(), "notifying through these sinks");
    }
    for problem in config.notify.iter().filter_map(|n| n.program_problem()) {
        tracing::warn!("{problem}: its deliveries will fail until it is there");
    }
    let metrics = metrics::Metrics::new();
    let readiness = http::Readiness::default();
    let me = election::Replica {
        id: coordinator_id(),
        url: config.advertised(grpc_addr),
    };
    let (leadership, mut leading, store_text, election) = match opened {
        Opened::Sled(store) => {
            // The runtime stops as soon as shutdown begins: it must decide
            // nothing more (sessions closing would look like lapses).
            let stop = shutdown.clone();
            let (runtime, handle, groups) = start_term(
                &config,
                &me.id,
                Arc::new(store),
                &metrics,
                &notifier,
                config.defaults.clone(),
                &stop,
            )
            .await?;
            let task = tokio::spawn(runtime.run(stop.clone()));
            readiness.set(true);
            let text = format!("sled in {} ({groups} groups)", config.data_dir.display());
            (
                leadership::Leadership::always(handle),
                Leading::Alone { task, stop },
                text,
                None,
            )
        }
        Opened::Etcd(store) => {
            let (part, seen) = watch::channel(leadership::Part::Following(None));
            let text = format!(
                "etcd {} under {} (replica {} at {})",
                config.etcd.endpoints.join(","),
                config.etcd.prefix,
                me.id,
                me.url
            );
            let election = Arc::new(election::Election::new(
                store.etcd().clone(),
                &config.etcd.prefix,
                me.clone(),
                config.etcd.leader_lease,
                config.clock_drift,
            ));
            let task = tokio::spawn(lead_while_elected(Replicas {
                config: config.clone(),
                store: Arc::from(store),
                election: election.clone(),
                id: me.id.clone(),
                part,
                readiness: readiness.clone(),
                metrics: metrics.clone(),
                notifier: notifier.clone(),
                defaults: defaults_rx.clone(),
                shutdown: shutdown.clone(),
            }));
            (
                leadership::Leadership::new(seen),
                Leading::Replicas { task },
                text,
                Some(election),
            )
        }
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AgentServiceServer<session::AgentSessions>>()
        .await;
    health
        .set_serving::<AdminServiceServer<admin::AdminApi>>()
        .await;
    // Reflection in both versions: grpcurl speaks v1, grpcio's client
    // and older grpcurl builds only v1alpha.
    let reflecting = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflecting()
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = reflecting()
        .build_v1alpha()
        .context("building the reflection service (v1alpha)")?;

    let (grpc_bounds, http_bounds) = fit_descriptors(&config.limits, tls.is_none());
    let grpc_connections = connections::Connections::new("gRPC", grpc_bounds);
    let http_connections = connections::Connections::new("HTTP", http_bounds);
    let sessions = session::AgentSessions::new(
        leadership.clone(),
        shutdown.clone(),
        auth.clone(),
        grpc_connections.clone(),
    );
    let cluster_leadership = leadership.clone();
    if let Some(path) = &config.source {
        reloadable.push(Arc::new(config_reload::ConfigReload::new(
            path.clone(),
            config.clone(),
            notifier.clone(),
            leadership.clone(),
            defaults_tx,
        )));
    }
    tokio::spawn(reload::watch(reloadable, shutdown.clone()));
    let cluster = cluster::Cluster {
        me,
        leadership,
        election,
    };
    // One operators' API for gRPC and REST.
    let admin = Arc::new(admin::AdminApi::new(
        api::Api::new(cluster, config.limits.max_watchers),
        shutdown.clone(),
        auth.clone(),
        grpc_connections.clone(),
    ));
    let grpc_routes = tonic::service::Routes::new(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(
            AgentServiceServer::new(sessions).max_decoding_message_size(limits::MAX_MESSAGE_BYTES),
        )
        .add_service(
            AdminServiceServer::from_arc(admin.clone())
                .max_decoding_message_size(limits::MAX_MESSAGE_BYTES),
        )
        .prepare();
    let grpc_service = tower::Layer::layer(
        &request_deadline::RequestDeadlineLayer::new(
            grpc_connections.clone(),
            auth,
            shutdown.clone(),
        ),
        grpc_routes,
    );
    let routes = http::router(
        readiness.clone(),
        metrics,
        group_metrics::GroupGauges::new(cluster_leadership),
        admin.clone(),
    )
    .merge(rest::router(admin))
    .merge(status_page::router())
    .layer(axum::middleware::from_fn(answer_budget::hold));
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
            let grpc = listener::serve_grpc(incoming, grpc_service, stopped.clone());
            let https = listener::tls_incoming(
                http_listener,
                http_connections,
                tls.clone(),
                listener::Kind::Http,
                shutdown.clone(),
            );
            (
                tokio::spawn(grpc),
                tokio::spawn(listener::serve_http(https, routes, stopped)),
            )
        }
        None => {
            let incoming =
                listener::plain_incoming(grpc_listener, grpc_connections, shutdown.clone());
            let grpc = listener::serve_grpc(incoming, grpc_service, stopped.clone());
            let http = listener::plain_incoming(http_listener, http_connections, shutdown.clone());
            (
                tokio::spawn(grpc),
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
        store = %store_text,
        "coordinator serving"
    );

    let failure = match &mut leading {
        Leading::Alone { task, .. } => tokio::select! {
            _ = shutdown.cancelled() => None,
            result = task => Some(result.context("coordinator runtime panicked").and_then(|r| r.map_err(anyhow::Error::from))),
        },
        Leading::Replicas { task } => tokio::select! {
            _ = shutdown.cancelled() => None,
            result = task => Some(result.context("the leadership loop panicked").and_then(|r| r)),
        },
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
    let result = match (failure, leading) {
        (Some(result), _) => result,
        (None, Leading::Alone { task, stop }) => {
            stop.cancel();
            task.await
                .context("coordinator runtime panicked")
                .and_then(|r| r.map_err(anyhow::Error::from))
        }
        (None, Leading::Replicas { task }) => task
            .await
            .context("the leadership loop panicked")
            .and_then(|r| r),
    };
    result?;
    tracing::info!("coordinator stopped");
    Ok(())
}

/// The store the configuration names, opened.
enum Opened {
    Sled(SledStore),
    Etcd(Box<EtcdStore>),
}

async fn open_store(config: &Config) -> anyhow::Result<Opened> {
    let retention = config.event_retention;
    Ok(match config.store {
        StoreKind::Sled => {
            let data_dir = config.data_dir.clone();
            let store = tokio::task::spawn_blocking(move || SledStore::open(&data_dir, retention))
                .await
                .context("store open panicked")??;
            Opened::Sled(store)
        }
        StoreKind::Etcd => {
            let location = EtcdLocation {
                endpoints: config.etcd.endpoints.clone(),
                tls: ClientTls {
                    ca: config.etcd.ca.clone(),
                    cert: config.etcd.cert.clone(),
                    key: config.etcd.key.clone(),
                },
                prefix: config.etcd.prefix.clone(),
            };
            // etcd may still be starting (all services come up together):
            // keep trying, saying why.
            loop {
                let location = location.clone();
                let opened =
                    tokio::task::spawn_blocking(move || EtcdStore::open(&location, retention))
                        .await
                        .context("store open panicked")?;
                match opened {
                    Ok(store) => break Opened::Etcd(Box::new(store)),
                    Err(e @ StoreError::Unavailable(_)) => {
                        tracing::warn!(error = %e, "cannot reach etcd yet; trying again in 1s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    })
}

/// Who runs the runtime: this process alone (embedded store), or whichever
/// replica is elected (etcd).
enum Leading {
    Alone {
        task: tokio::task::JoinHandle<Result<(), StoreError>>,
        stop: CancellationToken,
    },
    Replicas {
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    },
}

/// Takes the store for one runtime: a new fencing term first, then
/// everything in it, so anything a previous holder still tries to write is
/// either read here or refused. The engine waits out every lease an agent
/// may hold, as after a restart.
async fn start_term(
    config: &Config,
    id: &str,
    store: Arc<dyn Store>,
    metrics: &Arc<metrics::Metrics>,
    notifier: &notify::Notifier,
    defaults: Policy,
    stop: &CancellationToken,
) -> anyhow::Result<(Runtime, runtime::Handle, usize)> {
    let reading = store.clone();
    let (fence, recovered) = tokio::task::spawn_blocking(move || {
        let fence = reading.fence()?;
        Ok::<_, StoreError>((fence, reading.load()?))
    })
    .await
    .context("reading the store panicked")??;
    let groups = recovered.groups.len();
    let durable = engine::Durable::of(&recovered);
    let engine = Engine::new(
        EngineConfig {
            coordinator_id: id.to_owned(),
            clock_drift: config.clock_drift,
            default_heartbeat_interval: defaults.heartbeat_interval,
            default_policy: defaults,
            // Among replicas the previous leader may act one leader lease
            // past this one's takeover (election.rs).
            takeover_wait: match config.store {
                StoreKind::Sled => Duration::ZERO,
                StoreKind::Etcd => config.etcd.leader_lease,
            },
        },
        recovered,
        runtime::now(),
    );
    let (runtime, handle) = Runtime::new(engine, durable, store.clone(), fence, metrics.clone());
    // The sinks deliver what this term records, and stop with it.
    notifier.start_term(notify::Term {
        store,
        fence,
        live: handle.event_sender(),
        metrics: metrics.clone(),
        stop: stop.clone(),
        term_stop: stop.clone(),
    });
    Ok((runtime, handle, groups))
}

/// What the leadership loop of a replica needs.
struct Replicas {
    config: Config,
    store: Arc<EtcdStore>,
    election: Arc<election::Election>,
    /// This replica's id.
    id: String,
    part: watch::Sender<leadership::Part>,
    readiness: http::Readiness,
    metrics: Arc<metrics::Metrics>,
    notifier: Arc<notify::Notifier>,
    /// `[defaults]` as last (re)loaded.
    defaults: watch::Receiver<Policy>,
    shutdown: CancellationToken,
}

/// A replica's life: campaign; when elected, run the runtime for as long
/// as the leadership is certain; then campaign again. Ends at shutdown
/// (handing the leadership back at once).
async fn lead_while_elected(r: Replicas) -> anyhow::Result<()> {
    loop {
        let following = |leader: Option<election::Replica>| {
            // Ready while it can send clients to a leader.
            r.readiness.set(leader.is_some());
            r.metrics.leader.set(0);
            r.part.send_replace(leadership::Part::Following(leader));
        };
        let term = tokio::select! {
            term = r.election.campaign(following) => term,
            _ = r.shutdown.cancelled() => return Ok(()),
        };
        let store: Arc<dyn Store> = r.store.clone();
        let stop = CancellationToken::new();
        let defaults = r.defaults.borrow().clone();
        let started = start_term(
            &r.config,
            &r.id,
            store,
            &r.metrics,
            &r.notifier,
            defaults,
            &stop,
        )
        .await;
        let (runtime, handle, groups) = match started {
            Ok(started) => started,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "elected, but cannot take the store; handing the leadership back");
                r.election.resign(term).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (until_tx, until) = watch::channel(term.deadline);
        let mut task = tokio::spawn(runtime.leading_until(until).run(stop.clone()));
        r.part.send_replace(leadership::Part::Leading(handle));
        r.readiness.set(true);
        r.metrics.leader.set(1);
        r.metrics.leader_changes.inc();
        tracing::warn!(groups, "this replica leads now");
        let (why, finished) = tokio::select! {
            why = r.election.hold(&term, &until_tx) => (why, false),
            result = &mut task => (format!("its runtime stopped: {:?}", result), true),
            _ = r.shutdown.cancelled() => ("shutting down".to_owned(), false),
        };
        r.part.send_replace(leadership::Part::Following(None));
        r.metrics.leader.set(0);
        stop.cancel();
        if !finished {
            let _ = task.await;
        }
        r.election.resign(term).await;
        if r.shutdown.is_cancelled() {
            return Ok(());
        }
        tracing::error!("this replica stopped leading: {why}");
    }
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
    problems.extend(config.notify.iter().filter_map(|n| n.program_problem()));
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
