//! The open segment's log: what each checkpoint adds to it, appended as one block and synced
//! before the checkpoint is written. A block cut short by a crash (or damaged) ends the log: its
//! ids are in the event journal still, since the checkpoint that would have covered them was
//! never written.
//!
//! | offset | bytes | what |
//! |---|---|---|
//! | 0 | 8 | `MIDLOG`, format version [`LOG_VERSION`], 0 (once, at the start of the file) |
//! | block + 0 | 4 | entries, u32 LE |
//! | block + 4 | 16 | the segment's first and last acceptance times so far, i64 LE |
//! | block + 20 | 4 | CRC32C of the block's other bytes, u32 LE |
//! | block + 24 | 20 × entries | each: the hash's two words (u64 LE), the short digest (u32 LE) |

use super::hash::IdHash;
use super::segment::Entry;

pub const LOG_VERSION: u8 = 1;
pub const FILE_HEADER: [u8; 8] = [b'M', b'I', b'D', b'L', b'O', b'G', LOG_VERSION, 0];
const BLOCK_HEADER: usize = 24;
const ENTRY: usize = 20;

/// One block for `entries`.
pub fn encode(entries: &[Entry], first_at: i64, last_at: i64) -> Vec<u8> {
    let mut block = Vec::with_capacity(BLOCK_HEADER + ENTRY * entries.len());
    block.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    block.extend_from_slice(&first_at.to_le_bytes());
    block.extend_from_slice(&last_at.to_le_bytes());
    block.extend_from_slice(&[0; 4]);
    for entry in entries {
        block.extend_from_slice(&entry.hash.0[0].to_le_bytes());
        block.extend_from_slice(&entry.hash.0[1].to_le_bytes());
        block.extend_from_slice(&entry.digest.to_le_bytes());
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&block[..20]), &block[BLOCK_HEADER..]);
    block[20..24].copy_from_slice(&crc.to_le_bytes());
    block
}

/// What a log holds up to a torn last block.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    pub entries: Vec<Entry>,
    pub first_at: i64,
    pub last_at: i64,
    /// Bytes of whole blocks (with the file header): where the next block goes.
    pub valid: usize,
}

/// Reads a log file's bytes. A file cut before its header was written holds nothing. Each block
/// was synced before the next was written, so only the last can be torn: one that reaches the end
/// of the file. A bad block with more after it, or a file of another format, is damage: ids
/// whose events are gone from the journal would be lost, so it is an error.
pub fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    let empty = Decoded { first_at: i64::MAX, last_at: i64::MIN, ..Decoded::default() };
    match bytes.get(..FILE_HEADER.len()) {
        Some(header) if header == FILE_HEADER => {}
        None if FILE_HEADER.starts_with(bytes) || bytes.iter().all(|&b| b == 0) => return Ok(empty),
        Some(header) if header.iter().all(|&b| b == 0) && bytes.iter().all(|&b| b == 0) => return Ok(empty),
        _ => return Err("not an id log of this format".into()),
    }
    let mut out =
        Decoded { first_at: i64::MAX, last_at: i64::MIN, valid: FILE_HEADER.len(), ..Decoded::default() };
    let mut rest = &bytes[FILE_HEADER.len()..];
    while let Some(header) = rest.get(..BLOCK_HEADER) {
        let word = |at: usize| i64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let Some(body) = rest.get(BLOCK_HEADER..BLOCK_HEADER + count * ENTRY) else { break };
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header[..20]), body);
        if crc != u32::from_le_bytes(header[20..24].try_into().expect("4 bytes")) {
            if rest.len() > BLOCK_HEADER + body.len() {
                return Err(format!("a damaged block at offset {} with more after it", out.valid));
            }
            break;
        }
        out.entries.extend(body.chunks_exact(ENTRY).map(|e| Entry {
            hash: IdHash([
                u64::from_le_bytes(e[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(e[8..16].try_into().expect("8 bytes")),
            ]),
            digest: u32::from_le_bytes(e[16..20].try_into().expect("4 bytes")),
        }));
        out.first_at = out.first_at.min(word(4));
        out.last_at = out.last_at.max(word(12));
        out.valid += BLOCK_HEADER + body.len();
        rest = &rest[BLOCK_HEADER + body.len()..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> Entry {
        Entry { hash: IdHash([n, !n]), digest: n as u32 }
    }

    #[test]
    fn blocks_read_back_and_a_torn_or_damaged_tail_ends_the_log() {
        let mut file = FILE_HEADER.to_vec();
        file.extend(encode(&[entry(1), entry(2)], 100, 150));
        let whole = file.len();
        file.extend(encode(&[entry(3)], 90, 200));
        let decoded = decode(&file).unwrap();
        assert_eq!(decoded.entries, vec![entry(1), entry(2), entry(3)]);
        assert_eq!((decoded.first_at, decoded.last_at, decoded.valid), (90, 200, file.len()));
        for cut in whole..file.len() {
            let decoded = decode(&file[..cut]).unwrap();
            assert_eq!((decoded.entries.len(), decoded.valid), (2, whole), "cut at {cut}");
        }
        let mut torn = file.clone();
        *torn.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&torn).unwrap().valid, whole, "a bad last block is a torn write");
        let mut damaged = file.clone();
        damaged[FILE_HEADER.len() + 30] ^= 1;
        assert_eq!(
            decode(&damaged),
            Err(format!("a damaged block at offset {} with more after it", FILE_HEADER.len()))
        );
        assert_eq!(decode(&file[..5]).unwrap().entries, vec![], "cut before its header was written");
        assert_eq!(decode(&[0; 8]).unwrap().entries, vec![]);
        assert_eq!(decode(b"MIDLOG\x09\x00"), Err("not an id log of this format".into()));
    }
}
