//! Randomized fault injection against real processes: a coordinator and
//! three agents (each behind its own proxy), two groups, and a schedule of
//! faults drawn from a seed. After each fault heals, the run checks that
//! every group converges to exactly one primary within the stated bound;
//! after every coordinator restart, that every acknowledged admin change is
//! still there. At the end the checker reads the agents' role logs and
//! checks that primaries never overlapped and epochs only grew.
//!
//! The schedule (which fault, which node, how long) is a function of the
//! seed; real timing still varies from run to run.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::checker::{self, Inflicted};
use crate::proxy::Mode;
use crate::sinks::WebhookReceiver;
use crate::{Cluster, SmallDisk, member, member_order};

/// Beyond `failover_timeout × (1 + rho)`, how long a group may take to have
/// exactly one primary again after a fault heals: an agent reconnects
/// within its longest backoff (5 s, jittered), then takes its role within a
/// heartbeat; one more second absorbs process start-up on a loaded machine.
/// (Agents that hold a lease reconnect faster: within a quarter of it.)
pub const CONVERGENCE_SLACK: Duration = Duration::from_secs(6);

/// The groups' failback delay: the default. A member that failed is still
/// promoted at once when nobody else can serve, so convergence never waits
/// for it (the bound above does not include it).
const FAILBACK_DELAY: Duration = Duration::from_secs(60);

const NODES: [&str; 3] = ["n-1", "n-2", "n-3"];
const GROUPS: [(&str, [&str; 3]); 2] = [
    ("alpha", ["n-1", "n-2", "n-3"]),
    ("beta", ["n-3", "n-1", "n-2"]),
];
/// The coordinator's data directory: far more than a run writes, small
/// enough to fill in a moment.
const DISK_SIZE: &str = "128m";
/// The shared secret of the coordinator's webhook sink in the runs.
const SINK_SECRET: &str = "fault-runner-sink-secret";
/// How long a sink may take, at the end, to deliver what it missed (its
/// backoff reaches a minute).
const SINK_CATCH_UP: Duration = Duration::from_secs(90);
/// How long the synced copies may take to agree once the faults end.
const SYNC_CATCH_UP: Duration = Duration::from_secs(60);

const REPLICAS: usize = 3;
const ETCD_MEMBERS: usize = 3;
/// The replicas' leader lease (the coordinator's default).
const LEADER_LEASE: Duration = Duration::from_secs(2);

/// A member with no agent, added and removed by admin faults.
const SPARE: &str = "n-4";

#[derive(Debug, Clone, Copy)]
pub struct FaultConfig {
    pub seed: u64,
    /// Faults keep coming until this much time has passed.
    pub duration: Duration,
    pub heartbeat: Duration,
    pub failover_timeout: Duration,
    /// TLS with node certificates (adds the impostor fault).
    pub tls: bool,
    /// Three coordinator replicas on a three-member etcd cluster instead
    /// of one coordinator on sled: the coordinator faults become replica
    /// and etcd faults.
    pub replicas: bool,
}

impl FaultConfig {
    pub fn new(seed: u64, duration: Duration) -> FaultConfig {
        FaultConfig {
            seed,
            duration,
            heartbeat: Duration::from_millis(100),
            failover_timeout: Duration::from_secs(1),
            tls: false,
            replicas: false,
        }
    }

    /// The same, with coordinator replicas on etcd.
    pub fn replicated(seed: u64, duration: Duration) -> FaultConfig {
        FaultConfig {
            replicas: true,
            ..FaultConfig::new(seed, duration)
        }
    }

