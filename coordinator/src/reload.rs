//! Files the coordinator re-reads while it runs — TLS certificates and
//! keys, the operators' token file — when they change on disk (their
//! inode, size and times are looked at every two seconds) and on SIGHUP
//! (the configuration file: only on SIGHUP, `config_reload.rs`). A
//! file that does not load leaves the running version in place; whoever
//! reloads logs why.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// How often the files are looked at for changes.
const POLL: Duration = Duration::from_secs(2);

/// Something made from files, that can be made again.
pub(crate) trait Reload: Send + Sync {
    /// The files it is made from.
    fn files(&self) -> Vec<PathBuf>;
    /// Makes it again from the files; on failure keeps the old one.
    fn reload(&self, why: &str);
    /// Whether a change of its files is enough (else only SIGHUP).
    fn on_change(&self) -> bool {
        true
    }
}

/// Reloads each of `items` whenever one of its files changes, and all of
/// them on SIGHUP, until `shutdown`.
pub(crate) async fn watch(items: Vec<Arc<dyn Reload>>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    if items.is_empty() {
        return;
    }
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut seen: Vec<Vec<Stamp>> = items.iter().map(|i| stamps(i.as_ref())).collect();
    let mut tick = tokio::time::interval(POLL);
    loop {
        let sighup = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sighup => {
                for (item, seen) in items.iter().zip(seen.iter_mut()) {
                    // Looked at before reading, so a change that lands
                    // meanwhile is seen at the next poll.
                    *seen = stamps(item.as_ref());
                    item.reload("SIGHUP");
                }
            }
            _ = tick.tick() => {
                for (item, seen) in items.iter().zip(seen.iter_mut()) {
                    let now = stamps(item.as_ref());
                    if now != *seen && item.on_change() {
                        item.reload("a file changed");
                        // Not again for the same change, even if it did
                        // not load.
                        *seen = now;
                    }
                }
            }
        }
    }
}

/// What identifies a version of a file: a rename (a Secret's symlink
/// swap), a copy that keeps the old modification time, or a rewrite in
/// place all change at least one of these.
type Stamp = Option<(u64, u64, SystemTime, i64, i64)>;

fn stamps(item: &dyn Reload) -> Vec<Stamp> {
    use std::os::unix::fs::MetadataExt;
    item.files()
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((
                m.ino(),
                m.size(),
                m.modified().ok()?,
                m.ctime(),
                m.ctime_nsec(),
            ))
        })
        .collect()
}
