//! The event journal: every acknowledged event, in meterd's own append-only files under
//! `<data_dir>/journal/`, in front of the sled outbox. The commit thread appends each group
//! commit with one `write`; the sync thread makes everything appended so far durable with one
//! `fdatasync` and only then answers. Segments are preallocated and zero-filled ahead of use (as
//! PostgreSQL does with its WAL), so an append never changes a file's size and `fdatasync` has
//! only data to flush. A segment is deleted once a durable checkpoint of the outbox covers every
//! group in it.
//!
//! ## Segment files: `<index as 16 hex digits>.seg`, `storage.journal_segment_size` bytes
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `meterdJ\0` |
//! | 8 | 1 | format version ([`FORMAT_VERSION`]) |
//! | 9 | 3 | zero |
//! | 12 | 8 | segment index, u64 LE (the file name's) |
//! | 20 | 8 | segment size, u64 LE |
//! | 28 | 4 | CRC32C of bytes 0..28 |
//! | 32 | … | records, each starting at a multiple of 8; then zeros |
//!
//! A spare is written as `<index>.seg.tmp` (header, then zeros to the full size), synced, renamed
//! and its directory synced; a `.tmp` left by a crash is removed on open.
//!
//! ## Records
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | payload length, u32 LE (at most 1 MiB) |
//! | 4 | 4 | CRC32C of the length, bytes 8..32 and the payload |
//! | 8 | 1 | format version ([`FORMAT_VERSION`]) |
//! | 9 | 1 | 1 if more records of the same group follow, else 0 |
//! | 10 | 6 | zero |
//! | 16 | 8 | sequence of the group commit, u64 LE |
//! | 24 | 8 | *synced*: the highest sequence durable when this record was written |
//! | 32 | len | payload (the outbox's: a log format byte, then postcard events) |
//! | … | | zeros to the next multiple of 8 |
//!
//! A group is one record, or several with the same sequence when its payload passes 1 MiB.
//! Sequences rise by one from group to group.
//!
//! ## Recovery
//!
//! Segments are read in index order, records in offset order, until the first *damage*: a
//! record that is not intact (bad length, checksum or version, or cut short), a sequence out of
//! turn, a bad segment header, or a group whose last record never came. A zero header ends a
//! segment cleanly. At damage, with *L* the last complete group before it:
//!
//! | what lies after the damage | meaning | action |
//! |---|---|---|
//! | nothing intact, or only records whose *synced* ≤ *L* | a torn write: never made durable, never acknowledged | cut the journal there (zero the rest of the segment, remove later segments), start |
//! | an intact record whose *synced* > *L* | the damaged bytes had been made durable (and acknowledged) | refuse to start ([`JournalError::Corrupt`], naming the file and offset) |
//!
//! Acknowledged events at the very end (nothing after them) are guarded by the outbox's
//! watermark instead: a journal that ends before the acknowledged sequence is refused there.
//!
//! The check keeps no payload: it reads each segment through one window and notes where the first
//! group after the checkpoint starts. The replay ([`Replay`]) reads the checked segments again
//! from there, the same way, so that a restart holds one window of the journal, never all of it.

mod frame;
mod recover;
mod replay;
mod spare;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use frame::MAX_PAYLOAD;
use recover::Segment;
pub use replay::{Group, Replay};
use spare::Spares;

/// The first byte of segment and record headers.
pub const FORMAT_VERSION: u8 = 1;

/// `storage.journal_segment_size`'s default.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// Smallest segment: room for the largest record.
pub const MIN_SEGMENT_BYTES: u64 = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal i/o on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("an event of {bytes} bytes is larger than a journal record can hold ({MAX_PAYLOAD})")]
    TooLarge { bytes: usize },
    #[error(
        "the journal segment {path} is damaged at offset {offset}: {reason}. meterd will not start \
         on it, so that nothing is billed short without anyone knowing. Restore the data dir from a \
         backup, or move it aside to start empty; see \"A damaged outbox\" in docs/operations.md"
    )]
    Corrupt { path: PathBuf, offset: u64, reason: String },
}

/// The segment being written, and where.
struct Writer {
    file: Arc<File>,
    segment: Segment,
    /// Records of the group being appended.
    buf: Vec<u8>,
}

