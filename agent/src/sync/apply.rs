//! Putting a fetched snapshot in place on a standby, whole or not at all:
//! the new copy is built beside the old one (in `.NAME.failover-sync`,
//! same filesystem), from verified objects and unchanged local files, every
//! file and directory synced, and then swapped in with one rename — a
//! directory by exchanging the two (RENAME_EXCHANGE), a file by renaming
//! over it — and the parent directory synced. A failure before the swap
//! leaves the old copy as it was.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use proto::v1 as pb;

use super::manifest::{Manifest, Scanner, hex};

/// The staging directory of one synced path.
#[derive(Clone)]
pub struct Staging {
    pub dir: PathBuf,
}

impl Staging {
    /// `.NAME.failover-sync` beside `target`.
    pub fn for_path(target: &Path) -> Staging {
        let parent = target.parent().unwrap_or(Path::new("/"));
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Staging {
            dir: parent.join(format!(".{name}.failover-sync")),
        }
    }

    /// Creates it (owner only) with its `objects` directory. Whatever
    /// else has its name — a link someone planted, a file — is removed
    /// first, never followed: nothing is written outside it.
    pub fn prepare(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        for dir in [self.dir.clone(), self.dir.join("objects")] {
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => fs::remove_file(&dir)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            fs::DirBuilder::new().mode(0o700).create(&dir)?;
        }
        Ok(())
    }

    /// Where a verified file with this hash waits.
    pub fn object(&self, sha256: &[u8]) -> PathBuf {
        self.dir.join("objects").join(hex(sha256))
    }

    fn built(&self) -> PathBuf {
        self.dir.join("new")
    }

    fn old(&self) -> PathBuf {
        self.dir.join("old")
    }

    /// Removes everything staged (after a swap, or to free a full disk).
    pub fn clear(&self) {
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove the sync's staging directory");
        }
    }
}

/// Builds the new copy of `manifest` in the staging directory from its
/// objects and from `local` (files of the current copy by hash), carrying
/// over the current copy's excluded paths. Blocking.
pub fn build(
    manifest: &Manifest,
    target: &Path,
    staging: &Staging,
    local: &HashMap<Vec<u8>, PathBuf>,
    scanner: &Scanner,
) -> io::Result<PathBuf> {
    let built = staging.built();
    remove_any(&built)?;
    // Each source is linked once: two paths with the same content get
    // inodes of their own (a mode set on one must not change the other).
    let linked = std::cell::RefCell::new(std::collections::HashSet::new());
    let place_file = |entry: &pb::SyncEntry, at: &Path| -> io::Result<()> {
        let object = staging.object(&entry.sha256);
        let source = if object.exists() {
            object
        } else {
            local.get(&entry.sha256).cloned().ok_or_else(|| {
                io::Error::other(format!("{}: its content was not fetched", entry.path))
            })?
        };
        let first_use = linked.borrow_mut().insert(source.clone());
        if !first_use || fs::hard_link(&source, at).is_err() {
            copy_synced(&source, at)?;
        }
        fs::set_permissions(at, fs::Permissions::from_mode(entry.mode))
    };
    if !manifest.is_dir() {
        place_file(&manifest.entries[0], &built)?;
        return Ok(built);
    }
    let mut dirs = Vec::new();
    for entry in &manifest.entries {
        let at = if entry.path.is_empty() {
            built.clone()
        } else {
            built.join(&entry.path)
        };
        match pb::EntryKind::try_from(entry.kind) {
            Ok(pb::EntryKind::Directory) => {
                fs::create_dir(&at)?;
                dirs.push((at, entry.mode));
            }
            Ok(pb::EntryKind::File) => place_file(entry, &at)?,
            Ok(pb::EntryKind::Symlink) => std::os::unix::fs::symlink(&entry.target, &at)?,
            _ => return Err(io::Error::other("unknown entry kind")),
        }
    }
    // What the current copy keeps out of snapshots stays with it.
    if target.is_dir() {
        carry_excluded(target, &built, "", scanner)?;
    }
    // Modes last (a read-only directory must be filled first), deepest
    // first; then every directory made durable.
    for (dir, mode) in dirs.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode))?;
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(built)
}

