//! Health checks run by the agent: exec a command, connect over TCP, or GET
//! an HTTP URL expecting 2xx — each on its own interval, with a timeout and
//! rise/fall counts so one blip does not flip the verdict. Every heartbeat
//! carries the latest verdicts; a change triggers a heartbeat at once.
//!
//! A check starts failing and passes after `rise` good runs in a row, so a
//! node whose service is still starting is not promoted.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use proto::v1 as pb;
use serde::Deserialize;
use tokio::process::Command;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Uri;

/// One `[[checks]]` entry of the agent's file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    pub name: String,
    /// A command run through `sh -c`; exit status 0 passes.
    pub exec: Option<String>,
    /// `HOST:PORT` to connect to.
    pub tcp: Option<String>,
    /// An `http://` URL; a 2xx answer passes.
    pub http: Option<String>,
    #[serde(with = "proto::duration::serde", default = "default_interval")]
    pub interval: Duration,
    #[serde(with = "proto::duration::serde", default = "default_timeout")]
    pub timeout: Duration,
    /// Good runs in a row before a failing check passes.
    #[serde(default = "default_count")]
    pub rise: u32,
    /// Bad runs in a row before a passing check fails.
    #[serde(default = "default_count")]
    pub fall: u32,
    /// Groups the check applies to; empty: all of the node's groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_timeout() -> Duration {
    Duration::from_millis(500)
}

fn default_count() -> u32 {
    2
}

/// What a check does.
#[derive(Debug, Clone)]
enum Probe {
    Exec(String),
    Tcp(String),
    Http(Uri),
}

impl CheckConfig {
    /// Checks one entry; `Ok` means it can run.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.probe().map(|_| ())
    }

    fn probe(&self) -> anyhow::Result<Probe> {
        let name = &self.name;
        if name.trim().is_empty() {
            bail!("a check has an empty name");
        }
        let probe = match (&self.exec, &self.tcp, &self.http) {
            (Some(cmd), None, None) if !cmd.trim().is_empty() => Probe::Exec(cmd.clone()),
            (None, Some(addr), None) => {
                addr.rsplit_once(':')
                    .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                    .with_context(|| {
                        format!("check {name}: tcp = {addr:?} must look like HOST:PORT")
                    })?;
                Probe::Tcp(addr.clone())
            }
            (None, None, Some(url)) => {
                let uri: Uri = url
                    .parse()
                    .with_context(|| format!("check {name}: http = {url:?} is not a URL"))?;
                match uri.scheme_str() {
                    Some("http") if uri.host().is_some() => Probe::Http(uri),
                    Some("https") => bail!(
                        "check {name}: https is not supported for checks; check over http (e.g. on loopback)"
                    ),
                    _ => bail!("check {name}: http = {url:?} must look like http://HOST:PORT/PATH"),
                }
            }
            _ => bail!("check {name}: give exactly one of exec, tcp or http"),
        };
        let range = Duration::from_millis(100)..=Duration::from_secs(3600);
        if !range.contains(&self.interval) {
            bail!("check {name}: interval must be between 100ms and 1h");
        }
        if self.timeout < Duration::from_millis(10) || self.timeout > self.interval {
            bail!("check {name}: timeout must be between 10ms and the interval");
        }
        for (what, n) in [("rise", self.rise), ("fall", self.fall)] {
            if !(1..=100).contains(&n) {
                bail!("check {name}: {what} must be between 1 and 100, got {n}");
            }
        }
        for group in &self.groups {
            proto::names::validate_group_name(group).with_context(|| format!("check {name}"))?;
        }
        Ok(probe)
    }
}

/// The latest verdict of every check, shared between the check tasks and
/// the agent's heartbeats.
#[derive(Clone, Default)]
pub struct CheckBoard {
    states: Arc<Mutex<Vec<pb::CheckStatus>>>,
    /// Signalled when a verdict flips, so the coordinator hears at once.
    pub changed: Arc<Notify>,
}

