//! Test harness for real-process tests: starts the real coordinator and
//! agents from the build's target directory, drives them with the real
//! `failoverctl`, and reads what the agents' hook scripts recorded.
//!
//! Every process is killed (SIGKILL) when its handle drops, so a failing
//! test leaves nothing running. Nothing here sleeps to synchronise: waits
//! poll a condition until a deadline.
// Test tooling: a harness or benchmark that cannot go on stops loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod checker;
pub mod etcd;
pub mod faults;
pub mod h2raw;
pub mod proxy;
pub mod raw;
pub mod sinks;
pub mod tls;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::proxy::Proxy;
use crate::raw::Target;
use crate::tls::Pki;

/// How long any wait in a test may take before it fails. Generous: CI
/// machines are shared and slow; a correct system is usually far faster.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Group settings the tests use: fast enough to keep tests short, slow
/// enough that a loaded machine causes no false failovers.
pub const FAST: [&str; 4] = ["--heartbeat-interval", "100ms", "--failover-timeout", "1s"];

/// Directory holding the built binaries: FAILOVER_BIN_DIR if set, else the
/// directory of the running executable (`target/<profile>`), stepping out
/// of `deps/` for test executables.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FAILOVER_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable has a directory");
    if dir.ends_with("deps") {
        dir.parent().expect("deps/ has a parent").to_owned()
    } else {
        dir.to_owned()
    }
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --bins; ./test.sh does)",
        path.display()
    );
    path
}

/// The workspace root, for the example files under deploy/.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// Wall clock, nanoseconds since the Unix epoch: the time base of hook
/// lines and agents' role logs.
pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A child process killed with SIGKILL when dropped.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

/// Holds a small file system at the data directory `$1` (a tmpfs of size
/// `$3` in the mount namespace this script runs in, which the coordinator
/// enters at each start, so the data outlives restarts and nothing outside
/// changes). Fills it up or frees it when `fill` or `free` is written to
/// the FIFO in the control directory `$2`, and says it is done by creating
/// `filled` or `freed` there. Runs until killed.
const SMALL_DISK_SCRIPT: &str = r#"#!/bin/sh
set -e
data="$1"; control="$2"; size="$3"
mkdir -p "$data"
mount -t tmpfs -o "size=$size,mode=700" tmpfs "$data"
touch "$control/mounted"
while read -r command < "$control/fifo"; do
  case "$command" in
    fill) dd if=/dev/zero of="$data/ballast" bs=64k 2>/dev/null || true; touch "$control/filled" ;;
    free) rm -f "$data/ballast"; touch "$control/freed" ;;
  esac
done
"#;

/// The small file system of a coordinator ([`Cluster::use_small_disk`]):
/// the process that holds its mount namespace, ended when this is dropped.
pub struct SmallDisk {
    control: PathBuf,
    _holder: Proc,
}

impl SmallDisk {
    fn tell(&self, command: &str, done: &str) {
        let done = self.control.join(done);
        let _ = std::fs::remove_file(&done);
        std::fs::write(self.control.join("fifo"), format!("{command}\n")).expect("fifo");
        wait_for_file(&done, command);
    }

    /// Fills the file system to the last byte.
    pub fn fill(&self) {
        self.tell("fill", "filled");
    }

    /// Frees what [`SmallDisk::fill`] took.
    pub fn free(&self) {
        self.tell("free", "freed");
    }
}

