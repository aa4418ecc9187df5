//! The embedded sled store: groups, epoch floors of deleted groups, the
//! fencing term and the event log, all in one sled tree under key prefixes
//! so a whole batch of changes is applied atomically.
//!
//! Durability: [`SledStore::commit`] returns only after the batch is in the
//! file *and* the file is synced to the device.
//! sled's own `flush` writes the log with `sync_file_range`, which neither
//! flushes the drive's cache nor the file's metadata; so after every flush
//! we `fdatasync` sled's log file ourselves. Values stay far below sled's
//! blob threshold (bounded member counts), so nothing lives in the
//! separate blob files sled never syncs.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::record::{be_u64, decode, decode_floor, encode, encode_floor};
use super::{Fence, Store, StoreError};
use crate::engine::{Recovered, Write};
use crate::model::EventRecord;

const GROUP: &[u8] = b"g/";
const FLOOR: &[u8] = b"f/";
const EVENT: &[u8] = b"e/";
const CURSOR: &[u8] = b"c/";
const SCHEMA_KEY: &[u8] = b"m/schema";
const TERM_KEY: &[u8] = b"m/term";
/// How many batches were committed, written in every batch.
const COMMITS_KEY: &[u8] = b"m/commits";
/// Beside the store: the same count, written and synced after each
/// commit. A store that holds fewer commits lost acknowledged writes (a
/// truncated log that sled would otherwise open silently).
const COMMITS_FILE: &str = "commits";
/// Version of the key layout and record encoding.
const SCHEMA: &[u8] = b"1";

/// The sled database while it works. After an IO error sled fails every
/// later call, so a failed one is dropped and opened again.
struct Opened {
    db: sled::Db,
    dir: std::path::PathBuf,
    /// sled's log file, kept open to `fdatasync` it after each flush.
    log_file: File,
    /// The commit counter beside the store, and the count.
    counter: Mutex<(File, u64)>,
    /// sled's blob files already synced (sled writes a blob for a log
    /// entry too large for its segments, and never syncs it).
    synced_blobs: Mutex<std::collections::HashSet<std::ffi::OsString>>,
    /// Most events kept; older ones are dropped as new ones arrive.
    event_retention: u64,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> StoreError {
        match e {
            // sled shows the OS error in its debug form; say it plainly.
            sled::Error::Io(io) => StoreError::Io(io.to_string()),
            e => StoreError::Io(e.to_string()),
        }
    }
}

