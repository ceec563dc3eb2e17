//! The open hours in a compact layout: a record key is the hour, the interned scope and
//! dimension, and the customer's bytes inline (interned when longer than 22 bytes); a bucket
//! keeps its first tag set inline, tag sets are interned too, and the maps use foldhash instead of
//! SipHash. At a million open keys this is about a tenth of the memory of owned strings per key.
//! Interned values are counted and freed with the last bucket that uses them, so sealed hours
//! leave nothing behind.

use std::hash::{Hash, Hasher};

use serde::Serialize;

use super::intern::{Interner, Lists};
use super::record::{Allocation, SealedRecord, allocation_len, base_len};
use super::table::{CacheLine, KeyTable};
use crate::model::{Customer, RecordKey, Scope, TagSet};

/// A record key by numbers. `kinds`: bit 0 a license ARN scope, bits 1–2 the customer's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenKey {
    pub hour: i64,
    scope: u32,
    dimension: u32,
    customer: CustomerSlot,
    kinds: u8,
}

impl Hash for OpenKey {
    /// As five words: hashed once or twice per event, and the derived hash took the customer's
    /// bytes through the slice path.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let word =
            |at: usize| u64::from_le_bytes(self.customer.0[at..at + 8].try_into().expect("eight bytes"));
        state.write_u64(self.hour as u64);
        state.write_u64(u64::from(self.scope) | u64::from(self.dimension) << 32);
        state.write_u64(word(0));
        state.write_u64(word(8));
        state.write_u64(word(15) ^ u64::from(self.kinds));
    }
}

/// Longest customer kept inline in its key.
const INLINE_CUSTOMER: usize = 22;

/// A customer in a key: its bytes inline when they fit (an AWS account id has 12), else its
/// interned number. A key table of a million records has hundreds of thousands of customers, so
/// an interned customer cost a lookup in a table as large, and a read of its string elsewhere,
/// for every event; inline, finding a record reads the key table only. Byte 0 is the length, or
/// `u8::MAX` with the number in bytes 1–4; unused bytes are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CustomerSlot([u8; INLINE_CUSTOMER + 1]);

impl CustomerSlot {
    /// The caller's own account (meter_usage mode): no name.
    const CALLER: Self = Self([0; INLINE_CUSTOMER + 1]);

    fn inline(name: &str) -> Option<Self> {
        let bytes = name.as_bytes();
        (bytes.len() <= INLINE_CUSTOMER).then(|| {
            let mut slot = [0; INLINE_CUSTOMER + 1];
            slot[0] = bytes.len() as u8;
            slot[1..=bytes.len()].copy_from_slice(bytes);
            Self(slot)
        })
    }

    fn interned(id: u32) -> Self {
        let mut slot = [0; INLINE_CUSTOMER + 1];
        slot[0] = u8::MAX;
        slot[1..5].copy_from_slice(&id.to_le_bytes());
        Self(slot)
    }

    fn interned_id(&self) -> Option<u32> {
        (self.0[0] == u8::MAX).then(|| u32::from_le_bytes(self.0[1..5].try_into().expect("four bytes")))
    }

    /// The name, read from the slot or from `names`.
    fn resolve<'a>(&'a self, names: &'a Interner<str>) -> &'a str {
        match self.interned_id() {
            Some(id) => names.resolve(id),
            None => std::str::from_utf8(&self.0[1..=self.0[0] as usize]).expect("a name from a str"),
        }
    }
}

/// Tag sets and their quantities: the first inline, two or more in [`Lists`].
#[derive(Debug, Clone, Copy)]
enum Allocs {
    One(u32, u32),
    Many(u32),
}

/// The running total of one open record.
#[derive(Debug)]
pub struct Bucket {
    pub quantity: u32,
    /// An upper bound of the record's size in a request.
    pub bytes: u32,
    /// Changed since the last checkpoint.
    dirty: bool,
    allocs: Allocs,
}

// An open record is a cache line of the key table (`KeyTable`'s `CacheLine`); a larger one would
// take two.
const _: () = assert!(std::mem::size_of::<(OpenKey, Bucket)>() <= 64);

