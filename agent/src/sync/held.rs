//! What a member remembers of its copy across restarts
//! (`STATE_DIR/sync-NAME.json`, written atomically): which snapshot it
//! is (and how this node's own scan sees it), from which epoch, and when
//! it was last confirmed to be the primary's latest. After a restart a
//! copy is not current until compared again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Record {
    snapshot: String,
    #[serde(default)]
    local: String,
    epoch: u64,
    confirmed_unix_ms: u64,
}

/// The copy a member holds.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// Its snapshot id; empty: no copy.
    pub snapshot: String,
    /// The same copy as this node's own scan sees it (its `exclude` may
    /// leave out what the primary's does not): unchanged since it was
    /// put in place while the scan finds this id.
    pub local: String,
    /// The epoch of the primary it came from (0: unknown).
    pub epoch: u64,
    /// It was the primary's latest when last compared.
    pub current: bool,
    /// When it was last known to be the latest.
    pub confirmed: Option<Instant>,
}

impl Held {
    /// How long since the copy was last known to be the latest.
    pub fn age(&self) -> Option<Duration> {
        self.confirmed.map(|at| at.elapsed())
    }
}

pub fn file(state_dir: &Path, sync: &str) -> PathBuf {
    state_dir.join(format!("sync-{sync}.json"))
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the file says; nothing when it is missing or unreadable.
pub fn read(path: &Path) -> Held {
    let Some(record) = std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
    else {
        return Held::default();
    };
    let ago =
        Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(record.confirmed_unix_ms));
    Held {
        snapshot: record.snapshot,
        local: record.local,
        epoch: record.epoch,
        // Not known to be the latest until compared again in this run.
        current: false,
        confirmed: (record.confirmed_unix_ms > 0)
            .then(|| Instant::now().checked_sub(ago))
            .flatten(),
    }
}

/// Writes it, whole or not at all.
pub fn write(path: &Path, held: &Held) -> std::io::Result<()> {
    let confirmed = held
        .age()
        .and_then(|age| SystemTime::now().checked_sub(age))
        .map_or(0, unix_ms);
    let record = Record {
        snapshot: held.snapshot.clone(),
        local: held.local.clone(),
        epoch: held.epoch,
        confirmed_unix_ms: confirmed,
    };
    let bytes = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
    crate::durable_file::replace(path, &bytes, 0o600)
}
