//! Who this agent is, beyond its node id: a random instance id per process
//! start, and a persistent installation UUID kept in the state directory.
//!
//! The coordinator binds leases, assignments and step-down confirmations to
//! the instance they were issued to, so a second process claiming the same
//! node id (a cloned machine, an installer run twice) can never renew or
//! confirm on this one's behalf. The installation UUID tells the operator
//! whether a duplicate comes from this installation (a second process, a
//! clone) or another one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// File, in the state directory, that keeps the installation UUID.
pub const NODE_UUID_FILE: &str = "node-uuid";
/// File, in the state directory, where an agent that stops cleanly leaves
/// its instance id for the next one of the same node id:
/// `previous-instance.<node id>`.
pub const PREVIOUS_INSTANCE_FILE: &str = "previous-instance";

fn previous_instance_file(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join(format!("{PREVIOUS_INSTANCE_FILE}.{node}"))
}

/// This process's identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// 32 lowercase hex digits, new at every start.
    pub instance: String,
    pub node_uuid: String,
}

impl Identity {
    /// The instance id's first 8 hex digits, for logs: the whole id is a
    /// secret shared only with the coordinator.
    pub fn short(&self) -> &str {
        self.instance.get(..8).unwrap_or(&self.instance)
    }

    /// A new instance id, and the installation UUID read from `state_dir`
    /// (created there on first start).
    pub fn load(state_dir: &Path) -> anyhow::Result<Identity> {
        Ok(Identity {
            instance: format!("{:032x}", rand::random::<u128>()),
            node_uuid: node_uuid(state_dir)?,
        })
    }
}

/// The instance id the last agent that stopped cleanly from `state_dir`
/// left there: proof for the coordinator that this process follows it
/// (only a process that can read the state directory knows it). The file
/// stays until a process the coordinator accepted stops and replaces it,
/// so a start that never got in (killed early, a refused duplicate) loses
/// nothing. `None` if there is none or it is unreadable.
pub fn read_previous_instance(state_dir: &Path, node: &str) -> Option<String> {
    let path = previous_instance_file(state_dir, node);
    let text = fs::read_to_string(&path).ok()?;
    let id = text.trim();
    let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    (id.len() == 32 && id.bytes().all(hex)).then(|| id.to_owned())
}

/// Leaves this process's instance id for the next agent (owner-only: it is
/// the proof that lets the next one take over a role within the grace).
pub fn leave_instance(state_dir: &Path, node: &str, instance: &str) -> std::io::Result<()> {
    crate::durable_file::replace(
        &previous_instance_file(state_dir, node),
        format!("{instance}\n").as_bytes(),
        0o600,
    )
}

/// Reads the installation UUID, creating it atomically if it is missing.
fn node_uuid(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join(NODE_UUID_FILE);
    if let Some(id) = read_uuid(&path)? {
        return Ok(id);
    }
    if !state_dir.is_dir() {
        bail!(
            "state_dir {} is not a directory: create it, or set state_dir in the agent's config",
            state_dir.display()
        );
    }
    let id = uuid::Uuid::new_v4().hyphenated().to_string();
    let created = create_once(&path, &format!("{id}\n")).with_context(|| {
        format!(
            "cannot keep the node UUID in {} (set state_dir to a writable directory)",
            path.display()
        )
    })?;
    if created {
        return Ok(id);
    }
    // Another agent sharing this directory created it first: use theirs.
    read_uuid(&path)?.with_context(|| format!("{} vanished", path.display()))
}

/// The UUID in `path`, or `None` if there is no such file.
fn read_uuid(path: &Path) -> anyhow::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => uuid::Uuid::parse_str(text.trim())
            .map(|u| Some(u.hyphenated().to_string()))
            .with_context(|| {
                format!(
                    "{} does not hold a UUID (remove it to make a new one)",
                    path.display()
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes `text` to a temporary file beside `path`, syncs it, and links it
/// to `path` only if nothing is there yet (one winner among agents starting
/// together), then syncs the directory: never a half-written file. Returns
/// whether this call created `path`.
fn create_once(path: &Path, text: &str) -> std::io::Result<bool> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(
        ".{NODE_UUID_FILE}.tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            File::open(dir)?.sync_all()?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uuid_is_kept_and_the_instance_is_new_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load(dir.path()).unwrap();
        let b = Identity::load(dir.path()).unwrap();
        assert_eq!(a.node_uuid, b.node_uuid);
        assert_ne!(a.instance, b.instance);
        assert_eq!(a.instance.len(), 32);
        assert_eq!(a.node_uuid.len(), 36);
    }

    #[test]
    fn agents_starting_together_agree_on_one_uuid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let ids: Vec<String> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || Identity::load(&path).unwrap().node_uuid)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    }

    #[test]
    fn the_previous_instance_stays_until_replaced() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_previous_instance(dir.path(), "n1"), None);
        let id = Identity::load(dir.path()).unwrap().instance;
        leave_instance(dir.path(), "n1", &id).unwrap();
        assert_eq!(read_previous_instance(dir.path(), "n2"), None);
        assert_eq!(read_previous_instance(dir.path(), "n1"), Some(id.clone()));
        // A start that never got in leaves it for the next one.
        assert_eq!(read_previous_instance(dir.path(), "n1"), Some(id));
        let next = Identity::load(dir.path()).unwrap().instance;
        leave_instance(dir.path(), "n1", &next).unwrap();
        assert_eq!(read_previous_instance(dir.path(), "n1"), Some(next));
    }

    #[test]
    fn a_damaged_uuid_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(NODE_UUID_FILE), "garbage").unwrap();
        let err = format!("{:#}", Identity::load(dir.path()).unwrap_err());
        assert!(err.contains("does not hold a UUID"), "{err}");
    }

    #[test]
    fn a_missing_state_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!(
            "{:#}",
            Identity::load(&dir.path().join("nope")).unwrap_err()
        );
        assert!(err.contains("state_dir"), "{err}");
    }
}
