//! The store on an etcd cluster, for coordinator replicas: the same records
//! as the embedded store, under a key prefix (so several clusters can share
//! one etcd), each batch one etcd transaction guarded by the fencing term.
//!
//! Layout under the prefix: `g/NAME` groups, `f/NAME` epoch floors of
//! deleted groups, `e/SEQ` events (SEQ in 20 decimal digits, so keys sort
//! by number), `m/schema`, `m/term` (the fencing term, a decimal number).
//!
//! Durability: etcd acknowledges a transaction once a quorum of its members
//! has it on disk. Atomicity: a batch is one transaction unless it has more
//! operations than etcd takes in one (`MAX_OPS`, etcd's default
//! `--max-txn-ops`) or is larger than `MAX_TXN_BYTES`; then it is written in
//! several, each guarded by the term. Each group's record is whole in
//! itself and the runtime announces nothing of a batch before all of it is
//! written, so a batch cut short by a crash is like a crash after the
//! commit; one cut short while running ([`StoreError::Partial`]) ends the
//! leader's term, and the next leader reads what was written.

use std::future::Future;

use proto::client::ClientTls;
use proto::etcd::{RequestOp, TxnRequest};

use super::record::{decode, decode_floor, encode, encode_floor};
use super::{Fence, Store, StoreError};
use crate::engine::{Recovered, Write};
use crate::etcd::{self, Etcd, EtcdError, prefix_end};
use crate::model::EventRecord;

/// etcd's default `--max-txn-ops`.
const MAX_OPS: usize = 128;
/// Below etcd's default `--max-request-bytes` (1.5 MiB).
const MAX_TXN_BYTES: usize = 1024 * 1024;
/// Version of the key layout and record encoding.
const SCHEMA: &[u8] = b"1";
/// Events read per request when filtering by group.
const EVENT_PAGE: i64 = 256;

/// Where the store lives: the cluster, and the prefix of its keys.
#[derive(Debug, Clone)]
pub(crate) struct EtcdLocation {
    pub endpoints: Vec<String>,
    pub tls: ClientTls,
    /// Every key starts with it, e.g. `/failover/`.
    pub prefix: String,
}

pub(crate) struct EtcdStore {
    etcd: Etcd,
    prefix: Vec<u8>,
    event_retention: u64,
    /// The store's calls are synchronous (the runtime makes them from a
    /// blocking thread); they run on this small runtime of their own.
    runtime: Option<tokio::runtime::Runtime>,
    /// The last fencing term this store took, and the etcd revision at
    /// which it wrote it.
    taken: std::sync::Mutex<Option<(u64, i64)>>,
}

