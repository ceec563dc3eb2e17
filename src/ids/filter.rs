//! Blocked Bloom filters, one per run, all of one geometry: every id sets [`PROBES`] bits inside
//! one 512-bit block chosen by its hash. A run's filter is built as such ([`Filter`]); once the run
//! is written, it joins the others bit by bit ([`Filters`]): for each block and bit position, one
//! bit per run, side by side. A lookup reads its [`PROBES`] positions (a few bytes each, a cache
//! line each at most) and ANDs them into the set of runs it may be in. Run by run, each run's block
//! was a cache line of its own: a line per run for every id, and ingest slowed as runs
//! accumulated. The commit thread also reads the positions ahead of the lookup.
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

/// Bit positions in a block.
const POSITIONS: usize = 512;

/// The filters of every run, bit by bit: for each block and each of its 512 bit positions, one
/// bit per run (`stride` bytes, run `r` in bit `r % 8` of byte `r / 8`). A lookup reads the
/// [`PROBES`] positions its hash names, a few bytes each, and ANDs them: the runs whose filter
/// it passes, in at most [`PROBES`] cache lines however many runs there are (side by side, run
/// by run, it was one line a run: twenty at ten million ids, and more than a hundred at a busy
/// seller's day). Memory is the same: a run's 64 bytes of each block, in eight runs' bytes.
#[derive(Debug, Default)]
pub struct Filters {
    bits: Vec<u8>,
    runs: usize,
    /// Bytes a position takes: `runs` bits, rounded up.
    stride: usize,
}

/// The positions an id's probes test within its block.
fn positions(hash: &IdHash) -> [usize; PROBES as usize] {
    let word = hash.0[0];
    std::array::from_fn(|probe| ((word >> (9 * probe)) & 511) as usize)
}

/// Up to 8 bytes of a position, little-endian: the runs `8 * at..` of it, as bits.
fn word(bytes: &[u8], at: usize) -> u64 {
    let part = &bytes[(8 * at).min(bytes.len())..(8 * at + 8).min(bytes.len())];
    let mut full = [0u8; 8];
    full[..part.len()].copy_from_slice(part);
    u64::from_le_bytes(full)
}

impl Filters {
    /// The filters of the runs `keep` marks (in order), then `added`'s. Adding runs within the
    /// bytes a position already has sets their bits in place; anything else is a new layout.
    pub fn rebuild(mut self, keep: &[bool], added: &[Filter]) -> Filters {
        debug_assert_eq!(keep.len(), self.runs);
        let kept = keep.iter().filter(|&&k| k).count();
        let runs = kept + added.len();
        let stride = runs.div_ceil(8);
        if kept == self.runs && stride == self.stride {
            self.set(added, kept);
            self.runs = runs;
            return self;
        }
        let mut next = Filters { bits: vec![0; BLOCKS * POSITIONS * stride], runs, stride };
        // Runs expire oldest first: the kept ones are most often all but a first few.
        let dropped = keep.iter().take_while(|&&k| !k).count();
        let in_order = keep[dropped..].iter().all(|&k| k);
        let kept_runs: Vec<usize> = (0..keep.len()).filter(|&r| keep[r]).collect();
        let slots = self.bits.chunks_exact(self.stride.max(1)).zip(next.bits.chunks_exact_mut(stride.max(1)));
        for (old, new) in slots {
            if in_order && dropped == 0 {
                let n = old.len().min(new.len());
                new[..n].copy_from_slice(&old[..n]);
            } else if in_order {
                // Shifted down by the dropped runs.
                let (bytes, bits) = (dropped / 8, dropped % 8);
                for (i, out) in new.iter_mut().enumerate() {
                    let low = old.get(i + bytes).copied().unwrap_or(0) as u16;
                    let high = old.get(i + bytes + 1).copied().unwrap_or(0) as u16;
                    *out = (((high << 8) | low) >> bits) as u8;
                }
            } else {
                for (to, &from) in kept_runs.iter().enumerate() {
                    if old[from / 8] & (1 << (from % 8)) != 0 {
                        new[to / 8] |= 1 << (to % 8);
                    }
                }
            }
        }
        next.set(added, kept);
        next
    }

    /// Sets the bits of `added`, runs `first..` of this layout.
    fn set(&mut self, added: &[Filter], first: usize) {
        for (n, filter) in added.iter().enumerate() {
            let (byte, bit) = ((first + n) / 8, 1u8 << ((first + n) % 8));
            for (b, block) in filter.blocks.iter().enumerate() {
                for (w, &word) in block.0.iter().enumerate() {
                    let mut rest = word;
                    while rest != 0 {
                        let position = w * 64 + rest.trailing_zeros() as usize;
                        rest &= rest - 1;
                        self.bits[(b * POSITIONS + position) * self.stride + byte] |= bit;
                    }
                }
            }
        }
    }

