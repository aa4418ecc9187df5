//! Benchmarks under load, with `failover-loadgen` as the agents: scale
//! (CPU, memory, heartbeat round trip, false failovers), mass failover,
//! restart with many groups, and disk writes caused by heartbeats.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tests::{Cluster, bin, http_get};

use crate::procfs;
use crate::stats::{Summary, summarize};

/// Quiet logs: per-session lines would dominate at 10,000 agents.
/// Warnings only, but still the line that says where the coordinator serves.
pub(crate) const QUIET: [(&str, &str); 1] = [("RUST_LOG", "warn,failover::serving=info")];

pub(crate) fn coordinator_pid(c: &Cluster) -> i32 {
    c.coordinator.as_ref().expect("running").pid().as_raw()
}

/// Runs the load generator against `c` with `args`, calling `during`
/// every second while it runs; returns its JSON summary.
pub(crate) fn loadgen(c: &Cluster, args: &[String], mut during: impl FnMut(Duration)) -> Value {
    let metrics = format!("http://{}/metrics", c.http);
    let mut child = Command::new(bin("failover-loadgen"))
        .args(["--coordinator", &c.url(), "--metrics", &metrics])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("failover-loadgen runs");
    let started = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        std::thread::sleep(Duration::from_secs(1));
        during(started.elapsed());
    }
    let output = child.wait_with_output().expect("loadgen output");
    serde_json::from_slice(&output.stdout).expect("loadgen prints JSON")
}

/// Value of a metric line, `name` including any labels.
pub(crate) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

pub(crate) fn scrape(c: &Cluster) -> String {
    http_get(c.http, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// The bucket bound under which `q` of a histogram's observations fall.
fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let count = metric(text, &format!("{name}_count"));
    if count == 0.0 {
        return None;
    }
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(&prefix)?;
        let (le, value) = rest.split_once("\"} ")?;
        let cumulative: f64 = value.trim().parse().ok()?;
        (cumulative >= q * count).then(|| le.parse().ok()).flatten()
    })
}

#[derive(Debug, Serialize)]
pub(crate) struct ScaleResult {
    pub agents: usize,
    pub groups: usize,
    pub steady_seconds: f64,
    pub coordinator_cpu_cores: f64,
    pub coordinator_rss_mib: f64,
    pub coordinator_peak_rss_mib: f64,
    pub heartbeats_per_second: f64,
    pub rtt_ms: Value,
    pub sessions_opened: u64,
    pub false_failovers: f64,
    pub loadgen_errors: u64,
}

