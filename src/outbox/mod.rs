//! The outbox: everything meterd has acknowledged and not yet settled. Acknowledged events are
//! first in the event journal (`<data_dir>/journal/`, [`crate::journal`]); sled (one tree under
//! `<data_dir>/outbox`) holds what checkpoints fold them into: the open hours, sealed records and
//! their states, receipts, dead letters and ids. `<data_dir>/meterd.lock` guards the data dir.
//!
//! ## Key layout (one tree; the first byte is the kind)
//!
//! | key | value | written by |
//! |---|---|---|
//! | `m` `checkpoint` | [`Meta`]: last group sequence folded into the checkpoint, last sealed hour, the live open-hours files (`open_files.rs`) | commit stage, at each checkpoint |
//! | `m` `archived` | [`archive::Mark`]: the receipts archive's last move and committed file lengths | the task that settles records, at each move |
//! | `j` peer uid:u32be, client id | [`IdEntry`]: expiry and the event's digest | commit stage, at each checkpoint |
//! | `r` hour:u64be postcard(RecordKey) [generation:u32be] | [`StoredRecord`]: a sealed record and its state; never written twice by the commit stage. The generation suffix only on a fleet host's second and later partials of a key and hour (`StoredRecord::generation`) | commit stage seals, submit stage (ship stage) settles |
//! | `l` seq:u64be chunk:u16be | legacy (0.1.0 logged events in sled): `Vec<Admitted>`; replayed, deleted by the next checkpoint | — |
//! | `o` postcard(RecordKey) | legacy (0.1.0 checkpointed one key per open record): totals; read, replaced by the next (full) checkpoint | — |
//! | `i` client id | legacy (written before ids were scoped and digested): expiry; read, then deleted when it expires | — |
//!
//! Every value is one format-version byte ([`FORMAT_VERSION`]) followed by postcard, except that
//! logged events (journal payloads, legacy `l` chunks) carry [`LOG_FORMAT_VERSION`]: version 2
//! events carry their id's peer and digest, version 1 (an older meterd's) are read as events with
//! legacy ids.
//!
//! ## Record states (`r` keys)
//!
//! | state | meaning | next |
//! |---|---|---|
//! | `Pending` | sealed, frozen, not yet confirmed (possibly sent) | `Accepted`, `DeadLetter` |
//! | `Accepted` | the service returned Success; holds the MeteringRecordId | final; moved to the receipts archive (`archive/`) |
//! | `DeadLetter` | can never be accepted; holds the reason and the service's message | final |
//! | `Shipped` | fleet mode: a partial committed to the fleet database, which bills it | final; moved to the receipts archive |
//!
//! ## Durability
//! An event is acknowledged once the journal's `fdatasync` covers it ([`Outbox::sync_journal`]).
//! sled's own writes are made durable by [`Outbox::barrier`]: sled's `flush` writes with
//! `sync_file_range`, which neither flushes the device cache nor the file's size, so the barrier
//! follows it with `fdatasync` on sled's `db` file; every value (a chunk is at most
//! [`MAX_CHUNK_BYTES`]) stays below the blob threshold of the [`SEGMENT_SIZE`] meterd configures,
//! since sled never syncs blob files. A checkpoint is made durable before it is trusted: when it
//! sealed records, and before journal segments it covers are removed.
//!
//! `<data_dir>/watermark` holds two sequences: the highest group made durable (written after
//! each journal sync) and the highest durable checkpoint (synced before journal segments go). On
//! open, a journal that ends before the first, or a sled checkpoint older than the second, is
//! data lost ([`OutboxError::Lost`], [`OutboxError::LostCheckpoint`]): meterd refuses to start.
//! docs/durability.md has the whole argument.
//!
//! ## Opening
//! The daemon ([`Outbox::open`]) creates and locks the data dir, refuses to start with less than
//! `storage.min_free_bytes` free before sled writes anything, and removes the unfinished snapshot
//! files an interrupted sled write can leave (`disk.rs`). The operator's offline commands
//! ([`Outbox::open_read_only`]) never write to the data dir: they open a private copy of sled's
//! files (`offline.rs`) and read the journal in place.

pub mod archive;
mod chunks;
mod disk;
mod error;
mod id_keys;
mod layout;
mod legacy;
mod lock;
mod offline;
mod open_files;
mod records;
mod recovered;
mod settled;
mod watermark;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::aggregate::{Admitted, Delta, IdEntry, IdKey, SealedRecord};
use crate::ids::{IdFiles, Run};
use crate::journal::Journal;
use crate::model::{DeadReason, RecordKey};
use chunks::OpenState;
pub use chunks::{Chunker, LogEncoder, decode_open_chunk};
pub use disk::Room;
pub use error::OutboxError;
pub use layout::{FORMAT_VERSION, LOG_FORMAT_VERSION, MAX_CHUNK_BYTES, SEGMENT_SIZE};
use lock::lock;
use offline::PrivateCopy;
pub use open_files::OpenFile;
pub use records::Checkpointed;
pub use recovered::Recovered;
pub use settled::Moved;
use watermark::{Marks, WATERMARK_FILE, open_watermark};

