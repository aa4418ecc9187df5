//! Failover time: `kill -9` of the primary's agent → the successor's promote
//! hook started, with the real release binaries on loopback.
//!
//! The kill instant is taken just before SIGKILL is sent; the hook start is
//! the first thing the hook script does (`date +%s%N`), so each sample also
//! includes starting `sh` and `date` (about 2 ms). Kills land at a random
//! phase of the heartbeat cycle.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::Serialize;
use tests::{Cluster, epoch, member};

use crate::stats::{Summary, summarize};

const NODES: [&str; 3] = ["n-1", "n-2", "n-3"];

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Setting {
    pub heartbeat_ms: u64,
    pub failover_timeout_ms: u64,
}

impl Setting {
    pub(crate) fn new(heartbeat_ms: u64, failover_timeout_ms: u64) -> Setting {
        Setting {
            heartbeat_ms,
            failover_timeout_ms,
        }
    }

    /// `group add` flags. The failback delay is the shortest allowed: the
    /// benchmark kills a primary every few seconds, and a member that
    /// failed is not promoted again until healthy for that long.
    fn flags(&self) -> [String; 6] {
        [
            "--heartbeat-interval".into(),
            format!("{}ms", self.heartbeat_ms),
            "--failover-timeout".into(),
            format!("{}ms", self.failover_timeout_ms),
            "--failback-delay".into(),
            "1s".into(),
        ]
    }

    pub(crate) fn label(&self) -> String {
        format!(
            "heartbeat {}ms / failover timeout {}ms",
            self.heartbeat_ms, self.failover_timeout_ms
        )
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Measurement {
    pub setting: Setting,
    pub summary: Summary,
    pub samples_ms: Vec<f64>,
}

fn cluster_with_group(setting: &Setting) -> Cluster {
    let mut c = Cluster::start();
    for n in NODES {
        c.start_agent(n);
    }
    c.wait_nodes(&NODES);
    let flags = setting.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    c.add_group_with("bench", &NODES, &flags);
    c
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// Kills the primary `runs` times and measures until the successor's hook.
pub(crate) fn measure(setting: &Setting, runs: usize) -> Measurement {
    let mut c = cluster_with_group(setting);
    let mut samples = Vec::with_capacity(runs);
    for run in 0..runs {
        let g = c.wait_until("the group has a primary", || {
            let g = c.group("bench");
            g["primary"].is_string().then_some(g)
        });
        let primary = g["primary"].as_str().expect("a primary").to_owned();
        let before = epoch(&g);
        c.wait_hook("the primary's hook", |h| {
            h.role == "primary" && h.epoch == before
        });
        // A random phase of the heartbeat cycle (randomisation, not waiting).
        let phase = rand::rng().random_range(0..setting.heartbeat_ms.max(1));
        std::thread::sleep(Duration::from_millis(phase));
        let killed_at = now_ns();
        c.kill_agent(&primary);
        let hook = c.wait_hook("the successor's hook", |h| {
            h.role == "primary" && h.epoch > before
        });
        let sample = Duration::from_nanos((hook.at_ns.saturating_sub(killed_at)) as u64);
        eprintln!(
            "  run {:>2}: {} -> {} in {:.1} ms",
            run + 1,
            primary,
            hook.node,
            sample.as_secs_f64() * 1e3
        );
        samples.push(sample);
        c.start_agent(&primary);
        c.wait_until("the killed node qualifies again", || {
            let g = c.group("bench");
            let m = member(&g, &primary);
            (m["connected"] == true && m["recently_failed"] == false).then_some(())
        });
    }
    Measurement {
        setting: setting.clone(),
        summary: summarize(&samples),
        samples_ms: samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect(),
    }
}

/// Whether a group at `setting` keeps its primary for `soak` with nothing
/// failing (no false failovers on this machine).
pub(crate) fn is_stable(setting: &Setting, soak: Duration) -> bool {
    let c = cluster_with_group(setting);
    let start = c.wait_until("the group has a primary", || {
        let g = c.group("bench");
        g["primary"].is_string().then(|| epoch(&g))
    });
    std::thread::sleep(soak);
    let end = epoch(&c.group("bench"));
    eprintln!(
        "  {}: epoch {start} -> {end} over {soak:?}",
        setting.label()
    );
    end == start
}
