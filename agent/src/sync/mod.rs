//! State sync: a group's primary keeps its standbys' copies of files and
//! directories (`[[sync]]`) current. The primary scans each path every
//! `interval` into a content-addressed snapshot and serves it on the
//! agent's peer service (`peer.rs`); every other member asks it for the
//! current manifest, fetches only the content it lacks (`fetch.rs`), and
//! puts the new copy in place whole (`apply.rs`), never while it acts as
//! primary itself. The coordinator only tells members who the primary is
//! and where it listens, and hears each member's state (`board.rs`).

pub mod apply;
pub mod board;
pub mod config;
pub mod fetch;
pub mod held;
pub mod manifest;
pub mod peer;
pub mod rate;
pub mod tls;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::v1 as pb;
use proto::vocab::{Role, SyncState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use board::{RoleBoard, RoleView, SyncBoard};
pub use config::SyncConfig;

use apply::Staging;
use fetch::{Answer, Source};
use held::Held;
use manifest::{ScanError, Scanner};
use peer::{PeerState, Published, Served};
use rate::RateLimit;

/// How often a scan that met a changing file is tried again before the
/// round is given up (the next interval tries anew).
const SCAN_TRIES: u32 = 5;
/// The confirmation time is written to the state file at most this often.
const PERSIST_EVERY: Duration = Duration::from_secs(30);
/// A failed fetch waits at least this long before the next attempt.
const RETRY_MIN: Duration = Duration::from_secs(1);

/// The running state sync of one agent.
pub struct Syncs {
    /// The port of the peer service, when any sync is configured.
    pub peer_port: Option<u16>,
}

/// What `start` needs.
pub struct Setup {
    pub node_id: String,
    pub state_dir: PathBuf,
    pub syncs: Vec<SyncConfig>,
    /// `peer_listen`: host:port to bind.
    pub listen: String,
    pub tls: Option<tls::PeerTls>,
}

/// Binds the peer service and starts one task per sync (nothing when no
/// sync is configured).
pub async fn start(
    setup: Setup,
    board: SyncBoard,
    roles: watch::Receiver<RoleBoard>,
    shutdown: CancellationToken,
) -> anyhow::Result<Syncs> {
    if setup.syncs.is_empty() {
        return Ok(Syncs { peer_port: None });
    }
    let listener = tokio::net::TcpListener::bind(&setup.listen)
        .await
        .map_err(|e| anyhow::anyhow!("peer_listen {}: cannot listen: {e}", setup.listen))?;
    let port = listener.local_addr()?.port();
    let mut served = HashMap::new();
    for config in &setup.syncs {
        served.insert(
            config.name.clone(),
            Arc::new(Served::new(
                config.clone(),
                config.rate().map(|r| Arc::new(RateLimit::new(r))),
            )),
        );
    }
    let state = Arc::new(PeerState::new(
        setup.node_id.clone(),
        setup.tls.is_some(),
        roles.clone(),
        served.clone(),
    ));
    let server_tls = setup.tls.as_ref().map(|t| t.server.clone());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = peer::serve(listener, state, server_tls, stop).await {
            tracing::error!(error = %format!("{e:#}"), "the peer service stopped: standbys cannot fetch from this node");
        }
    });
    tracing::info!(
        port,
        syncs = setup.syncs.len(),
        tls = setup.tls.is_some(),
        "peer service listening"
    );
    for config in setup.syncs {
        let exclude = config.exclude_set()?;
        let worker = Worker {
            node_id: setup.node_id.clone(),
            state_file: held::file(&setup.state_dir, &config.name),
            held: held::read(&held::file(&setup.state_dir, &config.name)),
            scanner: Arc::new(Mutex::new(Scanner::new(config.path.clone(), exclude))),
            staging: Staging::for_path(&config.path),
            received: Arc::new(AtomicU64::new(0)),
            served: served[&config.name].clone(),
            board: board.clone(),
            roles: roles.clone(),
            tls: setup.tls.clone(),
            client: None,
            persisted: None,
            config,
        };
        worker.report();
        tokio::spawn(worker.run(shutdown.clone()));
    }
    Ok(Syncs {
        peer_port: Some(port),
    })
}

struct Worker {
    config: SyncConfig,
    node_id: String,
    state_file: PathBuf,
    held: Held,
    scanner: Arc<Mutex<Scanner>>,
    staging: Staging,
    received: Arc<AtomicU64>,
    served: Arc<Served>,
    board: SyncBoard,
    roles: watch::Receiver<RoleBoard>,
    tls: Option<tls::PeerTls>,
    /// The open client and whom it reaches.
    client: Option<((String, String), PeerClient)>,
    /// When the state file was last written.
    persisted: Option<Instant>,
}