/// An open journal. The commit thread appends, the sync thread syncs, the checkpoint trims.
pub struct Journal {
    dir: PathBuf,
    segment_bytes: u64,
    writer: Mutex<Writer>,
    /// The file the sync thread makes durable (the writer's).
    current: Mutex<Arc<File>>,
    /// Segments written to the end, oldest first.
    closed: Mutex<Vec<Segment>>,
    /// The highest sequence appended, and the highest known durable.
    written: AtomicU64,
    synced: AtomicU64,
    /// An `fdatasync` of the journal failed (on whichever thread): the kernel may have dropped
    /// the pages it did not write, and a later sync of the same file could still succeed, so
    /// every later [`Journal::sync`] fails too.
    poisoned: AtomicBool,
    spares: Spares,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, checks it and says where the groups after
    /// `floor`, the sequence the outbox's checkpoint already holds, are to be read again. Read
    /// them before the first checkpoint: it may remove their segments.
    pub fn open(dir: &Path, segment_bytes: u64, floor: u64) -> Result<(Journal, Replay), JournalError> {
        let io = |source| JournalError::Io { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let scan = recover::scan(dir, floor, false)?;
        let replay = Replay::new(&scan, floor);
        let last_seq = replay.last_seq();
        let mut segments = scan.segments;
        let spares = Spares::start(dir.to_path_buf(), segment_bytes);
        let segment = match segments.pop() {
            // Appending goes on where the last segment ends (its tail was checked to be zeros).
            Some(last) if file_len(&last.path) == segment_bytes => last,
            full => {
                segments.extend(full);
                let index = segments.last().map_or(0, |s| s.index + 1);
                spares.make_now(index).map_err(io)?
            }
        };
        let file =
            Arc::new(std::fs::OpenOptions::new().read(true).write(true).open(&segment.path).map_err(io)?);
        spares.request(segment.index + 1);
        let journal = Journal {
            dir: dir.to_path_buf(),
            segment_bytes,
            current: Mutex::new(file.clone()),
            writer: Mutex::new(Writer { file, segment, buf: Vec::new() }),
            closed: Mutex::new(segments),
            written: AtomicU64::new(last_seq),
            synced: AtomicU64::new(last_seq),
            poisoned: AtomicBool::new(false),
            spares,
        };
        Ok((journal, replay))
    }

    /// Checks the journal in `dir` without changing anything (the operator's offline commands).
    pub fn read(dir: &Path, floor: u64) -> Result<Replay, JournalError> {
        if !dir.exists() {
            return Ok(Replay::empty(floor));
        }
        Ok(Replay::new(&recover::scan(dir, floor, true)?, floor))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends group commit `seq` (payloads of at most [`MAX_PAYLOAD`] bytes each) with one
    /// write where it fits. Durable once a [`Journal::sync`] that started after this returned.
    pub fn append(&self, seq: u64, payloads: &[impl AsRef<[u8]>]) -> Result<(), JournalError> {
        if let Some(large) = payloads.iter().map(AsRef::as_ref).find(|p| p.len() > MAX_PAYLOAD) {
            return Err(JournalError::TooLarge { bytes: large.len() });
        }
        let mut writer = self.writer.lock().expect("journal writer lock");
        let synced = self.synced.load(Ordering::Acquire);
        let writer = &mut *writer;
        writer.buf.clear();
        for (n, payload) in payloads.iter().map(AsRef::as_ref).enumerate() {
            let more = n + 1 < payloads.len();
            let len = frame::record_len(payload.len()) as u64;
            // A group larger than what is left of the segment goes on in the next one.
            if writer.segment.end + writer.buf.len() as u64 + len > self.segment_bytes {
                self.write_buf(writer)?;
                self.roll(writer)?;
            }
            frame::push_record(&mut writer.buf, seq, synced, more, payload);
            writer.segment.highest_seq = Some(seq);
        }
        self.write_buf(writer)?;
        writer.segment.last_seq = Some(seq);
        self.written.store(seq, Ordering::Release);
        Ok(())
    }

    fn write_buf(&self, writer: &mut Writer) -> Result<(), JournalError> {
        if writer.buf.is_empty() {
            return Ok(());
        }
        writer
            .file
            .write_all_at(&writer.buf, writer.segment.end)
            .map_err(|source| JournalError::Io { path: writer.segment.path.clone(), source })?;
        writer.segment.end += writer.buf.len() as u64;
        writer.buf.clear();
        Ok(())
    }

    /// Ends the current segment (synced, so that the sync thread need only sync the next) and
    /// continues in the spare.
    fn roll(&self, writer: &mut Writer) -> Result<(), JournalError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| JournalError::Io { path, source }
        };
        self.sync_file(&writer.file).map_err(io(&writer.segment.path))?;
        if let Some(seq) = writer.segment.last_seq {
            self.synced.fetch_max(seq, Ordering::AcqRel);
        }
        let next = self.spares.take(writer.segment.index + 1).map_err(io(&self.dir))?;
        let file = Arc::new(
            std::fs::OpenOptions::new().read(true).write(true).open(&next.path).map_err(io(&next.path))?,
        );
        self.spares.request(next.index + 1);
        let old = std::mem::replace(&mut writer.segment, next);
        writer.file = file.clone();
        *self.current.lock().expect("journal current lock") = file;
        self.closed.lock().expect("journal closed lock").push(old);
        Ok(())
    }

