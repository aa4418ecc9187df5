//! An append-only local record of this node's role transitions, one JSON
//! object per line: an audit trail that survives the coordinator and tells
//! exactly when this node started and stopped acting as primary.
//!
//! Each line has `at_ns` (wall clock, nanoseconds since the Unix epoch),
//! `node`, `instance` (this agent process), `event`, `group`, `epoch`, `role`, and `detail`. Events:
//!
//! - `assigned`: an assignment was accepted (`role`, `detail` = primary);
//! - `refused`: an assignment or release was refused (`detail` = why);
//! - `lease_expired`: the lease ran out; the node fences itself;
//! - `effective`: the role took effect: its hook was started (or, with no
//!   hook, the change was applied). `effective` with role `primary` is the
//!   moment the node starts acting as primary; `effective` with `fenced` or
//!   `secondary` is the moment it stops;
//! - `hook_done`: the hook finished (`detail` = outcome);
//! - `released`: the node left the group.
//!
//! Lines are written straight to the file (no buffering), so a line is in
//! the file as soon as the event happened, even if the agent is killed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub struct RoleLog {
    file: Option<File>,
    node: String,
    instance: String,
}

#[derive(Serialize)]
struct Line<'a> {
    at_ns: u128,
    node: &'a str,
    instance: &'a str,
    event: &'a str,
    group: &'a str,
    epoch: u64,
    role: &'a str,
    detail: &'a str,
}

impl RoleLog {
    /// Opens (creating or appending to) `path`; `None` records nothing.
    pub fn open(path: Option<&Path>, node: &str, instance: &str) -> std::io::Result<RoleLog> {
        let file = match path {
            Some(path) => Some(OpenOptions::new().create(true).append(true).open(path)?),
            None => None,
        };
        Ok(RoleLog {
            file,
            node: node.to_owned(),
            instance: instance.to_owned(),
        })
    }

    pub fn record(&mut self, event: &str, group: &str, epoch: u64, role: &str, detail: &str) {
        let Some(file) = &mut self.file else {
            return;
        };
        let at_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let line = Line {
            at_ns,
            node: &self.node,
            instance: &self.instance,
            event,
            group,
            epoch,
            role,
            detail,
        };
        let Ok(mut text) = serde_json::to_string(&line) else {
            return;
        };
        text.push('\n');
        // One write per line: O_APPEND keeps lines whole.
        if let Err(e) = file.write_all(text.as_bytes()) {
            tracing::error!(error = %e, "cannot write the role log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_and_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roles.jsonl");
        RoleLog::open(Some(&path), "n-1", "i")
            .unwrap()
            .record("effective", "g", 3, "primary", "");
        RoleLog::open(Some(&path), "n-1", "i").unwrap().record(
            "lease_expired",
            "g",
            3,
            "fenced",
            "",
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "effective");
        assert_eq!(lines[1]["role"], "fenced");
        assert!(lines[0]["at_ns"].as_u64().unwrap() <= lines[1]["at_ns"].as_u64().unwrap());
    }
}
