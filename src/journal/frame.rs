//! Byte layout of segments and records (see the tables in the parent module).

use super::FORMAT_VERSION;

/// The first bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"meterdJ\0";
/// Bytes before the first record of a segment.
pub const SEGMENT_HEADER: usize = 32;
/// Bytes before a record's payload.
pub const RECORD_HEADER: usize = 32;
/// Records start at multiples of this.
pub const ALIGN: usize = 8;
/// Largest payload of one record; a group commit larger than this is cut into several records
/// with the same sequence.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// The header of segment `index` of `size` bytes.
pub fn segment_header(index: u64, size: u64) -> [u8; SEGMENT_HEADER] {
    let mut header = [0u8; SEGMENT_HEADER];
    header[..8].copy_from_slice(&MAGIC);
    header[8] = FORMAT_VERSION;
    header[12..20].copy_from_slice(&index.to_le_bytes());
    header[20..28].copy_from_slice(&size.to_le_bytes());
    let crc = crc32c::crc32c(&header[..28]);
    header[28..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The index a segment header names, if it is one this meterd wrote.
pub fn parse_segment_header(bytes: &[u8]) -> Result<u64, String> {
    let header = bytes.get(..SEGMENT_HEADER).ok_or("shorter than a segment header")?;
    if header[..8] != MAGIC {
        return Err("not a meterd journal segment (bad magic)".into());
    }
    if header[8] != FORMAT_VERSION {
        return Err(format!("journal format version {}, this meterd reads {FORMAT_VERSION}", header[8]));
    }
    let crc = u32::from_le_bytes(header[28..].try_into().expect("4 bytes"));
    if crc32c::crc32c(&header[..28]) != crc {
        return Err("segment header checksum mismatch".into());
    }
    Ok(u64::from_le_bytes(header[12..20].try_into().expect("8 bytes")))
}

/// Bytes a record with `payload` bytes takes, padding included.
pub fn record_len(payload: usize) -> usize {
    (RECORD_HEADER + payload).next_multiple_of(ALIGN)
}

/// Appends one record to `out`: header, payload, zero padding.
pub fn push_record(out: &mut Vec<u8>, seq: u64, synced: u64, more: bool, payload: &[u8]) {
    let start = out.len();
    let len = u32::try_from(payload.len()).expect("a payload is at most MAX_PAYLOAD");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(FORMAT_VERSION);
    out.push(u8::from(more));
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&synced.to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(start + record_len(payload.len()), 0);
    let end = start + RECORD_HEADER + payload.len();
    let crc = record_crc(&out[start..end]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// CRC32C of a record's length, the rest of its header and its payload (everything but the
/// checksum field itself).
fn record_crc(record: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&record[..4]), &record[8..])
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub seq: u64,
    /// The highest sequence known durable when this record was written.
    pub synced: u64,
    /// More records of the same group commit follow.
    pub more: bool,
    pub payload: &'a [u8],
}

/// What the bytes at a record position hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Record(Record<'a>),
    /// A zero header: the end of what was written (segments are zero-filled ahead of use).
    End,
    /// Anything else: a torn or damaged record.
    Bad(&'static str),
}

/// Reads the record at the start of `bytes`.
pub fn read_record(bytes: &[u8]) -> Frame<'_> {
    let Some(header) = bytes.get(..RECORD_HEADER) else {
        return if bytes.iter().all(|&b| b == 0) {
            Frame::End
        } else {
            Frame::Bad("a record header cut short")
        };
    };
    if header.iter().all(|&b| b == 0) {
        return Frame::End;
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Frame::Bad("a record length beyond the largest record");
    }
    let Some(record) = bytes.get(..RECORD_HEADER + len) else {
        return Frame::Bad("a record that runs past the end of its segment");
    };
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if record_crc(record) != crc {
        return Frame::Bad("a record checksum mismatch");
    }
    let padding = bytes.get(RECORD_HEADER + len..record_len(len)).unwrap_or_default();
    if padding.iter().any(|&b| b != 0) {
        return Frame::Bad("a record with non-zero padding");
    }
    if header[8] != FORMAT_VERSION || header[9] > 1 || header[10..16].iter().any(|&b| b != 0) {
        return Frame::Bad("a record of an unknown format version");
    }
    Frame::Record(Record {
        seq: u64::from_le_bytes(header[16..24].try_into().expect("8 bytes")),
        synced: u64::from_le_bytes(header[24..32].try_into().expect("8 bytes")),
        more: header[9] == 1,
        payload: &record[RECORD_HEADER..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_any_flipped_bit_is_caught() {
        let mut bytes = Vec::new();
        push_record(&mut bytes, 7, 6, false, b"hello");
        assert_eq!(bytes.len(), 40);
        assert_eq!(
            read_record(&bytes),
            Frame::Record(Record { seq: 7, synced: 6, more: false, payload: b"hello" })
        );
        for bit in 0..(RECORD_HEADER + 5) * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(matches!(read_record(&flipped), Frame::Bad(_)), "bit {bit}");
        }
        assert_eq!(read_record(&[0; 64]), Frame::End);
        assert_eq!(read_record(&[0; 7]), Frame::End);
    }

    #[test]
    fn segment_headers_name_their_index() {
        let header = segment_header(42, 1 << 20);
        assert_eq!(parse_segment_header(&header), Ok(42));
        let mut bad = header;
        bad[13] ^= 1;
        assert!(parse_segment_header(&bad).is_err());
    }
}
