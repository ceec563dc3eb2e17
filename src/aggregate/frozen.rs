//! What is already sealed, per key: a sealed record is never written again, so an event for a
//! (key, hour) that was sealed must go elsewhere ([`super::Aggregator::admit`] decides where).
//!
//! Sealed keys are kept as 64-bit fingerprints per hour, only for hours whose deadline has not
//! passed (older events are refused anyway). A fingerprint collision could only make an event
//! for a never-sealed key look late: it would be carried forward or refused, never counted twice.
//! Per hour it also keeps which customers were reported without a license ARN and which with one,
//! because the service bills a customer twice when the same hour is reported both ways. The two
//! are kept apart so that a new record asks only the other kind's set, which is almost always
//! empty. Open records are put in these sets only once an hour has open records of both kinds
//! ([`Frozen::note_open`]); until then nothing can mix, and at a million open records each insert
//! was a memory miss per new record. When a record of the second kind is about to open, the
//! aggregator first notes every open record of the hour ([`Frozen::must_note_open`]); sealed
//! records are always noted.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use foldhash::HashSet;

use super::table::KeyTable;

use crate::model::{Customer, RecordKey, Scope};

/// Sealed keys and the scope each customer's hours were reported under.
#[derive(Debug, Default)]
pub struct Frozen {
    sealed: BTreeMap<i64, HashSet<u64>>,
    /// Hours before this were forgotten: any key of them counts as sealed, so that a clock that
    /// steps back far can never reopen one.
    horizon: Option<i64>,
    /// Per hour, the customers (by fingerprint) reported without a license ARN, then with one.
    scopes: BTreeMap<i64, HourScopes>,
}

/// One hour's customers by kind of scope.
#[derive(Debug, Default)]
struct HourScopes {
    customers: [KeyTable<u64, ()>; 2],
    /// Which kinds have had open records this hour.
    opened: [bool; 2],
    /// The open records are in `customers` (from the first time both kinds opened records).
    open_noted: bool,
}

/// Fingerprints are in memory only (rebuilt from the outbox at start), so a fast hasher with a
/// fixed seed will do; they are checked on every event.
fn hasher() -> foldhash::quality::FixedState {
    foldhash::quality::FixedState::with_seed(0x6d65_7465_7264)
}

/// A customer as a fingerprint: checked for every new record, so without a copy of it.
fn customer_print(customer: &Customer) -> u64 {
    hasher().hash_one(customer)
}

/// 0 without a license ARN, 1 with one.
fn scope_kind(key: &RecordKey) -> usize {
    usize::from(matches!(key.scope, Scope::LicenseArn(_)))
}

fn fingerprint(key: &RecordKey) -> u64 {
    hasher().hash_one(key)
}

impl Frozen {
    /// Whether a record for `key` was sealed.
    pub fn contains(&self, key: &RecordKey) -> bool {
        self.forgotten(key.hour)
            || self.sealed.get(&key.hour).is_some_and(|hour| hour.contains(&fingerprint(key)))
    }

    /// Whether `hour` was forgotten: every key of it counts as sealed.
    pub fn forgotten(&self, hour: i64) -> bool {
        self.horizon.is_some_and(|horizon| hour < horizon)
    }

    /// Remembers a sealed record's key.
    pub fn insert(&mut self, key: &RecordKey) {
        self.sealed.entry(key.hour).or_default().insert(fingerprint(key));
        self.note_scope(key);
    }

    /// Remembers the scope a (customer, hour) is reported under, unless it was reported under
    /// the other kind first (the first kind stays the one that counts).
    pub fn note_scope(&mut self, key: &RecordKey) {
        let kind = scope_kind(key);
        let customer = customer_print(&key.customer);
        let kinds = &mut self.scopes.entry(key.hour).or_default().customers;
        if !kinds[1 - kind].contains_key(&customer) {
            kinds[kind].insert(customer, ());
        }
    }

    /// Notes that a record opened for `key`: its customer goes into the sets once its hour has
    /// open records of both kinds.
    pub fn note_open(&mut self, key: &RecordKey) {
        let hour = self.scopes.entry(key.hour).or_default();
        hour.opened[scope_kind(key)] = true;
        if hour.open_noted {
            self.note_scope(key);
        }
    }

    /// Whether a record about to open for `key` is the first of its kind in an hour with open
    /// records of the other kind, which are not in the sets yet: the caller notes each of them
    /// ([`Frozen::note_scope`]) before asking [`Frozen::mixes_scope`]. From then on every
    /// record opened in that hour is noted as it opens.
    pub fn must_note_open(&mut self, key: &RecordKey) -> bool {
        let Some(hour) = self.scopes.get_mut(&key.hour) else { return false };
        if hour.open_noted || !hour.opened[1 - scope_kind(key)] {
            return false;
        }
        hour.open_noted = true;
        true
    }

    /// Whether `key`'s customer and hour were reported under the other kind of scope (with a
    /// license ARN where `key` has none, or the other way round): that kind, if so.
    pub fn mixes_scope(&self, key: &RecordKey) -> Option<bool> {
        let other = 1 - scope_kind(key);
        let kinds = &self.scopes.get(&key.hour)?.customers;
        (!kinds[other].is_empty() && kinds[other].contains_key(&customer_print(&key.customer)))
            .then_some(other == 1)
    }

    /// How many customers of `hour` are noted, of each kind.
    #[cfg(test)]
    pub fn noted(&self, hour: i64) -> [usize; 2] {
        self.scopes.get(&hour).map_or([0, 0], |hour| hour.customers.each_ref().map(KeyTable::len))
    }

    /// Forgets hours that start before `oldest`.
    pub fn forget_before(&mut self, oldest: i64) {
        let oldest = self.horizon.map_or(oldest, |horizon| horizon.max(oldest));
        self.horizon = Some(oldest);
        self.sealed = self.sealed.split_off(&oldest);
        self.scopes = self.scopes.split_off(&oldest);
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
        // Reported both ways (a sealed record restored after one without): the first kind counts.
        frozen.note_scope(&key("1", 3600, true));
        assert_eq!(frozen.mixes_scope(&key("1", 3600, true)), Some(false));
        assert_eq!(frozen.mixes_scope(&key("1", 3600, false)), None);
        frozen.note_scope(&key("3", 3600, true));
        assert_eq!(frozen.mixes_scope(&key("3", 3600, false)), Some(true));
        assert_eq!(frozen.mixes_scope(&key("3", 7200, false)), None, "another hour");
        frozen.forget_before(7200);
        assert!(frozen.contains(&key("2", 3600, false)), "a forgotten hour counts as sealed");
        frozen.forget_before(3600);
        assert!(frozen.contains(&key("2", 3600, false)), "the horizon never moves back");
        assert_eq!(frozen.mixes_scope(&key("1", 3600, true)), None);
    }
}
