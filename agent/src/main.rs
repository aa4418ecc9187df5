//! `failover-agent`: parses flags and configuration, sets up logging and
//! signal handling, and runs [`agent::run`].

use std::io::Write;
use std::process::ExitCode;

use agent::config::{AgentConfig, Args, LogFormat};
use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let args = Args::parse();
    if args.man_page {
        let mut page = Vec::new();
        let man = clap_mangen::Man::new(<Args as clap::CommandFactory>::command());
        if let Err(e) = man.render(&mut page) {
            eprintln!("error: cannot make the manual page: {e}");
            return ExitCode::FAILURE;
        }
        // A reader that went away (`| head`) is no failure.
        let _ = std::io::stdout().write_all(&page);
        return ExitCode::SUCCESS;
    }
    let config = match AgentConfig::load(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        let problems = config.check_files();
        if !problems.is_empty() {
            for p in &problems {
                eprintln!("error: {p}");
            }
            return ExitCode::from(2);
        }
        // Not println!: `| head` must not make it panic.
        let _ = writeln!(
            std::io::stdout(),
            "# the configuration is valid; in effect:\n{}",
            config.describe()
        );
        return ExitCode::SUCCESS;
    }
    for problem in config.check_files() {
        eprintln!("warning: {problem}");
    }
    proto::logging::init(config.log.format == LogFormat::Json, &config.log.level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        agent::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<agent::agent::DuplicateNode>() => {
            tracing::error!("{e:#}");
            ExitCode::from(agent::agent::DUPLICATE_EXIT_STATUS)
        }
        Err(e) => {
            // Logging is set up: one line on stderr, in the log's format.
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C. SIGHUP never stops the agent
/// (its default action would, and the primary's service would fence): it
/// reloads the configuration (`agent.rs`).
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            // Reloads the configuration: agent.rs.
            _ = hup.recv() => {}
        }
    }
    shutdown.cancel();
}