impl Opened {
    fn open(dir: &Path, event_retention: u64) -> Result<Opened, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: dir.to_owned(),
            reason,
        };
        private_dir(dir).map_err(|e| open_err(e.to_string()))?;
        remove_unfinished_snapshots(dir);
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
                Err(e) => return Err(open_err(StoreError::from(e).to_string())),
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
        let held = db.get(COMMITS_KEY)?.map_or(0, |v| be_u64(&v));
        let counter_path = dir.join(COMMITS_FILE);
        let mut counter = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&counter_path)?;
        let acknowledged = {
            use std::io::Read;
            let mut text = String::new();
            counter.read_to_string(&mut text)?;
            match text.trim() {
                "" => 0,
                n => n.parse::<u64>().map_err(|e| StoreError::Corrupt {
                    key: counter_path.display().to_string(),
                    reason: e.to_string(),
                })?,
            }
        };
        if held < acknowledged {
            return Err(StoreError::Lost {
                path: dir.to_owned(),
                acknowledged,
                held,
            });
        }
        write_count(&mut counter, held)?;
        let store = Opened {
            db,
            dir: dir.to_owned(),
            log_file,
            counter: Mutex::new((counter, held)),
            synced_blobs: Mutex::new(std::collections::HashSet::new()),
            event_retention: event_retention.max(1),
        };
        store.prune_events()?;
        store.sync()?;
        File::open(dir)?.sync_all()?;
        Ok(store)
    }

    /// Drops events beyond the retention (it may have been lowered).
    fn prune_events(&self) -> Result<(), StoreError> {
        let Some(last) = self.last_event_seq()? else {
            return Ok(());
        };
        let Some(keep_from) = last.checked_sub(self.event_retention - 1) else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        let end = key(EVENT, &keep_from.to_be_bytes());
        for item in self.db.range(EVENT.to_vec()..end) {
            batch.remove(item?.0);
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }

    fn last_event_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(match self.db.scan_prefix(EVENT).next_back() {
            Some(item) => Some(be_u64(&item?.0[EVENT.len()..])),
            None => None,
        })
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.log_file.sync_data()?;
        self.sync_blobs()
    }

    /// Syncs blob files sled wrote since the last call, and their
    /// directory.
    fn sync_blobs(&self) -> Result<(), StoreError> {
        let dir = self.dir.join("blobs");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut new = false;
        let mut present = std::collections::HashSet::new();
        for entry in entries {
            let entry = entry?;
            present.insert(entry.file_name());
            if synced.contains(&entry.file_name()) {
                continue;
            }
            File::open(entry.path())?.sync_all()?;
            synced.insert(entry.file_name());
            new = true;
        }
        // Blobs sled deleted are forgotten, so the set never outgrows the
        // directory.
        synced.retain(|name| present.contains(name));
        if new {
            File::open(&dir)?.sync_all()?;
        }
        Ok(())
    }

    fn batch(&self, writes: &[Write], commit: u64) -> Result<sled::Batch, StoreError> {
        let mut batch = sled::Batch::default();
        batch.insert(COMMITS_KEY, &commit.to_be_bytes());
        for write in writes {
            match write {
                Write::PutGroup(record) => {
                    let group_key = key(GROUP, record.name.as_bytes());
                    let value = encode(&group_key, record)?;
                    batch.insert(group_key, value);
                }
                Write::DeleteGroup {
                    name,
                    epoch_floor,
                    lease_ttl,
                } => {
                    batch.remove(key(GROUP, name.as_bytes()));
                    batch.insert(
                        key(FLOOR, name.as_bytes()),
                        encode_floor(*epoch_floor, *lease_ttl),
                    );
                }
                Write::Cursor { sink, seq } => {
                    batch.insert(key(CURSOR, sink.as_bytes()), &seq.to_be_bytes());
                }
                Write::Event(event) => {
                    let event_key = key(EVENT, &event.seq.to_be_bytes());
                    let value = encode(&event_key, event)?;
                    batch.insert(event_key, value);
                    if let Some(old) = event.seq.checked_sub(self.event_retention) {
                        batch.remove(key(EVENT, &old.to_be_bytes()));
                    }
                }
            }
        }
        Ok(batch)
    }
}

impl Opened {
    fn load(&self) -> Result<Recovered, StoreError> {
        let mut recovered = Recovered::default();
        for item in self.db.scan_prefix(GROUP) {
            let (key, value) = item?;
            recovered.groups.push(decode(&key, &value)?);
        }
        for item in self.db.scan_prefix(FLOOR) {
            let (key, value) = item?;
            let name = String::from_utf8_lossy(&key[FLOOR.len()..]).into_owned();
            let (epoch, lease) = decode_floor(&value);
            recovered.epoch_floors.insert(name.clone(), epoch);
            if let Some(lease) = lease {
                recovered.deleted_ttls.insert(name, lease);
            }
        }
        recovered.next_event_seq = self.last_event_seq()?.map_or(1, |s| s.saturating_add(1));
        Ok(recovered)
    }

    /// One flush and one fdatasync for the whole batch (group commit).
    fn commit(&self, writes: &[Write], fence: Option<Fence>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut counter = self.counter.lock().unwrap_or_else(PoisonError::into_inner);
        let commit = counter.1.saturating_add(1);
        let batch = self.batch(writes, commit)?;
        match fence {
            None => self.db.apply_batch(batch)?,
            Some(held) => {
                let applied = self.db.transaction(|tx| {
                    let current = tx.get(TERM_KEY)?.map_or(0, |v| be_u64(&v));
                    if current != held.0 {
                        return Err(ConflictableTransactionError::Abort(Fence(current)));
                    }
                    tx.apply_batch(&batch)?;
                    Ok(())
                });
                match applied {
                    Ok(()) => {}
                    Err(TransactionError::Abort(current)) => {
                        return Err(StoreError::Fenced { held, current });
                    }
                    Err(TransactionError::Storage(e)) => return Err(e.into()),
                }
            }
        }
        self.sync()?;
        // The batch is durable. The counter beside it follows; if it cannot
        // be written it only lags, which never makes a sound store look
        // damaged.
        counter.1 = commit;
        if let Err(e) = write_count(&mut counter.0, commit) {
            tracing::warn!(error = %e, "cannot update the store's commit counter");
        }
        Ok(())
    }

