//! A byte rate limit (token bucket) shared by every transfer of one sync,
//! so `max_rate` bounds the link however many members fetch at once.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct RateLimit {
    /// Bytes per second.
    rate: u64,
    /// Tokens may gather for this long while idle (a burst).
    state: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// How long a burst may be: a tenth of a second's worth.
const BURST: Duration = Duration::from_millis(100);

impl RateLimit {
    pub fn new(rate: u64) -> RateLimit {
        RateLimit {
            rate: rate.max(1),
            state: Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }

    /// Waits until `bytes` may go. Callers take turns (the lock is held
    /// while waiting), so the rate is shared fairly in arrival order.
    pub async fn take(&self, bytes: usize) {
        let mut bucket = self.state.lock().await;
        let rate = self.rate as f64;
        let burst = (rate * BURST.as_secs_f64()).max(bytes as f64);
        let now = Instant::now();
        let gained = now.saturating_duration_since(bucket.last).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + gained).min(burst);
        bucket.last = now;
        bucket.tokens -= bytes as f64;
        if bucket.tokens < 0.0 {
            // The debt stays on the books: the next call credits the time
            // since `last`, sleep included, so a timer that fires late
            // (they round up to the millisecond) does not slow the rate.
            let wait = Duration::from_secs_f64(-bucket.tokens / rate);
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_holds_over_many_chunks() {
        let limit = RateLimit::new(1 << 20);
        let start = Instant::now();
        for _ in 0..160 {
            limit.take(64 * 1024).await;
        }
        // 10 MiB at 1 MiB/s: ten seconds (less the first burst).
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(9_800), "{took:?}");
        assert!(took <= Duration::from_millis(10_100), "{took:?}");
    }
}
