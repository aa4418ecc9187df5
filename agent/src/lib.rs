//! The failover agent: runs on every node, keeps one session with the
//! coordinator, holds this node's roles and leases, fences itself when a
//! lease runs out, and runs the operator's hook on every role change.

pub mod agent;
pub mod checks;
pub mod clock;
pub mod config;
pub mod connection;
pub mod driver;
pub mod durable_file;
pub mod hook_output;
pub mod hooks;
pub mod identity;
pub mod link;
pub mod role_log;
pub mod roles;
pub mod sync;

use tokio_util::sync::CancellationToken;

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(config: config::AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    agent::Agent::new(config)?.run(shutdown).await
}
