//! Snapshots of a synced path: the manifest (every file, directory and
//! link with its size, mode and SHA-256), its content address (the
//! SHA-256 of the encoded entries), scanning a path into one — consistent,
//! or an error to retry — and checking one received from a peer.

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use globset::GlobSet;
use prost::Message;
use proto::v1 as pb;
use thiserror::Error;

/// The most entries a manifest may have (a peer's larger one is refused).
pub const MAX_ENTRIES: usize = 200_000;
/// The longest relative path, and the deepest nesting.
const MAX_PATH: usize = 4096;
const MAX_DEPTH: usize = 64;
/// The longest symbolic link target.
const MAX_TARGET: usize = 4096;
/// The most a manifest may weigh, paths and targets and hashes counted
/// (a peer's heavier one is refused as it arrives).
pub const MAX_BYTES: usize = 64 * 1024 * 1024;

/// What one entry weighs against [`MAX_BYTES`].
pub fn weight(e: &pb::SyncEntry) -> usize {
    e.path.len() + e.target.len() + e.sha256.len() + 32
}

/// One snapshot: its entries (the root first, then parents before
/// children) and its id.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub entries: Vec<pb::SyncEntry>,
    /// SHA-256 (hex) of the entries encoded as one `ManifestEntries`.
    pub id: String,
    /// Sum of the files' sizes.
    pub bytes: u64,
}

impl Manifest {
    fn new(entries: Vec<pb::SyncEntry>) -> Manifest {
        let encoded = pb::ManifestEntries {
            entries: entries.clone(),
        }
        .encode_to_vec();
        let id = hex(ring::digest::digest(&ring::digest::SHA256, &encoded).as_ref());
        let bytes = entries
            .iter()
            .filter(|e| e.kind == pb::EntryKind::File as i32)
            .fold(0u64, |sum, e| sum.saturating_add(e.size));
        Manifest { entries, id, bytes }
    }

    /// The id of this snapshot as `scanner` would see it in place: what
    /// its `exclude` leaves out (with everything under it) is not there.
    pub fn as_seen_by(&self, scanner: &Scanner) -> String {
        let mut left_out: Vec<&str> = Vec::new();
        let kept: Vec<pb::SyncEntry> = self
            .entries
            .iter()
            .filter(|e| {
                let under = left_out.iter().any(|dir| {
                    e.path
                        .strip_prefix(dir)
                        .is_some_and(|rest| rest.starts_with('/'))
                });
                if under || scanner.excluded(&e.path) {
                    left_out.push(&e.path);
                    return false;
                }
                true
            })
            .cloned()
            .collect();
        if kept.len() == self.entries.len() {
            return self.id.clone();
        }
        Manifest::new(kept).id
    }

    /// Whether the synced path is a directory (else a single file).
    pub fn is_dir(&self) -> bool {
        self.entries
            .first()
            .is_some_and(|e| e.kind == pb::EntryKind::Directory as i32)
    }

    /// A manifest received from a peer, checked whole: at most
    /// [`MAX_ENTRIES`], the root first, every path plain (no `..`, `.`,
    /// empty or absolute components) and unique, every parent an earlier
    /// directory entry, files with a 32-byte hash, links with a target.
    pub fn check(entries: Vec<pb::SyncEntry>) -> Result<Manifest, String> {
        if entries.len() > MAX_ENTRIES {
            return Err(format!(
                "the manifest has {} entries, more than {MAX_ENTRIES}",
                entries.len()
            ));
        }
        let total: usize = entries.iter().map(weight).sum();
        if total > MAX_BYTES {
            return Err(format!(
                "the manifest weighs {total} bytes, more than {MAX_BYTES}"
            ));
        }
        let Some(root) = entries.first() else {
            return Err("the manifest is empty".into());
        };
        if !root.path.is_empty() {
            return Err("the manifest does not start with the synced path itself".into());
        }
        let root_is_dir = root.kind == pb::EntryKind::Directory as i32;
        if !root_is_dir && (root.kind != pb::EntryKind::File as i32 || entries.len() != 1) {
            return Err("the synced path must be one file or a directory".into());
        }
        let mut dirs: HashSet<&str> = HashSet::new();
        let mut seen: HashSet<&str> = HashSet::new();
        dirs.insert("");
        for (i, e) in entries.iter().enumerate() {
            let shown: String = e.path.chars().take(80).collect();
            if i > 0 {
                check_path(&e.path).map_err(|why| format!("entry {shown:?}: {why}"))?;
                let parent = e.path.rsplit_once('/').map_or("", |(p, _)| p);
                if !dirs.contains(parent) {
                    return Err(format!(
                        "entry {shown:?} comes before its directory, or its parent is not a directory"
                    ));
                }
                if !seen.insert(e.path.as_str()) {
                    return Err(format!("entry {shown:?} appears twice"));
                }
            }
            if e.mode > 0o777 {
                return Err(format!(
                    "entry {shown:?}: mode {:o} is more than permissions",
                    e.mode
                ));
            }
            match pb::EntryKind::try_from(e.kind) {
                Ok(pb::EntryKind::File) if e.sha256.len() == 32 && e.target.is_empty() => {}
                Ok(pb::EntryKind::Directory) if e.sha256.is_empty() && e.size == 0 => {
                    dirs.insert(e.path.as_str());
                }
                Ok(pb::EntryKind::Symlink)
                    if i > 0
                        && !e.target.is_empty()
                        && e.target.len() <= MAX_TARGET
                        && !e.target.contains('\0')
                        && e.sha256.is_empty() => {}
                _ => return Err(format!("entry {shown:?} is malformed")),
            }
        }
        Ok(Manifest::new(entries))
    }
}

