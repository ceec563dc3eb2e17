//! What can go wrong with the outbox, each naming the path and the way out.

use std::path::PathBuf;

use crate::journal::JournalError;

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
    #[error(
        "{0}; the remembered ids are unusable, and meterd will not start without them, so that \
         no resent event is billed twice. See \"A damaged outbox\" in docs/operations.md"
    )]
    Ids(#[from] crate::ids::StoreError),
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
    #[error(
        "the outbox at {path} has lost acknowledged data: its checkpoint holds events up to log \
         sequence {found}, but a checkpoint up to {expected} was made durable ({watermark}) and the \
         journal before it removed. Its files are damaged, and meterd will not start on them, so \
         that nothing is billed short without anyone knowing. Restore the data dir from a backup, \
         or move it aside to start empty; see \"A damaged outbox\" in docs/operations.md"
    )]
    LostCheckpoint { path: PathBuf, watermark: PathBuf, found: u64, expected: u64 },
    #[error("{path} is unreadable ({reason}); see \"A damaged outbox\" in docs/operations.md")]
    Watermark { path: PathBuf, reason: String },
    #[error(
        "the open hours' checkpoint file {path} is unreadable ({reason}). meterd will not start on \
         it, so that nothing is billed short without anyone knowing; see \"A damaged outbox\" in \
         docs/operations.md"
    )]
    OpenFile { path: PathBuf, reason: String },
    #[error(
        "the {what} cannot be restored ({reason}). meterd will not start without them, so that \
         nothing acknowledged is lost or billed twice; see \"A damaged outbox\" in docs/operations.md"
    )]
    Unrestorable { what: &'static str, reason: String },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Archive(#[from] super::archive::ArchiveError),
}
