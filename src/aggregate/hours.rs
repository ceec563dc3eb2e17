//! The open hours: one bucket per record key with its total and one allocation per tag set, the
//! client ids seen in the last 25 hours (`ids.rs`, `crate::ids`), what was already sealed ([`Frozen`]), and
//! the rules that decide where an event is counted and when an hour is sealed.
//!
//! Where an event goes, in order:
//!
//! | check | outcome |
//! |---|---|
//! | its id was accepted before, for the same event / another event | `Duplicate` / `IdConflict` |
//! | its timestamp is past `future_tolerance` ahead | `FutureTimestamp` |
//! | its hour's record could no longer be accepted (deadline, month close) | `PastDeadline`, `MonthClosed` |
//! | no record was sealed for its key and hour | counted in its own hour, even one past its seal point (sealed at the next checkpoint) |
//! | one was (the key's hour is frozen) | `late_events`: refused (`HourSealed`), or carried into the open hour — the first hour from now on whose record for the key is not sealed, in the same billing month (`CarryAcrossMonth` otherwise) |
//!
//! In fleet mode a key's hour is frozen once this host sealed the hour as a whole (the fleet may
//! have closed it). A key sealed earlier (a flush, a stopping host) is not: its later events are
//! counted in their own hour again and sealed as another partial of it, which the fleet sums.
//!
//! A sealed record is never written again, whatever the clock does: after the clock steps back,
//! an event for a sealed key and hour is late like any other.
//!
//! Everything here is plain data driven by explicit `now` arguments, so the property test can run
//! days of hours in microseconds. The aggregator never does I/O: the commit stage logs what
//! [`Aggregator::admit`] returns before anyone is told, and checkpoints [`Aggregator::take_delta`].

use serde::{Deserialize, Serialize};

use super::frozen::Frozen;
use super::ids::{self, ClientId, IdDelta, IdEntry, IdKey, Ids};
use super::open::{Found, OpenHours, OpenTotals, Prepared};
use super::record::{MAX_RECORD_BYTES, SealedRecord, allocation_len, base_len};
use crate::clock::{deadline, hour_of, same_month};
use crate::ids::{IdHash, Loaded, Run, Seen};
use crate::model::{Customer, Event, LateEvents, MAX_ALLOCATIONS, MAX_QUANTITY, RecordKey, Scope, TagSet};

/// The time rules, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub seal_delay: i64,
    /// The operation's window after the hour start (the month close applies on top).
    pub deadline: i64,
    pub future_tolerance: i64,
    pub late_events: LateEvents,
    /// Fleet mode: an hour this host sealed may already be closed fleet-wide, so every key of
    /// an hour up to `sealed_through` counts as sealed (late at ingest, never a late partial).
    /// A key sealed before its hour was (a flush, a stopping host) is not frozen: the fleet sums
    /// partials, so its later events are counted in their own hour again and sealed as the
    /// key's next partial (`StoredRecord::generation` in the outbox).
    pub sealed_hours_are_frozen: bool,
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

/// An accepted event as the log keeps it: everything replay needs to count it again, with the
/// hour already decided (a carried-forward event names the hour it was counted in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admitted {
    pub key: RecordKey,
    pub tags: TagSet,
    pub quantity: u32,
    pub id: Option<ClientId>,
    /// When it was accepted, epoch seconds; its id is remembered from then on.
    pub at: i64,
}

/// What [`Aggregator::admit`] did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Counted; log it before acknowledging. `carried` is set when it was moved to the open hour.
    Counted { admitted: Admitted, carried: bool },
    /// Its id was accepted before, for this same event: not counted again.
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
    #[error(
        "the hour starting {hour} is already sealed, and carrying the event into the open hour would move it into the next billing month"
    )]
    CarryAcrossMonth { hour: i64 },
    #[error("the hour's total for this customer and dimension would reach {total}, above 2147483647")]
    QuantityOverflow { total: u64 },
    #[error(
        "the hour's record for this customer and dimension already has 2500 tag sets, the service's limit"
    )]
    TooManyTagSets,
    #[error(
        "the hour's record for this customer and dimension would grow to about {bytes} bytes, more than one request can carry ({MAX_RECORD_BYTES}); use fewer or shorter tag sets"
    )]
    RecordTooLarge { bytes: usize },
    #[error(
        "id {id:?} was already used for a different event in the last 25 hours; give every event its own id"
    )]
    IdConflict { id: String },
    /// The id files could not be read to check the event's id: a storage failure.
    #[error("the remembered ids cannot be read: {reason}")]
    IdsUnreadable { reason: String },
    #[error(
        "this customer's usage in the hour starting {hour} was already reported {}; reporting it both with and without a license_arn would bill the customer twice",
        if *.licensed_before { "with a license_arn" } else { "without a license_arn" }
    )]
    MixedScope { hour: i64, licensed_before: bool },
}

