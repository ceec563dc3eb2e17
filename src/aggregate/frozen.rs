//! What is already sealed, per key: a sealed record is never written again, so an event for a
//! (key, hour) that was sealed must go elsewhere ([`super::Aggregator::admit`] decides where).
//!
//! Sealed keys are kept as 64-bit fingerprints per hour, only for hours whose deadline has not
//! passed (older events are refused anyway). A fingerprint collision could only make an event
//! for a never-sealed key look late: it would be carried forward or refused, never counted twice.
//! Per (customer, hour) it also keeps whether the usage named a license ARN, because the service
//! bills a customer twice when the same hour is reported both with and without one.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use foldhash::{HashMap, HashSet};

use crate::model::{Customer, RecordKey, Scope};

/// Sealed keys and the scope each customer's hours were reported under.
#[derive(Debug, Default)]
pub struct Frozen {
    sealed: BTreeMap<i64, HashSet<u64>>,
    /// Hours before this were forgotten: any key of them counts as sealed, so that a clock that
    /// steps back far can never reopen one.
    horizon: Option<i64>,
    /// (customer, hour), by fingerprint → whether that usage names a license ARN.
    licensed: HashMap<u64, (i64, bool)>,
}

/// Fingerprints are in memory only (rebuilt from the outbox at start), so a fast hasher with a
/// fixed seed will do; they are checked on every event.
fn hasher() -> foldhash::quality::FixedState {
    foldhash::quality::FixedState::with_seed(0x6d65_7465_7264)
}

/// (customer, hour) as a fingerprint: checked on every event, so without a copy of the customer.
fn customer_hour(customer: &Customer, hour: i64) -> u64 {
    hasher().hash_one((customer, hour))
}

fn fingerprint(key: &RecordKey) -> u64 {
    hasher().hash_one(key)
}

impl Frozen {
    /// Whether a record for `key` was sealed.
    pub fn contains(&self, key: &RecordKey) -> bool {
        self.horizon.is_some_and(|horizon| key.hour < horizon)
            || self.sealed.get(&key.hour).is_some_and(|hour| hour.contains(&fingerprint(key)))
    }

    /// Remembers a sealed record's key.
    pub fn insert(&mut self, key: &RecordKey) {
        self.sealed.entry(key.hour).or_default().insert(fingerprint(key));
        self.note_scope(key);
    }

    /// Remembers the scope a (customer, hour) is reported under.
    pub fn note_scope(&mut self, key: &RecordKey) {
        let licensed = matches!(key.scope, Scope::LicenseArn(_));
        self.licensed.entry(customer_hour(&key.customer, key.hour)).or_insert((key.hour, licensed));
    }

    /// Whether `key`'s customer and hour were reported under the other kind of scope (with a
    /// license ARN where `key` has none, or the other way round).
    pub fn mixes_scope(&self, key: &RecordKey) -> Option<bool> {
        let licensed = matches!(key.scope, Scope::LicenseArn(_));
        match self.licensed.get(&customer_hour(&key.customer, key.hour)) {
            Some(&(_, earlier)) if earlier != licensed => Some(earlier),
            _ => None,
        }
    }

    /// Forgets hours that start before `oldest`.
    pub fn forget_before(&mut self, oldest: i64) {
        let oldest = self.horizon.map_or(oldest, |horizon| horizon.max(oldest));
        self.horizon = Some(oldest);
        self.sealed = self.sealed.split_off(&oldest);
        self.licensed.retain(|_, (hour, _)| *hour >= oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(customer: &str, hour: i64, licensed: bool) -> RecordKey {
        RecordKey {
            scope: if licensed { Scope::LicenseArn("arn".into()) } else { Scope::ProductCode("p".into()) },
            customer: Customer::AwsAccountId(customer.into()),
            dimension: "d".into(),
            hour,
        }
    }

    #[test]
    fn sealed_keys_are_known_until_forgotten() {
        let mut frozen = Frozen::default();
        frozen.insert(&key("1", 3600, false));
        assert!(frozen.contains(&key("1", 3600, false)));
        assert!(!frozen.contains(&key("1", 7200, false)));
        assert!(!frozen.contains(&key("2", 3600, false)));
        assert_eq!(frozen.mixes_scope(&key("1", 3600, true)), Some(false));
        assert_eq!(frozen.mixes_scope(&key("1", 3600, false)), None);
        frozen.forget_before(7200);
        assert!(frozen.contains(&key("2", 3600, false)), "a forgotten hour counts as sealed");
        frozen.forget_before(3600);
        assert!(frozen.contains(&key("2", 3600, false)), "the horizon never moves back");
        assert_eq!(frozen.mixes_scope(&key("1", 3600, true)), None);
    }
}