    /// The same, with TLS and node certificates.
    pub fn secure(seed: u64, duration: Duration) -> FaultConfig {
        FaultConfig {
            tls: true,
            ..FaultConfig::new(seed, duration)
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u32>,
    /// Times a group's primary moved to another node.
    pub failovers: usize,
    pub slowest_convergence_ms: u64,
    /// The longest time a group had nobody acting as primary while a
    /// coordinator was running (lease waits included: they are the price
    /// of never having two).
    pub dark_ms: u64,
    /// Events the coordinator's webhook sink got (with one coordinator).
    pub notified: usize,
    /// Every running member of the first group held the primary's synced
    /// copy at the end.
    pub synced: bool,
    pub violations: Vec<String>,
    /// Where the run's logs were kept (only when something was violated).
    pub kept_logs: Option<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: u32 = self.faults.values().sum();
        let kinds: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        write!(
            f,
            "seed {}: {total} faults ({}), {} failovers, slowest convergence {} ms, \
             dark time {} ms, {} events notified, synced copies {}, {} violations",
            self.seed,
            kinds.join(", "),
            self.failovers,
            self.slowest_convergence_ms,
            self.dark_ms,
            self.notified,
            if self.synced {
                "in step"
            } else {
                "not in step"
            },
            self.violations.len()
        )?;
        for v in &self.violations {
            write!(f, "\n  VIOLATION: {v}")?;
        }
        if let Some(dir) = &self.kept_logs {
            write!(f, "\n  logs kept in {dir}")?;
        }
        Ok(())
    }
}

/// Runs one seed's schedule and checks every promise.
pub fn run(config: FaultConfig) -> Report {
    let mut run = Run::start(config);
    let end = Instant::now() + config.duration;
    while Instant::now() < end {
        run.step();
    }
    run.finish()
}

/// An admin change sent while the coordinator was being killed.
struct Raced {
    group: String,
    node: String,
    position: usize,
    acknowledged: bool,
}

struct Run {
    c: Cluster,
    /// The coordinator's data directory, a small file system to fill up
    /// (with one coordinator on sled).
    disk: Option<SmallDisk>,
    rng: StdRng,
    config: FaultConfig,
    inflicted: Vec<Inflicted>,
    report: Report,
    /// Acknowledged member order of every group that exists.
    model: BTreeMap<String, Vec<String>>,
    /// Spans (ns) during which no coordinator was running.
    coordinator_down: Vec<(u128, u128)>,
    /// The coordinator's webhook sink (with one coordinator): every event
    /// must reach it at least once, in order, whatever the faults.
    sink: Option<WebhookReceiver>,
    /// Steps taken (names the files the primary adds to its copy).
    steps: u64,
}

impl Run {
    fn start(config: FaultConfig) -> Run {
        let (mut c, disk) = if config.replicas {
            (Cluster::start_replicated(REPLICAS, ETCD_MEMBERS), None)
        } else {
            let mut c = if config.tls {
                Cluster::prepare_secure(&[])
            } else {
                Cluster::prepare()
            };
            let disk = c.use_small_disk(DISK_SIZE);
            let sink = WebhookReceiver::start(SINK_SECRET);
            let file = c.path("notify.toml");
            std::fs::write(
                &file,
                format!(
                    "[[notify]]\nkind = \"webhook\"\nname = \"runner\"\nurl = \"{}\"\nsecret = \"{SINK_SECRET}\"\ntimeout = \"2s\"\n",
                    sink.url()
                ),
            )
            .expect("the sink's configuration");
            c.coordinator_args
                .extend(["--config".to_owned(), file.display().to_string()]);
            c.start_coordinator();
            (c, Some((disk, sink)))
        };
        let (disk, sink) = match disk {
            Some((disk, sink)) => (Some(disk), Some(sink)),
            None => (None, None),
        };
        // Every agent syncs a directory of the first group: the primary's
        // copy follows it through every fault.
        c.sync_group = Some(GROUPS[0].0.to_owned());
        for (i, node) in NODES.iter().chain([SPARE].iter()).enumerate() {
            let dir = c.sync_dir(node);
            std::fs::create_dir_all(&dir).expect("sync directory");
            std::fs::write(dir.join("seed"), format!("{node} {i}\n")).expect("sync seed");
        }
        for (i, node) in NODES.iter().enumerate() {
            c.start_agent_proxied(node, config.seed * 10 + i as u64);
        }
        c.wait_nodes(&NODES);
        let mut run = Run {
            c,
            disk,
            rng: StdRng::seed_from_u64(config.seed),
            config,
            inflicted: Vec::new(),
            report: Report {
                seed: config.seed,
                ..Report::default()
            },
            model: BTreeMap::new(),
            coordinator_down: Vec::new(),
            sink,
            steps: 0,
        };
        for (name, members) in GROUPS {
            run.create_group(name, &members);
        }
        run.converge();
        run
    }

    fn settings(&self) -> [String; 6] {
        [
            "--heartbeat-interval".into(),
            format!("{}ms", self.config.heartbeat.as_millis()),
            "--failover-timeout".into(),
            format!("{}ms", self.config.failover_timeout.as_millis()),
            "--failback-delay".into(),
            format!("{}ms", FAILBACK_DELAY.as_millis()),
        ]
    }

    fn create_group(&mut self, name: &str, members: &[&str]) -> bool {
        let settings = self.settings();
        let mut args = vec!["group", "add", name];
        for m in members {
            args.extend(["--member", m]);
        }
        args.extend(settings.iter().map(String::as_str));
        let ok = self.c.ctl(&args).status.success();
        if ok {
            self.model.insert(
                name.to_owned(),
                members.iter().map(|m| m.to_string()).collect(),
            );
        }
        ok
    }

    fn count(&mut self, kind: &'static str) {
        *self.report.faults.entry(kind).or_default() += 1;
    }

    /// A random duration, as a multiple of the failover timeout.
    fn timeouts(&mut self, range: Range<f64>) -> Duration {
        self.config
            .failover_timeout
            .mul_f64(self.rng.random_range(range))
    }

    fn hold(&mut self, range: Range<f64>) {
        // The length of a fault, not a synchronisation.
        let d = self.timeouts(range);
        std::thread::sleep(d);
    }

    /// Mostly the primary of a random group (faults there matter most),
    /// sometimes any node.
    fn target(&mut self) -> String {
        if self.rng.random_bool(0.75) {
            self.primary_of_random_group()
        } else {
            NODES[self.rng.random_range(0..NODES.len())].to_owned()
        }
    }

