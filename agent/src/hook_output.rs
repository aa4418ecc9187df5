//! What of a hook's output reaches the agent's log: the first
//! [`HEAD_BUDGET`] bytes as they come, then only the last [`TAIL_LINES`]
//! lines (logged when the stream ends), every line cut at [`MAX_LINE`]
//! bytes, and a count of what was dropped — so a hook that prints without
//! end can grow neither the agent's memory nor its log.

use std::collections::VecDeque;

/// Longest line kept, in bytes; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 4096;
/// Bytes logged as they come, counting each line's log overhead.
pub const HEAD_BUDGET: usize = 64 * 1024;
/// Lines kept from the end once the head is spent.
pub const TAIL_LINES: usize = 20;
/// What one log line costs beyond its text (time, level, fields).
const LINE_OVERHEAD: usize = 64;

/// The output of one stream of one hook run.
#[derive(Default)]
pub struct Capped {
    /// The line being read (at most `MAX_LINE` bytes of it).
    partial: Vec<u8>,
    /// Bytes of the current line beyond `MAX_LINE`.
    partial_cut: usize,
    logged: usize,
    tail: VecDeque<String>,
    dropped_bytes: u64,
    dropped_lines: u64,
}

impl Capped {
    /// Takes a chunk of output; returns the lines to log now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut now = Vec::new();
        for piece in chunk.split_inclusive(|b| *b == b'\n') {
            let (text, ends) = match piece.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (piece, false),
            };
            let room = MAX_LINE.saturating_sub(self.partial.len());
            let take = text.len().min(room);
            self.partial.extend_from_slice(&text[..take]);
            self.partial_cut = self.partial_cut.saturating_add(text.len() - take);
            if ends {
                self.end_line(&mut now);
            }
        }
        now
    }

    /// The stream ended: the rest to log.
    pub fn finish(mut self) -> Vec<String> {
        let mut now = Vec::new();
        if !self.partial.is_empty() || self.partial_cut > 0 {
            self.end_line(&mut now);
        }
        now.extend(self.tail.drain(..));
        if self.dropped_lines > 0 {
            now.push(format!(
                "({} lines, {} bytes of output not logged)",
                self.dropped_lines, self.dropped_bytes
            ));
        }
        now
    }

    fn end_line(&mut self, now: &mut Vec<String>) {
        let mut line = String::from_utf8_lossy(&self.partial).into_owned();
        if self.partial_cut > 0 {
            line.push_str(&format!("… ({} bytes cut)", self.partial_cut));
        }
        self.partial.clear();
        self.partial_cut = 0;
        let cost = line.len().saturating_add(LINE_OVERHEAD);
        if self.logged.saturating_add(cost) <= HEAD_BUDGET {
            self.logged += cost;
            now.push(line);
            return;
        }
        self.tail.push_back(line);
        if self.tail.len() > TAIL_LINES
            && let Some(old) = self.tail.pop_front()
        {
            self.dropped_lines = self.dropped_lines.saturating_add(1);
            self.dropped_bytes = self
                .dropped_bytes
                .saturating_add(u64::try_from(old.len()).unwrap_or(u64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<String> {
        let mut capped = Capped::default();
        let mut lines: Vec<String> = chunks.iter().flat_map(|c| capped.push(c)).collect();
        lines.extend(capped.finish());
        lines
    }

    #[test]
    fn short_output_is_logged_whole_across_chunks() {
        assert_eq!(all(&[b"one\ntw", b"o\nthree"]), ["one", "two", "three"]);
    }

    #[test]
    fn a_huge_line_is_cut() {
        let line = vec![b'x'; 10 * 1024 * 1024];
        let lines = all(&[&line, b"\nafter\n"]);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].len() < MAX_LINE + 100);
        assert!(lines[0].ends_with(&format!("({} bytes cut)", line.len() - MAX_LINE)));
        assert_eq!(lines[1], "after");
    }

    #[test]
    fn endless_output_keeps_the_head_and_the_tail_and_counts_the_rest() {
        let mut capped = Capped::default();
        let mut logged = 0usize;
        for i in 0..200_000 {
            logged += capped
                .push(format!("line {i}\n").as_bytes())
                .iter()
                .map(String::len)
                .sum::<usize>();
        }
        let end = capped.finish();
        assert!(logged <= HEAD_BUDGET);
        assert_eq!(end.len(), TAIL_LINES + 1);
        assert_eq!(end[TAIL_LINES - 1], "line 199999");
        assert!(end[TAIL_LINES].contains("lines"), "{}", end[TAIL_LINES]);
    }

    #[test]
    fn empty_lines_count_against_the_budget() {
        let empty = vec![b'\n'; 2 * 1024 * 1024];
        let lines = all(&[&empty]);
        assert!(lines.len() <= HEAD_BUDGET / LINE_OVERHEAD + TAIL_LINES + 1);
    }
}
