//! What every [`Store`] implementation must do, as one suite of tests: an
//! implementation's test module provides a [`Subject`] and runs
//! [`all`] (and the [`crash_child`] half of the crash test).
//!
//! - a batch is applied whole, and read back whole after reopening;
//! - a committed batch survives the process dying right after the commit;
//! - a deleted group leaves its epoch floor and its longest lease;
//! - the event log keeps exactly the retention, also when it is lowered;
//! - a commit under a superseded fencing term changes nothing;
//! - an unreadable record is an error that names its key.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{Store, StoreError};
use crate::engine::Write;
use crate::model::{EventKind, EventRecord, GroupRecord};
use crate::policy::Policy;

/// A store implementation under test.
pub(crate) trait Subject {
    type S: Store;

    /// Opens (or creates) the store kept in `dir`.
    fn open(dir: &Path, retention: u64) -> Self::S;

    /// Overwrites group `name`'s stored record with bytes that are no
    /// record (the store in `dir` is closed).
    fn corrupt_group(dir: &Path, name: &str);

    /// The full name of the implementation's test that calls
    /// [`crash_child`].
    const CRASH_CHILD: &'static str;

    /// Environment the crash test's child process needs to find the store.
    fn child_env() -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// Environment variable that makes [`crash_child`] commit and abort.
const CRASH_DIR_VAR: &str = "FAILOVER_STORE_CRASH_DIR";

pub(crate) fn all<T: Subject>() {
    a_batch_is_applied_whole_and_reads_back::<T>();
    survives_a_crash::<T>();
    deleted_groups_leave_their_floor_and_lease::<T>();
    the_event_log_keeps_the_retention::<T>();
    a_superseded_fence_changes_nothing::<T>();
    a_corrupt_record_is_a_clear_error::<T>();
    delivery_cursors_are_kept_per_sink::<T>();
}

fn delivery_cursors_are_kept_per_sink<T: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = T::open(dir.path(), 100);
        assert!(store.cursors().unwrap().is_empty());
        assert_eq!(store.last_event_seq().unwrap(), None);
        let fence = store.fence().unwrap();
        store
            .commit(
                &[
                    Write::Event(event(1, "a")),
                    Write::Event(event(2, "a")),
                    Write::Cursor {
                        sink: "mail".into(),
                        seq: 1,
                    },
                    Write::Cursor {
                        sink: "hook".into(),
                        seq: 2,
                    },
                ],
                Some(fence),
            )
            .unwrap();
        store
            .commit(
                &[Write::Cursor {
                    sink: "mail".into(),
                    seq: 2,
                }],
                Some(fence),
            )
            .unwrap();
    }
    let store = T::open(dir.path(), 100);
    let cursors = store.cursors().unwrap();
    assert_eq!(cursors.get("mail"), Some(&2));
    assert_eq!(cursors.get("hook"), Some(&2));
    assert_eq!(cursors.len(), 2);
    assert_eq!(store.last_event_seq().unwrap(), Some(2));
    // A deposed holder cannot move a cursor.
    let old = store.fence().unwrap();
    store.fence().unwrap();
    assert!(matches!(
        store.commit(
            &[Write::Cursor {
                sink: "mail".into(),
                seq: 1,
            }],
            Some(old),
        ),
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(store.cursors().unwrap().get("mail"), Some(&2));
}

fn group(name: &str, epoch: u64) -> GroupRecord {
    GroupRecord {
        name: name.into(),
        members: vec!["a".into(), "b".into()],
        policy: Policy::default(),
        primary: Some("a".into()),
        primary_instance: Some("0123456789abcdef0123456789abcdef".into()),
        granted_ttl_max: Some(Duration::from_secs(3)),
        epoch,
        first_epoch: 0,
        maintenance: vec![],
        created_unix_ms: 1,
    }
}

pub(crate) fn event(seq: u64, group: &str) -> EventRecord {
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
        node: None,
    }
}

fn seqs(events: &[EventRecord]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

fn a_batch_is_applied_whole_and_reads_back<T: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = T::open(dir.path(), 100);
        store
            .commit(
                &[
                    Write::PutGroup(group("a", 3)),
                    Write::PutGroup(group("b", 1)),
                    Write::PutGroup(group("a", 4)),
                    Write::Event(event(1, "a")),
                    Write::Event(event(2, "b")),
                ],
                None,
            )
            .unwrap();
    }
    let store = T::open(dir.path(), 100);
    let r = store.load().unwrap();
    let mut groups = r.groups.clone();
    groups.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(
        groups,
        vec![group("a", 4), group("b", 1)],
        "the last put wins"
    );
    assert_eq!(r.next_event_seq, 3);
    assert_eq!(store.events(Some("a"), 0).unwrap(), vec![event(1, "a")]);
    assert_eq!(seqs(&store.events(None, 1).unwrap()), [2]);
    // Pages, oldest first, after a sequence number.
    assert_eq!(seqs(&store.events_after(None, 0, 1).unwrap()), [1]);
    assert_eq!(seqs(&store.events_after(None, 1, 10).unwrap()), [2]);
    assert!(store.events_after(None, 2, 10).unwrap().is_empty());
    assert!(store.events_after(Some("a"), 1, 10).unwrap().is_empty());
    assert!(store.events_after(None, u64::MAX, 10).unwrap().is_empty());
}

