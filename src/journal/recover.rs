//! Reading a journal back after a restart: the rules of the table in the parent module.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::JournalError;
use super::frame::{self, Frame, SEGMENT_HEADER};

/// A segment file found on open.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub index: u64,
    pub path: PathBuf,
    /// Sequence of its last complete group; `None` for a segment with none.
    pub last_seq: Option<u64>,
    /// Highest sequence of any record in it, its group complete here or not: a segment can go
    /// only once a checkpoint holds this group (a group larger than what was left of a segment
    /// starts in one segment and ends in the next).
    pub highest_seq: Option<u64>,
    /// Where its next record would go.
    pub end: u64,
}

/// What a journal holds, checked: its segments, and where the groups after the checkpoint are.
/// Payloads are not kept: a restart reads them again, one window at a time ([`super::Replay`]).
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub segments: Vec<Segment>,
    /// The last complete group's sequence.
    pub last_seq: Option<u64>,
    /// The first record of a group after the checkpoint, when there is one.
    pub replay_from: Option<Cut>,
}

/// A position in the journal: segment (its position in the list) and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cut {
    pub segment: usize,
    pub offset: u64,
}

/// The first point where the journal stops being a clean sequence of complete groups.
#[derive(Debug)]
struct Damage {
    cut: Cut,
    reason: String,
}

/// The segment files of `dir`, by index; unfinished spares (`*.tmp`) are removed unless
/// `read_only`.
fn list(dir: &Path, read_only: bool) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if let Some(index) = name.strip_suffix(".seg").and_then(|hex| u64::from_str_radix(hex, 16).ok()) {
            segments.push((index, path));
        } else if name.ends_with(".tmp") && !read_only {
            std::fs::remove_file(&path)?;
        }
    }
    segments.sort();
    Ok(segments)
}

fn read_all(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads a segment front to back through a window that holds at least one whole record from
/// where it is asked for: a restart holds one window, never a whole segment (a segment is 64 MiB
/// by default, most of it zeros ahead of use).
pub(super) struct SegmentReader {
    file: File,
    len: u64,
    window: Vec<u8>,
    /// File offset of `window[0]`.
    base: u64,
}

/// What a window holds past the offset asked for, when the file has it: the largest record and
/// its padding.
const WINDOW: usize = frame::RECORD_HEADER + frame::MAX_PAYLOAD + frame::ALIGN;

impl SegmentReader {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self { file, len, window: Vec::new(), base: 0 })
    }

    /// The file's bytes from `offset` on: all of them, or at least [`WINDOW`].
    pub fn at(&mut self, offset: u64) -> std::io::Result<&[u8]> {
        let offset = offset.min(self.len);
        let want = (self.len - offset).min(WINDOW as u64) as usize;
        let held = (self.base + self.window.len() as u64).saturating_sub(offset) as usize;
        if offset < self.base || held < want {
            // Slide to `offset` and read twice the window ahead, so that records are read in
            // large pieces.
            let read = (self.len - offset).min(2 * WINDOW as u64) as usize;
            self.window.resize(read, 0);
            self.file.read_exact_at(&mut self.window, offset)?;
            self.base = offset;
        }
        Ok(&self.window[(offset - self.base) as usize..])
    }
}

/// State of the walk through the records.
struct Walk {
    floor: u64,
    /// The last complete group's sequence.
    last: Option<u64>,
    /// A group whose later records are still to come: its sequence and first record.
    open: Option<(u64, Cut)>,
    /// The first record of the first complete group after `floor`.
    replay_from: Option<Cut>,
}

impl Walk {
    /// Takes one record at `at`; `Err` when it does not continue the sequence.
    fn take(&mut self, record: &frame::Record<'_>, more: bool, at: Cut) -> Result<(), String> {
        let expected = match &self.open {
            Some((seq, _)) => Some(*seq),
            None => self.last.map(|seq| seq + 1),
        };
        if expected.is_some_and(|seq| seq != record.seq) {
            return Err(format!("sequence {} where {} was due", record.seq, expected.unwrap_or(0)));
        }
        let (seq, first) = *self.open.get_or_insert((record.seq, at));
        if !more {
            self.open = None;
            self.last = Some(seq);
            if seq > self.floor && self.replay_from.is_none() {
                self.replay_from = Some(first);
            }
        }
        Ok(())
    }
}

