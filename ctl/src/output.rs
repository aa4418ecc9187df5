//! How `failoverctl` prints what the coordinator answered: aligned tables
//! for people, JSON for scripts (the documented `group show -o json`
//! contract: name, epoch, primary, members with node/role/connected/healthy).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use comfy_table::presets::NOTHING;
use comfy_table::{Cell, Color, Table};
use proto::json::{name, policy_json, role_name};
use proto::v1 as pb;
use proto::vocab::{Phase, SyncState};

use serde_json::Value;

/// "3s ago", or "never" for 0.
fn ago(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "never".into();
    }
    let then = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let elapsed = SystemTime::now().duration_since(then).unwrap_or_default();
    let rounded = Duration::from_millis(elapsed.as_millis() as u64 / 100 * 100);
    format!("{} ago", humantime::format_duration(rounded))
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Colour only on a terminal, and never with NO_COLOR set.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    if colour() {
        t.enforce_styling();
    } else {
        t.force_no_tty();
    }
    t.set_header(header.iter().map(Cell::new));
    t
}

/// A member's role as people read it: a member that is not connected is
/// `disconnected` (a primary that lost its agent: `primary (disconnected)`).
fn shown_role(m: &pb::MemberStatus) -> String {
    let role = role_name(m.role);
    match (m.connected, role.as_str()) {
        (true, _) => role,
        (false, "primary") => "primary (disconnected)".into(),
        (false, _) => "disconnected".into(),
    }
}

/// A role, phase or flag, coloured by what it means.
fn painted(text: String) -> Cell {
    let colour = match text.as_str() {
        "primary" | "active" | "yes" | "source" | "fresh" => Some(Color::Green),
        "disconnected" | "primary (disconnected)" | "no_primary" | "fenced" | "no" => {
            Some(Color::Red)
        }
        "failing_over" | "maintenance" | "stale" => Some(Color::Yellow),
        _ => None,
    };
    match colour {
        Some(c) => Cell::new(text).fg(c),
        None => Cell::new(text),
    }
}

/// `group show`: the group, its settings, and its members in priority
/// order; `since`: when the primary was promoted, if known.
pub(crate) fn group_table(g: &pb::GroupStatus, since: Option<u64>) -> String {
    let primary = if g.primary.is_empty() {
        "-"
    } else {
        g.primary.as_str()
    };
    let primary = match since {
        Some(at) => format!("{primary} (primary since {}, {})", rfc3339(at), ago(at)),
        None => primary.to_owned(),
    };
    let mut out = format!(
        "group:    {}\nphase:    {} (since {})\nepoch:    {}\nprimary:  {}\n",
        g.name,
        name::<Phase>(g.phase),
        ago(g.phase_since_unix_ms),
        g.epoch,
        primary,
    );
    if !g.alarm.is_empty() {
        out.push_str(&format!("ALARM:    {}\n", g.alarm));
    }
    if let Value::Object(policy) = policy_json(&g.policy.clone().unwrap_or_default()) {
        let settings: Vec<String> = policy
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => "none".into(),
                    v => v.to_string(),
                };
                format!("{}={v}", k.replace('_', "-"))
            })
            .collect();
        for (i, chunk) in settings.chunks(4).enumerate() {
            let label = if i == 0 { "settings:" } else { "" };
            out.push_str(&format!("{label:<10}{}\n", chunk.join(" ")));
        }
    }
    out.push('\n');
    let mut t = table(&[
        "POS",
        "NODE",
        "ROLE",
        "CONNECTED",
        "HEALTHY",
        "NOTE",
        "LAST CONTACT",
    ]);
    for (i, m) in g.members.iter().enumerate() {
        let note = if !m.duplicate.is_empty() {
            format!("DUPLICATE: {}", m.duplicate)
        } else {
            m.why_not.clone()
        };
        t.add_row(vec![
            Cell::new(i),
            Cell::new(&m.node),
            painted(shown_role(m)),
            painted(yes_no(m.connected).into()),
            painted(yes_no(m.healthy).into()),
            Cell::new(note),
            Cell::new(ago(m.last_contact_unix_ms)),
        ]);
    }
    out.push_str(&t.to_string());
    if g.members.iter().any(|m| !m.syncs.is_empty()) {
        out.push_str("\n\n");
        out.push_str(&syncs_table(g));
    }
    out
}

