//! Per-group and per-node gauges an operator can alert on, made at each
//! scrape from the leader's views — exactly what `group show` and
//! `node list` say at that moment. A follower has none (it holds no
//! groups); scrape every replica and keep `failover_leader == 1`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use proto::vocab::{Named, Phase};
use tokio::time::Instant;

use crate::engine::{AdminCommand, AdminReply, GroupView, NodeView};
use crate::leadership::Leadership;

/// Groups and nodes read per request to the runtime.
const PAGE: usize = 500;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    group: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    group: String,
    node: String,
    sync: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

/// How long one reading of the groups serves scrapes: scrapes cannot
/// keep the runtime busy, however many come.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The group and node gauges as OpenMetrics text, read from the runtime
/// at most once per [`FRESH_FOR`] (scrapes meanwhile share the reading,
/// and wait for one that is under way).
#[derive(Clone)]
pub(crate) struct GroupGauges {
    leadership: Leadership,
    last: Arc<tokio::sync::Mutex<Option<(Instant, String)>>>,
}

impl GroupGauges {
    pub(crate) fn new(leadership: Leadership) -> GroupGauges {
        GroupGauges {
            leadership,
            last: Arc::default(),
        }
    }

    pub(crate) async fn text(&self) -> String {
        let mut last = self.last.lock().await;
        if let Some((at, text)) = last.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return text.clone();
        }
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(
            &mut text,
            &registry(&self.leadership).await,
        );
        *last = Some((Instant::now(), text.clone()));
        text
    }
}

/// The gauges of every group and node, or an empty registry on a replica
/// that does not lead.
async fn registry(leadership: &Leadership) -> Registry {
    let mut registry = Registry::with_prefix("failover");
    let Ok(handle) = leadership.handle() else {
        return registry;
    };
    let mut groups: Vec<GroupView> = Vec::new();
    loop {
        let after = groups.last().map(|g| g.name.clone());
        let command = AdminCommand::ListGroups { after, limit: PAGE };
        match handle.admin("metrics".into(), command).await {
            Ok(AdminReply::Groups(page)) => {
                let full = page.len() == PAGE;
                groups.extend(page);
                if !full {
                    break;
                }
            }
            _ => break,
        }
    }
    let mut nodes: Vec<NodeView> = Vec::new();
    loop {
        let after = nodes.last().map(|n| n.node.clone());
        let command = AdminCommand::ListNodes { after, limit: PAGE };
        match handle.admin("metrics".into(), command).await {
            Ok(AdminReply::Nodes(page)) => {
                let full = page.len() == PAGE;
                nodes.extend(page);
                if !full {
                    break;
                }
            }
            _ => break,
        }
    }
    let has_primary = Family::<GroupLabels, Gauge>::default();
    let epoch = Family::<GroupLabels, Gauge>::default();
    let alarm = Family::<GroupLabels, Gauge>::default();
    let members = Family::<GroupLabels, Gauge>::default();
    let phase = Family::<PhaseLabels, Gauge>::default();
    let sync_age = Family::<SyncLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let sync_bytes = Family::<SyncLabels, Gauge>::default();
    let sync_fresh = Family::<SyncLabels, Gauge>::default();
    for g in &groups {
        for m in &g.members {
            for s in &m.syncs {
                let labels = SyncLabels {
                    group: g.name.clone(),
                    node: m.node.clone(),
                    sync: s.name.clone(),
                };
                // No copy: no age (absent, not zero).
                if let Some(age) = s.age {
                    sync_age.get_or_create(&labels).set(age.as_secs_f64());
                }
                sync_bytes
                    .get_or_create(&labels)
                    .set(i64::try_from(s.bytes).unwrap_or(i64::MAX));
                sync_fresh.get_or_create(&labels).set(i64::from(matches!(
                    s.state,
                    proto::vocab::SyncState::Source | proto::vocab::SyncState::Fresh
                )));
            }
        }
        let labels = GroupLabels {
            group: g.name.clone(),
        };
        has_primary
            .get_or_create(&labels)
            .set(i64::from(g.primary.is_some()));
        epoch
            .get_or_create(&labels)
            .set(i64::try_from(g.epoch).unwrap_or(i64::MAX));
        alarm
            .get_or_create(&labels)
            .set(i64::from(g.alarm.is_some()));
        members
            .get_or_create(&labels)
            .set(i64::try_from(g.members.len()).unwrap_or(i64::MAX));
        for p in Phase::all() {
            phase
                .get_or_create(&PhaseLabels {
                    group: g.name.clone(),
                    phase: p.name().to_owned(),
                })
                .set(i64::from(*p == g.phase));
        }
    }
    let connected = Family::<NodeLabels, Gauge>::default();
    let healthy = Family::<NodeLabels, Gauge>::default();
    for n in &nodes {
        let labels = NodeLabels {
            node: n.node.clone(),
        };
        connected.get_or_create(&labels).set(i64::from(n.connected));
        healthy.get_or_create(&labels).set(i64::from(n.healthy));
    }
    registry.register(
        "group_has_primary",
        "1 while the group has a primary, 0 while it has none (alert on 0)",
        has_primary,
    );
    registry.register(
        "group_epoch",
        "The group's epoch: it grows with every change of primary",
        epoch,
    );
    registry.register(
        "group_phase",
        "1 for the group's current phase (active, failing_over, no_primary, maintenance), 0 for the others",
        phase,
    );
    registry.register(
        "group_alarm",
        "1 while the group has an alarm that needs an operator",
        alarm,
    );
    registry.register("group_members", "Members of the group", members);
    registry.register(
        "sync_age_seconds",
        "How long since the member's synced copy was last the primary's latest (0 at the primary; absent without a copy)",
        sync_age,
    );
    registry.register(
        "sync_transferred_bytes",
        "Bytes of content the member's agent sent (as primary) and received (as standby) for the sync since it started",
        sync_bytes,
    );
    registry.register(
        "sync_fresh",
        "1 while the member's copy is the primary's latest (or it is the primary), 0 while stale or absent",
        sync_fresh,
    );
    registry.register(
        "node_connected",
        "1 while the node's agent is connected and heartbeating",
        connected,
    );
    registry.register(
        "node_healthy",
        "1 while the node is connected and passes its checks",
        healthy,
    );
    registry
}
