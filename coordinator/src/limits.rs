//! Bounds on what agents send: every free-text field and every list is cut
//! at the edge, before it is kept, logged, stored or shown, so no client
//! can grow the coordinator's memory, its log, its store or an answer; and
//! the pace at which one session is read.

use std::time::Duration;

/// A Goodbye's reason.
pub(crate) const MAX_REASON: usize = 256;
/// A hook result's or a health check's detail.
pub(crate) const MAX_DETAIL: usize = 512;
/// A health check's name, and an agent's version string.
pub(crate) const MAX_LABEL: usize = 64;
/// Health checks per heartbeat, and groups per check.
pub(crate) const MAX_CHECKS: usize = 64;
/// State syncs reported in one heartbeat (syncs × groups).
pub(crate) const MAX_SYNCS: usize = 64;
/// The oldest copy age a report may carry (a year): beyond it, all ages
/// compare the same.
pub(crate) const MAX_SYNC_AGE_MS: u64 = 365 * 24 * 3600 * 1000;
/// A peer address (host:port) in a Hello.
pub(crate) const MAX_PEER_ADDRESS: usize = 255;
/// Roles claimed in one Hello or heartbeat (the groups one agent is in).
pub(crate) const MAX_CLAIMS: usize = 1024;

/// Messages one agent session may send per second, sustained, and in a
/// burst. An honest agent sends one heartbeat per interval (at least 10 ms)
/// and a few hook results; a session sending faster is read more slowly
/// (HTTP/2 flow control pushes back on it), so one agent cannot starve the
/// others.
pub(crate) const SESSION_MESSAGES_PER_SECOND: u32 = 500;

/// The largest message a client may send. An agent's heartbeat in 1,024
/// groups with 64 checks is about 110 KB; anything bigger is refused
/// (RESOURCE_EXHAUSTED) before it is decoded. With
/// [`MAX_STREAMS_PER_CONNECTION`] this bounds what one connection can make
/// the coordinator buffer (4 MiB), and [`REQUEST_TIMEOUT`] how long.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// How long a call may take to arrive and be answered (for a stream: to
/// be opened). A request sent halfway and left there is dropped with its
/// buffer after this.
pub(crate) const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Calls other than agent sessions whose request is still arriving, across
/// all connections, for each rank of caller (no certificate; a viewer's;
/// an operator's, admin's or node's — in plaintext all are the last): with
/// [`MAX_MESSAGE_BYTES`] this bounds what clients can make the coordinator
/// buffer (3 × 32 MiB); more are refused (RESOURCE_EXHAUSTED) until some
/// finish, and callers of one rank never take another's places. An
/// operator's call arrives in microseconds.
pub(crate) const MAX_REQUESTS_ARRIVING: usize = 128;

/// Agent sessions waiting for their Hello, across all connections (the
/// same bound for partial Hellos); more are refused and the agents retry.
pub(crate) const MAX_SESSIONS_STARTING: usize = 256;

/// Concurrent gRPC streams on one connection: an agent uses one, an
/// operator's failoverctl a few; a client opening thousands to hold memory
/// is told to wait (HTTP/2 flow control).
pub(crate) const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// `text` cut to at most `max` bytes (on a character boundary), saying how
/// much was cut, with control characters (newlines, escape sequences)
/// shown as `\u{..}` so a client cannot forge log lines or drive an
/// operator's terminal.
pub(crate) fn clip(text: String, max: usize) -> String {
    if text.len() <= max && !text.chars().any(unsafe_to_show) {
        return text;
    }
    let mut shown = String::new();
    // Bytes of `text` that made it into `shown`.
    let mut used = 0;
    for c in text.chars() {
        let piece = if unsafe_to_show(c) {
            c.escape_unicode().to_string()
        } else {
            c.to_string()
        };
        if shown.len() + piece.len() > max {
            break;
        }
        shown.push_str(&piece);
        used += c.len_utf8();
    }
    if used < text.len() {
        shown.push_str(&format!("… ({} bytes cut)", text.len() - used));
    }
    shown
}

