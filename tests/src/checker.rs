//! Checks the promises of DESIGN.md section 4 from what the agents actually
//! did: their role logs (`role_log`), plus the harness's own record of the
//! kills and freezes it inflicted.
//!
//! A node acts as primary of a group from its `effective primary` line to
//! its next `effective fenced|secondary` line — or until it is killed, or
//! until it is frozen for longer than its lease (the interval then ends
//! when the freeze began, and on waking the node must fence before anything
//! else).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// One line of an agent's role log.
#[derive(Debug, Clone, Deserialize)]
pub struct RoleEvent {
    pub at_ns: u128,
    pub node: String,
    pub event: String,
    pub group: String,
    pub epoch: u64,
    pub role: String,
    pub detail: String,
}

/// Something the harness did to a node.
#[derive(Debug, Clone)]
pub enum Inflicted {
    Killed {
        node: String,
        at_ns: u128,
    },
    Frozen {
        node: String,
        from_ns: u128,
        to_ns: u128,
    },
}

/// A stretch of time during which a node acted as primary of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub group: String,
    pub node: String,
    pub epoch: u64,
    pub start_ns: u128,
    /// `None`: still acting when the run ended.
    pub end_ns: Option<u128>,
}

/// Reads every `roles-<actor>.jsonl` in `dir`. Each file is one agent
/// process slot (`<actor>` is the node id, or `<node>+<tag>` for a second
/// process claiming the same node id), and its events are attributed to
/// that actor: two processes of one node id are two actors, which must not
/// overlap either.
pub fn read_role_logs(dir: &Path) -> Vec<RoleEvent> {
    let mut events: Vec<RoleEvent> = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(actor) = name
            .strip_prefix("roles-")
            .and_then(|n| n.strip_suffix(".jsonl"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        // A line cut short by kill -9 is not an event.
        events.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<RoleEvent>(l).ok())
                .map(|mut e| {
                    e.node = actor.to_owned();
                    e
                }),
        );
    }
    events.sort_by_key(|e| e.at_ns);
    events
}

/// The result of checking one run.
#[derive(Debug, Default)]
pub struct Verdict {
    pub intervals: Vec<Interval>,
    pub violations: Vec<String>,
}

impl Verdict {
    /// The longest stretch, in any group, during which nobody acted as
    /// primary, from the group's first primary to `until_ns`, not counting
    /// time inside `excluded` (e.g. while no coordinator was running).
    /// It includes the lease wait of every failover, by design.
    pub fn dark_ns(&self, until_ns: u128, excluded: &[(u128, u128)]) -> u128 {
        let mut by_group: BTreeMap<&str, Vec<(u128, u128)>> = BTreeMap::new();
        for i in &self.intervals {
            by_group
                .entry(&i.group)
                .or_default()
                .push((i.start_ns, i.end_ns.unwrap_or(until_ns)));
        }
        let mut worst = 0;
        for spans in by_group.values_mut() {
            spans.sort();
            let mut covered_until = spans[0].1;
            for &(start, end) in spans.iter().skip(1) {
                if start > covered_until {
                    worst = worst.max(outside(covered_until, start, excluded));
                }
                covered_until = covered_until.max(end);
            }
            if until_ns > covered_until {
                worst = worst.max(outside(covered_until, until_ns, excluded));
            }
        }
        worst
    }

    /// How many times a group's primary changed to another node.
    pub fn failovers(&self) -> usize {
        let mut by_group: BTreeMap<&str, Vec<&Interval>> = BTreeMap::new();
        for i in &self.intervals {
            by_group.entry(&i.group).or_default().push(i);
        }
        by_group
            .values()
            .map(|v| v.windows(2).filter(|w| w[0].node != w[1].node).count())
            .sum()
    }
}

