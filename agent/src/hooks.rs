//! Runs one hook: the operator's command with the hook contract's
//! environment, its output copied to the agent's log, bounded by a timeout,
//! and killed (with its whole process group) when a newer role change
//! supersedes it. Which hook runs when is decided in `agent.rs`.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::hook_output::Capped;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// The environment of one hook run (the hook contract).
#[derive(Debug, Clone, PartialEq)]
pub struct HookEnv {
    pub group: String,
    pub node: String,
    pub role: &'static str,
    pub previous_role: &'static str,
    pub epoch: u64,
    /// Node id of the group's primary, empty when none.
    pub primary: String,
    pub standby_mode: &'static str,
    /// How this node's synced copies stand (fresh, stale, none); `None`
    /// when no `[[sync]]` follows the group (the variable is then unset).
    pub sync_state: Option<&'static str>,
}

impl HookEnv {
    fn vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("FAILOVER_GROUP", self.group.clone()),
            ("FAILOVER_NODE", self.node.clone()),
            ("FAILOVER_ROLE", self.role.to_owned()),
            ("FAILOVER_PREVIOUS_ROLE", self.previous_role.to_owned()),
            ("FAILOVER_EPOCH", self.epoch.to_string()),
            ("FAILOVER_PRIMARY", self.primary.clone()),
            ("FAILOVER_STANDBY_MODE", self.standby_mode.to_owned()),
        ];
        if let Some(state) = self.sync_state {
            vars.push(("FAILOVER_SYNC_STATE", state.to_owned()));
        }
        vars
    }
}

/// How a hook run ended (never `NotConfigured`: that needs no run).
pub use proto::vocab::HookOutcome as Outcome;

#[derive(Debug, Clone, PartialEq)]
pub struct HookRun {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub detail: String,
}

/// Runs `command` through `sh -c` and waits for it, its timeout, or `cancel`.
pub async fn run(
    command: &str,
    env: &HookEnv,
    timeout: Duration,
    cancel: CancellationToken,
) -> HookRun {
    let mut child = match Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .envs(env.vars())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return HookRun {
                outcome: Outcome::Failed,
                exit_code: None,
                detail: format!("cannot start the hook: {e}"),
            };
        }
    };
    tracing::info!(group = %env.group, epoch = env.epoch, role = env.role, previous_role = env.previous_role, "hook started");
    if let Some(out) = child.stdout.take() {
        tokio::spawn(log_lines(out, env.group.clone(), env.epoch, false));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(log_lines(err, env.group.clone(), env.epoch, true));
    }
    let pid = child.id();
    let stopped = |outcome, detail: String| {
        // The hook may have started helpers; stop them all.
        if let Some(pid) = pid {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        HookRun {
            outcome,
            exit_code: None,
            detail,
        }
    };
    let run = tokio::select! {
        status = child.wait() => match status {
            Ok(status) if status.success() => HookRun { outcome: Outcome::Succeeded, exit_code: Some(0), detail: String::new() },
            Ok(status) => HookRun {
                outcome: Outcome::Failed,
                exit_code: status.code(),
                detail: format!("hook exited with {status}"),
            },
            Err(e) => HookRun { outcome: Outcome::Failed, exit_code: None, detail: format!("waiting for the hook failed: {e}") },
        },
        _ = tokio::time::sleep(timeout) => stopped(
            Outcome::TimedOut,
            format!("hook ran past its timeout of {} and was killed", humantime::format_duration(timeout)),
        ),
        _ = cancel.cancelled() => stopped(Outcome::Superseded, "a newer role change superseded the hook".into()),
    };
    let _ = child.wait().await;
    run
}

/// Copies one output stream of a hook to the log, bounded
/// (`hook_output.rs`): the hook's output is read to its end either way, so
/// it never blocks on a full pipe.
async fn log_lines(mut stream: impl AsyncRead + Unpin, group: String, epoch: u64, is_stderr: bool) {
    let log = |line: &str| {
        if is_stderr {
            tracing::warn!(%group, epoch, "hook: {line}");
        } else {
            tracing::info!(%group, epoch, "hook: {line}");
        }
    };
    let mut capped = Capped::default();
    let mut buf = vec![0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => capped.push(&buf[..n]).iter().for_each(|l| log(l)),
        }
    }
    capped.finish().iter().for_each(|l| log(l));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HookEnv {
        HookEnv {
            group: "g".into(),
            node: "n-1".into(),
            role: "primary",
            previous_role: "secondary",
            epoch: 7,
            primary: "n-1".into(),
            standby_mode: "hot",
            sync_state: None,
        }
    }

    #[tokio::test]
    async fn the_hook_sees_the_contract_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let command = format!(
            "echo \"$FAILOVER_GROUP $FAILOVER_NODE $FAILOVER_ROLE $FAILOVER_PREVIOUS_ROLE \
             $FAILOVER_EPOCH $FAILOVER_PRIMARY $FAILOVER_STANDBY_MODE\" > {}",
            out.display()
        );
        let run = run(
            &command,
            &env(),
            Duration::from_secs(10),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(run.outcome, Outcome::Succeeded);
        let seen = std::fs::read_to_string(out).unwrap();
        assert_eq!(seen.trim(), "g n-1 primary secondary 7 n-1 hot");
    }

    #[tokio::test]
    async fn a_failing_hook_reports_its_exit_status() {
        let run = run(
            "exit 3",
            &env(),
            Duration::from_secs(10),
            CancellationToken::new(),
        )
        .await;
        assert_eq!((run.outcome, run.exit_code), (Outcome::Failed, Some(3)));
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed() {
        let run = run(
            "sleep 30",
            &env(),
            Duration::from_millis(200),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(run.outcome, Outcome::TimedOut);
    }

    #[tokio::test]
    async fn a_superseded_hook_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let started = dir.path().join("started");
        let marker = dir.path().join("survived");
        let command = format!(
            "(sleep 1; touch {}) & touch {}; wait",
            marker.display(),
            started.display()
        );
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move { run(&command, &env(), Duration::from_secs(30), cancel).await }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !started.exists() {
            assert!(std::time::Instant::now() < deadline, "hook never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cancel.cancel();
        assert_eq!(task.await.unwrap().outcome, Outcome::Superseded);
        // The backgrounded child was in the hook's process group: had it
        // survived, it would create the marker after one second.
        let window = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < window {
            assert!(!marker.exists(), "the hook's child outlived the hook");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
