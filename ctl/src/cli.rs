//! The command line of `failoverctl`: every command and flag, as the
//! operator types them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::settings::PolicyArgs;

#[derive(Debug, Clone, Parser)]
#[command(name = "failoverctl", version, about = "Operate failover groups")]
pub(crate) struct Cli {
    /// Coordinator gRPC URL; with replicas, several comma-separated (the
    /// first that answers is asked, and a replica that does not lead sends
    /// failoverctl to the one that does).
    #[arg(
        long,
        global = true,
        env = "FAILOVER_COORDINATOR",
        default_value = "http://127.0.0.1:7400"
    )]
    pub coordinator: String,
    /// TLS: the CA that signed the coordinator's certificate (for https://).
    #[arg(long, global = true, env = "FAILOVER_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// TLS: your operator certificate (with --tls-key).
    #[arg(long, global = true, env = "FAILOVER_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: your operator certificate's private key.
    #[arg(long, global = true, env = "FAILOVER_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// A file holding your bearer token (never give the token itself on the
    /// command line).
    #[arg(long, global = true, env = "FAILOVER_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
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

#[derive(Debug, Clone, Subcommand)]
pub(crate) enum Command {
    /// Every group and its members at a glance.
    Status(WatchArgs),
    /// Create, inspect and change failover groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Inspect nodes (agents).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Show the event log.
    Events(EventsArgs),
    /// Coordinator replicas: which one leads, and the store's health.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// A small certificate authority for labs and tests: a CA, the
    /// coordinator's, nodes' and operators' certificates, and tokens.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Print a shell completion script: `failoverctl completions bash >
    /// /etc/bash_completion.d/failoverctl`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print this manual page (roff): `failoverctl man > failoverctl.1`;
    /// with --dir, write a page for every command and subcommand there.
    Man {
        /// Write failoverctl.1, failoverctl-group.1, failoverctl-group-add.1,
        /// ... into DIR.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, Args)]
pub(crate) struct WatchArgs {
    /// Show it again every INTERVAL until interrupted (Ctrl-C).
    #[arg(
        long,
        short,
        value_name = "INTERVAL",
        num_args = 0..=1,
        default_missing_value = "2s",
        value_parser = parse_watch_interval
    )]
    pub watch: Option<Duration>,
}

/// A watch interval: at least 500ms.
fn parse_watch_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(500) {
        return Err("must be at least 500ms".into());
    }
    Ok(d)
}

#[derive(Debug, Clone, Subcommand)]
pub(crate) enum ClusterCommand {
    /// The store, the replicas (which one leads) and each etcd endpoint's
    /// health. Any replica answers.
    Status,
}

#[derive(Debug, Clone, Subcommand)]
pub(crate) enum PkiCommand {
    /// Create a CA and the coordinator's certificate in DIR: ca.pem,
    /// ca-key.pem, coordinator.pem, coordinator-key.pem (names localhost,
    /// 127.0.0.1 and every --san).
    Init {
        /// Where to write them (created if missing).
        dir: PathBuf,
        /// Another name or IP address the coordinator is reached by.
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
    },
    /// Issue a certificate with the CA in DIR: for a node (node-NAME.pem,
    /// node-NAME-key.pem), an operator with a role (operator-NAME.pem,
    /// operator-NAME-key.pem), or a new one for the coordinator
    /// (--coordinator-cert: coordinator.pem, coordinator-key.pem, replacing
    /// the old ones).
    Issue {
        /// The directory `pki init` made (ca.pem, ca-key.pem).
        dir: PathBuf,
        /// The node id the certificate names (urn:failover:node:NAME).
        #[arg(
            long,
            value_name = "NAME",
            conflicts_with_all = ["operator", "coordinator_cert"],
            required_unless_present_any = ["operator", "coordinator_cert"]
        )]
        node: Option<String>,
        /// The operator the certificate names (with --role).
        #[arg(
            long,
            value_name = "NAME",
            requires = "role",
            conflicts_with = "coordinator_cert"
        )]
        operator: Option<String>,
        /// A new certificate for the coordinator (rotation): names
        /// localhost, 127.0.0.1, every name of the one it replaces and
        /// every --san.
        #[arg(long)]
        coordinator_cert: bool,
        /// With --coordinator-cert: another name or IP address it is
        /// reached by.
        #[arg(long = "san", value_name = "NAME", requires = "coordinator_cert")]
        sans: Vec<String>,
        /// The operator's role.
        #[arg(long, value_parser = ["viewer", "operator", "admin"], requires = "operator")]
        role: Option<String>,
        /// How long the certificate is valid [default: 825 for the
        /// coordinator, 365 for nodes and operators].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: Option<u32>,
    },
    /// Make a bearer token for an operator: prints the token (give it to
    /// the operator, in a file) and the line for the coordinator's token
    /// file (it holds only the token's hash).
    Token {
        /// The operator's name, as events will record it.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// What the token may do.
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// Write the token to FILE (readable by you only, ready for
        /// --token-file) instead of printing it; only the entry for the
        /// coordinator's token file is printed.
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Subcommand)]
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
    Show {
        name: String,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Delete a group; its primary steps down. Asks first, unless --yes.
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
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
        /// The member to take over (default: the first other member that
        /// qualifies).
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
        /// Do not ask for confirmation when the primary is healthy.
        #[arg(long, short)]
        yes: bool,
    },
    /// Manual restore: hand the role back to the highest-priority healthy
    /// member.
    Restore { name: String },
    /// Add, remove or reorder members.
    #[command(subcommand)]
    Member(MemberCommand),
}

#[derive(Debug, Clone, Args)]
pub(crate) struct GroupAddArgs {
    pub name: String,
    /// A member node id; repeat in priority order (first = highest).
    #[arg(long = "member", value_name = "NODE", required = true)]
    pub members: Vec<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Debug, Clone, Subcommand)]
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

#[derive(Debug, Clone, Subcommand)]
pub(crate) enum NodeCommand {
    /// List nodes: members of groups and connected agents.
    List,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct EventsArgs {
    /// Only events of this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Keep printing new events as they happen.
    #[arg(short, long)]
    pub follow: bool,
    /// Show at most this many of the most recent events (0 = as many as
    /// one answer holds, 1000; with --follow, every retained event);
    /// --follow starts with these, then prints each new one.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Only events since then: a time (2026-11-24T04:00:00Z) or a
    /// duration ago (10m, 2h).
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    pub since: Option<std::time::SystemTime>,
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
    proto::duration::parse(s).map_err(|e| e.to_string())
}

/// `--since`: an RFC 3339 time, or a duration before now.
fn parse_since(s: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(at) = humantime::parse_rfc3339_weak(s) {
        return Ok(at);
    }
    let ago = proto::duration::parse(s).map_err(|_| {
        format!("{s:?} is neither a time (2026-11-24T04:00:00Z) nor a duration (10m, 2h)")
    })?;
    std::time::SystemTime::now()
        .checked_sub(ago)
        .ok_or_else(|| format!("{s:?} is too long ago"))
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
