//! The exec sink: the operator's command run once per event, with the
//! event in `FAILOVER_EVENT_*` environment variables and as JSON on stdin;
//! exit status 0 means delivered. A command that outlives the sink's
//! timeout is killed with its process group.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
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
        // Until it has finished, its whole process group goes with this
        // delivery: at the timeout, and when the sink is replaced or stops.
        let mut group = GroupKill(child.id().and_then(|p| i32::try_from(p).ok()));
        let json = serde_json::to_vec(&message::json(event))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its input still runs.
            tokio::spawn(async move {
                let _ = stdin.write_all(&json).await;
                let _ = stdin.write_all(b"\n").await;
            });
        }
        let said = Arc::new(Mutex::new(Vec::new()));
        let reader = tokio::spawn(head(child.stderr.take(), said.clone()));
        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Err(_) => anyhow::bail!(
                "{:?} did not finish within {:?}",
                self.command[0],
                self.timeout
            ),
            Ok(Err(e)) => anyhow::bail!("{:?}: {e}", self.command[0]),
            Ok(Ok(status)) => status,
        };
        group.0 = None;
        if status.success() {
            reader.abort();
            return Ok(());
        }
        // What it said: a background child that keeps the pipe open does
        // not hold the delivery.
        let _ = tokio::time::timeout(Duration::from_millis(200), reader).await;
        let said = said.lock().map(|s| s.clone()).unwrap_or_default();
        anyhow::bail!(
            "{:?} failed ({status}): {:?}",
            self.command[0],
            String::from_utf8_lossy(&said).trim()
        )
    }
}

/// Kills a process group when dropped, unless emptied first.
struct GroupKill(Option<i32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Keeps the first [`MAX_OUTPUT_BYTES`] of a stream in `kept`; the rest is
/// read and dropped, so a chatty command neither blocks nor fills memory.
async fn head(stream: Option<impl AsyncRead + Unpin>, kept: Arc<Mutex<Vec<u8>>>) {
    let Some(mut stream) = stream else {
        return;
    };
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buf).await {
        if let Ok(mut kept) = kept.lock() {
            let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
    }
}
