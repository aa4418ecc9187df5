//! Moving groups between stores, and backups: `export` writes every group
//! (members, settings, epoch, primary) and every deleted group's epoch
//! floor as one JSON document; `import` writes such a document into an
//! empty store, under a new fencing term (a coordinator still running on
//! that store stops writing, and its successor reads the import).

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::config::{Config, StoreKind};
use crate::engine::{Recovered, Write};
use crate::model::GroupRecord;
use crate::store::{EtcdLocation, EtcdStore, SledStore, Store};

const FORMAT: &str = "failover-export";
const VERSION: u32 = 1;
/// Most groups one document may hold.
const MAX_GROUPS: usize = 100_000;

/// The exported document.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    pub format: String,
    pub version: u32,
    pub exported_unix_ms: u64,
    pub groups: Vec<GroupRecord>,
    pub epoch_floors: Vec<Floor>,
}

/// A deleted group: a group created under its name starts above `epoch`
/// and, after a restart, waits out `longest_lease`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Floor {
    pub group: String,
    pub epoch: u64,
    #[serde(default, with = "humantime_serde")]
    pub longest_lease: Option<Duration>,
}

fn open(config: &Config) -> anyhow::Result<Box<dyn Store>> {
    Ok(match config.store {
        StoreKind::Sled => Box::new(SledStore::open(&config.data_dir, config.event_retention)?),
        StoreKind::Etcd => {
            let location = EtcdLocation {
                endpoints: config.etcd.endpoints.clone(),
                tls: proto::client::ClientTls {
                    ca: config.etcd.ca.clone(),
                    cert: config.etcd.cert.clone(),
                    key: config.etcd.key.clone(),
                },
                prefix: config.etcd.prefix.clone(),
            };
            Box::new(EtcdStore::open(&location, config.event_retention)?)
        }
    })
}

/// Everything the configured store holds, as a document.
pub fn export(config: &Config) -> anyhow::Result<Export> {
    let recovered = open(config)?.load()?;
    let mut groups = recovered.groups;
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    let mut epoch_floors: Vec<Floor> = recovered
        .epoch_floors
        .iter()
        .map(|(group, epoch)| Floor {
            group: group.clone(),
            epoch: *epoch,
            longest_lease: recovered.deleted_ttls.get(group).copied(),
        })
        .collect();
    epoch_floors.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(Export {
        format: FORMAT.into(),
        version: VERSION,
        exported_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        groups,
        epoch_floors,
    })
}

/// Reads a document, checking everything before anything is written.
pub fn parse(text: &str) -> anyhow::Result<Export> {
    let doc: Export = serde_json::from_str(text).context("not an export document")?;
    if doc.format != FORMAT || doc.version != VERSION {
        bail!(
            "this is a {:?} document of version {}; this coordinator reads {FORMAT:?} version {VERSION}",
            doc.format,
            doc.version
        );
    }
    if doc.groups.len() > MAX_GROUPS || doc.epoch_floors.len() > MAX_GROUPS {
        bail!("more than {MAX_GROUPS} groups or floors: refused");
    }
    let mut names = HashSet::new();
    for g in &doc.groups {
        check_group(g)
            .with_context(|| format!("group {:?}", crate::limits::clip(g.name.clone(), 63)))?;
        if !names.insert(g.name.as_str()) {
            bail!("group {} appears twice", g.name);
        }
    }
    let mut floors = HashSet::new();
    for f in &doc.epoch_floors {
        proto::names::validate_group_name(&f.group)?;
        if !floors.insert(f.group.as_str()) {
            bail!("the epoch floor of {} appears twice", f.group);
        }
    }
    Ok(doc)
}

fn check_group(g: &GroupRecord) -> anyhow::Result<()> {
    proto::names::validate_group_name(&g.name)?;
    if g.members.is_empty() || g.members.len() > crate::engine::MAX_MEMBERS {
        bail!(
            "a group has 1 to {} members, this one {}",
            crate::engine::MAX_MEMBERS,
            g.members.len()
        );
    }
    let mut seen = HashSet::new();
    for m in &g.members {
        proto::names::validate_node_id(m)?;
        if !seen.insert(m) {
            bail!("member {m} appears twice");
        }
    }
    if let Some(p) = &g.primary
        && !g.members.contains(p)
    {
        bail!("its primary {p} is not a member");
    }
    if g.first_epoch > g.epoch {
        bail!(
            "its first epoch {} is above its epoch {}",
            g.first_epoch,
            g.epoch
        );
    }
    g.policy.validate()?;
    Ok(())
}

/// Writes `doc` into the configured store, which must hold no group.
/// Returns how many groups were written.
pub fn import(config: &Config, doc: Export) -> anyhow::Result<usize> {
    let store = open(config)?;
    let Recovered { groups, .. } = store.load()?;
    if !groups.is_empty() {
        bail!(
            "the store already holds {} groups: import into an empty store (a new data directory or etcd prefix)",
            groups.len()
        );
    }
    let count = doc.groups.len();
    // Floors first: a group re-created under a deleted name is written
    // after its floor, and wins.
    let mut writes: Vec<Write> = doc
        .epoch_floors
        .into_iter()
        .map(|f| Write::DeleteGroup {
            name: f.group,
            epoch_floor: f.epoch,
            lease_ttl: f.longest_lease.unwrap_or_default(),
        })
        .collect();
    writes.extend(doc.groups.into_iter().map(Write::PutGroup));
    let fence = store.fence()?;
    store.commit(&writes, Some(fence))?;
    Ok(count)
}