    fn fence(&self) -> Result<Fence, StoreError> {
        let taken = self.db.transaction(|tx| {
            let current = tx.get(TERM_KEY)?.map_or(0, |v| be_u64(&v));
            // Never wrap or stay put: two holders of one term would both
            // write.
            let next = current
                .checked_add(1)
                .ok_or(ConflictableTransactionError::Abort(()))?;
            tx.insert(TERM_KEY, &next.to_be_bytes())?;
            Ok::<_, ConflictableTransactionError<()>>(next)
        });
        let term = match taken {
            Ok(term) => term,
            Err(TransactionError::Abort(())) => return Err(StoreError::TermsExhausted),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        self.sync()?;
        Ok(Fence(term))
    }

    fn events(&self, group: Option<&str>, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
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

    fn events_after(
        &self,
        group: Option<&str>,
        after: u64,
        max: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let mut events = Vec::new();
        let Some(first) = after.checked_add(1) else {
            return Ok(events);
        };
        for item in self.db.range(key(EVENT, &first.to_be_bytes())..) {
            let (key, value) = item?;
            if !key.starts_with(EVENT) || events.len() >= max {
                break;
            }
            let event: EventRecord = decode(&key, &value)?;
            if group.is_none_or(|g| g == event.group) {
                events.push(event);
            }
        }
        Ok(events)
    }
}

/// The embedded store: the opened database, or — after a write failed (a
/// full disk) — nothing while a background thread opens it again, once a
/// second, until it works. Meanwhile every call fails at once with
/// [`StoreError::Unavailable`]: nothing blocks the runtime, which keeps
/// serving sessions and renewing leases.
pub(crate) struct SledStore {
    dir: std::path::PathBuf,
    event_retention: u64,
    state: Arc<Mutex<State>>,
}

struct State {
    opened: Option<Arc<Opened>>,
    /// Why the last write failed, while the store is being opened again.
    failure: Option<String>,
}

/// How often a failed store is tried again.
const REOPEN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl SledStore {
    /// Opens (or creates) the store in `dir`, keeping at most
    /// `event_retention` events (older ones are pruned now and as new ones
    /// arrive).
    pub(crate) fn open(dir: &Path, event_retention: u64) -> Result<SledStore, StoreError> {
        let opened = Opened::open(dir, event_retention)?;
        Ok(SledStore {
            dir: dir.to_owned(),
            event_retention,
            state: Arc::new(Mutex::new(State {
                opened: Some(Arc::new(opened)),
                failure: None,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The working database, or why there is none.
    fn opened(&self) -> Result<Arc<Opened>, StoreError> {
        let state = self.lock();
        match (&state.opened, &state.failure) {
            (Some(opened), _) => Ok(opened.clone()),
            (None, failure) => {
                Err(StoreError::Unavailable(failure.clone().unwrap_or_else(
                    || "the store is being opened again".into(),
                )))
            }
        }
    }

    /// Runs `f` on the database; an IO failure drops it and starts
    /// opening it again.
    fn with<T>(&self, f: impl FnOnce(&Opened) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let opened = self.opened()?;
        let result = f(&opened);
        if let Err(e @ (StoreError::Io(_) | StoreError::Sync(_))) = &result {
            self.failed(e.to_string(), opened);
        }
        result
    }

    fn failed(&self, why: String, opened: Arc<Opened>) {
        let mut state = self.lock();
        let current = state
            .opened
            .as_ref()
            .is_some_and(|o| Arc::ptr_eq(o, &opened));
        if !current {
            return;
        }
        state.opened = None;
        state.failure = Some(why.clone());
        drop(state);
        drop(opened);
        tracing::error!(
            dir = %self.dir.display(),
            error = %why,
            "the store failed to write: changes are refused until it works again (opening it \
             again every {REOPEN_EVERY:?}); sessions and leases go on"
        );
        let state = self.state.clone();
        let dir = self.dir.clone();
        let retention = self.event_retention;
        let spawned = std::thread::Builder::new()
            .name("store-reopen".into())
            .spawn(move || reopen(&state, &dir, retention));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the thread that opens the store again");
        }
    }
}

/// Free space below which opening the store again is not tried: sled
/// writes while it opens, and on a full disk leaves unfinished files.
const REOPEN_FREE_BYTES: u64 = 4 * 1024 * 1024;

/// Bytes free for this user on the file system of `dir`.
// The field types differ between platforms; on some they already are u64.
#[allow(clippy::useless_conversion)]
fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size())))
}

/// sled builds a snapshot in `snap.*.generating` and renames it when done;
/// one left behind (the disk filled up while it was written) makes the
/// next open fail, and is never needed: remove it.
fn remove_unfinished_snapshots(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::warn!(file = %name, "removed an unfinished store snapshot"),
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "cannot remove an unfinished store snapshot")
                }
            }
        }
    }
}