/// Reads every segment of `dir`, checks it, and (unless `read_only`) cuts a torn tail off.
/// `floor` is the sequence the outbox's checkpoint already holds.
pub(super) fn scan(dir: &Path, floor: u64, read_only: bool) -> Result<Scan, JournalError> {
    let io = |source| JournalError::Io { path: dir.to_path_buf(), source };
    let files = list(dir, read_only).map_err(io)?;
    let mut walk = Walk { floor, last: None, open: None, replay_from: None };
    let mut segments = Vec::with_capacity(files.len());
    let mut damage = None;
    for (position, (index, path)) in files.iter().enumerate() {
        let io_at = |source| JournalError::Io { path: path.clone(), source };
        let segment = Segment {
            index: *index,
            path: path.clone(),
            last_seq: None,
            highest_seq: None,
            end: SEGMENT_HEADER as u64,
        };
        segments.push(segment);
        if damage.is_none() {
            let mut reader = SegmentReader::open(path).map_err(io_at)?;
            damage = walk_segment(&mut reader, *index, position, &mut walk, &mut segments[position])
                .map_err(io_at)?;
        }
    }
    if damage.is_none()
        && let Some((seq, cut)) = walk.open.take()
    {
        // A group whose last record never came: torn at the end, like a torn record.
        damage = Some(Damage { cut, reason: format!("group {seq} ends without its last record") });
    }
    let Some(damage) = damage else {
        if !read_only && let Some(last) = segments.last() {
            zero_after(&last.path, last.end).map_err(io)?;
        }
        return Ok(Scan { segments, last_seq: walk.last, replay_from: walk.replay_from });
    };
    // A group begun before the damage is dropped with it.
    let cut = walk.open.take().map_or(damage.cut, |(_, cut)| cut);
    let before = walk.last.unwrap_or(floor);
    // Damage is rare: only then are the segments from it on read whole, one at a time.
    let synced_after = synced_after(&segments, cut).map_err(io)?;
    if let Some((synced, at)) = synced_after.filter(|(synced, _)| *synced > before) {
        return Err(JournalError::Corrupt {
            path: segments[at.segment].path.clone(),
            offset: damage.cut.offset,
            reason: format!(
                "{}, and a record at offset {} of {} was written after sequence {synced} was \
                 durable: acknowledged events are damaged",
                damage.reason,
                at.offset,
                segments[at.segment].path.display()
            ),
        });
    }
    tracing::warn!(
        path = %segments[cut.segment].path.display(),
        offset = cut.offset,
        reason = %damage.reason,
        "the journal ends in a torn write, never acknowledged; cutting it off there"
    );
    if !read_only {
        cut_tail(&segments, cut).map_err(io)?;
    }
    // The cut segment keeps the complete groups its walk counted before the cut.
    segments.truncate(cut.segment + 1);
    if cut.offset < SEGMENT_HEADER as u64 {
        segments.pop();
    } else {
        segments[cut.segment].end = cut.offset;
    }
    Ok(Scan { segments, last_seq: walk.last, replay_from: walk.replay_from })
}

/// Walks the records of one segment into `walk`; returns the first damage, if any.
fn walk_segment(
    reader: &mut SegmentReader,
    index: u64,
    position: usize,
    walk: &mut Walk,
    segment: &mut Segment,
) -> std::io::Result<Option<Damage>> {
    let at = |offset: usize| Cut { segment: position, offset: offset as u64 };
    match frame::parse_segment_header(reader.at(0)?) {
        Ok(named) if named == index => {}
        Ok(named) => {
            return Ok(Some(Damage { cut: at(0), reason: format!("its header names segment {named}") }));
        }
        Err(reason) => return Ok(Some(Damage { cut: at(0), reason })),
    }
    let mut offset = SEGMENT_HEADER;
    loop {
        match frame::read_record(reader.at(offset as u64)?) {
            Frame::End => {
                segment.end = offset as u64;
                return Ok(None);
            }
            Frame::Bad(reason) => return Ok(Some(Damage { cut: at(offset), reason: reason.into() })),
            Frame::Record(record) => {
                if let Err(reason) = walk.take(&record, record.more, at(offset)) {
                    return Ok(Some(Damage { cut: at(offset), reason }));
                }
                if !record.more {
                    segment.last_seq = Some(record.seq);
                }
                segment.highest_seq = segment.highest_seq.max(Some(record.seq));
                offset += frame::record_len(record.payload.len());
            }
        }
    }
}

/// The highest `synced` of any intact record after `cut`, and where it is: a record found
/// anywhere there was written after `cut`'s bytes were.
fn synced_after(segments: &[Segment], cut: Cut) -> std::io::Result<Option<(u64, Cut)>> {
    let mut best: Option<(u64, Cut)> = None;
    for (position, segment) in segments.iter().enumerate().skip(cut.segment) {
        let bytes = read_all(&segment.path)?;
        let mut offset =
            if position == cut.segment { cut.offset as usize + frame::ALIGN } else { SEGMENT_HEADER };
        while offset + frame::RECORD_HEADER <= bytes.len() {
            match frame::read_record(&bytes[offset..]) {
                Frame::Record(record) => {
                    if best.is_none_or(|(synced, _)| record.synced > synced) {
                        best = Some((record.synced, Cut { segment: position, offset: offset as u64 }));
                    }
                    offset += frame::record_len(record.payload.len());
                }
                Frame::End | Frame::Bad(_) => offset += frame::ALIGN,
            }
        }
    }
    Ok(best)
}

/// Zeroes `path` from `from` to its last non-zero byte, and syncs it. Reads what follows `from`
/// a chunk at a time.
fn zero_after(path: &Path, from: u64) -> std::io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let mut chunk = vec![0u8; CHUNK];
    let mut last = None;
    let mut at = from;
    while at < len {
        let n = (len - at).min(CHUNK as u64) as usize;
        file.read_exact_at(&mut chunk[..n], at)?;
        if let Some(i) = chunk[..n].iter().rposition(|&b| b != 0) {
            last = Some(at + i as u64);
        }
        at += n as u64;
    }
    let Some(last) = last else { return Ok(()) };
    let zeros = vec![0u8; CHUNK];
    let mut at = from;
    while at <= last {
        let n = (last + 1 - at).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_data()
}

/// Cuts the journal at `cut`: zeroes the rest of its segment (or removes the segment when the cut
/// is in its header) and removes every later segment.
fn cut_tail(segments: &[Segment], cut: Cut) -> std::io::Result<()> {
    let segment = &segments[cut.segment];
    if cut.offset < SEGMENT_HEADER as u64 {
        std::fs::remove_file(&segment.path)?;
    } else {
        zero_after(&segment.path, cut.offset)?;
    }
    for later in &segments[cut.segment + 1..] {
        std::fs::remove_file(&later.path)?;
    }
    if let Some(dir) = segment.path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}
