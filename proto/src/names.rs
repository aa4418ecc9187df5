//! Which strings are valid node ids and group names.
//!
//! Both follow DNS-label rules (RFC 1123), so a name can double as a host
//! name, a Kubernetes object name or a metric label without escaping:
//! 1 to 63 characters, lowercase ASCII letters, digits and `-`, starting and
//! ending with a letter or digit.

use thiserror::Error;

/// Longest allowed name, as for a DNS label.
pub const MAX_NAME_LEN: usize = 63;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{kind} name is empty")]
    Empty { kind: &'static str },
    /// `start` is the name's first characters only: a name can be
    /// megabytes long, and errors are logged and sent back.
    #[error("{kind} name {start:?}… is {len} bytes long, longer than {MAX_NAME_LEN} characters")]
    TooLong {
        kind: &'static str,
        start: String,
        len: usize,
    },
    #[error(
        "{kind} name {name:?} is not allowed: use lowercase letters, digits and '-', \
         starting and ending with a letter or digit (like rec-1)"
    )]
    BadCharacters { kind: &'static str, name: String },
}

/// Checks a node id.
pub fn validate_node_id(name: &str) -> Result<(), NameError> {
    validate("node", name)
}

/// Checks a group name.
pub fn validate_group_name(name: &str) -> Result<(), NameError> {
    validate("group", name)
}

fn validate(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            start: name.chars().take(MAX_NAME_LEN).collect(),
            len: name.len(),
        });
    }
    let allowed = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-';
    let bytes = name.as_bytes();
    let edges_ok = bytes[0] != b'-' && bytes[bytes.len() - 1] != b'-';
    if !edges_ok || !bytes.iter().all(|&c| allowed(c)) {
        return Err(NameError::BadCharacters {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever the text, no panic; what is accepted is a DNS label,
        /// and a refusal never echoes more than a name's length.
        #[test]
        fn any_text(text in "[a-z0-9-]{0,70}|.{0,100}") {
            match validate_node_id(&text) {
                Ok(()) => {
                    proptest::prop_assert!((1..=MAX_NAME_LEN).contains(&text.len()));
                    proptest::prop_assert!(!text.starts_with('-') && !text.ends_with('-'));
                }
                Err(e) => proptest::prop_assert!(e.to_string().len() < 400),
            }
        }
    }

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "rec-1", "db0", "0", "a-b-c", &"x".repeat(63)] {
            assert_eq!(validate_node_id(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "-a",
            "a-",
            "Rec-1",
            "rec_1",
            "rec.1",
            "rec 1",
            "é",
            &"x".repeat(64),
        ] {
            assert!(validate_group_name(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn errors_say_what_is_allowed() {
        let message = validate_node_id("Rec_1").unwrap_err().to_string();
        assert!(message.contains("lowercase letters"), "{message}");
    }
}
