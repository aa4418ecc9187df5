//! The command line of `failoverctl`: every command and flag, as the
//! operator types them.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::settings::PolicyArgs;

#[derive(Debug, Parser)]
#[command(name = "failoverctl", version, about = "Operate failover groups")]
pub(crate) struct Cli {
    /// Coordinator gRPC URL.
    #[arg(
        long,
        global = true,
        env = "FAILOVER_COORDINATOR",
        default_value = "http://127.0.0.1:7400"
    )]
    pub coordinator: String,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create, inspect and change failover groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Inspect nodes (agents).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Show the event log.
    Events(EventsArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// Create a group; the first connected member in order becomes primary.
    Add(GroupAddArgs),
    /// Change settings of a group (only the flags given change).
    Set {
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// List all groups.
    List,
    /// Show one group and its members in priority order.
    Show { name: String },
    /// Delete a group; its primary steps down.
    Delete { name: String },
    /// Planned switchover: the primary steps down, then NODE is promoted.
    Promote {
        name: String,
        #[arg(long, value_name = "NODE")]
        to: String,
    },
    /// Manual takeover: move the role to NODE (default: the first other
    /// member that qualifies), whatever the state of the current primary.
    Takeover {
        name: String,
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
    },
    /// Manual restore: hand the role back to the highest-priority healthy
    /// member.
    Restore { name: String },
    /// Add, remove or reorder members.
    #[command(subcommand)]
    Member(MemberCommand),
}

#[derive(Debug, Args)]
pub(crate) struct GroupAddArgs {
    pub name: String,
    /// A member node id; repeat in priority order (first = highest).
    #[arg(long = "member", value_name = "NODE", required = true)]
    pub members: Vec<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum MemberCommand {
    /// Add NODE to group NAME (at the end, or at --position).
    Add {
        name: String,
        node: String,
        /// Position in priority order, 0 = highest.
        #[arg(long)]
        position: Option<u32>,
    },
    /// Remove NODE from group NAME.
    Remove { name: String, node: String },
    /// Move NODE to another position in the priority order.
    Move {
        name: String,
        node: String,
        /// New position, 0 = highest.
        #[arg(long)]
        position: u32,
    },
    /// Put NODE in maintenance: never promoted; if primary, switched over
    /// first (answers once done).
    Drain { name: String, node: String },
    /// Take NODE out of maintenance.
    Undrain { name: String, node: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// List nodes: members of groups and connected agents.
    List,
}

#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// Only events of this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Keep printing new events as they happen.
    #[arg(short, long)]
    pub follow: bool,
    /// Show at most this many of the most recent events (0 = all retained).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

/// Reads durations like `500ms`, `3s`, `1m 30s`; refuses zero.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// Reads durations like `0s`, `500ms`, `3s`, `1m 30s`.
pub(crate) fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write durations like 500ms, 3s or 1m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
