//! The group settings as failoverctl knows them, in one place: their flags
//! (for `group add` and `group set`), their wire form, and how `group show`
//! prints them. Adding a setting touches this file, the coordinator's
//! `policy.rs` and the `Policy` message in the proto.

use std::time::Duration;

use clap::Args;
use proto::vocab::{Failback, Fencing, Named, StandbyMode};

use crate::cli::{parse_duration, parse_duration_or_zero};

/// Per-group settings; absent flags keep the current value (or, for
/// `group add`, the coordinator's default).
#[derive(Debug, Clone, Args, Default)]
pub(crate) struct PolicyArgs {
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
    /// Automatic promotion skips a member whose synced copy is older than
    /// this while a fresher member can serve; 0 = off [0..24h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_or_zero)]
    pub max_sync_lag: Option<Duration>,
}

/// A clap parser for one of the vocabulary's closed sets of names, with
/// the names as possible values (so `--help` and typos list them).
fn names<T: Named>() -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser;
    let names = T::all().iter().map(|v| v.name());
    clap::builder::PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
}

impl PolicyArgs {
    /// The settings as the admin API takes them (absent stays absent).
    pub(crate) fn to_proto(&self) -> proto::v1::Policy {
        use proto::v1 as pb;
        let ms = |d: Option<Duration>| d.map(proto::duration::to_ms);
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
            max_sync_lag_ms: ms(self.max_sync_lag),
        }
    }
}
