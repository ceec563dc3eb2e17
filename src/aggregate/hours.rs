//! The open hours: one bucket per record key with its total and one allocation per tag set, the
//! client ids seen in the last 25 hours, and the rule that decides when an hour is sealed.
//!
//! Everything here is plain data driven by explicit `now` arguments, so the property test can run
//! days of hours in microseconds. The aggregator never does I/O: the commit stage logs what
//! [`Aggregator::admit`] returns before anyone is told, and checkpoints [`Aggregator::take_delta`].

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::record::{Allocation, SealedRecord};
use crate::clock::{deadline, hour_of};
use crate::model::{Customer, Event, LateEvents, MAX_ALLOCATIONS, MAX_QUANTITY, RecordKey, Scope, TagSet};

/// How long a client id is remembered after its event was accepted.
pub const ID_TTL_SECS: i64 = 25 * 3600;

/// The time rules, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub seal_delay: i64,
    pub deadline: i64,
    pub future_tolerance: i64,
    pub late_events: LateEvents,
}

/// `submit.heartbeat_dimensions` (meter_usage mode): a 0-quantity record of the caller's own for
/// every sealed hour in which a dimension had no usage, so AWS gets a record every hour. It covers
/// every hour sealed after the data dir's first seal point (the first hour meterd had not sealed
/// when it first started), within the deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub scope: Scope,
    pub dimensions: Vec<String>,
}

/// The running total of one open record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub quantity: u32,
    pub allocations: BTreeMap<TagSet, u32>,
    /// Changed since the last checkpoint.
    #[serde(skip)]
    dirty: bool,
}

impl Bucket {
    fn seal(self, key: RecordKey) -> SealedRecord {
        let allocations =
            self.allocations.into_iter().map(|(tags, quantity)| Allocation { tags, quantity }).collect();
        SealedRecord { key, quantity: self.quantity, allocations }
    }
}

/// An accepted event as the log keeps it: everything replay needs to count it again, with the
/// hour already decided (a carried-forward event names the hour it was counted in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admitted {
    pub key: RecordKey,
    pub tags: TagSet,
    pub quantity: u32,
    pub id: Option<String>,
    /// When it was accepted, epoch seconds; its id is remembered from then on.
    pub at: i64,
}

/// What [`Aggregator::admit`] did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Counted; log it before acknowledging. `carried` is set when it was moved to the open hour.
    Counted { admitted: Admitted, carried: bool },
    /// Its id was accepted before: not counted again.
    Duplicate { id: String },
}

/// Why [`Aggregator::admit`] refused an event; ingest turns it into the socket's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("timestamp {at} is {ahead}s ahead of meterd's clock")]
    FutureTimestamp { at: i64, ahead: i64 },
    #[error(
        "timestamp {at} is in an hour past the submit deadline ({deadline}s after its start); the service would refuse it"
    )]
    PastDeadline { at: i64, deadline: i64 },
    #[error(
        "timestamp {at} is in a billing month the service closed at 06:00 UTC on the 1st of the next month; the service would refuse it"
    )]
    MonthClosed { at: i64 },
    #[error("the hour starting {hour} is already sealed (late_events = reject)")]
    HourSealed { hour: i64 },
    #[error("the hour's total for this customer and dimension would reach {total}, above 2147483647")]
    QuantityOverflow { total: u64 },
    #[error(
        "the hour's record for this customer and dimension already has 2500 tag sets, the service's limit"
    )]
    TooManyTagSets,
}

/// What changed since the last checkpoint.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub changed: Vec<(RecordKey, Bucket)>,
    pub sealed: Vec<SealedRecord>,
    pub new_ids: Vec<(String, i64)>,
    pub expired_ids: Vec<String>,
    /// Start of the last sealed hour, as of this delta.
    pub sealed_through: Option<i64>,
    /// Whether `sealed_through` moved since the last delta.
    pub sealed_through_advanced: bool,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
            && self.sealed.is_empty()
            && self.new_ids.is_empty()
            && self.expired_ids.is_empty()
    }
}

/// The open hours and remembered ids.
#[derive(Debug)]
pub struct Aggregator {
    rules: Rules,
    buckets: HashMap<RecordKey, Bucket>,
    ids: HashMap<String, i64>,
    new_ids: Vec<(String, i64)>,
    expired_ids: Vec<String>,
    sealed: Vec<SealedRecord>,
    /// Start of the last sealed hour; no event is counted at or before it.
    sealed_through: Option<i64>,
    sealed_through_changed: bool,
    heartbeat: Option<Heartbeat>,
    pub late_carried: u64,
    pub late_rejected: u64,
}

