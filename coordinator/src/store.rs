//! The embedded sled store: groups, epoch floors of deleted groups, and the
//! event log, all in one sled tree under key prefixes so a whole batch of
//! changes is applied atomically.
//!
//! **Architecture invariant (durability):** [`Store::commit`] returns only
//! after the batch is in the file *and* the file is synced to the device.
//! sled's own `flush` writes the log with `sync_file_range`, which neither
//! flushes the drive's cache nor the file's metadata; so after every flush
//! we `fdatasync` sled's log file ourselves. Values stay far below sled's
//! blob threshold (bounded member counts), so nothing lives in the
//! separate blob files sled never syncs.

use std::fs::File;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::engine::{Recovered, Write};
use crate::model::EventRecord;

const GROUP: &[u8] = b"g/";
const FLOOR: &[u8] = b"f/";
const EVENT: &[u8] = b"e/";
const SCHEMA_KEY: &[u8] = b"m/schema";
/// Version of the key layout and record encoding.
const SCHEMA: &[u8] = b"1";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot open the store in {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error(
        "the store in {path} is in use by another process (another coordinator?): \
         stop it first, or give this one its own --data-dir"
    )]
    Locked { path: PathBuf },
    #[error("store in {path} has schema {found:?}, this coordinator reads schema 1")]
    Schema { path: PathBuf, found: String },
    #[error("store IO failed: {0}")]
    Sled(#[from] sled::Error),
    #[error("syncing the store to disk failed: {0}")]
    Sync(#[from] std::io::Error),
    #[error("stored record under {key} is unreadable: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
}

pub struct Store {
    db: sled::Db,
    /// sled's log file, kept open to `fdatasync` it after each flush.
    log_file: File,
    /// Most events kept; older ones are dropped as new ones arrive.
    event_retention: u64,
}

impl Store {
    pub fn open(dir: &Path, event_retention: u64) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.into()))?;
        // A coordinator restarted right after a kill may find the old
        // process still exiting: its lock goes with it, so wait a moment.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new().path(dir).open() {
                Ok(db) => break db,
                Err(e) if is_lock_conflict(&e) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Locked {
                            path: dir.to_owned(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(open_err(e)),
            }
        };
        // The directory entries of sled's files must be durable too.
        File::open(dir)?.sync_all()?;
        let log_file = File::open(dir.join("db"))?;
        match db.get(SCHEMA_KEY)? {
            None => {
                db.insert(SCHEMA_KEY, SCHEMA)?;
            }
            Some(v) if v == SCHEMA => {}
            Some(v) => {
                return Err(StoreError::Schema {
                    path: dir.to_owned(),
                    found: String::from_utf8_lossy(&v).into_owned(),
                });
            }
        }
        let store = Store {
            db,
            log_file,
            event_retention: event_retention.max(1),
        };
        store.sync()?;
        Ok(store)
    }

    /// Everything the engine needs at start-up.
    pub fn recover(&self) -> Result<Recovered, StoreError> {
        let mut recovered = Recovered::default();
        for item in self.db.scan_prefix(GROUP) {
            let (key, value) = item?;
            recovered.groups.push(decode(&key, &value)?);
        }
        for item in self.db.scan_prefix(FLOOR) {
            let (key, value) = item?;
            let name = String::from_utf8_lossy(&key[FLOOR.len()..]).into_owned();
            // 8 bytes of epoch, then (since leases were kept) 8 of lease ms.
            let (epoch, ttl) = value.split_at(value.len().min(8));
            recovered.epoch_floors.insert(name.clone(), be_u64(epoch));
            if ttl.len() == 8 {
                let ms = be_u64(ttl);
                recovered
                    .deleted_ttls
                    .insert(name, std::time::Duration::from_millis(ms));
            }
        }
        recovered.next_event_seq = match self.db.scan_prefix(EVENT).next_back() {
            Some(item) => be_u64(&item?.0[EVENT.len()..]) + 1,
            None => 1,
        };
        Ok(recovered)
    }

    /// Applies `writes` atomically and makes them durable: one flush and
    /// one fdatasync for the whole batch (group commit).
    pub fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for write in writes {
            match write {
                Write::PutGroup(record) => {
                    batch.insert(key(GROUP, record.name.as_bytes()), encode(record));
                }
                Write::DeleteGroup {
                    name,
                    epoch_floor,
                    lease_ttl,
                } => {
                    batch.remove(key(GROUP, name.as_bytes()));
                    let ttl_ms = u64::try_from(lease_ttl.as_millis()).unwrap_or(u64::MAX);
                    let value = [epoch_floor.to_be_bytes(), ttl_ms.to_be_bytes()].concat();
                    batch.insert(key(FLOOR, name.as_bytes()), value);
                }
                Write::Event(event) => {
                    batch.insert(key(EVENT, &event.seq.to_be_bytes()), encode(event));
                    if let Some(old) = event.seq.checked_sub(self.event_retention) {
                        batch.remove(key(EVENT, &old.to_be_bytes()));
                    }
                }
            }
        }
        self.db.apply_batch(batch)?;
        self.sync()
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.log_file.sync_data()?;
        Ok(())
    }

    /// The retained events, oldest first, optionally of one group and
    /// limited to the most recent `limit` (0 = all).
    pub fn events(
        &self,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let mut events = Vec::new();
        for item in self.db.scan_prefix(EVENT).rev() {
            let (key, value) = item?;
            let event: EventRecord = decode(&key, &value)?;
            if group.is_none_or(|g| g == event.group) {
                events.push(event);
                if limit > 0 && events.len() == limit {
                    break;
                }
            }
        }
        events.reverse();
        Ok(events)
    }
}

