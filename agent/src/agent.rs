//! The agent's main loop: it ties the link with the coordinator
//! (`link.rs`) to the role and hook driver (`driver.rs`) and the health
//! checks, and stops cleanly. Every turn fences expired leases first (see
//! `driver.rs`).

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::checks::{self, CheckBoard};
use crate::config::AgentConfig;
use crate::driver::Driver;
use crate::identity::{self, Identity};
use crate::link::{Link, LinkEvent, PeerAdvert};
use crate::role_log::RoleLog;
use crate::sync::{RoleBoard, SyncBoard};
use tokio::sync::watch;

pub use crate::link::{DUPLICATE_EXIT_STATUS, DuplicateNode};

/// Running hooks get this long to finish when the agent stops.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a stopping agent waits for the coordinator to take its last
/// messages (hook results, goodbye).
const FLUSH_GRACE: Duration = Duration::from_secs(2);

pub struct Agent {
    config: AgentConfig,
    identity: Identity,
    /// The instance that stopped cleanly before this one, named in every
    /// Hello (see `identity::read_previous_instance`).
    previous_instance: Option<String>,
    link: Link,
    driver: Driver,
    /// Latest verdicts of the health checks.
    checks: CheckBoard,
    /// Stops the running checks (at the end, or when a reload replaces
    /// them).
    stop_checks: CancellationToken,
    /// The state syncs' shared board, and this node's roles as they see
    /// them (published every turn).
    syncs: SyncBoard,
    roles_tx: watch::Sender<RoleBoard>,
}