impl Bucket {
    fn each_tag_set<'a>(&'a self, lists: &'a Lists) -> impl Iterator<Item = (u32, u32)> + 'a {
        let (one, many) = match self.allocs {
            Allocs::One(id, quantity) => (Some((id, quantity)), &[][..]),
            Allocs::Many(at) => (None, lists.get(at)),
        };
        one.into_iter().chain(many.iter().copied())
    }
}

/// An open record's totals, borrowed from the open hours: encodes exactly as a [`SealedRecord`]
/// does (postcard names no fields and numbers enum variants), without copying a string.
#[derive(Debug, Serialize)]
pub struct OpenTotals<'a> {
    key: KeyRef<'a>,
    quantity: u32,
    allocations: AllocationsRef<'a>,
}

impl OpenTotals<'_> {
    /// Appends the same bytes as the `Serialize` impl (postcard's), written by hand: a checkpoint
    /// encodes up to a million of these on the commit thread, and serde's path took about 95 ns
    /// each.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (variant, scope) = match self.key.scope {
            ScopeRef::ProductCode(code) => (0, code),
            ScopeRef::LicenseArn(arn) => (1, arn),
        };
        varint(out, variant);
        string(out, scope);
        match self.key.customer {
            CustomerRef::AwsAccountId(id) => {
                varint(out, 0);
                string(out, id);
            }
            CustomerRef::Identifier(id) => {
                varint(out, 1);
                string(out, id);
            }
            CustomerRef::Caller => varint(out, 2),
        }
        string(out, self.key.dimension);
        // Signed integers are zigzag varints.
        varint(out, ((self.key.hour << 1) ^ (self.key.hour >> 63)) as u64);
        varint(out, u64::from(self.quantity));
        let AllocationsRef { tags, bucket, lists } = self.allocations;
        let tag_sets = || bucket.each_tag_set(lists).filter(|(id, _)| *id != u32::MAX);
        varint(out, tag_sets().count() as u64);
        for (id, quantity) in tag_sets() {
            let pairs = tags.resolve(id);
            varint(out, pairs.len() as u64);
            for (name, value) in pairs {
                string(out, name);
                string(out, value);
            }
            varint(out, u64::from(quantity));
        }
    }
}

/// postcard's unsigned varint: seven bits a byte, low first, the high bit set on all but the last.
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// postcard's string: its length in bytes, then the bytes.
fn string(out: &mut Vec<u8>, value: &str) {
    varint(out, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

/// A bucket's allocations, encoded as a sequence straight from the bucket.
#[derive(Debug)]
struct AllocationsRef<'a> {
    tags: &'a Interner<[(String, String)]>,
    bucket: &'a Bucket,
    lists: &'a Lists,
}

impl Serialize for AllocationsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let tag_sets = || self.bucket.each_tag_set(self.lists).filter(|(id, _)| *id != u32::MAX);
        // postcard writes the length first.
        let mut seq = serializer.serialize_seq(Some(tag_sets().count()))?;
        for (id, quantity) in tag_sets() {
            seq.serialize_element(&AllocationRef { tags: self.tags.resolve(id), quantity })?;
        }
        seq.end()
    }
}

#[derive(Debug, Serialize)]
struct KeyRef<'a> {
    scope: ScopeRef<'a>,
    customer: CustomerRef<'a>,
    dimension: &'a str,
    hour: i64,
}

