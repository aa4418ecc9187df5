//! The exec sink: the operator's command run once per event, with the
//! event in `FAILOVER_EVENT_*` environment variables and as JSON on stdin;
//! exit status 0 means delivered. A command that outlives the sink's
//! timeout is killed with its process group.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::config::NotifyConfig;
use super::message;
use crate::model::EventRecord;

/// The most of a failing command's output kept for the log.
const MAX_OUTPUT_BYTES: usize = 2048;

pub(crate) struct Exec {
    command: Vec<String>,
    timeout: Duration,
}

impl Exec {
    pub(crate) fn new(config: &NotifyConfig) -> Exec {
        Exec {
            command: config.command.clone(),
            timeout: config.timeout(),
        }
    }

    pub(crate) async fn deliver(&self, event: &EventRecord) -> anyhow::Result<()> {
        let mut command = tokio::process::Command::new(&self.command[0]);
        command
            .args(&self.command[1..])
            .envs(message::environment(event))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {:?}: {e}", self.command[0]))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let stderr = child.stderr.take();
        let json = serde_json::to_vec(&message::json(event))?;
        let run = async {
            let feed = async {
                if let Some(mut stdin) = stdin {
                    // A command that does not read its input still runs.
                    let _ = stdin.write_all(&json).await;
                    let _ = stdin.write_all(b"\n").await;
                }
            };
            let (_, err, status) = tokio::join!(feed, head(stderr), child.wait());
            status.map(|status| (status, err))
        };
        match tokio::time::timeout(self.timeout, run).await {
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                anyhow::bail!(
                    "{:?} did not finish within {:?}",
                    self.command[0],
                    self.timeout
                )
            }
            Ok(Err(e)) => anyhow::bail!("{:?}: {e}", self.command[0]),
            Ok(Ok((status, _))) if status.success() => Ok(()),
            Ok(Ok((status, err))) => {
                anyhow::bail!(
                    "{:?} failed ({status}): {}",
                    self.command[0],
                    String::from_utf8_lossy(&err).trim()
                )
            }
        }
    }
}

/// The first [`MAX_OUTPUT_BYTES`] of a stream; the rest is read and
/// dropped, so a chatty command neither blocks nor fills memory.
async fn head(stream: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut stream) = stream else {
        return kept;
    };
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buf).await {
        let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}
