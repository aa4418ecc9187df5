//! Bounds on what agents send: every free-text field and every list is cut
//! at the edge, before it is kept, logged, stored or shown, so no client
//! can grow the coordinator's memory, its log, its store or an answer.

/// A Goodbye's reason.
pub(crate) const MAX_REASON: usize = 256;
/// A hook result's or a health check's detail.
pub(crate) const MAX_DETAIL: usize = 512;
/// A health check's name, and an agent's version string.
pub(crate) const MAX_LABEL: usize = 64;
/// Health checks per heartbeat, and groups per check.
pub(crate) const MAX_CHECKS: usize = 64;
/// Roles claimed in one Hello or heartbeat.
pub(crate) const MAX_CLAIMS: usize = 4096;

/// `text` cut to at most `max` bytes (on a character boundary), saying how
/// much was cut.
pub(crate) fn clip(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let total = text.len();
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!("… ({} bytes cut)", total - end));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(clip("short".into(), 10), "short");
        let cut = clip("ééééé".into(), 3);
        assert_eq!(cut, "é… (8 bytes cut)");
    }
}
