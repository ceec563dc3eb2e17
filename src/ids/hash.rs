//! What an id is reduced to: a 128-bit hash of (peer, id) and 32 bits of its event's digest.

use sha2::{Digest, Sha256};

/// SHA-256 of the peer and the id, first 128 bits, as two words (`0` the more significant).
/// Stored on disk, so it must never change between releases. A cryptographic hash, because ids
/// come from clients: one client must not be able to make its id collide with another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct IdHash(pub [u64; 2]);

impl IdHash {
    pub fn of(peer: u32, id: &str) -> Self {
        let mut sha = Sha256::new();
        sha.update(b"meterd id\0");
        sha.update(peer.to_be_bytes());
        sha.update(id.as_bytes());
        let out = sha.finalize();
        let word = |range: std::ops::Range<usize>| {
            u64::from_be_bytes(out[range].try_into().expect("eight bytes of a 32-byte digest"))
        };
        IdHash([word(0..8), word(8..16)])
    }

    /// Slot `p` bits wide: the top `p` bits of the first word.
    pub fn slot(&self, p: u8) -> usize {
        if p == 0 { 0 } else { (self.0[0] >> (64 - u32::from(p))) as usize }
    }

    /// The 64 bits after the slot's `p`: what a run stores of the hash.
    pub fn remainder(&self, p: u8) -> u64 {
        if p == 0 { self.0[0] } else { (self.0[0] << p) | (self.0[1] >> (64 - u32::from(p))) }
    }

    /// The hash as far as a run of slot width `p` knows it (the top `64 + p` bits).
    pub fn from_parts(slot: usize, remainder: u64, p: u8) -> Self {
        if p == 0 {
            return IdHash([remainder, 0]);
        }
        let p = u32::from(p);
        IdHash([((slot as u64) << (64 - p)) | (remainder >> p), remainder << (64 - p)])
    }
}

/// The 32 bits of an event's 64-bit digest that are kept: enough to tell a different event under
/// a known id (`id_conflict`) from a resend in all but one case in four billion.
pub fn short_digest(digest: u64) -> u32 {
    (digest >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_stable_and_scoped_to_the_peer() {
        let hash = IdHash::of(1000, "3f1c2a4e-0000-4000-8000-000000000001");
        assert_eq!(hash, IdHash::of(1000, "3f1c2a4e-0000-4000-8000-000000000001"));
        assert_eq!(hash.0, [0x640c_becf_0367_b661, 0xd63d_f7ee_193e_0982], "stored hashes must never change");
        assert_ne!(hash, IdHash::of(1001, "3f1c2a4e-0000-4000-8000-000000000001"));
    }

    #[test]
    fn slot_and_remainder_give_back_the_top_bits() {
        let hash = IdHash([0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210]);
        for p in [0u8, 1, 4, 17, 24] {
            let back = IdHash::from_parts(hash.slot(p), hash.remainder(p), p);
            assert_eq!(back.0[0], hash.0[0], "p {p}");
            assert_eq!(back.0[1], if p == 0 { 0 } else { hash.0[1] & !(u64::MAX >> p) }, "p {p}");
        }
    }
}
