//! The classic Prometheus text format (0.0.4), made from the OpenMetrics
//! text the registry writes, for scrapers and tools that ask for it or
//! speak nothing else (`promtool check metrics`, older Prometheus). The
//! differences are names: a counter's family is named after its `_total`
//! samples, and there are no `# UNIT` lines or `# EOF`.

use std::collections::HashSet;

/// The content type of the classic format.
pub(crate) const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of OpenMetrics.
pub(crate) const OPEN_METRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether a scraper's `Accept` header asks for OpenMetrics.
pub(crate) fn wants_open_metrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// OpenMetrics text → the classic text format.
pub(crate) fn to_classic(open_metrics: &str) -> String {
    let counters: HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => text.push_str(&line),
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_after_their_samples() {
        let open = "# HELP failover_heartbeats Heartbeats received.\n\
                    # TYPE failover_heartbeats counter\n\
                    failover_heartbeats_total 3\n\
                    # HELP failover_store_commit_seconds Time of one commit.\n\
                    # TYPE failover_store_commit_seconds histogram\n\
                    # UNIT failover_store_commit_seconds seconds\n\
                    failover_store_commit_seconds_count 1\n\
                    # EOF\n";
        assert_eq!(
            to_classic(open),
            "# HELP failover_heartbeats_total Heartbeats received.\n\
             # TYPE failover_heartbeats_total counter\n\
             failover_heartbeats_total 3\n\
             # HELP failover_store_commit_seconds Time of one commit.\n\
             # TYPE failover_store_commit_seconds histogram\n\
             failover_store_commit_seconds_count 1\n"
        );
        assert!(wants_open_metrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_open_metrics(Some("*/*")));
        assert!(!wants_open_metrics(None));
    }
}