/// A relative path as manifests carry it: "/"-separated plain names.
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() || path.len() > MAX_PATH {
        return Err("empty or too long a path");
    }
    if path.contains('\0') {
        return Err("a NUL in the path");
    }
    let mut depth = 0;
    for part in path.split('/') {
        depth += 1;
        if part.is_empty() || part == "." || part == ".." || part.len() > 255 {
            return Err("not a plain relative path");
        }
    }
    if depth > MAX_DEPTH {
        return Err("nested too deep");
    }
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Error)]
pub enum ScanError {
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("{path} changed while it was read")]
    Changing { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

/// What identifies a file's content without reading it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
}

impl Stat {
    pub fn of(m: &Metadata) -> Stat {
        Stat {
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            ino: m.ino(),
        }
    }
}

/// Scans one path into manifests, remembering each file's hash by its
/// stat so an unchanged file is not read again.
pub struct Scanner {
    root: PathBuf,
    exclude: GlobSet,
    hashes: HashMap<String, (Stat, [u8; 32])>,
}

/// A scan's result: the manifest and each file's stat when it was hashed
/// (what a primary checks before serving a file).
pub struct Scan {
    pub manifest: Manifest,
    pub stats: HashMap<String, Stat>,
}

impl Scanner {
    pub fn new(root: PathBuf, exclude: GlobSet) -> Scanner {
        Scanner {
            root,
            exclude,
            hashes: HashMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `relative` is left out of snapshots.
    pub fn excluded(&self, relative: &str) -> bool {
        !relative.is_empty() && self.exclude.is_match(relative)
    }

    /// A consistent snapshot of the path: every file hashed and unchanged
    /// from before it was read until the whole walk is over (checked by
    /// a second look at every stat); otherwise `Changing`, to retry.
    /// Blocking: run it off the async threads.
    pub fn scan(&mut self) -> Result<Scan, ScanError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ScanError::Io { path, source }
        };
        let root_meta = match std::fs::symlink_metadata(&self.root) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ScanError::Missing(self.root.clone()));
            }
            Err(e) => return Err(io(&self.root)(e)),
        };
        let mut entries = Vec::new();
        let mut stats = HashMap::new();
        if root_meta.is_file() {
            let (entry, stat) = self.file_entry(String::new(), &self.root.clone(), &root_meta)?;
            entries.push(entry);
            stats.insert(String::new(), stat);
        } else if root_meta.is_dir() {
            entries.push(dir_entry(String::new(), &root_meta));
            self.walk(&self.root.clone(), "", 1, &mut entries, &mut stats)?;
        } else {
            return Err(ScanError::Refused(format!(
                "{} is neither a file nor a directory",
                self.root.display()
            )));
        }
        // A second look: anything that changed during the walk makes the
        // snapshot a mix of two moments.
        for (relative, stat) in &stats {
            let path = self.full(relative);
            let now = std::fs::symlink_metadata(&path).map_err(io(&path))?;
            if Stat::of(&now) != *stat {
                return Err(ScanError::Changing { path });
            }
        }
        // Forget hashes of files that are gone.
        self.hashes.retain(|path, _| stats.contains_key(path));
        Ok(Scan {
            manifest: Manifest::new(entries),
            stats,
        })
    }

    fn full(&self, relative: &str) -> PathBuf {
        if relative.is_empty() {
            self.root.clone()
        } else {
            self.root.join(relative)
        }
    }

    fn walk(
        &mut self,
        dir: &Path,
        prefix: &str,
        depth: usize,
        entries: &mut Vec<pb::SyncEntry>,
        stats: &mut HashMap<String, Stat>,
    ) -> Result<(), ScanError> {
        if depth > MAX_DEPTH {
            return Err(ScanError::Refused(format!(
                "{} is nested deeper than {MAX_DEPTH} levels",
                dir.display()
            )));
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ScanError::Io { path, source }
        };
        let mut names = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io(dir))? {
            let item = item.map_err(io(dir))?;
            let Ok(name) = item.file_name().into_string() else {
                tracing::warn!(dir = %dir.display(), "a name that is not UTF-8 is left out of the snapshot");
                continue;
            };
            names.push(name);
        }
        names.sort();
        for name in names {
            let relative = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if self.excluded(&relative) {
                continue;
            }
            let path = dir.join(&name);
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                // Removed since the listing: the next scan sees it gone.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ScanError::Changing { path });
                }
                Err(e) => return Err(io(&path)(e)),
            };
            if entries.len() >= MAX_ENTRIES {
                return Err(ScanError::Refused(format!(
                    "{} holds more than {MAX_ENTRIES} entries",
                    self.root.display()
                )));
            }
            let kind = meta.file_type();
            if kind.is_dir() {
                entries.push(dir_entry(relative.clone(), &meta));
                self.walk(&path, &relative, depth + 1, entries, stats)?;
            } else if kind.is_file() {
                let (entry, stat) = self.file_entry(relative.clone(), &path, &meta)?;
                entries.push(entry);
                stats.insert(relative, stat);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path).map_err(io(&path))?;
                let Some(target) = target.to_str().filter(|t| t.len() <= MAX_TARGET) else {
                    continue;
                };
                entries.push(pb::SyncEntry {
                    path: relative,
                    kind: pb::EntryKind::Symlink as i32,
                    size: 0,
                    mode: 0o777,
                    sha256: Vec::new(),
                    target: target.to_owned(),
                });
            }
            // Sockets, pipes and devices are not content: left out.
        }
        Ok(())
    }

    fn file_entry(
        &mut self,
        relative: String,
        path: &Path,
        meta: &Metadata,
    ) -> Result<(pb::SyncEntry, Stat), ScanError> {
        let stat = Stat::of(meta);
        let hash = match self.hashes.get(&relative) {
            Some((known, hash)) if *known == stat => *hash,
            _ => {
                let hash = hash_file(path, stat)?;
                self.hashes.insert(relative.clone(), (stat, hash));
                hash
            }
        };
        Ok((
            pb::SyncEntry {
                path: relative,
                kind: pb::EntryKind::File as i32,
                size: stat.size,
                mode: meta.permissions().mode() & 0o777,
                sha256: hash.to_vec(),
                target: String::new(),
            },
            stat,
        ))
    }
}

