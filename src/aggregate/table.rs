//! The open records' key table: the entries in blocks, in the order they came, and an index over
//! them, open addressing with linear probing.
//!
//! At a million open records the entries are far larger than the processor's caches, so finding
//! a record costs a memory miss, and the commit thread finds one per event. An index slot is 8
//! bytes, 32 bits of the key's hash and the entry's number: the index of a million records (16
//! MiB) stays mostly in the shared cache, the hash bits spare reading other keys' entries on the
//! way, and a lookup misses once, on its entry. Entries never move as the table grows: doubling
//! rewrites the index alone, from the hash bits in it, into fresh zeroed memory. (With the
//! entries in the slots, doubling moved every entry and wrote every new slot: a quarter of the
//! aggregation's time while a million records opened; docs/performance.md.)
//!
//! | rule | why |
//! |---|---|
//! | index at most half full; doubles when it would be fuller | a probe, even for a missing key, ends within a few slots |
//! | index halves while under an eighth full | sealing an hour of a million records gives its memory back |
//! | removal shifts the index slots after it back (no tombstones) | probes stay as short as the load allows |
//! | the last entry moves into a removed one's place | entries stay dense: reading them all reads nothing else |
//! | entries in blocks of 1,024 that never move; an emptied block is freed | growing copies no entry |
//! | hashed with a random seed (per process and per table) | no client can choose customers that pile up in one run of slots |

use std::hash::{BuildHasher, Hash};

use foldhash::fast::RandomState;

/// A map from small `Copy` keys to values. `A` aligns the entries: with [`CacheLine`], an entry
/// of 64 bytes takes one cache line (any other size, or not so aligned, straddles two lines every
/// so often).
#[derive(Debug)]
pub struct KeyTable<K, V, S = RandomState, A = ()> {
    /// Per slot: 0 if empty, else the key's hash bits (high half) and its entry's number + 1
    /// (low half). A power of two long, or empty.
    index: Vec<u64>,
    /// Entry `n` is `blocks[n / BLOCK][n % BLOCK]`; every block but the last is full.
    blocks: Vec<Vec<Entry<K, V, A>>>,
    len: usize,
    hasher: S,
}

#[derive(Debug)]
struct Entry<K, V, A> {
    key: K,
    value: V,
    _align: [A; 0],
}

/// Aligns a [`KeyTable`]'s entries to cache lines (64 bytes).
#[derive(Debug)]
#[repr(align(64))]
pub struct CacheLine;

/// Entries per block.
const BLOCK: usize = 1024;

/// The fewest index slots a table has once it holds anything.
const MIN_SLOTS: usize = 16;

impl<K, V, S: Default, A> Default for KeyTable<K, V, S, A> {
    fn default() -> Self {
        Self { index: Vec::new(), blocks: Vec::new(), len: 0, hasher: S::default() }
    }
}

/// An index slot for an entry.
fn slot(hash: u32, entry: usize) -> u64 {
    u64::from(hash) << 32 | u64::from(u32::try_from(entry + 1).expect("fewer than 4 billion entries"))
}

/// The hash bits of an index slot.
fn slot_hash(slot: u64) -> u32 {
    (slot >> 32) as u32
}

/// The entry number of an index slot that is not empty.
fn slot_entry(slot: u64) -> usize {
    (slot as u32 - 1) as usize
}