    /// The runs (by position) whose filter `hash` passes, newest (highest) first.
    pub fn candidates_newest_first<'a>(&'a self, hash: &'a IdHash) -> impl Iterator<Item = usize> + 'a {
        let base = block(hash) * POSITIONS;
        let probes = positions(hash).map(|p| (base + p) * self.stride);
        let probed = move |at: usize| -> u64 {
            let stride = self.stride;
            probes.iter().fold(u64::MAX, |all, &start| all & word(&self.bits[start..start + stride], at))
        };
        (0..self.stride.div_ceil(8)).rev().flat_map(move |at| {
            let mut passed = if self.runs == 0 { 0 } else { probed(at) };
            std::iter::from_fn(move || {
                (passed != 0).then(|| {
                    let top = 63 - passed.leading_zeros() as usize;
                    passed &= !(1 << top);
                    64 * at + top
                })
            })
        })
    }

    /// Reads the bytes `hash`'s probes fall on (a cache line each at most): returns a sum of
    /// what it read.
    pub fn read_ahead(&self, hash: &IdHash) -> u64 {
        if self.runs == 0 {
            return 0;
        }
        let base = block(hash) * POSITIONS;
        positions(hash).iter().fold(0, |sum, p| sum.wrapping_add(self.bits[(base + p) * self.stride] as u64))
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bits.capacity()
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
        let found = |filters: &Filters, n| filters.candidates_newest_first(&hash(n)).collect::<Vec<_>>();
        assert_eq!(found(&all, 5), [0]);
        assert_eq!(found(&all, 150), [1]);
        assert_eq!(found(&all, 250), [2]);
        // The middle run dropped, one added: positions follow.
        let next = all.rebuild(&[true, false, true], &[filter(300..400)]);
        assert_eq!(
            (found(&next, 5), found(&next, 150), found(&next, 250), found(&next, 350)),
            (vec![0], vec![], vec![1], vec![2])
        );
        assert_eq!(next.bytes(), BLOCKS * 512, "three runs' bits in one byte a position");
    }

    #[test]
    fn runs_past_a_word_are_added_in_place_or_laid_out_again_and_expire_in_order_or_not() {
        let filter = |run: u64| {
            let mut filter = Filter::default();
            (run * 100..run * 100 + 100).for_each(|n| filter.insert(&hash(n)));
            filter
        };
        // Seventy runs: sixty laid out, two more in place (within a position's eight bytes), then
        // eight more past them, laid out again.
        let runs = |range: std::ops::Range<u64>| range.map(filter).collect::<Vec<_>>();
        let filters = Filters::default().rebuild(&[], &runs(0..60));
        let filters = filters.rebuild(&[true; 60], &runs(60..62));
        assert_eq!(filters.bytes(), BLOCKS * 512 * 8);
        let filters = filters.rebuild(&[true; 62], &runs(62..70));
        let found = |filters: &Filters, n: u64| filters.candidates_newest_first(&hash(n)).collect::<Vec<_>>();
        for run in 0..70u64 {
            assert_eq!(found(&filters, run * 100 + 42), [run as usize], "run {run}");
        }
        assert_eq!(filters.bytes(), BLOCKS * 512 * 9);
        // The eleven oldest expire: the rest move down by eleven.
        let keep: Vec<bool> = (0..70).map(|r| r >= 11).collect();
        let filters = filters.rebuild(&keep, &[filter(70)]);
        assert_eq!(found(&filters, 5 * 100 + 7), Vec::<usize>::new());
        for run in 11..=70u64 {
            assert_eq!(found(&filters, run * 100 + 7), [run as usize - 11], "run {run}");
        }
        // Runs dropped out of order.
        let keep: Vec<bool> = (0..60).map(|r| r % 3 != 1).collect();
        let filters = filters.rebuild(&keep, &[]);
        let kept: Vec<u64> = (11..=70u64).filter(|run| (run - 11) % 3 != 1).collect();
        for (position, run) in kept.iter().enumerate() {
            assert_eq!(found(&filters, run * 100 + 99), [position], "run {run}");
        }
        // Two runs holding one id: the newest first.
        let both = Filters::default().rebuild(&[], &[filter(1), filter(1)]);
        assert_eq!(found(&both, 150), [1, 0]);
    }
}
