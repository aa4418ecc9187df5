//! The coordinator's durable state behind one interface: load everything
//! at start-up, commit a batch of writes atomically and durably (optionally
//! only while a fencing term still holds), and read the event log. The
//! embedded sled store (`sled.rs`) is one implementation; every
//! implementation must pass the suite in `conformance.rs`.
//!
//! **Architecture invariant (durability):** [`Store::commit`] returns only
//! once the whole batch would survive a crash or a power loss; the runtime
//! sends nothing of a batch before that.

mod etcd;
mod record;
mod sled;

#[cfg(test)]
mod conformance;

use std::path::PathBuf;

use thiserror::Error;

use crate::engine::{Recovered, Write};
use crate::model::EventRecord;

pub(crate) use self::etcd::{EtcdLocation, EtcdStore};
#[cfg(test)]
pub(crate) use self::record::decode;
pub(crate) use self::sled::SledStore;

/// A fencing term. Taking a new one ([`Store::fence`]) makes every commit
/// guarded by an older one fail, so a coordinator that lost its right to
/// write (a deposed leader) cannot change anything any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fence(pub u64);

/// Durable state: groups, epoch floors of deleted groups, the event log.
pub(crate) trait Store: Send + Sync {
    /// Everything the engine needs at start-up.
    fn load(&self) -> Result<Recovered, StoreError>;

    /// Applies `writes` atomically and makes them durable. With `fence`,
    /// only while it is still the latest term: otherwise nothing is
    /// applied and the answer is [`StoreError::Fenced`].
    fn commit(&self, writes: &[Write], fence: Option<Fence>) -> Result<(), StoreError>;

    /// Whether commits can be tried now (false while a failed store is
    /// being opened again).
    fn writable(&self) -> bool {
        true
    }

    /// Takes a new fencing term, above every earlier one.
    fn fence(&self) -> Result<Fence, StoreError>;

    /// The retained events, oldest first, optionally of one group and
    /// limited to the most recent `limit` (0 = all).
    fn events(&self, group: Option<&str>, limit: usize) -> Result<Vec<EventRecord>, StoreError>;

    /// The number of the latest event recorded, if any.
    fn last_event_seq(&self) -> Result<Option<u64>, StoreError>;

    /// How far each notification sink has delivered ([`Write::Cursor`]).
    fn cursors(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError>;

    /// A page of retained events, oldest first: those numbered above
    /// `after`, optionally of one group, at most `max`.
    fn events_after(
        &self,
        group: Option<&str>,
        after: u64,
        max: usize,
    ) -> Result<Vec<EventRecord>, StoreError>;
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot open the store in {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "the store in {path} is in use by another process (another coordinator?): \
         stop it first, or give this one its own --data-dir"
    )]
    Locked { path: PathBuf },
    #[error("store in {path} has schema {found:?}, this coordinator reads schema 1")]
    Schema { path: PathBuf, found: String },
    #[error("store IO failed: {0}")]
    Io(String),
    /// A write failed earlier and the store is being opened again.
    #[error("the store is not available right now: {0}")]
    Unavailable(String),
    #[error("syncing the store to disk failed: {0}")]
    Sync(#[from] std::io::Error),
    #[error("stored record under {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(
        "the store in {path} lost acknowledged writes: {acknowledged} commits were \
         acknowledged, it holds {held} (its log was cut or rolled back); restore the data \
         directory from a backup, or, to start from what it holds, remove {path}/commits"
    )]
    Lost {
        path: PathBuf,
        acknowledged: u64,
        held: u64,
    },
    /// A batch too large for one etcd transaction was written only in part
    /// (the leader's term ends; the next one reads what was written).
    #[error("a batch was written only in part: {0}")]
    Partial(String),
    #[error("a record for {key} would be {size} bytes, above the store's limit: refused")]
    TooLarge { key: String, size: usize },
    #[error(
        "the store's fencing term is at its largest (or unreadable): no coordinator may take the \
         store, since two holders of one term could both write; restore the store from a backup \
         (export/import into a new data directory or etcd prefix)"
    )]
    TermsExhausted,
    #[error(
        "a newer fencing term ({current:?}) was taken: this commit (term {held:?}) was refused"
    )]
    Fenced { held: Fence, current: Fence },
}