type PeerClient = proto::v1::peer_service_client::PeerServiceClient<tonic::transport::Channel>;

/// What one round found to do.
enum Round {
    Publish { epoch: u64 },
    Fetch(Source),
    Idle,
}

impl Worker {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut roles = self.roles.clone();
        let mut last_again = false;
        loop {
            let round = self.plan();
            let again_now = match round {
                Round::Publish { epoch } => {
                    self.publish(epoch).await;
                    false
                }
                Round::Fetch(source) => {
                    self.unpublish();
                    // A role change ends the transfer at once: a node that
                    // became primary publishes, one told of a new primary
                    // fetches from it.
                    let before = shape_of(&self.roles, &self.config);
                    let mut watch = self.roles.clone();
                    let config = self.config.clone();
                    let changed = async move {
                        while watch.changed().await.is_ok() {
                            if shape_of(&watch, &config) != before {
                                return;
                            }
                        }
                        std::future::pending::<()>().await
                    };
                    let applied = tokio::select! {
                        applied = self.fetch(&source) => applied,
                        _ = changed => {
                            self.client = None;
                            tracing::info!(sync = %self.config.name, "the roles changed: the transfer under way is dropped");
                            false
                        }
                    };
                    // At once again after a new copy (the primary may have
                    // moved on meanwhile), but not twice in a row.
                    let again = applied && !last_again;
                    last_again = again;
                    again
                }
                Round::Idle => {
                    self.unpublish();
                    false
                }
            };
            self.report();
            if again_now {
                continue;
            }
            let wait = if self.served.problem().is_empty() {
                self.config.interval
            } else {
                self.config.interval.max(RETRY_MIN)
            };
            let before = shape_of(&self.roles, &self.config);
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline) => break,
                    changed = roles.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if shape_of(&self.roles, &self.config) != before {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Serves no snapshot (this node is not the acting primary).
    fn unpublish(&self) {
        self.served.publish(None);
    }

    fn groups(&self) -> Vec<String> {
        self.roles
            .borrow()
            .keys()
            .filter(|g| self.config.covers(g))
            .cloned()
            .collect()
    }

    fn plan(&self) -> Round {
        let roles = self.roles.borrow();
        let now = crate::clock::now();
        let mine: Vec<(&String, &RoleView)> = roles
            .iter()
            .filter(|(g, _)| self.config.covers(g))
            .collect();
        if let Some(epoch) = mine
            .iter()
            .filter(|(_, v)| v.may_act(now))
            .map(|(_, v)| v.epoch)
            .max()
        {
            return Round::Publish { epoch };
        }
        if mine.iter().any(|(_, v)| v.role != Role::Secondary) {
            // Primary without a lease yet, or fenced: its copy stays.
            return Round::Idle;
        }
        mine.iter()
            .find_map(|(g, v)| {
                Some(Source {
                    group: (*g).clone(),
                    epoch: v.epoch,
                    primary: v.primary.clone().filter(|p| *p != self.node_id)?,
                    address: v.primary_peer.clone()?,
                })
            })
            .map_or(Round::Idle, Round::Fetch)
    }

    /// Scans the path off the async threads, retrying while files change.
    async fn scan(&self) -> Result<Option<manifest::Scan>, String> {
        let scanner = self.scanner.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut scanner = scanner.lock().unwrap_or_else(|e| e.into_inner());
            let mut tries = 0;
            loop {
                match scanner.scan() {
                    Err(ScanError::Changing { path }) if tries + 1 < SCAN_TRIES => {
                        tries += 1;
                        tracing::debug!(path = %path.display(), "changed while scanned: scanning again");
                        std::thread::sleep(Duration::from_millis(50 << tries));
                    }
                    Err(ScanError::Missing(_)) => return Ok(None),
                    Err(e) => return Err(e.to_string()),
                    Ok(scan) => return Ok(Some(scan)),
                }
            }
        })
        .await;
        result.unwrap_or_else(|e| Err(format!("the scan stopped: {e}")))
    }

    async fn publish(&mut self, epoch: u64) {
        if self.staging.dir.exists() {
            // Left by a transfer this node no longer needs.
            self.staging.clear();
        }
        match self.scan().await {
            Ok(Some(scan)) => {
                let changed = self.held.snapshot != scan.manifest.id;
                if changed {
                    tracing::info!(sync = %self.config.name, snapshot = %short(&scan.manifest.id), epoch, files = scan.stats.len(), bytes = scan.manifest.bytes, "publishing a new snapshot");
                }
                self.held = Held {
                    snapshot: scan.manifest.id.clone(),
                    local: scan.manifest.id.clone(),
                    epoch,
                    current: true,
                    confirmed: Some(Instant::now()),
                };
                self.served.publish(Some(Published::new(
                    scan.manifest,
                    scan.stats,
                    self.config.path.clone(),
                )));
                self.clear_error();
                self.persist(changed);
            }
            Ok(None) => {
                self.held = Held::default();
                self.fail(format!(
                    "{} does not exist: nothing to publish",
                    self.config.path.display()
                ));
                self.unpublish();
            }
            Err(e) => self.fail(format!("no snapshot: {e}")),
        }
    }

    fn clear_error(&self) {
        self.served.set_problem(String::new());
    }

    fn fail(&self, error: String) {
        if self.served.problem() != error {
            tracing::warn!(sync = %self.config.name, "{error}");
        }
        self.served.set_problem(error);
    }

    fn persist(&mut self, now: bool) {
        if !now
            && self
                .persisted
                .is_some_and(|at| at.elapsed() < PERSIST_EVERY)
        {
            return;
        }
        if let Err(e) = held::write(&self.state_file, &self.held) {
            tracing::warn!(file = %self.state_file.display(), error = %e, "cannot write the sync's state");
        }
        self.persisted = Some(Instant::now());
    }

    fn client(&mut self, source: &Source) -> Result<PeerClient, String> {
        let key = (source.address.clone(), source.primary.clone());
        if let Some((k, client)) = &self.client
            && *k == key
        {
            return Ok(client.clone());
        }
        let channel = tls::channel(&source.address, &source.primary, self.tls.as_ref())?;
        let client = fetch::client(channel);
        self.client = Some((key, client.clone()));
        Ok(client)
    }

    /// One round as a standby; true when a new copy was put in place
    /// (look again at once: the primary may have moved on meanwhile).
    async fn fetch(&mut self, source: &Source) -> bool {
        match self.try_fetch(source).await {
            Ok(applied) => {
                self.clear_error();
                applied
            }
            Err(e) => {
                // The connection may be what failed: the next round opens
                // a new one.
                self.client = None;
                self.fail(format!("from {} ({}): {e}", source.primary, source.address));
                false
            }
        }
    }

    async fn try_fetch(&mut self, source: &Source) -> Result<bool, String> {
        let local = self.scan().await?;
        let seen = local
            .as_ref()
            .map(|s| s.manifest.id.clone())
            .unwrap_or_default();
        // Unchanged since it was put in place: it is the snapshot held,
        // whatever this node's own `exclude` leaves out of its scan.
        let have = if !seen.is_empty() && seen == self.held.local {
            self.held.snapshot.clone()
        } else {
            seen.clone()
        };
        if have != self.held.snapshot {
            // The copy is not what this node last put there (edited, or
            // removed): its origin is unknown.
            if !self.held.snapshot.is_empty() && !have.is_empty() {
                tracing::warn!(sync = %self.config.name, path = %self.config.path.display(), "the copy was changed here since the last snapshot this node received: the primary's copy replaces it");
            }
            self.held = Held {
                snapshot: have.clone(),
                local: seen.clone(),
                epoch: 0,
                current: false,
                confirmed: None,
            };
            self.persist(true);
        }
        let mut client = self.client(source)?;
        let asked_at = Instant::now();
        let answer = fetch::manifest(
            &mut client,
            source,
            &self.config.name,
            &have,
            self.held.epoch,
        )
        .await?;
        let (manifest, epoch) = match answer {
            Answer::Current { epoch } => {
                let was_current = self.held.current;
                self.held.current = true;
                self.held.epoch = epoch;
                self.held.confirmed = Some(asked_at);
                self.persist(!was_current);
                return Ok(false);
            }
            // The same content, announced as new: nothing to rebuild.
            Answer::Newer { manifest, epoch } if manifest.id == have => {
                self.held.current = true;
                self.held.epoch = epoch;
                self.held.confirmed = Some(asked_at);
                self.persist(false);
                return Ok(false);
            }
            Answer::Newer { manifest, epoch } => (manifest, epoch),
        };
        if self.held.current {
            self.held.current = false;
            self.persist(true);
            self.report();
        }
        tracing::info!(sync = %self.config.name, from = %source.primary, snapshot = %short(&manifest.id), epoch, bytes = manifest.bytes, "fetching a new snapshot");
        self.staging
            .prepare()
            .map_err(|e| format!("cannot prepare {}: {e}", self.staging.dir.display()))?;
        let mut local_files: HashMap<Vec<u8>, PathBuf> = HashMap::new();
        if let Some(local) = &local {
            for e in &local.manifest.entries {
                if e.kind == pb::EntryKind::File as i32 {
                    let path = if e.path.is_empty() {
                        self.config.path.clone()
                    } else {
                        self.config.path.join(&e.path)
                    };
                    local_files.insert(e.sha256.clone(), path);
                }
            }
        }
        // Files this node's `exclude` leaves out of its scans but the
        // primary publishes are used as they are, if their content is the
        // same (hashed here, off the async threads).
        let excluded_here: Vec<(Vec<u8>, u64, PathBuf)> = {
            let scanner = self.scanner.lock().unwrap_or_else(|e| e.into_inner());
            manifest
                .entries
                .iter()
                .filter(|e| e.kind == pb::EntryKind::File as i32 && scanner.excluded(&e.path))
                .filter(|e| !local_files.contains_key(&e.sha256))
                .map(|e| (e.sha256.clone(), e.size, self.config.path.join(&e.path)))
                .collect()
        };
        if !excluded_here.is_empty() {
            let found = tokio::task::spawn_blocking(move || {
                excluded_here
                    .into_iter()
                    .filter(|(sha, size, path)| manifest::same_content(path, *size, sha))
                    .map(|(sha, _, path)| (sha, path))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            local_files.extend(found);
        }
        let have_hashes: HashSet<Vec<u8>> = local_files.keys().cloned().collect();
        let transfer = fetch::Transfer {
            source,
            sync: &self.config.name,
            staging: &self.staging,
            limit: self.served.limit.as_deref(),
            received: &self.received,
        };
        let fetched = fetch::contents(&mut client, &transfer, &manifest, &have_hashes).await;
        if let Err(e) = fetched {
            if e.contains("No space left") || e.contains("os error 28") {
                // Free what was staged; the old copy is intact.
                self.staging.clear();
            }
            return Err(e);
        }
        let groups = self.groups();
        let scanner = self.scanner.clone();
        let target = self.config.path.clone();
        let staging = self.staging.clone();
        let board = self.board.clone();
        let result = tokio::task::spawn_blocking(move || {
            let scanner = scanner.lock().unwrap_or_else(|e| e.into_inner());
            let built = apply::build(&manifest, &target, &staging, &local_files, &scanner)
                .map_err(|e| format!("cannot build the new copy: {e}"))?;
            let swapped = board.unless_acting(&groups, || apply::swap(&built, &target, &staging));
            staging.clear();
            match swapped {
                None => Err(
                    "this node acts as primary now: the fetched snapshot is not applied".to_owned(),
                ),
                Some(Err(e)) => Err(format!("cannot put the new copy in place: {e}")),
                Some(Ok(())) => Ok((manifest.as_seen_by(&scanner), manifest.id)),
            }
        })
        .await
        .map_err(|e| format!("applying stopped: {e}"))?;
        let (local, applied) = result?;
        tracing::info!(sync = %self.config.name, snapshot = %short(&applied), epoch, "new snapshot in place");
        self.held = Held {
            snapshot: applied,
            local,
            epoch,
            current: true,
            confirmed: Some(asked_at),
        };
        self.persist(true);
        Ok(true)
    }

    /// Tells the board this sync's state in each of its groups.
    fn report(&self) {
        let roles = self.roles.borrow();
        let now = crate::clock::now();
        // Before its first look, a copy that exists is one of unknown
        // freshness.
        let exists = std::fs::symlink_metadata(&self.config.path).is_ok();
        let held_state = if !exists {
            SyncState::None
        } else if !self.held.snapshot.is_empty() && self.held.current {
            SyncState::Fresh
        } else {
            SyncState::Stale
        };
        let error = self.served.problem();
        let statuses = roles
            .iter()
            .filter(|(g, _)| self.config.covers(g))
            .map(|(group, view)| {
                let source = view.may_act(now);
                let state = if source && error.is_empty() {
                    SyncState::Source
                } else {
                    held_state
                };
                let live = board::Live {
                    confirmed: self.held.confirmed,
                    sent: self.served.sent.clone(),
                    received: self.received.clone(),
                };
                (
                    pb::SyncStatus {
                        group: group.clone(),
                        name: self.config.name.clone(),
                        snapshot: self.held.snapshot.clone(),
                        epoch: self.held.epoch,
                        age_ms: None,
                        bytes: 0,
                        state: pb::SyncState::from(state) as i32,
                        error: error.clone(),
                    },
                    live,
                )
            })
            .collect();
        self.board
            .set(&self.config.name, &self.config.groups, held_state, statuses);
    }
}

/// The groups of `config` and this node's role in each, leases aside:
/// what decides the next round.
fn shape_of(roles: &watch::Receiver<RoleBoard>, config: &SyncConfig) -> Vec<(String, RoleView)> {
    roles
        .borrow()
        .iter()
        .filter(|(g, _)| config.covers(g))
        .map(|(g, v)| {
            let acting = v.acting_until.map(|_| Duration::ZERO);
            (
                g.clone(),
                RoleView {
                    acting_until: acting,
                    ..v.clone()
                },
            )
        })
        .collect()
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