/// Each member's copy of each synced path: the snapshot it holds, how
/// old it is, the bytes its agent moved, the last error.
fn syncs_table(g: &pb::GroupStatus) -> String {
    let mut t = table(&["NODE", "SYNC", "STATE", "SNAPSHOT", "AGE", "BYTES", "ERROR"]);
    for m in &g.members {
        for s in &m.syncs {
            let age = s.age_ms.map_or_else(
                || "-".to_owned(),
                |ms| humantime::format_duration(Duration::from_secs(ms / 1000)).to_string(),
            );
            t.add_row(vec![
                Cell::new(&m.node),
                Cell::new(&s.name),
                painted(name::<SyncState>(s.state)),
                Cell::new(s.snapshot.get(..12).unwrap_or("-")),
                Cell::new(age),
                Cell::new(s.bytes),
                Cell::new(&s.error),
            ]);
        }
    }
    t.to_string()
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

/// `failoverctl status`: every group, one line per member, the group's
/// facts on its first line.
pub(crate) fn status_table(groups: &[pb::GroupStatus]) -> String {
    if groups.is_empty() {
        return "no groups (create one: failoverctl group add NAME --member NODE ...)".into();
    }
    let mut t = table(&[
        "GROUP",
        "PHASE",
        "EPOCH",
        "MEMBER",
        "ROLE",
        "HEALTHY",
        "LAST CONTACT",
        "NOTE",
    ]);
    for g in groups {
        for (i, m) in g.members.iter().enumerate() {
            let first = i == 0;
            let note = if first && !g.alarm.is_empty() {
                format!("ALARM: {}", g.alarm)
            } else if !m.duplicate.is_empty() {
                format!("DUPLICATE: {}", m.duplicate)
            } else if m.maintenance {
                "maintenance".into()
            } else {
                String::new()
            };
            t.add_row(vec![
                Cell::new(if first { g.name.as_str() } else { "" }),
                if first {
                    painted(name::<Phase>(g.phase))
                } else {
                    Cell::new("")
                },
                Cell::new(if first {
                    g.epoch.to_string()
                } else {
                    String::new()
                }),
                Cell::new(&m.node),
                painted(shown_role(m)),
                painted(yes_no(m.healthy).into()),
                Cell::new(ago(m.last_contact_unix_ms)),
                Cell::new(note),
            ]);
        }
    }
    t.to_string()
}

pub(crate) fn groups_table(groups: &[pb::GroupStatus]) -> String {
    let mut t = table(&["NAME", "PHASE", "PRIMARY", "EPOCH", "MEMBERS"]);
    for g in groups {
        t.add_row(vec![
            g.name.clone(),
            name::<Phase>(g.phase),
            if g.primary.is_empty() {
                "-".into()
            } else {
                g.primary.clone()
            },
            g.epoch.to_string(),
            g.members
                .iter()
                .map(|m| m.node.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    t.to_string()
}

pub(crate) fn nodes_table(nodes: &[pb::NodeStatus]) -> String {
    let mut t = table(&[
        "NODE",
        "CONNECTED",
        "HEALTHY",
        "LAST CONTACT",
        "ADDRESS",
        "GROUPS",
        "NOTE",
    ]);
    for n in nodes {
        let groups = n
            .groups
            .iter()
            .map(|g| format!("{}:{}", g.group, role_name(g.role)))
            .collect::<Vec<_>>()
            .join(",");
        t.add_row(vec![
            n.node.clone(),
            yes_no(n.connected).into(),
            yes_no(n.healthy).into(),
            ago(n.last_contact_unix_ms),
            if n.address.is_empty() {
                "-".into()
            } else {
                n.address.clone()
            },
            groups,
            if n.duplicate.is_empty() {
                String::new()
            } else {
                format!("DUPLICATE: {}", n.duplicate)
            },
        ]);
    }
    t.to_string()
}

/// One event as one line, for tables and `--follow`.
pub(crate) fn event_line(e: &pb::Event) -> String {
    let time = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(e.unix_ms));
    let change = match (e.old_primary.as_str(), e.new_primary.as_str()) {
        ("", "") => String::new(),
        (old, new) => format!(
            " {} -> {}",
            if old.is_empty() { "-" } else { old },
            if new.is_empty() { "-" } else { new }
        ),
    };
    let node = if e.node.is_empty() {
        String::new()
    } else {
        format!(" node={}", e.node)
    };
    format!(
        "{time} #{} {} {} epoch={}{change}{node} by {}: {}",
        e.seq, e.group, e.kind, e.epoch, e.actor, e.reason
    )
}

pub(crate) fn cluster_table(s: &pb::ClusterStatusResponse) -> String {
    let mut out = format!(
        "store: {}\nleader: {}\n\n{:<40} {:<45} ROLE\n",
        s.store,
        s.leader
            .as_ref()
            .map_or("none elected".to_owned(), |l| format!(
                "{} ({})",
                l.url, l.id
            )),
        "REPLICA",
        "ADDRESS"
    );
    for r in &s.replicas {
        let role = if r.leader { "leader" } else { "follower" };
        out.push_str(&format!("{:<40} {:<45} {role}\n", r.id, r.url));
    }
    if !s.endpoints.is_empty() {
        out.push_str(&format!(
            "\n{:<40} {:<10} {:<10} {:<12} ERROR\n",
            "ETCD ENDPOINT", "HEALTH", "VERSION", "RAFT LEADER"
        ));
        for e in &s.endpoints {
            out.push_str(&format!(
                "{:<40} {:<10} {:<10} {:<12} {}\n",
                e.url,
                if e.healthy { "healthy" } else { "UNHEALTHY" },
                if e.version.is_empty() {
                    "-"
                } else {
                    &e.version
                },
                if e.leader { "yes" } else { "no" },
                if e.error.is_empty() { "-" } else { &e.error },
            ));
        }
    }
    out
}
