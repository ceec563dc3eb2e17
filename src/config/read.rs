//! How each key is read out of the merged sources, and the check for keys no setting reads.

use std::collections::BTreeSet;
use std::time::Duration;

use figment::value::{Dict, Value};
use figment::{Figment, Provider};
use serde::Deserialize;

use super::KEYS;

// Each reader returns the problem's text: every failure becomes one line of the report.

/// A value serde reads as it is.
pub(super) fn value<T: for<'de> Deserialize<'de>>(figment: &Figment, key: &str) -> Result<T, String> {
    figment.extract_inner(key).map_err(|e| e.to_string())
}

/// A duration ("5m", "6h", or whole seconds).
pub(super) fn duration(figment: &Figment, key: &str) -> Result<Duration, String> {
    figment.extract_inner::<Human>(key).map(|Human(d)| d).map_err(|e| e.to_string())
}

/// A duration that may be left unset (then a default that depends on other keys applies).
pub(super) fn optional_duration(figment: &Figment, key: &str) -> Result<Option<Duration>, String> {
    match figment.find_value(key) {
        Err(_) | Ok(figment::value::Value::Empty(..)) => Ok(None),
        Ok(_) => duration(figment, key).map(Some),
    }
}

/// Text that the environment provider may have turned into a number: a socket mode (`0660`
/// becomes 660) or a numeric group id. The number is read back as its digits.
pub(super) fn digits(figment: &Figment, key: &str) -> Result<String, String> {
    figment.extract_inner::<DigitsText>(key).map(|DigitsText(text)| text).map_err(|e| e.to_string())
}

struct Human(Duration);

impl<'de> Deserialize<'de> for Human {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::duration::serde::deserialize(deserializer).map(Human)
    }
}

struct DigitsText(String);

impl<'de> Deserialize<'de> for DigitsText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Number(u64),
        }
        Ok(DigitsText(match Either::deserialize(deserializer)? {
            Either::Text(text) => text,
            Either::Number(n) => n.to_string(),
        }))
    }
}

/// Keys that no setting reads: most often a typo that would otherwise be ignored silently.
pub(super) fn unknown_keys(figment: &Figment) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(data) = figment.data() else { return out };
    let Some(root) = data.get(&figment.profile().clone()) else { return out };
    let sections: BTreeSet<&str> = KEYS.iter().map(|(s, _)| *s).collect();
    for (section, value) in root.clone() {
        let Some(keys) = KEYS.iter().find(|(s, _)| *s == section.as_str()).map(|(_, k)| *k) else {
            let known = sections.iter().copied().collect::<Vec<_>>().join(", ");
            out.push(format!("unknown section `{section}` (known: {known})"));
            continue;
        };
        let Value::Dict(_, dict) = &value else {
            out.push(format!("`{section}` must be a table"));
            continue;
        };
        out.extend(unknown_in(&section, dict, keys));
    }
    out
}

fn unknown_in(section: &str, dict: &Dict, keys: &[&str]) -> Vec<String> {
    dict.keys()
        .filter(|key| !keys.contains(&key.as_str()))
        .map(|key| format!("unknown key `{section}.{key}` (known: {})", keys.join(", ")))
        .collect()
}
