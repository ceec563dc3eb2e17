//! The open records' key table: open addressing with linear probing, each entry in its slot.
//!
//! At a million open records the table is far larger than the processor's caches, so finding a
//! record costs a memory miss, and the commit thread finds one per event. hashbrown (`std`'s map)
//! keeps its control bytes apart from its entries, so a lookup there misses twice, the second
//! waiting on the first; here a key's slot follows from its hash alone, and a lookup misses once.
//! At a million keys this took the commit thread's time for two million events from about 3.4 s
//! to about 2.7 s (docs/performance.md).
//!
//! | rule | why |
//! |---|---|
//! | at most half full; doubles when it would be fuller | a probe, even for a missing key, ends within a few slots |
//! | halves while under an eighth full | sealing an hour of a million records gives its memory back |
//! | removal shifts the entries after it back (no tombstones) | probes stay as short as the load allows |
//! | hashed with a random seed (per process and per table) | no client can choose customers that pile up in one run of slots |

use std::hash::{BuildHasher, Hash};

use foldhash::fast::RandomState;

/// A map from small `Copy` keys to values, with its entries in the slots. `A` aligns the slots:
/// [`CacheLine`] puts each slot of 64 bytes in a cache line of its own, so that a lookup reads one
/// line (slots of any other size, or not so aligned, straddle two lines every so often).
#[derive(Debug)]
pub struct KeyTable<K, V, S = RandomState, A = ()> {
    /// A power of two long, or empty.
    slots: Vec<Slot<K, V, A>>,
    len: usize,
    hasher: S,
}

/// A slot: an entry or none, aligned as `A` is.
#[derive(Debug)]
struct Slot<K, V, A> {
    entry: Option<(K, V)>,
    _align: [A; 0],
}

impl<K, V, A> Slot<K, V, A> {
    fn new(entry: Option<(K, V)>) -> Self {
        Self { entry, _align: [] }
    }
}

/// Aligns a [`KeyTable`]'s slots to cache lines (64 bytes).
#[derive(Debug)]
#[repr(align(64))]
pub struct CacheLine;

impl<K, V, S: Default, A> Default for KeyTable<K, V, S, A> {
    fn default() -> Self {
        Self { slots: Vec::new(), len: 0, hasher: S::default() }
    }
}

/// The fewest slots a table has once it holds anything.
const MIN_SLOTS: usize = 16;