/// `<data_dir>/meterd.lock`: the flock, and the pid of the meterd holding it.
const LOCK_FILE: &str = "meterd.lock";
/// `<data_dir>/outbox`: sled's directory.
const OUTBOX_DIR: &str = "outbox";
/// `<data_dir>/journal`: the event journal's segments.
const JOURNAL_DIR: &str = "journal";
/// `<data_dir>/open`: the open hours' checkpoint files.
const OPEN_DIR: &str = "open";
/// `<data_dir>/ids`: the remembered client ids (`crate::ids`).
const IDS_DIR: &str = "ids";

/// Checkpoint bookkeeping: format version [`META_VERSION`]; version 1 (an older meterd's) has
/// only the first two fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Every logged group up to this sequence is folded into the checkpoint.
    pub log_seq: u64,
    pub sealed_through: Option<i64>,
    /// The open hours' checkpoint files that are live: generations `open_base..=open_last`
    /// (`open_last` 0: none).
    pub open_base: u64,
    pub open_last: u64,
}

/// The first byte of the [`Meta`] value since it names open-hours files.
const META_VERSION: u8 = 2;

/// Reads a [`Meta`] of either version.
fn decode_meta(key: &[u8], value: &[u8]) -> Result<Meta, OutboxError> {
    #[derive(Deserialize)]
    struct MetaV1 {
        log_seq: u64,
        sealed_through: Option<i64>,
    }
    match value.split_first() {
        Some((&META_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| OutboxError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        }),
        _ => {
            let old: MetaV1 = decode(key, value)?;
            Ok(Meta { log_seq: old.log_seq, sealed_through: old.sealed_through, open_base: 0, open_last: 0 })
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordState {
    Pending,
    Accepted {
        metering_record_id: String,
        at: i64,
    },
    DeadLetter {
        reason: DeadReason,
        message: String,
        at: i64,
    },
    /// Fleet mode: the record is this host's partial, committed to the fleet database.
    Shipped {
        at: i64,
    },
}

/// A sealed record as the outbox keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    pub record: SealedRecord,
    pub sealed_at: i64,
    pub state: RecordState,
    /// Which of its key's records this is: 0, but for a fleet host that sealed the key before
    /// its hour was sealed (a flush, a stopping host) and sealed it again. Each later seal of the
    /// same key and hour is the next generation: another partial, summed with the others when
    /// the fleet closes the hour. Not part of the value: it is the `r` key's suffix.
    #[serde(skip)]
    pub generation: u32,
}

impl StoredRecord {
    /// When it was accepted or dead-lettered; `None` while pending.
    pub fn settled_at(&self) -> Option<i64> {
        match &self.state {
            RecordState::Pending => None,
            RecordState::Accepted { at, .. }
            | RecordState::DeadLetter { at, .. }
            | RecordState::Shipped { at } => Some(*at),
        }
    }
}

/// The open outbox. Cheap to share: every method takes `&self`.
pub struct Outbox {
    db: sled::Db,
    /// Acknowledged events since the last durable checkpoint (`<data_dir>/journal/`); `None` for
    /// an offline read, which reads it without opening it for writing.
    journal: Option<Journal>,
    /// sled's data file, opened again only to `fdatasync` it.
    db_file: File,
    dir: PathBuf,
    /// `<data_dir>/watermark`: the highest log sequence known durable, and the highest checkpoint.
    watermark: File,
    /// What the watermark says, kept in order under one lock.
    marks: std::sync::Mutex<Marks>,
    /// Final records moved out of sled (`<data_dir>/receipts/`), and the lock that makes a read
    /// of receipts see sled and the archive's committed lengths from the same moment.
    archive: archive::Archive,
    archive_lock: std::sync::RwLock<()>,
    /// The open hours' checkpoint files (written by checkpoints only), and their directory.
    open_state: std::sync::Mutex<OpenState>,
    open_dir: PathBuf,
    /// The remembered ids' files (`None` for an offline read).
    ids: Option<IdFiles>,
    /// `storage.min_free_bytes` (0 for an offline read).
    min_free_bytes: u64,
    _lock: File,
    /// For an offline read, the private copy it opened; removed after sled is closed (fields drop
    /// in order).
    _copy: Option<PrivateCopy>,
}

/// The open hours a checkpoint names: the file of `generation` ([`Outbox::open_file`]), written
/// and synced, with the chunks of a [`Chunker::open_hours`] fed with every open record changed
/// since the last checkpoint, or with every open record (`full`, needed when records were
/// sealed, so that no file still holds them). `None`: nothing was written.
#[derive(Debug, Default)]
pub struct OpenWrite {
    pub generation: Option<u64>,
    pub bytes: u64,
    pub full: bool,
}

/// How the daemon's outbox is bounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `storage.min_free_bytes` (0: no check).
    pub min_free_bytes: u64,
    /// `storage.journal_segment_size`.
    pub journal_segment_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { min_free_bytes: 0, journal_segment_bytes: crate::journal::DEFAULT_SEGMENT_BYTES }
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_extend(value, vec![FORMAT_VERSION]).expect("postcard encodes every outbox type")
}

fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, OutboxError> {
    let corrupt =
        |reason: String| OutboxError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason };
    match value.split_first() {
        Some((&FORMAT_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string())),
        Some((version, _)) => {
            Err(corrupt(format!("format version {version}, this meterd reads {FORMAT_VERSION}")))
        }
        None => Err(corrupt("empty value".into())),
    }
}

