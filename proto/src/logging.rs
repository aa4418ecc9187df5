//! The daemons' log: text or JSON lines on stderr, filtered by a level
//! that a configuration reload (SIGHUP) can change while they run (the
//! `RUST_LOG` environment variable, when set, wins over the file).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Sets up the log for the whole process (once): JSON lines or text.
pub fn init(json: bool, level: &str) {
    let filter = match from_environment() {
        Some(directives) => {
            EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new(level))
        }
        None => EnvFilter::new(level),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let _ = LEVEL.set(handle);
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry.with(lines.json()).try_init()
    } else {
        registry.with(lines).try_init()
    };
}

/// Whether `level` is a filter the log takes (`info`, `info,coordinator=debug`).
pub fn check_level(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| format!("[log] level {level:?}: {e}"))
}

/// Filters the log by `level` from now on; refused (the old level kept)
/// when it is no filter. With `RUST_LOG` set, nothing changes.
pub fn set_level(level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("[log] level {level:?}: {e}"))?;
    if from_environment().is_some() {
        return Ok(());
    }
    match LEVEL.get() {
        Some(handle) => handle.reload(filter).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// `RUST_LOG`, when set to something (empty counts as unset).
fn from_environment() -> Option<String> {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
}