    /// `group show`, waiting for an answer (replicas may be electing).
    fn group(&self, name: &str) -> serde_json::Value {
        self.c.ctl_json_eventually(&["group", "show", name])
    }

    fn primary_of_random_group(&mut self) -> String {
        let groups: Vec<String> = GROUPS.iter().map(|(g, _)| g.to_string()).collect();
        let g = &groups[self.rng.random_range(0..groups.len())];
        match self.group(g)["primary"].as_str() {
            Some(p) => p.to_owned(),
            None => NODES[0].to_owned(),
        }
    }

    fn step(&mut self) {
        if self.config.replicas {
            self.replica_step();
        } else {
            self.single_step();
        }
        self.restart_exited_agents();
        self.converge();
        self.change_synced_state();
    }

    /// The first group's primary changes its synced directory (a new
    /// file, the oldest gone), so every failover has something to carry.
    fn change_synced_state(&mut self) {
        self.steps = self.steps.saturating_add(1);
        let Some(g) = self.c.try_ctl_json(&["group", "show", GROUPS[0].0]) else {
            return;
        };
        let Some(primary) = g["primary"].as_str() else {
            return;
        };
        let dir = self.c.sync_dir(primary);
        let _ = std::fs::write(
            dir.join(format!("step-{}", self.steps)),
            format!("{}\n", self.steps),
        );
        if let Some(old) = self.steps.checked_sub(5) {
            let _ = std::fs::remove_file(dir.join(format!("step-{old}")));
        }
    }