/// What changed since the last checkpoint.
#[derive(Debug, Default)]
pub struct Delta {
    pub sealed: Vec<SealedRecord>,
    pub ids: IdDelta,
    /// Start of the last sealed hour, as of this delta.
    pub sealed_through: Option<i64>,
    /// Whether `sealed_through` moved since the last delta.
    pub sealed_through_advanced: bool,
    /// Whether a key may be sealed more than once in its hour (fleet mode): each record sealed
    /// for a key sealed before is stored as the key's next generation.
    pub generations: bool,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.ids.is_empty()
    }
}

/// Most hours a carried event skips over records sealed early for its key.
const MAX_CARRY_HOURS: i64 = 48;

/// The open hours, remembered ids and sealed keys.
#[derive(Debug)]
pub struct Aggregator {
    rules: Rules,
    open: OpenHours,
    ids: Ids,
    frozen: Frozen,
    sealed: Vec<SealedRecord>,
    /// Start of the last hour sealed as a whole; no record of it or before stays open.
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
            open: OpenHours::default(),
            ids: Ids::default(),
            frozen: Frozen::default(),
            sealed: Vec::new(),
            sealed_through: None,
            sealed_through_changed: false,
            heartbeat: None,
            late_carried: 0,
            late_rejected: 0,
        }
    }

    /// Rebuilds the state a checkpoint saved; [`Aggregator::restore_open`] then sets the open
    /// records, replay re-applies the log after it, and [`Aggregator::remember_sealed`] adds the
    /// records already sealed.
    /// `sled_ids` are ids an older meterd kept in sled, `id_files` what the id files hold.
    pub fn restore(
        rules: Rules,
        sled_ids: Vec<(IdKey, IdEntry)>,
        id_files: Loaded,
        sealed_through: Option<i64>,
    ) -> std::io::Result<Self> {
        let mut this = Self::new(rules);
        this.ids = Ids::restore(sled_ids, id_files)?;
        this.sealed_through = sealed_through;
        Ok(this)
    }

    /// Takes the id runs a checkpoint wrote.
    pub fn install_id_runs(&mut self, runs: Vec<Run>) {
        self.ids.install(runs);
    }

    /// Whether full id segments wait for a checkpoint to write them.
    pub fn ids_waiting(&self) -> bool {
        self.ids.has_frozen()
    }

    /// Ids remembered.
    pub fn remembered_ids(&self) -> usize {
        self.ids.len()
    }

    /// Sets an open record to the totals a checkpoint saved for it.
    pub fn restore_open(&mut self, totals: &SealedRecord) {
        self.frozen.note_open(&totals.key);
        self.open.restore(totals);
    }

    /// Whether records were sealed since the last [`Aggregator::take_delta`].
    pub fn has_sealed(&self) -> bool {
        !self.sealed.is_empty()
    }

    /// Whether an open record changed since the last [`Aggregator::visit_open`].
    pub fn has_open_changes(&self) -> bool {
        self.open.has_changes()
    }

    /// Hands every open record changed since the last call (every one with `all`) to `sink`, for
    /// a checkpoint.
    pub fn visit_open(&mut self, all: bool, sink: impl FnMut(&OpenTotals<'_>)) {
        self.open.visit(all, sink);
    }

    /// Records sealed before (from the outbox): never written again.
    pub fn remember_sealed<'a>(&mut self, keys: impl IntoIterator<Item = &'a RecordKey>) {
        for key in keys {
            self.frozen.insert(key);
        }
    }

    /// New time rules after a reload; they apply from the next event and the next seal on.
    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    pub fn set_heartbeat(&mut self, heartbeat: Option<Heartbeat>) {
        self.heartbeat = heartbeat;
    }

    pub fn open_records(&self) -> usize {
        self.open.len()
    }

    /// Whether `key`'s record may no longer be counted into (see [`Rules`]).
    fn is_frozen(&self, key: &RecordKey) -> bool {
        if self.rules.sealed_hours_are_frozen {
            self.sealed_through.is_some_and(|t| key.hour <= t) || self.frozen.forgotten(key.hour)
        } else {
            self.frozen.contains(key)
        }
    }

    /// Whether an hour is due for sealing as a whole.
    fn is_due(&self, hour: i64, now: i64) -> bool {
        self.sealed_through.is_some_and(|through| hour <= through)
            || hour + 3600 + self.rules.seal_delay <= now
    }

    /// Computes each of a group's events' record key once (into `keys`, for
    /// [`Aggregator::admit_prepared`]) and reads ahead where they will be counted, so that at a
    /// million open records their memory misses overlap. Only a hint: an event carried to a
    /// later hour, or whose key was not open anywhere yet, is looked up as usual. Returns how
    /// many records were found at the first slot of their probe.
    pub fn prepare<'a>(
        &self,
        events: impl Iterator<Item = &'a Event>,
        now: i64,
        keys: &mut Vec<Option<Prepared>>,
    ) -> usize {
        keys.clear();
        keys.extend(events.map(|e| {
            self.open.prepare(&e.scope, &e.customer, &e.dimension, hour_of(e.timestamp.unwrap_or(now)))
        }));
        self.open.read_ahead(keys)
    }

    /// Hashes each of a group's events' id once (into `hashes`, for [`Aggregator::admit_hashed`]).
    pub fn prepare_ids<'a>(&self, events: impl Iterator<Item = &'a Event>, hashes: &mut Vec<Option<IdHash>>) {
        hashes.clear();
        hashes.extend(events.map(|e| match (&e.id_print, &e.id) {
            (Some(print), _) => Some(IdHash(print.hash)),
            (None, id) => id.as_ref().map(|id| IdHash::of(e.peer, id)),
        }));
    }

    /// Reads where the id store will look for `hash`, some events before it is admitted, so that
    /// the memory misses of several ids overlap; returns a sum of what was read.
    pub fn read_ahead_id(&self, hash: &IdHash) -> u64 {
        self.ids.read_ahead(hash)
    }

    /// Checks an event against earlier ids, time, what is sealed and the key's total, and counts it.
    pub fn admit(&mut self, event: Event, now: i64) -> Result<Admission, AdmitError> {
        self.admit_hashed(event, now, None, None).map_err(|(error, _)| error)
    }

    /// [`Aggregator::admit`] with the event's record key from [`Aggregator::prepare`], in the
    /// same group (no record closed since).
    pub fn admit_prepared(
        &mut self,
        event: Event,
        now: i64,
        prepared: Option<Prepared>,
    ) -> Result<Admission, AdmitError> {
        self.admit_hashed(event, now, prepared, None).map_err(|(error, _)| error)
    }

    /// [`Aggregator::admit_prepared`] with the event's id hashed by [`Aggregator::prepare_ids`].
    /// The event's id is moved, never copied: into what is logged, or back with the refusal.
    pub fn admit_hashed(
        &mut self,
        event: Event,
        now: i64,
        prepared: Option<Prepared>,
        id_hash: Option<IdHash>,
    ) -> Result<Admission, (AdmitError, Option<String>)> {
        let digest = match (&event.id, event.id_print) {
            (None, _) => 0,
            (Some(_), Some(print)) => print.digest,
            (Some(_), None) => ids::digest(&event),
        };
        let Event { scope, customer, dimension, quantity, timestamp, tags, id, peer, .. } = event;
        let (id, hash) = match id {
            None => (None, None),
            Some(id) => {
                let id_hash = id_hash.unwrap_or_else(|| IdHash::of(peer, &id));
                match self.ids.check(id_hash, &id, digest) {
                    Err(err) => {
                        return Err((AdmitError::IdsUnreadable { reason: err.to_string() }, Some(id)));
                    }
                    Ok((Seen::Same, _)) => return Ok(Admission::Duplicate { id }),
                    Ok((Seen::Conflict, _)) => {
                        return Err((AdmitError::IdConflict { id: id.clone() }, Some(id)));
                    }
                    Ok((Seen::New, hash)) => (
                        Some(ClientId { key: IdKey { peer: Some(peer), id }, digest: Some(digest) }),
                        Some((hash, digest)),
                    ),
                }
            }
        };
        let refused = |error, id: Option<ClientId>| Err((error, id.map(|id| id.key.id)));
        let at = timestamp.unwrap_or(now);
        let mut key = RecordKey { scope, customer, dimension, hour: hour_of(at) };
        let carried = match self.place(&mut key, at, now) {
            Ok(carried) => carried,
            Err(error) => return refused(error, id),
        };
        // The key's open record is looked up once for the checks and the count.
        let open = self.open.find_prepared(&key, prepared);
        if open.is_none() && self.frozen.must_note_open(&key) {
            for open in self.open.select(|open| open.hour == key.hour) {
                self.frozen.note_scope(&self.open.record_key(&open));
            }
        }
        if let Err(error) = self.check_room(open, &key, &tags, quantity) {
            return refused(error, id);
        }
        if carried {
            self.late_carried += 1;
        }
        let admitted = Admitted { key, tags, quantity, id, at: now };
        self.count(open, &admitted);
        if let Some((hash, digest)) = hash {
            self.ids.remember(hash, digest, now);
        }
        Ok(Admission::Counted { admitted, carried })
    }

    /// Decides the hour `key` is counted in (see the module header); returns whether the event
    /// was carried forward.
    fn place(&mut self, key: &mut RecordKey, at: i64, now: i64) -> Result<bool, AdmitError> {
        if at > now + self.rules.future_tolerance {
            return Err(AdmitError::FutureTimestamp { at, ahead: at - now });
        }
        let hour = key.hour;
        if hour + self.rules.deadline <= now {
            return Err(AdmitError::PastDeadline { at, deadline: self.rules.deadline });
        }
        if deadline(hour, self.rules.deadline) <= now {
            return Err(AdmitError::MonthClosed { at });
        }
        if !self.is_frozen(key) {
            return Ok(false);
        }
        if self.rules.late_events == LateEvents::Reject {
            self.late_rejected += 1;
            return Err(AdmitError::HourSealed { hour });
        }
        key.hour = hour_of(now).max(hour + 3600);
        while self.is_frozen(key) && key.hour < hour + MAX_CARRY_HOURS * 3600 {
            key.hour += 3600;
        }
        if self.is_frozen(key) || !same_month(hour, key.hour) {
            return Err(AdmitError::CarryAcrossMonth { hour });
        }
        Ok(true)
    }

    /// Whether the key's record has room for this event: the service's limits on the total, the
    /// tag sets and the request size, and one kind of scope per customer and hour.
    fn check_room(
        &self,
        open: Option<Found>,
        key: &RecordKey,
        tags: &TagSet,
        quantity: u32,
    ) -> Result<(), AdmitError> {
        // An open record's key names its scope, so the customer and hour were checked when it
        // was opened: only a new record can mix scopes.
        if open.is_none()
            && let Some(licensed_before) = self.frozen.mixes_scope(key)
        {
            return Err(AdmitError::MixedScope { hour: key.hour, licensed_before });
        }
        let bucket = open.map(|found| self.open.bucket(&found));
        let total = u64::from(bucket.map_or(0, |b| b.quantity)) + u64::from(quantity);
        if total > u64::from(MAX_QUANTITY) {
            return Err(AdmitError::QuantityOverflow { total });
        }
        let new_tag_set = !bucket.is_some_and(|b| self.open.has_tag_set(b, tags));
        if new_tag_set && bucket.is_some_and(|b| self.open.tag_sets(b) >= MAX_ALLOCATIONS) {
            return Err(AdmitError::TooManyTagSets);
        }
        let bytes = bucket.map_or_else(|| base_len(key), |b| b.bytes as usize)
            + if new_tag_set { allocation_len(tags) } else { 0 };
        if bytes > MAX_RECORD_BYTES {
            return Err(AdmitError::RecordTooLarge { bytes });
        }
        Ok(())
    }

    /// Counts an event from the log during replay, and remembers its id unless known already
    /// (the id files may hold it). An error: the id files could not be read.
    pub fn apply(&mut self, admitted: &Admitted) -> std::io::Result<()> {
        let open = self.open.find(&admitted.key);
        self.count(open, admitted);
        match &admitted.id {
            Some(id) => self.ids.replay(id, admitted.at),
            None => Ok(()),
        }
    }

    /// Counts an admitted event into its open record (`open`, if it has one already).
    fn count(&mut self, open: Option<Found>, admitted: &Admitted) {
        if open.is_none() {
            self.frozen.note_open(&admitted.key);
        }
        self.open.add(open, &admitted.key, &admitted.tags, admitted.quantity);
    }

    /// Seals every record whose hour ended `seal_delay` ago or earlier (and every record of an
    /// hour already sealed as a whole), and forgets expired ids and sealed keys past their deadline.
    pub fn seal_due(&mut self, now: i64) {
        let through = hour_of(now - self.rules.seal_delay) - 3600;
        let before = self.sealed_through;
        if self.sealed_through.is_none_or(|old| through > old) {
            self.sealed_through = Some(through);
            self.sealed_through_changed = true;
        }
        for key in self.open.select(|k| self.is_due(k.hour, now)) {
            let record = self.open.remove(&key).expect("key was just listed");
            self.frozen.insert(&record.key);
            self.sealed.push(record);
        }
        if let (Some(before), Some(through)) = (before, self.sealed_through) {
            self.seal_heartbeats(before, through, now);
        }
        self.ids.expire(now);
        // Kept an hour past every deadline; an older hour counts as sealed (see `Frozen`).
        self.frozen.forget_before(hour_of(now - self.rules.deadline) - 3600);
    }

    /// The open records `matches` picks, as they stand (`meterd customer`).
    pub fn open_records_of(&self, matches: impl Fn(&RecordKey) -> bool) -> Vec<SealedRecord> {
        let chosen = self.open.select(|k| matches(&self.open.record_key(k)));
        chosen.iter().filter_map(|k| self.open.buckets.get(k).map(|b| self.open.totals(k, b))).collect()
    }

    /// Seals the open records `matches` picks now, whatever their hour (`meterd flush`). On one
    /// host their keys' hours are frozen like any sealed one: later events for them are late. On
    /// a fleet host a key's hour is frozen only once the whole hour is sealed: later events count
    /// in its next generation, shipped as another partial of the same hour.
    pub fn seal_now(&mut self, matches: impl Fn(&RecordKey) -> bool) -> usize {
        let chosen = self.open.select(|k| matches(&self.open.record_key(k)));
        for key in &chosen {
            let record = self.open.remove(key).expect("key was just listed");
            self.frozen.insert(&record.key);
            self.sealed.push(record);
        }
        chosen.len()
    }

    /// The heartbeat's 0-quantity records for every hour newly sealed as a whole, including hours
    /// meterd was down for, within the deadline: the key is this instance's own, and 0 is its true
    /// usage then.
    fn seal_heartbeats(&mut self, before: i64, through: i64, now: i64) {
        let Some(heartbeat) = &self.heartbeat else { return };
        let first = (before + 3600).max(hour_of(now - self.rules.deadline) + 3600);
        for hour in (first..=through).step_by(3600) {
            for dimension in &heartbeat.dimensions {
                let key = RecordKey {
                    scope: heartbeat.scope.clone(),
                    customer: Customer::Caller,
                    dimension: dimension.clone(),
                    hour,
                };
                if !self.frozen.contains(&key) {
                    self.frozen.insert(&key);
                    self.sealed.push(SealedRecord { key, quantity: 0, allocations: Vec::new() });
                }
            }
        }
    }

    /// Hands over everything changed since the last call, for one checkpoint.
    pub fn take_delta(&mut self) -> Delta {
        let mut sealed = std::mem::take(&mut self.sealed);
        sealed.sort_by(|a, b| a.key.cmp(&b.key));
        Delta {
            sealed,
            ids: self.ids.take_changes(),
            sealed_through: self.sealed_through,
            sealed_through_advanced: std::mem::take(&mut self.sealed_through_changed),
            generations: self.rules.sealed_hours_are_frozen,
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
            sealed_hours_are_frozen: false,
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
            peer: 0,
            id_print: None,
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

    /// An event of `customer` (an account id), with a license ARN or without.
    fn scoped(customer: &str, dimension: &str, licensed: bool) -> Event {
        Event {
            scope: match licensed {
                true => Scope::LicenseArn("arn".into()),
                false => Scope::ProductCode("p".into()),
            },
            customer: Customer::AwsAccountId(customer.into()),
            ..event(dimension, 1)
        }
    }

    fn mixed(aggregator: &mut Aggregator, event: Event, now: i64) -> Option<bool> {
        match aggregator.admit(event, now) {
            Ok(_) => None,
            Err(AdmitError::MixedScope { licensed_before, .. }) => Some(licensed_before),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn a_customer_hour_never_mixes_scopes_though_open_records_are_noted_only_once_both_kinds_open() {
        let now = 100 * H + 60;
        let mut aggregator = Aggregator::new(rules());
        // Only records without a license ARN: none of them is in the scope sets.
        for (customer, dimension) in [("a", "cpu"), ("a", "gpu"), ("b", "cpu")] {
            assert_eq!(mixed(&mut aggregator, scoped(customer, dimension, false), now), None);
        }
        assert_eq!(aggregator.frozen.noted(100 * H), [0, 0]);
        // The first licensed record notes the open ones first, and then each record as it opens.
        assert_eq!(mixed(&mut aggregator, scoped("a", "cpu", true), now), Some(false));
        assert_eq!(aggregator.frozen.noted(100 * H), [2, 0]);
        assert_eq!(mixed(&mut aggregator, scoped("c", "cpu", true), now), None);
        assert_eq!(mixed(&mut aggregator, scoped("c", "gpu", false), now), Some(true));
        assert_eq!(mixed(&mut aggregator, scoped("b", "gpu", false), now), None);
        assert_eq!(mixed(&mut aggregator, scoped("b", "disk", true), now), Some(false));
        assert_eq!(aggregator.frozen.noted(100 * H), [2, 1]);
        // Another hour is apart.
        assert_eq!(mixed(&mut aggregator, scoped("a", "cpu", true), now + H), None);

        // The same after a restart: records restored and replayed are noted when the first
        // record of the other kind opens.
        let mut restarted = Aggregator::new(rules());
        restarted.restore_open(&SealedRecord {
            key: RecordKey {
                scope: Scope::ProductCode("p".into()),
                customer: Customer::AwsAccountId("a".into()),
                dimension: "cpu".into(),
                hour: 100 * H,
            },
            quantity: 3,
            allocations: Vec::new(),
        });
        let Ok(Admission::Counted { admitted, .. }) = aggregator.admit(scoped("c", "disk", true), now) else {
            panic!("counted")
        };
        restarted.apply(&admitted).unwrap();
        assert_eq!(restarted.frozen.noted(100 * H), [0, 0]);
        assert_eq!(mixed(&mut restarted, scoped("c", "cpu", false), now), Some(true));
        assert_eq!(mixed(&mut restarted, scoped("a", "gpu", true), now), Some(false));
        assert_eq!(restarted.frozen.noted(100 * H), [1, 1]);
    }

    #[test]
    fn keys_prepared_per_group_count_as_plain_admits_do() {
        let now = 100 * H + 600;
        let (mut plain, mut prepared) = (Aggregator::new(rules()), Aggregator::new(rules()));
        // Hour 99 has a record and is sealed: its events are carried into hour 100.
        for aggregator in [&mut plain, &mut prepared] {
            aggregator
                .admit(Event { timestamp: Some(99 * H + 10), ..scoped("a", "cpu", false) }, 99 * H + 100)
                .unwrap();
            aggregator.seal_due(now);
        }
        let event = |n: usize| {
            let customer = ["a", "b", "c", "d"][n % 4];
            let dimension = ["cpu", "gpu", &format!("dim{}", n / 20)][n % 3].to_string();
            let late = n.is_multiple_of(7);
            Event {
                timestamp: late.then_some(99 * H + 20),
                quantity: 1 + n as u32 % 5,
                tags: vec![("set".into(), format!("t{}", n % 2))],
                ..scoped(customer, &dimension, n % 11 == 5)
            }
        };
        let mut keys = Vec::new();
        let mut prepared_some = 0;
        for group in (0..200).collect::<Vec<_>>().chunks(25) {
            let events: Vec<Event> = group.iter().map(|&n| event(n)).collect();
            prepared.prepare(events.iter(), now, &mut keys);
            prepared_some += keys.iter().flatten().count();
            for (event, key) in events.into_iter().zip(keys.clone()) {
                assert_eq!(prepared.admit_prepared(event.clone(), now, key), plain.admit(event, now));
            }
        }
        assert!(prepared_some > 100, "most keys were prepared: {prepared_some}");
        let totals = |aggregator: &mut Aggregator| {
            let mut all = Vec::new();
            aggregator.visit_open(true, |totals| all.push(postcard::to_allocvec(totals).unwrap()));
            all.sort();
            all
        };
        let expected = totals(&mut plain);
        assert_eq!(expected.len(), plain.open_records());
        assert_eq!(totals(&mut prepared), expected);
        assert_eq!(plain.late_carried, prepared.late_carried);
        assert!(plain.late_carried > 0);

        // A key prepared before a record closed is not used: the numbers it names may have gone
        // to other values since. Here "gone" loses its number when e's record is flushed, and
        // "other" takes it: g's prepared key for "gone" now reads as g's record for "other".
        let mut aggregator = Aggregator::new(rules());
        aggregator.admit(scoped("e", "gone", false), now).unwrap();
        let late = [scoped("g", "gone", false)];
        aggregator.prepare(late.iter(), now, &mut keys);
        assert!(keys[0].is_some());
        assert_eq!(aggregator.seal_now(|key| key.dimension == "gone"), 1);
        aggregator.admit(scoped("g", "other", false), now).unwrap();
        aggregator.admit_prepared(late[0].clone(), now, keys[0]).unwrap();
        let mut records = Vec::new();
        aggregator.visit_open(true, |totals| {
            let record: SealedRecord = postcard::from_bytes(&postcard::to_allocvec(totals).unwrap()).unwrap();
            records.push((record.key.dimension, record.quantity));
        });
        records.sort();
        assert_eq!(records, [("gone".to_string(), 1), ("other".to_string(), 1)]);
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
        let mut aggregator =
            Aggregator::restore(rules(), Vec::new(), Default::default(), Some(90 * H)).unwrap();
        aggregator.set_heartbeat(heartbeat());
        let hours: Vec<i64> = sealed(&mut aggregator, 100 * H + 600).iter().map(|s| s.1).collect();
        // Hours 91..=99 were sealed-through candidates; only those still inside 6h are sent.
        assert_eq!(hours, [95 * H, 96 * H, 97 * H, 98 * H, 99 * H, 95 * H, 96 * H, 97 * H, 98 * H, 99 * H]);
    }

    fn at(aggregator: &mut Aggregator, dimension: &str, timestamp: i64, now: i64) -> Result<i64, AdmitError> {
        let mut event = event(dimension, 1);
        event.timestamp = Some(timestamp);
        match aggregator.admit(event, now)? {
            Admission::Counted { admitted, .. } => Ok(admitted.key.hour),
            Admission::Duplicate { .. } => panic!("no id, no duplicate"),
        }
    }

    /// 2026-11-30T22:00:00Z: the last hours of November.
    const NOV_30_22H: i64 = 1_796_076_000;

    #[test]
    fn a_sealed_key_carries_past_its_sealed_hours_but_never_into_the_next_month() {
        let mut aggregator = Aggregator::new(rules());
        let now = NOV_30_22H + 2 * H + 600; // Dec 1, 00:10: November 30 22:00 is sealed.
        assert_eq!(at(&mut aggregator, "cpu", NOV_30_22H + 5, now), Ok(NOV_30_22H), "its own hour first");
        aggregator.seal_due(now);
        assert_eq!(aggregator.take_delta().sealed.len(), 1);
        assert_eq!(
            at(&mut aggregator, "cpu", NOV_30_22H + 9, now),
            Err(AdmitError::CarryAcrossMonth { hour: NOV_30_22H }),
            "carrying would move November usage into December"
        );
        // Within a month: past the sealed hour, to the open one.
        let now = NOV_30_22H - 20 * H;
        let mut aggregator = Aggregator::new(rules());
        assert_eq!(at(&mut aggregator, "cpu", now - 3 * H, now), Ok(hour_of(now - 3 * H)));
        aggregator.seal_due(now);
        assert_eq!(at(&mut aggregator, "cpu", now - 3 * H, now), Ok(hour_of(now)));
        assert_eq!(aggregator.late_carried, 1);
    }

    #[test]
    fn after_the_clock_steps_back_a_sealed_key_goes_to_its_next_unsealed_hour() {
        let mut aggregator = Aggregator::new(rules());
        let now = NOV_30_22H - 20 * H + 600;
        at(&mut aggregator, "cpu", now - 2 * H, now).unwrap();
        at(&mut aggregator, "cpu", now - H, now).unwrap();
        aggregator.seal_due(now);
        assert_eq!(aggregator.take_delta().sealed.len(), 2);
        // The clock is back two hours: "now" is in a sealed hour of this key, and so is the next.
        let back = now - 2 * H;
        assert_eq!(at(&mut aggregator, "cpu", back, back), Ok(hour_of(now)), "past both sealed hours");
        assert_eq!(at(&mut aggregator, "gpu", back, back), Ok(hour_of(back)), "another key: its own hour");
        aggregator.seal_due(back);
        let sealed: Vec<(String, i64)> =
            aggregator.take_delta().sealed.into_iter().map(|r| (r.key.dimension, r.key.hour)).collect();
        assert_eq!(sealed, [("gpu".to_string(), hour_of(back))], "no sealed key is sealed again");
    }

    #[test]
    fn in_a_fleet_a_key_sealed_early_takes_its_later_events_in_its_own_hour_until_the_hour_is_sealed() {
        let fleet = Rules { sealed_hours_are_frozen: true, ..rules() };
        let now = NOV_30_22H - 20 * H + 600;
        let hour = hour_of(now);
        let mut aggregator = Aggregator::new(fleet);
        aggregator.seal_due(now);
        assert_eq!(at(&mut aggregator, "cpu", now, now), Ok(hour));
        // A flush (or a stopping host): the key is sealed within its hour.
        assert_eq!(aggregator.seal_now(|_| true), 1);
        assert_eq!(at(&mut aggregator, "cpu", now + 5, now + 5), Ok(hour), "the same hour, not the next");
        assert_eq!(aggregator.late_carried, 0);
        assert_eq!(aggregator.seal_now(|_| true), 1, "another partial of the same key and hour");
        assert_eq!(at(&mut aggregator, "cpu", now + 9, now + 9), Ok(hour));
        let delta = aggregator.take_delta();
        assert!(delta.generations);
        assert_eq!(delta.sealed.iter().map(|r| (r.key.hour, r.quantity)).collect::<Vec<_>>(), [(hour, 1); 2]);
        // Once the hour is sealed as a whole, the fleet may have closed it: its events are late.
        let later = hour + H + 300;
        aggregator.seal_due(later);
        assert_eq!(aggregator.take_delta().sealed.len(), 1, "the third partial, at the seal point");
        assert_eq!(at(&mut aggregator, "cpu", now, later), Ok(hour + H), "carried");
        assert_eq!(aggregator.late_carried, 1);
        // A single host keeps a key sealed early frozen: the service takes one record per key.
        let mut single = Aggregator::new(rules());
        single.seal_due(now);
        at(&mut single, "cpu", now, now).unwrap();
        single.seal_now(|_| true);
        assert_eq!(at(&mut single, "cpu", now, now), Ok(hour + H));
        assert!(!single.take_delta().generations);
    }
}