impl Outbox {
    /// The daemon's open: creates and locks `data_dir`, refuses to go on with less than
    /// `min_free_bytes` (0: no check) free on its filesystem before sled writes anything, opens (or
    /// creates) the outbox and reads everything back. Refuses an outbox that holds less than was
    /// acknowledged ([`OutboxError::Lost`]).
    pub fn open(data_dir: &Path, limits: Limits) -> Result<(Outbox, Recovered), OutboxError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| OutboxError::CreateDir { path: data_dir.to_path_buf(), source })?;
        let lock = lock(data_dir)?;
        disk::check_free(data_dir, limits.min_free_bytes)?;
        match Self::open_locked(data_dir, data_dir, lock, limits, None)? {
            (_, _, Some(lost)) => Err(lost),
            (outbox, recovered, None) => Ok((outbox, recovered)),
        }
    }

    /// For the operator's commands while meterd is stopped: reads `data_dir` without writing to
    /// it, through a private copy of the sled outbox (`offline.rs`) and a read of the journal in
    /// place. A damaged outbox is opened anyway, with the loss beside it, so that what it still
    /// holds can be exported. A data dir that does not exist or holds no outbox is an error, not a
    /// new empty outbox.
    pub fn open_read_only(data_dir: &Path) -> Result<(Outbox, Recovered, Option<OutboxError>), OutboxError> {
        let copy = offline::copy_stopped(data_dir)?;
        let lock = lock(copy.root())?;
        let root = copy.root().to_path_buf();
        Self::open_locked(&root, data_dir, lock, Limits::default(), Some(copy))
    }

    /// Opens the outbox under `root` (locked by `lock`); errors and the loss name `named` instead.
    /// The journal is opened for writing unless this is an offline read (`copy`).
    fn open_locked(
        root: &Path,
        named: &Path,
        lock: File,
        limits: Limits,
        copy: Option<PrivateCopy>,
    ) -> Result<(Outbox, Recovered, Option<OutboxError>), OutboxError> {
        let dir = root.join(OUTBOX_DIR);
        disk::remove_unfinished_snapshots(&dir)?;
        let open_err = |source| OutboxError::Open { path: named.join(OUTBOX_DIR), source };
        let db = sled::Config::new()
            .path(&dir)
            .segment_size(SEGMENT_SIZE)
            .cache_capacity(layout::CACHE_BYTES)
            // The commit stage flushes (and syncs) itself; a background flusher would only compete.
            .flush_every_ms(None)
            .open()
            .map_err(open_err)?;
        let db_file = File::open(dir.join("db")).map_err(|e| open_err(e.into()))?;
        // The files sled just created must survive a power cut too.
        for path in [&dir, root] {
            File::open(path).and_then(|d| d.sync_all()).map_err(OutboxError::Sync)?;
        }
        let (watermark, marks) = open_watermark(&root.join(WATERMARK_FILE), &named.join(WATERMARK_FILE))?;
        let mut recovered = recovered::recover(&db)?;
        let floor = recovered.meta.log_seq;
        let open_dir = named.join(OPEN_DIR);
        let (open_chunks, open_bytes) =
            open_files::read(&open_dir, recovered.meta.open_base, recovered.meta.open_last, copy.is_some())?;
        recovered.open_chunks = open_chunks;
        let journal_dir = named.join(JOURNAL_DIR);
        let recovered::OpenedJournal { journal, replay, damaged } =
            recovered::open_journal(&journal_dir, limits, floor, copy.is_some())?;
        recovered.absorb_journal(replay);
        // Only the daemon reads the ids: an offline read has no use for them.
        let ids = match copy {
            None => {
                let (files, loaded) = IdFiles::open(&named.join(IDS_DIR), true)?;
                recovered.id_files = loaded;
                Some(files)
            }
            Some(_) => None,
        };
        let mark = settled::read_mark(&db)?;
        let archive_dir = named.join(archive::ARCHIVE_DIR);
        let archive = if copy.is_some() {
            archive::Archive::open_read_only(&archive_dir, &mark)?
        } else {
            archive::Archive::open(&archive_dir, &mark)?
        };
        let outbox = Outbox {
            ids,
            db,
            journal,
            db_file,
            dir,
            watermark,
            marks: std::sync::Mutex::new(marks),
            archive,
            archive_lock: std::sync::RwLock::new(()),
            open_state: std::sync::Mutex::new(OpenState {
                base: recovered.meta.open_base,
                last: recovered.meta.open_last,
                base_bytes: open_bytes,
                delta_bytes: 0,
                legacy: !recovered.legacy_open.is_empty(),
            }),
            open_dir,
            min_free_bytes: limits.min_free_bytes,
            _lock: lock,
            _copy: copy,
        };
        let lost = damaged.or_else(|| recovered::loss(&recovered, marks, named));
        Ok((outbox, recovered, lost))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Journals one group commit's events. They are durable, and may be acknowledged, once a
    /// [`Outbox::sync_journal`] that started after this returned.
    pub fn append(&self, seq: u64, events: &[Admitted], encoder: &mut LogEncoder) -> Result<(), OutboxError> {
        let journal = self.journal.as_ref().expect("only the daemon's outbox appends");
        journal.append(seq, &encoder.encode(events))?;
        Ok(())
    }

    /// The acknowledgement barrier: `fdatasync` of the journal.
    pub fn sync_journal(&self) -> Result<(), OutboxError> {
        match &self.journal {
            Some(journal) => Ok(journal.sync()?),
            None => Ok(()),
        }
    }

    /// Writes one checkpoint atomically in sled: newly sealed records (as `Pending`), remembered
    /// and forgotten ids, and the new [`Meta`] naming the open-hours file `open` wrote (already
    /// synced); deletes 0.1.0's log up to `log_seq`. With `durable` (needed before sealed records
    /// are submitted), or when journal segments or replaced open-hours files can go, waits for the
    /// barrier first, and then removes them. The ids go to their own files first
    /// (`crate::ids::IdFiles`); returns the id runs and the sealed records written, each
    /// under the first free generation of its key where `delta.generations` allows more than one.
    pub fn checkpoint(
        &self,
        log_seq: u64,
        delta: &Delta,
        open: OpenWrite,
        now: i64,
        durable: bool,
    ) -> Result<Checkpointed, OutboxError> {
        let mut batch = sled::Batch::default();
        let mut state = self.open_state.lock().expect("open state lock");
        let old_base = state.base;
        self.note_open(&mut batch, &mut state, &open)?;
        let sealed = self.stage_sealed(&mut batch, delta, now)?;
        // The id files first: this checkpoint lets the journal that holds their events go.
        let runs = match &self.ids {
            Some(ids) => ids.write(&delta.ids.files)?,
            None => Vec::new(),
        };
        self.note_ids(&mut batch, delta)?;
        let meta = Meta {
            log_seq,
            sealed_through: delta.sealed_through,
            open_base: state.base,
            open_last: state.last,
        };
        let mut value = vec![META_VERSION];
        value = postcard::to_extend(&meta, value).expect("postcard encodes every outbox type");
        batch.insert(layout::META, value);
        for item in self.db.range(layout::log_key(0, 0)..=layout::log_key(log_seq, u16::MAX)) {
            batch.remove(item?.0);
        }
        self.db.apply_batch(batch)?;
        // Journal segments go only once a durable checkpoint holds every group in them.
        if let Some(journal) = &self.journal {
            journal.roll_if_covered(log_seq)?;
        }
        let trim = self.journal.as_ref().filter(|journal| journal.trimmable(log_seq));
        // Files a full write replaced go once the checkpoint naming it is durable.
        let replaced = state.base > old_base;
        if durable || trim.is_some() || replaced {
            self.barrier()?;
            let mut marks = self.marks.lock().expect("watermark lock");
            marks.durable = marks.durable.max(log_seq);
            marks.checkpoint = marks.checkpoint.max(log_seq);
            self.watermark.write_all_at(&marks.bytes(), 0).map_err(OutboxError::Sync)?;
            self.watermark.sync_data().map_err(OutboxError::Sync)?;
        }
        if let Some(journal) = trim {
            journal.trim(log_seq)?;
        }
        if replaced {
            open_files::remove_before(&self.open_dir, state.base)
                .map_err(|e| OutboxError::OpenFile { path: self.open_dir.clone(), reason: e.to_string() })?;
        }
        if let Some(ids) = &self.ids {
            ids.remove_settled(&delta.ids.files)?;
        }
        Ok(Checkpointed { runs, sealed })
    }

    /// Whether the next checkpoint should write every open hour ([`OpenWrite::full`]).
    pub fn wants_full_checkpoint(&self) -> bool {
        self.open_state.lock().expect("open state lock").wants_base()
    }

    /// Takes a written open-hours file into the state a checkpoint names; a full write also
    /// removes an older meterd's `o` keys.
    fn note_open(
        &self,
        batch: &mut sled::Batch,
        state: &mut OpenState,
        open: &OpenWrite,
    ) -> Result<(), OutboxError> {
        let Some(generation) = open.generation else { return Ok(()) };
        state.last = generation;
        if !open.full {
            state.delta_bytes += open.bytes;
            return Ok(());
        }
        state.base = generation;
        state.base_bytes = open.bytes;
        state.delta_bytes = 0;
        if state.legacy {
            for item in self.db.scan_prefix([layout::OPEN]) {
                batch.remove(item?.0);
            }
            state.legacy = false;
        }
        Ok(())
    }

    /// Where the open-hours files are.
    pub fn open_dir(&self) -> &Path {
        &self.open_dir
    }

    /// The file for the next generation of open-hours totals ([`OpenWrite::generation`]).
    pub fn open_file(&self) -> Result<(OpenFile, u64), OutboxError> {
        let generation = self.open_state.lock().expect("open state lock").last + 1;
        let file = OpenFile::create(&self.open_dir, generation).map_err(|e| OutboxError::OpenFile {
            path: open_files::path(&self.open_dir, generation),
            reason: e.to_string(),
        })?;
        Ok((file, generation))
    }

    /// Bytes the outbox's files take on disk, without the receipts archive: what
    /// `storage.max_bytes` bounds.
    pub fn size_on_disk(&self) -> Result<u64, OutboxError> {
        let open = {
            let state = self.open_state.lock().expect("open state lock");
            state.base_bytes + state.delta_bytes
        };
        Ok(self.db.size_on_disk()? + self.journal.as_ref().map_or(0, Journal::bytes) + open)
    }

    /// The outbox's size and the room left on its filesystem, against `storage.min_free_bytes`.
    pub fn room(&self) -> Result<Room, OutboxError> {
        Ok(Room {
            bytes: self.size_on_disk()?,
            archive_bytes: self.archive.totals().bytes,
            free_bytes: disk::free_bytes(&self.dir)?,
            min_free_bytes: self.min_free_bytes,
        })
    }

    /// `flush` then `fdatasync`: after this, everything written before it survives a power cut.
    /// Records that the log is durable up to `seq`, after a [`Outbox::barrier`]. A plain write: a
    /// watermark that a power cut leaves behind is only older, never ahead of what sled holds;
    /// each sealing checkpoint syncs it.
    pub fn mark_durable(&self, seq: u64) -> Result<(), OutboxError> {
        let mut marks = self.marks.lock().expect("watermark lock");
        marks.durable = marks.durable.max(seq);
        self.watermark.write_all_at(&marks.bytes(), 0).map_err(OutboxError::Sync)
    }

    /// A random id made once per outbox: a data dir started afresh gets a new one. Fleet partial
    /// ids begin with it, so they are never reused. Made durable by the next barrier.
    pub fn instance(&self) -> String {
        if let Ok(Some(value)) = self.db.get(layout::INSTANCE) {
            return String::from_utf8_lossy(&value).into_owned();
        }
        let id = format!("{:016x}", fastrand::u64(..));
        match self.db.compare_and_swap(layout::INSTANCE, None as Option<&[u8]>, Some(id.as_bytes())) {
            Ok(Ok(())) => id,
            _ => self
                .db
                .get(layout::INSTANCE)
                .ok()
                .flatten()
                .map_or(id, |v| String::from_utf8_lossy(&v).into_owned()),
        }
    }

    pub fn barrier(&self) -> Result<(), OutboxError> {
        self.db.flush()?;
        self.db_file.sync_data().map_err(OutboxError::Sync)
    }
}