/// Opens the store in `dir` again, once every [`REOPEN_EVERY`] that the
/// disk has room, until it works.
fn reopen(state: &Mutex<State>, dir: &Path, retention: u64) {
    let mut logged = std::time::Instant::now();
    loop {
        std::thread::sleep(REOPEN_EVERY);
        if free_bytes(dir).is_some_and(|free| free < REOPEN_FREE_BYTES) {
            if logged.elapsed() >= std::time::Duration::from_secs(10) {
                logged = std::time::Instant::now();
                tracing::error!(dir = %dir.display(), "the store's disk is still full: waiting for free space");
            }
            continue;
        }
        match Opened::open(dir, retention) {
            Ok(opened) => {
                let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                state.opened = Some(Arc::new(opened));
                state.failure = None;
                tracing::warn!(dir = %dir.display(), "the store works again: changes are accepted");
                return;
            }
            Err(e) => {
                let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                state.failure = Some(e.to_string());
                drop(state);
                if logged.elapsed() >= std::time::Duration::from_secs(10) {
                    logged = std::time::Instant::now();
                    tracing::error!(dir = %dir.display(), error = %e, "the store still cannot be opened");
                }
            }
        }
    }
}

impl Store for SledStore {
    fn writable(&self) -> bool {
        self.lock().opened.is_some()
    }

    fn load(&self) -> Result<Recovered, StoreError> {
        self.with(Opened::load)
    }

    fn commit(&self, writes: &[Write], fence: Option<Fence>) -> Result<(), StoreError> {
        self.with(|db| db.commit(writes, fence))
    }

    fn fence(&self) -> Result<Fence, StoreError> {
        self.with(Opened::fence)
    }

    fn events(&self, group: Option<&str>, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        self.with(|db| db.events(group, limit))
    }

    fn events_after(
        &self,
        group: Option<&str>,
        after: u64,
        max: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.with(|db| db.events_after(group, after, max))
    }

    fn last_event_seq(&self) -> Result<Option<u64>, StoreError> {
        self.with(Opened::last_event_seq)
    }

    fn cursors(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        self.with(|db| {
            let mut cursors = std::collections::BTreeMap::new();
            for item in db.db.scan_prefix(CURSOR) {
                let (key, value) = item?;
                let sink = String::from_utf8_lossy(&key[CURSOR.len()..]).into_owned();
                cursors.insert(sink, be_u64(&value));
            }
            Ok(cursors)
        })
    }
}

/// How long opening the store waits for another process's lock to go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether sled failed to open because another process holds the store.
fn is_lock_conflict(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

/// Writes the commit count into the counter file and syncs it.
fn write_count(file: &mut File, count: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    // Fixed width, so an overwrite never leaves digits of a longer count.
    let text = format!("{count:020}\n");
    file.seek(SeekFrom::Start(0))?;
    file.write_all(text.as_bytes())?;
    file.sync_data()
}

fn key(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    [prefix, rest].concat()
}

/// Creates `dir` (and its parents) readable by this user only, and takes
/// group and world access away from an existing one: the store holds the
/// instance ids that prove an agent is the one that held a role, so no
/// other local user may read it.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700)) {
            Ok(()) => tracing::warn!(
                dir = %dir.display(),
                "the data directory was readable by other users: made it private (mode 700)"
            ),
            // Not ours to change (a volume's root owned by another user):
            // run on, and say what to do about it.
            Err(e) => tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "the data directory is readable by other users and cannot be made private: use a \
                 subdirectory this user owns (it is created with mode 700)"
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::store::conformance::{self, Subject};

    struct Sled;

    impl Subject for Sled {
        type S = SledStore;

        fn open(dir: &Path, retention: u64) -> SledStore {
            SledStore::open(dir, retention).expect("opens")
        }

        fn corrupt_group(dir: &Path, name: &str) {
            let db = sled::Config::new().path(dir).open().expect("opens");
            db.insert(key(GROUP, name.as_bytes()), &b"{not json"[..])
                .expect("writes");
            db.flush().expect("flushes");
        }

        const CRASH_CHILD: &'static str = "store::sled::tests::crash_child";
    }

    #[test]
    fn conforms() {
        conformance::all::<Sled>();
    }

    /// Run by [`conformance::survives_a_crash`] in a child process.
    #[test]
    fn crash_child() {
        conformance::crash_child::<Sled>();
    }

    #[test]
    fn a_second_coordinator_cannot_open_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path(), 10).unwrap();
        let err = SledStore::open(dir.path(), 10)
            .err()
            .expect("second open must fail");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("another coordinator"), "{err}");
    }

    #[test]
    fn the_data_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh");
        drop(SledStore::open(&fresh, 10).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&fresh), 0o700);
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(SledStore::open(&open, 10).unwrap());
        assert_eq!(mode(&open), 0o700);
    }

    #[test]
    fn other_open_failures_do_not_blame_another_coordinator() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let err = SledStore::open(&file, 10)
            .err()
            .expect("a file is no store");
        assert!(!err.to_string().contains("another"), "{err}");
    }
}