/// Swaps the built copy in place of `target` (which may not exist yet),
/// syncs the parent directory, and removes the old copy. Blocking.
pub fn swap(built: &Path, target: &Path, staging: &Staging) -> io::Result<()> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    let exists = fs::symlink_metadata(target).is_ok();
    if built.is_dir() && exists && target.is_dir() {
        match nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            built,
            nix::fcntl::AT_FDCWD,
            target,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        ) {
            Ok(()) => {}
            // A filesystem without exchange: the old copy moves aside
            // first, so for a moment the path is absent (never mixed).
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOSYS) => {
                let old = staging.old();
                remove_any(&old)?;
                fs::rename(target, &old)?;
                fs::rename(built, target)?;
                fs::File::open(parent)?.sync_all()?;
                remove_any(&old)?;
                return Ok(());
            }
            Err(e) => return Err(io::Error::from(e)),
        }
        fs::File::open(parent)?.sync_all()?;
        // `built` now holds the old copy.
        remove_any(built)?;
        return Ok(());
    }
    if exists && target.is_dir() != built.is_dir() {
        // A file became a directory or the other way round.
        let old = staging.old();
        remove_any(&old)?;
        fs::rename(target, &old)?;
        fs::rename(built, target)?;
        fs::File::open(parent)?.sync_all()?;
        return remove_any(&old);
    }
    fs::rename(built, target)?;
    fs::File::open(parent)?.sync_all()
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            // A read-only directory inside cannot be emptied as it is.
            make_writable(path);
            fs::remove_dir_all(path)
        }
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn make_writable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(items) = fs::read_dir(dir) {
        for item in items.flatten() {
            if item.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&item.path());
            }
        }
    }
}

/// Copies a file and syncs the copy (when a hard link cannot be made).
fn copy_synced(from: &Path, to: &Path) -> io::Result<()> {
    fs::copy(from, to)?;
    fs::OpenOptions::new().write(true).open(to)?.sync_all()
}

/// Links (or makes again) the current copy's excluded paths under `prefix`
/// into the new one, where their directory exists there.
fn carry_excluded(
    old_root: &Path,
    new_root: &Path,
    prefix: &str,
    scanner: &Scanner,
) -> io::Result<()> {
    let dir = if prefix.is_empty() {
        old_root.to_owned()
    } else {
        old_root.join(prefix)
    };
    for item in fs::read_dir(&dir)? {
        let item = item?;
        let Ok(name) = item.file_name().into_string() else {
            continue;
        };
        let relative = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = item.file_type()?;
        let new = new_root.join(&relative);
        if scanner.excluded(&relative) {
            if fs::symlink_metadata(&new).is_err() {
                carry(&item.path(), &new)?;
            }
        } else if kind.is_dir() && new.is_dir() && !new.is_symlink() {
            carry_excluded(old_root, new_root, &relative, scanner)?;
        }
    }
    Ok(())
}

/// Makes `from` appear at `to`: files linked, directories made again.
fn carry(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    if meta.is_dir() {
        fs::create_dir(to)?;
        for item in fs::read_dir(from)? {
            let item = item?;
            carry(&item.path(), &to.join(item.file_name()))?;
        }
        fs::set_permissions(to, meta.permissions())
    } else if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)
    } else if meta.is_file() {
        fs::hard_link(from, to).or_else(|_| copy_synced(from, to))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanner(root: &Path) -> Scanner {
        Scanner::new(root.to_owned(), globset::GlobSet::empty())
    }

    #[test]
    fn files_with_the_same_content_keep_their_own_modes() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::create_dir(&source).unwrap();
        for (name, mode) in [("private.key", 0o600), ("public.txt", 0o644)] {
            std::fs::write(source.join(name), "same").unwrap();
            fs::set_permissions(source.join(name), fs::Permissions::from_mode(mode)).unwrap();
        }
        let manifest = scanner(&source).scan().unwrap().manifest;
        let target = dir.path().join("copy");
        let staging = Staging::for_path(&target);
        staging.prepare().unwrap();
        let file = &manifest.entries[1];
        fs::copy(source.join("private.key"), staging.object(&file.sha256)).unwrap();
        let built = build(
            &manifest,
            &target,
            &staging,
            &HashMap::new(),
            &scanner(&target),
        )
        .unwrap();
        swap(&built, &target, &staging).unwrap();
        let mode = |name: &str| {
            fs::metadata(target.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!((mode("private.key"), mode("public.txt")), (0o600, 0o644));
        assert_eq!(scanner(&target).scan().unwrap().manifest.id, manifest.id);
    }

    #[test]
    fn a_planted_link_in_place_of_the_staging_directory_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o755)).unwrap();
        let target = dir.path().join("data");
        let staging = Staging::for_path(&target);
        std::os::unix::fs::symlink(&elsewhere, &staging.dir).unwrap();
        staging.prepare().unwrap();
        assert!(fs::symlink_metadata(&staging.dir).unwrap().is_dir());
        assert_eq!(
            fs::metadata(&elsewhere).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }
}