    /// At the end every running member of the first group holds the
    /// primary's copy, fresh, within [`SYNC_CATCH_UP`].
    fn check_sync(&mut self) {
        let deadline = Instant::now() + SYNC_CATCH_UP;
        loop {
            let g = self
                .c
                .try_ctl_json(&["group", "show", GROUPS[0].0])
                .unwrap_or_default();
            let state = |node: &str| -> Option<(String, String)> {
                let m = g["members"]
                    .as_array()?
                    .iter()
                    .find(|m| m["node"] == node)?;
                let s = m["syncs"].as_array()?.first()?;
                Some((
                    s["snapshot"].as_str()?.to_owned(),
                    s["state"].as_str()?.to_owned(),
                ))
            };
            let primary = g["primary"].as_str().unwrap_or_default().to_owned();
            let source = state(&primary);
            let running: Vec<&str> = GROUPS[0]
                .1
                .iter()
                .copied()
                .filter(|n| *n != primary && self.c.agents.contains_key(*n))
                .collect();
            let behind: Vec<&str> = running
                .iter()
                .copied()
                .filter(|n| {
                    let source = source.as_ref().map(|(s, _)| s.as_str());
                    state(n).is_none_or(|(snapshot, st)| {
                        Some(snapshot.as_str()) != source || st != "fresh"
                    })
                })
                .collect();
            if source.as_ref().is_some_and(|(_, st)| st == "source") && behind.is_empty() {
                self.report.synced = true;
                return;
            }
            let last = format!("primary {primary} ({source:?}), behind: {behind:?}");
            if Instant::now() > deadline {
                self.report.violations.push(format!(
                    "the synced copies did not converge within {SYNC_CATCH_UP:?}: {last}"
                ));
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// With replicas: the agent faults as with one coordinator, and the
    /// coordinator faults become replica and etcd faults.
    fn replica_step(&mut self) {
        match self.rng.random_range(0..100) {
            0..14 => self.partition(),
            14..20 => self.delay(),
            20..24 => self.reset(),
            24..32 => self.freeze(),
            32..40 => self.kill_agent(),
            40..52 => self.kill_leader(),
            52..58 => self.freeze_leader(),
            58..65 => self.cut_leader_from_etcd(),
            65..71 => self.kill_etcd_member(),
            71..75 => self.etcd_quorum_lost(),
            75..78 => self.restart_follower(),
            78..81 => self.steal_leadership(),
            81..86 => self.duplicate_agent(),
            86..90 => self.hostile_session(),
            _ => self.admin(),
        }
    }

    fn single_step(&mut self) {
        match self.rng.random_range(0..100) {
            0..17 => self.partition(),
            17..25 => self.delay(),
            25..31 => self.reset(),
            31..43 => self.freeze(),
            43..54 => self.kill_agent(),
            54..63 => self.kill_coordinator(),
            63..68 => self.restart_while_partitioned(),
            68..73 => self.crash_after_promotion(),
            73..80 => self.duplicate_agent(),
            80..85 => self.hostile_session(),
            85..90 if self.config.tls => self.impostor_session(),
            85..90 => self.hostile_session(),
            90..94 => self.disk_full(),
            94..96 => self.sink_down(),
            _ => self.admin(),
        }
    }

    /// The webhook receiver goes away for a while (events keep happening
    /// meanwhile), then comes back.
    fn sink_down(&mut self) {
        self.count("sink_down");
        if let Some(sink) = self.sink.as_mut() {
            sink.pause();
        }
        self.admin_change();
        self.hold(1.0..4.0);
        if let Some(sink) = self.sink.as_mut() {
            sink.resume();
        }
    }

    /// Every event the log holds reached the sink at least once, and in
    /// order: each one first arrived after every earlier one had.
    fn check_sink(&mut self) {
        let Some(sink) = self.sink.as_ref() else {
            return;
        };
        let logged: Vec<u64> = self
            .c
            .try_ctl_json(&["events", "--limit", "0"])
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e["seq"].as_u64())
            .collect();
        let deadline = Instant::now() + SINK_CATCH_UP;
        let missing = loop {
            let got: std::collections::BTreeSet<u64> = sink
                .events()
                .iter()
                .filter_map(|e| e["seq"].as_u64())
                .collect();
            let missing: Vec<u64> = logged
                .iter()
                .filter(|s| !got.contains(s))
                .copied()
                .collect();
            if missing.is_empty() || Instant::now() >= deadline {
                break missing;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if !missing.is_empty() {
            self.report.violations.push(format!(
                "the webhook sink never got {} of the {} logged events (first: {:?})",
                missing.len(),
                logged.len(),
                &missing[..missing.len().min(5)]
            ));
        }
        let mut first_seen = Vec::new();
        for seq in sink.events().iter().filter_map(|e| e["seq"].as_u64()) {
            if !first_seen.contains(&seq) {
                first_seen.push(seq);
            }
        }
        if first_seen.windows(2).any(|w| w[0] > w[1]) {
            self.report.violations.push(format!(
                "the webhook sink got events out of order: {first_seen:?}"
            ));
        }
        if sink.forged() > 0 {
            self.report.violations.push(format!(
                "{} deliveries had a wrong signature",
                sink.forged()
            ));
        }
        self.report.notified = first_seen.len();
    }

    /// An agent that gave up (refused as a duplicate while an impostor or
    /// its own duplicate held its node id) is started again, as systemd
    /// would after an operator fixed the cause.
    fn restart_exited_agents(&mut self) {
        for node in NODES {
            if self.c.agents.get_mut(node).is_none_or(|p| p.exited()) {
                self.c.agents.remove(node);
                self.c.start_agent(node);
            }
        }
    }

    /// The coordinator's disk fills up for a while, and an operator's
    /// change comes meanwhile. The coordinator must keep running and keep
    /// renewing the primaries' leases (the checker sees any fencing as dark
    /// time); the change is refused, or, if the store still found room for
    /// it, acknowledged and kept like any other; writes work again once
    /// space returns (the next faults' changes need them).
    fn disk_full(&mut self) {
        self.count("disk_full");
        let Some(disk) = &self.disk else {
            return;
        };
        disk.fill();
        self.admin_change();
        self.hold(1.0..4.0);
        if self.c.coordinator_exited() {
            self.report
                .violations
                .push("the coordinator exited when its disk was full".into());
            self.free_disk();
            self.c.start_coordinator();
            return;
        }
        self.free_disk();
    }

    fn free_disk(&self) {
        if let Some(disk) = &self.disk {
            disk.free();
        }
    }

    /// Sends an operator's member move and, a random moment later while it
    /// may still be on its way, `kill`s the coordinator that would answer
    /// it; what was asked, and whether it was acknowledged.
    fn racing_move(&mut self, kill: impl FnOnce(&mut Cluster)) -> Raced {
        let (group, node, position) = self.random_move();
        let mut ctl = self.c.ctl_command();
        let args = [
            "group",
            "member",
            "move",
            &group,
            &node,
            "--position",
            &position.to_string(),
        ]
        .map(str::to_owned);
        let racing =
            std::thread::spawn(move || ctl.args(&args).output().map(|o| o.status.success()));
        std::thread::sleep(Duration::from_millis(self.rng.random_range(0..30)));
        kill(&mut self.c);
        let acknowledged = racing
            .join()
            .expect("racing thread")
            .expect("failoverctl runs");
        Raced {
            group,
            node,
            position,
            acknowledged,
        }
    }

    /// The replica that leads now (waiting for one).
    fn leader(&self) -> usize {
        self.c.wait_leader()
    }

    /// Holds for `length`, watching for a replica other than `old` to
    /// lead; when one was first seen (ns), if it was.
    fn hold_watching_leader(&self, old: usize, length: Duration) -> Option<u128> {
        let end = Instant::now() + length;
        let mut seen = None;
        while Instant::now() < end {
            if seen.is_none() && self.c.leader().is_some_and(|l| l != old) {
                seen = Some(crate::now_ns());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        seen
    }

    /// Waits until a replica other than `old` leads; when (ns).
    fn new_leader_after(&self, old: usize) -> u128 {
        self.c.wait_until("another replica leads", || {
            self.c.leader().filter(|l| *l != old)
        });
        crate::now_ns()
    }

    /// A random length of a replica fault: beyond the leader lease, so
    /// the leadership must move.
    fn beyond_the_lease(&mut self) -> Duration {
        LEADER_LEASE.mul_f64(self.rng.random_range(1.2..2.2))
    }

    /// kill -9 of the leading replica, racing an admin change; the
    /// leadership moves, the killed replica comes back as a follower.
    fn kill_leader(&mut self) {
        self.count("kill_leader");
        let leader = self.leader();
        let down_from = crate::now_ns();
        let raced = self.racing_move(|c| c.kill_replica(leader));
        let elected = self.new_leader_after(leader);
        self.coordinator_down.push((down_from, elected));
        self.hold(0.0..2.0);
        self.c.start_replica(leader);
        self.check_durable(Some(raced));
    }

    /// SIGSTOP of the leading replica past its lease: another leads; when
    /// the frozen one wakes it must announce nothing more (its leadership
    /// is no longer certain) and follow.
    fn freeze_leader(&mut self) {
        self.count("freeze_leader");
        let leader = self.leader();
        let length = self.beyond_the_lease();
        let down_from = crate::now_ns();
        self.c.freeze_replica(leader);
        let elected = self.hold_watching_leader(leader, length);
        self.c.thaw_replica(leader);
        let elected = elected.unwrap_or_else(|| self.new_leader_after(leader));
        self.coordinator_down.push((down_from, elected));
        self.check_durable(None);
    }

    /// The leading replica loses etcd while agents still reach it: it must
    /// stop leading when its leadership is no longer certain, and another
    /// takes over.
    fn cut_leader_from_etcd(&mut self) {
        self.count("cut_leader_from_etcd");
        let leader = self.leader();
        let length = self.beyond_the_lease();
        let down_from = crate::now_ns();
        self.c.replicas[leader].etcd.set(Mode::Blackhole);
        let elected = self.hold_watching_leader(leader, length);
        self.c.replicas[leader].etcd.set(Mode::Pass);
        let elected = elected.unwrap_or_else(|| self.new_leader_after(leader));
        self.coordinator_down.push((down_from, elected));
        self.check_durable(None);
    }

    /// kill -9 of one etcd member (quorum stays).
    fn kill_etcd_member(&mut self) {
        self.count("kill_etcd_member");
        let member = self.rng.random_range(0..ETCD_MEMBERS);
        let etcd = self.c.etcd.as_mut().expect("replicas");
        etcd.kill_member(member);
        self.hold(1.0..4.0);
        let etcd = self.c.etcd.as_mut().expect("replicas");
        etcd.start_member(member);
        etcd.wait_healthy();
    }

    /// Two of three etcd members down for longer than a lease: nobody can
    /// lead, strict primaries fence when their leases end, and all comes
    /// back once the quorum does — never with two primaries.
    fn etcd_quorum_lost(&mut self) {
        self.count("etcd_quorum_lost");
        let spared = self.rng.random_range(0..ETCD_MEMBERS);
        let length = self.beyond_the_lease();
        let down_from = crate::now_ns();
        let etcd = self.c.etcd.as_mut().expect("replicas");
        for m in (0..ETCD_MEMBERS).filter(|m| *m != spared) {
            etcd.kill_member(m);
        }
        std::thread::sleep(length);
        let etcd = self.c.etcd.as_mut().expect("replicas");
        for m in (0..ETCD_MEMBERS).filter(|m| *m != spared) {
            etcd.start_member(m);
        }
        etcd.wait_healthy();
        self.leader();
        self.coordinator_down.push((down_from, crate::now_ns()));
        self.check_durable(None);
    }

    /// An operator deletes the leader key by hand while the leader's lease
    /// is still valid: another replica takes over at once, and the old
    /// leader must stop before its window ends; the new one waits that
    /// window out on top of the agents' leases.
    fn steal_leadership(&mut self) {
        self.count("steal_leadership");
        let leader = self.leader();
        let down_from = crate::now_ns();
        let member = self.rng.random_range(0..ETCD_MEMBERS);
        let etcd = self.c.etcd.as_ref().expect("replicas");
        if !etcd.delete_key(member, "/failover/leader") {
            self.report
                .violations
                .push("etcd did not delete the leader key".into());
        }
        // Usually another replica wins; the old leader may win again.
        let length = LEADER_LEASE.mul_f64(1.5);
        let elected = self.hold_watching_leader(leader, length);
        self.leader();
        self.coordinator_down
            .push((down_from, elected.unwrap_or_else(crate::now_ns)));
        self.check_durable(None);
    }

    /// kill -9 and restart of a replica that does not lead: nothing moves.
    fn restart_follower(&mut self) {
        self.count("restart_follower");
        let leader = self.leader();
        let follower = (leader + self.rng.random_range(1..REPLICAS)) % REPLICAS;
        self.c.kill_replica(follower);
        self.hold(0.0..2.0);
        self.c.start_replica(follower);
    }

    /// A second agent process claims a node id: a cloned machine, an
    /// installer run twice. Sometimes the original freezes meanwhile, so
    /// the duplicate gets the node (and the original must not act when it
    /// wakes). The duplicate is killed when the fault ends.
    fn duplicate_agent(&mut self) {
        self.count("duplicate_agent");
        let node = self.target();
        let dup = self.c.start_duplicate_agent(&node, "dup");
        if self.rng.random_bool(0.4) {
            let from_ns = self.c.freeze_agent(&node);
            // Past the silence limit (twice the lease): the duplicate is
            // accepted as the node.
            self.hold(2.3..3.5);
            let to_ns = self.c.thaw_agent(&node);
            self.inflicted.push(Inflicted::Frozen {
                node: node.clone(),
                from_ns,
                to_ns,
            });
        }
        self.hold(0.5..2.0);
        let at_ns = self.c.kill_agent(&dup);
        self.inflicted.push(Inflicted::Killed { node: dup, at_ns });
    }

    /// A hostile client speaks the agent protocol as a member node: wild
    /// epoch claims, confirmations of step-downs it never made, replayed
    /// heartbeats, goodbyes. Sometimes the real node is cut off meanwhile,
    /// so the impostor's sessions are accepted.
    fn hostile_session(&mut self) {
        self.count("hostile_session");
        let node = self.target();
        let cut = self.rng.random_bool(0.5);
        if cut {
            self.c.proxy(&node).set(Mode::Blackhole);
        }
        let length = self.timeouts(1.5..4.0);
        let to = self.c.target(&node);
        let groups: Vec<(String, u64)> = GROUPS
            .iter()
            .map(|(g, _)| (g.to_string(), crate::epoch(&self.group(g))))
            .collect();
        let seed = self.rng.random();
        let hostile = std::thread::spawn(move || {
            crate::raw::hostile(&to, &node, &groups, length, seed);
            node
        });
        let node = hostile.join().expect("hostile client thread");
        if cut {
            self.c.proxy(&node).set(Mode::Pass);
        }
    }

    /// Someone without the node's certificate claims to be it: with
    /// another member's certificate, with none, with one from a foreign CA.
    /// Every attempt must be refused, even while the real node is cut off;
    /// and a primary that is not cut off must never fence because of it.
    fn impostor_session(&mut self) {
        self.count("impostor_session");
        let node = self.primary_of_random_group();
        let cut = self.rng.random_bool(0.4);
        if cut {
            self.c.proxy(&node).set(Mode::Blackhole);
        }
        let pki = self.c.pki.clone().expect("a secure cluster");
        let foreign = crate::tls::Pki {
            dir: self.c.path("foreign-pki"),
        };
        if !foreign.ca().exists() {
            crate::tls::Pki::init(&foreign.dir);
        }
        let other = NODES.iter().find(|n| **n != node).expect("another node");
        let url = self.c.url();
        let foreign_node = proto::client::ClientTls {
            ca: Some(pki.ca()),
            ..foreign.node_tls(&node)
        };
        let credentials = vec![
            (
                format!("{other}'s certificate"),
                crate::raw::Target {
                    url: url.clone(),
                    tls: pki.node_tls(other),
                },
            ),
            (
                "no certificate".to_owned(),
                crate::raw::Target {
                    url: url.clone(),
                    tls: pki.anonymous_tls(),
                },
            ),
            (
                "a foreign CA's certificate for the node".to_owned(),
                crate::raw::Target {
                    url: url.clone(),
                    tls: foreign_node,
                },
            ),
        ];
        let groups: Vec<(String, u64)> = GROUPS
            .iter()
            .map(|(g, _)| (g.to_string(), crate::epoch(&self.group(g))))
            .collect();
        let length = self.timeouts(1.5..3.0);
        let from_ns = crate::now_ns();
        let target = node.clone();
        let accepted = std::thread::spawn(move || {
            crate::raw::impostor(&credentials, &target, &groups, length)
        })
        .join()
        .expect("impostor thread");
        let to_ns = crate::now_ns();
        if cut {
            self.c.proxy(&node).set(Mode::Pass);
        }
        for label in accepted {
            self.report
                .violations
                .push(format!("an impostor with {label} was accepted as {node}"));
        }
        if !cut {
            let fenced = checker::read_role_logs(self.c.dir.path())
                .into_iter()
                .any(|e| {
                    e.node == node
                        && (e.event == "lease_expired"
                            || (e.event == "effective" && e.role == "fenced"))
                        && (from_ns..=to_ns).contains(&e.at_ns)
                });
            if fenced {
                self.report.violations.push(format!(
                    "{node} fenced while an impostor claimed it (it was not cut off)"
                ));
            }
        }
    }

    fn partition(&mut self) {
        self.count("partition");
        let node = self.target();
        self.c.proxy(&node).set(Mode::Blackhole);
        self.hold(0.5..3.0);
        self.c.proxy(&node).set(Mode::Pass);
    }

    fn delay(&mut self) {
        self.count("delay");
        let node = self.target();
        let base = self.timeouts(0.5..1.1);
        let jitter = self.config.failover_timeout / 5;
        self.c.proxy(&node).set(Mode::Delay { base, jitter });
        self.hold(2.0..4.0);
        self.c.proxy(&node).set(Mode::Pass);
    }

    fn reset(&mut self) {
        self.count("reset");
        let node = self.target();
        self.c.proxy(&node).set(Mode::Reset);
        self.hold(0.05..0.5);
        self.c.proxy(&node).set(Mode::Pass);
    }

    fn freeze(&mut self) {
        self.count("freeze");
        let node = self.target();
        let from_ns = self.c.freeze_agent(&node);
        self.hold(1.2..3.0);
        let to_ns = self.c.thaw_agent(&node);
        self.inflicted.push(Inflicted::Frozen {
            node,
            from_ns,
            to_ns,
        });
    }

    fn kill_agent(&mut self) {
        self.count("kill_agent");
        let node = self.target();
        let at_ns = self.c.kill_agent(&node);
        self.inflicted.push(Inflicted::Killed {
            node: node.clone(),
            at_ns,
        });
        self.hold(0.0..2.0);
        self.c.start_agent(&node);
    }

    /// kill -9 of the coordinator, racing an admin change against it.
    fn kill_coordinator(&mut self) {
        self.count("kill_coordinator");
        let down_from = crate::now_ns();
        let raced = self.racing_move(Cluster::kill_coordinator);
        self.hold(0.0..2.0);
        self.c.start_coordinator();
        self.coordinator_down.push((down_from, crate::now_ns()));
        self.check_durable(Some(raced));
    }

    /// A coordinator restart while a primary is cut off from it.
    fn restart_while_partitioned(&mut self) {
        self.count("restart_while_partitioned");
        let node = self.target();
        self.c.proxy(&node).set(Mode::Blackhole);
        self.hold(0.2..1.0);
        let down_from = crate::now_ns();
        self.c.kill_coordinator();
        self.hold(0.0..1.0);
        self.c.start_coordinator();
        self.coordinator_down.push((down_from, crate::now_ns()));
        self.check_durable(None);
        self.hold(0.0..2.0);
        self.c.proxy(&node).set(Mode::Pass);
    }

    /// The coordinator dies after a promotion is durable and before anyone
    /// hears of it; the restarted one must carry it through.
    fn crash_after_promotion(&mut self) {
        self.count("crash_after_promotion");
        let down_from = crate::now_ns();
        self.c.kill_coordinator();
        self.c
            .start_coordinator_with(&[("FAILOVER_CRASH_POINT", "after-promotion-commit")]);
        self.coordinator_down.push((down_from, crate::now_ns()));
        self.check_durable(None);
        let node = self.primary_of_random_group();
        let at_ns = self.c.kill_agent(&node);
        self.inflicted.push(Inflicted::Killed {
            node: node.clone(),
            at_ns,
        });
        // The primary's lease (and the start-up wait) runs out, a successor
        // is chosen and written, and the coordinator aborts.
        let deadline = Instant::now() + self.config.failover_timeout * 3 + Duration::from_secs(10);
        let mut down_from = crate::now_ns();
        while !self.c.coordinator_exited() {
            down_from = crate::now_ns();
            if Instant::now() > deadline {
                // Nothing was promoted (the killed node held no role).
                self.c.kill_coordinator();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.c.start_coordinator();
        self.coordinator_down.push((down_from, crate::now_ns()));
        self.check_durable(None);
        self.c.start_agent(&node);
    }

    /// A random member move: (group, node, position).
    fn random_move(&mut self) -> (String, String, usize) {
        let groups: Vec<String> = self.model.keys().cloned().collect();
        let group = groups[self.rng.random_range(0..groups.len())].clone();
        let members = &self.model[&group];
        let node = members[self.rng.random_range(0..members.len())].clone();
        let position = self.rng.random_range(0..members.len());
        (group, node, position)
    }

    fn apply_move(&mut self, group: &str, node: &str, position: usize) {
        if let Some(order) = self.model.get_mut(group) {
            order.retain(|m| m != node);
            order.insert(position.min(order.len()), node.to_owned());
        }
    }

    fn admin(&mut self) {
        self.count("admin");
        self.admin_change();
    }

    /// A random operator's change, modelled if it was acknowledged.
    fn admin_change(&mut self) {
        match self.rng.random_range(0..5) {
            0 => {
                // Planned switchover to a random other member.
                let (group, node, _) = self.random_move();
                let _ = self.c.ctl(&["group", "promote", &group, "--to", &node]);
            }
            1 => {
                let (group, node, position) = self.random_move();
                let pos = position.to_string();
                if self
                    .c
                    .ctl(&["group", "member", "move", &group, &node, "--position", &pos])
                    .status
                    .success()
                {
                    self.apply_move(&group, &node, position);
                }
            }
            2 => {
                let (group, _, _) = self.random_move();
                let has_spare = self.model[&group].iter().any(|m| m == SPARE);
                let args: Vec<&str> = if has_spare {
                    vec!["group", "member", "remove", &group, SPARE]
                } else {
                    vec!["group", "member", "add", &group, SPARE]
                };
                if self.c.ctl(&args).status.success() {
                    let order = self.model.get_mut(&group).expect("modelled");
                    if has_spare {
                        order.retain(|m| m != SPARE);
                    } else {
                        order.push(SPARE.to_owned());
                    }
                }
            }
            _ => {
                // A short-lived group.
                if self.model.contains_key("tmp") {
                    if self
                        .c
                        .ctl(&["group", "delete", "tmp", "--yes"])
                        .status
                        .success()
                    {
                        self.model.remove("tmp");
                    }
                } else {
                    let first = NODES[self.rng.random_range(0..NODES.len())];
                    self.create_group("tmp", &[first, SPARE]);
                }
            }
        }
    }

    /// (d): every acknowledged admin change survived the restart. A change
    /// that raced the kill unacknowledged may be there or not, but nothing
    /// else may differ.
    fn check_durable(&mut self, raced: Option<Raced>) {
        let list = self.c.ctl_json_eventually(&["group", "list"]);
        let actual: BTreeMap<String, Vec<String>> = list
            .as_array()
            .expect("array")
            .iter()
            .map(|g| {
                (
                    g["name"].as_str().expect("name").to_owned(),
                    member_order(g),
                )
            })
            .collect();
        if let Some(r) = raced {
            let before = self.model.clone();
            self.apply_move(&r.group, &r.node, r.position);
            if !r.acknowledged && actual != self.model {
                self.model = before;
            }
        }
        if actual != self.model {
            self.report.violations.push(format!(
                "after a coordinator restart the groups are {actual:?}, but the acknowledged \
                 state is {:?}",
                self.model
            ));
            self.model = actual;
        }
    }

    /// (c): every group has exactly one primary, connected, and exactly that
    /// node acting as primary, within the bound.
    fn converge(&mut self) {
        let mut bound = self.config.failover_timeout.mul_f64(1.01) + CONVERGENCE_SLACK;
        if self.config.replicas {
            // A new leader may have been elected just before: its agents
            // reconnect, it waits out the leases (as after a restart).
            bound += LEADER_LEASE;
        }
        let started = Instant::now();
        let give_up = started + bound + Duration::from_secs(30);
        loop {
            if self.converged() {
                let took = started.elapsed();
                self.report.slowest_convergence_ms = self
                    .report
                    .slowest_convergence_ms
                    .max(took.as_millis() as u64);
                if took > bound {
                    self.report.violations.push(format!(
                        "converged after {took:?}, beyond the bound of {bound:?}"
                    ));
                }
                return;
            }
            if Instant::now() > give_up {
                self.report.violations.push(format!(
                    "no single primary per group {:?} after a fault healed",
                    give_up - started
                ));
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn converged(&self) -> bool {
        let verdict = checker::check(
            &checker::read_role_logs(self.c.dir.path()),
            &self.inflicted,
            self.config.failover_timeout.as_nanos(),
        );
        self.model.iter().all(|(name, members)| {
            let Some(g) = self.c.try_ctl_json(&["group", "show", name]) else {
                return false;
            };
            let Some(primary) = g["primary"].as_str() else {
                return false;
            };
            let running: Vec<&String> = members
                .iter()
                .filter(|m| self.c.agents.contains_key(*m))
                .collect();
            let all_connected = running.iter().all(|m| member(&g, m)["connected"] == true);
            let acting: Vec<&str> = verdict
                .intervals
                .iter()
                .filter(|i| i.group == *name && i.end_ns.is_none())
                .map(|i| i.node.as_str())
                .collect();
            g["phase"] == "active" && all_connected && acting == [primary]
        })
    }

    fn finish(mut self) -> Report {
        self.check_sink();
        self.check_sync();
        let Run {
            c,
            inflicted,
            mut report,
            config,
            coordinator_down,
            ..
        } = self;
        let events: Vec<_> = checker::read_role_logs(c.dir.path())
            .into_iter()
            .filter(|e| GROUPS.iter().any(|(g, _)| *g == e.group))
            .collect();
        let verdict = checker::check(&events, &inflicted, config.failover_timeout.as_nanos());
        report.dark_ms = (verdict.dark_ns(crate::now_ns(), &coordinator_down) / 1_000_000) as u64;
        // Nobody acts while the old lease is waited out, then a successor
        // is promoted within the convergence slack: anything longer is a
        // group kept dark while a member could serve.
        let dark_bound = config.failover_timeout.mul_f64(2.02) + CONVERGENCE_SLACK;
        if report.dark_ms > dark_bound.as_millis() as u64 {
            report.violations.push(format!(
                "a group had no acting primary for {} ms while a coordinator ran (bound {dark_bound:?})",
                report.dark_ms
            ));
        }
        let verdict = checker::check(
            &checker::read_role_logs(c.dir.path()),
            &inflicted,
            config.failover_timeout.as_nanos(),
        );
        report.failovers = verdict.failovers();
        report.violations.extend(verdict.violations);
        if !report.violations.is_empty() {
            let kept = c.dir.path().to_owned();
            let Cluster { dir, .. } = c;
            let _ = dir.keep();
            report.kept_logs = Some(kept.display().to_string());
        }
        report
    }
}
