//! Human durations in config values: `"500ms"`, `"60s"`, `"2m"`, `"1h"`, or a bare integer
//! meaning seconds (as a TOML integer or as a string of digits).
//!
//! Only parsing and printing live here; which durations may be zero is decided in
//! `validate.rs`, where the key name is known.

use serde::{de, Deserializer, Serializer};
use std::fmt;
use std::time::Duration;

/// Why a duration string was refused. `Display` is the user-facing reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Empty or whitespace-only value.
    #[error("empty duration; expected e.g. \"500ms\", \"60s\", \"2m\", \"1h\"")]
    Empty,
    /// No number in front of the unit, or an unknown unit.
    #[error("invalid duration {0:?}; expected a whole number with a unit: \"500ms\", \"60s\", \"2m\", \"1h\"")]
    Invalid(String),
    /// The number does not fit.
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

/// Parses `"500ms"`, `"60s"`, `"2m"`, `"1h"` or `"60"` (seconds).
///
/// # Errors
/// [`DurationError`] when the text is empty, has no number, an unknown unit, or overflows.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(DurationError::Invalid(text.to_owned()));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| DurationError::TooLarge(text.to_owned()))?;
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(DurationError::Invalid(text.to_owned())),
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| DurationError::TooLarge(text.to_owned()))
}

/// Renders a duration in the largest unit that represents it exactly (`"90s"`, `"2m"`,
/// `"1500ms"`), so that [`parse`] gives the same value back (sub-millisecond parts are
/// dropped).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_owned()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

/// serde `deserialize_with` for a [`Duration`] written as a string or an integer.
///
/// # Errors
/// A serde error carrying the [`DurationError`] text.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor)
}

/// serde `serialize_with` for a [`Duration`]: the [`format`] string.
///
/// # Errors
/// Whatever the serializer returns.
pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*d))
}

struct DurationVisitor;

impl<'de> de::Visitor<'de> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"500ms\", \"60s\", \"2m\", \"1h\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::custom(format!("invalid duration {v}: must not be negative")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("42"), Ok(Duration::from_secs(42)));
        assert_eq!(parse(" 3 s "), Ok(Duration::from_secs(3)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert!(matches!(parse("s"), Err(DurationError::Invalid(_))));
        assert!(matches!(parse("10 days"), Err(DurationError::Invalid(_))));
        assert!(matches!(parse("-5s"), Err(DurationError::Invalid(_))));
        assert!(matches!(parse("1.5s"), Err(DurationError::Invalid(_))));
        assert!(matches!(
            parse("99999999999999999999s"),
            Err(DurationError::TooLarge(_))
        ));
        assert!(matches!(
            parse("18446744073709551615h"),
            Err(DurationError::TooLarge(_))
        ));
    }

    #[test]
    fn format_round_trips() {
        for text in ["0s", "500ms", "1500ms", "90s", "2m", "1h", "25h"] {
            let d = parse(text).expect("valid");
            assert_eq!(format(d), text);
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