/// The parent half: a child process commits and aborts at once; the
/// commit must be there after reopening.
fn survives_a_crash<T: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([T::CRASH_CHILD, "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_DIR_VAR, dir.path())
        .envs(T::child_env())
        .output()
        .expect("the test binary runs");
    assert!(
        !status.status.success(),
        "the child did not abort: {}",
        String::from_utf8_lossy(&status.stdout)
    );
    let store = T::open(dir.path(), 100);
    let r = store.load().unwrap();
    assert_eq!(r.groups, vec![group("crashed", 9)]);
    assert_eq!(seqs(&store.events(None, 0).unwrap()), [1]);
}

/// The child half of [`survives_a_crash`]; does nothing unless asked.
pub(crate) fn crash_child<T: Subject>() {
    let Some(dir) = std::env::var_os(CRASH_DIR_VAR) else {
        return;
    };
    let store = T::open(Path::new(&dir), 100);
    store
        .commit(
            &[
                Write::PutGroup(group("crashed", 9)),
                Write::Event(event(1, "crashed")),
            ],
            None,
        )
        .unwrap();
    // No drop, no flush, no goodbye.
    std::process::abort();
}

fn deleted_groups_leave_their_floor_and_lease<T: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = T::open(dir.path(), 100);
        store
            .commit(&[Write::PutGroup(group("gone", 5))], None)
            .unwrap();
        store
            .commit(
                &[Write::DeleteGroup {
                    name: "gone".into(),
                    epoch_floor: 6,
                    lease_ttl: Duration::from_secs(7),
                }],
                None,
            )
            .unwrap();
    }
    let r = T::open(dir.path(), 100).load().unwrap();
    assert!(r.groups.is_empty());
    assert_eq!(r.epoch_floors.get("gone"), Some(&6));
    assert_eq!(r.deleted_ttls.get("gone"), Some(&Duration::from_secs(7)));
}

fn the_event_log_keeps_the_retention<T: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = T::open(dir.path(), 5);
        for seq in 1..=10 {
            store
                .commit(&[Write::Event(event(seq, "a"))], None)
                .unwrap();
        }
        assert_eq!(seqs(&store.events(None, 0).unwrap()), [6, 7, 8, 9, 10]);
        assert_eq!(seqs(&store.events(None, 2).unwrap()), [9, 10]);
    }
    // Lowered: the old events go at once, not only as new ones arrive.
    let store = T::open(dir.path(), 2);
    assert_eq!(seqs(&store.events(None, 0).unwrap()), [9, 10]);
    assert_eq!(store.load().unwrap().next_event_seq, 11);
}

fn a_superseded_fence_changes_nothing<T: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    let store = T::open(dir.path(), 100);
    let old = store.fence().unwrap();
    store
        .commit(&[Write::PutGroup(group("a", 1))], Some(old))
        .unwrap();
    let new = store.fence().unwrap();
    assert!(new > old, "terms grow");
    let refused = store.commit(
        &[Write::PutGroup(group("a", 2)), Write::Event(event(1, "a"))],
        Some(old),
    );
    assert!(
        matches!(refused, Err(StoreError::Fenced { .. })),
        "{refused:?}"
    );
    let r = store.load().unwrap();
    assert_eq!(r.groups, vec![group("a", 1)], "nothing of the batch");
    assert!(store.events(None, 0).unwrap().is_empty());
    store
        .commit(&[Write::PutGroup(group("a", 3))], Some(new))
        .unwrap();
    drop(store);
    let reopened = T::open(dir.path(), 100);
    assert!(reopened.fence().unwrap() > new, "terms survive reopening");
}

fn a_corrupt_record_is_a_clear_error<T: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = T::open(dir.path(), 100);
        store
            .commit(&[Write::PutGroup(group("bad", 1))], None)
            .unwrap();
    }
    T::corrupt_group(dir.path(), "bad");
    let err = T::open(dir.path(), 100).load().unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("bad"), "names the record: {err}");
}
