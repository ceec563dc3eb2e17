//! Reading a stopped daemon's data dir without writing to it.
//!
//! sled has no read-only mode: opening it may write a new snapshot and zero the tail of its log,
//! and meterd's own open takes the lock by writing its pid into `meterd.lock`. An operator's read
//! must change nothing (it may run as another user, or on a full disk), so it takes a shared lock
//! on the existing lock file without writing to it, copies the outbox (and the watermark) into a
//! private directory under the system's temporary directory, and opens the copy. The copy is
//! removed when the [`Outbox`](super::Outbox) read from it is dropped.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{LOCK_FILE, OUTBOX_DIR, OutboxError, WATERMARK_FILE};

/// A private copy of a data dir; removed on drop.
#[derive(Debug)]
pub struct PrivateCopy {
    root: PathBuf,
}

impl PrivateCopy {
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for PrivateCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Checks that `data_dir` holds an outbox, and copies it while holding a shared lock on its lock
/// file, so that no meterd can start on it meanwhile.
pub fn copy_stopped(data_dir: &Path) -> Result<PrivateCopy, OutboxError> {
    if !data_dir.exists() {
        return Err(OutboxError::NoDataDir { path: data_dir.to_path_buf() });
    }
    if !data_dir.join(OUTBOX_DIR).join("db").is_file() {
        return Err(OutboxError::NoOutbox { path: data_dir.to_path_buf() });
    }
    let _lock = lock_shared(data_dir)?;
    let copy = private_dir()?;
    let copy_err = |source| OutboxError::ReadCopy { path: data_dir.to_path_buf(), source };
    copy_tree(&data_dir.join(OUTBOX_DIR), &copy.root.join(OUTBOX_DIR)).map_err(copy_err)?;
    let watermark = data_dir.join(WATERMARK_FILE);
    if watermark.exists() {
        std::fs::copy(&watermark, copy.root.join(WATERMARK_FILE)).map_err(copy_err)?;
    }
    Ok(copy)
}

/// A shared lock on the data dir's lock file, taken without creating or writing it: a running
/// meterd holds it exclusively and is named by the pid it wrote. No lock file means no meterd
/// has locked this data dir, and none is locked.
fn lock_shared(data_dir: &Path) -> Result<Option<File>, OutboxError> {
    let path = data_dir.join(LOCK_FILE);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(OutboxError::Lock { path, source }),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(OutboxError::Locked { path: data_dir.to_path_buf(), pid: pid.trim().to_string() })
        }
        Err(std::fs::TryLockError::Error(source)) => Err(OutboxError::Lock { path, source }),
    }
}

/// A new directory only this user can read, under the system's temporary directory.
fn private_dir() -> Result<PrivateCopy, OutboxError> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let root = std::env::temp_dir().join(format!("meterd-read-{}-{nanos}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&root)
        .map_err(|source| OutboxError::ReadCopy { path: root.clone(), source })?;
    Ok(PrivateCopy { root })
}

/// Copies the regular files and directories under `from` into a new `to`.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