/// N agents at 1 heartbeat/s in N/3 groups of three, for `duration`.
pub(crate) fn scale(agents: usize, duration: Duration) -> ScaleResult {
    let c = Cluster::start_with(&QUIET);
    let pid = coordinator_pid(&c);
    let groups = agents / 3;
    let ramp = Duration::from_secs((agents / 1000).max(5) as u64);
    let args = [
        "--agents".into(),
        agents.to_string(),
        "--groups".into(),
        groups.to_string(),
        "--duration".into(),
        format!("{}s", duration.as_secs()),
        "--ramp".into(),
        format!("{}s", ramp.as_secs()),
    ];
    // Steady state: from a few seconds after the ramp to just before the end.
    let window_start = ramp + Duration::from_secs(5);
    let window_end = duration.saturating_sub(Duration::from_secs(2));
    let mut start = None;
    let mut end = None;
    let summary = loadgen(&c, &args, |elapsed| {
        let metrics_now = || metric(&scrape(&c), "failover_heartbeats_total");
        if start.is_none() && elapsed >= window_start {
            start = Some((Instant::now(), procfs::cpu(pid), metrics_now()));
        }
        if end.is_none() && elapsed >= window_end {
            end = Some((Instant::now(), procfs::cpu(pid), metrics_now()));
        }
    });
    let (t0, cpu0, hb0) = start.expect("a steady window");
    let (t1, cpu1, hb1) = end.expect("a steady window");
    let wall = (t1 - t0).as_secs_f64();
    let (rss, peak) = procfs::rss_mib(pid);
    let text = scrape(&c);
    ScaleResult {
        agents,
        groups,
        steady_seconds: wall,
        coordinator_cpu_cores: (cpu1 - cpu0).as_secs_f64() / wall,
        coordinator_rss_mib: rss,
        coordinator_peak_rss_mib: peak,
        heartbeats_per_second: (hb1 - hb0) / wall,
        rtt_ms: summary["rtt_ms"].clone(),
        sessions_opened: summary["sessions_opened"].as_u64().unwrap_or(0),
        false_failovers: metric(&text, "failover_events_total{kind=\"primary_lapsed\"}"),
        loadgen_errors: summary["errors"].as_u64().unwrap_or(0),
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct MassResult {
    pub groups: usize,
    pub failover_timeout_ms: u64,
    pub loadgen: Value,
    pub overhead_p99_le_ms: Option<f64>,
    pub overhead_mean_ms: f64,
    pub promotions_measured: f64,
}

/// `groups` groups of three agents each lose their primary at once.
pub(crate) fn mass_failover(groups: usize) -> MassResult {
    let c = Cluster::start_with(&QUIET);
    let args = [
        "--agents".into(),
        (groups * 3).to_string(),
        "--groups".into(),
        groups.to_string(),
        "--duration".into(),
        "40s".into(),
        "--drop-primaries-at".into(),
        "20s".into(),
        "--failover-timeout".into(),
        "3s".into(),
    ];
    let summary = loadgen(&c, &args, |_| {});
    let text = scrape(&c);
    let name = "failover_coordinator_overhead_seconds";
    let count = metric(&text, &format!("{name}_count"));
    MassResult {
        groups,
        failover_timeout_ms: 3000,
        loadgen: summary["mass_failover"].clone(),
        overhead_p99_le_ms: histogram_quantile(&text, name, 0.99).map(|s| s * 1000.0),
        overhead_mean_ms: if count > 0.0 {
            metric(&text, &format!("{name}_sum")) / count * 1000.0
        } else {
            0.0
        },
        promotions_measured: count,
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct RestartResult {
    pub groups: usize,
    pub runs: Summary,
    pub samples_ms: Vec<f64>,
}

/// A coordinator whose store holds `groups` groups (with primaries): from
/// process start to /readyz answering 200.
pub(crate) fn restart(groups: usize, runs: usize) -> RestartResult {
    let mut c = Cluster::start_with(&QUIET);
    let args = [
        "--agents".into(),
        "1000".into(),
        "--groups".into(),
        groups.to_string(),
        "--duration".into(),
        "15s".into(),
    ];
    loadgen(&c, &args, |_| {});
    let mut samples = Vec::new();
    for _ in 0..runs {
        c.kill_coordinator();
        let started = Instant::now();
        let mut child = Command::new(bin("failover-coordinator"))
            .args([
                "--listen",
                &c.grpc.to_string(),
                "--http-listen",
                &c.http.to_string(),
            ])
            .arg("--data-dir")
            .arg(c.path("data"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("coordinator starts");
        while http_get(c.http, "/readyz").map(|r| r.0) != Some(200) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "not ready in 60s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        samples.push(started.elapsed());
        let listed = c
            .ctl_json(&["group", "list"])
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(listed, groups, "every group is back");
        let _ = child.kill();
        let _ = child.wait();
        c.start_coordinator_with(&QUIET);
    }
    RestartResult {
        groups,
        runs: summarize(&samples),
        samples_ms: samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect(),
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct DiskResult {
    pub agents: usize,
    /// Written while groups were created and elected: shows the counter
    /// sees the store's writes on this machine.
    pub setup_bytes_written: u64,
    pub window_seconds: f64,
    pub heartbeats: f64,
    pub bytes_written: u64,
    pub store_commits: f64,
    pub store_file_changed: bool,
}

/// Bytes written by the coordinator while only heartbeats flow.
pub(crate) fn disk(agents: usize) -> DiskResult {
    let c = Cluster::start_with(&QUIET);
    let pid = coordinator_pid(&c);
    let store = c.path("data").join("db");
    let args = [
        "--agents".into(),
        agents.to_string(),
        "--groups".into(),
        (agents / 3).to_string(),
        "--duration".into(),
        "45s".into(),
    ];
    let mut start = None;
    let mut end = None;
    let before_setup = procfs::write_bytes(pid);
    let metadata = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    loadgen(&c, &args, |elapsed| {
        let sample = || {
            let text = scrape(&c);
            (
                Instant::now(),
                procfs::write_bytes(pid),
                metric(&text, "failover_heartbeats_total"),
                metric(&text, "failover_store_commits_total"),
                metadata(&store),
            )
        };
        if start.is_none() && elapsed >= Duration::from_secs(15) {
            start = Some(sample());
        }
        if end.is_none() && elapsed >= Duration::from_secs(43) {
            end = Some(sample());
        }
    });
    let (t0, w0, hb0, c0, m0) = start.expect("window");
    let (t1, w1, hb1, c1, m1) = end.expect("window");
    DiskResult {
        agents,
        setup_bytes_written: w0 - before_setup,
        window_seconds: (t1 - t0).as_secs_f64(),
        heartbeats: hb1 - hb0,
        bytes_written: w1 - w0,
        store_commits: c1 - c0,
        store_file_changed: m0 != m1,
    }
}
