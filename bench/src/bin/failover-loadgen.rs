//! `failover-loadgen`: opens N real agent sessions over gRPC from one
//! process (one TCP connection each), heartbeats at the interval the
//! coordinator asks for, and prints a JSON summary: sessions, heartbeats,
//! round-trip latency, role changes. Optionally creates the groups first,
//! and drops every group's primary at the same instant to measure a mass
//! failover.
//!
//!   failover-loadgen --coordinator http://127.0.0.1:7400 --agents 1000 \
//!       --groups 1000 --duration 60s
// Test tooling: a harness or benchmark that cannot go on stops loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use proto::v1 as pb;
use proto::v1::admin_service_client::AdminServiceClient;
use proto::v1::agent_service_client::AgentServiceClient;
use rand::Rng;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

#[derive(Parser, Clone)]
#[command(
    name = "failover-loadgen",
    about = "Load generator: many real agent sessions from one process"
)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:7400")]
    coordinator: String,
    /// Agent sessions to open.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Groups to create first (0: use what exists).
    #[arg(long, default_value_t = 0)]
    groups: usize,
    /// Members per created group: agents i*m .. i*m+m-1 (mod agents).
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Heartbeat interval of created groups.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Failover timeout of created groups.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    failover_timeout: Duration,
    /// How long the sessions run.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Over how long the sessions are opened.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    ramp: Duration,
    /// At this point, drop the sessions of every group's primary at once
    /// and measure until each group has a new primary.
    #[arg(long, value_parser = humantime::parse_duration)]
    drop_primaries_at: Option<Duration>,
    /// The coordinator's /metrics URL, to count store commits during a
    /// mass failover.
    #[arg(long)]
    metrics: Option<String>,
    /// Node id prefix.
    #[arg(long, default_value = "lg")]
    prefix: String,
}

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    heartbeats: AtomicU64,
    acks: AtomicU64,
    assignments: AtomicU64,
    promotions: AtomicU64,
    errors: AtomicU64,
}

/// Who is primary of each group, as the agents were told: (node, epoch).
type Primaries = Arc<Mutex<HashMap<String, (usize, u64, Instant)>>>;

