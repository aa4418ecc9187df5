//! One event as each sink sends it: JSON (the same fields as
//! `failoverctl events -o json`), a mail's subject and body, and an exec
//! sink's environment.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::model::{EventKind, EventRecord};

/// The event as JSON: `seq`, `time`, `unix_ms`, `group`, `kind`, `epoch`,
/// `old_primary`, `new_primary`, `node` (null when none), `reason`, `actor`.
pub(crate) fn json(event: &EventRecord) -> Value {
    json!({
        "seq": event.seq,
        "time": time(event.unix_ms),
        "unix_ms": event.unix_ms,
        "group": event.group,
        "kind": event.kind.as_str(),
        "epoch": event.epoch,
        "old_primary": event.old_primary,
        "new_primary": event.new_primary,
        "reason": event.reason,
        "actor": event.actor,
        "node": event.node,
    })
}

/// RFC 3339 in UTC, to the millisecond.
pub(crate) fn time(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

/// What happened, in a few words: a mail's subject.
pub(crate) fn subject(event: &EventRecord) -> String {
    let who = |n: &Option<String>| n.clone().unwrap_or_else(|| "-".into());
    let what = match event.kind {
        EventKind::Promoted => match &event.old_primary {
            Some(old) => format!(
                "{} is primary (epoch {}), was {old}",
                who(&event.new_primary),
                event.epoch,
            ),
            None => format!(
                "{} is primary (epoch {})",
                who(&event.new_primary),
                event.epoch
            ),
        },
        EventKind::PrimaryLapsed => {
            format!("primary {} lost, failing over", who(&event.old_primary))
        }
        EventKind::NoPrimary => "no primary".into(),
        EventKind::Alarm => "ALARM".into(),
        EventKind::AlarmCleared => "alarm cleared".into(),
        EventKind::NodeLost => event
            .reason
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned(),
        EventKind::NodeRegained => event
            .reason
            .split(" (from")
            .next()
            .unwrap_or_default()
            .to_owned(),
        kind => kind.as_str().replace('_', " "),
    };
    format!("[failover] {}: {what}", event.group)
}

/// The whole event, one field a line: a mail's body.
pub(crate) fn body(event: &EventRecord) -> String {
    let none = || "-".to_owned();
    format!(
        "{subject}\n\n\
         Group:        {group}\n\
         Event:        {kind}\n\
         Time:         {time}\n\
         Epoch:        {epoch}\n\
         Old primary:  {old}\n\
         New primary:  {new}\n\
         By:           {actor}\n\
         Reason:       {reason}\n\
         Event number: {seq}\n\n\
         See every event with: failoverctl events --group {group}\n",
        subject = subject(event),
        group = event.group,
        kind = event.kind.as_str(),
        time = time(event.unix_ms),
        epoch = event.epoch,
        old = event.old_primary.clone().unwrap_or_else(none),
        new = event.new_primary.clone().unwrap_or_else(none),
        actor = event.actor,
        reason = event.reason,
        seq = event.seq,
    )
}

/// The environment an exec sink's command gets.
pub(crate) fn environment(event: &EventRecord) -> Vec<(&'static str, String)> {
    vec![
        ("FAILOVER_EVENT_SEQ", event.seq.to_string()),
        ("FAILOVER_EVENT_KIND", event.kind.as_str().to_owned()),
        ("FAILOVER_EVENT_GROUP", event.group.clone()),
        ("FAILOVER_EVENT_EPOCH", event.epoch.to_string()),
        ("FAILOVER_EVENT_TIME", time(event.unix_ms)),
        (
            "FAILOVER_EVENT_OLD_PRIMARY",
            event.old_primary.clone().unwrap_or_default(),
        ),
        (
            "FAILOVER_EVENT_NEW_PRIMARY",
            event.new_primary.clone().unwrap_or_default(),
        ),
        ("FAILOVER_EVENT_REASON", event.reason.clone()),
        ("FAILOVER_EVENT_ACTOR", event.actor.clone()),
        (
            "FAILOVER_EVENT_NODE",
            event.node.clone().unwrap_or_default(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promotion_reads_well_in_a_subject() {
        let event = EventRecord {
            seq: 7,
            unix_ms: 1_700_000_000_000,
            group: "db".into(),
            kind: EventKind::Promoted,
            epoch: 3,
            old_primary: Some("rec-1".into()),
            new_primary: Some("rec-2".into()),
            reason: "rec-1 lapsed".into(),
            actor: "coordinator".into(),
            node: None,
        };
        assert_eq!(
            subject(&event),
            "[failover] db: rec-2 is primary (epoch 3), was rec-1"
        );
        assert!(body(&event).contains("Reason:       rec-1 lapsed"));
        assert_eq!(json(&event)["time"], "2023-11-14T22:13:20.000Z");
        assert_eq!(json(&event)["old_primary"], "rec-1");
    }
}
