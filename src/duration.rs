//! Human-readable durations in configuration files: `"90s"`, `"5m"`, `"6h"`, `"1h30m"`, `"250ms"`.
//!
//! A bare integer is read as seconds, so `window = 21600` and `window = "6h"` mean the same.

use std::fmt;
use std::time::Duration;

use ::serde::Serializer;
use ::serde::de::{self, Deserializer, Visitor};

/// Parses `"1h30m"`-style text: one or more `<digits><unit>` parts, units `ms`, `s`, `m`, `h`, `d`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("invalid duration {text:?}: expected a number at {rest:?}"));
        }
        let value: u64 =
            rest[..digits].parse().map_err(|_| format!("invalid duration {text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "d" => Duration::from_secs(value.saturating_mul(86_400)),
            "" => return Err(format!("invalid duration {text:?}: missing unit (ms, s, m, h or d)")),
            other => return Err(format!("invalid duration {text:?}: unknown unit {other:?}")),
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Formats a duration the way [`parse`] reads it, largest units first (`5400s` ⇒ `"1h30m"`).
pub fn format(duration: Duration) -> String {
    let mut secs = duration.as_secs();
    let millis = duration.subsec_millis();
    if secs == 0 && millis == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if millis > 0 {
        out.push_str(&format!("{millis}ms"));
    }
    out
}

/// `#[serde(with = "meterd::duration::serde_opt")]` for `Option<Duration>` fields (serialized
/// only when set: `skip_serializing_if = "Option::is_none"`).
pub mod serde_opt {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_str(&format(*value)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        super::serde::deserialize(deserializer).map(Some)
    }
}

/// `#[serde(with = "meterd::duration::serde")]` for `Duration` fields.
pub mod serde {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"90s\", \"5m\" or \"6h\", or whole seconds")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
                parse(text).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(secs))
            }

            fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
                u64::try_from(secs)
                    .map(Duration::from_secs)
                    .map_err(|_| E::custom(format!("invalid duration {secs}: negative")))
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("6h"), Ok(Duration::from_secs(21_600)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn refuses_malformed_text() {
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("5").unwrap_err().contains("missing unit"));
        assert!(parse("5w").unwrap_err().contains("unknown unit \"w\""));
        assert!(parse("h").unwrap_err().contains("expected a number"));
        assert!(parse("-5s").unwrap_err().contains("expected a number"));
    }

    #[test]
    fn format_round_trips() {
        for text in ["0s", "250ms", "90s", "5m", "6h", "1h30m", "1d2h3m4s"] {
            let parsed = parse(text).unwrap();
            assert_eq!(parse(&format(parsed)), Ok(parsed), "{text}");
        }
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
    }
}