fn wait_for_file(path: &Path, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !path.exists() {
        assert!(Instant::now() < deadline, "the disk helper did not {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Proc {
    pub fn spawn(mut command: Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).expect("log file");
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        let child = command.spawn().expect("process starts");
        Proc { child, log }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal delivered");
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.wait_exit_within(PATIENCE)
    }

    /// Waits up to `within` for the process to exit by itself.
    pub fn wait_exit_within(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited (without waiting).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// Whether the kernel reports the process as stopped (SIGSTOP).
    pub fn is_stopped(&self) -> bool {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // The state follows the parenthesised command name.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One line a hook script wrote: the hook contract's variables, and when
/// (nanoseconds since the epoch) the hook started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookLine {
    pub at_ns: u128,
    pub node: String,
    pub group: String,
    pub role: String,
    pub previous: String,
    pub epoch: u64,
    pub primary: String,
    pub standby_mode: String,
    /// FAILOVER_SYNC_STATE, or "unset".
    pub sync_state: String,
}

/// What failoverctl printed and how it exited.
#[derive(Debug)]
pub struct CtlOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    fn from(output: Output) -> CtlOutput {
        CtlOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// A coordinator and any number of agents in one temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub coordinator: Option<Proc>,
    pub agents: BTreeMap<String, Proc>,
    /// Proxies between agents and the coordinator, for network faults.
    pub proxies: BTreeMap<String, Proxy>,
    /// The cluster's CA, for a cluster that runs with TLS and certificates
    /// ([`Cluster::start_secure`]).
    pub pki: Option<Pki>,
    /// Flags every start of the coordinator gets.
    pub coordinator_args: Vec<String>,
    /// A command the coordinator is started under (its command line
    /// follows), e.g. one that gives it a small file system of its own.
    pub coordinator_wrapper: Vec<String>,
    /// When set, every agent syncs its `sync-NODE` directory for this
    /// group (`[[sync]] name = "state"`), as in the fault runner.
    pub sync_group: Option<String>,
    coordinator_starts: u32,
    /// With [`Cluster::start_replicated`]: the etcd cluster, and the
    /// coordinator replicas (then `coordinator` is unused).
    pub etcd: Option<etcd::EtcdCluster>,
    pub replicas: Vec<Replica>,
}

/// One coordinator replica of a replicated cluster.
pub struct Replica {
    pub proc: Option<Proc>,
    /// Its links to the etcd members, to cut it off from etcd.
    pub etcd: Proxy,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    starts: u32,
}

impl Cluster {
    /// Starts a coordinator on free ports with a fresh store.
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// Like [`Cluster::start`], with extra environment for the coordinator
    /// (e.g. `RUST_LOG=warn` for benchmarks).
    pub fn start_with(env: &[(&str, &str)]) -> Cluster {
        let mut cluster = Cluster::prepare();
        cluster.start_coordinator_with(env);
        cluster
    }

    /// A coordinator whose data directory is a file system of `size`,
    /// with a [`SmallDisk`] to fill it up and free it again.
    pub fn start_on_small_disk(size: &str) -> (Cluster, SmallDisk) {
        Cluster::start_on_small_disk_with(size, &[])
    }

    /// Like [`Cluster::start_on_small_disk`], with extra environment for
    /// the coordinator.
    pub fn start_on_small_disk_with(size: &str, env: &[(&str, &str)]) -> (Cluster, SmallDisk) {
        let mut cluster = Cluster::prepare();
        let disk = cluster.use_small_disk(size);
        cluster.start_coordinator_with(env);
        (cluster, disk)
    }

    /// Gives every later start of the coordinator a data directory that is
    /// a file system of `size` (a tmpfs in a mount namespace of its own,
    /// kept by a holder process, so the data outlives restarts and nothing
    /// outside changes).
    pub fn use_small_disk(&mut self, size: &str) -> SmallDisk {
        let (disk, wrapper) = self.small_disk(&self.path("data"), "disk", size);
        self.coordinator_wrapper = wrapper;
        disk
    }

    /// A tmpfs of `size` at `at`, seen only in a mount namespace of its
    /// own (its control files in `NAME/`), and the command prefix that
    /// runs a program inside that namespace.
    pub fn small_disk(&self, at: &Path, name: &str, size: &str) -> (SmallDisk, Vec<String>) {
        let control = self.path(name);
        std::fs::create_dir_all(&control).expect("control dir");
        nix::unistd::mkfifo(&control.join("fifo"), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        let script = control.join("small-disk.sh");
        std::fs::write(&script, SMALL_DISK_SCRIPT).expect("script");
        set_executable(&script);
        let root = nix::unistd::Uid::effective().is_root();
        let mut holder = Command::new("unshare");
        if !root {
            holder.args(["--user", "--map-root-user"]);
        }
        holder
            .arg("--mount")
            .arg(&script)
            .arg(at)
            .arg(&control)
            .arg(size);
        let holder = Proc::spawn(holder, control.join("holder.log"));
        wait_for_file(&control.join("mounted"), "mount its file system");
        let mut wrapper: Vec<String> =
            vec!["nsenter".into(), "-t".into(), holder.pid().to_string()];
        if !root {
            wrapper.extend(["--user".into(), "--preserve-credentials".into()]);
        }
        wrapper.extend(["--mount".into(), "--".into()]);
        (
            SmallDisk {
                control,
                _holder: holder,
            },
            wrapper,
        )
    }

    /// A coordinator started with `--config FILE`, the file holding
    /// `toml` (e.g. a `[limits]` table).
    pub fn start_configured(toml: &str) -> Cluster {
        let mut cluster = Cluster::prepare();
        let config = cluster.path("coordinator.toml");
        std::fs::write(&config, toml).expect("coordinator config");
        cluster.coordinator_args = vec!["--config".to_owned(), config.display().to_string()];
        cluster.start_coordinator();
        cluster
    }

    /// A coordinator with TLS on both listeners and client certificates
    /// from a CA made for this cluster (`failoverctl pki init`): agents
    /// present node certificates, and `ctl` acts as operator `root`
    /// (admin). `args` are extra coordinator flags (`--auth-tokens FILE`).
    pub fn start_secure(args: &[&str]) -> Cluster {
        let mut cluster = Cluster::prepare_secure(args);
        cluster.start_coordinator();
        cluster
    }

    /// [`Cluster::start_secure`] without starting the coordinator yet.
    pub fn prepare_secure(args: &[&str]) -> Cluster {
        let mut cluster = Cluster::prepare();
        let pki = Pki::init(&cluster.path("pki"));
        let (cert, key) = pki.coordinator();
        pki.operator("root", "admin");
        cluster.coordinator_args = [
            "--tls-cert".to_owned(),
            cert.display().to_string(),
            "--tls-key".to_owned(),
            key.display().to_string(),
            "--tls-client-ca".to_owned(),
            pki.ca().display().to_string(),
        ]
        .into_iter()
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect();
        cluster.pki = Some(pki);
        cluster
    }

    /// The temporary directory and the recording hook; no processes yet.
    pub fn prepare() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let hook = dir.path().join("hook.sh");
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\n\
                 echo \"at=$(date +%s%N) node=$FAILOVER_NODE group=$FAILOVER_GROUP \
                 role=$FAILOVER_ROLE prev=$FAILOVER_PREVIOUS_ROLE epoch=$FAILOVER_EPOCH \
                 primary=$FAILOVER_PRIMARY mode=$FAILOVER_STANDBY_MODE \
                 sync=${{FAILOVER_SYNC_STATE-unset}}\" >> {}\n",
                dir.path().join("hooks.log").display()
            ),
        )
        .expect("hook script");
        set_executable(&hook);
        // Port 0: the coordinator binds free ports itself and says which
        // (no race with another test between choosing and binding).
        Cluster {
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            coordinator: None,
            agents: BTreeMap::new(),
            proxies: BTreeMap::new(),
            pki: None,
            coordinator_args: Vec::new(),
            coordinator_wrapper: Vec::new(),
            sync_group: None,
            coordinator_starts: 0,
            etcd: None,
            replicas: Vec::new(),
        }
    }

    /// `replicas` coordinator replicas sharing a real etcd cluster of
    /// `members` members, all on loopback.
    pub fn start_replicated(replicas: usize, members: usize) -> Cluster {
        let mut cluster = Cluster::prepare();
        let etcd = etcd::EtcdCluster::start(cluster.path("etcd"), members);
        cluster.coordinator_args = vec!["--store".into(), "etcd".into()];
        for i in 0..replicas {
            cluster.replicas.push(Replica {
                proc: None,
                etcd: Proxy::start_many(&etcd.client_addrs(), i as u64),
                grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
                http: SocketAddr::from(([127, 0, 0, 1], 0)),
                starts: 0,
            });
        }
        cluster.etcd = Some(etcd);
        for i in 0..replicas {
            cluster.start_replica(i);
        }
        cluster
    }

    /// Starts (or restarts) replica `i` on its ports and waits until it is
    /// ready (it leads, or knows who does).
    pub fn start_replica(&mut self, i: usize) {
        let (grpc, http) = (self.replicas[i].grpc, self.replicas[i].http);
        self.replicas[i].starts += 1;
        let log = self.path(&format!("replica-{i}-{}.log", self.replicas[i].starts));
        let endpoints: Vec<String> = self.replicas[i]
            .etcd
            .addrs
            .iter()
            .map(|a| format!("http://{a}"))
            .collect();
        let endpoints = endpoints.join(",");
        let proc = self.spawn_coordinator(grpc, http, &["--etcd-endpoints", &endpoints], &[], log);
        let (grpc, http) = self.serving_at(&proc, grpc, http);
        let replica = &mut self.replicas[i];
        replica.grpc = grpc;
        replica.http = http;
        replica.proc = Some(proc);
        self.wait_until(&format!("replica {i} is ready"), || {
            (http_get(http, "/readyz").map(|(code, _)| code) == Some(200)).then_some(())
        });
    }

    /// `kill -9` of replica `i`.
    pub fn kill_replica(&mut self, i: usize) {
        if let Some(mut proc) = self.replicas[i].proc.take() {
            proc.signal(Signal::SIGKILL);
            proc.wait_exit();
        }
    }

    /// SIGSTOP of replica `i`.
    pub fn freeze_replica(&self, i: usize) {
        if let Some(proc) = &self.replicas[i].proc {
            proc.signal(Signal::SIGSTOP);
        }
    }

    /// SIGCONT of replica `i`.
    pub fn thaw_replica(&self, i: usize) {
        if let Some(proc) = &self.replicas[i].proc {
            proc.signal(Signal::SIGCONT);
        }
    }

    /// The URL of replica `i`.
    pub fn replica_url(&self, i: usize) -> String {
        self.url_of(self.replicas[i].grpc)
    }

    /// The replica that leads, as `cluster status` says: asked of each
    /// running replica in turn (one that is frozen would hold the question
    /// until it times out), the first that knows.
    pub fn leader(&self) -> Option<usize> {
        (0..self.replicas.len()).find_map(|i| {
            let running = self.replicas[i]
                .proc
                .as_ref()
                .is_some_and(|p| !p.is_stopped());
            if !running {
                return None;
            }
            let out = self
                .ctl_command_at(&self.replica_url(i))
                .args(["cluster", "status", "-o", "json"])
                .output()
                .ok()?;
            let json: Value = serde_json::from_slice(&out.stdout).ok()?;
            let leader = json["leader"].as_str()?;
            (0..self.replicas.len()).find(|j| self.replica_url(*j) == leader)
        })
    }

    /// Waits until some replica leads, and says which.
    pub fn wait_leader(&self) -> usize {
        self.wait_until("a replica leads", || self.leader())
    }

    /// The coordinator's gRPC URL (`https://` in a secure cluster).
    /// The coordinator's URL; with replicas, all of theirs comma-separated.
    pub fn url(&self) -> String {
        if self.replicas.is_empty() {
            return self.url_of(self.grpc);
        }
        (0..self.replicas.len())
            .map(|i| self.replica_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn url_of(&self, addr: SocketAddr) -> String {
        match self.pki {
            Some(_) => format!("https://{addr}"),
            None => format!("http://{addr}"),
        }
    }

    /// Where raw sessions reach the coordinator, speaking for `node` (with
    /// its certificate in a secure cluster).
    pub fn target(&self, node: &str) -> Target {
        Target {
            url: self.url(),
            tls: self
                .pki
                .as_ref()
                .map(|p| p.node_tls(node))
                .unwrap_or_default(),
        }
    }

    /// `GET path` on the coordinator's HTTP listener (HTTPS in a secure
    /// cluster).
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        self.http_call("GET", path, None, None)
    }

    /// A request to the coordinator's HTTP listener (HTTPS in a secure
    /// cluster), with a bearer token and a JSON body when given.
    pub fn http_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        match &self.pki {
            Some(pki) => tls::https_request(self.http, method, path, &pki.ca(), token, body),
            None => http_request(self.http, method, path, token, body),
        }
    }

    /// The HTTP listener's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts (or restarts) the coordinator on the same ports and store,
    /// and waits until it is ready.
    pub fn start_coordinator(&mut self) {
        self.start_coordinator_with(&[]);
    }

    /// Starts the coordinator with extra environment variables.
    pub fn start_coordinator_with(&mut self, env: &[(&str, &str)]) {
        assert!(self.coordinator.is_none(), "coordinator already running");
        self.coordinator_starts += 1;
        let log = self.path(&format!("coordinator-{}.log", self.coordinator_starts));
        let proc = self.spawn_coordinator(self.grpc, self.http, &[], env, log);
        // The first start learns the ports it bound; restarts reuse them.
        let (grpc, http) = self.serving_at(&proc, self.grpc, self.http);
        self.coordinator = Some(proc);
        self.grpc = grpc;
        self.http = http;
        self.wait_until("the coordinator is ready", || {
            (self.http_get("/readyz").map(|(code, _)| code) == Some(200)).then_some(())
        });
    }

    /// Starts a coordinator process on `grpc` and `http` (port 0: any).
    fn spawn_coordinator(
        &self,
        grpc: SocketAddr,
        http: SocketAddr,
        args: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Proc {
        let mut command = match self.coordinator_wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin("failover-coordinator"));
                c
            }
            None => Command::new(bin("failover-coordinator")),
        };
        command
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--http-listen")
            .arg(http.to_string())
            .arg("--data-dir")
            .arg(self.path("data"))
            .args(&self.coordinator_args)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        Proc::spawn(command, log)
    }

    /// Where a coordinator started on `grpc` and `http` serves: those, or
    /// for port 0 the ports it says it bound.
    fn serving_at(
        &self,
        proc: &Proc,
        grpc: SocketAddr,
        http: SocketAddr,
    ) -> (SocketAddr, SocketAddr) {
        if grpc.port() != 0 {
            return (grpc, http);
        }
        self.wait_until("the coordinator says where it serves", || {
            let text = proc.log_text();
            let line = text.lines().find(|l| l.contains("coordinator serving"))?;
            let field = |name: &str| -> Option<SocketAddr> {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))?
                    .parse()
                    .ok()
            };
            Some((field("grpc=")?, field("http=")?))
        })
    }

    /// `kill -9` of the coordinator.
    pub fn kill_coordinator(&mut self) {
        let mut proc = self.coordinator.take().expect("coordinator running");
        proc.signal(Signal::SIGKILL);
        proc.wait_exit();
    }

    /// Whether the coordinator process has exited by itself; if so it is
    /// forgotten, ready for [`Cluster::start_coordinator`].
    pub fn coordinator_exited(&mut self) -> bool {
        let exited = self.coordinator.as_mut().is_some_and(Proc::exited);
        if exited {
            self.coordinator = None;
        }
        exited
    }

    /// Writes an agent configuration whose hook is the recording script and
    /// whose role log is `roles-<node>.jsonl`. The agent reaches the
    /// coordinator through its proxy if it has one.
    pub fn agent_config(&self, node: &str, extra: &str) -> PathBuf {
        self.agent_config_as(node, node, extra)
    }

    /// Like [`Cluster::agent_config`], for the agent process slot `actor`
    /// (its config `<actor>.toml`, its role log `roles-<actor>.jsonl`).
    pub fn agent_config_as(&self, node: &str, actor: &str, extra: &str) -> PathBuf {
        self.agent_config_full(node, actor, node, extra)
    }

    /// Like [`Cluster::agent_config_as`], presenting the certificate of
    /// node `cert_of` in a secure cluster (an impostor presents another
    /// node's).
    pub fn agent_config_full(
        &self,
        node: &str,
        actor: &str,
        cert_of: &str,
        extra: &str,
    ) -> PathBuf {
        let path = self.path(&format!("{actor}.toml"));
        let coordinator = match self.proxies.get(actor) {
            Some(proxy) => format!(
                "{:?}",
                proxy
                    .addrs
                    .iter()
                    .map(|a| self.url_of(*a))
                    .collect::<Vec<_>>()
            ),
            None => format!("{:?}", self.url().split(',').collect::<Vec<_>>()),
        };
        let tls = match &self.pki {
            Some(pki) => {
                let (cert, key) = pki.node(cert_of);
                format!(
                    "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n",
                    pki.ca().display(),
                    cert.display(),
                    key.display()
                )
            }
            None => String::new(),
        };
        let sync = match &self.sync_group {
            Some(group) => format!(
                "\n[[sync]]\nname = \"state\"\ngroups = [\"{group}\"]\npath = \"{}\"\ninterval = \"300ms\"\n",
                self.sync_dir(node).display()
            ),
            None => String::new(),
        };
        std::fs::write(
            &path,
            format!(
                "node_id = \"{node}\"\ncoordinator = {coordinator}\nrole_log = \"{}\"\n\n\
                 {tls}[hooks]\non_role_change = \"{}\"\ntimeout = \"10s\"\n{extra}{sync}",
                self.role_log(actor).display(),
                self.path("hook.sh").display()
            ),
        )
        .expect("agent config");
        path
    }

    /// The directory `node`'s agent syncs when [`Cluster::sync_group`] is
    /// set.
    pub fn sync_dir(&self, node: &str) -> PathBuf {
        self.path(&format!("sync-{node}"))
    }

    /// Where `node`'s agent records its role transitions.
    pub fn role_log(&self, node: &str) -> PathBuf {
        self.path(&format!("roles-{node}.jsonl"))
    }

    /// Starts an agent that reaches the coordinator through a proxy of its
    /// own (created on first use), for network faults.
    pub fn start_agent_proxied(&mut self, node: &str, seed: u64) {
        if !self.proxies.contains_key(node) {
            let upstreams: Vec<SocketAddr> = if self.replicas.is_empty() {
                vec![self.grpc]
            } else {
                self.replicas.iter().map(|r| r.grpc).collect()
            };
            self.proxies
                .insert(node.to_owned(), Proxy::start_many(&upstreams, seed));
        }
        self.start_agent(node);
    }

    pub fn proxy(&self, node: &str) -> &Proxy {
        &self.proxies[node]
    }

    /// Starts an agent for `node` with the recording hook.
    pub fn start_agent(&mut self, node: &str) {
        let config = self.agent_config(node, "");
        self.start_agent_with(node, &config);
    }

    /// Starts a second agent process that claims `node`'s id (a cloned
    /// machine, an installer run twice), known to the harness and the
    /// checker as `<node>+<tag>`; returns that name.
    pub fn start_duplicate_agent(&mut self, node: &str, tag: &str) -> String {
        let actor = format!("{node}+{tag}");
        let config = self.agent_config_as(node, &actor, "");
        self.start_agent_with(&actor, &config);
        actor
    }

    pub fn start_agent_with(&mut self, node: &str, config: &Path) {
        self.start_agent_wrapped(node, config, &[]);
    }

    /// Starts an agent through `wrapper` (e.g. into a small disk's mount
    /// namespace: [`Cluster::small_disk`]).
    pub fn start_agent_wrapped(&mut self, node: &str, config: &Path, wrapper: &[String]) {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin("failover-agent"));
                c
            }
            None => Command::new(bin("failover-agent")),
        };
        command.arg("--config").arg(config).env("RUST_LOG", "info");
        let log = unique(self.path(&format!("agent-{node}.log")));
        self.agents
            .insert(node.to_owned(), Proc::spawn(command, log));
    }

    /// `kill -9` of an agent; returns when it is dead, with that instant.
    pub fn kill_agent(&mut self, node: &str) -> u128 {
        let mut proc = self.agents.remove(node).expect("agent running");
        proc.signal(Signal::SIGKILL);
        proc.wait_exit();
        now_ns()
    }

    /// SIGSTOP of an agent; returns once it is stopped, with that instant.
    pub fn freeze_agent(&self, node: &str) -> u128 {
        let proc = &self.agents[node];
        proc.signal(Signal::SIGSTOP);
        self.wait_until(&format!("{node} is stopped"), || {
            proc.is_stopped().then_some(())
        });
        now_ns()
    }

    /// SIGCONT of a frozen agent; returns the instant before it resumes.
    pub fn thaw_agent(&self, node: &str) -> u128 {
        let at = now_ns();
        self.agents[node].signal(Signal::SIGCONT);
        at
    }

    pub fn agent(&self, node: &str) -> &Proc {
        &self.agents[node]
    }

    /// Runs failoverctl against this cluster's coordinator (in a secure
    /// cluster as operator `root`, an admin).
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        CtlOutput::from(
            self.ctl_command()
                .args(args)
                .output()
                .expect("failoverctl runs"),
        )
    }

    /// A failoverctl command line aimed at this cluster's coordinator with
    /// the cluster's admin credentials, to add arguments to.
    pub fn ctl_command(&self) -> Command {
        self.ctl_command_at(&self.url())
    }

    /// The flags that make failoverctl the cluster's admin.
    fn admin_credentials(&self) -> Vec<String> {
        match &self.pki {
            Some(pki) => {
                let (cert, key) = pki.operator("root", "admin");
                vec![
                    "--tls-cert".to_owned(),
                    cert.display().to_string(),
                    "--tls-key".to_owned(),
                    key.display().to_string(),
                ]
            }
            None => Vec::new(),
        }
    }

    /// Runs failoverctl with the given credential flags (`--tls-cert`,
    /// `--tls-key`, `--token-file`) instead of the cluster's admin; the
    /// cluster's CA is always given in a secure cluster.
    pub fn ctl_as(&self, credentials: &[&str], args: &[&str]) -> CtlOutput {
        let output = self
            .ctl_command_as(credentials)
            .args(args)
            .output()
            .expect("failoverctl runs");
        CtlOutput::from(output)
    }

    /// A failoverctl command line with the given credential flags instead
    /// of the cluster's admin (the CA is always given in a secure cluster).
    pub fn ctl_command_as(&self, credentials: &[&str]) -> Command {
        self.ctl_command_to(&self.url(), credentials)
    }

    /// A failoverctl command line with the cluster's admin credentials
    /// aimed at `url` only (one replica).
    pub fn ctl_command_at(&self, url: &str) -> Command {
        let credentials = self.admin_credentials();
        let credentials: Vec<&str> = credentials.iter().map(String::as_str).collect();
        self.ctl_command_to(url, &credentials)
    }

    fn ctl_command_to(&self, url: &str, credentials: &[&str]) -> Command {
        let mut command = Command::new(bin("failoverctl"));
        command
            .arg("--coordinator")
            .arg(url)
            .env_remove("FAILOVER_TLS_CA")
            .env_remove("FAILOVER_TLS_CERT")
            .env_remove("FAILOVER_TLS_KEY")
            .env_remove("FAILOVER_TOKEN_FILE");
        if let Some(pki) = &self.pki {
            command.arg("--tls-ca").arg(pki.ca());
        }
        command.args(credentials);
        command
    }

    /// Runs failoverctl and insists that it succeeds.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "failoverctl {args:?} failed: {}{}",
            out.stderr,
            self.logs()
        );
        out.stdout
    }

    /// Runs failoverctl with `-o json`: the answer, or `None` if it failed
    /// (e.g. while replicas elect a leader).
    pub fn try_ctl_json(&self, args: &[&str]) -> Option<Value> {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        let out = self.ctl(&full);
        if !out.status.success() {
            return None;
        }
        serde_json::from_str(&out.stdout).ok()
    }

    /// Runs failoverctl with `-o json` until it answers (replicas may be
    /// electing a leader), within the patience.
    pub fn ctl_json_eventually(&self, args: &[&str]) -> Value {
        self.wait_until(&format!("failoverctl {args:?} answers"), || {
            self.try_ctl_json(args)
        })
    }

    /// Runs failoverctl with `-o json` and parses the answer.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        serde_json::from_str(&self.ctl_ok(&full)).expect("failoverctl prints JSON")
    }

    /// The retained events of one kind, all groups.
    pub fn events_of_kind(&self, kind: &str) -> Vec<Value> {
        self.ctl_json(&["events", "--limit", "0"])
            .as_array()
            .expect("array")
            .iter()
            .filter(|e| e["kind"] == kind)
            .cloned()
            .collect()
    }

    /// `group show NAME -o json`.
    pub fn group(&self, name: &str) -> Value {
        self.ctl_json(&["group", "show", name])
    }

    /// Creates a group with the fast test settings.
    pub fn add_group(&self, name: &str, members: &[&str]) -> Value {
        self.add_group_with(name, members, &FAST)
    }

    /// Creates a group with the given `group add` settings flags.
    pub fn add_group_with(&self, name: &str, members: &[&str], settings: &[&str]) -> Value {
        let mut args = vec!["group", "add", name];
        for m in members {
            args.extend(["--member", m]);
        }
        args.extend(settings);
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.ctl_ok(&args)).expect("JSON")
    }

    /// Waits until every listed member of `group` shows as connected.
    pub fn wait_connected(&self, group: &str, nodes: &[&str]) {
        self.wait_until(&format!("{nodes:?} connected in {group}"), || {
            let g = self.group(group);
            nodes
                .iter()
                .all(|n| member(&g, n)["connected"] == Value::Bool(true))
                .then_some(())
        });
    }

    /// Waits until `node list` shows every listed node connected.
    pub fn wait_nodes(&self, nodes: &[&str]) {
        self.wait_until(&format!("{nodes:?} connected"), || {
            let list = self.ctl_json(&["node", "list"]);
            nodes
                .iter()
                .all(|n| {
                    list.as_array()
                        .expect("array")
                        .iter()
                        .any(|e| e["node"] == *n && e["connected"] == Value::Bool(true))
                })
                .then_some(())
        });
    }

    /// Waits until `group` has `node` as primary, and returns the group.
    pub fn wait_primary(&self, group: &str, node: &str) -> Value {
        self.wait_until(&format!("{node} is primary of {group}"), || {
            let g = self.group(group);
            (g["primary"] == node).then_some(g)
        })
    }

    /// Polls `check` until it returns a value or [`PATIENCE`] runs out.
    pub fn wait_until<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every hook line recorded so far, in file order.
    pub fn hooks(&self) -> Vec<HookLine> {
        let text = std::fs::read_to_string(self.path("hooks.log")).unwrap_or_default();
        text.lines().filter_map(parse_hook_line).collect()
    }

    /// Waits for a hook line matching `pred` and returns it.
    pub fn wait_hook(&self, what: &str, pred: impl Fn(&HookLine) -> bool) -> HookLine {
        self.wait_until(what, || self.hooks().into_iter().find(|h| pred(h)))
    }

    /// All logs of this cluster, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::from("\n--- hooks.log ---\n");
        out.push_str(&std::fs::read_to_string(self.path("hooks.log")).unwrap_or_default());
        let mut entries: Vec<_> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for path in entries {
            if path.extension().is_some_and(|e| e == "log") && !path.ends_with("hooks.log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                out.push_str(&format!("\n--- {} (last 60 lines) ---\n", path.display()));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// The member entry for `node` in a `group show -o json` answer.
pub fn member<'a>(group: &'a Value, node: &str) -> &'a Value {
    group["members"]
        .as_array()
        .expect("members is an array")
        .iter()
        .find(|m| m["node"] == node)
        .unwrap_or_else(|| panic!("{node} is not a member of {group}"))
}

