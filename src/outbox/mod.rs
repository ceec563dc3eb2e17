//! The outbox: everything meterd has acknowledged and not yet settled, in one sled tree under
//! `<data_dir>/outbox`, guarded by an exclusive lock on `<data_dir>/meterd.lock`.
//!
//! ## Key layout (one tree; the first byte is the kind)
//!
//! | key | value | written by |
//! |---|---|---|
//! | `m` `checkpoint` | [`Meta`]: last log sequence folded into the checkpoint, last sealed hour | commit stage, at each checkpoint |
//! | `l` seq:u64be chunk:u16be | `Vec<Admitted>`: the events of one group commit | commit stage, before it acknowledges |
//! | `o` postcard(RecordKey) | [`Bucket`]: an open hour's running total | commit stage, at each checkpoint |
//! | `j` peer uid:u32be, client id | [`IdEntry`]: expiry and the event's digest | commit stage, at each checkpoint |
//! | `i` client id | legacy (written before ids were scoped and digested): expiry; read, then deleted when it expires | — |
//! | `r` hour:u64be postcard(RecordKey) | [`StoredRecord`]: a sealed record and its state; never written twice by the commit stage | commit stage seals, submit stage settles |
//!
//! Every value is one format-version byte ([`FORMAT_VERSION`]) followed by postcard, except that
//! log chunks carry [`LOG_FORMAT_VERSION`]: version 2 events carry their id's peer and digest,
//! version 1 chunks (an older meterd's) are read as events with legacy ids.
//!
//! ## Record states (`r` keys)
//!
//! | state | meaning | next |
//! |---|---|---|
//! | `Pending` | sealed, frozen, not yet confirmed (possibly sent) | `Accepted`, `DeadLetter` |
//! | `Accepted` | the service returned Success; holds the MeteringRecordId | final |
//! | `DeadLetter` | can never be accepted; holds the reason and the service's message | final |
//! | `Shipped` | fleet mode: a partial committed to the fleet database, which bills it | final |
//!
//! ## Durability
//! sled's `flush` writes with `sync_file_range`, which neither flushes the device cache nor the
//! file's size, and sled writes any page over `segment_size / 4` to a blob file it never syncs.
//! So [`Outbox::barrier`] follows `flush` with `fdatasync` on sled's `db` file, and every value
//! (a log chunk is at most [`MAX_CHUNK_BYTES`]) is small enough that even a full leaf of them stays
//! below the blob threshold of the [`SEGMENT_SIZE`] meterd configures. docs/durability.md has the
//! whole argument.
//!
//! ## Opening
//! The daemon ([`Outbox::open`]) creates and locks the data dir, refuses to start with less than
//! `storage.min_free_bytes` free before sled writes anything, and removes the unfinished snapshot
//! files an interrupted sled write can leave (`disk.rs`). The operator's offline commands
//! ([`Outbox::open_read_only`]) never write to the data dir: they open a private copy
//! (`offline.rs`).

mod disk;
mod layout;
mod legacy;
mod offline;

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::aggregate::{Admitted, Bucket, Delta, IdEntry, IdKey, SealedRecord};
use crate::model::{DeadReason, RecordKey};
pub use disk::Room;
pub use layout::{FORMAT_VERSION, LOG_FORMAT_VERSION, MAX_CHUNK_BYTES, SEGMENT_SIZE};
use offline::PrivateCopy;

/// `<data_dir>/meterd.lock`: the flock, and the pid of the meterd holding it.
const LOCK_FILE: &str = "meterd.lock";
/// `<data_dir>/outbox`: sled's directory.
const OUTBOX_DIR: &str = "outbox";