fn node_id(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:05}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_fd_limit();
    if args.groups > 0 {
        create_groups(&args).await?;
    }
    let counters = Arc::new(Counters::default());
    let primaries: Primaries = Arc::default();
    let stop = CancellationToken::new();
    let mut agents = Vec::with_capacity(args.agents);
    let mut rtts = Vec::with_capacity(args.agents);
    for i in 0..args.agents {
        let cancel = stop.child_token();
        let (rtt_tx, rtt_rx) = tokio::sync::oneshot::channel();
        rtts.push(rtt_rx);
        let delay = args.ramp.mul_f64(i as f64 / args.agents.max(1) as f64);
        tokio::spawn(agent(
            i,
            args.clone(),
            delay,
            counters.clone(),
            primaries.clone(),
            cancel.clone(),
            rtt_tx,
        ));
        agents.push(cancel);
    }

    let started = Instant::now();
    let mut mass = serde_json::Value::Null;
    if let Some(at) = args.drop_primaries_at {
        tokio::time::sleep_until(started + at).await;
        mass = mass_failover(&args, &agents, &primaries).await;
    }
    tokio::time::sleep_until(started + args.duration).await;
    stop.cancel();

    let mut samples: Vec<u32> = Vec::new();
    for rx in rtts {
        if let Ok(mut v) = rx.await {
            samples.append(&mut v);
        }
    }
    samples.sort_unstable();
    let pct = |p: f64| -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        let i = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i] as f64 / 1000.0
    };
    let c = &counters;
    let summary = json!({
        "agents": args.agents,
        "groups_created": args.groups,
        "duration_s": args.duration.as_secs_f64(),
        "sessions_opened": c.connected.load(Ordering::Relaxed),
        "heartbeats_sent": c.heartbeats.load(Ordering::Relaxed),
        "acks_received": c.acks.load(Ordering::Relaxed),
        "assignments_received": c.assignments.load(Ordering::Relaxed),
        "promotions_seen": c.promotions.load(Ordering::Relaxed),
        "errors": c.errors.load(Ordering::Relaxed),
        "rtt_ms": { "p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0), "samples": samples.len() },
        "mass_failover": mass,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

/// 10,000 sessions need more descriptors than the usual soft limit.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

async fn create_groups(args: &Args) -> anyhow::Result<()> {
    let admin = AdminServiceClient::connect(args.coordinator.clone()).await?;
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<()>>(64);
    let mut in_flight = 0;
    let mut next = 0;
    // Up to 64 creations in flight: the coordinator commits them in batches.
    while next < args.groups || in_flight > 0 {
        while in_flight < 64 && next < args.groups {
            let mut admin = admin.clone();
            let members = (0..args.members)
                .map(|j| node_id(&args.prefix, (next * args.members + j) % args.agents.max(1)))
                .collect();
            let request = pb::CreateGroupRequest {
                name: format!("{}-g-{next:05}", args.prefix),
                members,
                policy: Some(pb::Policy {
                    heartbeat_interval_ms: Some(args.heartbeat.as_millis() as u64),
                    failover_timeout_ms: Some(args.failover_timeout.as_millis() as u64),
                    ..Default::default()
                }),
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let result = match admin.create_group(request).await {
                    Ok(_) => Ok(()),
                    Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                    Err(s) => Err(anyhow::anyhow!("creating a group: {}", s.message())),
                };
                let _ = tx.send(result).await;
            });
            in_flight += 1;
            next += 1;
        }
        rx.recv().await.expect("a result per creation")?;
        in_flight -= 1;
    }
    Ok(())
}

/// Drops the session of every group's current primary, then waits until
/// every such group has a new primary (or 60 s pass).
async fn mass_failover(
    args: &Args,
    agents: &[CancellationToken],
    primaries: &Primaries,
) -> serde_json::Value {
    let commits_before = commits(args).await;
    let victims: HashMap<String, (usize, u64)> = primaries
        .lock()
        .expect("lock")
        .iter()
        .map(|(g, &(node, epoch, _))| (g.clone(), (node, epoch)))
        .collect();
    let nodes: std::collections::BTreeSet<usize> = victims.values().map(|&(n, _)| n).collect();
    let dropped_at = Instant::now();
    for &n in &nodes {
        agents[n].cancel();
    }
    let deadline = dropped_at + Duration::from_secs(60);
    let mut recovered_at: HashMap<String, Duration> = HashMap::new();
    while recovered_at.len() < victims.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = primaries.lock().expect("lock").clone();
        for (group, &(old_node, old_epoch)) in &victims {
            if recovered_at.contains_key(group) {
                continue;
            }
            if let Some(&(node, epoch, at)) = now.get(group)
                && epoch > old_epoch
                && node != old_node
            {
                recovered_at.insert(group.clone(), at - dropped_at);
            }
        }
    }
    let mut times: Vec<f64> = recovered_at
        .values()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    times.sort_by(f64::total_cmp);
    let commits_after = commits(args).await;
    json!({
        "groups": victims.len(),
        "sessions_dropped": nodes.len(),
        "recovered": times.len(),
        "first_ms": times.first(),
        "median_ms": times.get(times.len() / 2),
        "all_ms": times.last(),
        "store_commits": match (commits_before, commits_after) {
            (Some(a), Some(b)) => json!(b - a),
            _ => serde_json::Value::Null,
        },
    })
}

/// The coordinator's store commits so far, from its /metrics.
async fn commits(args: &Args) -> Option<u64> {
    let url = args.metrics.as_ref()?;
    let text = tokio::task::spawn_blocking({
        let url = url.clone();
        move || fetch(&url)
    })
    .await
    .ok()??;
    text.lines()
        .find(|l| l.starts_with("failover_store_commits_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// A plain HTTP/1.0 GET of `http://HOST:PORT/PATH`.
fn fetch(url: &str) -> Option<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

async fn agent(
    i: usize,
    args: Args,
    delay: Duration,
    counters: Arc<Counters>,
    primaries: Primaries,
    cancel: CancellationToken,
    rtt_out: tokio::sync::oneshot::Sender<Vec<u32>>,
) {
    let mut rtts: Vec<u32> = Vec::new();
    tokio::time::sleep(delay).await;
    let result = session(i, &args, &counters, &primaries, &cancel, &mut rtts).await;
    if result.is_err() && !cancel.is_cancelled() {
        counters.errors.fetch_add(1, Ordering::Relaxed);
    }
    let _ = rtt_out.send(rtts);
}

async fn session(
    i: usize,
    args: &Args,
    counters: &Counters,
    primaries: &Primaries,
    cancel: &CancellationToken,
    rtts: &mut Vec<u32>,
) -> anyhow::Result<()> {
    let channel = Endpoint::from_shared(args.coordinator.clone())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let (tx, rx) = mpsc::channel(64);
    let node = node_id(&args.prefix, i);
    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(tests::raw::hello(
            &node,
            vec![],
        ))),
    })
    .await?;
    let mut inbound = AgentServiceClient::new(channel)
        .session(ReceiverStream::new(rx))
        .await?
        .into_inner();
    counters.connected.fetch_add(1, Ordering::Relaxed);

    let mut interval = Duration::from_secs(1);
    // Spread heartbeats over the interval, as independent agents would be.
    let mut next = Instant::now() + interval.mul_f64(rand::rng().random_range(0.0..1.0));
    let mut seq = 0u64;
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(next) => {
                seq += 1;
                sent.insert(seq, Instant::now());
                tx.send(pb::AgentMessage {
                    kind: Some(pb::agent_message::Kind::Heartbeat(pb::Heartbeat { seq, checks: vec![], roles: vec![], syncs: vec![] })),
                }).await?;
                counters.heartbeats.fetch_add(1, Ordering::Relaxed);
                next += interval;
            }
            message = inbound.message() => {
                let Some(message) = message? else { anyhow::bail!("the coordinator ended the session") };
                match message.kind {
                    Some(pb::coordinator_message::Kind::Ack(ack)) => {
                        if let Some(at) = sent.remove(&ack.seq) {
                            rtts.push(at.elapsed().as_micros() as u32);
                            counters.acks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(pb::coordinator_message::Kind::Assignment(a)) => {
                        counters.assignments.fetch_add(1, Ordering::Relaxed);
                        if a.role == pb::Role::Primary as i32 {
                            counters.promotions.fetch_add(1, Ordering::Relaxed);
                            primaries.lock().expect("lock").insert(a.group, (i, a.epoch, Instant::now()));
                        }
                    }
                    Some(pb::coordinator_message::Kind::Welcome(w)) => {
                        if let Some(s) = w.settings {
                            interval = Duration::from_millis(s.heartbeat_interval_ms.max(1));
                        }
                    }
                    Some(pb::coordinator_message::Kind::Settings(s)) => {
                        interval = Duration::from_millis(s.heartbeat_interval_ms.max(1));
                    }
                    _ => {}
                }
            }
        }
    }
}