#[derive(Debug, Serialize)]
enum ScopeRef<'a> {
    ProductCode(&'a str),
    LicenseArn(&'a str),
}

#[derive(Debug, Serialize)]
enum CustomerRef<'a> {
    AwsAccountId(&'a str),
    Identifier(&'a str),
    Caller,
}

#[derive(Debug, Serialize)]
struct AllocationRef<'a> {
    tags: &'a [(String, String)],
    quantity: u32,
}

/// The values open records share, by number, and the records' tag-set lists.
#[derive(Debug, Default)]
struct Interned {
    scopes: Interner<str>,
    names: Interner<str>,
    tags: Interner<[(String, String)]>,
    lists: Lists,
}

impl Interned {
    /// The record key `open` stands for, borrowed.
    fn key_ref<'a>(&'a self, open: &'a OpenKey) -> KeyRef<'a> {
        let scope = self.scopes.resolve(open.scope);
        KeyRef {
            scope: if open.kinds & 1 == 1 {
                ScopeRef::LicenseArn(scope)
            } else {
                ScopeRef::ProductCode(scope)
            },
            customer: match open.kinds >> 1 {
                0 => CustomerRef::AwsAccountId(open.customer.resolve(&self.names)),
                1 => CustomerRef::Identifier(open.customer.resolve(&self.names)),
                _ => CustomerRef::Caller,
            },
            dimension: self.names.resolve(open.dimension),
            hour: open.hour,
        }
    }

    /// `open`'s totals, borrowed.
    fn totals_ref<'a>(&'a self, open: &'a OpenKey, bucket: &'a Bucket) -> OpenTotals<'a> {
        OpenTotals {
            key: self.key_ref(open),
            quantity: bucket.quantity,
            allocations: AllocationsRef { tags: &self.tags, bucket, lists: &self.lists },
        }
    }
}

/// Where a record key's open record is: its key by numbers and its entry in the key table, found
/// once per event for the checks and the count. Valid until a record is closed.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    open: OpenKey,
    entry: usize,
}

/// A record key by numbers with its hash ([`OpenHours::prepare`]), and how many records had
/// closed then.
#[derive(Debug, Clone, Copy)]
pub struct Prepared {
    open: OpenKey,
    hash: u32,
    closed: u64,
}

/// The open records.
#[derive(Debug, Default)]
pub struct OpenHours {
    pub(super) buckets: KeyTable<OpenKey, Bucket, foldhash::fast::RandomState, CacheLine>,
    interned: Interned,
    changed: Changed,
    /// Records closed so far: a key prepared before a record closed may name numbers freed
    /// since, and is not used.
    closed: u64,
}

/// The records changed since the last checkpoint, listed while they are at most an eighth of the
/// open records: a checkpoint then reads only those, not a table of a million records to find a
/// few. Past that, it reads the table through (in order, cheaper than as many lookups).
#[derive(Debug, Default)]
struct Changed {
    keys: Vec<OpenKey>,
    /// More changed than listed: every record has to be looked at.
    overflow: bool,
    /// Some record changed.
    any: bool,
}

/// Fewest slots of the key table for which reading ahead pays: 2^17 slots point at up to 2^16
/// records of 64 bytes, 4 MiB, more than the second-level caches.
const READ_AHEAD_SLOTS: usize = 1 << 17;

/// Fewest changed records listed, whatever the number of open records.
const MIN_CHANGED_LISTED: usize = 1024;

impl Changed {
    /// Notes that `open` turned dirty.
    fn note(&mut self, open: OpenKey, open_records: usize) {
        self.any = true;
        if self.overflow {
            return;
        }
        if self.keys.len() >= (open_records / 8).max(MIN_CHANGED_LISTED) {
            self.overflow = true;
            self.keys = Vec::new();
        } else {
            self.keys.push(open);
        }
    }
}

fn customer_parts(customer: &Customer) -> (u8, Option<&String>) {
    match customer {
        Customer::AwsAccountId(id) => (0, Some(id)),
        Customer::Identifier(id) => (1, Some(id)),
        Customer::Caller => (2, None),
    }
}

fn scope_parts(scope: &Scope) -> (u8, &String) {
    match scope {
        Scope::ProductCode(code) => (0, code),
        Scope::LicenseArn(arn) => (1, arn),
    }
}

impl OpenHours {
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn has_changes(&self) -> bool {
        self.changed.any
    }

    /// `key` by numbers, if every part of it is open somewhere.
    fn find_key(&self, key: &RecordKey) -> Option<OpenKey> {
        self.key_of(&key.scope, &key.customer, &key.dimension, key.hour)
    }

