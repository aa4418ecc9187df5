//! The `[[sync]]` keys of the agent's configuration and their checks: what
//! to keep in step between a group's members, how often the primary looks
//! for changes, how fast copies may travel, and what to leave out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

/// The most `[[sync]]` sections one agent may have.
pub const MAX_SYNCS: usize = 16;
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// The slowest rate accepted: slower would take hours for a page of text.
const MIN_RATE: u64 = 1024;

/// One `[[sync]]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Names it in reports, `group show` and metrics.
    pub name: String,
    /// The groups whose primary is the source (default: every group of
    /// this node).
    #[serde(default)]
    pub groups: Vec<String>,
    /// A file or a directory, the same on every member.
    pub path: PathBuf,
    /// How often the primary looks for changes (and standbys for new
    /// snapshots).
    #[serde(default = "default_interval", with = "proto::duration::serde")]
    pub interval: Duration,
    /// Bytes per second, e.g. "10MiB/s"; absent: unlimited.
    #[serde(default)]
    pub max_rate: Option<String>,
    /// Glob patterns of paths (relative to `path`) left out.
    #[serde(default)]
    pub exclude: Vec<String>,
}

fn default_interval() -> Duration {
    Duration::from_secs(2)
}

impl SyncConfig {
    /// Checks every key; the path's directory must exist (the path itself
    /// may not yet, on a standby that never held a copy).
    pub fn validate(&self) -> anyhow::Result<()> {
        let what = format!("[[sync]] {:?}", self.name);
        if proto::names::validate_node_id(&self.name).is_err() {
            bail!(
                "{what}: name must be lowercase letters, digits and '-' (at most 63, \
                 starting with a letter or digit), e.g. \"config\""
            );
        }
        for group in &self.groups {
            proto::names::validate_group_name(group).with_context(|| format!("{what}: groups"))?;
        }
        if !self.path.is_absolute() {
            bail!(
                "{what}: path {} must be absolute (the same path on every member)",
                self.path.display()
            );
        }
        let Some(name) = self.path.file_name() else {
            bail!(
                "{what}: path {} cannot be synced whole: give a file or directory below it",
                self.path.display()
            );
        };
        if self.path.components().any(|c| {
            matches!(
                c,
                std::path::Component::ParentDir | std::path::Component::CurDir
            )
        }) || name.to_string_lossy().starts_with(".")
            && name.to_string_lossy().ends_with(".failover-sync")
        {
            bail!(
                "{what}: path {} must be a plain absolute path",
                self.path.display()
            );
        }
        if self.interval < MIN_INTERVAL || self.interval > MAX_INTERVAL {
            bail!(
                "{what}: interval must be between {} and {}, got {}",
                humantime::format_duration(MIN_INTERVAL),
                humantime::format_duration(MAX_INTERVAL),
                humantime::format_duration(self.interval)
            );
        }
        if let Some(pattern) = self
            .exclude
            .iter()
            .find(|p| p.starts_with('/') || p.split('/').any(|part| part == ".."))
        {
            bail!(
                "{what}: exclude pattern {pattern:?} can never match: patterns are relative to \
                 path, e.g. \"*.lock\" or \"run\""
            );
        }
        if let Some(rate) = &self.max_rate {
            parse_rate(rate).with_context(|| format!("{what}: max_rate"))?;
        }
        self.exclude_set()?;
        Ok(())
    }

    /// Checks what is on disk: the directory that holds `path` exists,
    /// and `path`, if it exists, is a file or a directory (not a link).
    pub fn check_path(&self) -> Result<(), String> {
        let what = format!("[[sync]] {:?}", self.name);
        let parent = self.path.parent().unwrap_or(Path::new("/"));
        if !parent.is_dir() {
            return Err(format!(
                "{what}: path {}: the directory {} does not exist",
                self.path.display(),
                parent.display()
            ));
        }
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_symlink() => Err(format!(
                "{what}: path {} is a symbolic link: give the file or directory it points to",
                self.path.display()
            )),
            Ok(m) if !m.is_dir() && !m.is_file() => Err(format!(
                "{what}: path {} is neither a file nor a directory",
                self.path.display()
            )),
            _ => Ok(()),
        }
    }

    /// The compiled `exclude` patterns.
    pub fn exclude_set(&self) -> anyhow::Result<GlobSet> {
        let mut set = GlobSetBuilder::new();
        for pattern in &self.exclude {
            set.add(Glob::new(pattern).with_context(|| {
                format!("[[sync]] {:?}: exclude pattern {pattern:?}", self.name)
            })?);
        }
        Ok(set.build()?)
    }

    /// `max_rate` in bytes per second, if set.
    pub fn rate(&self) -> Option<u64> {
        self.max_rate.as_deref().and_then(|r| parse_rate(r).ok())
    }

    /// Whether this sync follows `group`.
    pub fn covers(&self, group: &str) -> bool {
        self.groups.is_empty() || self.groups.iter().any(|g| g == group)
    }
}

/// A rate such as "10MiB/s", "500KB/s" or "1048576B/s" in bytes per
/// second: a whole or decimal number, a unit (B, KB, MB, GB in powers of
/// 1000; KiB, MiB, GiB in powers of 1024), then "/s".
pub fn parse_rate(text: &str) -> anyhow::Result<u64> {
    let usage = || {
        anyhow::anyhow!(
            "{text:?} is not a rate: write a number, a unit and /s, e.g. \"10MiB/s\" \
             (units B, KB, MB, GB, KiB, MiB, GiB)"
        )
    };
    let body = text.trim().strip_suffix("/s").ok_or_else(usage)?.trim();
    let split = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(usage)?;
    let (number, unit) = body.split_at(split);
    let number: f64 = number.parse().map_err(|_| usage())?;
    let scale: u64 = match unit.trim() {
        "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(usage()),
    };
    let bytes = number * scale as f64;
    if !bytes.is_finite() || bytes < MIN_RATE as f64 || bytes > (1u64 << 40) as f64 {
        bail!("{text:?} must be between 1KiB/s and 1TiB/s");
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_in_both_unit_systems() {
        assert_eq!(parse_rate("10MiB/s").unwrap(), 10 << 20);
        assert_eq!(parse_rate("500KB/s").unwrap(), 500_000);
        assert_eq!(parse_rate("1.5 MB/s").unwrap(), 1_500_000);
        assert_eq!(parse_rate("2048B/s").unwrap(), 2048);
        for bad in [
            "10MiB",
            "fast/s",
            "10XB/s",
            "-1MiB/s",
            "10B/s",
            "9999999GiB/s",
            "",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn keys_are_checked() {
        let ok = SyncConfig {
            name: "cfg".into(),
            groups: vec![],
            path: "/etc/app".into(),
            interval: Duration::from_secs(2),
            max_rate: Some("10MiB/s".into()),
            exclude: vec!["*.lock".into()],
        };
        ok.validate().unwrap();
        let relative = SyncConfig {
            path: "etc/app".into(),
            ..ok.clone()
        };
        assert!(
            relative
                .validate()
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
        let bad_glob = SyncConfig {
            exclude: vec!["a[".into()],
            ..ok.clone()
        };
        assert!(bad_glob.validate().is_err());
        let fast = SyncConfig {
            interval: Duration::from_millis(1),
            ..ok
        };
        assert!(
            fast.validate()
                .unwrap_err()
                .to_string()
                .contains("interval")
        );
    }
}
