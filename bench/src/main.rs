//! `failover-bench`: runs the project's benchmarks against the real release
//! binaries and reports figures (it never passes or fails on time). Writes
//! `<out>/<benchmark>.json` and `<out>/<benchmark>.md`.
//!
//!   cargo build --release --bins
//!   target/release/failover-bench all
// Test tooling: a harness or benchmark that cannot go on stops loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abuse;
mod failover_time;
mod load;
mod procfs;
mod second_fault;
mod stats;
mod sync;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use failover_time::Setting;
use serde::Serialize;
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "failover-bench",
    about = "Benchmarks of the failover coordinator"
)]
struct Cli {
    /// Directory for the JSON and Markdown reports.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// kill -9 of the primary's agent → successor's promote hook started.
    FailoverTime {
        /// Failovers measured per setting.
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// How long each candidate of the smallest-settings search must run
        /// without a false failover.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        soak: Duration,
    },
    /// Two faults in a row at the defaults: the member that failed first is
    /// promoted when the second primary dies (kill → its promote hook).
    SecondFault {
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// N agents at 1 heartbeat/s: coordinator CPU and memory, heartbeat
    /// round trip, false failovers.
    Scale {
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
        agents: Vec<usize>,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// K groups lose their primary at the same instant.
    MassFailover {
        #[arg(long, default_value_t = 1000)]
        groups: usize,
    },
    /// A coordinator with K groups in its store: process start → ready.
    Restart {
        #[arg(long, default_value_t = 10_000)]
        groups: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Bytes written by the coordinator while only heartbeats flow.
    Disk {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
    },
    /// Real agents heartbeat while the coordinator is abused (idle
    /// connections, slow HTTP, stalled watchers, oversized text, a full
    /// disk): its memory, the heartbeat round trip, lapsed primaries.
    Abuse,
    /// State sync between two agents: catch-up after a large change
    /// (throughput, CPU) unlimited, and how closely max_rate holds.
    Sync {
        /// The size of the change the standby catches up with, unlimited.
        #[arg(long, default_value_t = 1024)]
        change_mib: u64,
        /// Rate limits to measure, each with a change of --rate-change-mib.
        #[arg(long, value_delimiter = ',', default_value = "5MiB/s,20MiB/s")]
        rates: Vec<String>,
        #[arg(long, default_value_t = 200)]
        rate_change_mib: u64,
    },
    /// Everything above, one after the other, with a combined summary.
    All,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.out)?;
    let out = &cli.out;
    match cli.command {
        Command::FailoverTime { runs, soak } => {
            failover_time_report(out, runs, soak)?;
        }
        Command::SecondFault { runs } => {
            second_fault_report(out, runs)?;
        }
        Command::Scale { agents, duration } => {
            scale_report(out, &agents, duration)?;
        }
        Command::MassFailover { groups } => {
            mass_report(out, groups)?;
        }
        Command::Restart { groups, runs } => {
            restart_report(out, groups, runs)?;
        }
        Command::Disk { agents } => {
            disk_report(out, agents)?;
        }
        Command::Abuse => {
            abuse_report(out)?;
        }
        Command::Sync {
            change_mib,
            rates,
            rate_change_mib,
        } => {
            sync_report(out, change_mib, &rates, rate_change_mib)?;
        }
        Command::All => {
            let sections = [
                failover_time_report(out, 30, Duration::from_secs(30))?,
                second_fault_report(out, 20)?,
                scale_report(out, &[1000, 5000, 10_000], Duration::from_secs(60))?,
                mass_report(out, 1000)?,
                restart_report(out, 10_000, 5)?,
                disk_report(out, 1000)?,
                abuse_report(out)?,
                sync_report(out, 1024, &["5MiB/s".to_owned(), "20MiB/s".to_owned()], 100)?,
            ];
            std::fs::write(out.join("summary.md"), sections.join("\n"))?;
        }
    }
    Ok(())
}

/// Writes `<out>/<name>.json` and `<out>/<name>.md`, prints the Markdown,
/// and returns it.
fn write_report(
    out: &std::path::Path,
    name: &str,
    json: &impl Serialize,
    md: String,
) -> anyhow::Result<String> {
    std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_string_pretty(json)?,
    )?;
    std::fs::write(out.join(format!("{name}.md")), &md)?;
    println!("{md}");
    Ok(md)
}

fn sync_report(
    out: &std::path::Path,
    change_mib: u64,
    rates: &[String],
    rate_change_mib: u64,
) -> anyhow::Result<String> {
    let mut runs = Vec::new();
    eprintln!("sync: catch-up after a {change_mib} MiB change, unlimited");
    runs.push(sync::catch_up(change_mib, None));
    for rate in rates {
        eprintln!("sync: {rate_change_mib} MiB at {rate}");
        runs.push(sync::catch_up(rate_change_mib, Some(rate)));
    }
    let mut md = String::from(
        "## State sync (two agents on loopback, one new file on the primary)\n\n\
         | change | max_rate | catch-up (on disk → standby fresh) | transfer | throughput | \
         primary CPU | standby CPU | rate error |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in &runs {
        md.push_str(&format!(
            "| {} MiB | {} | {:.1} s | {:.1} s | {:.1} MiB/s | {:.1} s | {:.1} s | {} |\n",
            r.change_mib,
            r.max_rate.as_deref().unwrap_or("unlimited"),
            r.catch_up_s,
            r.transfer_s,
            r.transfer_mib_per_s,
            r.primary_cpu_s,
            r.standby_cpu_s,
            r.rate_error_pct
                .map_or("-".to_owned(), |e| format!("{e:+.1} %")),
        ));
    }
    md.push_str(
        "\nCatch-up includes the primary's scan (hashing the new file), the transfer, the \
         standby's hash check and fsync, and the swap. Throughput is the standby's received \
         bytes over the transfer; both agents and the coordinator share the same two cores.\n",
    );
    write_report(out, "sync", &runs, md)
}

fn second_fault_report(out: &std::path::Path, runs: usize) -> anyhow::Result<String> {
    eprintln!("second fault at the defaults:");
    let r = second_fault::measure(runs);
    let s = &r.summary;
    let md = format!(
        "## Second fault (defaults: a member cut off and back, then the new primary killed \
         → the recently failed member's promote hook)\n\n\
         | runs | min | median | p99 | max | bound (lease × 1.01 + 100 ms) |\n\
         |---|---|---|---|---|---|\n\
         | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | 3130 ms |\n",
        s.samples, s.min_ms, s.median_ms, s.p99_ms, s.max_ms
    );
    write_report(out, "second-fault", &r, md)
}

fn scale_report(
    out: &std::path::Path,
    agents: &[usize],
    duration: Duration,
) -> anyhow::Result<String> {
    let mut results = Vec::new();
    for &n in agents {
        eprintln!("scale: {n} agents for {duration:?}");
        results.push(load::scale(n, duration));
    }
    let mut md = String::from(
        "## Scale (agents at 1 heartbeat/s, groups of three, loopback)\n\n\
         | agents | groups | coordinator CPU | RSS (peak) | heartbeats/s | RTT p50 | RTT p99 | RTT max | false failovers | session errors |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &results {
        md.push_str(&format!(
            "| {} | {} | {:.2} cores | {:.0} MiB ({:.0} MiB) | {:.0} | {:.2} ms | {:.2} ms | {:.1} ms | {} | {} |\n",
            r.agents,
            r.groups,
            r.coordinator_cpu_cores,
            r.coordinator_rss_mib,
            r.coordinator_peak_rss_mib,
            r.heartbeats_per_second,
            r.rtt_ms["p50"].as_f64().unwrap_or(0.0),
            r.rtt_ms["p99"].as_f64().unwrap_or(0.0),
            r.rtt_ms["max"].as_f64().unwrap_or(0.0),
            r.false_failovers,
            r.loadgen_errors,
        ));
    }
    md.push_str("\nThe load generator runs on the same two cores as the coordinator.\n");
    write_report(out, "scale", &results, md)
}

fn mass_report(out: &std::path::Path, groups: usize) -> anyhow::Result<String> {
    eprintln!("mass failover: {groups} groups");
    let r = load::mass_failover(groups);
    let l = &r.loadgen;
    let md = format!(
        "## Mass failover\n\n{} groups (failover timeout 3 s) lost their primary at the same instant; \
         {} recovered. From the drop until each new primary held its assignment: first {:.0} ms, \
         median {:.0} ms, all {:.0} ms. Store commits meanwhile: {} (group commit). Coordinator \
         overhead per promotion (decide + promote): mean {:.2} ms, p99 ≤ {} ms over {} promotions.\n",
        l["groups"],
        l["recovered"],
        l["first_ms"].as_f64().unwrap_or(0.0),
        l["median_ms"].as_f64().unwrap_or(0.0),
        l["all_ms"].as_f64().unwrap_or(0.0),
        l["store_commits"],
        r.overhead_mean_ms,
        r.overhead_p99_le_ms.map_or("?".into(), |v| format!("{v}")),
        r.promotions_measured,
    );
    write_report(out, "mass-failover", &r, md)
}

fn abuse_report(out: &std::path::Path) -> anyhow::Result<String> {
    let mut md = String::from(
        "## Under abuse\n\n300 real agent sessions (loadgen, 1 heartbeat/s, 100 groups of \
         three) for 25 s; the abuse runs from 7 s to the end.\n\n\
         | abuse | coordinator RSS (peak) | open files (max) | heartbeat RTT p50 / p99 / max | \
         primaries lapsed | /readyz failed | loadgen errors |\n|---|---|---|---|---|---|---|\n",
    );
    let mut results = Vec::new();
    for abuse in abuse::ALL {
        eprintln!("abuse: {abuse:?}");
        let r = abuse::run(abuse);
        let rtt = |k: &str| r.rtt_ms[k].as_f64().unwrap_or(f64::NAN);
        md.push_str(&format!(
            "| {} | {:.0} MiB ({:.0} MiB) | {} | {:.1} / {:.1} / {:.1} ms | {} | {} of {} | {} |\n",
            serde_json::to_value(abuse)?.as_str().unwrap_or("?"),
            r.coordinator_rss_mib,
            r.coordinator_peak_rss_mib,
            r.coordinator_open_files,
            rtt("p50"),
            rtt("p99"),
            rtt("max"),
            r.primaries_lapsed,
            r.probes_failed,
            r.probes,
            r.loadgen_errors
        ));
        results.push(r);
    }
    write_report(
        out,
        "abuse",
        &json!({ "benchmark": "abuse", "results": results }),
        md,
    )
}

fn restart_report(out: &std::path::Path, groups: usize, runs: usize) -> anyhow::Result<String> {
    eprintln!("restart: {groups} groups, {runs} runs");
    let r = load::restart(groups, runs);
    let md = format!(
        "## Restart\n\nA coordinator with {} groups in its store, from process start to /readyz \
         answering 200, {} runs: min {:.0} ms, median {:.0} ms, max {:.0} ms.\n",
        r.groups, r.runs.samples, r.runs.min_ms, r.runs.median_ms, r.runs.max_ms
    );
    write_report(out, "restart", &r, md)
}

fn disk_report(out: &std::path::Path, agents: usize) -> anyhow::Result<String> {
    eprintln!("disk: {agents} agents");
    let r = load::disk(agents);
    let md = format!(
        "## Disk writes caused by heartbeats\n\nOver {:.0} s with {} agents and nothing else \
         happening: {:.0} heartbeats, {} bytes written by the coordinator (/proc/PID/io \
         write_bytes), {} store commits, store file changed: {}. (For comparison, creating and \
         electing the groups before that window wrote {} bytes.)\n",
        r.window_seconds,
        r.agents,
        r.heartbeats,
        r.bytes_written,
        r.store_commits,
        r.store_file_changed,
        r.setup_bytes_written
    );
    write_report(out, "disk", &r, md)
}

fn failover_time_report(
    out: &std::path::Path,
    runs: usize,
    soak: Duration,
) -> anyhow::Result<String> {
    // The smallest settings without false failovers on this machine: the
    // first stable one, from smallest up.
    let ladder = [
        Setting::new(10, 50),
        Setting::new(20, 60),
        Setting::new(30, 100),
        Setting::new(50, 150),
        Setting::new(100, 300),
    ];
    eprintln!("searching the smallest stable settings ({soak:?} each):");
    let smallest = ladder
        .iter()
        .find(|s| failover_time::is_stable(s, soak))
        .cloned()
        .unwrap_or_else(|| Setting::new(100, 500));

    let mut results = Vec::new();
    // Defaults, the design's fast target, the fast setting, and
    // the smallest that stayed stable here.
    for setting in [
        Setting::new(500, 3000),
        Setting::new(100, 300),
        Setting::new(100, 500),
        smallest.clone(),
    ] {
        eprintln!("{}:", setting.label());
        results.push(failover_time::measure(&setting, runs));
    }

    let mut md = String::from(
        "## Failover time (kill -9 of the primary's agent → successor's promote hook started)\n\n\
         | settings | runs | min | median | p99 | max |\n|---|---|---|---|---|---|\n",
    );
    for r in &results {
        let s = &r.summary;
        md.push_str(&format!(
            "| {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |\n",
            r.setting.label(),
            s.samples,
            s.min_ms,
            s.median_ms,
            s.p99_ms,
            s.max_ms
        ));
    }
    md.push_str(&format!(
        "\nSmallest settings with no false failover over {}: {}.\n",
        humantime::format_duration(soak),
        smallest.label()
    ));
    let report = json!({
        "benchmark": "failover-time",
        "smallest_stable": smallest,
        "soak_s": soak.as_secs_f64(),
        "results": results,
    });
    write_report(out, "failover-time", &report, md)
}