    /// A record key, given by its parts, by numbers, if every part of it is open somewhere.
    fn key_of(&self, scope: &Scope, customer: &Customer, dimension: &str, hour: i64) -> Option<OpenKey> {
        let (scope_kind, scope) = scope_parts(scope);
        let (customer_kind, customer) = customer_parts(customer);
        Some(OpenKey {
            hour,
            scope: self.interned.scopes.get(scope)?,
            customer: match customer {
                Some(name) => match CustomerSlot::inline(name) {
                    Some(slot) => slot,
                    None => CustomerSlot::interned(self.interned.names.get(name)?),
                },
                None => CustomerSlot::CALLER,
            },
            dimension: self.interned.names.get(dimension)?,
            kinds: scope_kind | customer_kind << 1,
        })
    }

    /// A record key, given by its parts, by numbers and hashed, if every part of it is open
    /// somewhere: computed once per event, for reading ahead and for the lookup.
    pub fn prepare(
        &self,
        scope: &Scope,
        customer: &Customer,
        dimension: &str,
        hour: i64,
    ) -> Option<Prepared> {
        let open = self.key_of(scope, customer, dimension, hour)?;
        Some(Prepared { open, hash: self.buckets.hash(&open), closed: self.closed })
    }

    /// Reads ahead where the records of `keys` are, before they are looked up one by one
    /// ([`KeyTable::read_ahead`]); only while the table is larger than [`READ_AHEAD_SLOTS`],
    /// below which it is mostly in the caches and the pass would cost more than it saves.
    /// Returns how many records were found at the first slot of their probe.
    pub fn read_ahead(&self, keys: &[Option<Prepared>]) -> usize {
        if self.buckets.slots() < READ_AHEAD_SLOTS {
            return 0;
        }
        self.buckets.read_ahead(keys.iter().flatten().map(|p| (p.open, p.hash)))
    }

    /// The open record of `key`, if there is one.
    pub fn find(&self, key: &RecordKey) -> Option<Found> {
        let open = self.find_key(key)?;
        Some(Found { open, entry: self.buckets.position(&open)? })
    }

    /// [`OpenHours::find`], from `key` prepared before when that was for the same hour and no
    /// record has closed since (closing one may free the numbers of its parts).
    pub fn find_prepared(&self, key: &RecordKey, prepared: Option<Prepared>) -> Option<Found> {
        match prepared {
            Some(Prepared { open, hash, closed }) if open.hour == key.hour && closed == self.closed => {
                Some(Found { open, entry: self.buckets.position_hashed(&open, hash)? })
            }
            _ => self.find(key),
        }
    }

    pub fn bucket(&self, found: &Found) -> &Bucket {
        self.buckets.at(found.entry)
    }

    /// Whether `key`'s open record has an allocation for `tags`.
    pub fn has_tag_set(&self, bucket: &Bucket, tags: &TagSet) -> bool {
        self.interned
            .tags
            .get(tags)
            .is_some_and(|id| bucket.each_tag_set(&self.interned.lists).any(|(one, _)| one == id))
    }

    /// How many tag sets `bucket` has.
    pub fn tag_sets(&self, bucket: &Bucket) -> usize {
        match bucket.allocs {
            Allocs::One(..) => 1,
            Allocs::Many(at) => self.interned.lists.get(at).len(),
        }
    }

    /// Counts `quantity` of `tags` into `key`'s record (`found` by [`OpenHours::find`]), opening
    /// it if needed.
    pub fn add(&mut self, found: Option<Found>, key: &RecordKey, tags: &TagSet, quantity: u32) {
        let Found { open, entry } = match found {
            Some(found) => found,
            None => self.open(key),
        };
        let tag_id = self.interned.tags.get(tags);
        let open_records = self.buckets.len();
        let bucket = self.buckets.at_mut(entry);
        bucket.quantity += quantity;
        if !std::mem::replace(&mut bucket.dirty, true) {
            self.changed.note(open, open_records);
        }
        if let Some(id) = tag_id {
            let known = match &mut bucket.allocs {
                Allocs::One(one, q) => (*one == id).then_some(q),
                Allocs::Many(at) => {
                    self.interned.lists.get_mut(*at).iter_mut().find(|(one, _)| *one == id).map(|(_, q)| q)
                }
            };
            if let Some(q) = known {
                *q += quantity;
                return;
            }
        }
        let id = self.interned.tags.acquire(tags);
        let bucket = self.buckets.at_mut(entry);
        bucket.bytes += allocation_len(tags) as u32;
        match bucket.allocs {
            Allocs::One(u32::MAX, q) => bucket.allocs = Allocs::One(id, quantity + q),
            Allocs::One(first, q) => {
                bucket.allocs = Allocs::Many(self.interned.lists.push(vec![(first, q), (id, quantity)]));
            }
            Allocs::Many(at) => self.interned.lists.get_mut(at).push((id, quantity)),
        }
    }