/// Characters that would break a line or turn text around on a terminal
/// or in a log viewer: controls, line and paragraph separators, and the
/// bidirectional overrides and isolates.
fn unsafe_to_show(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
                | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
}

/// Says when a log line that a client can trigger at will may be written
/// again: at most once per period, so nobody can flood the log.
pub(crate) struct LogEvery {
    period: Duration,
    start: std::time::Instant,
    /// Milliseconds since `start` of the last line, plus one (0: never).
    last: std::sync::atomic::AtomicU64,
}

impl LogEvery {
    pub(crate) fn new(period: Duration) -> LogEvery {
        LogEvery {
            period,
            start: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether to log now; if so, the next line waits a period.
    pub(crate) fn due(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last.load(Ordering::Relaxed);
        let period = u64::try_from(self.period.as_millis()).unwrap_or(u64::MAX);
        (last == 0 || now.saturating_sub(last) >= period)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Events anyone can cause (refused connections, failed handshakes),
/// counted, with a log line due at most once per period saying how many
/// since the last one.
pub(crate) struct Counted {
    count: std::sync::atomic::AtomicU64,
    log: LogEvery,
}

impl Counted {
    pub(crate) fn new(period: Duration) -> Counted {
        Counted {
            count: std::sync::atomic::AtomicU64::new(0),
            log: LogEvery::new(period),
        }
    }

    /// Counts `n` more; `Some(total since the last line)` when a line is
    /// due.
    pub(crate) fn add(&self, n: u64) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let total = self.count.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        self.log.due().then(|| {
            self.count.store(0, Ordering::Relaxed);
            total
        })
    }
}

/// A token bucket: [`Pace::wait`] returns at once while the sender keeps
/// to the rate (with bursts up to one second's worth), and otherwise
/// waits until it may go on.
pub(crate) struct Pace {
    per_second: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl Pace {
    pub(crate) fn new(per_second: u32) -> Pace {
        Pace {
            per_second: f64::from(per_second.max(1)),
            tokens: f64::from(per_second.max(1)),
            at: tokio::time::Instant::now(),
        }
    }

    pub(crate) async fn wait(&mut self) {
        self.refill();
        if self.tokens < 1.0 {
            let short = Duration::from_secs_f64((1.0 - self.tokens) / self.per_second);
            tokio::time::sleep(short).await;
            self.refill();
        }
        self.tokens -= 1.0;
    }

    fn refill(&mut self) {
        let now = tokio::time::Instant::now();
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.per_second);
        self.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped_and_count_against_the_bound() {
        assert_eq!(clip("a\nb\u{1b}[2J".into(), 100), "a\\u{a}b\\u{1b}[2J");
        assert_eq!(
            clip("x\u{2028}y\u{202e}".into(), 100),
            "x\\u{2028}y\\u{202e}"
        );
        let cut = clip("\n".repeat(1000), 20);
        assert!(cut.starts_with("\\u{a}\\u{a}\\u{a}\\u{a}"), "{cut}");
        assert!(!cut.contains('\n'));
        assert!(cut.ends_with("(996 bytes cut)"), "{cut}");
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(clip("short".into(), 10), "short");
        let cut = clip("ééééé".into(), 3);
        assert_eq!(cut, "é… (8 bytes cut)");
    }

    #[test]
    fn a_log_line_is_due_once_per_period() {
        let every = LogEvery::new(Duration::from_secs(3600));
        assert!(every.due());
        assert!(!every.due());
        let always = LogEvery::new(Duration::ZERO);
        assert!(always.due() && always.due());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pace_lets_a_burst_through_then_holds_the_rate() {
        let mut pace = Pace::new(100);
        let start = tokio::time::Instant::now();
        for _ in 0..100 {
            pace.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst waited");
        for _ in 0..50 {
            pace.wait().await;
        }
        // 50 more at 100 a second: half a second of (paused, virtual) time.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(490) && took <= Duration::from_millis(510),
            "{took:?}"
        );
    }
}
