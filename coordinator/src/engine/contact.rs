//! Whether each member node is in contact, as the event log tells it:
//! `node_lost` when a member's session ends, `node_regained` when a lost
//! member heartbeats again. A node that flaps — or a client that claims
//! it over and over — cannot flood the log: regains are recorded at most
//! [`REGAIN_BURST`] at once and then one per [`REGAIN_EVERY`] per node
//! (a regain not recorded is recorded at a later heartbeat), and a loss is
//! recorded only after a recorded regain or the node's first contact of
//! this run, so losses never outnumber regains by more than one.

use std::time::Duration;

use tokio::time::Instant;

use super::{COORDINATOR, Effects, Engine, NewEvent, Now};
use crate::model::EventKind;

/// Regains recorded at once per node, before the pace below applies.
const REGAIN_BURST: u32 = 3;
/// Then one more per this long.
const REGAIN_EVERY: Duration = Duration::from_secs(20);

/// What the event log last said of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Said {
    /// Nothing since this coordinator started (a restart is no news).
    #[default]
    Nothing,
    Connected,
    Lost,
}

/// A node's contact as reported, and its allowance of regain events.
#[derive(Debug, Default)]
pub(super) struct ContactReport {
    said: Said,
    /// Regains that may be recorded now, and since when it is counted.
    allowance: Option<(u32, Instant)>,
}

impl ContactReport {
    /// Takes one regain from the allowance, if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let (left, since) = self.allowance.unwrap_or((REGAIN_BURST, now));
        let earned = u32::try_from(
            now.saturating_duration_since(since).as_millis() / REGAIN_EVERY.as_millis(),
        )
        .unwrap_or(u32::MAX);
        let (left, since) = match left.saturating_add(earned) {
            // Full again: counted from now, so a long quiet earns no more
            // than a full allowance.
            full if full >= REGAIN_BURST => (REGAIN_BURST, now),
            partial => (partial, since + REGAIN_EVERY * earned),
        };
        if left == 0 {
            self.allowance = Some((0, since));
            return false;
        }
        self.allowance = Some((left - 1, since));
        true
    }
}

impl Engine {
    /// A heartbeat from `node`: contact, recorded as regained if it was
    /// reported lost (and the allowance lets it).
    pub(super) fn contact_heard(&mut self, node: &str, now: Now, out: &mut Effects) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.groups.is_empty() {
            return;
        }
        match n.contact.said {
            Said::Connected => {}
            Said::Nothing => n.contact.said = Said::Connected,
            Said::Lost => {
                if !n.contact.take(now.mono) {
                    return;
                }
                n.contact.said = Said::Connected;
                let address = n.address.clone();
                self.node_event(
                    node,
                    EventKind::NodeRegained,
                    &format!("{node} is in contact again (from {address})"),
                    now,
                    out,
                );
            }
        }
    }

    /// `node`'s session ended (`heard`: it had heartbeated): recorded as
    /// lost unless the log already says so. (Nothing said yet — the first
    /// session since this coordinator started, perhaps from before the
    /// node joined a group — counts as contact once it heartbeated; that
    /// happens once per node and run, so losses stay bounded by regains.)
    pub(super) fn contact_lost(
        &mut self,
        node: &str,
        why: &str,
        heard: bool,
        now: Now,
        out: &mut Effects,
    ) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let in_contact = match n.contact.said {
            Said::Connected => true,
            Said::Nothing => heard,
            Said::Lost => false,
        };
        if n.groups.is_empty() || !in_contact {
            return;
        }
        n.contact.said = Said::Lost;
        self.node_event(
            node,
            EventKind::NodeLost,
            &format!("lost contact with {node}: {why}"),
            now,
            out,
        );
    }

    /// Records `kind` in each group `node` is a member of.
    fn node_event(
        &mut self,
        node: &str,
        kind: EventKind,
        reason: &str,
        now: Now,
        out: &mut Effects,
    ) {
        for name in self.node_groups(node) {
            let epoch = self.groups.get(&name).map_or(0, |g| g.epoch());
            self.events.record_about(
                node,
                NewEvent {
                    group: &name,
                    kind,
                    epoch,
                    old_primary: None,
                    new_primary: None,
                    reason: reason.to_owned(),
                    actor: COORDINATOR,
                },
                now,
                out,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowance_holds_a_burst_then_a_pace() {
        let start = Instant::now();
        let mut report = ContactReport::default();
        assert!(report.take(start));
        assert!(report.take(start));
        assert!(report.take(start));
        assert!(!report.take(start), "the burst is spent");
        assert!(!report.take(start + REGAIN_EVERY / 2));
        assert!(report.take(start + REGAIN_EVERY), "one more per period");
        assert!(!report.take(start + REGAIN_EVERY));
        assert!(
            report.take(start + REGAIN_EVERY * 100),
            "a long quiet refills"
        );
        // ... but only up to the burst, however long it was.
        let later = start + REGAIN_EVERY * 100_000;
        let granted = (0..1000).filter(|_| report.take(later)).count();
        assert_eq!(granted, REGAIN_BURST as usize);
    }
}