    /// Opens an empty record for `key` (no tag set yet: `u32::MAX`).
    fn open(&mut self, key: &RecordKey) -> Found {
        let (scope_kind, scope) = scope_parts(&key.scope);
        let (customer_kind, customer) = customer_parts(&key.customer);
        let open = OpenKey {
            hour: key.hour,
            scope: self.interned.scopes.acquire(scope),
            customer: customer.map_or(CustomerSlot::CALLER, |name| {
                CustomerSlot::inline(name)
                    .unwrap_or_else(|| CustomerSlot::interned(self.interned.names.acquire(name)))
            }),
            dimension: self.interned.names.acquire(&key.dimension),
            kinds: scope_kind | customer_kind << 1,
        };
        let bucket = Bucket {
            quantity: 0,
            bytes: base_len(key) as u32,
            dirty: true,
            allocs: Allocs::One(u32::MAX, 0),
        };
        let entry = self.buckets.insert_new(open, bucket);
        self.changed.note(open, self.buckets.len());
        Found { open, entry }
    }

    /// The record key `open` stands for.
    pub fn record_key(&self, open: &OpenKey) -> RecordKey {
        let key = self.interned.key_ref(open);
        RecordKey {
            scope: match key.scope {
                ScopeRef::ProductCode(code) => Scope::ProductCode(code.into()),
                ScopeRef::LicenseArn(arn) => Scope::LicenseArn(arn.into()),
            },
            customer: match key.customer {
                CustomerRef::AwsAccountId(id) => Customer::AwsAccountId(id.into()),
                CustomerRef::Identifier(id) => Customer::Identifier(id.into()),
                CustomerRef::Caller => Customer::Caller,
            },
            dimension: key.dimension.into(),
            hour: key.hour,
        }
    }

    /// The record `open` holds so far, allocations sorted by tag set.
    pub(super) fn totals(&self, open: &OpenKey, bucket: &Bucket) -> SealedRecord {
        let mut allocations: Vec<Allocation> = bucket
            .each_tag_set(&self.interned.lists)
            .filter(|(id, _)| *id != u32::MAX)
            .map(|(id, quantity)| Allocation { tags: self.interned.tags.resolve(id).to_vec(), quantity })
            .collect();
        allocations.sort_by(|a, b| a.tags.cmp(&b.tags));
        SealedRecord { key: self.record_key(open), quantity: bucket.quantity, allocations }
    }

    /// The open keys `matches` picks.
    pub fn select(&self, matches: impl Fn(&OpenKey) -> bool) -> Vec<OpenKey> {
        self.buckets.iter().map(|(k, _)| *k).filter(matches).collect()
    }

    /// Closes `open`'s record and returns it.
    pub fn remove(&mut self, open: &OpenKey) -> Option<SealedRecord> {
        let bucket = self.buckets.get(open)?;
        let record = self.totals(open, bucket);
        let bucket = self.buckets.remove(open).expect("just found");
        self.closed += 1;
        for (id, _) in bucket.each_tag_set(&self.interned.lists).filter(|(id, _)| *id != u32::MAX) {
            self.interned.tags.release(id);
        }
        if let Allocs::Many(at) = bucket.allocs {
            self.interned.lists.free(at);
        }
        self.interned.scopes.release(open.scope);
        if let Some(id) = open.customer.interned_id() {
            self.interned.names.release(id);
        }
        self.interned.names.release(open.dimension);
        Some(record)
    }

