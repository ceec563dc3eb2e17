//! Reading day files: their names, the walk over block headers below a committed length, and the
//! checked read of every block.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::block::{BlockHeader, HEADER_BYTES, decode_payload};
use super::{ArchiveError, DayStats, io_err, parse_name};
use crate::outbox::StoredRecord;

/// The day files in `dir`, by day; other names (a `….damaged` file) are left alone.
pub fn day_files(dir: &Path) -> Result<Vec<(i64, PathBuf)>, ArchiveError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(day) = entry.file_name().to_str().and_then(parse_name) {
            out.push((day, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn damaged(path: &Path, offset: u64, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Damaged { path: path.to_path_buf(), offset, reason: reason.into() }
}

/// Reads the block header at `offset`, which must lie with its payload below `end`.
fn header_at(
    path: &Path,
    reader: &mut impl Read,
    offset: u64,
    end: u64,
) -> Result<([u8; HEADER_BYTES], BlockHeader), ArchiveError> {
    if end - offset < HEADER_BYTES as u64 {
        return Err(damaged(
            path,
            offset,
            format!("a block header is cut short by the committed length {end}"),
        ));
    }
    let mut bytes = [0u8; HEADER_BYTES];
    reader
        .read_exact(&mut bytes)
        .map_err(|e| damaged(path, offset, format!("unreadable block header ({e})")))?;
    let header = BlockHeader::parse(&bytes).map_err(|reason| damaged(path, offset, reason))?;
    let block_end = offset + HEADER_BYTES as u64 + u64::from(header.payload_len);
    if block_end > end {
        return Err(damaged(
            path,
            offset,
            format!("block {} runs to byte {block_end}, past the committed length {end}", header.seq),
        ));
    }
    Ok((bytes, header))
}

/// Opens a day file and checks that it holds its committed length; `None` when it is gone.
fn open_committed(path: &Path, end: u64) -> Result<Option<File>, ArchiveError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ArchiveError::Io { path: path.to_path_buf(), source }),
    };
    let len = file.metadata().map_err(io_err(path))?.len();
    if len < end {
        return Err(damaged(path, len, format!("the file ends before its committed length {end}")));
    }
    Ok(Some(file))
}

/// What a day file holds below `end`, from its headers alone (the payloads are checked when
/// read); `None` when the file is gone (it expired).
pub fn count(path: &Path, end: u64) -> Result<Option<DayStats>, ArchiveError> {
    let Some(file) = open_committed(path, end)? else { return Ok(None) };
    let mut reader = BufReader::new(file);
    let mut stats = DayStats { bytes: end, ..DayStats::default() };
    let mut offset = 0;
    while offset < end {
        let (_, header) = header_at(path, &mut reader, offset, end)?;
        reader
            .seek_relative(i64::from(header.payload_len))
            .map_err(|e| damaged(path, offset, format!("unreadable block ({e})")))?;
        stats.accepted += u64::from(header.accepted);
        stats.shipped += u64::from(header.shipped);
        offset += HEADER_BYTES as u64 + u64::from(header.payload_len);
    }
    Ok(Some(stats))
}

/// The daemon's open of one day file: cuts off anything past `end` (a move sled never committed,
/// or a torn write) and counts what is below it.
pub fn recover(path: &Path, end: u64) -> Result<DayStats, ArchiveError> {
    let file = std::fs::OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if len > end {
        tracing::warn!(
            path = %path.display(),
            bytes = len - end,
            "cutting off receipts archive bytes that were never committed (an interrupted move)"
        );
        file.set_len(end).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
    }
    Ok(count(path, end)?.unwrap_or_default())
}

/// Reads every block below `end`, checking each, and calls `visit` with the records whose hour is
/// in `hours`; blocks whose hours lie outside are checked but not decoded.
pub fn visit_file(
    path: &Path,
    end: u64,
    hours: &std::ops::Range<i64>,
    visit: &mut dyn FnMut(StoredRecord),
) -> Result<(), ArchiveError> {
    let Some(file) = open_committed(path, end)? else { return Ok(()) };
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut offset = 0;
    let mut payload = Vec::new();
    while offset < end {
        let (bytes, header) = header_at(path, &mut reader, offset, end)?;
        payload.resize(header.payload_len as usize, 0);
        reader
            .read_exact(&mut payload)
            .map_err(|e| damaged(path, offset, format!("unreadable block {} ({e})", header.seq)))?;
        if !header.checks(&bytes, &payload) {
            return Err(damaged(path, offset, format!("block {} fails its checksum", header.seq)));
        }
        if header.min_hour < hours.end && hours.start <= header.max_hour {
            let records = decode_payload(&header, &payload)
                .map_err(|reason| damaged(path, offset, format!("block {}: {reason}", header.seq)))?;
            records.into_iter().filter(|s| hours.contains(&s.record.key.hour)).for_each(&mut *visit);
        }
        offset += HEADER_BYTES as u64 + u64::from(header.payload_len);
    }
    Ok(())
}