impl<K: Copy + Eq + Hash, V, S: BuildHasher, A> KeyTable<K, V, S, A> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn mask(&self) -> usize {
        self.index.len() - 1
    }

    /// The hash bits the index keeps; a key's probe starts at them, masked.
    pub fn hash(&self, key: &K) -> u32 {
        self.hasher.hash_one(key) as u32
    }

    fn entry(&self, n: usize) -> &Entry<K, V, A> {
        &self.blocks[n / BLOCK][n % BLOCK]
    }

    fn entry_mut(&mut self, n: usize) -> &mut Entry<K, V, A> {
        &mut self.blocks[n / BLOCK][n % BLOCK]
    }

    /// The index slot of `key` (whose hash bits are `hash`), and its entry's number.
    fn find(&self, key: &K, hash: u32) -> Option<(usize, usize)> {
        if self.index.is_empty() {
            return None;
        }
        let mut at = hash as usize & self.mask();
        loop {
            match self.index[at] {
                0 => return None,
                held if slot_hash(held) == hash && self.entry(slot_entry(held)).key == *key => {
                    return Some((at, slot_entry(held)));
                }
                _ => at = (at + 1) & self.mask(),
            }
        }
    }

    /// The number of `key`'s entry: valid until an entry is removed, to reach it again with
    /// [`KeyTable::at`] and [`KeyTable::at_mut`] without hashing and probing again.
    pub fn position(&self, key: &K) -> Option<usize> {
        self.find(key, self.hash(key)).map(|(_, n)| n)
    }

    /// [`KeyTable::position`] with the key's [`KeyTable::hash`] computed before.
    pub fn position_hashed(&self, key: &K, hash: u32) -> Option<usize> {
        debug_assert_eq!(hash, self.hash(key), "the hash of another key");
        self.find(key, hash).map(|(_, n)| n)
    }

    /// How many index slots the table has (twice its entries at most).
    pub fn slots(&self) -> usize {
        self.index.len()
    }

    /// Reads the first index slot of each of `keys`' probes (each with its [`KeyTable::hash`]),
    /// then the entries those slots point to: in a table larger than the caches each read is a
    /// memory miss, and with nothing between them the processor has many in flight at once,
    /// where lookups one after another wait for each in turn. Returns how many keys were found
    /// at the first slot of their probe (so that the reads are used).
    pub fn read_ahead(&self, mut keys: impl Iterator<Item = (K, u32)>) -> usize {
        if self.index.is_empty() {
            return 0;
        }
        // In batches on the stack: more reads in flight than the processor keeps, no allocation.
        let mut batch: [Option<(K, u32)>; 64] = [None; 64];
        let mut entries: [Option<(K, usize)>; 64] = [None; 64];
        let mut found = 0;
        loop {
            let mut len = 0;
            for (hashed, key) in batch.iter_mut().zip(keys.by_ref()) {
                *hashed = Some(key);
                len += 1;
            }
            let mut candidates = 0;
            for &(key, hash) in batch[..len].iter().flatten() {
                let held = self.index[hash as usize & self.mask()];
                if held != 0 && slot_hash(held) == hash {
                    entries[candidates] = Some((key, slot_entry(held)));
                    candidates += 1;
                }
            }
            found +=
                entries[..candidates].iter().flatten().filter(|(key, n)| self.entry(*n).key == *key).count();
            if len < batch.len() {
                return found;
            }
        }
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.position(key).is_some()
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.position(key).map(|n| &self.entry(n).value)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.position(key).map(|n| &mut self.entry_mut(n).value)
    }

    /// The value of entry `n`, from [`KeyTable::position`] or [`KeyTable::insert_new`].
    pub fn at(&self, n: usize) -> &V {
        &self.entry(n).value
    }

    /// The value of entry `n`, from [`KeyTable::position`] or [`KeyTable::insert_new`].
    pub fn at_mut(&mut self, n: usize) -> &mut V {
        &mut self.entry_mut(n).value
    }

    /// Adds `key`, which is not in the table (one probe where [`KeyTable::insert`] takes two);
    /// returns its entry's number.
    pub fn insert_new(&mut self, key: K, value: V) -> usize {
        debug_assert!(self.position(&key).is_none(), "insert_new of a key already in the table");
        if (self.len + 1) * 2 > self.index.len() {
            self.resize((self.index.len() * 2).max(MIN_SLOTS));
        }
        let n = self.len;
        if n / BLOCK == self.blocks.len() {
            self.blocks.push(Vec::with_capacity(BLOCK));
        }
        self.blocks[n / BLOCK].push(Entry { key, value, _align: [] });
        self.len += 1;
        let hash = self.hash(&key);
        self.place(slot(hash, n));
        n
    }

    /// Sets `key` to `value`; returns the value it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.position(&key) {
            Some(n) => Some(std::mem::replace(&mut self.entry_mut(n).value, value)),
            None => {
                self.insert_new(key, value);
                None
            }
        }
    }

    /// Puts an index slot into the first free slot of its probe.
    fn place(&mut self, held: u64) {
        let mut at = slot_hash(held) as usize & self.mask();
        while self.index[at] != 0 {
            at = (at + 1) & self.mask();
        }
        self.index[at] = held;
    }

    /// Removes `key`; returns its value. The last entry takes its number.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (mut hole, n) = self.find(key, self.hash(key))?;
        // Backward shift: a slot after the hole moves into it unless its probe starts after the
        // hole (then it would no longer be found from its start).
        self.index[hole] = 0;
        let mut at = hole;
        loop {
            at = (at + 1) & self.mask();
            let held = self.index[at];
            if held == 0 {
                break;
            }
            let home = slot_hash(held) as usize & self.mask();
            if at.wrapping_sub(home) & self.mask() >= at.wrapping_sub(hole) & self.mask() {
                self.index[hole] = held;
                self.index[at] = 0;
                hole = at;
            }
        }
        let last = self.blocks.last_mut().expect("an entry").pop().expect("an entry");
        if self.blocks.last().is_some_and(Vec::is_empty) {
            self.blocks.pop();
        }
        self.len -= 1;
        let removed = if n == self.len {
            last
        } else {
            // The last entry (number `len` now) takes number `n`: its index slot follows.
            let hash = self.hash(&last.key);
            let mut at = hash as usize & self.mask();
            while self.index[at] != slot(hash, self.len) {
                at = (at + 1) & self.mask();
            }
            self.index[at] = slot(hash, n);
            std::mem::replace(self.entry_mut(n), last)
        };
        if self.len * 8 < self.index.len() && self.index.len() > MIN_SLOTS {
            self.resize((self.len * 4).next_power_of_two().max(MIN_SLOTS));
        }
        Some(removed.value)
    }

    /// Rewrites the index with `slots` slots, from the hash bits in it (zeroed memory: the
    /// kernel's fresh pages, written only where a slot goes).
    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.index, vec![0; slots]);
        for held in old.into_iter().filter(|&held| held != 0) {
            self.place(held);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.blocks.iter().flatten().map(|entry| (&entry.key, &entry.value))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.blocks.iter_mut().flatten().map(|entry| (&entry.key, &mut entry.value))
    }

    /// The index slot `key`'s probe found it in.
    #[cfg(test)]
    fn index_slot(&self, key: &K) -> Option<usize> {
        self.find(key, self.hash(key)).map(|(at, _)| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends every key to slot 14 of 16, so that the keys form one run that wraps past the end.
    #[derive(Debug, Default)]
    struct Collide;

    impl BuildHasher for Collide {
        type Hasher = Fourteen;
        fn build_hasher(&self) -> Fourteen {
            Fourteen
        }
    }

    struct Fourteen;

    impl std::hash::Hasher for Fourteen {
        fn finish(&self) -> u64 {
            14
        }
        fn write(&mut self, _: &[u8]) {}
    }

    /// Hashes a `u64` key to itself, so that a test chooses each key's first slot.
    #[derive(Debug, Default)]
    struct Itself;

    impl BuildHasher for Itself {
        type Hasher = Value;
        fn build_hasher(&self) -> Value {
            Value(0)
        }
    }

    struct Value(u64);

    impl std::hash::Hasher for Value {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, _: &[u8]) {
            unreachable!("u64 keys only")
        }
        fn write_u64(&mut self, value: u64) {
            self.0 = value;
        }
    }

    #[test]
    fn cache_line_entries_each_take_one_line() {
        let mut table = KeyTable::<u64, [u64; 7], RandomState, CacheLine>::default();
        table.insert(1, [2; 7]);
        assert_eq!(std::mem::size_of::<Entry<u64, [u64; 7], CacheLine>>(), 64);
        assert_eq!(table.blocks[0].as_ptr() as usize % 64, 0);
        assert_eq!(std::mem::size_of::<Entry<u64, u64, ()>>(), 16, "no padding without CacheLine");
    }

    #[test]
    fn reading_ahead_reads_each_keys_first_slot() {
        let mut table = KeyTable::<u64, u64, Itself>::default();
        let hashed = |keys: &[u64]| keys.iter().map(|&k| (k, k as u32)).collect::<Vec<_>>();
        assert_eq!(table.read_ahead(hashed(&[1, 2]).into_iter()), 0, "no slots yet");
        for key in [3, 4, 5] {
            table.insert(key, key);
        }
        // 3 and 5 are at the first slot of their probes; 19 would start at slot 3 (19 & 15),
        // which 3 holds; 7 and 8 start at empty slots.
        assert_eq!(table.read_ahead(hashed(&[3, 5, 19, 7, 8]).into_iter()), 2);
        table.insert(19, 19);
        assert_eq!(table.read_ahead(hashed(&[19]).into_iter()), 0, "in the probe, past its first slot");
        assert_eq!(table.read_ahead(std::iter::empty()), 0);
        // More keys than a batch.
        assert_eq!(table.read_ahead((0..200).map(|n| (3 + n % 3, (3 + n % 3) as u32))), 200);
        assert_eq!(table.position_hashed(&19, 19), table.position(&19));
        assert_eq!(table.slots(), 16);
    }

    #[test]
    fn matches_a_std_map_through_growth_removals_and_shrinking() {
        let mut table = KeyTable::<u64, u64>::default();
        let mut model = std::collections::HashMap::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut check = |table: &mut KeyTable<u64, u64>, insert: bool, key: u64, value: u64| {
            if insert {
                assert_eq!(table.insert(key, value), model.insert(key, value), "insert {key}");
            } else {
                assert_eq!(table.remove(&key), model.remove(&key), "remove {key}");
            }
            assert_eq!(table.len(), model.len());
        };
        // Grow with inserts, replacements and removals among 20,000 keys.
        for step in 0..100_000 {
            let (op, key) = (next(), next() % 20_000);
            check(&mut table, !op.is_multiple_of(3), key, step);
        }
        let grown = table.index.len();
        assert!(table.len() > 10_000 && grown >= 2 * table.len());
        // Remove all but 100 keys: the table halves its slots on the way down.
        for key in 100..20_000 {
            check(&mut table, false, key, 0);
        }
        assert!(
            table.index.len() < grown / 8,
            "{} slots for {} keys after {grown}",
            table.index.len(),
            table.len()
        );
        assert_eq!(table.blocks.len(), 1, "emptied blocks are freed");
        // And a busy small table after that.
        for step in 0..50_000 {
            let (op, key) = (next(), next() % 300);
            check(&mut table, !op.is_multiple_of(3), key, step);
        }
        for key in 0..20_000 {
            assert_eq!(table.get(&key), model.get(&key), "{key}");
        }
        let mut all: Vec<_> = table.iter().map(|(k, v)| (*k, *v)).collect();
        all.sort();
        let mut expected: Vec<_> = model.into_iter().collect();
        expected.sort();
        assert_eq!(all, expected);
    }

    #[test]
    fn removal_leaves_an_entry_whose_probe_starts_after_the_hole() {
        let mut table = KeyTable::<u64, u64, Itself>::default();
        // In 16 slots: 14 in slot 14, 15 in slot 15, 30 (first slot 14) wrapped into slot 0.
        for key in [14, 15, 30] {
            table.insert(key, key * 10);
        }
        assert_eq!(table.index.len(), 16);
        assert_eq!(table.index_slot(&30), Some(0));
        // Removing 14: 15 must stay (its probe starts at 15), 30 must move back into slot 14.
        assert_eq!(table.remove(&14), Some(140));
        assert_eq!(table.index_slot(&30), Some(14));
        assert_eq!(table.index_slot(&15), Some(15));
        assert_eq!((table.get(&15), table.get(&30), table.get(&14)), (Some(&150), Some(&300), None));
    }

    #[test]
    fn removal_keeps_every_key_of_a_wrapped_run_findable() {
        let mut table = KeyTable::<u64, u64, Collide>::default();
        // Eight keys fill slots 14, 15, 0, 1, …, 5; removed in an order unrelated to their slots,
        // each time every key left is still found.
        for key in 0..8 {
            table.insert(key, key * 10);
        }
        assert_eq!(table.index.len(), 16);
        let order = [3, 0, 7, 5, 1];
        for (n, key) in order.iter().enumerate() {
            assert_eq!(table.remove(key), Some(key * 10));
            assert_eq!(table.remove(key), None);
            for other in 0..8 {
                let gone = order[..=n].contains(&other);
                assert_eq!(table.get(&other).copied(), (!gone).then_some(other * 10), "after removing {key}");
            }
        }
        assert_eq!(table.len(), 3);
    }
}