    /// Hands every changed record (every record with `all`) to `sink`, and marks all clean.
    pub fn visit(&mut self, all: bool, mut sink: impl FnMut(&OpenTotals<'_>)) {
        let mut changed = std::mem::take(&mut self.changed);
        if all || changed.overflow {
            // One pass: each record is handed over and marked clean together.
            for (open, bucket) in self.buckets.iter_mut() {
                if all || bucket.dirty {
                    sink(&self.interned.totals_ref(open, bucket));
                }
                bucket.dirty = false;
            }
        } else {
            // A listed record may have been sealed since, or listed twice (sealed and opened
            // again): it is handed over if it is open and still dirty.
            for open in &changed.keys {
                if let Some(bucket) = self.buckets.get_mut(open)
                    && std::mem::replace(&mut bucket.dirty, false)
                {
                    sink(&self.interned.totals_ref(open, bucket));
                }
            }
        }
        // The list's allocation is kept for the next checkpoint.
        changed.keys.clear();
        self.changed.keys = changed.keys;
    }

    /// Sets a record to what a checkpoint saved (replacing what was open for its key).
    pub fn restore(&mut self, totals: &SealedRecord) {
        if let Some(found) = self.find(&totals.key) {
            self.remove(&found.open);
        }
        let found = self.open(&totals.key);
        for allocation in &totals.allocations {
            self.add(Some(found), &totals.key, &allocation.tags, allocation.quantity);
        }
        let bucket = self.buckets.at_mut(found.entry);
        bucket.quantity = totals.quantity;
        bucket.dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customers_inline_and_interned_are_found_encoded_and_freed() {
        let mut open = OpenHours::default();
        let key = |customer: &str| RecordKey {
            scope: Scope::ProductCode("prod-1".into()),
            customer: Customer::Identifier(customer.into()),
            dimension: "requests".into(),
            hour: 3600,
        };
        // 22 bytes fit in the key; 23 do not.
        let (short, long) = (key(&"s".repeat(22)), key(&"l".repeat(23)));
        for k in [&short, &long] {
            open.add(None, k, &Vec::new(), 1);
            open.add(open.find(k), k, &Vec::new(), 2);
        }
        assert_eq!(open.len(), 2);
        assert_eq!(open.interned.names.len(), 2, "the dimension and the long customer");
        let mut records = Vec::new();
        open.visit(false, |totals| {
            records
                .push(postcard::from_bytes::<SealedRecord>(&postcard::to_allocvec(totals).unwrap()).unwrap())
        });
        records.sort_by(|a, b| a.key.customer.cmp(&b.key.customer));
        assert_eq!(
            records.iter().map(|r| (&r.key, r.quantity)).collect::<Vec<_>>(),
            [(&long, 3), (&short, 3)]
        );
        for k in [&short, &long] {
            let found = open.find(k).expect("open");
            assert_eq!(open.remove(&found.open).map(|r| r.key), Some(k.clone()));
        }
        assert!(open.interned.names.len() == 0 && open.interned.scopes.len() == 0);
    }

    #[test]
    fn a_checkpoint_visits_what_changed_listed_or_by_reading_every_record() {
        let mut open = OpenHours::default();
        let key = |i: usize| RecordKey {
            scope: Scope::ProductCode("prod-1".into()),
            customer: Customer::AwsAccountId(format!("{:012}", i)),
            dimension: "requests".into(),
            hour: 3600,
        };
        let visited = |open: &mut OpenHours| {
            let mut seen = Vec::new();
            open.visit(false, |totals| seen.push(postcard::to_allocvec(totals).unwrap()));
            seen.len()
        };
        for i in 0..20_000 {
            open.add(None, &key(i), &Vec::new(), 1);
        }
        assert!(open.changed.overflow, "20,000 new records are more than the list takes");
        assert_eq!(visited(&mut open), 20_000);
        assert!(!open.has_changes());
        // Three changed, one of them twice, one sealed since: listed, and two handed over.
        for i in [7, 11, 7, 13] {
            open.add(open.find(&key(i)), &key(i), &Vec::new(), 1);
        }
        open.remove(&open.find(&key(13)).unwrap().open);
        assert_eq!((open.changed.keys.len(), open.changed.overflow), (3, false));
        assert_eq!(visited(&mut open), 2);
        assert_eq!(visited(&mut open), 0);
        // Changed, sealed and opened again: listed twice, handed over once.
        open.add(open.find(&key(17)), &key(17), &Vec::new(), 1);
        open.remove(&open.find(&key(17)).unwrap().open);
        open.add(None, &key(17), &Vec::new(), 4);
        assert_eq!(open.changed.keys, [open.find(&key(17)).unwrap().open; 2]);
        assert_eq!(visited(&mut open), 1);
        // More than an eighth of the records changed: the table is read through, and every
        // changed record is handed over exactly once.
        for i in 0..5_000 {
            open.add(open.find(&key(i)), &key(i), &Vec::new(), 1);
        }
        assert!(open.changed.overflow);
        assert_eq!(visited(&mut open), 5_000);
        assert_eq!(visited(&mut open), 0);
    }

    #[test]
    fn the_hand_written_encoding_is_postcards() {
        let mut open = OpenHours::default();
        let long = "c".repeat(200);
        let keys = [
            (Scope::ProductCode("prod-1".into()), Customer::AwsAccountId("123456789012".into()), 7200),
            (
                Scope::LicenseArn("arn:aws:license-manager::1:license:l-1".into()),
                Customer::Identifier(long),
                -3600,
            ),
            (Scope::ProductCode("p".repeat(300)), Customer::Caller, 1 << 40),
        ];
        let tag_sets =
            [Vec::new(), vec![("team".to_string(), "v".repeat(130))], vec![("a".into(), "b".into())]];
        for (n, (scope, customer, hour)) in keys.into_iter().enumerate() {
            let key = RecordKey { scope, customer, dimension: format!("dim{n}"), hour };
            for (m, tags) in tag_sets.iter().enumerate().take(n + 1) {
                open.add(open.find(&key), &key, tags, 1 + (m as u32) * 100_000 + (n as u32) * 100_000_000);
            }
        }
        let mut visited = 0;
        open.visit(true, |totals| {
            let mut by_hand = vec![0xff];
            totals.encode(&mut by_hand);
            assert_eq!(by_hand[1..], postcard::to_allocvec(totals).unwrap());
            visited += 1;
        });
        assert_eq!(visited, 3);
    }

    #[test]
    fn borrowed_totals_encode_as_the_sealed_record_and_interned_values_are_freed() {
        let mut open = OpenHours::default();
        let key = RecordKey {
            scope: Scope::LicenseArn("arn:aws:license-manager::1:license:l-1".into()),
            customer: Customer::AwsAccountId("123456789012".into()),
            dimension: "requests".into(),
            hour: 7200,
        };
        let team = vec![("team".to_string(), "a".to_string())];
        open.add(None, &key, &Vec::new(), 2);
        open.add(open.find(&key), &key, &team, 5);
        open.add(open.find(&key), &key, &team, 1);
        let mut encoded = Vec::new();
        open.visit(false, |totals| encoded.push(postcard::to_allocvec(totals).unwrap()));
        let record: SealedRecord = postcard::from_bytes(&encoded[0]).unwrap();
        assert_eq!(record.key, key);
        assert_eq!(record.quantity, 8);
        assert_eq!(
            record.allocations,
            [Allocation { tags: Vec::new(), quantity: 2 }, Allocation { tags: team.clone(), quantity: 6 }]
        );
        open.visit(false, |_| panic!("nothing changed since"));
        let mut restored = OpenHours::default();
        restored.restore(&record);
        let key_of = restored.select(|_| true)[0];
        assert_eq!(restored.remove(&key_of), Some(record));
        assert!(
            restored.interned.scopes.len() == 0
                && restored.interned.names.len() == 0
                && restored.interned.tags.len() == 0
        );
    }
}