fn dir_entry(relative: String, meta: &Metadata) -> pb::SyncEntry {
    pb::SyncEntry {
        path: relative,
        kind: pb::EntryKind::Directory as i32,
        size: 0,
        mode: meta.permissions().mode() & 0o777,
        sha256: Vec::new(),
        target: String::new(),
    }
}

/// Whether the regular file at `path` (not followed if a link) holds
/// `size` bytes with this SHA-256.
pub fn same_content(path: &Path, size: u64, sha256: &[u8]) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    meta.is_file()
        && meta.len() == size
        && hash_file(path, Stat::of(&meta)).is_ok_and(|hash| hash.as_slice() == sha256)
}

/// The SHA-256 of a file that must still have `stat` once read.
fn hash_file(path: &Path, stat: Stat) -> Result<[u8; 32], ScanError> {
    let io = |source| ScanError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 256 * 1024];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        read = read.saturating_add(n as u64);
        context.update(&buffer[..n]);
    }
    let after = Stat::of(&file.metadata().map_err(io)?);
    if after != stat || read != stat.size {
        return Err(ScanError::Changing {
            path: path.to_owned(),
        });
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(context.finish().as_ref());
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanner(root: &Path, exclude: &[&str]) -> Scanner {
        let mut set = globset::GlobSetBuilder::new();
        for p in exclude {
            set.add(globset::Glob::new(p).unwrap());
        }
        Scanner::new(root.to_owned(), set.build().unwrap())
    }

    #[test]
    fn a_snapshot_is_addressed_by_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("app");
        std::fs::create_dir_all(root.join("conf.d")).unwrap();
        std::fs::write(root.join("conf.d/a.conf"), "a").unwrap();
        std::fs::write(root.join("main.conf"), "main").unwrap();
        std::fs::write(root.join("app.lock"), "pid").unwrap();
        std::os::unix::fs::symlink("main.conf", root.join("current")).unwrap();
        let mut s = scanner(&root, &["*.lock"]);
        let first = s.scan().unwrap().manifest;
        let paths: Vec<&str> = first.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["", "conf.d", "conf.d/a.conf", "current", "main.conf"]
        );
        assert_eq!(first.bytes, 5);
        // The same content elsewhere is the same snapshot.
        let copy = dir.path().join("copy");
        std::fs::create_dir_all(copy.join("conf.d")).unwrap();
        std::fs::write(copy.join("conf.d/a.conf"), "a").unwrap();
        std::fs::write(copy.join("main.conf"), "main").unwrap();
        std::os::unix::fs::symlink("main.conf", copy.join("current")).unwrap();
        assert_eq!(scanner(&copy, &[]).scan().unwrap().manifest.id, first.id);
        // A change is a new snapshot.
        std::fs::write(root.join("main.conf"), "main2").unwrap();
        assert_ne!(s.scan().unwrap().manifest.id, first.id);
        // What was received checks the same.
        let again = Manifest::check(first.entries.clone()).unwrap();
        assert_eq!(again.id, first.id);
    }

    #[test]
    fn a_standby_that_excludes_more_sees_the_snapshot_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("app");
        std::fs::create_dir_all(root.join("logs")).unwrap();
        std::fs::write(root.join("logs/today.log"), "x").unwrap();
        std::fs::write(root.join("main.conf"), "main").unwrap();
        std::fs::write(root.join("debug.log"), "y").unwrap();
        let published = scanner(&root, &[]).scan().unwrap().manifest;
        // What the standby's own scan of the same copy finds.
        let standby = scanner(&root, &["logs", "*.log"]);
        let seen = scanner(&root, &["logs", "*.log"])
            .scan()
            .unwrap()
            .manifest
            .id;
        assert_eq!(published.as_seen_by(&standby), seen);
        assert_eq!(published.as_seen_by(&scanner(&root, &[])), published.id);
    }

    #[test]
    fn a_hostile_manifest_is_refused() {
        let root = pb::SyncEntry {
            kind: pb::EntryKind::Directory as i32,
            mode: 0o755,
            ..Default::default()
        };
        let file = |path: &str| pb::SyncEntry {
            path: path.into(),
            kind: pb::EntryKind::File as i32,
            size: 1,
            mode: 0o644,
            sha256: vec![0; 32],
            target: String::new(),
        };
        let link = pb::SyncEntry {
            path: "l".into(),
            kind: pb::EntryKind::Symlink as i32,
            target: "/etc".into(),
            ..Default::default()
        };
        assert!(Manifest::check(vec![root.clone(), file("a")]).is_ok());
        for bad in [
            vec![],
            vec![file("a")],
            vec![file(""), file("b")],
            vec![root.clone(), file("../a")],
            vec![root.clone(), file("/a")],
            vec![root.clone(), file("a//b")],
            vec![root.clone(), file("d/a")],
            vec![root.clone(), file("a"), file("a")],
            // Nothing is written through a link.
            vec![root.clone(), link.clone(), file("l/passwd")],
            vec![
                root.clone(),
                pb::SyncEntry {
                    sha256: vec![1; 3],
                    ..file("a")
                },
            ],
            vec![
                root.clone(),
                pb::SyncEntry {
                    mode: 0o4755,
                    ..file("a")
                },
            ],
        ] {
            assert!(Manifest::check(bad.clone()).is_err(), "{bad:?} accepted");
        }
        let huge = std::iter::once(root)
            .chain((0..=MAX_ENTRIES).map(|i| file(&format!("f{i}"))))
            .collect();
        assert!(Manifest::check(huge).unwrap_err().contains("more than"));
    }

    #[test]
    fn a_file_that_changes_while_read_is_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, "one").unwrap();
        let stat = Stat::of(&std::fs::metadata(&path).unwrap());
        std::fs::write(&path, "two, longer").unwrap();
        assert!(matches!(
            hash_file(&path, stat),
            Err(ScanError::Changing { .. })
        ));
    }
}