impl<K: Copy + Eq + Hash, V, S: BuildHasher, A> KeyTable<K, V, S, A> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot `key`'s probe starts at (the table is not empty).
    fn home(&self, key: &K) -> usize {
        self.hasher.hash_one(key) as usize & self.mask()
    }

    /// The slot holding `key`: valid until the table next changes, to reach the entry again
    /// with [`KeyTable::at`] and [`KeyTable::at_mut`] without hashing and probing again.
    pub fn position(&self, key: &K) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut at = self.home(key);
        loop {
            match &self.slots[at].entry {
                None => return None,
                Some((held, _)) if held == key => return Some(at),
                Some(_) => at = (at + 1) & self.mask(),
            }
        }
    }

    /// How many slots the table has (twice its entries at most).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Reads the first slot of each of `keys`' probes, hashing them all first: in a table larger
    /// than the caches each read is a memory miss, and with nothing between them the processor
    /// has many in flight at once, where lookups one after another wait for each in turn. Returns
    /// how many of those slots hold an entry (so that the reads are used).
    pub fn read_ahead(&self, mut keys: impl Iterator<Item = K>) -> usize {
        if self.slots.is_empty() {
            return 0;
        }
        // In batches on the stack: more reads in flight than the processor keeps, no allocation.
        let mut homes = [0usize; 64];
        let mut held = 0;
        loop {
            let mut batch = 0;
            for (home, key) in homes.iter_mut().zip(keys.by_ref()) {
                *home = self.home(&key);
                batch += 1;
            }
            held += homes[..batch].iter().filter(|&&at| self.slots[at].entry.is_some()).count();
            if batch < homes.len() {
                return held;
            }
        }
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.position(key).is_some()
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        let at = self.position(key)?;
        self.slots[at].entry.as_ref().map(|(_, value)| value)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let at = self.position(key)?;
        self.slots[at].entry.as_mut().map(|(_, value)| value)
    }

    /// The value in slot `at`, from [`KeyTable::position`] or [`KeyTable::insert_new`].
    pub fn at(&self, at: usize) -> &V {
        &self.slots[at].entry.as_ref().expect("a slot with an entry").1
    }

    /// The value in slot `at`, from [`KeyTable::position`] or [`KeyTable::insert_new`].
    pub fn at_mut(&mut self, at: usize) -> &mut V {
        &mut self.slots[at].entry.as_mut().expect("a slot with an entry").1
    }

    /// Adds `key`, which is not in the table (one probe where [`KeyTable::insert`] takes two);
    /// returns its slot.
    pub fn insert_new(&mut self, key: K, value: V) -> usize {
        debug_assert!(self.position(&key).is_none(), "insert_new of a key already in the table");
        if (self.len + 1) * 2 > self.slots.len() {
            self.resize((self.slots.len() * 2).max(MIN_SLOTS));
        }
        self.len += 1;
        self.place(key, value)
    }

    /// Sets `key` to `value`; returns the value it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(at) = self.position(&key) {
            let (_, held) = self.slots[at].entry.as_mut().expect("found");
            return Some(std::mem::replace(held, value));
        }
        self.insert_new(key, value);
        None
    }

    /// Puts an entry that is not in the table into the first free slot of its probe; returns it.
    fn place(&mut self, key: K, value: V) -> usize {
        let mut at = self.home(&key);
        while self.slots[at].entry.is_some() {
            at = (at + 1) & self.mask();
        }
        self.slots[at].entry = Some((key, value));
        at
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let mut hole = self.position(key)?;
        let (_, value) = self.slots[hole].entry.take().expect("found");
        self.len -= 1;
        // Backward shift: an entry after the hole moves into it unless its probe starts after the
        // hole (then it would no longer be found from its start).
        let mut at = hole;
        loop {
            at = (at + 1) & self.mask();
            let Some((held, _)) = &self.slots[at].entry else { break };
            let home = self.home(held);
            if at.wrapping_sub(home) & self.mask() >= at.wrapping_sub(hole) & self.mask() {
                self.slots[hole].entry = self.slots[at].entry.take();
                hole = at;
            }
        }
        if self.len * 8 < self.slots.len() && self.slots.len() > MIN_SLOTS {
            self.resize((self.len * 4).next_power_of_two().max(MIN_SLOTS));
        }
        Some(value)
    }

    /// Moves every entry into a table of `slots` slots.
    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, (0..slots).map(|_| Slot::new(None)).collect());
        for (key, value) in old.into_iter().filter_map(|slot| slot.entry) {
            self.place(key, value);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots.iter().filter_map(|slot| slot.entry.as_ref()).map(|(key, value)| (key, value))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.slots.iter_mut().filter_map(|slot| slot.entry.as_mut()).map(|(key, value)| (&*key, value))
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
    fn cache_line_slots_each_take_one_line() {
        let mut table = KeyTable::<u64, [u64; 6], RandomState, CacheLine>::default();
        table.insert(1, [2; 6]);
        assert_eq!(std::mem::size_of::<Slot<u64, [u64; 6], CacheLine>>(), 64);
        assert_eq!(table.slots.as_ptr() as usize % 64, 0);
        assert_eq!(std::mem::size_of::<Slot<u64, u64, ()>>(), 24, "no padding without CacheLine");
    }

    #[test]
    fn reading_ahead_reads_each_keys_first_slot() {
        let mut table = KeyTable::<u64, u64, Itself>::default();
        assert_eq!(table.read_ahead([1, 2].into_iter()), 0, "no slots yet");
        for key in [3, 4, 5] {
            table.insert(key, key);
        }
        // 19 starts at slot 3 (19 & 15), which 3 holds; 7 and 8 start at empty slots.
        assert_eq!(table.read_ahead([3, 5, 19, 7, 8].into_iter()), 3);
        assert_eq!(table.read_ahead(std::iter::empty()), 0);
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
        let grown = table.slots.len();
        assert!(table.len() > 10_000 && grown >= 2 * table.len());
        // Remove all but 100 keys: the table halves its slots on the way down.
        for key in 100..20_000 {
            check(&mut table, false, key, 0);
        }
        assert!(
            table.slots.len() < grown / 8,
            "{} slots for {} keys after {grown}",
            table.slots.len(),
            table.len()
        );
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
        assert_eq!(table.slots.len(), 16);
        assert_eq!(table.slots[0].entry.as_ref().map(|(k, _)| *k), Some(30));
        // Removing 14: 15 must stay (its probe starts at 15), 30 must move back into slot 14.
        assert_eq!(table.remove(&14), Some(140));
        assert_eq!(table.slots[14].entry.as_ref().map(|(k, _)| *k), Some(30));
        assert_eq!(table.slots[15].entry.as_ref().map(|(k, _)| *k), Some(15));
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
        assert_eq!(table.slots.len(), 16);
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
