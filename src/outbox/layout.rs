//! Byte layout of the outbox's keys (see the table in the parent module).

use crate::aggregate::IdKey;
use crate::model::RecordKey;

/// The first byte of every value but log chunks.
pub const FORMAT_VERSION: u8 = 1;

/// The first byte of a log chunk: 2 since events carry their id's peer and digest.
pub const LOG_FORMAT_VERSION: u8 = 2;

/// sled segment size. sled writes any page larger than a quarter of it to an unsynced blob file.
pub const SEGMENT_SIZE: usize = 8 * 1024 * 1024;

/// sled's page cache, instead of sled's default of 1 GiB. Open hours are not in sled (they have
/// their own files), so sled holds only sealed records, ids and the checkpoint.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Largest value meterd writes to sled (0.1.0's log chunks were this size). A leaf holds at most
/// 17 values before sled splits it, so even a leaf full of them (17 × 64 KiB) stays below the
/// 2 MiB blob threshold.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

pub const META: &[u8] = b"mcheckpoint";
/// This outbox's instance id (fleet partial ids), made when first asked for.
pub const INSTANCE: &[u8] = b"minstance";
/// The receipts archive's mark: the last committed move and each day file's committed length.
pub const ARCHIVED: &[u8] = b"marchived";
pub const LOG: u8 = b'l';
pub const OPEN: u8 = b'o';
pub const ID: u8 = b'i';
pub const SCOPED_ID: u8 = b'j';
pub const RECORD: u8 = b'r';
/// Largest open-hours checkpoint chunk (`open_files.rs`): a million open records are about a
/// thousand chunks, each decoded alone on replay.
pub const MAX_OPEN_CHUNK_BYTES: usize = 64 * 1024;

pub fn log_key(seq: u64, chunk: u16) -> [u8; 11] {
    let mut key = [0u8; 11];
    key[0] = LOG;
    key[1..9].copy_from_slice(&seq.to_be_bytes());
    key[9..].copy_from_slice(&chunk.to_be_bytes());
    key
}

/// The sequence of a log key; `None` for a key of the wrong length.
pub fn log_seq(key: &[u8]) -> Option<u64> {
    let seq: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    (key.len() == 11 && key[0] == LOG).then(|| u64::from_be_bytes(seq))
}

/// `j` + peer + id for a scoped id, `i` + id for a legacy one.
pub fn id_key(id: &IdKey) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.id.len() + 5);
    match id.peer {
        Some(peer) => {
            key.push(SCOPED_ID);
            key.extend_from_slice(&peer.to_be_bytes());
        }
        None => key.push(ID),
    }
    key.extend_from_slice(id.id.as_bytes());
    key
}

/// The id a `j` key names; `None` for a key too short to name a peer.
pub fn parse_scoped_id_key(key: &[u8]) -> Option<IdKey> {
    let peer: [u8; 4] = key.get(1..5)?.try_into().ok()?;
    let id = String::from_utf8_lossy(&key[5..]).into_owned();
    (key[0] == SCOPED_ID).then(|| IdKey { peer: Some(u32::from_be_bytes(peer)), id })
}

/// Oldest hour first, so a scan meets records in deadline order.
pub fn record_key(key: &RecordKey) -> Vec<u8> {
    let mut out = vec![RECORD];
    out.extend_from_slice(&(key.hour as u64).to_be_bytes());
    postcard::to_extend(key, out).expect("a record key always encodes")
}

/// The `r` key of a record's `generation` (see `StoredRecord::generation`): generation 0 is
/// [`record_key`] itself, a later one adds the generation as a u32be suffix. A postcard record
/// key is self-delimiting, so the suffix can never be read as part of another key, and a key's
/// generations sort together.
pub fn generation_key(key: &RecordKey, generation: u32) -> Vec<u8> {
    let mut out = record_key(key);
    if generation > 0 {
        out.extend_from_slice(&generation.to_be_bytes());
    }
    out
}

/// The generation an `r` key names; `None` for a key that is not [`generation_key`]'s.
pub fn key_generation(key: &[u8]) -> Option<u32> {
    let encoded = key.get(9..).filter(|_| key[0] == RECORD)?;
    let (_, rest) = postcard::take_from_bytes::<RecordKey>(encoded).ok()?;
    match rest.len() {
        0 => Some(0),
        4 => Some(u32::from_be_bytes(rest.try_into().ok()?)).filter(|g| *g > 0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_sequence_then_chunk() {
        let keys = [log_key(1, 0), log_key(1, 1), log_key(2, 0), log_key(256, 0)];
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(log_seq(&log_key(258, 3)), Some(258));
        assert_eq!(log_seq(b"l123"), None);
    }

    #[test]
    fn a_records_generations_follow_its_key_and_read_back() {
        use crate::model::{Customer, Scope};
        let key = |customer: &str| RecordKey {
            scope: Scope::ProductCode("p".into()),
            customer: Customer::AwsAccountId(customer.into()),
            dimension: "d".into(),
            hour: 7200,
        };
        assert_eq!(generation_key(&key("1"), 0), record_key(&key("1")));
        let keys = [generation_key(&key("1"), 0), generation_key(&key("1"), 1), generation_key(&key("1"), 2)];
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert!(keys.iter().all(|k| k.starts_with(&record_key(&key("1")))));
        assert!(!generation_key(&key("2"), 0).starts_with(&record_key(&key("1"))));
        for (generation, k) in keys.iter().enumerate() {
            assert_eq!(key_generation(k), Some(generation as u32));
        }
        let mut torn = record_key(&key("1"));
        torn.push(1);
        assert_eq!(key_generation(&torn), None);
        assert_eq!(key_generation(&record_key(&key("1"))[..5]), None);
    }
}
