//! The coordinator under abuse: real agents (`failover-loadgen`) heartbeat
//! while one kind of abuse runs, and the benchmark reports the
//! coordinator's memory, the agents' heartbeat round trip and whether any
//! primary lapsed — next to a quiet baseline. Every abuse is bounded in
//! count and stops with the run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use proto::v1 as pb;
use serde::Serialize;
use serde_json::Value;
use tests::Cluster;

use crate::load::{QUIET, coordinator_pid, loadgen, metric, scrape};
use crate::procfs;

/// Agents heartbeating through every run.
const AGENTS: usize = 300;
/// How long each run lasts (the abuse starts after the ramp).
const RUN: Duration = Duration::from_secs(25);
const RAMP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Abuse {
    Quiet,
    /// 3,000 TCP connections to the gRPC port that send nothing, kept up.
    IdleConnections,
    /// 1,000 HTTP requests whose headers never end, kept up.
    SlowHttp,
    /// 200 event watches of a 2,000-event backlog that never read.
    StalledWatchers,
    /// 20 sessions sending 3 MB check details every second.
    OversizedText,
    /// The store's file system full for the whole run.
    DiskFull,
}

pub(crate) const ALL: [Abuse; 6] = [
    Abuse::Quiet,
    Abuse::IdleConnections,
    Abuse::SlowHttp,
    Abuse::StalledWatchers,
    Abuse::OversizedText,
    Abuse::DiskFull,
];

#[derive(Debug, Serialize)]
pub(crate) struct AbuseResult {
    pub abuse: Abuse,
    pub coordinator_rss_mib: f64,
    pub coordinator_peak_rss_mib: f64,
    pub coordinator_open_files: usize,
    pub rtt_ms: Value,
    /// Lapses recorded while the agents ran.
    pub primaries_lapsed: f64,
    /// `/readyz` asked once a second during the abuse: how often it did not
    /// answer 200.
    pub probes_failed: u32,
    pub probes: u32,
    pub loadgen_errors: u64,
}

pub(crate) fn run(abuse: Abuse) -> AbuseResult {
    let (c, disk) = match abuse {
        Abuse::DiskFull => {
            let (c, disk) = Cluster::start_on_small_disk_with("64m", &QUIET);
            (c, Some(disk))
        }
        _ => (Cluster::start_with(&QUIET), None),
    };
    let pid = coordinator_pid(&c);
    if let Abuse::StalledWatchers = abuse {
        c.add_group("backlog", &["x"]);
        for i in 0..2000 {
            let delay = format!("{}s", 30 + i);
            c.ctl_ok(&["group", "set", "backlog", "--failback-delay", &delay]);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut started = false;
    let mut abuser = None;
    let mut open_files = 0;
    let mut lapsed = 0.0;
    let (mut probes, mut probes_failed) = (0, 0);
    let args = [
        "--agents".into(),
        AGENTS.to_string(),
        "--groups".into(),
        (AGENTS / 3).to_string(),
        "--duration".into(),
        format!("{}s", RUN.as_secs()),
        "--ramp".into(),
        format!("{}s", RAMP.as_secs()),
    ];
    let summary = loadgen(&c, &args, |elapsed| {
        if !started && elapsed >= RAMP + Duration::from_secs(2) {
            started = true;
            if let Some(disk) = &disk {
                disk.fill();
            }
            let stop = stop.clone();
            let (grpc, http, url) = (c.grpc, c.http, c.url());
            abuser = Some(std::thread::spawn(move || {
                abuse_until(abuse, grpc, http, &url, &stop)
            }));
        }
        open_files =
            open_files.max(std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()));
        if started {
            probes += 1;
            if c.http_get("/readyz").map(|(code, _)| code) != Some(200) {
                probes_failed += 1;
            }
        }
        let text = scrape(&c);
        if !text.is_empty() {
            lapsed = metric(&text, "failover_events_total{kind=\"primary_lapsed\"}");
        }
    });
    stop.store(true, Ordering::Relaxed);
    if let Some(a) = abuser {
        let _ = a.join();
    }
    let (rss, peak) = procfs::rss_mib(pid);
    AbuseResult {
        abuse,
        coordinator_rss_mib: rss,
        coordinator_peak_rss_mib: peak,
        coordinator_open_files: open_files,
        rtt_ms: summary["rtt_ms"].clone(),
        primaries_lapsed: lapsed,
        probes_failed,
        probes,
        loadgen_errors: summary["errors"].as_u64().unwrap_or(0),
    }
}

fn abuse_until(abuse: Abuse, grpc: SocketAddr, http: SocketAddr, url: &str, stop: &AtomicBool) {
    match abuse {
        Abuse::Quiet | Abuse::DiskFull => {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Abuse::IdleConnections => keep_connections(grpc, 3000, b"", stop),
        Abuse::SlowHttp => keep_connections(
            http,
            1000,
            b"GET /readyz HTTP/1.1\r\nHost: coordinator\r\n",
            stop,
        ),
        Abuse::StalledWatchers => stalled_watchers(url, 200, stop),
        Abuse::OversizedText => oversized_text(url, 20, stop),
    }
}

/// Keeps `count` connections open (reopening those the coordinator
/// closes), each having sent `first`, until `stop`.
fn keep_connections(addr: SocketAddr, count: usize, first: &[u8], stop: &AtomicBool) {
    let mut open: Vec<TcpStream> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        open.retain_mut(|s| {
            let mut buf = [0u8; 256];
            match s.read(&mut buf) {
                Ok(0) => false,
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            }
        });
        while open.len() < count {
            let Ok(mut s) = TcpStream::connect(addr) else {
                break;
            };
            let _ = s.set_nonblocking(true);
            let _ = s.write_all(first);
            open.push(s);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `count` event watches with the whole backlog that never read.
fn stalled_watchers(url: &str, count: usize, stop: &AtomicBool) {
    use pb::admin_service_client::AdminServiceClient;
    runtime().block_on(async {
        let mut held = Vec::new();
        for _ in 0..count {
            let Ok(mut client) = AdminServiceClient::connect(url.to_owned()).await else {
                continue;
            };
            let request = pb::ListEventsRequest {
                group: String::new(),
                limit: 0,
            };
            if let Ok(stream) = client.watch_events(request).await {
                held.push((client, stream));
            }
        }
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(held);
    });
}

/// `count` sessions sending a heartbeat with a 3 MB check detail every
/// second.
fn oversized_text(url: &str, count: usize, stop: &AtomicBool) {
    use tests::raw::{self, RawSession, Target};
    let to = Target {
        url: url.to_owned(),
        tls: Default::default(),
    };
    runtime().block_on(async {
        let mut sessions = Vec::new();
        for i in 0..count {
            if let Ok(s) = RawSession::open(&to, raw::hello(&format!("big-{i}"), vec![])).await {
                sessions.push(s);
            }
        }
        let detail = "x".repeat(3 * 1024 * 1024);
        let mut seq = 1;
        while !stop.load(Ordering::Relaxed) {
            for s in &sessions {
                s.send(pb::agent_message::Kind::Heartbeat(pb::Heartbeat {
                    syncs: Vec::new(),
                    seq,
                    checks: vec![pb::CheckStatus {
                        name: "big".into(),
                        passing: true,
                        groups: vec![],
                        detail: detail.clone(),
                    }],
                    roles: vec![],
                }))
                .await;
            }
            seq += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}