/// Member node ids in priority order.
pub fn member_order(group: &Value) -> Vec<String> {
    group["members"]
        .as_array()
        .expect("members is an array")
        .iter()
        .map(|m| m["node"].as_str().expect("node").to_owned())
        .collect()
}

pub fn epoch(group: &Value) -> u64 {
    group["epoch"].as_u64().expect("epoch is an integer")
}

fn parse_hook_line(line: &str) -> Option<HookLine> {
    let mut fields = BTreeMap::new();
    for part in line.split_whitespace() {
        let (k, v) = part.split_once('=')?;
        fields.insert(k, v);
    }
    Some(HookLine {
        at_ns: fields.get("at")?.parse().ok()?,
        node: fields.get("node")?.to_string(),
        group: fields.get("group")?.to_string(),
        role: fields.get("role")?.to_string(),
        previous: fields.get("prev")?.to_string(),
        epoch: fields.get("epoch")?.parse().ok()?,
        primary: fields.get("primary").copied().unwrap_or("").to_string(),
        standby_mode: fields.get("mode").copied().unwrap_or("").to_string(),
        sync_state: fields.get("sync").copied().unwrap_or("unset").to_string(),
    })
}

/// `BINARY --config FILE --check-config`, the file holding `text`
/// (written as `name` in `dir`).
pub fn check_config(binary: &str, dir: &Path, name: &str, text: &str) -> Output {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("config file");
    Command::new(bin(binary))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .expect("runs")
}

/// The lines a child process writes, as they come (read on a thread of
/// their own, so a test can wait for the next one with a deadline).
pub fn lines_of(out: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    lines
}

/// A minimal HTTP/1.0 GET: status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, None, None)
}

/// The request line and headers of a minimal HTTP/1.0 request, with a
/// bearer token and a JSON body when given.
pub fn request_head(
    method: &str,
    path: &str,
    host: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> String {
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or_default());
    head
}

/// Status code and body of an HTTP/1.0 answer.
pub fn parse_response(response: &str) -> Option<(u16, String)> {
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Some((code, body))
}

/// A minimal HTTP/1.0 request: status code and body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let head = request_head(method, path, &addr.to_string(), token, body);
    stream.write_all(head.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    parse_response(&response)
}

fn set_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn unique(path: PathBuf) -> PathBuf {
    let mut candidate = path.clone();
    let mut n = 1;
    while candidate.exists() {
        candidate = path.with_extension(format!("{n}.log"));
        n += 1;
    }
    candidate
}