/// Builds every primary interval and checks:
/// (a) intervals of different nodes in one group never overlap;
/// (b) successive primaries of a group have strictly growing epochs, and
///     no node accepted an assignment older than one it had accepted;
/// and that a node frozen past its lease fenced first on waking.
/// `lease_ns` is the longest lease of any group.
pub fn check(events: &[RoleEvent], inflicted: &[Inflicted], lease_ns: u128) -> Verdict {
    let mut verdict = Verdict::default();
    // (node, group) -> the interval in progress.
    let mut acting: BTreeMap<(String, String), Interval> = BTreeMap::new();
    // Freezes past the lease: the first event of (node, group) after
    // `to_ns` must be a fence or step-down.
    let mut must_fence: Vec<(String, String, u128)> = Vec::new();

    // Walk role events and inflicted faults in time order.
    enum Step<'a> {
        Role(&'a RoleEvent),
        Fault(&'a Inflicted),
    }
    let mut steps: Vec<(u128, Step)> = events.iter().map(|e| (e.at_ns, Step::Role(e))).collect();
    for f in inflicted {
        let at = match f {
            Inflicted::Killed { at_ns, .. } => *at_ns,
            Inflicted::Frozen { from_ns, .. } => *from_ns,
        };
        steps.push((at, Step::Fault(f)));
    }
    steps.sort_by_key(|(at, _)| *at);

    let mut finish =
        |acting: &mut BTreeMap<(String, String), Interval>, key: &(String, String), at: u128| {
            if let Some(mut i) = acting.remove(key) {
                i.end_ns = Some(at);
                verdict.intervals.push(i);
            }
        };
    for (at, step) in steps {
        match step {
            Step::Role(e) if e.event == "effective" => {
                let key = (e.node.clone(), e.group.clone());
                match e.role.as_str() {
                    "primary" => {
                        if acting.get(&key).is_some_and(|i| i.epoch != e.epoch) {
                            finish(&mut acting, &key, at);
                        }
                        acting.entry(key).or_insert_with(|| Interval {
                            group: e.group.clone(),
                            node: e.node.clone(),
                            epoch: e.epoch,
                            start_ns: at,
                            end_ns: None,
                        });
                    }
                    _ => finish(&mut acting, &key, at),
                }
            }
            Step::Role(_) => {}
            Step::Fault(Inflicted::Killed { node, .. }) => {
                let keys: Vec<_> = acting.keys().filter(|(n, _)| n == node).cloned().collect();
                for key in keys {
                    finish(&mut acting, &key, at);
                }
            }
            Step::Fault(Inflicted::Frozen {
                node,
                from_ns,
                to_ns,
            }) => {
                if to_ns - from_ns < lease_ns {
                    continue; // its lease may have outlived the freeze
                }
                let keys: Vec<_> = acting.keys().filter(|(n, _)| n == node).cloned().collect();
                for key in keys {
                    must_fence.push((key.0.clone(), key.1.clone(), *to_ns));
                    finish(&mut acting, &key, at);
                }
            }
        }
    }
    verdict.intervals.extend(acting.into_values());
    verdict.intervals.sort_by_key(|i| i.start_ns);

    check_fence_on_wake(events, inflicted, &must_fence, &mut verdict.violations);
    check_overlaps(&verdict.intervals, &mut verdict.violations);
    check_epochs(events, &verdict.intervals, &mut verdict.violations);
    verdict
}

fn check_fence_on_wake(
    events: &[RoleEvent],
    inflicted: &[Inflicted],
    must_fence: &[(String, String, u128)],
    violations: &mut Vec<String>,
) {
    for (node, group, woke) in must_fence {
        let first = events.iter().find(|e| {
            e.node == *node
                && e.group == *group
                && e.at_ns >= *woke
                && (e.event == "lease_expired" || e.event == "effective")
        });
        match first {
            Some(e) if e.event == "lease_expired" || e.role != "primary" => {}
            Some(e) => violations.push(format!(
                "{node} woke from a freeze past its lease in {group} and acted as primary \
                 (epoch {}) before fencing",
                e.epoch
            )),
            None => {
                let killed_later = inflicted.iter().any(|f| {
                    matches!(f, Inflicted::Killed { node: n, at_ns } if n == node && at_ns >= woke)
                });
                if !killed_later {
                    violations.push(format!(
                        "{node} woke from a freeze past its lease in {group} and never fenced"
                    ));
                }
            }
        }
    }
}

/// How much of `from..to` lies outside every excluded span.
fn outside(from: u128, to: u128, excluded: &[(u128, u128)]) -> u128 {
    let mut length = to - from;
    for &(a, b) in excluded {
        let (a, b) = (a.max(from), b.min(to));
        if b > a {
            length = length.saturating_sub(b - a);
        }
    }
    length
}

fn check_overlaps(intervals: &[Interval], violations: &mut Vec<String>) {
    for (i, a) in intervals.iter().enumerate() {
        for b in &intervals[i + 1..] {
            if a.group != b.group || a.node == b.node {
                continue;
            }
            // `b` starts no earlier than `a` (sorted).
            let overlap = a.end_ns.is_none_or(|end| b.start_ns < end);
            if overlap {
                violations.push(format!(
                    "two primaries in {}: {} (epoch {}) from {} to {:?} and {} (epoch {}) from {}; \
                     overlap {} µs",
                    a.group,
                    a.node,
                    a.epoch,
                    a.start_ns,
                    a.end_ns,
                    b.node,
                    b.epoch,
                    b.start_ns,
                    a.end_ns.map_or(0, |end| (end - b.start_ns) / 1000)
                ));
            }
        }
    }
}

fn check_epochs(events: &[RoleEvent], intervals: &[Interval], violations: &mut Vec<String>) {
    let mut by_group: BTreeMap<&str, Vec<&Interval>> = BTreeMap::new();
    for i in intervals {
        by_group.entry(&i.group).or_default().push(i);
    }
    for (group, list) in by_group {
        for w in list.windows(2) {
            if w[0].node != w[1].node && w[1].epoch <= w[0].epoch {
                violations.push(format!(
                    "{group}: {} became primary with epoch {} after {} held epoch {}",
                    w[1].node, w[1].epoch, w[0].node, w[0].epoch
                ));
            }
        }
    }
    let mut seen: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for e in events.iter().filter(|e| e.event == "assigned") {
        let last = seen.entry((&e.node, &e.group)).or_insert(0);
        if e.epoch < *last {
            violations.push(format!(
                "{} accepted epoch {} in {} after accepting epoch {}",
                e.node, e.epoch, e.group, last
            ));
        }
        *last = (*last).max(e.epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at: u128, node: &str, event: &str, epoch: u64, role: &str) -> RoleEvent {
        RoleEvent {
            at_ns: at,
            node: node.into(),
            event: event.into(),
            group: "g".into(),
            epoch,
            role: role.into(),
            detail: String::new(),
        }
    }

    #[test]
    fn a_clean_handover_passes() {
        let events = [
            ev(10, "a", "effective", 1, "primary"),
            ev(20, "a", "effective", 1, "fenced"),
            ev(30, "b", "assigned", 2, "primary"),
            ev(31, "b", "effective", 2, "primary"),
        ];
        let v = check(&events, &[], 1000);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(v.failovers(), 1);
    }

    #[test]
    fn overlapping_primaries_are_caught() {
        let events = [
            ev(10, "a", "effective", 1, "primary"),
            ev(30, "b", "effective", 2, "primary"),
            ev(40, "a", "effective", 1, "fenced"),
        ];
        let v = check(&events, &[], 1000);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
    }

    #[test]
    fn a_kill_or_a_long_freeze_ends_the_interval() {
        let events = [
            ev(10, "a", "effective", 1, "primary"),
            ev(30, "b", "effective", 2, "primary"),
            ev(50, "c", "effective", 3, "primary"),
            ev(2000, "b", "lease_expired", 2, "fenced"),
        ];
        let inflicted = [
            Inflicted::Killed {
                node: "a".into(),
                at_ns: 20,
            },
            Inflicted::Frozen {
                node: "b".into(),
                from_ns: 40,
                to_ns: 1900,
            },
        ];
        let v = check(&events, &inflicted, 1000);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }

    #[test]
    fn acting_before_fencing_after_a_freeze_is_caught() {
        let events = [
            ev(10, "a", "effective", 1, "primary"),
            ev(2000, "a", "effective", 1, "primary"),
        ];
        let inflicted = [Inflicted::Frozen {
            node: "a".into(),
            from_ns: 40,
            to_ns: 1900,
        }];
        let v = check(&events, &inflicted, 1000);
        assert!(
            v.violations.iter().any(|m| m.contains("before fencing")),
            "{:?}",
            v.violations
        );
    }

    #[test]
    fn dark_time_is_the_longest_gap_between_primaries() {
        let events = [
            ev(10, "a", "effective", 1, "primary"),
            ev(100, "a", "effective", 1, "fenced"),
            ev(150, "b", "effective", 2, "primary"),
            ev(400, "b", "effective", 2, "fenced"),
            ev(700, "c", "effective", 3, "primary"),
        ];
        let v = check(&events, &[], 1000);
        assert_eq!(v.dark_ns(1000, &[]), 300);
        assert_eq!(v.dark_ns(1000, &[(450, 550)]), 200);
    }

    #[test]
    fn epochs_must_grow_between_primaries_and_per_node() {
        let events = [
            ev(10, "a", "assigned", 5, "primary"),
            ev(11, "a", "effective", 5, "primary"),
            ev(20, "a", "effective", 5, "fenced"),
            ev(30, "b", "effective", 5, "primary"),
            ev(40, "a", "assigned", 4, "secondary"),
        ];
        let v = check(&events, &[], 1000);
        assert_eq!(v.violations.len(), 2, "{:?}", v.violations);
    }
}