/// Outbox failures: at open, each naming the path and the way out; after it, a write or sync that
/// failed, after which the outbox can no longer promise durability.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("failed to create data dir {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error(
        "another meterd (pid {pid}) is using data dir {path}; stop it first or choose another storage.data_dir"
    )]
    Locked { path: PathBuf, pid: String },
    #[error("failed to lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error(
        "failed to open the outbox at {path}: {source}; see \"The outbox does not open\" in \
         docs/operations.md"
    )]
    Open { path: PathBuf, source: sled::Error },
    #[error(
        "only {free} bytes are free on the filesystem of {path}, less than storage.min_free_bytes \
         ({min_free}): meterd does not open its outbox on a full disk. Nothing is lost; free space \
         there and start meterd again (under systemd, Restart=on-failure does)"
    )]
    NoSpace { path: PathBuf, free: u64, min_free: u64 },
    #[error("failed to measure the free space on the filesystem of {path}: {source}")]
    FreeSpace { path: PathBuf, source: std::io::Error },
    #[error("there is no data dir at {path} (storage.data_dir), so there is nothing to read")]
    NoDataDir { path: PathBuf },
    #[error(
        "{path} (storage.data_dir) holds no meterd outbox (no outbox/db): meterd has never run with \
         this data dir, or it is not meterd's data dir"
    )]
    NoOutbox { path: PathBuf },
    #[error("failed to copy the outbox at {path} to read it without writing to it: {source}")]
    ReadCopy { path: PathBuf, source: std::io::Error },
    #[error("outbox write failed: {0}")]
    Write(#[from] sled::Error),
    #[error("outbox fdatasync failed: {0}")]
    Sync(std::io::Error),
    #[error("outbox value under key {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(
        "the outbox at {path} has lost acknowledged data: it holds events up to log sequence {found}, \
         but events up to {expected} were acknowledged ({watermark}). Its files are damaged, and \
         meterd will not start on them, so that nothing is billed short without anyone knowing. \
         Restore the data dir from a backup, or move it aside to start empty; see \
         \"A damaged outbox\" in docs/operations.md"
    )]
    Lost { path: PathBuf, watermark: PathBuf, found: u64, expected: u64 },
    #[error("{path} is unreadable ({reason}); see \"A damaged outbox\" in docs/operations.md")]
    Watermark { path: PathBuf, reason: String },
}

/// Checkpoint bookkeeping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Every log chunk up to this sequence is folded into the `o`/`i`/`r` keys (and deleted).
    pub log_seq: u64,
    pub sealed_through: Option<i64>,
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

/// Everything found on open: the checkpoint, the log after it, and every sealed record.
#[derive(Debug, Default)]
pub struct Recovered {
    pub meta: Meta,
    pub buckets: Vec<(RecordKey, Bucket)>,
    pub ids: Vec<(IdKey, IdEntry)>,
    /// Events logged after the checkpoint, in commit order.
    pub log: Vec<Admitted>,
    /// The highest log sequence on disk (or the checkpoint's).
    pub last_seq: u64,
    pub records: Vec<StoredRecord>,
}

impl Recovered {
    /// Decodes one outbox entry into what was found. Garbage gives [`OutboxError::Corrupt`], never
    /// a panic (the fuzz target `outbox_entry` holds it to that). The checkpoint must come first.
    pub fn absorb(&mut self, key: &[u8], value: &[u8]) -> Result<(), OutboxError> {
        let corrupt = |reason: &str| OutboxError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: reason.to_string(),
        };
        match key.first().copied() {
            _ if key == layout::INSTANCE => {}
            _ if key == layout::META => {
                self.meta = decode(key, value)?;
                self.last_seq = self.last_seq.max(self.meta.log_seq);
            }
            Some(layout::LOG) => {
                let seq = layout::log_seq(key).ok_or_else(|| corrupt("a log key is 11 bytes"))?;
                if seq > self.meta.log_seq {
                    self.last_seq = self.last_seq.max(seq);
                    self.log.extend(legacy::decode_log(key, value)?);
                }
            }
            Some(layout::OPEN) => {
                let record_key: RecordKey =
                    postcard::from_bytes(&key[1..]).map_err(|e| corrupt(&e.to_string()))?;
                self.buckets.push((record_key, decode(key, value)?));
            }
            Some(layout::ID) => {
                let id = String::from_utf8_lossy(&key[1..]).into_owned();
                let expiry: i64 = decode(key, value)?;
                self.ids.push((IdKey { peer: None, id }, IdEntry { expiry, digest: None }));
            }
            Some(layout::SCOPED_ID) => {
                let id_key =
                    layout::parse_scoped_id_key(key).ok_or_else(|| corrupt("an id key names its peer"))?;
                self.ids.push((id_key, decode(key, value)?));
            }
            Some(layout::RECORD) => self.records.push(decode(key, value)?),
            _ => return Err(corrupt("not a key meterd writes")),
        }
        Ok(())
    }
}