impl Agent {
    pub fn new(config: AgentConfig) -> anyhow::Result<Agent> {
        let identity = Identity::load(&config.state_dir)?;
        let role_log = RoleLog::open(
            config.role_log.as_deref(),
            &config.node_id,
            identity.short(),
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot open the role log {}: {e}",
                config
                    .role_log
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display()
            )
        })?;
        let previous_instance =
            identity::read_previous_instance(&config.state_dir, &config.node_id);
        let syncs = SyncBoard::default();
        Ok(Agent {
            link: Link::new(
                config.coordinators.clone(),
                config.tls.clone(),
                config.node_id.clone(),
                identity.clone(),
                syncs.clone(),
            ),
            driver: Driver::new(
                config.node_id.clone(),
                config.hooks.clone(),
                role_log,
                syncs.clone(),
            ),
            syncs,
            roles_tx: watch::channel(RoleBoard::new()).0,
            config,
            identity,
            previous_instance,
            checks: CheckBoard::default(),
            stop_checks: CancellationToken::new(),
        })
    }

    /// Runs until `shutdown` is cancelled, or until another agent process
    /// has held this node id for long enough that this one is surely the
    /// duplicate ([`DuplicateNode`]).
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(node = %self.config.node_id, instance = %self.identity.short(), node_uuid = %self.identity.node_uuid, coordinators = ?self.config.coordinators, "agent starting");
        self.checks = checks::start(&self.config.checks, &self.stop_checks, None);
        self.start_syncs(&shutdown).await?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut outcome = Ok(());
        loop {
            self.driver.fence_expired();
            let board = self.driver.role_board();
            self.roles_tx.send_if_modified(|current| {
                let changed = *current != board;
                if changed {
                    *current = board;
                }
                changed
            });
            self.driver.drive_hooks();
            self.deliver_reports();
            let lease_wake = self.driver.until_lease_end();
            let check_changed = self.checks.changed.clone();
            let reload = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = sleep_for(lease_wake), if lease_wake.is_some() => {}
                Some(done) = self.driver.hook_done() => self.driver.on_hook_done(done),
                // A check flipped: tell the coordinator now.
                _ = check_changed.notified() => self.heartbeat(),
                _ = reload => self.reload(),
                event = self.link.next() => match event {
                    Ok(event) => self.on_link(event),
                    Err(duplicate) => {
                        outcome = Err(duplicate.into());
                        break;
                    }
                },
            }
        }
        self.stop().await;
        self.stop_checks.cancel();
        outcome
    }

    /// Starts the peer service and the state syncs, if any are configured,
    /// and what the Hello advertises for them.
    async fn start_syncs(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        if self.config.syncs.is_empty() {
            return Ok(());
        }
        let tls = match (
            &self.config.tls.ca,
            &self.config.tls.cert,
            &self.config.tls.key,
        ) {
            (Some(ca), Some(cert), Some(key)) => {
                Some(crate::sync::tls::PeerTls::load(ca, cert, key)?)
            }
            _ => None,
        };
        let started = crate::sync::start(
            crate::sync::Setup {
                node_id: self.config.node_id.clone(),
                state_dir: self.config.state_dir.clone(),
                syncs: self.config.syncs.clone(),
                listen: self.config.peer_listen.clone(),
                tls,
            },
            self.syncs.clone(),
            self.roles_tx.subscribe(),
            shutdown.clone(),
        )
        .await?;
        let advert = match (&self.config.peer_advertise, started.peer_port) {
            (Some(fixed), _) => PeerAdvert::Fixed(fixed.clone()),
            (None, Some(port)) => PeerAdvert::Port(port),
            (None, None) => PeerAdvert::None,
        };
        self.link.advertise_peer(advert);
        Ok(())
    }

    /// SIGHUP: the configuration again — checks, hooks and the log level
    /// change now, without touching the session or any role; anything
    /// wrong in it is refused whole and the running configuration stays.
    fn reload(&mut self) {
        let new = match AgentConfig::load(&self.config.source) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(
                    "configuration not reloaded (SIGHUP), the running one stays: {}",
                    format!("{e:#}").replace('\n', " ")
                );
                return;
            }
        };
        let problems = new.check_files();
        if !problems.is_empty() {
            tracing::error!(
                "configuration not reloaded (SIGHUP), the running one stays: {}",
                problems.join("; ")
            );
            return;
        }
        if let Err(e) = proto::logging::set_level(&new.log.level) {
            tracing::error!("configuration not reloaded (SIGHUP), the running one stays: {e}");
            return;
        }
        let mut changed = Vec::new();
        if new.log.level != self.config.log.level {
            changed.push("[log] level");
        }
        if format!("{:?}", new.hooks) != format!("{:?}", self.config.hooks) {
            self.driver.set_hooks(new.hooks.clone());
            changed.push("[hooks]");
        }
        if format!("{:?}", new.checks) != format!("{:?}", self.config.checks) {
            let before = self.checks.snapshot();
            self.stop_checks.cancel();
            self.stop_checks = CancellationToken::new();
            self.checks = checks::start(&new.checks, &self.stop_checks, Some(&before));
            // The coordinator hears of the new set of checks at once.
            self.heartbeat();
            changed.push("[[checks]]");
        }
        let old = &self.config;
        let waiting: Vec<&str> = [
            ("node_id", old.node_id != new.node_id),
            ("coordinator", old.coordinators != new.coordinators),
            ("state_dir", old.state_dir != new.state_dir),
            ("role_log", old.role_log != new.role_log),
            ("tls", format!("{:?}", old.tls) != format!("{:?}", new.tls)),
            ("[log] format", old.log.format != new.log.format),
            ("[[sync]]", old.syncs != new.syncs),
            ("peer_listen", old.peer_listen != new.peer_listen),
            ("peer_advertise", old.peer_advertise != new.peer_advertise),
        ]
        .into_iter()
        .filter_map(|(key, differs)| differs.then_some(key))
        .collect();
        if !waiting.is_empty() {
            tracing::warn!(keys = ?waiting, "changed in the configuration, but they take effect only at the next start");
        }
        tracing::info!(changed = ?changed, "configuration reloaded (SIGHUP)");
        self.config.hooks = new.hooks;
        self.config.checks = new.checks;
        self.config.log.level = new.log.level;
    }

    fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Opened => self.link.hello(
                self.driver.claims(),
                self.checks.snapshot(),
                self.previous_instance.clone(),
            ),
            LinkEvent::HeartbeatDue => self.heartbeat(),
            LinkEvent::Grants { sent_at, grants } => {
                self.driver.on_grants(sent_at, grants);
                if let Some(ttl) = self.driver.shortest_lease() {
                    self.link.fit_retry_to_lease(ttl);
                }
            }
            LinkEvent::Assignment(a) => self.driver.on_assignment(a),
            LinkEvent::Release(r) => self.driver.on_release(r),
            LinkEvent::Nothing => {}
        }
    }

    fn heartbeat(&mut self) {
        self.link
            .heartbeat(self.driver.claims(), self.checks.snapshot());
    }

    fn deliver_reports(&mut self) {
        for result in self.driver.take_reports() {
            self.link.report(result);
        }
    }

    /// Stops cleanly: steps down where the group wants no shutdown grace
    /// (so the role moves at once), gives hooks a moment to finish, reports
    /// them, leaves its instance id for the next agent, says goodbye, and
    /// waits for the coordinator to take it all.
    async fn stop(&mut self) {
        tracing::info!("agent stopping");
        self.driver.step_down_for_shutdown();
        self.driver.drive_hooks();
        let deadline = Instant::now() + STOP_GRACE;
        while self.driver.hooks_running() {
            match tokio::time::timeout_at(deadline, self.driver.hook_done()).await {
                Ok(Some(done)) => {
                    self.driver.on_hook_done(done);
                    // A step-down may still be queued behind a hook.
                    self.driver.drive_hooks();
                }
                _ => break,
            }
        }
        self.driver.cancel_hooks();
        self.deliver_reports();
        // Only a process the coordinator accepted can have held a role, so
        // only it replaces the proof; one that never got in (a refused
        // duplicate, a start cut short) leaves the file as it found it.
        let left = if self.link.was_welcomed() {
            identity::leave_instance(
                &self.config.state_dir,
                &self.config.node_id,
                &self.identity.instance,
            )
        } else {
            Ok(())
        };
        if let Err(e) = left {
            tracing::warn!(error = %e, "cannot leave this agent's instance id for the next one: a restart within a group's shutdown grace will count as a new agent");
        }
        self.link.goodbye(FLUSH_GRACE).await;
        tracing::info!("agent stopped");
    }
}

async fn sleep_for(d: Option<Duration>) {
    tokio::time::sleep(d.unwrap_or_default()).await
}
