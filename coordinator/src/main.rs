//! `failover-coordinator`: parses flags and configuration, sets up logging
//! and signal handling, and runs [`coordinator::run`].

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use coordinator::config::{Args, Config, LogFormat, Subcommand};
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
    let config = match Config::load(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(command) = &args.command {
        return match backup_command(command, &config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
                ExitCode::FAILURE
            }
        };
    }
    if args.check_config {
        let problems = coordinator::check_files(&config);
        if !problems.is_empty() {
            for p in &problems {
                eprintln!("error: {}", p.replace('\n', " "));
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
        let listeners = coordinator::Listeners::bind(&config).await?;
        coordinator::run(config, listeners, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logging is set up: one line on stderr, in the log's format.
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `export` and `import`.
fn backup_command(command: &Subcommand, config: &Config) -> anyhow::Result<()> {
    use anyhow::Context;
    match command {
        Subcommand::Export { output } => {
            let doc = coordinator::backup::export(config)?;
            let text = serde_json::to_string_pretty(&doc)?;
            match output {
                Some(path) => {
                    // It holds the instance ids that prove an agent holds a
                    // role: readable by this user only.
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut file = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(path)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    file.write_all(text.as_bytes())?;
                    file.sync_all()?;
                    eprintln!(
                        "exported {} groups and {} epoch floors to {}",
                        doc.groups.len(),
                        doc.epoch_floors.len(),
                        path.display()
                    );
                }
                None => {
                    let _ = writeln!(std::io::stdout(), "{text}");
                }
            }
            Ok(())
        }
        Subcommand::Import { file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let doc = coordinator::backup::parse(&text)
                .with_context(|| format!("{} cannot be imported", file.display()))?;
            let count = coordinator::backup::import(config, doc)?;
            eprintln!("imported {count} groups");
            Ok(())
        }
    }
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C. SIGHUP never stops the
/// coordinator (its default action would, and every strict primary would
/// fence once its lease ran out).
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the coordinator with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                // The reloading itself is in coordinator::reload.
                tracing::info!("SIGHUP: re-reading the configuration file, TLS files and tokens (those configured)");
            }
        }
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