/// How long opening the store waits for another process's lock to go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether sled failed to open because another process holds the store.
fn is_lock_conflict(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

fn key(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    [prefix, rest].concat()
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records always serialize")
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|source| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_be_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventKind, GroupRecord};
    use crate::policy::Policy;

    fn group(name: &str, epoch: u64) -> GroupRecord {
        GroupRecord {
            name: name.into(),
            members: vec!["a".into(), "b".into()],
            policy: Policy::default(),
            primary: Some("a".into()),
            primary_instance: None,
            granted_ttl_max: None,
            epoch,
            first_epoch: 0,
            maintenance: vec![],
            created_unix_ms: 1,
        }
    }

    fn event(seq: u64, group: &str) -> EventRecord {
        EventRecord {
            seq,
            unix_ms: seq,
            group: group.into(),
            kind: EventKind::Promoted,
            epoch: seq,
            old_primary: None,
            new_primary: Some("a".into()),
            reason: "test".into(),
            actor: "test".into(),
        }
    }

    #[test]
    fn committed_writes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 100).unwrap();
            store
                .commit(&[
                    Write::PutGroup(group("a", 3)),
                    Write::PutGroup(group("b", 1)),
                    Write::DeleteGroup {
                        name: "b".into(),
                        epoch_floor: 2,
                        lease_ttl: std::time::Duration::from_secs(7),
                    },
                    Write::Event(event(1, "a")),
                    Write::Event(event(2, "b")),
                ])
                .unwrap();
        }
        let store = Store::open(dir.path(), 100).unwrap();
        let r = store.recover().unwrap();
        assert_eq!(r.groups, vec![group("a", 3)]);
        assert_eq!(r.epoch_floors.get("b"), Some(&2));
        assert_eq!(
            r.deleted_ttls.get("b"),
            Some(&std::time::Duration::from_secs(7))
        );
        assert_eq!(r.next_event_seq, 3);
        assert_eq!(store.events(Some("a"), 0).unwrap(), vec![event(1, "a")]);
    }

    #[test]
    fn event_log_keeps_only_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        for seq in 1..=10 {
            store.commit(&[Write::Event(event(seq, "a"))]).unwrap();
        }
        let seqs: Vec<u64> = store
            .events(None, 0)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [8, 9, 10]);
        let last_two: Vec<u64> = store
            .events(None, 2)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(last_two, [9, 10]);
    }

    #[test]
    fn a_second_coordinator_cannot_open_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), 10).unwrap();
        let err = Store::open(dir.path(), 10)
            .err()
            .expect("second open must fail");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("another coordinator"), "{err}");
    }
}
