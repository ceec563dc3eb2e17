//! A blocked Bloom filter: every id sets [`PROBES`] bits inside one 512-bit block, so that a
//! lookup costs one memory miss. About 10 bits an id: some 1 % of ids a run does not hold read
//! the run on disk for nothing.

use super::hash::IdHash;

/// Bits the filter spends per id.
const BITS_PER_ID: usize = 10;

/// Bits set per id within its block (9 bits of the hash each).
const PROBES: u32 = 7;

/// One cache line.
type Block = [u64; 8];

#[derive(Debug, Clone)]
pub struct Filter {
    blocks: Vec<Block>,
    /// Width of the run's slot: the filter reads only the bits of the hash a run keeps.
    p: u8,
}

impl Filter {
    /// An empty filter for `ids` ids of a run with slot width `p`.
    pub fn new(ids: usize, p: u8) -> Self {
        Self { blocks: vec![[0; 8]; (ids * BITS_PER_ID).div_ceil(512).max(1)], p }
    }

    /// Which block: from the second word's top bits (independent of the probes).
    fn block(&self, hash: &IdHash) -> usize {
        ((u128::from(hash.filter_word(self.p)) * self.blocks.len() as u128) >> 64) as usize
    }

    /// The probes: from the low 63 bits of the first word.
    fn bits(hash: &IdHash) -> impl Iterator<Item = (usize, u64)> {
        let word = hash.0[0];
        (0..PROBES).map(move |probe| {
            let bit = (word >> (9 * probe)) & 511;
            ((bit >> 6) as usize, 1u64 << (bit & 63))
        })
    }

    pub fn insert(&mut self, hash: &IdHash) {
        let block = self.block(hash);
        let block = &mut self.blocks[block];
        for (word, mask) in Self::bits(hash) {
            block[word] |= mask;
        }
    }

    /// Whether `hash` may be in the run (never `false` for one that is).
    pub fn may_contain(&self, hash: &IdHash) -> bool {
        let block = &self.blocks[self.block(hash)];
        Self::bits(hash).all(|(word, mask)| block[word] & mask != 0)
    }

    /// Reads the block `hash` falls in.
    pub fn read_ahead(&self, hash: &IdHash) -> u64 {
        self.blocks[self.block(hash)][0]
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<Block>()
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
        let p = 12;
        let mut filter = Filter::new(50_000, p);
        // Inserted as a run knows them: only the top p bits of the second word.
        let known = |n| {
            let h = hash(n);
            IdHash([h.0[0], h.filter_word(p)])
        };
        (0..50_000).for_each(|n| filter.insert(&known(n)));
        assert!((0..50_000).all(|n| filter.may_contain(&hash(n))));
        let false_hits = (50_000..150_000).filter(|&n| filter.may_contain(&hash(n))).count();
        assert!(false_hits < 2_500, "{false_hits} of 100,000 unknown ids hit");
    }
}