#[cfg(test)]
mod durability_tests {
    use super::*;
    use crate::model::GroupRecord;

    fn group(name: &str, members: Vec<String>) -> GroupRecord {
        GroupRecord {
            name: name.into(),
            members,
            policy: crate::policy::Policy::default(),
            primary: None,
            primary_instance: None,
            granted_ttl_max: None,
            epoch: 1,
            first_epoch: 0,
            maintenance: Vec::new(),
            created_unix_ms: 0,
        }
    }

    #[test]
    fn a_store_cut_short_refuses_to_start_instead_of_losing_writes() {
        let source = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(source.path(), 10).unwrap();
            for i in 0..300 {
                let g = group(&format!("g{i}"), vec!["n1".into()]);
                store.commit(&[Write::PutGroup(g)], None).unwrap();
            }
        }
        let mut lost = 0;
        for cut in [100u64, 1_000, 10_000, 100_000] {
            let copy = tempfile::tempdir().unwrap();
            for entry in std::fs::read_dir(source.path()).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_file() {
                    std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
                }
            }
            let log = std::fs::OpenOptions::new()
                .write(true)
                .open(copy.path().join("db"))
                .unwrap();
            let len = log.metadata().unwrap().len();
            log.set_len(len.saturating_sub(cut)).unwrap();
            drop(log);
            match SledStore::open(copy.path(), 10) {
                Ok(store) => assert_eq!(
                    store.load().unwrap().groups.len(),
                    300,
                    "opened after losing acknowledged groups (cut {cut} bytes)"
                ),
                Err(StoreError::Lost { .. }) => lost += 1,
                Err(_) => {}
            }
        }
        assert!(lost > 0, "no cut was noticed as lost writes");
    }

    #[test]
    fn a_record_too_large_for_the_log_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 10).unwrap();
        let members = (0..2000).map(|i| format!("{i:0>60}")).collect();
        let err = store
            .commit(&[Write::PutGroup(group("big", members))], None)
            .unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
        assert!(store.load().unwrap().groups.is_empty());
        // Still writable.
        store
            .commit(&[Write::PutGroup(group("small", vec!["n1".into()]))], None)
            .unwrap();
    }

    #[test]
    fn the_largest_group_the_engine_allows_fits() {
        let members: Vec<String> = (0..64).map(|i| format!("{i:x>63}")).collect();
        let mut g = group("x".repeat(63).as_str(), members.clone());
        g.maintenance = members;
        let size = serde_json::to_vec(&g).unwrap().len();
        assert!(
            size < super::super::record::MAX_VALUE / 2,
            "a full group is {size} bytes"
        );
    }
}

#[cfg(test)]
mod reopen_tests {
    use super::*;

    #[test]
    fn an_unfinished_snapshot_left_by_a_full_disk_does_not_stop_the_store_opening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 10).unwrap();
            store.fence().unwrap();
        }
        // What sled leaves when the disk fills while it writes a snapshot.
        std::fs::write(dir.path().join("snap.00000000000004B2.generating"), b"").unwrap();
        let store = SledStore::open(dir.path(), 10).expect("opens");
        assert!(store.writable());
        assert!(!dir.path().join("snap.00000000000004B2.generating").exists());
    }
}
