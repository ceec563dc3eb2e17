//! Reading request members under the service model's two layers of refusal: [`Members`] gives
//! typed access to a JSON object and fails the whole request with `SerializationException` at the
//! first member of the wrong JSON type; [`Checker`] collects every length, pattern, range and
//! required-member violation, so that one `ValidationException` lists them all, as the service's
//! does.

use serde_json::{Map, Value};

use super::ApiError;

/// Collects constraint violations while reading one request.
#[derive(Default)]
pub(super) struct Checker {
    violations: Vec<String>,
}

impl Checker {
    pub(super) fn violation(&mut self, path: &str, value: impl std::fmt::Display, constraint: &str) {
        self.violations
            .push(format!("Value '{value}' at '{path}' failed to satisfy constraint: {constraint}"));
    }

    pub(super) fn length(&mut self, path: &str, text: &str, min: usize, max: usize) {
        let len = text.encode_utf16().count();
        if len < min {
            self.violation(path, text, &format!("Member must have length greater than or equal to {min}"));
        } else if len > max {
            self.violation(path, text, &format!("Member must have length less than or equal to {max}"));
        }
    }

    pub(super) fn pattern(&mut self, path: &str, text: &str, ok: bool, pattern: &str) {
        if !ok {
            self.violation(path, text, &format!("Member must satisfy regular expression pattern: {pattern}"));
        }
    }

    pub(super) fn range(&mut self, path: &str, value: i64, min: i64, max: i64) {
        if value < min {
            self.violation(path, value, &format!("Member must have value greater than or equal to {min}"));
        } else if value > max {
            self.violation(path, value, &format!("Member must have value less than or equal to {max}"));
        }
    }

    /// Two members of which at most one may be given.
    pub(super) fn exclusive(&mut self, first: &str, second: &str) {
        self.violations.push(format!("'{first}' and '{second}' cannot both be specified"));
    }

    pub(super) fn required(&mut self, path: &str) {
        self.violations
            .push(format!("Value null at '{path}' failed to satisfy constraint: Member must not be null"));
    }

    pub(super) fn finish<T>(self, value: T) -> Result<T, ApiError> {
        if self.violations.is_empty() { Ok(value) } else { Err(ApiError::validation(&self.violations)) }
    }
}

/// Typed access to the members of one JSON object; a member of the wrong JSON type fails the
/// whole request with `SerializationException`, a `null` member counts as absent.
pub(super) struct Members<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Members<'a> {
    pub(super) fn new(map: &'a Map<String, Value>) -> Self {
        Self { map }
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn type_error(path: &str, expected: &str) -> ApiError {
        ApiError::serialization(format!("expected {expected} at '{path}'"))
    }

    pub(super) fn string(&self, name: &str, path: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Self::type_error(path, "a string")),
        }
    }

    pub(super) fn integer(&self, name: &str, path: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) => Ok(Some(v)),
                None if n.as_u64().is_some() => Ok(Some(i64::MAX)),
                None => Err(Self::type_error(path, "an integer")),
            },
            Some(_) => Err(Self::type_error(path, "an integer")),
        }
    }

    pub(super) fn boolean(&self, name: &str, path: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(Self::type_error(path, "a boolean")),
        }
    }

    /// Epoch seconds as a JSON number (fractions allowed, truncated).
    pub(super) fn timestamp(&self, name: &str, path: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if v.is_finite() => Ok(Some(v.floor() as i64)),
                _ => Err(Self::type_error(path, "a timestamp in epoch seconds")),
            },
            Some(_) => Err(Self::type_error(path, "a timestamp in epoch seconds")),
        }
    }

    pub(super) fn list(&self, name: &str, path: &str) -> Result<Option<&'a Vec<Value>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => Err(Self::type_error(path, "a list")),
        }
    }
}

/// The members of a JSON object found at `path`; anything else is a `SerializationException`.
pub(super) fn object<'a>(value: &'a Value, path: &str) -> Result<Members<'a>, ApiError> {
    match value {
        Value::Object(map) => Ok(Members { map }),
        _ => Err(Members::type_error(path, "a structure")),
    }
}
