//! One archive block: its header and its compressed entries (the table in the parent module).

use serde::{Deserialize, Serialize};

use crate::aggregate::SealedRecord;
use crate::outbox::{RecordState, StoredRecord};

/// The format-version byte of every block.
pub const ARCHIVE_VERSION: u8 = 1;
/// Most records in one block: large enough that deflate finds the repeats (product codes,
/// dimensions, customers of the same hours), small enough to decode one block at a time.
pub const BLOCK_RECORDS: usize = 1024;
pub const HEADER_BYTES: usize = 48;
const MAGIC: &[u8; 4] = b"mrcp";
/// deflate level: 6 is zlib's default; higher levels gain little on these blocks.
const LEVEL: u8 = 6;
/// Most bytes a block's payload may inflate to: far above what [`BLOCK_RECORDS`] records take
/// (a record's request is at most 1 MB), so only damage reaches it.
const MAX_RAW_BYTES: usize = 64 << 20;

/// A block's header, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub seq: u64,
    pub min_hour: i64,
    pub max_hour: i64,
    pub accepted: u32,
    pub shipped: u32,
    pub payload_len: u32,
    pub crc: u32,
}

impl BlockHeader {
    fn bytes_without_crc(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..4].copy_from_slice(MAGIC);
        out[4] = ARCHIVE_VERSION;
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.min_hour.to_le_bytes());
        out[24..32].copy_from_slice(&self.max_hour.to_le_bytes());
        out[32..36].copy_from_slice(&self.accepted.to_le_bytes());
        out[36..40].copy_from_slice(&self.shipped.to_le_bytes());
        out[40..44].copy_from_slice(&self.payload_len.to_le_bytes());
        out
    }

    /// Reads a header; an error says why it is not one.
    pub fn parse(bytes: &[u8; HEADER_BYTES]) -> Result<BlockHeader, String> {
        if &bytes[0..4] != MAGIC {
            return Err("no block starts here (bad magic)".into());
        }
        if bytes[4] != ARCHIVE_VERSION {
            return Err(format!("block format version {}, this meterd reads {ARCHIVE_VERSION}", bytes[4]));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Ok(BlockHeader {
            seq: u64_at(8),
            min_hour: u64_at(16) as i64,
            max_hour: u64_at(24) as i64,
            accepted: u32_at(32),
            shipped: u32_at(36),
            payload_len: u32_at(40),
            crc: u32_at(44),
        })
    }

    /// Whether `payload` is this header's, unchanged.
    pub fn checks(&self, header: &[u8; HEADER_BYTES], payload: &[u8]) -> bool {
        crc32c::crc32c_append(crc32c::crc32c(&header[..44]), payload) == self.crc
    }
}

/// A MeteringRecordId: 16 bytes when it is a lowercase hyphenated UUID (as the service sends
/// them), its text otherwise; `Shipped` for a fleet partial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Receipt {
    Uuid([u8; 16]),
    Text(String),
    Shipped,
}

/// One archived record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    record: SealedRecord,
    /// `sealed_at` minus the hour.
    sealed_after: i64,
    /// The settle time minus `sealed_at`.
    settled_after: i64,
    receipt: Receipt,
}

impl Entry {
    fn new(stored: &StoredRecord) -> Entry {
        let (receipt, at) = match &stored.state {
            RecordState::Accepted { metering_record_id: id, at } => {
                let compact = uuid::Uuid::try_parse(id)
                    .ok()
                    .filter(|uuid| uuid.hyphenated().to_string() == *id)
                    .map_or_else(|| Receipt::Text(id.clone()), |uuid| Receipt::Uuid(uuid.into_bytes()));
                (compact, *at)
            }
            RecordState::Shipped { at } => (Receipt::Shipped, *at),
            RecordState::Pending | RecordState::DeadLetter { .. } => {
                unreachable!("only final records are archived")
            }
        };
        Entry {
            record: stored.record.clone(),
            sealed_after: stored.sealed_at - stored.record.key.hour,
            settled_after: at - stored.sealed_at,
            receipt,
        }
    }

    fn into_stored(self) -> StoredRecord {
        let sealed_at = self.record.key.hour + self.sealed_after;
        let at = sealed_at + self.settled_after;
        let state = match self.receipt {
            Receipt::Uuid(bytes) => RecordState::Accepted {
                metering_record_id: uuid::Uuid::from_bytes(bytes).hyphenated().to_string(),
                at,
            },
            Receipt::Text(metering_record_id) => RecordState::Accepted { metering_record_id, at },
            Receipt::Shipped => RecordState::Shipped { at },
        };
        StoredRecord { record: self.record, sealed_at, state, generation: 0 }
    }
}

/// Appends one block of move `seq` holding `records` (at most [`BLOCK_RECORDS`]) to `out`.
pub fn encode_block(seq: u64, records: &[&StoredRecord], out: &mut Vec<u8>) -> BlockHeader {
    assert!(
        !records.is_empty() && records.len() <= BLOCK_RECORDS,
        "a block holds 1..={BLOCK_RECORDS} records"
    );
    let entries: Vec<Entry> = records.iter().map(|stored| Entry::new(stored)).collect();
    let raw = postcard::to_allocvec(&entries).expect("postcard encodes every archived record");
    let payload = miniz_oxide::deflate::compress_to_vec(&raw, LEVEL);
    let hours = records.iter().map(|s| s.record.key.hour);
    let shipped = records.iter().filter(|s| matches!(s.state, RecordState::Shipped { .. })).count() as u32;
    let mut header = BlockHeader {
        seq,
        min_hour: hours.clone().min().expect("a block is not empty"),
        max_hour: hours.max().expect("a block is not empty"),
        accepted: records.len() as u32 - shipped,
        shipped,
        payload_len: u32::try_from(payload.len()).expect("a block's payload fits in u32"),
        crc: 0,
    };
    let mut bytes = header.bytes_without_crc();
    header.crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..44]), &payload);
    bytes[44..48].copy_from_slice(&header.crc.to_le_bytes());
    out.extend_from_slice(&bytes);
    out.extend_from_slice(&payload);
    header
}

/// The records of a block whose checksum held; an error says why they cannot be read.
pub fn decode_payload(header: &BlockHeader, payload: &[u8]) -> Result<Vec<StoredRecord>, String> {
    let raw = miniz_oxide::inflate::decompress_to_vec_with_limit(payload, MAX_RAW_BYTES)
        .map_err(|e| format!("its payload does not inflate ({e})"))?;
    let entries: Vec<Entry> =
        postcard::from_bytes(&raw).map_err(|e| format!("its records do not decode ({e})"))?;
    let expected = header.accepted as usize + header.shipped as usize;
    if entries.len() != expected {
        return Err(format!("it holds {} records, its header says {expected}", entries.len()));
    }
    Ok(entries.into_iter().map(Entry::into_stored).collect())
}
