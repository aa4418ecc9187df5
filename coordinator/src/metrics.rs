//! The coordinator's Prometheus metrics, served as text on `/metrics`.
//!
//! A failover's time inside the coordinator is split in three, per
//! promotion: *detect* (the lease deadline passed → the runtime noticed),
//! *decide* (noticed → the new epoch is durable) and *promote* (durable →
//! the assignment is on the successor's stream); `overhead` is decide +
//! promote, the coordinator's own share.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// 50 µs .. 10 s; finer between 1 and 10 ms, where the coordinator's
/// share of a failover lands.
const SECONDS_BUCKETS: [f64; 20] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.001_5, 0.002, 0.003, 0.004, 0.005, 0.007_5,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EventLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SinkLabels {
    pub sink: String,
}

pub(crate) struct Metrics {
    registry: Registry,
    pub sessions: Gauge,
    /// 1 while the store takes writes, 0 while a write failed and it is
    /// being opened again.
    pub store_writable: Gauge,
    /// 1 while this process leads (always, with the embedded store).
    pub leader: Gauge,
    /// Times this process became the leader.
    pub leader_changes: Counter,
    pub heartbeats: Counter,
    pub promotions: Counter,
    pub events: Family<EventLabels, Counter>,
    pub store_commits: Counter,
    pub store_commit: Histogram,
    pub batch_inputs: Histogram,
    pub detect: Histogram,
    pub decide: Histogram,
    pub promote: Histogram,
    pub overhead: Histogram,
    /// Per notification sink: events recorded but not yet delivered.
    pub notify_backlog: Family<SinkLabels, Gauge>,
    pub notify_delivered: Family<SinkLabels, Counter>,
    pub notify_failures: Family<SinkLabels, Counter>,
}

fn seconds() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

impl Metrics {
    pub(crate) fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("failover");
        let m = Metrics {
            sessions: Gauge::default(),
            store_writable: Gauge::default(),
            leader: Gauge::default(),
            leader_changes: Counter::default(),
            heartbeats: Counter::default(),
            promotions: Counter::default(),
            events: Family::default(),
            store_commits: Counter::default(),
            store_commit: seconds(),
            batch_inputs: Histogram::new([1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 4096.0]),
            detect: seconds(),
            decide: seconds(),
            promote: seconds(),
            overhead: seconds(),
            notify_backlog: Family::default(),
            notify_delivered: Family::default(),
            notify_failures: Family::default(),
            registry: Registry::default(),
        };
        registry.register("agent_sessions", "Open agent sessions", m.sessions.clone());
        m.store_writable.set(1);
        registry.register(
            "store_writable",
            "1 while the store takes writes; 0 while changes are refused because a write failed",
            m.store_writable.clone(),
        );
        m.leader.set(1);
        registry.register(
            "leader",
            "1 while this coordinator leads (always with the embedded store); 0 on a replica that follows",
            m.leader.clone(),
        );
        registry.register(
            "leader_terms",
            "Times this coordinator replica became the leader",
            m.leader_changes.clone(),
        );
        registry.register("heartbeats", "Heartbeats received", m.heartbeats.clone());
        registry.register(
            "promotions",
            "Members promoted to primary",
            m.promotions.clone(),
        );
        registry.register("events", "Events recorded, by kind", m.events.clone());
        registry.register(
            "store_commits",
            "Durable store commits (flush + fdatasync)",
            m.store_commits.clone(),
        );
        registry.register_with_unit(
            "store_commit",
            "Time of one durable commit",
            Unit::Seconds,
            m.store_commit.clone(),
        );
        registry.register(
            "batch_inputs",
            "Inputs handled per runtime batch",
            m.batch_inputs.clone(),
        );
        registry.register_with_unit(
            "detect",
            "From a lapsed primary's lease deadline to the runtime acting on it",
            Unit::Seconds,
            m.detect.clone(),
        );
        registry.register_with_unit(
            "decide",
            "From acting on a lapse to the new epoch being durable",
            Unit::Seconds,
            m.decide.clone(),
        );
        registry.register_with_unit(
            "promote",
            "From the new epoch being durable to the assignment on the successor's stream",
            Unit::Seconds,
            m.promote.clone(),
        );
        registry.register_with_unit(
            "coordinator_overhead",
            "The coordinator's share of a failover: decide + promote",
            Unit::Seconds,
            m.overhead.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the coordinator's version is in the label",
            build,
        );
        registry.register(
            "notify_backlog",
            "Events recorded that a notification sink has not yet delivered",
            m.notify_backlog.clone(),
        );
        registry.register(
            "notify_delivered",
            "Events a notification sink delivered",
            m.notify_delivered.clone(),
        );
        registry.register(
            "notify_failures",
            "Failed delivery attempts of a notification sink (each is retried)",
            m.notify_failures.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// Every metric, then `scraped` (families made for scrapes, already
    /// OpenMetrics text), as OpenMetrics text.
    pub(crate) fn render(&self, scraped: &str) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut text, &self.registry);
        text.push_str(scraped);
        let _ = encode_eof(&mut text);
        text
    }
}

pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_failover_histograms() {
        let m = Metrics::new();
        m.overhead.observe(0.002);
        m.events
            .get_or_create(&EventLabels {
                kind: "promoted".into(),
            })
            .inc();
        let text = m.render("");
        assert!(
            text.contains("failover_coordinator_overhead_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("failover_events_total{kind=\"promoted\"} 1"),
            "{text}"
        );
    }
}
