//! The command line of `failoverctl`: every command and flag, as the
//! operator types them.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use proto::vocab::{Failback, Fencing, Named, StandbyMode};

#[derive(Debug, Parser)]
#[command(name = "failoverctl", version, about = "Operate failover groups")]
pub struct Cli {
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
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
pub enum GroupCommand {
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
pub struct GroupAddArgs {
    pub name: String,
    /// A member node id; repeat in priority order (first = highest).
    #[arg(long = "member", value_name = "NODE", required = true)]
    pub members: Vec<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Per-group settings; absent flags keep the current value (or, for
/// `group add`, the coordinator's default).
#[derive(Debug, Args, Default)]
pub struct PolicyArgs {
    /// How often agents report, e.g. 500ms [10ms..60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// How long a silent primary keeps its role (its lease), e.g. 3s
    /// [50ms..10m, at least twice the heartbeat interval].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub failover_timeout: Option<Duration>,
    /// A session that sends no Hello within this long is closed [1s..1h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// A session that sends no first heartbeat within this long after its
    /// Hello is closed [1s..1h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub startup_timeout: Option<Duration>,
    /// Wait this long for a primary whose agent stopped cleanly before
    /// replacing it; 0 = switch over at once [0..1h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_or_zero)]
    pub shutdown_grace: Option<Duration>,
    /// Replace a primary whose health checks fail once they have failed for
    /// this long; 0 = at once [0..1h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_or_zero)]
    pub abnormal_timeout: Option<Duration>,
    /// false: a failed primary only raises an alarm; an operator moves the
    /// role (takeover, restore, promote).
    #[arg(long, value_name = "true|false")]
    pub auto_failover: Option<bool>,
    /// Whether the role goes back to a higher-priority member by itself.
    #[arg(long, value_parser = names::<Failback>())]
    pub failback: Option<Failback>,
    /// How long a member must be healthy before failback to it, and before
    /// a member that failed is promoted again [1s..24h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub failback_delay: Option<Duration>,
    /// Fail back only inside this daily window, UTC, e.g. 02:00-04:00;
    /// "none" clears it.
    #[arg(long, value_name = "HH:MM-HH:MM|none")]
    pub failback_window: Option<String>,
    /// Automatic moves away from a live primary (failing checks, failback)
    /// happen at most once per this interval [0..1h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_or_zero)]
    pub min_failover_interval: Option<Duration>,
    /// What secondaries do while standing by (passed to hooks).
    #[arg(long, value_parser = names::<StandbyMode>())]
    pub standby_mode: Option<StandbyMode>,
    /// What a primary does when its lease runs out.
    #[arg(long, value_parser = names::<Fencing>())]
    pub fencing: Option<Fencing>,
}

/// A clap parser for one of the vocabulary's closed sets of names, with
/// the names as possible values (so `--help` and typos list them).
fn names<T: Named>() -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser;
    let names = T::all().iter().map(|v| v.name());
    clap::builder::PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
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
pub enum NodeCommand {
    /// List nodes: members of groups and connected agents.
    List,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
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
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// Reads durations like `0s`, `500ms`, `3s`, `1m 30s`.
fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write durations like 500ms, 3s or 1m)"))
}

impl PolicyArgs {
    /// The settings as the admin API takes them (absent stays absent).
    pub fn to_proto(&self) -> proto::v1::Policy {
        use proto::v1 as pb;
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        pb::Policy {
            heartbeat_interval_ms: ms(self.heartbeat_interval),
            failover_timeout_ms: ms(self.failover_timeout),
            connect_timeout_ms: ms(self.connect_timeout),
            startup_timeout_ms: ms(self.startup_timeout),
            shutdown_grace_ms: ms(self.shutdown_grace),
            abnormal_timeout_ms: ms(self.abnormal_timeout),
            auto_failover: self.auto_failover,
            failback: self.failback.map(|f| pb::Failback::from(f) as i32),
            failback_delay_ms: ms(self.failback_delay),
            failback_window: self.failback_window.clone(),
            min_failover_interval_ms: ms(self.min_failover_interval),
            standby_mode: self.standby_mode.map(|m| pb::StandbyMode::from(m) as i32),
            fencing: self.fencing.map(|f| pb::Fencing::from(f) as i32),
        }
    }
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