/// The open outbox. Cheap to share: every method takes `&self`.
pub struct Outbox {
    db: sled::Db,
    /// sled's data file, opened again only to `fdatasync` it.
    db_file: File,
    dir: PathBuf,
    /// `<data_dir>/watermark`: the highest log sequence known durable.
    watermark: File,
    /// `storage.min_free_bytes` (0 for an offline read).
    min_free_bytes: u64,
    _lock: File,
    /// For an offline read, the private copy it opened; removed after sled is closed (fields drop
    /// in order).
    _copy: Option<PrivateCopy>,
}

/// The watermark file: [`FORMAT_VERSION`], then the log sequence as u64 big-endian.
const WATERMARK_FILE: &str = "watermark";

/// Opens the watermark and reads the sequence it names (0 for a new one); errors name `named`.
fn open_watermark(path: &Path, named: &Path) -> Result<(File, u64), OutboxError> {
    let unreadable = |reason: String| OutboxError::Watermark { path: named.to_path_buf(), reason };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| unreadable(e.to_string()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| unreadable(e.to_string()))?;
    let seq = match bytes.as_slice() {
        [] => 0,
        [FORMAT_VERSION, seq @ ..] if seq.len() == 8 => u64::from_be_bytes(seq.try_into().expect("8 bytes")),
        _ => return Err(unreadable(format!("{} bytes, not a meterd watermark", bytes.len()))),
    };
    Ok((file, seq))
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
    pub fn open(data_dir: &Path, min_free_bytes: u64) -> Result<(Outbox, Recovered), OutboxError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| OutboxError::CreateDir { path: data_dir.to_path_buf(), source })?;
        let lock = lock(data_dir)?;
        disk::check_free(data_dir, min_free_bytes)?;
        match Self::open_locked(data_dir, data_dir, lock, min_free_bytes, None)? {
            (_, _, Some(lost)) => Err(lost),
            (outbox, recovered, None) => Ok((outbox, recovered)),
        }
    }

    /// For the operator's commands while meterd is stopped: reads `data_dir` without writing to
    /// it, through a private copy (`offline.rs`). A damaged outbox is opened anyway, with the loss
    /// beside it, so that what it still holds can be exported. A data dir that does not exist or
    /// holds no outbox is an error, not a new empty outbox.
    pub fn open_read_only(data_dir: &Path) -> Result<(Outbox, Recovered, Option<OutboxError>), OutboxError> {
        let copy = offline::copy_stopped(data_dir)?;
        let lock = lock(copy.root())?;
        let root = copy.root().to_path_buf();
        Self::open_locked(&root, data_dir, lock, 0, Some(copy))
    }

    /// Opens the outbox under `root` (locked by `lock`); errors and the loss name `named` instead.
    fn open_locked(
        root: &Path,
        named: &Path,
        lock: File,
        min_free_bytes: u64,
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
        let (watermark, expected) = open_watermark(&root.join(WATERMARK_FILE), &named.join(WATERMARK_FILE))?;
        let outbox = Outbox { db, db_file, dir, watermark, min_free_bytes, _lock: lock, _copy: copy };
        let recovered = outbox.recover()?;
        // sled treats a damaged stretch of its log like a torn write and recovers only what comes
        // before it, without an error. The watermark is how meterd notices.
        let lost = (recovered.last_seq < expected).then(|| OutboxError::Lost {
            path: named.join(OUTBOX_DIR).join("db"),
            watermark: named.join(WATERMARK_FILE),
            found: recovered.last_seq,
            expected,
        });
        Ok((outbox, recovered, lost))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn recover(&self) -> Result<Recovered, OutboxError> {
        let mut out = Recovered::default();
        // The checkpoint first: it decides which log entries are still to replay.
        if let Some(value) = self.db.get(layout::META)? {
            out.absorb(layout::META, &value)?;
        }
        for kind in [layout::LOG, layout::OPEN, layout::ID, layout::SCOPED_ID, layout::RECORD] {
            for item in self.db.scan_prefix([kind]) {
                let (key, value) = item?;
                out.absorb(&key, &value)?;
            }
        }
        Ok(out)
    }

    /// Logs one group commit's events. They are durable, and may be acknowledged, once a
    /// [`Outbox::barrier`] that started after this returned has completed.
    pub fn append(&self, seq: u64, events: &[Admitted]) -> Result<(), OutboxError> {
        // A chunk is the postcard encoding of a `Vec<Admitted>`: its length, then the elements.
        // Chunks are cut by encoded size so that no value can reach sled's blob threshold.
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut body: Vec<u8> = Vec::new();
        let mut count = 0usize;
        let seal = |body: &mut Vec<u8>, count: &mut usize, chunks: &mut Vec<Vec<u8>>| {
            let mut value = vec![LOG_FORMAT_VERSION];
            value = postcard::to_extend(&*count, value).expect("a length always encodes");
            value.extend_from_slice(body);
            chunks.push(value);
            body.clear();
            *count = 0;
        };
        for event in events {
            let before = body.len();
            body = postcard::to_extend(event, body).expect("postcard encodes every outbox type");
            if body.len() > MAX_CHUNK_BYTES && count > 0 {
                let tail = body.split_off(before);
                seal(&mut body, &mut count, &mut chunks);
                body = tail;
            }
            count += 1;
        }
        if count > 0 {
            seal(&mut body, &mut count, &mut chunks);
        }
        // One chunk (the usual group) is one plain insert. sled's `apply_batch` seals and writes
        // its I/O buffer twice to frame the batch, which would triple the writes of every barrier;
        // only a group of several chunks needs that framing to stay all-or-nothing.
        if let [value] = &mut chunks[..] {
            self.db.insert(&layout::log_key(seq, 0)[..], std::mem::take(value))?;
        } else {
            let mut batch = sled::Batch::default();
            for (chunk_no, value) in chunks.into_iter().enumerate() {
                let chunk_no = u16::try_from(chunk_no).expect("a group has at most 16k events");
                batch.insert(&layout::log_key(seq, chunk_no)[..], value);
            }
            self.db.apply_batch(batch)?;
        }
        Ok(())
    }

    /// Writes one checkpoint atomically: changed open hours, newly sealed records (as `Pending`),
    /// remembered and forgotten ids, and the new [`Meta`]; deletes the log up to `log_seq`.
    /// With `durable`, waits for the barrier (needed before sealed records are submitted).
    pub fn checkpoint(
        &self,
        log_seq: u64,
        delta: &Delta,
        now: i64,
        durable: bool,
    ) -> Result<(), OutboxError> {
        let mut batch = sled::Batch::default();
        for (key, bucket) in &delta.changed {
            batch.insert(layout::open_key(key), encode(bucket));
        }
        for record in &delta.sealed {
            batch.remove(layout::open_key(&record.key));
            let key = layout::record_key(&record.key);
            // The aggregator never seals a key twice; should it ever, the first record stands.
            if self.db.contains_key(&key)? {
                tracing::error!(
                    hour = record.key.hour,
                    quantity = record.quantity,
                    "a record for this key and hour was sealed before; keeping the first, never rewriting it"
                );
                continue;
            }
            let stored = StoredRecord { record: record.clone(), sealed_at: now, state: RecordState::Pending };
            batch.insert(key, encode(&stored));
        }
        for (id, entry) in &delta.new_ids {
            batch.insert(layout::id_key(id), encode(entry));
        }
        for id in &delta.expired_ids {
            batch.remove(layout::id_key(id));
        }
        batch.insert(layout::META, encode(&Meta { log_seq, sealed_through: delta.sealed_through }));
        for item in self.db.range(layout::log_key(0, 0)..=layout::log_key(log_seq, u16::MAX)) {
            batch.remove(item?.0);
        }
        self.db.apply_batch(batch)?;
        if durable {
            self.barrier()?;
            self.mark_durable(log_seq)?;
            self.watermark.sync_data().map_err(OutboxError::Sync)?;
        }
        Ok(())
    }

    /// Every sealed record, oldest hour first.
    pub fn records(&self) -> impl Iterator<Item = Result<StoredRecord, OutboxError>> + '_ {
        self.db.scan_prefix([layout::RECORD]).map(|item| {
            let (key, value) = item?;
            decode(&key, &value)
        })
    }

    /// One sealed record.
    pub fn record(&self, key: &RecordKey) -> Result<Option<StoredRecord>, OutboxError> {
        let db_key = layout::record_key(key);
        self.db.get(&db_key)?.map(|value| decode(&db_key, &value)).transpose()
    }

    /// Removes a sealed record; durable after the next [`Outbox::barrier`].
    pub fn remove_record(&self, key: &RecordKey) -> Result<(), OutboxError> {
        self.db.remove(layout::record_key(key))?;
        Ok(())
    }

    /// Removes receipts and dead letters settled before `before` (epoch seconds) and returns them;
    /// durable after the next [`Outbox::barrier`]. Pending records are never removed.
    pub fn compact(&self, before: i64) -> Result<Vec<StoredRecord>, OutboxError> {
        let mut removed = Vec::new();
        let mut batch = sled::Batch::default();
        for item in self.db.scan_prefix([layout::RECORD]) {
            let (key, value) = item?;
            let stored: StoredRecord = decode(&key, &value)?;
            if stored.settled_at().is_some_and(|at| at < before) {
                batch.remove(key);
                removed.push(stored);
            }
        }
        if !removed.is_empty() {
            self.db.apply_batch(batch)?;
        }
        Ok(removed)
    }

    /// Bytes the outbox's files take on disk.
    pub fn size_on_disk(&self) -> Result<u64, OutboxError> {
        Ok(self.db.size_on_disk()?)
    }

    /// The outbox's size and the room left on its filesystem, against `storage.min_free_bytes`.
    pub fn room(&self) -> Result<Room, OutboxError> {
        Ok(Room {
            bytes: self.size_on_disk()?,
            free_bytes: disk::free_bytes(&self.dir)?,
            min_free_bytes: self.min_free_bytes,
        })
    }

    /// Records a sealed record's new state; durable after the next [`Outbox::barrier`].
    pub fn settle(&self, stored: &StoredRecord) -> Result<(), OutboxError> {
        self.db.insert(layout::record_key(&stored.record.key), encode(stored))?;
        Ok(())
    }

    /// `flush` then `fdatasync`: after this, everything written before it survives a power cut.
    /// Records that the log is durable up to `seq`, after a [`Outbox::barrier`]. A plain write: a
    /// watermark that a power cut leaves behind is only older, never ahead of what sled holds;
    /// each sealing checkpoint syncs it.
    pub fn mark_durable(&self, seq: u64) -> Result<(), OutboxError> {
        use std::os::unix::fs::FileExt;
        let mut bytes = [FORMAT_VERSION; 9];
        bytes[1..].copy_from_slice(&seq.to_be_bytes());
        self.watermark.write_all_at(&bytes, 0).map_err(OutboxError::Sync)
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

/// Takes the data dir's lock and writes our pid into it, so a second meterd can say who holds it.
fn lock(data_dir: &Path) -> Result<File, OutboxError> {
    let path = data_dir.join(LOCK_FILE);
    let lock_err = |source| OutboxError::Lock { path: path.clone(), source };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(OutboxError::Locked { path: data_dir.to_path_buf(), pid: pid.trim().to_string() });
        }
        Err(std::fs::TryLockError::Error(source)) => return Err(lock_err(source)),
    }
    file.set_len(0).map_err(lock_err)?;
    file.rewind().map_err(lock_err)?;
    write!(file, "{}", std::process::id()).map_err(lock_err)?;
    Ok(file)
}
