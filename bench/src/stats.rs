//! Summaries of measured samples: min, median, p99, max.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    pub samples: usize,
    pub min_ms: f64,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Nearest-rank percentiles (p99 of 30 samples is the largest one).
pub(crate) fn summarize(samples: &[Duration]) -> Summary {
    assert!(!samples.is_empty(), "no samples");
    let mut sorted: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    sorted.sort_by(f64::total_cmp);
    let rank =
        |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    Summary {
        samples: sorted.len(),
        min_ms: sorted[0],
        median_ms: rank(0.5),
        p99_ms: rank(0.99),
        max_ms: sorted[sorted.len() - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = summarize(&samples);
        assert_eq!(
            (s.min_ms, s.median_ms, s.p99_ms, s.max_ms),
            (1.0, 50.0, 99.0, 100.0)
        );
    }
}
