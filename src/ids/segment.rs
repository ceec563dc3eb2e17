//! A segment: the ids remembered in one stretch of time, in memory, in the order they came, with
//! an open-addressing index over them. The open segment takes new ids; a full one (or one whose
//! UTC hour has passed) is frozen and written as a run.

use super::hash::IdHash;

/// Most ids in one segment: about 16 MiB with its index.
pub const SEGMENT_IDS: usize = 1 << 19;

/// Index slots: twice the ids, so probes stay short.
const SLOTS: usize = 2 * SEGMENT_IDS;

/// An index slot holds its entry's number + 1 in its low [`NUMBER_BITS`] bits and 12 more bits
/// of the hash above them, so that a probe touches an entry (a memory miss of its own) only when
/// those bits agree: a new id, nearly every id, is answered from the index's cache line alone.
const NUMBER_BITS: u32 = 20;
const _: () = assert!(SEGMENT_IDS < 1 << NUMBER_BITS);

/// One remembered id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub hash: IdHash,
    /// [`super::short_digest`] of its event.
    pub digest: u32,
}

#[derive(Debug)]
pub struct Segment {
    /// Its number: its log file's and, once written, its run's.
    pub number: u64,
    entries: Vec<Entry>,
    /// Entry number + 1 and the hash's tag per slot ([`NUMBER_BITS`]); 0 is empty. Made with
    /// the first id.
    index: Vec<u32>,
    /// When the first and the last of its ids were accepted.
    pub first_at: i64,
    pub last_at: i64,
    /// How many entries its log already holds.
    pub logged: usize,
}

impl Segment {
    pub fn new(number: u64) -> Self {
        Self {
            number,
            entries: Vec::new(),
            index: Vec::new(),
            first_at: i64::MAX,
            last_at: i64::MIN,
            logged: 0,
        }
    }

    fn slot(hash: &IdHash) -> usize {
        hash.0[1] as usize & (SLOTS - 1)
    }

    /// The bits of `hash` its index slot keeps (the slot number uses the same word's low bits).
    fn tag(hash: &IdHash) -> u32 {
        ((hash.0[1] >> 52) as u32) << NUMBER_BITS
    }

    /// The digest remembered for `hash`, if it is here.
    pub fn get(&self, hash: &IdHash) -> Option<u32> {
        if self.index.is_empty() {
            return None;
        }
        let (mut slot, tag) = (Self::slot(hash), Self::tag(hash));
        loop {
            match self.index[slot] {
                0 => return None,
                n if n & !((1 << NUMBER_BITS) - 1) == tag => {
                    let entry = &self.entries[(n & ((1 << NUMBER_BITS) - 1)) as usize - 1];
                    if entry.hash == *hash {
                        return Some(entry.digest);
                    }
                }
                _ => {}
            }
            slot = (slot + 1) & (SLOTS - 1);
        }
    }

    /// Reads the index slot `hash` starts at.
    pub fn read_ahead(&self, hash: &IdHash) -> u64 {
        self.index.get(Self::slot(hash)).map_or(0, |&n| u64::from(n))
    }

    /// Adds an id that [`Segment::get`] did not find, accepted at `at`.
    pub fn insert(&mut self, entry: Entry, at: i64) {
        assert!(self.entries.len() < SEGMENT_IDS, "a full segment is frozen before it takes more");
        if self.index.is_empty() {
            // Both at full size at once: untouched pages take no memory, and the entries are
            // never moved as they grow.
            self.index = vec![0; SLOTS];
            self.entries.reserve_exact(SEGMENT_IDS);
        }
        let mut slot = Self::slot(&entry.hash);
        while self.index[slot] != 0 {
            slot = (slot + 1) & (SLOTS - 1);
        }
        self.entries.push(entry);
        self.index[slot] = Self::tag(&entry.hash) | self.entries.len() as u32;
        self.first_at = self.first_at.min(at);
        self.last_at = self.last_at.max(at);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.entries.len() >= SEGMENT_IDS
    }

    /// Every entry, in the order they came.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Entries its log does not hold yet.
    pub fn unlogged(&self) -> &[Entry] {
        &self.entries[self.logged..]
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>() + self.index.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_with_their_digest_and_the_times_span_them() {
        let mut segment = Segment::new(3);
        assert_eq!(segment.get(&IdHash([1, 2])), None);
        // The same slot (second word) for two hashes: probing finds both.
        segment.insert(Entry { hash: IdHash([1, 2]), digest: 10 }, 500);
        segment.insert(Entry { hash: IdHash([9, 2]), digest: 11 }, 400);
        assert_eq!(segment.get(&IdHash([1, 2])), Some(10));
        assert_eq!(segment.get(&IdHash([9, 2])), Some(11));
        assert_eq!(segment.get(&IdHash([5, 2])), None);
        // The same slot with other tag bits: passed over without its entry, then found once added.
        let tagged = IdHash([1, 2 | (7 << 52)]);
        assert_eq!(segment.get(&tagged), None);
        segment.insert(Entry { hash: tagged, digest: 12 }, 450);
        assert_eq!((segment.get(&tagged), segment.get(&IdHash([1, 2]))), (Some(12), Some(10)));
        assert_eq!((segment.first_at, segment.last_at, segment.len()), (400, 500, 3));
        segment.logged = 2;
        assert_eq!(segment.unlogged(), &[Entry { hash: tagged, digest: 12 }]);
    }
}
