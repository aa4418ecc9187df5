//! Durations as people write them (`500ms`, `3s`, `1m 30s`) and as the
//! wire carries them (whole milliseconds in a `u64`): one parser for every
//! flag and configuration file, which says what is wrong instead of
//! wrapping or rounding to zero.

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("{text:?} is not a duration: {reason} (write durations like 500ms, 3s or 1m 30s)")]
    Unreadable { text: String, reason: String },
    #[error(
        "{text:?} is not a whole number of milliseconds (durations are counted in milliseconds)"
    )]
    SubMillisecond { text: String },
    #[error("{text:?} is too long: at most {} milliseconds", u64::MAX)]
    TooLong { text: String },
}

/// Reads a duration; it must be a whole number of milliseconds that fits
/// the wire's `u64`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let shown = || text.chars().take(64).collect::<String>();
    let d = humantime::parse_duration(text).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => DurationError::TooLong { text: shown() },
        e => DurationError::Unreadable {
            text: shown(),
            reason: e.to_string(),
        },
    })?;
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(DurationError::SubMillisecond { text: shown() });
    }
    if u64::try_from(d.as_millis()).is_err() {
        return Err(DurationError::TooLong { text: shown() });
    }
    Ok(d)
}

/// A duration in whole milliseconds, as the wire carries it (saturating:
/// anything [`parse`] accepted fits).
pub fn to_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `#[serde(with = "proto::duration::serde")]`: a duration in a
/// configuration file, read with [`parse`] and written like `1m 30s`.
pub mod serde {
    use std::time::Duration;

    use ::serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).map_err(D::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// The same for an optional duration.
    pub mod option {
        use std::time::Duration;

        use ::serde::{Deserialize, Deserializer, Serializer, de::Error};

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(text) => super::super::parse(&text)
                    .map(Some)
                    .map_err(D::Error::custom),
                None => Ok(None),
            }
        }

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
                None => s.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_people_write() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn says_what_is_wrong_instead_of_wrapping_or_rounding() {
        assert!(matches!(
            parse("18446744073709611s 616ms"),
            Err(DurationError::TooLong { .. })
        ));
        assert!(matches!(
            parse("99999999999999999999999s"),
            Err(DurationError::TooLong { .. })
        ));
        let sub = parse("500us").unwrap_err();
        assert!(matches!(sub, DurationError::SubMillisecond { .. }));
        assert!(sub.to_string().contains("500us"), "{sub}");
        assert!(matches!(
            parse("soon"),
            Err(DurationError::Unreadable { .. })
        ));
        assert!(matches!(
            parse("-1s"),
            Err(DurationError::Unreadable { .. })
        ));
        let long = "9".repeat(10_000);
        assert!(parse(&long).unwrap_err().to_string().len() < 300);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever the text, no panic, and what is accepted fits the wire
        /// exactly and reads back the same.
        #[test]
        fn any_text(text in "[0-9a-z .µ-]{0,40}|.{0,40}") {
            if let Ok(d) = parse(&text) {
                proptest::prop_assert_eq!(u128::from(to_ms(d)), d.as_millis());
                proptest::prop_assert_eq!(d.subsec_nanos() % 1_000_000, 0);
                let again = humantime::format_duration(d).to_string();
                proptest::prop_assert_eq!(parse(&again), Ok(d));
            }
        }
    }

    #[test]
    fn the_largest_whole_millisecond_value_fits() {
        let max = Duration::from_millis(u64::MAX);
        let text = humantime::format_duration(max).to_string();
        assert_eq!(parse(&text), Ok(max));
        assert_eq!(to_ms(max), u64::MAX);
    }
}