impl EtcdStore {
    /// Connects, checks the schema (writing it into an empty prefix) and
    /// drops events beyond the retention.
    pub(crate) fn open(
        location: &EtcdLocation,
        event_retention: u64,
    ) -> Result<EtcdStore, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(format!("cannot start the etcd client: {e}")))?;
        let etcd = {
            let _entered = runtime.enter();
            Etcd::new(&location.endpoints, &location.tls).map_err(|e| StoreError::Open {
                path: location.prefix.clone().into(),
                reason: e.to_string(),
            })?
        };
        let store = EtcdStore {
            etcd,
            prefix: location.prefix.as_bytes().to_vec(),
            event_retention: event_retention.max(1),
            runtime: Some(runtime),
            taken: std::sync::Mutex::new(None),
        };
        store.check_schema(location)?;
        store.prune_events()?;
        Ok(store)
    }

    /// The etcd connection, for the election and status.
    pub(crate) fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    fn block_on<T>(&self, f: impl Future<Output = Result<T, EtcdError>>) -> Result<T, StoreError> {
        match &self.runtime {
            Some(rt) => rt.block_on(f).map_err(unavailable),
            None => Err(StoreError::Unavailable("the etcd client stopped".into())),
        }
    }

    fn key(&self, kind: &str, rest: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), kind.as_bytes(), rest].concat()
    }

    fn event_key(&self, seq: u64) -> Vec<u8> {
        self.key("e/", format!("{seq:020}").as_bytes())
    }

    fn check_schema(&self, location: &EtcdLocation) -> Result<(), StoreError> {
        let key = self.key("m/schema", b"");
        let created = self.block_on(self.etcd.txn(TxnRequest {
            compare: vec![etcd::absent(key.clone())],
            success: vec![etcd::put(key.clone(), SCHEMA.to_vec())],
            failure: vec![],
        }))?;
        if created.succeeded {
            return Ok(());
        }
        let found = self.block_on(self.etcd.get(&key))?.map(|kv| kv.value);
        if found.as_deref() == Some(SCHEMA) {
            return Ok(());
        }
        Err(StoreError::Schema {
            path: location.prefix.clone().into(),
            found: String::from_utf8_lossy(&found.unwrap_or_default()).into_owned(),
        })
    }

    fn last_event_seq(&self) -> Result<Option<u64>, StoreError> {
        let from = self.key("e/", b"");
        let last = self.block_on(self.etcd.last(&from, &prefix_end(&from)))?;
        last.map(|kv| self.seq_of(&kv.key)).transpose()
    }

    fn seq_of(&self, key: &[u8]) -> Result<u64, StoreError> {
        let digits = &key[self.key("e/", b"").len().min(key.len())..];
        std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| StoreError::Corrupt {
                key: String::from_utf8_lossy(key).into_owned(),
                reason: "not an event number".into(),
            })
    }

    /// Drops events beyond the retention (it may have been lowered).
    fn prune_events(&self) -> Result<(), StoreError> {
        let Some(last) = self.last_event_seq()? else {
            return Ok(());
        };
        let Some(keep_from) = last.checked_sub(self.event_retention - 1) else {
            return Ok(());
        };
        let from = self.key("e/", b"");
        self.block_on(self.etcd.delete_range(&from, &self.event_key(keep_from)))
    }

    fn ops(&self, writes: &[Write]) -> Result<Vec<RequestOp>, StoreError> {
        let mut ops = Vec::new();
        for write in writes {
            match write {
                Write::PutGroup(record) => {
                    let key = self.key("g/", record.name.as_bytes());
                    let value = encode(&key, record)?;
                    ops.push(etcd::put(key, value));
                }
                Write::DeleteGroup {
                    name,
                    epoch_floor,
                    lease_ttl,
                } => {
                    ops.push(etcd::delete(self.key("g/", name.as_bytes())));
                    ops.push(etcd::put(
                        self.key("f/", name.as_bytes()),
                        encode_floor(*epoch_floor, *lease_ttl),
                    ));
                }
                Write::Cursor { sink, seq } => {
                    ops.push(etcd::put(
                        self.key("c/", sink.as_bytes()),
                        seq.to_string().into_bytes(),
                    ));
                }
                Write::Event(event) => {
                    let key = self.event_key(event.seq);
                    let value = encode(&key, event)?;
                    ops.push(etcd::put(key, value));
                    if let Some(old) = event.seq.checked_sub(self.event_retention) {
                        ops.push(etcd::delete(self.event_key(old)));
                    }
                }
            }
        }
        Ok(ops)
    }

    fn read_events(&self, from: &[u8], end: &[u8]) -> Result<Vec<EventRecord>, StoreError> {
        let kvs = self.block_on(self.etcd.range(from, end))?;
        kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, which may not happen on
        // an async thread.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// etcd unreachable or without quorum is a store that cannot write right
/// now: the runtime refuses changes and keeps renewing leases.
fn unavailable(e: EtcdError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Only the last operation on each key (etcd refuses a transaction that
/// names a key twice; within one batch the last write is what counts).
fn last_per_key(ops: Vec<RequestOp>) -> Vec<RequestOp> {
    use proto::etcd::request_op::Request;
    let key = |op: &RequestOp| match &op.request {
        Some(Request::RequestPut(p)) => p.key.clone(),
        Some(Request::RequestDeleteRange(d)) => d.key.clone(),
        Some(Request::RequestRange(r)) => r.key.clone(),
        None => Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<RequestOp> = ops
        .into_iter()
        .rev()
        .filter(|op| seen.insert(key(op)))
        .collect();
    kept.reverse();
    kept
}

/// Splits `ops` into transactions etcd accepts.
fn chunks(ops: Vec<RequestOp>) -> Vec<Vec<RequestOp>> {
    use prost::Message;
    let mut all = Vec::new();
    let mut current: Vec<RequestOp> = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let size = op.encoded_len();
        if !current.is_empty() && (current.len() + 1 > MAX_OPS || bytes + size > MAX_TXN_BYTES) {
            all.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(op);
    }
    if !current.is_empty() {
        all.push(current);
    }
    all
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Recovered, StoreError> {
        let mut recovered = Recovered::default();
        let groups = self.key("g/", b"");
        for kv in self.block_on(self.etcd.range(&groups, &prefix_end(&groups)))? {
            recovered.groups.push(decode(&kv.key, &kv.value)?);
        }
        let floors = self.key("f/", b"");
        for kv in self.block_on(self.etcd.range(&floors, &prefix_end(&floors)))? {
            let name = String::from_utf8_lossy(&kv.key[floors.len()..]).into_owned();
            let (epoch, lease) = decode_floor(&kv.value);
            recovered.epoch_floors.insert(name.clone(), epoch);
            if let Some(lease) = lease {
                recovered.deleted_ttls.insert(name, lease);
            }
        }
        recovered.next_event_seq = self.last_event_seq()?.map_or(1, |s| s.saturating_add(1));
        Ok(recovered)
    }

    fn commit(&self, writes: &[Write], fence: Option<Fence>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let term_key = self.key("m/term", b"");
        // The term this store took is the key exactly as it wrote it: any
        // change since (a newer term, or the number put back by hand or by
        // restoring etcd, which a later holder could take again) refuses.
        let taken = *self
            .taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let guard = |held: Fence| {
            vec![match taken {
                Some((term, revision)) if term == held.0 => {
                    etcd::unchanged_since(term_key.clone(), revision)
                }
                _ => etcd::value_is(term_key.clone(), held.0.to_string().into_bytes()),
            }]
        };
        let parts = chunks(last_per_key(self.ops(writes)?));
        let count = parts.len();
        for (i, success) in parts.into_iter().enumerate() {
            let request = TxnRequest {
                compare: fence.map(guard).unwrap_or_default(),
                success,
                failure: vec![etcd::get_op(term_key.clone())],
            };
            let answer = match self.block_on(self.etcd.txn(request)) {
                Ok(answer) => answer,
                Err(e) if i > 0 => {
                    return Err(StoreError::Partial(format!(
                        "{i} of {count} parts of a batch were written, then: {e}"
                    )));
                }
                Err(e) => return Err(e),
            };
            if !answer.succeeded {
                let held = fence.unwrap_or(Fence(0));
                let current = Fence(etcd::read_value(&answer).map_or(0, |v| parse_term(&v)));
                if i > 0 {
                    return Err(StoreError::Partial(format!(
                        "{i} of {count} parts of a batch were written, then a newer term ({current:?}) was taken"
                    )));
                }
                return Err(StoreError::Fenced { held, current });
            }
        }
        Ok(())
    }

    fn fence(&self) -> Result<Fence, StoreError> {
        let key = self.key("m/term", b"");
        // Another replica may take a term at the same moment: read, then
        // write only if nobody wrote in between, and try again if someone did.
        for _ in 0..16 {
            let current = self.block_on(self.etcd.get(&key))?;
            let (term, revision) = current
                .as_ref()
                .map_or((0, 0), |kv| (parse_term(&kv.value), kv.mod_revision));
            // Never wrap or stay put: two holders of one term would both
            // write.
            let next = term.checked_add(1).ok_or(StoreError::TermsExhausted)?;
            let taken = self.block_on(self.etcd.txn(TxnRequest {
                compare: vec![etcd::unchanged_since(key.clone(), revision)],
                success: vec![etcd::put(key.clone(), next.to_string().into_bytes())],
                failure: vec![],
            }))?;
            if taken.succeeded {
                let revision = taken.header.map_or(0, |h| h.revision);
                *self
                    .taken
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((next, revision));
                return Ok(Fence(next));
            }
        }
        Err(StoreError::Unavailable(
            "could not take a fencing term: others kept taking one".into(),
        ))
    }

    fn events(&self, group: Option<&str>, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let from = self.key("e/", b"");
        let mut events = self.read_events(&from, &prefix_end(&from))?;
        if let Some(g) = group {
            events.retain(|e| e.group == g);
        }
        if limit > 0 && events.len() > limit {
            events.drain(..events.len() - limit);
        }
        Ok(events)
    }

    fn last_event_seq(&self) -> Result<Option<u64>, StoreError> {
        EtcdStore::last_event_seq(self)
    }

    fn cursors(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        let from = self.key("c/", b"");
        let kvs = self.block_on(self.etcd.range(&from, &prefix_end(&from)))?;
        let mut cursors = std::collections::BTreeMap::new();
        for kv in kvs {
            let sink = String::from_utf8_lossy(&kv.key[from.len()..]).into_owned();
            let seq = std::str::from_utf8(&kv.value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&kv.key).into_owned(),
                    reason: "not a number".into(),
                })?;
            cursors.insert(sink, seq);
        }
        Ok(cursors)
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
        let end = prefix_end(&self.key("e/", b""));
        let mut from = self.event_key(first);
        while events.len() < max {
            let page = self.block_on(self.etcd.range_page(&from, &end, EVENT_PAGE))?;
            let full = page.len() == EVENT_PAGE as usize;
            for kv in &page {
                let event: EventRecord = decode(&kv.key, &kv.value)?;
                if group.is_none_or(|g| g == event.group) && events.len() < max {
                    events.push(event);
                }
            }
            match page.last() {
                Some(last) if full => from = [last.key.as_slice(), &[0]].concat(),
                _ => break,
            }
        }
        Ok(events)
    }
}

/// A stored term; one that is no number counts as exhausted, so nobody
/// writes under a term that cannot be told apart from another.
fn parse_term(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::{Child, Command};
    use std::sync::OnceLock;
    use std::time::Duration;

    use super::super::conformance::{self, Subject};
    use super::*;

    /// How long the tests wait for a test etcd to start.
    const ETCD_START: Duration = Duration::from_secs(20);

    /// The test etcd's client URL, in this process and in the crash
    /// test's child.
    const ENDPOINT_VAR: &str = "FAILOVER_TEST_ETCD";

    /// One single-member etcd for this test process, on free loopback
    /// ports, in a temporary directory; it ends with the process (the
    /// thread that starts it lives as long as the process, and the child
    /// gets SIGKILL when it ends).
    fn endpoint() -> String {
        static ENDPOINT: OnceLock<String> = OnceLock::new();
        ENDPOINT
            .get_or_init(|| {
                if let Ok(url) = std::env::var(ENDPOINT_VAR) {
                    return url;
                }
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let dir = tempfile::tempdir().unwrap();
                    let (client, peer) = (free_port(), free_port());
                    let url = format!("http://127.0.0.1:{client}");
                    let child = start_etcd(dir.path(), &url, peer);
                    tx.send(url).unwrap();
                    let _keep = (dir, child);
                    loop {
                        std::thread::park();
                    }
                });
                let url = rx.recv().unwrap();
                wait_ready(&url);
                url
            })
            .clone()
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn start_etcd(dir: &Path, client_url: &str, peer: u16) -> Child {
        use std::os::unix::process::CommandExt;
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut command = Command::new("etcd");
        command
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap());
        // SAFETY: prctl only, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        command
            .spawn()
            .expect("etcd starts (install it: deploy/install-test-tools.sh)")
    }

    fn wait_ready(url: &str) {
        let location = location(url, "/ready/");
        let deadline = std::time::Instant::now() + ETCD_START;
        loop {
            match EtcdStore::open(&location, 10) {
                Ok(_) => return,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("the test etcd at {url} did not start: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn location(url: &str, prefix: &str) -> EtcdLocation {
        EtcdLocation {
            endpoints: vec![url.to_owned()],
            tls: ClientTls::default(),
            prefix: prefix.to_owned(),
        }
    }

    /// Each test directory is a prefix of its own.
    fn location_of(dir: &Path) -> EtcdLocation {
        location(&endpoint(), &format!("/test{}/", dir.display()))
    }

    struct Etcd;

    impl Subject for Etcd {
        type S = EtcdStore;

        fn open(dir: &Path, retention: u64) -> EtcdStore {
            EtcdStore::open(&location_of(dir), retention).unwrap()
        }

        fn corrupt_group(dir: &Path, name: &str) {
            let store = Self::open(dir, 100);
            let key = store.key("g/", name.as_bytes());
            store
                .block_on(store.etcd.txn(TxnRequest {
                    compare: vec![],
                    success: vec![etcd::put(key, b"\x00 not a record".to_vec())],
                    failure: vec![],
                }))
                .unwrap();
        }

        fn child_env() -> Vec<(&'static str, String)> {
            vec![(ENDPOINT_VAR, endpoint())]
        }

        const CRASH_CHILD: &'static str = "store::etcd::tests::crash_child";
    }

    #[test]
    fn conforms() {
        conformance::all::<Etcd>();
    }

    #[test]
    fn crash_child() {
        conformance::crash_child::<Etcd>();
    }

    #[test]
    fn a_batch_larger_than_one_transaction_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Etcd::open(dir.path(), 10_000);
        let fence = store.fence().unwrap();
        let writes: Vec<Write> = (0..300)
            .map(|i| Write::Event(conformance::event(i + 1, "big")))
            .collect();
        store.commit(&writes, Some(fence)).unwrap();
        assert_eq!(store.events(None, 0).unwrap().len(), 300);
        assert_eq!(store.events_after(Some("big"), 0, 1000).unwrap().len(), 300);
        assert_eq!(store.events_after(None, 250, 1000).unwrap().len(), 50);
    }

    #[test]
    fn a_term_put_back_by_hand_does_not_let_its_old_holder_write() {
        let dir = tempfile::tempdir().unwrap();
        let old = Etcd::open(dir.path(), 10);
        let term = old.fence().unwrap();
        // Someone puts the number back (by hand, or by restoring etcd); the
        // next holder takes the same number again.
        let key = old.key("m/term", b"");
        let back = (term.0 - 1).to_string().into_bytes();
        old.block_on(old.etcd.txn(TxnRequest {
            compare: vec![],
            success: vec![etcd::put(key, back)],
            failure: vec![],
        }))
        .unwrap();
        let new = Etcd::open(dir.path(), 10);
        assert_eq!(new.fence().unwrap(), term, "the same number again");
        let refused = old.commit(&[Write::Event(conformance::event(1, "a"))], Some(term));
        assert!(
            matches!(refused, Err(StoreError::Fenced { .. })),
            "{refused:?}"
        );
        new.commit(&[Write::Event(conformance::event(1, "a"))], Some(term))
            .unwrap();
    }

    #[test]
    fn an_exhausted_fencing_term_is_refused_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Etcd::open(dir.path(), 10);
        let key = store.key("m/term", b"");
        store
            .block_on(store.etcd.txn(TxnRequest {
                compare: vec![],
                success: vec![etcd::put(key, u64::MAX.to_string().into_bytes())],
                failure: vec![],
            }))
            .unwrap();
        let err = store.fence().unwrap_err();
        assert!(matches!(err, StoreError::TermsExhausted), "{err}");
    }

    #[test]
    fn a_prefix_with_another_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Etcd::open(dir.path(), 10);
        let key = store.key("m/schema", b"");
        store
            .block_on(store.etcd.txn(TxnRequest {
                compare: vec![],
                success: vec![etcd::put(key, b"7".to_vec())],
                failure: vec![],
            }))
            .unwrap();
        let err = EtcdStore::open(&location_of(dir.path()), 10).err().unwrap();
        assert!(matches!(err, StoreError::Schema { .. }), "{err}");
    }

    #[test]
    fn an_unreachable_etcd_is_a_store_that_cannot_write_now() {
        let store = EtcdStore {
            etcd: {
                let rt = tokio::runtime::Runtime::new().unwrap();
                let _e = rt.enter();
                crate::etcd::Etcd::new(
                    &[format!("http://127.0.0.1:{}", free_port())],
                    &ClientTls::default(),
                )
                .unwrap()
            },
            prefix: b"/x/".to_vec(),
            event_retention: 10,
            runtime: Some(tokio::runtime::Runtime::new().unwrap()),
            taken: std::sync::Mutex::new(None),
        };
        let err = store.commit(&[Write::Event(conformance::event(1, "a"))], None);
        assert!(matches!(err, Err(StoreError::Unavailable(_))), "{err:?}");
    }
}
