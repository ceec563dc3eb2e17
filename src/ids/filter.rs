//! Blocked Bloom filters, one per run, all of one geometry, kept side by side: every id sets
//! [`PROBES`] bits inside one 512-bit block chosen by its hash, and block `b` of every run sits
//! next to block `b` of the others ([`Filters`]). A lookup tests one block (one cache line) per
//! run, and those lines are contiguous, so their misses overlap and the hardware's prefetcher
//! follows them: scattered filters cost each id a miss per run, one after another, and ingest
//! slowed as ids accumulated. The commit thread also reads them ahead of the lookup.
//!
//! Every filter has [`BLOCKS`] blocks, about 10 bits for each id of a full segment (some 1 % of
//! the ids a run does not hold pass its filter); a smaller run's filter is as large.

use super::hash::IdHash;
use super::segment::SEGMENT_IDS;

/// Blocks of one run's filter: 10 bits for each id of a full segment.
pub const BLOCKS: usize = SEGMENT_IDS * 10 / 512;

/// Bits set per id within its block (9 bits of the hash each).
const PROBES: u32 = 5;

/// One cache line, aligned as one: a lookup's block costs one memory miss, not two.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Block([u64; 8]);

/// The block an id falls in: from the first word's top bits (the probes use its low bits).
fn block(hash: &IdHash) -> usize {
    (((hash.0[0] >> 48) * BLOCKS as u64) >> 16) as usize
}

fn bits(hash: &IdHash) -> impl Iterator<Item = (usize, u64)> {
    let word = hash.0[0];
    (0..PROBES).map(move |probe| {
        let bit = (word >> (9 * probe)) & 511;
        ((bit >> 6) as usize, 1u64 << (bit & 63))
    })
}

fn holds(block: &Block, hash: &IdHash) -> bool {
    bits(hash).all(|(word, mask)| block.0[word] & mask != 0)
}

/// One run's filter, while it is built.
#[derive(Debug, Clone)]
pub struct Filter {
    blocks: Vec<Block>,
}

impl Default for Filter {
    fn default() -> Self {
        Self { blocks: vec![Block([0; 8]); BLOCKS] }
    }
}

impl Filter {
    pub fn insert(&mut self, hash: &IdHash) {
        let block = &mut self.blocks[block(hash)];
        for (word, mask) in bits(hash) {
            block.0[word] |= mask;
        }
    }

    /// Whether `hash` may be in the run (never `false` for one that is).
    pub fn may_contain(&self, hash: &IdHash) -> bool {
        holds(&self.blocks[block(hash)], hash)
    }
}

/// The filters of every run, block by block: block `b` of run `r` is at `b * runs + r`.
#[derive(Debug, Default)]
pub struct Filters {
    blocks: Vec<Block>,
    runs: usize,
}

impl Filters {
    /// The filters of the runs `keep` marks (in order), then `added`'s.
    pub fn rebuild(&self, keep: &[bool], added: &[Filter]) -> Filters {
        debug_assert_eq!(keep.len(), self.runs);
        let runs = keep.iter().filter(|&&k| k).count() + added.len();
        let mut blocks = Vec::with_capacity(BLOCKS * runs);
        for b in 0..BLOCKS {
            let old = &self.blocks[b * self.runs..(b + 1) * self.runs];
            blocks.extend(old.iter().zip(keep).filter(|(_, k)| **k).map(|(block, _)| *block));
            blocks.extend(added.iter().map(|filter| filter.blocks[b]));
        }
        Filters { blocks, runs }
    }

    /// The runs (by position) whose filter `hash` passes.
    pub fn candidates<'a>(&'a self, hash: &'a IdHash) -> impl DoubleEndedIterator<Item = usize> + 'a {
        let start = block(hash) * self.runs;
        let group = self.blocks.get(start..start + self.runs).unwrap_or_default();
        group.iter().enumerate().filter(|(_, block)| holds(block, hash)).map(|(run, _)| run)
    }

    /// Reads the blocks `hash` falls in (a word of each: each block is a cache line of its
    /// own): returns a sum of what it read.
    pub fn read_ahead(&self, hash: &IdHash) -> u64 {
        let start = block(hash) * self.runs;
        let group = self.blocks.get(start..start + self.runs).unwrap_or_default();
        group.iter().fold(0, |sum, block| sum.wrapping_add(block.0[0]))
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.blocks.capacity() * std::mem::size_of::<Block>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u64) -> IdHash {
        IdHash::of(7, &n.to_string())
    }

    #[test]
    fn every_inserted_id_is_found_and_few_others_are() {
        let mut filter = Filter::default();
        (0..SEGMENT_IDS as u64).for_each(|n| filter.insert(&hash(n)));
        assert!((0..SEGMENT_IDS as u64).all(|n| filter.may_contain(&hash(n))));
        let unknown = SEGMENT_IDS as u64..SEGMENT_IDS as u64 + 100_000;
        let false_hits = unknown.filter(|&n| filter.may_contain(&hash(n))).count();
        assert!(false_hits < 2_500, "{false_hits} of 100,000 unknown ids hit a full run's filter");
    }

    #[test]
    fn side_by_side_filters_name_the_runs_that_may_hold_an_id() {
        let filter = |ids: std::ops::Range<u64>| {
            let mut filter = Filter::default();
            ids.for_each(|n| filter.insert(&hash(n)));
            filter
        };
        let all = Filters::default().rebuild(&[], &[filter(0..100), filter(100..200), filter(200..300)]);
        let found = |filters: &Filters, n| filters.candidates(&hash(n)).collect::<Vec<_>>();
        assert_eq!(found(&all, 5), [0]);
        assert_eq!(found(&all, 150), [1]);
        assert_eq!(found(&all, 250), [2]);
        // The middle run dropped, one added: positions follow.
        let next = all.rebuild(&[true, false, true], &[filter(300..400)]);
        assert_eq!(
            (found(&next, 5), found(&next, 150), found(&next, 250), found(&next, 350)),
            (vec![0], vec![], vec![1], vec![2])
        );
        assert_eq!(next.bytes(), 3 * BLOCKS * 64);
    }
}