impl CheckBoard {
    /// The verdicts to put in a heartbeat.
    pub fn snapshot(&self) -> Vec<pb::CheckStatus> {
        // A poisoned lock still holds the last verdicts written.
        self.states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set(&self, index: usize, passing: bool, detail: String) {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(state) = states.get_mut(index) {
            state.passing = passing;
            state.detail = detail;
        }
    }
}

/// Starts one task per check; they stop with `shutdown`. At a reload
/// (`previous`: the verdicts before it) a check keeps its verdict, and a
/// new one starts with the node's verdict — passing if every check passed,
/// failing otherwise (a failing check renamed stays failing): a reload
/// never makes a healthy node look unhealthy (which would move its roles),
/// nor the reverse — only `fall` or `rise` runs in a row change a verdict.
/// At the start, every check starts failing.
pub fn start(
    checks: &[CheckConfig],
    shutdown: &CancellationToken,
    previous: Option<&[pb::CheckStatus]>,
) -> CheckBoard {
    let was = |name: &str| previous.and_then(|p| p.iter().find(|p| p.name == name));
    let node_passed = previous.is_some_and(|p| p.iter().all(|c| c.passing));
    let board = CheckBoard::default();
    *board
        .states
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = checks
        .iter()
        .map(|c| match was(&c.name) {
            Some(before) => pb::CheckStatus {
                groups: c.groups.clone(),
                ..before.clone()
            },
            None if node_passed => pb::CheckStatus {
                name: c.name.clone(),
                passing: true,
                groups: c.groups.clone(),
                detail: format!("added by a reload: passes until it fails {} runs", c.fall),
            },
            None => pb::CheckStatus {
                name: c.name.clone(),
                passing: false,
                groups: c.groups.clone(),
                detail: format!("starting: needs {} passing runs", c.rise),
            },
        })
        .collect();
    for (index, check) in checks.iter().enumerate() {
        // Validated when the configuration was loaded.
        let Ok(probe) = check.probe() else {
            continue;
        };
        let passing = match was(&check.name) {
            Some(before) => before.passing,
            None => node_passed,
        };
        tokio::spawn(run(
            index,
            check.clone(),
            probe,
            passing,
            board.clone(),
            shutdown.clone(),
        ));
    }
    board
}

async fn run(
    index: usize,
    check: CheckConfig,
    probe: Probe,
    mut passing: bool,
    board: CheckBoard,
    shutdown: CancellationToken,
) {
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let (mut good, mut bad) = (0u32, 0u32);
    loop {
        let result = match tokio::time::timeout(check.timeout, probe.run(&http)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(check.timeout)
            )),
        };
        let detail = match &result {
            Ok(()) => {
                good += 1;
                bad = 0;
                String::new()
            }
            Err(why) => {
                bad += 1;
                good = 0;
                why.clone()
            }
        };
        let flips = (!passing && good >= check.rise) || (passing && bad >= check.fall);
        if flips {
            passing = !passing;
            if passing {
                tracing::info!(check = %check.name, "health check passes");
            } else {
                tracing::warn!(check = %check.name, %detail, "health check fails");
            }
        }
        board.set(index, passing, detail);
        if flips {
            board.changed.notify_one();
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(check.interval) => {}
        }
    }
}

impl Probe {
    async fn run(
        &self,
        http: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    ) -> Result<(), String> {
        match self {
            Probe::Exec(command) => exec(command).await,
            Probe::Tcp(addr) => tokio::net::TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("cannot connect to {addr}: {e}")),
            Probe::Http(uri) => match http.get(uri.clone()).await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("{uri} answered {}", response.status())),
                Err(e) => Err(format!("GET {uri} failed: {e}")),
            },
        }
    }
}

