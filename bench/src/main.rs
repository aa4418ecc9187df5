//! `failover-bench`: runs the project's benchmarks against the real release
//! binaries and reports figures (it never passes or fails on time). Writes
//! `<out>/<benchmark>.json` and `<out>/<benchmark>.md`.
//!
//!   cargo build --release --bins
//!   target/release/failover-bench failover-time [--runs 30]

mod failover_time;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use failover_time::Setting;
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.out)?;
    match cli.command {
        Command::FailoverTime { runs, soak } => failover_time_report(&cli.out, runs, soak),
    }
}

fn failover_time_report(out: &std::path::Path, runs: usize, soak: Duration) -> anyhow::Result<()> {
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
    for setting in [
        Setting::new(500, 3000),
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
    std::fs::write(
        out.join("failover-time.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out.join("failover-time.md"), &md)?;
    println!("{md}");
    Ok(())
}