impl Aggregator {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            buckets: HashMap::new(),
            ids: HashMap::new(),
            new_ids: Vec::new(),
            expired_ids: Vec::new(),
            sealed: Vec::new(),
            sealed_through: None,
            sealed_through_changed: false,
            heartbeat: None,
            late_carried: 0,
            late_rejected: 0,
        }
    }

    /// Rebuilds the state a checkpoint saved; replay then re-applies the log after it.
    pub fn restore(
        rules: Rules,
        buckets: Vec<(RecordKey, Bucket)>,
        ids: Vec<(String, i64)>,
        sealed_through: Option<i64>,
    ) -> Self {
        let mut this = Self::new(rules);
        this.buckets = buckets.into_iter().collect();
        this.ids = ids.into_iter().collect();
        this.sealed_through = sealed_through;
        this
    }

    /// New time rules after a reload; they apply from the next event and the next seal on.
    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    pub fn set_heartbeat(&mut self, heartbeat: Option<Heartbeat>) {
        self.heartbeat = heartbeat;
    }

    pub fn open_records(&self) -> usize {
        self.buckets.len()
    }

    fn is_sealed(&self, hour: i64, now: i64) -> bool {
        self.sealed_through.is_some_and(|through| hour <= through)
            || hour + 3600 + self.rules.seal_delay <= now
    }

    /// Checks an event against time, earlier ids and the key's total, and counts it.
    pub fn admit(&mut self, event: Event, now: i64) -> Result<Admission, AdmitError> {
        if let Some(id) = &event.id
            && self.ids.contains_key(id)
        {
            return Ok(Admission::Duplicate { id: event.id.unwrap_or_default() });
        }
        let (hour, carried) = self.hour_for(event.timestamp.unwrap_or(now), now)?;
        let Event { scope, customer, dimension, quantity, tags, id, .. } = event;
        let key = RecordKey { scope, customer, dimension, hour };
        let bucket = self.buckets.get(&key);
        let total = u64::from(bucket.map_or(0, |b| b.quantity)) + u64::from(quantity);
        if total > u64::from(MAX_QUANTITY) {
            return Err(AdmitError::QuantityOverflow { total });
        }
        if bucket
            .is_some_and(|b| b.allocations.len() >= MAX_ALLOCATIONS && !b.allocations.contains_key(&tags))
        {
            return Err(AdmitError::TooManyTagSets);
        }
        if carried {
            self.late_carried += 1;
        }
        let admitted = Admitted { key, tags, quantity, id, at: now };
        self.apply(&admitted);
        Ok(Admission::Counted { admitted, carried })
    }

    /// The hour an event at `at` is counted in, and whether it was carried forward to it.
    fn hour_for(&mut self, at: i64, now: i64) -> Result<(i64, bool), AdmitError> {
        if at > now + self.rules.future_tolerance {
            return Err(AdmitError::FutureTimestamp { at, ahead: at - now });
        }
        let hour = hour_of(at);
        if hour + self.rules.deadline <= now {
            return Err(AdmitError::PastDeadline { at, deadline: self.rules.deadline });
        }
        if deadline(hour, self.rules.deadline) <= now {
            return Err(AdmitError::MonthClosed { at });
        }
        if !self.is_sealed(hour, now) {
            return Ok((hour, false));
        }
        match self.rules.late_events {
            LateEvents::Reject => {
                self.late_rejected += 1;
                Err(AdmitError::HourSealed { hour })
            }
            LateEvents::CarryForward => Ok((hour_of(now), true)),
        }
    }

    /// Counts an admitted event: from [`Aggregator::admit`], or from the log during replay.
    pub fn apply(&mut self, admitted: &Admitted) {
        let bucket = match self.buckets.get_mut(&admitted.key) {
            Some(bucket) => bucket,
            None => self.buckets.entry(admitted.key.clone()).or_default(),
        };
        bucket.quantity += admitted.quantity;
        match bucket.allocations.get_mut(&admitted.tags) {
            Some(q) => *q += admitted.quantity,
            None => {
                bucket.allocations.insert(admitted.tags.clone(), admitted.quantity);
            }
        }
        bucket.dirty = true;
        if let Some(id) = &admitted.id {
            let expiry = admitted.at + ID_TTL_SECS;
            self.ids.insert(id.clone(), expiry);
            self.new_ids.push((id.clone(), expiry));
        }
    }

    /// Seals every hour that ended `seal_delay` ago or earlier, and forgets expired ids.
    pub fn seal_due(&mut self, now: i64) {
        let through = hour_of(now - self.rules.seal_delay) - 3600;
        let before = self.sealed_through;
        if self.sealed_through.is_none_or(|old| through > old) {
            self.sealed_through = Some(through);
            self.sealed_through_changed = true;
        }
        let due: Vec<RecordKey> =
            self.buckets.keys().filter(|k| self.is_sealed(k.hour, now)).cloned().collect();
        for key in due {
            let bucket = self.buckets.remove(&key).expect("key was just listed");
            self.sealed.push(bucket.seal(key));
        }
        if let (Some(heartbeat), Some(before)) = (&self.heartbeat, before) {
            // Every newly sealed hour still inside the deadline, including hours meterd was down
            // for: the key is this instance's own, and 0 is its true usage then.
            let first = (before + 3600).max(hour_of(now - self.rules.deadline) + 3600);
            for hour in (first..=through).step_by(3600) {
                for dimension in &heartbeat.dimensions {
                    let key = RecordKey {
                        scope: heartbeat.scope.clone(),
                        customer: Customer::Caller,
                        dimension: dimension.clone(),
                        hour,
                    };
                    if !self.sealed.iter().any(|r| r.key == key) {
                        self.sealed.push(SealedRecord { key, quantity: 0, allocations: Vec::new() });
                    }
                }
            }
        }
        let expired: Vec<String> =
            self.ids.iter().filter(|(_, expiry)| **expiry <= now).map(|(id, _)| id.clone()).collect();
        for id in &expired {
            self.ids.remove(id);
        }
        self.expired_ids.extend(expired);
    }

    /// Hands over everything changed since the last call, for one checkpoint.
    pub fn take_delta(&mut self) -> Delta {
        let mut changed = Vec::new();
        for (key, bucket) in &mut self.buckets {
            if bucket.dirty {
                bucket.dirty = false;
                changed.push((key.clone(), bucket.clone()));
            }
        }
        let mut sealed = std::mem::take(&mut self.sealed);
        sealed.sort_by(|a, b| a.key.cmp(&b.key));
        Delta {
            changed,
            sealed,
            new_ids: std::mem::take(&mut self.new_ids),
            expired_ids: std::mem::take(&mut self.expired_ids),
            sealed_through: self.sealed_through,
            sealed_through_advanced: std::mem::take(&mut self.sealed_through_changed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;

    fn rules() -> Rules {
        Rules {
            seal_delay: 300,
            deadline: 6 * H,
            future_tolerance: 300,
            late_events: LateEvents::CarryForward,
        }
    }

    fn heartbeat() -> Option<Heartbeat> {
        Some(Heartbeat {
            scope: Scope::ProductCode("p".into()),
            dimensions: vec!["cpu".into(), "gpu".into()],
        })
    }

    fn event(dimension: &str, quantity: u32) -> Event {
        Event {
            scope: Scope::ProductCode("p".into()),
            customer: Customer::Caller,
            dimension: dimension.into(),
            quantity,
            timestamp: None,
            tags: Vec::new(),
            id: None,
        }
    }

    fn sealed(aggregator: &mut Aggregator, now: i64) -> Vec<(String, i64, u32)> {
        aggregator.seal_due(now);
        aggregator
            .take_delta()
            .sealed
            .into_iter()
            .map(|r| (r.key.dimension, r.key.hour, r.quantity))
            .collect()
    }

    #[test]
    fn heartbeats_fill_every_sealed_hour_without_usage() {
        let start = 100 * H + 1800;
        let mut aggregator = Aggregator::new(rules());
        aggregator.set_heartbeat(heartbeat());
        assert_eq!(sealed(&mut aggregator, start), [], "hours before the start get none");
        aggregator.admit(event("cpu", 7), start).unwrap();
        assert_eq!(sealed(&mut aggregator, 101 * H + 200), [], "not before the seal delay");
        assert_eq!(
            sealed(&mut aggregator, 101 * H + 300),
            [("cpu".into(), 100 * H, 7), ("gpu".into(), 100 * H, 0)]
        );
        // Two idle hours later, both are covered, once.
        assert_eq!(
            sealed(&mut aggregator, 103 * H + 300),
            [
                ("cpu".into(), 101 * H, 0),
                ("cpu".into(), 102 * H, 0),
                ("gpu".into(), 101 * H, 0),
                ("gpu".into(), 102 * H, 0)
            ]
        );
        assert_eq!(sealed(&mut aggregator, 103 * H + 400), []);
    }

    #[test]
    fn started_within_the_seal_delay_the_hour_before_is_covered_too() {
        let mut aggregator = Aggregator::new(rules());
        aggregator.set_heartbeat(heartbeat());
        assert_eq!(sealed(&mut aggregator, 100 * H + 120), []);
        assert_eq!(
            sealed(&mut aggregator, 100 * H + 300),
            [("cpu".into(), 99 * H, 0), ("gpu".into(), 99 * H, 0)]
        );
    }

    #[test]
    fn after_a_restart_heartbeats_resume_after_the_last_sealed_hour_within_the_deadline() {
        let mut aggregator = Aggregator::restore(rules(), Vec::new(), Vec::new(), Some(90 * H));
        aggregator.set_heartbeat(heartbeat());
        let hours: Vec<i64> = sealed(&mut aggregator, 100 * H + 600).iter().map(|s| s.1).collect();
        // Hours 91..=99 were sealed-through candidates; only those still inside 6h are sent.
        assert_eq!(hours, [95 * H, 96 * H, 97 * H, 98 * H, 99 * H, 95 * H, 96 * H, 97 * H, 98 * H, 99 * H]);
    }
}
