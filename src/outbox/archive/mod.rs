//! The receipts archive: settled records that are final (receipts, fleet partials marked
//! `Shipped`) moved out of sled into append-only files, one per UTC day of their settle time,
//! under `<data_dir>/receipts/`. A day's file is deleted whole once the whole day is older than
//! `storage.retention`; nothing in it is ever rewritten. Dead letters stay in sled, where an
//! operator can retry or drop them.
//!
//! ## Files
//! `<data_dir>/receipts/YYYY-MM-DD.rcpt` (the UTC day of the records' settle time): a sequence of
//! blocks, each written by one move ([`Outbox::archive_settled`](super::Outbox::archive_settled)),
//! all little endian:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | magic `mrcp` |
//! | 4 | 1 | format version ([`ARCHIVE_VERSION`]) |
//! | 5 | 3 | zero |
//! | 8 | 8 | move sequence (u64) that wrote the block |
//! | 16 | 8 | lowest record hour in the block (i64) |
//! | 24 | 8 | highest record hour in the block (i64) |
//! | 32 | 4 | receipts (`Accepted`) in the block (u32) |
//! | 36 | 4 | fleet partials (`Shipped`) in the block (u32) |
//! | 40 | 4 | payload length (u32) |
//! | 44 | 4 | CRC32C of bytes 0..44 and the payload |
//! | 48 | n | payload: raw deflate of postcard `Vec<Entry>`, at most [`BLOCK_RECORDS`] records |
//!
//! An entry (`block.rs`) is the sealed record, its sealed and settled times as offsets (from the
//! hour, then from the sealing), and the receipt: a MeteringRecordId that is a lowercase
//! hyphenated UUID is kept as its 16 bytes, any other as its text (a fleet partial: none).
//!
//! ## The move, and a crash in the middle of it
//! sled's `m` `archived` holds the [`Mark`]: the last move's sequence and, for each day file, its
//! committed length. Only bytes below a file's committed length are visible.
//!
//! 1. the blocks of move `n` are appended to their day files (after any uncommitted bytes were
//!    cut off) and each file is `fdatasync`ed (and the directory, when a file is new);
//! 2. one sled batch removes the records' `r` keys and sets the mark to `n` and the new lengths;
//!    then the barrier.
//!
//! A crash between the two leaves the records in sled and the new bytes past the committed
//! lengths, where no reader looks: exactly one copy stays visible, and none is lost. The daemon's
//! open cuts every file back to its committed length and removes files the mark does not name
//! (a new day's file of an unfinished move, or an expired one). Anything wrong below a committed
//! length (a file shorter than it, a bad header, a checksum that fails) is damage: reading it
//! reports the file, the byte offset and the reason.

mod block;
mod read;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use block::encode_block;
pub use block::{ARCHIVE_VERSION, BLOCK_RECORDS, HEADER_BYTES};

use super::{RecordState, StoredRecord};

/// The archive's directory under the data dir.
pub const ARCHIVE_DIR: &str = "receipts";
/// A day file's name ends with this.
const SUFFIX: &str = ".rcpt";
const DAY_SECS: i64 = 86_400;

/// What went wrong with the archive, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("receipts archive {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "receipts archive {path} is damaged at byte {offset}: {reason}; see \"A damaged receipts \
         archive\" in docs/operations.md"
    )]
    Damaged { path: PathBuf, offset: u64, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io { path: path.to_path_buf(), source }
}

/// What sled records of the archive (`m` `archived`): the last committed move and the committed
/// length of each day file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub seq: u64,
    /// Day number → committed length in bytes.
    pub ends: BTreeMap<i64, u64>,
}

/// What one day file holds below its committed length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayStats {
    /// The committed length.
    pub bytes: u64,
    pub accepted: u64,
    pub shipped: u64,
}

/// What the archive holds, summed over its day files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveTotals {
    pub files: u64,
    pub bytes: u64,
    pub accepted: u64,
    pub shipped: u64,
}

/// A move's blocks, written and synced, not yet committed: the mark to commit in sled, then
/// [`Archive::note`].
#[derive(Debug)]
pub struct Staged {
    pub mark: Mark,
    days: HashMap<i64, DayStats>,
}