async fn exec(command: &str) -> Result<(), String> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run the check: {e}"))?;
    // If the timeout drops this future, take the command's helpers down
    // with it; once it has exited by itself, leave its group alone.
    let guard = child
        .id()
        .map(|pid| KillGroupOnDrop(Pid::from_raw(pid as i32)));
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for the check failed: {e}"));
    std::mem::forget(guard);
    match status? {
        s if s.success() => Ok(()),
        s => Err(format!("exited with {s}")),
    }
}

/// Kills a process group when dropped.
struct KillGroupOnDrop(Pid);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        let _ = killpg(self.0, Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> anyhow::Result<()> {
        let c: CheckConfig = toml::from_str(&format!("name = \"c\"\n{text}"))?;
        c.validate()
    }

    #[test]
    fn entries_are_validated() {
        assert!(check("exec = \"true\"").is_ok());
        assert!(check("tcp = \"127.0.0.1:5432\"").is_ok());
        assert!(check("http = \"http://127.0.0.1:8080/health\"").is_ok());
        for (bad, why) in [
            ("", "exactly one"),
            ("exec = \"true\"\ntcp = \"a:1\"", "exactly one"),
            ("tcp = \"nohost\"", "HOST:PORT"),
            ("http = \"https://a/health\"", "https"),
            ("exec = \"true\"\ninterval = \"10ms\"", "interval"),
            (
                "exec = \"true\"\ninterval = \"1s\"\ntimeout = \"2s\"",
                "timeout",
            ),
            ("exec = \"true\"\nrise = 0", "rise"),
            ("exec = \"true\"\ngroups = [\"Bad Group\"]", "not allowed"),
        ] {
            let err = format!("{:#}", check(bad).unwrap_err());
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[tokio::test]
    async fn probes_tell_up_from_down() {
        let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        assert!(Probe::Exec("true".into()).run(&http).await.is_ok());
        assert!(Probe::Exec("exit 1".into()).run(&http).await.is_err());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert!(Probe::Tcp(addr.clone()).run(&http).await.is_ok());
        drop(listener);
        assert!(Probe::Tcp(addr).run(&http).await.is_err());
    }

    #[tokio::test]
    async fn a_reload_keeps_verdicts_and_a_new_check_starts_with_the_node() {
        let config = |name: &str| -> CheckConfig {
            toml::from_str(&format!(
                "name = \"{name}\"\nexec = \"exit 1\"\ninterval = \"1h\"\nfall = 100"
            ))
            .unwrap()
        };
        let status = |name: &str, passing: bool| pb::CheckStatus {
            name: name.into(),
            passing,
            groups: vec![],
            detail: String::new(),
        };
        let shutdown = CancellationToken::new();
        // A failing check renamed: still failing.
        let board = start(
            &[config("bad-renamed")],
            &shutdown,
            Some(&[status("bad", false)]),
        );
        assert!(!board.snapshot()[0].passing);
        // A healthy node's new check: passing until it fails `fall` runs.
        let board = start(&[config("new")], &shutdown, Some(&[status("ok", true)]));
        assert!(board.snapshot()[0].passing);
        // A kept check keeps its verdict.
        let board = start(&[config("ok")], &shutdown, Some(&[status("ok", true)]));
        assert!(board.snapshot()[0].passing);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn rise_and_fall_debounce_the_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("up");
        let config: CheckConfig = toml::from_str(&format!(
            "name = \"c\"\nexec = \"test -f {}\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2",
            flag.display()
        ))
        .unwrap();
        let shutdown = CancellationToken::new();
        let board = start(&[config], &shutdown, None);
        let passing = |b: &CheckBoard| b.snapshot()[0].passing;
        assert!(!passing(&board), "a check starts failing");
        std::fs::write(&flag, "").unwrap();
        wait_for(|| passing(&board)).await;
        std::fs::remove_file(&flag).unwrap();
        wait_for(|| !passing(&board)).await;
        assert!(
            board.snapshot()[0].detail.contains("exited"),
            "{:?}",
            board.snapshot()
        );
        shutdown.cancel();
    }

    async fn wait_for(mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition never held"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