    /// `fdatasync` of the segment being written: every group appended before this call is durable
    /// after it (an earlier segment was synced when it was ended).
    pub fn sync(&self) -> Result<(), JournalError> {
        let written = self.written.load(Ordering::Acquire);
        let file = self.current.lock().expect("journal current lock").clone();
        self.sync_file(&file).map_err(|source| JournalError::Io { path: self.dir.clone(), source })?;
        self.synced.fetch_max(written, Ordering::AcqRel);
        Ok(())
    }

    /// `fdatasync` of a segment, refused for good once one failed.
    fn sync_file(&self, file: &File) -> std::io::Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(std::io::Error::other("an earlier fdatasync of the journal failed"));
        }
        file.sync_data().inspect_err(|_| self.poisoned.store(true, Ordering::Release))
    }

    /// Whether [`Journal::trim`] through `seq` would remove a segment.
    pub fn trimmable(&self, seq: u64) -> bool {
        let closed = self.closed.lock().expect("journal closed lock");
        closed.first().is_some_and(|s| s.highest_seq.is_none_or(|highest| highest <= seq))
    }

    /// Removes the ended segments whose records all belong to groups at or below `seq`, which a
    /// durable checkpoint holds (groups after it may be appended meanwhile: a checkpoint is
    /// written beside the commit thread). Returns how many were removed.
    pub fn trim(&self, seq: u64) -> Result<usize, JournalError> {
        let mut closed = self.closed.lock().expect("journal closed lock");
        let mut removed = 0;
        while let Some(first) = closed.first() {
            if first.highest_seq.is_some_and(|highest| highest > seq) {
                break;
            }
            std::fs::remove_file(&first.path)
                .map_err(|source| JournalError::Io { path: first.path.clone(), source })?;
            closed.remove(0);
            removed += 1;
        }
        Ok(removed)
    }

    /// Bytes of records the journal holds (segments are preallocated: on disk it takes
    /// `storage.journal_segment_size` more for the spare, and the rest of the current segment).
    pub fn bytes(&self) -> u64 {
        let closed: u64 = self.closed.lock().expect("journal closed lock").iter().map(|s| s.end).sum();
        closed + self.writer.lock().expect("journal writer lock").segment.end
    }

    /// Ends the current segment when every group in it is at or below `seq` (so that
    /// [`Journal::trim`] can remove it) and it holds more than a quarter of a segment: an idle
    /// meterd gives its journal's space back.
    pub fn roll_if_covered(&self, seq: u64) -> Result<bool, JournalError> {
        let mut writer = self.writer.lock().expect("journal writer lock");
        let covered = writer.segment.highest_seq.is_some_and(|highest| highest <= seq);
        if !covered || writer.segment.end < self.segment_bytes / 4 {
            return Ok(false);
        }
        self.roll(&mut writer)?;
        Ok(true)
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests;