/// The archive of one data dir.
pub struct Archive {
    dir: PathBuf,
    /// Day number (days since the epoch) → what its file holds; the committed state.
    days: Mutex<BTreeMap<i64, DayStats>>,
    seq: Mutex<u64>,
    /// Held for a whole move, so that two never share a sequence.
    moving: Mutex<()>,
}

/// The day number of epoch seconds.
pub fn day_of(secs: i64) -> i64 {
    secs.div_euclid(DAY_SECS)
}

/// `YYYY-MM-DD.rcpt` for a day number.
fn file_name(day: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(day * DAY_SECS)
        .map(|t| t.date())
        .unwrap_or(time::Date::MIN);
    format!("{:04}-{:02}-{:02}{SUFFIX}", date.year(), u8::from(date.month()), date.day())
}

/// The day number a file name names; `None` for any other name.
fn parse_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(SUFFIX)?;
    let mut parts = stem.splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    let date = time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    let day = day_of(date.midnight().assume_utc().unix_timestamp());
    (file_name(day) == name).then_some(day)
}

impl Archive {
    /// The daemon's open: creates the directory, cuts every day file back to its committed
    /// length and removes files `mark` does not name. A damaged file is renamed to
    /// `….rcpt.damaged` with an ERROR, so that new blocks never follow damage; it is kept for
    /// the operator.
    pub fn open(dir: &Path, mark: &Mark) -> Result<Archive, ArchiveError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut days = BTreeMap::new();
        for (day, path) in read::day_files(dir)? {
            let Some(&end) = mark.ends.get(&day) else {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            };
            match read::recover(&path, end) {
                Ok(stats) => {
                    days.insert(day, stats);
                }
                Err(err @ ArchiveError::Damaged { .. }) => {
                    let aside = path.with_extension("rcpt.damaged");
                    tracing::error!(%err, aside = %aside.display(), "moving a damaged receipts archive file aside");
                    std::fs::rename(&path, &aside).map_err(io_err(&path))?;
                }
                Err(err) => return Err(err),
            }
        }
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
        Ok(Archive {
            dir: dir.to_path_buf(),
            days: Mutex::new(days),
            seq: Mutex::new(mark.seq),
            moving: Mutex::new(()),
        })
    }

    /// An offline read's open: counts what is committed without writing anything. A directory
    /// that does not exist is an empty archive. A damaged file is kept (uncounted), so that
    /// `status` and the dead letters still read and an export of receipts reports the damage.
    pub fn open_read_only(dir: &Path, mark: &Mark) -> Result<Archive, ArchiveError> {
        let mut days = BTreeMap::new();
        for (&day, &end) in &mark.ends {
            match read::count(&dir.join(file_name(day)), end) {
                Ok(Some(stats)) => {
                    days.insert(day, stats);
                }
                Ok(None) => {}
                Err(ArchiveError::Damaged { .. }) => {
                    days.insert(day, DayStats { bytes: end, ..DayStats::default() });
                }
                Err(err) => return Err(err),
            }
        }
        Ok(Archive {
            dir: dir.to_path_buf(),
            days: Mutex::new(days),
            seq: Mutex::new(mark.seq),
            moving: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Taken by a move from its first step to its commit.
    pub fn moving(&self) -> std::sync::MutexGuard<'_, ()> {
        self.moving.lock().expect("archive move lock")
    }

    /// Appends `records` (each `Accepted` or `Shipped`) as blocks of the next move to the files
    /// of their settle days, after cutting off anything past a file's committed length, and
    /// makes them durable. They become visible once sled holds [`Staged::mark`] and
    /// [`Archive::note`] took it.
    pub fn append(&self, records: &[StoredRecord]) -> Result<Staged, ArchiveError> {
        let seq = *self.seq.lock().expect("archive seq lock") + 1;
        let mut by_day: BTreeMap<i64, Vec<&StoredRecord>> = BTreeMap::new();
        for stored in records {
            assert!(
                matches!(stored.state, RecordState::Accepted { .. } | RecordState::Shipped { .. }),
                "only final records are archived"
            );
            let at = stored.settled_at().expect("a final record is settled");
            by_day.entry(day_of(at)).or_default().push(stored);
        }
        let mut days = self.days.lock().expect("archive days lock").clone();
        let mut touched = HashMap::new();
        for (day, records) in by_day {
            let stats = days.entry(day).or_default();
            let mut bytes = Vec::new();
            for chunk in records.chunks(BLOCK_RECORDS) {
                let header = encode_block(seq, chunk, &mut bytes);
                stats.accepted += u64::from(header.accepted);
                stats.shipped += u64::from(header.shipped);
            }
            self.write_day(day, stats.bytes, &bytes)?;
            stats.bytes += bytes.len() as u64;
            touched.insert(day, *stats);
        }
        let ends = days.iter().map(|(day, stats)| (*day, stats.bytes)).collect();
        Ok(Staged { mark: Mark { seq, ends }, days: touched })
    }

    /// Writes `bytes` at `end` (the committed length) of a day's file and syncs it.
    fn write_day(&self, day: i64, end: u64, bytes: &[u8]) -> Result<(), ArchiveError> {
        let path = self.dir.join(file_name(day));
        let new = !path.exists();
        let mut file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len < end {
            return Err(ArchiveError::Damaged {
                path,
                offset: len,
                reason: format!("the file ends before its committed length {end}"),
            });
        }
        if len > end {
            file.set_len(end).map_err(io_err(&path))?;
        }
        file.write_all(bytes).map_err(io_err(&path))?;
        file.sync_data().map_err(io_err(&path))?;
        if new {
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
        }
        Ok(())
    }

    /// Takes a move that sled committed: its blocks are visible from now on.
    pub fn note(&self, staged: Staged) {
        let mut days = self.days.lock().expect("archive days lock");
        for (day, stats) in staged.days {
            days.insert(day, stats);
        }
        *self.seq.lock().expect("archive seq lock") = staged.mark.seq;
    }

    /// Deletes every day file whose whole day ended at or before `before` (epoch seconds); returns
    /// what they held.
    pub fn expire(&self, before: i64) -> Result<ArchiveTotals, ArchiveError> {
        let mut removed = ArchiveTotals::default();
        let mut days = self.days.lock().expect("archive days lock");
        let expired: Vec<i64> = days.keys().copied().filter(|day| (day + 1) * DAY_SECS <= before).collect();
        for day in expired {
            let path = self.dir.join(file_name(day));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ArchiveError::Io { path, source }),
            }
            let stats = days.remove(&day).expect("an expired day is known");
            removed.files += 1;
            removed.bytes += stats.bytes;
            removed.accepted += stats.accepted;
            removed.shipped += stats.shipped;
        }
        if removed.files > 0 {
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
        }
        Ok(removed)
    }

    /// What the archive holds.
    pub fn totals(&self) -> ArchiveTotals {
        let days = self.days.lock().expect("archive days lock");
        days.values().fold(ArchiveTotals::default(), |mut t, s| {
            t.files += 1;
            t.bytes += s.bytes;
            t.accepted += s.accepted;
            t.shipped += s.shipped;
            t
        })
    }

    /// The committed length of every day file: what a reader may read.
    pub fn ends(&self) -> BTreeMap<i64, u64> {
        self.days.lock().expect("archive days lock").iter().map(|(day, s)| (*day, s.bytes)).collect()
    }

    /// Calls `visit` with every archived record below the lengths `ends` (from [`Archive::ends`])
    /// whose hour is in `hours`, day file by day file, in the order they were written. Every
    /// block read is checked; damage stops the read with [`ArchiveError::Damaged`]. A file that
    /// expired meanwhile is skipped.
    pub fn visit(
        &self,
        ends: &BTreeMap<i64, u64>,
        hours: std::ops::Range<i64>,
        visit: &mut dyn FnMut(StoredRecord),
    ) -> Result<(), ArchiveError> {
        for (&day, &end) in ends {
            read::visit_file(&self.dir.join(file_name(day)), end, &hours, visit)?;
        }
        Ok(())
    }
}
